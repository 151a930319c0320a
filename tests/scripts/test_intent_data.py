"""The intent sample data (MISSION §1) is what scripts/make_intent_data.py generates, split 266/50/40."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from tests.conftest import load_script as _load_script

REPO = Path(__file__).resolve().parents[2]
INTENT = REPO / "data" / "samples" / "intent"
SPLITS = ("train", "val", "test")
LABELS = ["지식", "이미지생성", "3D", "4D", "날씨", "일정", "잡담", "기타"]
HANGUL = re.compile(r"[가-힣]")




def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def script():
    return _load_script("make_intent_data")


@pytest.fixture(scope="module")
def intent() -> dict[str, list[dict]]:
    return {s: _read_jsonl(INTENT / f"{s}.jsonl") for s in SPLITS}


def test_shipped_files_are_the_default_generation(script, tmp_path, capsys):
    script.main(["--out", str(tmp_path)])
    for s in SPLITS:
        assert (tmp_path / f"{s}.jsonl").read_bytes() == (INTENT / f"{s}.jsonl").read_bytes(), s
    out = capsys.readouterr().out
    assert "train=266, val=50, test=40" in out and "날씨" in out


def test_seed_changes_the_data(script, tmp_path):
    script.main(["--seed", "1", "--out", str(tmp_path)])
    assert (tmp_path / "train.jsonl").read_bytes() != (INTENT / "train.jsonl").read_bytes()
    assert [len(_read_jsonl(tmp_path / f"{s}.jsonl")) for s in SPLITS] == [266, 50, 40]


def test_split_sizes_fields_and_ids(intent):
    assert [len(intent[s]) for s in SPLITS] == [266, 50, 40]
    ids = [r["id"] for s in SPLITS for r in intent[s]]
    assert ids == [f"intent-{i:04d}" for i in range(1, 357)]
    for s in SPLITS:
        for r in intent[s]:
            assert set(r) == {"id", "text", "label"}
            assert isinstance(r["text"], str) and r["text"].strip() == r["text"] and r["text"]


def test_every_label_in_every_split_and_stratified(intent):
    totals = Counter(r["label"] for s in SPLITS for r in intent[s])
    assert set(totals) == set(LABELS)
    for s in SPLITS:
        counts = Counter(r["label"] for r in intent[s])
        assert set(counts) == set(LABELS), s
        share = len(intent[s]) / 356
        for label in LABELS:  # proportional to the label's total, up to rounding
            assert abs(counts[label] - totals[label] * share) < 1, (s, label)


def test_no_duplicate_texts_within_or_across_splits(intent):
    texts = [r["text"] for s in SPLITS for r in intent[s]]
    assert len(texts) == len(set(texts))
    # Not even up to case, spaces and punctuation.
    keys = [re.sub(r"[\W_]+", "", t.lower()) for t in texts]
    assert len(keys) == len(set(keys))


def test_mostly_korean_with_some_english(intent):
    texts = [r["text"] for s in SPLITS for r in intent[s]]
    korean = sum(bool(HANGUL.search(t)) for t in texts) / len(texts)
    assert korean >= 0.70
    assert 0.10 <= 1 - korean <= 0.20  # about 15% English
    for s in SPLITS:  # English appears in every split
        assert any(not HANGUL.search(r["text"]) for r in intent[s]), s


def test_stratified_counts_hit_the_split_sizes_exactly(script):
    counts = script.stratified_counts(script.LABEL_COUNTS, script.SPLIT_SIZES)
    assert {s: sum(c.values()) for s, c in counts.items()} == {"train": 266, "val": 50, "test": 40}
    for label, n in script.LABEL_COUNTS.items():
        assert sum(counts[s][label] for s in SPLITS) == n


@pytest.mark.parametrize(
    ("word", "particle", "expected"),
    [
        ("의자", "을", "의자를"),
        ("책상", "를", "책상을"),
        ("고양이", "이", "고양이가"),
        ("클라이언트", "과", "클라이언트와"),
        ("오후 두 시", "로", "오후 두 시로"),
        ("오후 세 시 반", "로", "오후 세 시 반으로"),
        ("워드 파일", "으로", "워드 파일로"),  # final ㄹ takes 로
        ("PDF", "로", "PDF로"),
        ("김 팀장님", "랑", "김 팀장님이랑"),
    ],
)
def test_korean_particles_follow_the_word(script, word, particle, expected):
    assert script.attach(word, particle) == expected
