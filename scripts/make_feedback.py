#!/usr/bin/env python
"""Phase 1 of the vision workflow (MISSION §3): a baseline's wrong alerts -> the hard-case ``feedback.jsonl``.

A ``tuneloop test`` (or ``predict``) run of the VLM recipe writes one row per image to ``predictions.jsonl``
(``predictions.predict.jsonl``): ``id``, ``generation`` (the model's answer), ``pred_alert`` (the decision
parsed from it: true, false, or null when the answer states none), ``target_alert`` (the labelled decision)
and ``reference`` (the labelled answer). This script keeps the rows whose decision is wrong:

* false positive: ``pred_alert`` true, ``target_alert`` false (alert raised though everyone complies);
* false negative: ``pred_alert`` false, ``target_alert`` true (no alert though someone does not comply);

and writes each as one hard case in the input format of ``scripts/build_feedback_instructions.py``::

    {"id": <prediction id>, "image": <path relative to the output file's folder>, "scenario": ...,
     "failure": "false_positive" | "false_negative", "feedback": <what is really in the image>,
     "model_output": <the model's answer, or null when it was empty>}

Where the fields come from:

* ``image``, ``scenario``: the records file the run answered (``--records``: the recipe's ``data.test_file``
  or ``data.predict_file``; JSONL, CSV or Parquet), matched on ``--id-field`` as the datamodule does (``id``;
  the row number from 0 when the file has no such column). ``scenario`` is the record's ``scenario``, else
  ``--scenario``, else the record's question without the standard answer-format instruction.
* ``feedback``: the prediction's ``reference`` (the labelled answer: what is really in the image; the A-D
  builder keeps its sentences about the workers and drops those about the alert), or, with
  ``--feedback-field``, a column of the records file holding the operators' own notes. A case without any is
  skipped and counted.
* the decisions: as ``tuneloop compare alerts`` reads them (``pred_alert``, or the decision parsed from
  ``generation`` when a row has no ``pred_alert``; gold ``target_alert`` or ``alert``), so the counts here are
  its false positives and false negatives.

Unparseable answers (``pred_alert`` null) are neither: the model made no decision. ``--unparseable skip`` (the
default) counts them and writes nothing; ``--unparseable missed-alert`` writes those on images that needed an
alert as false negatives (the test metrics count them as missed alerts in recall), with the answer as
``model_output`` so type D can analyse it. On compliant images an unparseable answer raised no alert: never a
false positive.

The output is written whole (replacing nothing unless ``--overwrite``). ::

    python scripts/make_feedback.py runs/vlm-ppe-qlora/<version>/predictions.jsonl \\
        --records data/samples/ppe/test.jsonl --out data/ppe/feedback.jsonl
    python scripts/build_feedback_instructions.py data/ppe/feedback.jsonl --types A,B,C,D --out data/ppe/train_ad.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.records import RecordError, json_objects, load_record_file, write_jsonl
from trainer.jsonl_out import refuse_existing

# The answer-format instruction of the monitoring question, as in scripts/build_feedback_instructions.py and
# scripts/make_ppe_data.py (a test checks that they agree): a question without a scenario field is the
# scenario followed by it.
QUESTION_SUFFIX = (
    "Look at every worker's head and torso. Describe each worker's helmet and torso clothing, then end your "
    'answer with a last line "Alert: True" (someone is missing a helmet or a safety vest) or "Alert: False" '
    "(everyone complies)."
)
UNPARSEABLE_POLICIES = ("skip", "missed-alert")


@dataclass
class Summary:
    predictions: str
    records: str
    out: str = ""
    n: int = 0
    correct: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    unparseable_alert: int = 0  # unparseable answers on images that needed an alert
    unparseable_compliant: int = 0  # ... on compliant images
    unparseable_written: int = 0  # written as false negatives (--unparseable missed-alert)
    no_feedback: list[str] = field(default_factory=list)  # ids of wrong cases skipped: no feedback text
    policy: str = "skip"

    @property
    def written(self) -> int:
        return self.false_positives + self.false_negatives + self.unparseable_written - len(self.no_feedback)

    def format(self) -> str:
        unparseable = self.unparseable_alert + self.unparseable_compliant
        lines = [f"make_feedback: {self.n} predictions ({self.predictions}) on {self.records}",
                 f"  false positives (alert raised, everyone complies):     {self.false_positives}",
                 f"  false negatives (no alert, someone does not comply):   {self.false_negatives}",
                 f"  correct:                                               {self.correct}",
                 f"  unparseable (no decision in the answer):               {unparseable} "
                 f"({self.unparseable_alert} on alert images, {self.unparseable_compliant} on compliant ones)"]
        if unparseable and self.policy == "skip":
            lines.append("    skipped (--unparseable skip); --unparseable missed-alert writes those on alert images "
                         "as false negatives")
        elif self.unparseable_written:
            lines.append(f"    {self.unparseable_written} written as false negatives (--unparseable missed-alert); "
                         f"{self.unparseable_compliant} on compliant images skipped")
        if self.no_feedback:
            shown = ", ".join(self.no_feedback[:5]) + (" ..." if len(self.no_feedback) > 5 else "")
            lines.append(f"  skipped (no feedback text: empty reference and no --feedback-field): "
                         f"{len(self.no_feedback)} ({shown})")
        lines.append(f"  wrote {self.written} hard cases to {self.out}")
        if self.written:
            lines.append(f"  next: python scripts/build_feedback_instructions.py {self.out} --types A,B,C,D "
                         f"--out {Path(self.out).with_name('train_ad.jsonl')}")
        return "\n".join(lines)


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _question(record: dict) -> str | None:
    """The record's question: ``question``, or the first user turn of ``messages``."""
    if _text(record.get("question")):
        return record["question"].strip()
    for turn in record.get("messages") or []:
        if isinstance(turn, dict) and turn.get("role") == "user":
            return _text(turn.get("content"))
    return None


