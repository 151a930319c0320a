"""``tuneloop compare alerts``: predictions of several models on the same test cases -> accuracy, precision,
recall, F1, false positives/negatives and unparseable outputs of their alert decisions, side by side
(MISSION §3). What an alert decision is, how a generation is parsed and how the figures are defined is
:mod:`modules.alerts`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.records import RecordError, json_objects
from trainer.compare.records import MODEL_NAME, CompareError

ALERTS_DESCRIPTION = """\
Score the alert decisions (positive = alert raised) of one or more models on the same test cases, one
--predictions file per model, side by side: n, accuracy, precision, recall, F1, false positives, false
negatives, unparseable.

A line's prediction is 'pred_alert' (true, false, null = unparseable) or, without that key, the decision
parsed from 'generation' (or 'answer'); its gold decision is 'target_alert' (or 'alert'). Unparseable
outputs count as wrong in accuracy, never as predicted alerts, and as missed alerts in recall; false
positives/negatives count parsed outputs only."""
ALERTS_EPILOG = """example:
  tuneloop compare alerts --predictions runs/ppe-base/predictions.jsonl runs/ppe-a/predictions.jsonl \\
      runs/ppe-ad/predictions.jsonl --names base tuned_a tuned_ad --out runs/compare/ppe"""


def _alert_rules():
    """:mod:`modules.alerts` (parse_alert, alert_summary), imported on first use: it loads torch, which
    ``--help`` and option errors should not wait for."""
    import modules.alerts

    return modules.alerts


#: Rows of the alerts table: (key of modules.alerts.alert_summary, label).
ALERT_ROWS = (("n", "n"), ("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
              ("f1", "F1"), ("false_positives", "false positives"), ("false_negatives", "false negatives"),
              ("unparseable", "unparseable"))
_GENERIC_STEMS = {"predictions", "prediction", "preds", "generations", "answers", "test"}


def _prediction_rows(path: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line. Read as plain JSON (not through ``datasets``): a
    missing ``pred_alert`` (parse the text) and ``"pred_alert": null`` (unparseable) must stay apart."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl":
        raise CompareError(f"{path}: expected a .jsonl file")
    if not p.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    rows = list(json_objects(path))
    if not rows:
        raise RecordError(path, None, "file has no records")
    return rows


def load_alert_predictions(path: str) -> dict[str | int, tuple[bool, bool | None]]:
    """Read a predictions JSONL (as ``tuneloop test``/``predict`` write it): ``{id: (gold, pred)}`` in file
    order, ``pred`` ``None`` when unparseable.

    Per line: ``id`` (text or integer, unique); the gold decision ``target_alert`` (or ``alert`` on a line
    without a ``target_alert`` key), ``true``/``false``; the prediction ``pred_alert`` (``true``,
    ``false`` or ``null`` = unparseable) or, when the line has no ``pred_alert`` key, the decision parsed with
    :func:`modules.alerts.parse_alert` from ``generation`` (or ``answer``). Errors name ``file:line: field``.
    """
    cases: dict[str | int, tuple[bool, bool | None]] = {}
    line_of: dict[str | int, int] = {}
    for lineno, row in _prediction_rows(path):
        where = f"{path}:{lineno}"
        qid = row.get("id")
        if qid is None:
            raise RecordError(where, "id", "missing or null")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or (isinstance(qid, str) and not qid.strip()):
            raise RecordError(where, "id", f"expected non-empty text or an integer, got {qid!r}")
        if qid in line_of:
            raise RecordError(where, "id", f"duplicate id {qid!r} (first at {path}:{line_of[qid]})")
        line_of[qid] = lineno
        gold_field = "alert" if "target_alert" not in row and "alert" in row else "target_alert"
        gold = row.get(gold_field)
        if gold is None:
            raise RecordError(where, gold_field, "missing or null: every line needs the gold decision, true or false "
                                                 "('target_alert', or 'alert' in files without 'target_alert')")
        if not isinstance(gold, bool):
            raise RecordError(where, gold_field, f"expected true or false, got {type(gold).__name__} {gold!r}")
        if "pred_alert" in row:
            pred = row["pred_alert"]
            if pred is not None and not isinstance(pred, bool):
                raise RecordError(where, "pred_alert", f"expected true, false or null (unparseable), got "
                                                       f"{type(pred).__name__} {pred!r}")
        else:
            text_field = "generation" if "generation" in row else "answer" if "answer" in row else None
            if text_field is None:
                raise RecordError(where, "pred_alert", "missing: give 'pred_alert' (true/false/null) or the "
                                                       "generated text as 'generation' (or 'answer') to parse")
            text = row[text_field]
            if not isinstance(text, str):
                raise RecordError(where, text_field, f"expected text, got {type(text).__name__} {text!r}")
            pred = _alert_rules().parse_alert(text)
        cases[qid] = (gold, pred)
    return cases


def _default_name(path: str) -> str:
    """A file's stem, or its directory's name for a generic stem (runs/ppe-tuned/predictions.jsonl)."""
    p = Path(path).resolve()
    return p.parent.name if p.stem.lower() in _GENERIC_STEMS and p.parent.name else p.stem


def alert_model_names(paths: list[str], names: list[str] | None) -> list[str]:
    """``--names`` checked against ``--predictions``, or the default names; unique and well formed."""
    if names is not None and len(names) != len(paths):
        raise CompareError(f"--names gives {len(names)} name(s) for {len(paths)} --predictions file(s); "
                           "give one name per file, in the same order")
    flag = "--names" if names is not None else "default name (from the file name; set --names)"
    names = names if names is not None else [_default_name(p) for p in paths]
    for name, path in zip(names, paths):
        if not MODEL_NAME.match(name):
            raise CompareError(f"{flag} {name!r} of {path}: a name must be letters, digits, '_', '.', '-'")
    seen: dict[str, str] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise CompareError(f"{flag}: {name!r} names both {seen[name]} and {path}; names must be unique")
        seen[name] = path
    return names


def common_alert_ids(cases: dict[str, dict], paths: dict[str, str], intersect: bool) -> list[str | int]:
    """The ids every model has, in the first file's order. Without ``intersect`` all files must cover the
    same ids (else the error names how many differ and examples)."""
    names = list(cases)
    first = names[0]
    common = [qid for qid in cases[first] if all(qid in cases[m] for m in names[1:])]
    if not intersect:
        for m in names[1:]:
            only_first = [q for q in cases[first] if q not in cases[m]]
            only_m = [q for q in cases[m] if q not in cases[first]]
            if only_first or only_m:
                parts = [f"{len(ids)} id(s) only in {paths[who]} (e.g. {ids[0]!r})"
                         for who, ids in ((first, only_first), (m, only_m)) if ids]
                raise CompareError(f"{paths[first]} and {paths[m]} cover different ids: {'; '.join(parts)}. "
                                   "A side-by-side comparison needs the same cases; pass --intersect to compare on "
                                   "the ids common to all files")
    if not common:
        raise CompareError("the prediction files have no id in common")
    return common


def _alert_cell(key: str, value: int | float) -> str:
    return str(value) if key in ("n", "false_positives", "false_negatives", "unparseable") else f"{value:.4f}"


def alerts_markdown(results: dict[str, dict]) -> str:
    """The side-by-side table as Markdown: one row per figure, one column per model."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key, label in ALERT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_alert_cell(key, results[m][key]) for m in names) + " |")
    return ("\n".join(lines) + "\n\nPositive class: alert raised. Unparseable outputs count as wrong in accuracy, "
            "never as predicted alerts, and as missed alerts in recall; false positives/negatives count parsed "
            "outputs only.\n")


