#!/usr/bin/env python
"""Train the small local byte-level BPE tokenizer ``data/tokenizers/tiny-bpe`` (offline, deterministic).

Training text: every string field (except ``id``) of the files in ``TRAINING_INPUTS`` -- the ``train.jsonl`` of
the encoder sample sets (breast_cancer, diabetes, waam) plus the hand-written Korean/English utterance corpus
``data/corpus/korean.txt`` (repeated ``--corpus-weight`` times so that Hangul syllables earn merges next to the
very repetitive number-heavy sample data). The list is fixed on purpose, not a glob of ``data/samples``: adding
a data set (intent, instructions, ...) must not change or invalidate the shipped tokenizer. To retrain on more
data, extend ``TRAINING_INPUTS`` and rerun.

Special tokens get ids 0..4: ``<pad> <s> </s> <unk> <mask>``; the post-processor adds BOS only, as
pretrained decoder tokenizers do (Llama: ``<s> A`` and ``<s> A <s> B``): a prompt never ends in ``</s>``, so a
plain ``tokenizer(prompt)`` gives the ids the model was trained and is prompted with. EOS closes a training
response explicitly (``datamodules.templates.tokenize_segments``). The directory is written with
``PreTrainedTokenizerFast.save_pretrained`` and loads with
``transformers.AutoTokenizer.from_pretrained("data/tokenizers/tiny-bpe")``.

``training_manifest.json`` in the output lists the exact input files (with sha256) and settings, so the
training can be reproduced, or redone on other files with ``--inputs``::

    python scripts/train_tokenizer.py                      # retrain on TRAINING_INPUTS
    python scripts/train_tokenizer.py --out /tmp/tok --inputs data/samples/waam/train.jsonl data/corpus/korean.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
MODEL_MAX_LENGTH = 512
MANIFEST = "training_manifest.json"


# The shipped tokenizer's training files, in training order (repo-relative). Fixed, not globbed: a new
# data/samples/<set>/train.jsonl must not silently change what "retrain" means.
TRAINING_INPUTS = (
    "data/samples/breast_cancer/train.jsonl",
    "data/samples/diabetes/train.jsonl",
    "data/samples/waam/train.jsonl",
    "data/corpus/korean.txt",
)


def default_inputs(root: Path = Path(".")) -> list[Path]:
    """``TRAINING_INPUTS`` under the repository root ``root``."""
    return [root / p for p in TRAINING_INPUTS]


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def iter_texts(files: list[Path], corpus_weight: int) -> Iterator[str]:
    """Texts in a fixed order: JSONL string fields record by record; plain-text files line by line."""
    for path in files:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    for key, value in rec.items():
                        if key != "id":
                            yield from _strings(value)
        else:
            lines = [ln.rstrip("\n") for ln in open(path, encoding="utf-8")]
            lines = [ln for ln in lines if ln.strip()]
            for _ in range(corpus_weight):
                yield from lines


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tokenizer(files: list[Path], vocab_size: int, min_frequency: int, corpus_weight: int):
    """Train and return a ``tokenizers.Tokenizer`` (byte-level BPE, RoBERTa-style post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(files, corpus_weight), trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B:1",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return tok


def save(tok, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Train the local byte-level BPE tokenizer (special tokens <pad> <s> </s> <unk> <mask> = ids 0..4, "
            "RoBERTa-style post-processor) on the fixed file list TRAINING_INPUTS (encoder sample train sets and "
            "data/corpus/korean.txt), or on --inputs. Deterministic."
        )
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="target vocabulary size (default: 4096)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge (default: 2)")
    p.add_argument(
        "--corpus-weight", type=int, default=4, help="how many times the plain-text corpus is repeated (default: 4)"
    )
    p.add_argument(
        "--inputs",
        type=Path,
        nargs="+",
        default=None,
        help="training files (.jsonl or text) in order (default: TRAINING_INPUTS, relative to the working directory)",
    )
    p.add_argument("--out", type=Path, default=Path("data/tokenizers/tiny-bpe"), help="output directory")
    return p


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    files = list(args.inputs) if args.inputs else default_inputs()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"missing input files: {missing}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tok = build_tokenizer(files, args.vocab_size, args.min_frequency, args.corpus_weight)
    save(tok, args.out)

    import tokenizers

    manifest = {
        "vocab_size": args.vocab_size,
        "min_frequency": args.min_frequency,
        "corpus_weight": args.corpus_weight,
        "tokenizers_version": tokenizers.__version__,
        "inputs": [{"path": f.as_posix(), "sha256": sha256(f)} for f in files],
    }
    with open(args.out / MANIFEST, "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")

    n_texts = sum(1 for _ in iter_texts(files, args.corpus_weight))
    print(f"tiny-bpe: vocab {tok.get_vocab_size()} (target {args.vocab_size}), trained on {n_texts} texts from:")
    for f in files:
        print(f"  {f.as_posix()}")
    sample = "내일 날씨 알려줘"
    ids = tok.encode(sample, add_special_tokens=False).ids
    print(f"  '{sample}': {len(ids)} tokens for {len(sample.encode('utf-8'))} UTF-8 bytes")
    print(f"  written to {args.out}")
    return tok


if __name__ == "__main__":
    main()