def _answer(record: dict) -> str | None:
    """The record's labelled answer: ``answer``, or the last assistant turn of ``messages``."""
    if _text(record.get("answer")):
        return record["answer"].strip()
    answers = [t.get("content") for t in record.get("messages") or [] if isinstance(t, dict)
               and t.get("role") == "assistant"]
    return _text(answers[-1]) if answers else None


def scenario_of(record: dict, default: str | None) -> str | None:
    """``scenario``, else ``default`` (``--scenario``), else the question without the answer-format instruction."""
    if _text(record.get("scenario")):
        return record["scenario"].strip()
    if default:
        return default
    question = _question(record)
    if question and question.endswith(QUESTION_SUFFIX):
        question = question[: -len(QUESTION_SUFFIX)].strip()
    return question or None


def load_records(path: Path, id_field: str, feedback_field: str | None) -> tuple[dict[str, tuple[dict, str]], str]:
    """``{id: (record, location)}`` of the records file, ids as the datamodule makes them (``str`` of
    ``id_field``, or of the row number from 0 when the file has no such column)."""
    import datasets

    datasets.disable_progress_bars()
    rf = load_record_file(path)
    columns = rf.dataset.column_names
    if "image" not in columns:
        raise RecordError(str(path), "image", f"missing (the file has fields {sorted(columns)})")
    if feedback_field and feedback_field not in columns:
        raise RecordError(str(path), feedback_field, f"no such column (--feedback-field); the file has fields "
                                                     f"{sorted(columns)}")
    by_id: dict[str, tuple[dict, str]] = {}
    has_ids = id_field in columns
    for i, record in enumerate(rf.dataset):
        rid = str(record[id_field]) if has_ids else str(i)
        if rid in by_id:
            raise rf.error(i, id_field, f"duplicate id {rid!r} (first at {by_id[rid][1]})")
        by_id[rid] = (record, rf.locate(i))
    return by_id, ("" if has_ids else f" (no {id_field!r} column: ids are row numbers from 0)")