def run_alerts(args: argparse.Namespace) -> dict:
    """Alert metrics of every predictions file on the same cases; prints the table (or JSON), writes
    ``alerts.json`` and ``alerts.md`` under ``--out``. Returns the JSON object."""
    names = alert_model_names(args.predictions, args.names)  # before loading torch: option errors come fast
    paths = dict(zip(names, args.predictions))
    cases = {name: load_alert_predictions(path) for name, path in paths.items()}
    ids = common_alert_ids(cases, paths, args.intersect)
    first = names[0]
    for name in names[1:]:
        disagree = [qid for qid in ids if cases[name][qid][0] != cases[first][qid][0]]
        if disagree:
            raise CompareError(f"{paths[first]} and {paths[name]} disagree on the gold decision of {len(disagree)} "
                               f"id(s) (e.g. {disagree[0]!r}); the files must come from the same test set")
    summary = _alert_rules().alert_summary
    results = {name: summary([cases[name][qid][0] for qid in ids], [cases[name][qid][1] for qid in ids])
               for name in names}
    report = {
        "cases": len(ids),
        "dropped": {name: len(cases[name]) - len(ids) for name in names} if args.intersect else None,
        "models": {name: {"file": paths[name], **results[name]} for name in names},
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "alerts.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (out / "alerts.md").write_text(alerts_markdown(results), encoding="utf-8")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return report
    from rich.console import Console
    from rich.table import Table

    console = Console()
    dropped = ""
    if args.intersect and any(report["dropped"].values()):
        dropped = " (--intersect dropped " + ", ".join(f"{k} from {n}" for n, k in report["dropped"].items()) + ")"
    console.print(f"tuneloop compare alerts: {len(ids)} cases x {len(names)} models{dropped}; positive = alert")
    table = Table(title="Alert decisions", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for key, label in ALERT_ROWS:
        table.add_row(label, *(_alert_cell(key, results[m][key]) for m in names))
    console.print(table)
    if args.out:
        console.print(f"-> {Path(args.out) / 'alerts.json'}, {Path(args.out) / 'alerts.md'}")
    return report
