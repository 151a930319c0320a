"""``tuneloop compare runs``: the metrics of two or more finished runs side by side, with each run's difference
from the first (B - A, and the relative change in % for rates), e.g. the intent team's base vs tuned F1.

A run is a run directory (``runs/<experiment>/<version>/``) with the ``metrics.json`` that ``fit`` and ``test``
write (:mod:`trainer.callbacks`: the ``metrics`` of every section, ``fit`` with ``train/`` and ``val/``,
``test`` with ``test/``), or a ``tuneloop cv`` directory with ``cv_summary.json`` (per metric the mean over the
folds, shown with its standard deviation; cv reports validation metrics: ``--stage val``). A path to either file
works too.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.compare.records import CompareError
from trainer.compare.tables import csv_number, markdown_table, write_csv

RUNS_DESCRIPTION = """\
The metrics of two or more runs side by side, with each run's difference from the first (B - A) and, for
rates (accuracy, precision, recall, F1, partial score, exact match, *_rate), the relative change in %
((B - A) / |A| x 100). A run is a run directory with metrics.json (what fit and test write) or a cv directory
with cv_summary.json (the mean over the folds, shown with its standard deviation). A metric a run lacks is
blank; --stage picks the metrics by prefix (test/, val/, train/), --metrics by name."""
RUNS_EPILOG = """examples:
  tuneloop compare runs runs/intent-exaone-lora/base runs/intent-exaone-lora/tuned \\
      --metrics test/f1_macro,test/precision_macro,test/recall_macro,test/accuracy --out runs/compare/intent
  tuneloop compare runs runs/waam-multilabel/cv-bert runs/waam-multilabel/cv-roberta --stage val \\
      --names bert roberta"""

METRIC_FILES = ("metrics.json", "cv_summary.json")
# Proportions, whose relative change is meaningful ("F1 40% -> 58%: +45%"); losses, errors and counts are not.
_RATE = re.compile(r"(^|_)(accuracy|precision|recall|f1|partial_score|exact_match|rate)(_|$)")


def is_rate(metric: str) -> bool:
    """Whether ``metric`` (``test/f1_macro``, ``val/baseline_exact_match``) is a rate: shown with a relative %."""
    return bool(_RATE.search(metric.rsplit("/", 1)[-1]))


@dataclass
class RunMetrics:
    """The metrics of one run: ``values`` by key, ``std`` for a cv run (over its ``folds``)."""

    path: str  # as given on the command line
    source: Path  # the file read
    values: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    folds: int | None = None


def _number(source: Path, where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CompareError(f"{source}: {where}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def _metrics_file(arg: str) -> Path:
    path = Path(arg)
    if path.is_file() and path.name in METRIC_FILES:
        return path
    if path.is_file():
        raise CompareError(f"{arg}: expected a run directory (or its metrics.json / cv_summary.json)")
    if not path.is_dir():
        raise CompareError(f"{arg}: no such run directory")
    for name in METRIC_FILES:
        if (path / name).is_file():
            return path / name
    inner = sorted(str(f.parent.relative_to(path)) for n in METRIC_FILES for pattern in (f"*/{n}", f"*/*/{n}")
                   for f in path.glob(pattern))
    hint = (f"; it holds run directories ({', '.join(inner[:5])}{', ...' if len(inner) > 5 else ''}): pass those"
            if inner else "; fit and test write it when they end")
    raise CompareError(f"{arg}: no metrics.json (nor cv_summary.json) in this directory{hint}")


def load_run(arg: str) -> RunMetrics:
    """Read a run's metrics (see the module docstring); errors name the directory or file."""
    source = _metrics_file(arg)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CompareError(f"{source}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if source.name == "cv_summary.json":
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            raise CompareError(f"{source}: no 'metrics' object (expected what tuneloop cv writes)")
        values, std = {}, {}
        for key, s in metrics.items():
            if not isinstance(s, dict) or "mean" not in s:
                raise CompareError(f"{source}: metric {key!r}: expected {{folds, mean, std}}, got {s!r}")
            if s["mean"] is not None:
                values[key] = _number(source, f"metric {key!r} mean", s["mean"])
                std[key] = _number(source, f"metric {key!r} std", s.get("std", 0.0))
        folds = data.get("folds")
        return RunMetrics(arg, source, values, std, folds if isinstance(folds, int) else None)
    values = {}
    for section, content in data.items():  # fit, test, ... (exports has no metrics)
        if isinstance(content, dict) and isinstance(content.get("metrics"), dict):
            for key, value in content["metrics"].items():
                values[key] = _number(source, f"section {section!r} metric {key!r}", value)
    return RunMetrics(arg, source, values)


def run_names(paths: list[str], names: list[str] | None) -> list[str]:
    """``--names``, or each run directory's name (``<experiment>/<version>`` where versions repeat); unique."""
    if names is not None:
        if len(names) != len(paths):
            raise CompareError(f"--names gives {len(names)} name(s) for {len(paths)} run(s); give one per run, "
                               "in the same order")
        if any(not n.strip() for n in names):
            raise CompareError("--names: a name is empty")
    else:
        dirs = [Path(p).resolve() for p in paths]
        dirs = [d.parent if d.name in METRIC_FILES else d for d in dirs]
        names = [d.name for d in dirs]
        if len(set(names)) < len(names):
            names = [f"{d.parent.name}/{d.name}" for d in dirs]
    seen: dict[str, str] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise CompareError(f"run name {name!r} names both {seen[name]} and {path}; set --names")
        seen[name] = path
    return names


def select_metrics(runs: list[RunMetrics], stage: str, wanted: str | None) -> list[str]:
    """The metric keys to show: ``wanted`` (comma-separated names, in that order, each present in some run), or
    every key under ``<stage>/`` in any run, sorted (``stage`` ``all``: every key)."""
    present = sorted({k for r in runs for k in r.values})
    if wanted is not None:
        keys = [k.strip() for k in wanted.split(",") if k.strip()]
        if not keys:
            raise CompareError("--metrics is empty; give names such as test/accuracy,test/f1_macro")
        absent = [k for k in keys if k not in present]
        if absent:
            raise CompareError(f"--metrics: no run has {', '.join(map(repr, absent))}; the runs have: "
                               f"{', '.join(present) or 'no metrics'}")
        return list(dict.fromkeys(keys))
    keys = present if stage == "all" else [k for k in present if k.startswith(stage.rstrip("/") + "/")]
    if not keys:
        stages = sorted({k.split("/", 1)[0] for k in present if "/" in k})
        raise CompareError(f"no run has a metric under {stage.rstrip('/')}/ (--stage); the runs have: "
                           f"{', '.join(s + '/' for s in stages) or 'no metrics'}; choose with --stage or --metrics")
    return keys


def compare_runs(runs: list[RunMetrics], names: list[str], keys: list[str]) -> list[dict]:
    """One row per metric: its value in every run (``None`` where missing), for cv runs the std, and every later
    run's difference from the first (``diff``) and, for rates, relative change in % (``rel_pct``)."""
    rows = []
    first = names[0]
    for key in keys:
        values = {n: r.values.get(key) for n, r in zip(names, runs)}
        row = {"metric": key, "rate": is_rate(key), "values": values,
               "std": {n: r.std[key] for n, r in zip(names, runs) if key in r.std}, "diff": {}, "rel_pct": {}}
        base = values[first]
        for name in names[1:]:
            v = values[name]
            ok = base is not None and v is not None and math.isfinite(base) and math.isfinite(v)
            row["diff"][name] = v - base if ok else None
            if row["rate"]:
                row["rel_pct"][name] = (v - base) / abs(base) * 100 if ok and base != 0 else None
        rows.append(row)
    return rows


def _value(v: float | None, std: float | None = None) -> str:
    if v is None:
        return ""
    text = f"{v:.4f}" if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:.4g}"
    return text if std is None else f"{text} ± {std:.4f}"


