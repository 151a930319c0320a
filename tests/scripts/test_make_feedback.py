"""scripts/make_feedback.py: a baseline's predictions on the labelled PPE test set -> the hard-case feedback file of
scripts/build_feedback_instructions.py (its false positives and false negatives)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script, write_jsonl

PPE = ROOT / "data" / "samples" / "ppe"
FEEDBACK_KEYS = {"id", "image", "scenario", "failure", "feedback", "model_output"}


@pytest.fixture(scope="module")
def mf():
    return load_script("make_feedback")


@pytest.fixture(scope="module")
def bfi():
    return load_script("build_feedback_instructions")


@pytest.fixture(scope="module")
def test_records() -> list[dict]:
    return [json.loads(line) for line in (PPE / "test.jsonl").read_text(encoding="utf-8").splitlines()]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _answer(alert: bool) -> str:
    return f"There are 2 workers. Worker 2 wears an orange T-shirt.\nAlert: {alert}"


def _predictions(records: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Rows as `tuneloop test` writes them for the VLM recipe: correct on most images; on some a false positive,
    a false negative or an answer without a decision. Returns the rows and the planted outcome per id."""
    compliant = [r for r in records if not r["alert"]]
    alerts = [r for r in records if r["alert"]]
    planted = {compliant[1]["id"]: "fp", alerts[0]["id"]: "fn", compliant[4]["id"]: "fp", alerts[3]["id"]: "fn",
               alerts[5]["id"]: "fn", alerts[6]["id"]: "unparseable", compliant[6]["id"]: "unparseable"}
    rows = []
    for r in records:
        outcome = planted.get(r["id"], "correct")
        pred = {"correct": r["alert"], "fp": True, "fn": False, "unparseable": None}[outcome]
        generation = "I cannot tell." if pred is None else _answer(pred)
        rows.append({"id": r["id"], "type": None, "generation": generation, "pred_alert": pred,
                     "reference": r["answer"], "target_alert": r["alert"]})
    return rows, planted


def test_false_positives_and_negatives_become_builder_input(mf, bfi, test_records, tmp_path, capsys):
    rows, planted = _predictions(test_records)
    (tmp_path / "run").mkdir()
    predictions = write_jsonl(tmp_path / "run" / "predictions.jsonl", rows)
    out = tmp_path / "data" / "feedback.jsonl"
    summary = mf.main([str(predictions), "--records", str(PPE / "test.jsonl"), "--out", str(out)])

    cases = _read(out)
    wrong = [r["id"] for r in rows if planted.get(r["id"]) in ("fp", "fn")]
    assert [c["id"] for c in cases] == wrong  # exactly the false positives and negatives, in prediction order
    by_id = {r["id"]: r for r in test_records}
    for c in cases:
        record = by_id[c["id"]]
        assert set(c) == FEEDBACK_KEYS
        assert c["failure"] == {"fp": "false_positive", "fn": "false_negative"}[planted[c["id"]]]
        assert c["model_output"] == _answer(planted[c["id"]] == "fp")
        assert (c["scenario"], c["feedback"]) == (record["scenario"], record["answer"])
        assert (out.parent / c["image"]).resolve() == (PPE / record["image"]).resolve()
    assert (summary.false_positives, summary.false_negatives, summary.correct) == (2, 3, 33)
    assert (summary.unparseable_alert, summary.unparseable_compliant, summary.written) == (1, 1, 5)
    printed = capsys.readouterr().out
    assert "unparseable (no decision in the answer):               2 (1 on alert images, 1 on compliant ones)" \
           in printed and "skipped (--unparseable skip)" in printed
    assert f"wrote 5 hard cases to {out}" in printed

    # The A-D builder accepts it as it is: a false negative's correct decision is an alert, and so on.
    assert [c.alert for c in bfi.read_feedback(out)] == [planted[i] == "fn" for i in wrong]
    built = bfi.build(out, tmp_path / "data" / "train_ad.jsonl", types=("A", "B", "C", "D"))
    assert built.written == dict.fromkeys("ABCD", 5) and not built.skipped

    # Unparseable answers on alert images as missed alerts; existing output is kept without --overwrite.
    with pytest.raises(SystemExit):
        mf.main([str(predictions), "--records", str(PPE / "test.jsonl"), "--out", str(out),
                 "--unparseable", "missed-alert"])
    assert "use --overwrite to replace it" in capsys.readouterr().err and len(_read(out)) == 5
    missed = mf.make_feedback(predictions, PPE / "test.jsonl", out, unparseable="missed-alert", overwrite=True)
    unparseable_alert = next(i for i, o in planted.items() if o == "unparseable" and by_id[i]["alert"])
    extra = [c for c in _read(out) if c["id"] == unparseable_alert]
    assert missed.written == 6 and extra[0]["failure"] == "false_negative"
    assert extra[0]["model_output"] == "I cannot tell."
    assert len(bfi.read_feedback(out)) == 6


def test_records_without_ids_scenario_or_reference(mf, bfi, test_records, tmp_path, capsys):
    """Predict-style records: no id column (ids are row numbers), the scenario only inside the question, an
    operator note column instead of the reference."""
    records = []
    for r in test_records[:3]:
        records.append({"image": str(PPE / r["image"]), "question": r["question"], "alert": r["alert"],
                        "note": f"Operator: {r['answer'].splitlines()[0]}"})
    records_path = write_jsonl(tmp_path / "records.jsonl", records)
    rows = [{"id": str(i), "generation": _answer(not r["alert"]), "pred_alert": not r["alert"],
             "target_alert": r["alert"]} for i, r in enumerate(records)]
    predictions = write_jsonl(tmp_path / "predictions.predict.jsonl", rows)
    out = tmp_path / "feedback.jsonl"
    summary = mf.make_feedback(predictions, records_path, out, feedback_field="note")
    cases = _read(out)
    assert [c["id"] for c in cases] == ["0", "1", "2"] and summary.written == 3
    assert cases[0]["scenario"] == test_records[0]["scenario"]  # the question without the format instruction
    assert cases[0]["feedback"] == records[0]["note"]
    assert len(bfi.read_feedback(out)) == 3
    assert mf.QUESTION_SUFFIX == bfi.QUESTION_SUFFIX


def test_predictions_of_another_records_file_are_refused(mf, test_records, tmp_path):
    rows, _ = _predictions(test_records)
    rows[2]["id"] = "ppe-9999"
    predictions = write_jsonl(tmp_path / "predictions.jsonl", rows)
    with pytest.raises(mf.RecordError, match=r"predictions.jsonl:3: field 'id': 'ppe-9999' is not in .*test.jsonl"):
        mf.make_feedback(predictions, PPE / "test.jsonl", tmp_path / "feedback.jsonl")
    rows, _ = _predictions(test_records)
    rows[0]["target_alert"] = not rows[0]["target_alert"]
    predictions = write_jsonl(tmp_path / "predictions.jsonl", rows)
    with pytest.raises(mf.RecordError, match="predictions.jsonl:1: field 'target_alert': .* is --records the file"):
        mf.make_feedback(predictions, PPE / "test.jsonl", tmp_path / "feedback.jsonl")
    assert not (tmp_path / "feedback.jsonl").exists()