def make_feedback(predictions: str | Path, records: str | Path, out: str | Path, id_field: str = "id",
                  scenario: str | None = None, feedback_field: str | None = None, unparseable: str = "skip",
                  overwrite: bool = False) -> Summary:
    """Write the false positives and false negatives of ``predictions`` as hard cases to ``out``; see the module
    docstring. Returns the counts."""
    from trainer.compare.alerts import load_alert_predictions

    predictions, records, out = Path(predictions), Path(records), Path(out)
    if unparseable not in UNPARSEABLE_POLICIES:
        raise ValueError(f"unparseable must be one of {UNPARSEABLE_POLICIES}, got {unparseable!r}")
    if os.path.abspath(out) in (os.path.abspath(predictions), os.path.abspath(records)):
        raise ValueError(f"--out {out} must differ from the input files")
    refuse_existing([out], overwrite)
    decisions = load_alert_predictions(str(predictions))  # {id: (gold, pred)}: the reading of compare alerts
    by_id, id_note = load_records(records, id_field, feedback_field)
    summary = Summary(predictions=str(predictions), records=str(records), out=str(out), policy=unparseable)
    out_dir = os.path.abspath(out.parent)
    cases = []
    for lineno, row in json_objects(predictions):
        where = f"{predictions}:{lineno}"
        gold, pred = decisions[row["id"]]
        rid = str(row["id"])
        if rid not in by_id:
            raise RecordError(where, "id", f"{rid!r} is not in {records}{id_note}; give the records file this run "
                                           "answered (the recipe's data.test_file or data.predict_file)")
        record, location = by_id[rid]
        if isinstance(record.get("alert"), bool) and record["alert"] != gold:
            raise RecordError(where, "target_alert", f"{str(gold).lower()}, but {location} has alert "
                              f"{str(record['alert']).lower()}: is --records the file this run answered?")
        summary.n += 1
        if pred is None:
            if gold:
                summary.unparseable_alert += 1
            else:
                summary.unparseable_compliant += 1
            if not (gold and unparseable == "missed-alert"):
                continue
            summary.unparseable_written += 1
            failure = "false_negative"
        elif pred == gold:
            summary.correct += 1
            continue
        else:
            failure = "false_positive" if pred else "false_negative"
            if pred:
                summary.false_positives += 1
            else:
                summary.false_negatives += 1
        feedback = (_text(record.get(feedback_field)) if feedback_field
                    else _text(row.get("reference")) or _answer(record))
        if feedback is None:
            summary.no_feedback.append(rid)
            continue
        case_scenario = scenario_of(record, scenario)
        if case_scenario is None:
            raise RecordError(location, "scenario", "missing, and the record has no question to take it from; "
                                                    "give --scenario")
        image = record.get("image")
        if not _text(image):
            raise RecordError(location, "image", "missing or empty")
        image_path = Path(image) if os.path.isabs(image) else records.parent / image
        if not image_path.is_file():
            raise RecordError(location, "image", f"image file not found: {image_path}")
        cases.append({"id": rid, "image": Path(os.path.relpath(os.path.abspath(image_path), out_dir)).as_posix(),
                      "scenario": case_scenario, "failure": failure, "feedback": feedback,
                      "model_output": _text(row.get("generation"))})
    write_jsonl(out, cases)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_feedback.py",
        description=(
            "Turn a baseline's predictions (predictions.jsonl or predictions.predict.jsonl of a 'tuneloop "
            "test/predict' run of the VLM recipe) and the records it answered into the hard-case feedback.jsonl of "
            "build_feedback_instructions.py: its false positives and false negatives, with the model's answer, the "
            "image and the scenario. The counts (false positives, false negatives, correct, unparseable, skipped) "
            "are printed at the end."
        ),
        epilog=(
            "example:\n"
            "  python scripts/make_feedback.py runs/vlm-ppe-qlora/<version>/predictions.jsonl \\\n"
            "      --records data/samples/ppe/test.jsonl --out data/ppe/feedback.jsonl\n"
            "  python scripts/build_feedback_instructions.py data/ppe/feedback.jsonl --types A,B,C,D "
            "--out data/ppe/train_ad.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictions", type=Path,
                   help="predictions JSONL of the baseline (rows: id, generation, pred_alert, target_alert, reference)")
    p.add_argument("--records", type=Path, required=True,
                   help="the records file the run answered (the recipe's data.test_file or data.predict_file): image, "
                        "question or messages, optional scenario and alert")
    p.add_argument("--out", type=Path, required=True, help="feedback JSONL to write (the A-D builder's input)")
    p.add_argument("--id-field", default="id",
                   help="records column the predictions' ids come from, as the recipe's data.id_field (default: id; "
                        "row numbers from 0 when the file has no such column)")
    p.add_argument("--scenario", default=None,
                   help="scenario for records without a 'scenario' field (default: the record's question without the "
                        "answer-format instruction)")
    p.add_argument("--feedback-field", default=None, metavar="COLUMN",
                   help="records column with the operators' description of the image (default: the prediction's "
                        "reference answer)")
    p.add_argument("--unparseable", choices=UNPARSEABLE_POLICIES, default="skip",
                   help="answers without a decision: skip them (default), or write those on images that needed an "
                        "alert as false negatives (missed-alert, as the test recall counts them)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: stop)")
    return p


def main(argv: list[str] | None = None) -> Summary:
    args = build_parser().parse_args(argv)
    try:
        summary = make_feedback(args.predictions, args.records, args.out, id_field=args.id_field,
                                scenario=args.scenario, feedback_field=args.feedback_field,
                                unparseable=args.unparseable, overwrite=args.overwrite)
    except (RecordError, FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary.format())
    return summary


if __name__ == "__main__":
    main()