def _signed(v: float | None, pct: bool = False) -> str:
    if v is None:
        return ""
    return f"{v:+.1f}%" if pct else (f"{v:+.4f}" if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:+.4g}")


def _layout(rows: list[dict], names: list[str]) -> tuple[list[str], list[list[str]], bool]:
    """Header and text cells of the table (console and Markdown), and whether it has % columns."""
    pct = any(r["rate"] for r in rows)
    header = ["metric", *names]
    for name in names[1:]:
        header += [f"{name} - {names[0]}"] + ([f"{name} - {names[0]} %"] if pct else [])
    cells = []
    for r in rows:
        line = [r["metric"], *(_value(r["values"][n], r["std"].get(n)) for n in names)]
        for name in names[1:]:
            line.append(_signed(r["diff"][name]))
            if pct:
                line.append(_signed(r["rel_pct"].get(name), pct=True))
        cells.append(line)
    return header, cells, pct


def _notes(runs: list[RunMetrics], names: list[str], keys: list[str]) -> list[str]:
    notes = []
    for name, run in zip(names, runs):
        if run.folds is not None:
            notes.append(f"{name}: mean ± std over {run.folds} folds ({run.source})")
        if not any(k in run.values for k in keys):
            notes.append(f"{name}: none of these metrics ({run.source})")
    return notes


