"""``tuneloop compare generate``: every model answers every question (greedy decoding) -> answers JSONL. The
models are local causal LM directories, each with an optional PEFT adapter; generation itself is
:mod:`trainer.local_generation`, shared with the instruction builders' local teachers."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from datamodules.records import write_jsonl
from trainer.compare.records import MODEL_NAME, NOTHING, CompareError, load_questions, progress
from trainer.local_generation import (LocalModelError, default_device, generate_batch, hub_model, load_causal_lm,
                                      tokenizer_dir)

#: The system instruction of MISSION §2's Alpaca prompt (``--system`` replaces it).
DEFAULT_SYSTEM = (
    "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
)


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model NAME=BASE[+ADAPTER]``: a local causal LM directory (or a Hub model
    ``hf://owner/name[@revision]``) and an optional PEFT adapter."""

    name: str
    base: str
    adapter: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse and check (paths exist) ``NAME=BASE`` or ``NAME=BASE+ADAPTER``; BASE may be ``package:...``."""
        from modules.backbone import resolve_path

        name, eq, paths = text.partition("=")
        if not eq or not paths:
            raise CompareError(f"--model {text!r}: expected NAME=BASE or NAME=BASE+ADAPTER")
        if not MODEL_NAME.match(name) or name == NOTHING:
            raise CompareError(f"--model {text!r}: name {name!r} must be letters, digits, '_', '.', '-' "
                               f"(and not {NOTHING!r})")
        base, plus, adapter = paths.partition("+")
        if plus and not adapter:
            raise CompareError(f"--model {text!r}: nothing after '+' (expected BASE+ADAPTER)")
        try:
            hub = hub_model(base)
            base = base if hub else resolve_path(base)
            adapter = resolve_path(adapter) if adapter else adapter
        except (FileNotFoundError, LocalModelError) as e:
            raise CompareError(f"--model {text!r}: {e}") from None
        if not hub and not (Path(base) / "config.json").is_file():
            what = "has no config.json" if Path(base).is_dir() else "does not exist"
            raise CompareError(f"--model {text!r}: base model directory {base} {what} "
                               "(expected a Hugging Face causal LM directory)")
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            what = "has no adapter_config.json" if Path(adapter).is_dir() else "does not exist"
            raise CompareError(f"--model {text!r}: adapter directory {adapter} {what} (expected a PEFT adapter "
                               "saved with save_pretrained)")
        return cls(name, base, adapter or None)

    @property
    def tokenizer_dir(self) -> str:
        """The adapter directory if it carries its own tokenizer (an adapter trained with added tokens ships
        it), else the base model directory (:func:`trainer.local_generation.tokenizer_dir`)."""
        return tokenizer_dir(self.base, self.adapter)

    def __str__(self) -> str:
        return self.base + (f" + {self.adapter}" if self.adapter else "")


def _device(choice: str) -> str:
    if choice == "auto":
        return default_device()
    if choice == "cuda" and default_device() != "cuda":
        raise CompareError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return choice


def run_generate(args: argparse.Namespace) -> list[dict]:
    """Check the options, answer every question with every ``--model`` in turn, write ``--out``; prints a
    table of answer counts and timings. Returns the rows written."""
    if args.max_new_tokens < 1:
        raise CompareError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise CompareError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.system is not None and args.template != "alpaca":
        raise CompareError("--system is the instruction of the Alpaca template; it needs --template alpaca")
    specs = [ModelSpec.parse(m) for m in args.model]  # all checked before any model is loaded
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CompareError(f"--model names must differ, got {names}")
    questions = load_questions(args.questions)
    prompts = [q.prompt(args.template, args.system or DEFAULT_SYSTEM) for q in questions]
    device, out = _device(args.device), Path(args.out)

    from rich.console import Console
    from rich.table import Table

    answers: dict[str, list[str]] = {}
    timing: dict[str, tuple[float, float]] = {}  # model -> (load seconds, generation seconds)
    rows: list[dict] = []
    for spec in specs:
        start = time.perf_counter()
        model, tokenizer = load_causal_lm(spec.base, device, args.dtype, spec.adapter)
        loaded = time.perf_counter()
        answers[spec.name] = []
        with progress() as bar:
            task = bar.add_task(f"{spec.name}: answering", total=len(questions))
            for k in range(0, len(prompts), args.batch_size):
                chunk = prompts[k:k + args.batch_size]
                answers[spec.name] += generate_batch(model, tokenizer, chunk, args.max_new_tokens, device)
                bar.advance(task, len(chunk))
        timing[spec.name] = (loaded - start, time.perf_counter() - loaded)
        del model  # one model in memory at a time
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
        # Rewritten after every model, ordered by question then model: a crash keeps the finished models.
        rows = [{"id": q.id, "model": name, "question": q.text, "reference": q.reference, "answer": texts[i]}
                for i, q in enumerate(questions) for name, texts in answers.items()]
        write_jsonl(out, rows)

    console = Console()
    console.print(f"tuneloop compare generate: {len(questions)} questions x {len(specs)} models -> {out}")
    table = Table()
    for col in ("model", "weights", "answers", "empty", "mean chars", "load s", "s / answer"):
        table.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for spec in specs:
        texts, (load_s, gen_s) = answers[spec.name], timing[spec.name]
        table.add_row(spec.name, str(spec), str(len(texts)), str(sum(not t for t in texts)),
                      f"{sum(map(len, texts)) / len(texts):.0f}", f"{load_s:.1f}", f"{gen_s / len(texts):.3f}")
    console.print(table)
    return rows
