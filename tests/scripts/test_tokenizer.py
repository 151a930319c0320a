"""The bundled byte-level BPE tokenizer data/tokenizers/tiny-bpe loads offline and adds BOS only, like a pretrained decoder's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_script as _load_script

REPO = Path(__file__).resolve().parents[2]
TOK_DIR = REPO / "data" / "tokenizers" / "tiny-bpe"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
KOREAN = [
    "내일 날씨 알려줘",
    "오후 세 시에 회의 일정 잡아줘",
    "고양이가 우주복 입고 있는 그림 그려줘",
    "의자 3D 모델 만들어줘",
    "모레 부산 날씨 어때?",  # not in the corpus verbatim
    "다음 주 금요일에 회의 잡아줘",  # not in the corpus verbatim
]




@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOK_DIR), local_files_only=True)


def _manifest() -> dict:
    return json.loads((TOK_DIR / "training_manifest.json").read_text(encoding="utf-8"))


def _repo_path(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else REPO / path


def test_loads_offline_as_fast_tokenizer(tok):
    assert tok.is_fast
    assert tok.model_max_length == 512
    assert len(tok) == 4096
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token, tok.mask_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<mask>",
    )
    assert (tok.cls_token, tok.sep_token) == ("<s>", "</s>")


def test_special_token_ids(tok):
    assert tok.convert_tokens_to_ids(SPECIALS) == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert tok.cls_token_id == 1 and tok.sep_token_id == 2


def test_decoder_style_post_processing(tok):
    """BOS first and no EOS appended, like a pretrained decoder's tokenizer (Llama): ``tokenizer(prompt)`` is
    the prompt the model was trained on, ready to be continued; EOS only closes training responses."""
    ids = tok("current 182.0 A, voltage 21.4 V").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok.bos_token_id not in ids[1:] and tok.eos_token_id not in ids
    a = tok("안녕하세요", add_special_tokens=False).input_ids
    b = tok("반가워요", add_special_tokens=False).input_ids
    assert tok("안녕하세요").input_ids == [1, *a]
    assert tok("안녕하세요", "반가워요").input_ids == [1, *a, 1, *b]
    batch = tok(["짧은 문장", "조금 더 긴 문장입니다"], padding=True)
    assert batch.input_ids[0][-1] == tok.pad_token_id and batch.attention_mask[0][-1] == 0


@pytest.mark.parametrize("text", [*KOREAN, "  공백이  많은   문장 ?  ", "What's up? 오늘 3D 모델 ok? é 日本語 🙂"])
def test_round_trip(tok, text):
    ids = tok(text).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_korean_is_compressed(tok):
    for text in KOREAN:
        n_tokens = len(tok(text, add_special_tokens=False).input_ids)
        n_bytes = len(text.encode("utf-8"))
        assert n_tokens < 0.6 * n_bytes, (text, n_tokens, n_bytes)
    # Frequent words merge into one multi-byte token (byte-level BPE marks the leading space with "Ġ").
    pieces = tok.convert_ids_to_tokens(tok(" 날씨", add_special_tokens=False).input_ids)
    assert len(pieces) == 1 and len(tok.convert_tokens_to_string(pieces).encode("utf-8")) == 7


def test_manifest_matches_current_training_data():
    """The shipped tokenizer was trained on exactly the fixed list TRAINING_INPUTS, unchanged since; other
    sample data sets (intent, instructions, ...) may come and go without touching it."""
    script = _load_script("train_tokenizer")
    manifest = _manifest()
    expected = [p.relative_to(REPO).as_posix() for p in script.default_inputs(REPO)]
    assert expected == list(script.TRAINING_INPUTS)
    listed = [_repo_path(i["path"]).relative_to(REPO).as_posix() for i in manifest["inputs"]]
    assert listed == expected, "training data changed: run `python scripts/train_tokenizer.py`"
    for item in manifest["inputs"]:
        assert script.sha256(_repo_path(item["path"])) == item["sha256"], (
            f"{item['path']} changed since training: run `python scripts/train_tokenizer.py`"
        )


def test_retraining_is_deterministic(tmp_path):
    script = _load_script("train_tokenizer")
    manifest = _manifest()
    script.main(
        [
            "--out",
            str(tmp_path),
            "--vocab-size",
            str(manifest["vocab_size"]),
            "--min-frequency",
            str(manifest["min_frequency"]),
            "--corpus-weight",
            str(manifest["corpus_weight"]),
            "--inputs",
            *[str(_repo_path(i["path"])) for i in manifest["inputs"]],
        ]
    )
    assert (tmp_path / "tokenizer.json").read_bytes() == (TOK_DIR / "tokenizer.json").read_bytes()
    assert (tmp_path / "tokenizer_config.json").read_bytes() == (TOK_DIR / "tokenizer_config.json").read_bytes()
