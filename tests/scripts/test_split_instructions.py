"""scripts/split_instructions.py: seeded train/val/test splits of built instruction records (by source record,
optionally stratified) and the evaluation questions of `tuneloop compare generate`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script, write_jsonl
from trainer.compare import load_questions

RD = "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."


@pytest.fixture(scope="module")
def split():
    return load_script("split_instructions")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _pairs(n_sources: int = 40) -> list[dict]:
    """Alpaca rows as build_instructions.py writes them: 1-3 pairs per source record; ``topic`` x for three
    sources in four, y for the rest."""
    rows = []
    for i in range(1, n_sources + 1):
        for k in range(1, 1 + (i % 3) + 1):
            rows.append({"id": f"rd-{i:04d}-{k}", "source_id": f"rd-{i:04d}", "instruction": RD,
                         "input": f"Question {k} about project {i}?", "output": f"Answer {k} about project {i}.",
                         "topic": "y" if i % 4 == 0 else "x"})
    return rows


def _sources(rows: list[dict]) -> set[str]:
    return {r["source_id"] for r in rows}


def test_split_is_seeded_proportional_and_disjoint(split, tmp_path, capsys):
    rows = _pairs(40)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = [str(pairs), "--val", "0.1", "--test", "0.15", "--seed", "7"]
    summary = split.main([*args, "--out-dir", str(tmp_path / "a")])
    split.main([*args, "--out-dir", str(tmp_path / "b")])
    split.main([str(pairs), "--val", "0.1", "--test", "0.15", "--seed", "8", "--out-dir", str(tmp_path / "c")])

    out = {s: _read(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "val", "test")}
    for s in out:  # the same seed: the same bytes; another seed: another split
        assert (tmp_path / "a" / f"{s}.jsonl").read_bytes() == (tmp_path / "b" / f"{s}.jsonl").read_bytes()
    assert _sources(_read(tmp_path / "c" / "test.jsonl")) != _sources(out["test"])
    # Sizes count source records (groups): 40 x 0.1 = 4, 40 x 0.15 = 6, train the rest.
    assert [len(_sources(out[s])) for s in ("train", "val", "test")] == [30, 4, 6]
    assert summary.counts == {s: (len(out[s]), len(_sources(out[s]))) for s in out}
    # No source record in two splits; every row exactly once, in input order within a split.
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not _sources(out[a]) & _sources(out[b])
    assert sorted(r["id"] for s in out for r in out[s]) == sorted(r["id"] for r in rows)
    for s in out:
        assert out[s] == [r for r in rows if r["source_id"] in _sources(out[s])]
    printed = capsys.readouterr().out
    assert f"split_instructions: {len(rows)} rows in 40 groups (by 'source_id')" in printed
    assert f"test:  {len(out['test']):6d} rows      6 groups -> {tmp_path / 'a' / 'test.jsonl'}" in printed

    # Counts instead of fractions, and a train size that leaves groups out.
    counted = split.split_file(pairs, tmp_path / "d", train=20, val=5, test=3, seed=7)
    assert [counted.counts[s][1] for s in ("train", "val", "test")] == [20, 5, 3]
    assert counted.unused[1] == 12 and "left out by --train" in counted.format()


def test_stratified_split_keeps_each_value_in_proportion(split, tmp_path):
    rows = _pairs(40)  # topic: 30 sources x, 10 y
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    for seed in range(5):
        summary = split.split_file(pairs, tmp_path / f"s{seed}", val=0.2, test=0.2, seed=seed, stratify="topic")
        for s, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert summary.counts[s][1] == round(40 * share)
            assert abs(summary.strata[s]["x"] - 30 * share) <= 1 and abs(summary.strata[s]["y"] - 10 * share) <= 1
            topics = Counter(r["topic"] for r in _read(tmp_path / f"s{seed}" / f"{s}.jsonl"))
            assert set(topics) == {"x", "y"}
    # A stratum field that differs inside a group cannot be honoured: the error names the line.
    rows[1]["topic"] = "z"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(split.RecordError, match=r"bad.jsonl:2: field 'topic': \"z\" differs from \"x\" on line 1"):
        split.split_file(bad, tmp_path / "bad", stratify="topic")


def test_eval_sample_is_a_questions_file_of_compare(split, tmp_path):
    rows = _pairs(40)
    rows[0]["instruction"] = "Answer briefly."  # not the R&D instruction: kept as instruction + input
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    summary = split.main([str(pairs), "--out-dir", str(tmp_path / "out"), "--val", "2", "--test", "10",
                          "--eval-sample", "8", "--seed", "3"])
    path = tmp_path / "out" / "eval_questions.jsonl"
    questions = load_questions(str(path))  # what `tuneloop compare generate --questions` reads
    test_rows = {r["id"]: r for r in _read(tmp_path / "out" / "test.jsonl")}
    assert len(questions) == 8 == summary.eval_questions
    assert len({test_rows[q.id]["source_id"] for q in questions}) == 8  # one per source record first
    for q in questions:
        row = test_rows[q.id]
        assert (q.question, q.reference) == (row["input"], row["output"])
    assert set(json.loads(path.read_text().splitlines()[0])) == {"id", "question", "reference"}
    again = split.split_file(pairs, tmp_path / "again", val=2, test=10, eval_n=8, seed=3)
    assert (tmp_path / "again" / "eval_questions.jsonl").read_bytes() == path.read_bytes() and again.eval_questions

    everything = split.split_file(pairs, tmp_path / "all", val=0, test=0, eval_n=len(rows), eval_from="all")
    first = load_questions(str(tmp_path / "all" / "eval_questions.jsonl"))[0]
    assert (first.instruction, first.input, first.question) == ("Answer briefly.", rows[0]["input"], None)
    assert everything.counts["val"] == (0, 0) and not (tmp_path / "all" / "val.jsonl").exists()
    with pytest.raises(ValueError, match="--eval-sample 99: the test split has only"):
        split.split_file(pairs, tmp_path / "many", test=2, eval_n=99)


def test_existing_outputs_are_kept_without_overwrite(split, tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(20))
    out = tmp_path / "out"
    split.main([str(pairs), "--out-dir", str(out), "--eval-sample", "2"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        split.main([str(pairs), "--out-dir", str(out), "--seed", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output exists: ") and err.rstrip().endswith("use --overwrite to replace them")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --overwrite replaces them, and removes the evaluation questions of the earlier split.
    summary = split.main([str(pairs), "--out-dir", str(out), "--seed", "1", "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    assert summary.removed == [str(out / "eval_questions.jsonl")]


def test_image_paths_follow_the_output_folder(split, tmp_path):
    qa = ROOT / "data" / "samples" / "ppe" / "train_ad.jsonl"  # images relative to data/samples/ppe
    summary = split.split_file(qa, tmp_path / "deep" / "split", val=0.25, test=0, stratify="alert", seed=0)
    rows = _read(tmp_path / "deep" / "split" / "train.jsonl") + _read(tmp_path / "deep" / "split" / "val.jsonl")
    assert summary.group_field == "source_id" and len(rows) == len(_read(qa))
    for r in rows:
        assert (tmp_path / "deep" / "split" / r["image"]).resolve() == (qa.parent / f"images/{r['source_id']}.png")