def write_runs(out: Path, report: dict, header: list[str], cells: list[list[str]], notes: list[str]) -> list[Path]:
    """``runs.md`` (the printed table), ``runs.csv`` (full precision; a cv run's std in a column of its own) and
    ``runs.json`` (``report``) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    names, rows = [r["name"] for r in report["runs"]], report["metrics"]
    right = set(range(1, len(header)))
    md = "\n".join([f"# Runs compared (differences from {names[0]})", "", markdown_table(header, cells, right)]
                   + [f"- {n}" for n in notes])
    (out / "runs.md").write_text(md + "\n", encoding="utf-8")
    with_std = [n for n in names if any(n in r["std"] for r in rows)]
    csv_header = ["metric", *names, *(f"{n} std" for n in with_std)]
    for name in names[1:]:
        csv_header += [f"{name} - {names[0]}"] + ([f"{name} - {names[0]} %"] if report["has_rates"] else [])
    table = []
    for r in rows:
        line = [r["metric"], *(csv_number(r["values"][n], "nan") for n in names),
                *(csv_number(r["std"].get(n), "nan") for n in with_std)]
        for name in names[1:]:
            line.append(csv_number(r["diff"][name], "nan"))
            if report["has_rates"]:
                line.append(csv_number(r["rel_pct"].get(name), "nan"))
        table.append(line)
    write_csv(out / "runs.csv", csv_header, table)
    (out / "runs.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return [out / "runs.md", out / "runs.csv", out / "runs.json"]


def run_runs(args: argparse.Namespace) -> dict:
    """Read every run, select the metrics, print the table (or ``--json``), write ``--out``; returns the report."""
    if len(args.runs) < 2:
        raise CompareError(f"give at least two runs to compare, got {len(args.runs)}")
    if args.metrics is not None and args.stage is not None:
        raise CompareError("give --stage or --metrics, not both (--metrics names the metrics itself)")
    names = run_names(args.runs, args.names)
    runs = [load_run(p) for p in args.runs]
    keys = select_metrics(runs, args.stage or "test", args.metrics)
    rows = compare_runs(runs, names, keys)
    header, cells, pct = _layout(rows, names)
    notes = _notes(runs, names, keys)
    report = {"baseline": names[0], "has_rates": pct,
              "runs": [{"name": n, "path": r.path, "source": str(r.source), "folds": r.folds}
                       for n, r in zip(names, runs)],
              "metrics": rows}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"tuneloop compare runs: {len(runs)} runs, differences from {names[0]}",
                      title_justify="left")
        # Wrap (never cut) a narrow terminal's cells; the metric name stays on one line.
        table.add_column(header[0], no_wrap=True, min_width=max(len(k) for k in keys))
        for col in header[1:]:
            table.add_column(col, justify="right", overflow="fold")
        for line in cells:
            table.add_row(*line)
        console = Console()
        console.print(table)
        for note in notes:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
    if args.out:
        written = write_runs(Path(args.out), report, header, cells, notes)
        if not args.json:
            print("-> " + ", ".join(str(p) for p in written))
    return report
