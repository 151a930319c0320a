"""Report files of ``tuneloop compare``: small Markdown and CSV writers (shared by ``summarize --out`` and
``runs --out``) and the files of ``summarize --out``, the layouts of the instruction-SFT team's tables
(MISSION §2):

- ``statistics.md``, ``statistics.csv``, ``statistics.json`` (Tables 5-6): descriptive statistics, the paired
  two-sample t-test and the F-test as Excel's toolpak lays them out, and how often each model was closer;
- ``per_question.md``, ``per_question.csv`` (Table 7): id, question (with ``--questions``), both scores, the
  closer model and the judge's reason.

CSV files are UTF-8 with a byte-order mark (a spreadsheet then opens Korean text as such) and hold numbers in
full precision (Python's shortest round-trip form); Markdown shows them as the console does (6 significant
digits). An undefined figure is ``#DIV/0!`` in both, as Excel shows it, and ``null`` in JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from trainer.compare.records import NOTHING
from trainer.compare.scores import JudgedQuestion
from trainer.compare.stats import CLOSER_TITLE, fmt, json_value, summary_heading, toolpak_sections


def md_cell(value: Any) -> str:
    """A Markdown table cell: ``|`` escaped, line breaks as ``<br>``."""
    text = str(value).strip().replace("|", "\\|")
    return "<br>".join(text.splitlines())


def markdown_table(header: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    """A GitHub Markdown table; the columns whose index is in ``right`` are right-aligned (numbers)."""
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |",
             "|" + "|".join(" ---: " if i in right else " --- " for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def csv_number(value: int | float | None, undefined: str = "#DIV/0!") -> str:
    """A number for a CSV cell in full precision; ``""`` for ``None``, ``undefined`` for NaN/infinity."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if math.isfinite(value) else undefined


def _score(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def write_summary(out: Path, stats: dict, closer: dict[str, int] | None, judged: list[JudgedQuestion],
                  texts: dict[str | int, str] | None, args: argparse.Namespace) -> list[Path]:
    """Write the statistics (Tables 5-6) and the per-question table (Table 7) under ``out``; returns the paths.

    ``texts``: question text by id (from ``--questions``), or ``None`` to leave the question column out.
    ``closer``: the closer counts, or ``None`` (the file has no closer): no closer table and column."""
    a, b = args.a, args.b
    out.mkdir(parents=True, exist_ok=True)
    sections = toolpak_sections(stats)
    paths = [out / name for name in ("statistics.md", "statistics.csv", "statistics.json", "per_question.md",
                                     "per_question.csv")]

    md = [f"# {a} vs {b}: paired statistics", "", summary_heading(stats, a, b, args.alpha, args.judgments), ""]
    for title, rows in sections:
        cells = [[label, "" if va is None else fmt(va), "" if vb is None else fmt(vb)] for label, va, vb in rows]
        md += [f"## {title}", "", markdown_table(["", a, b], cells, right={1, 2})]
    if closer is not None:
        md += [f"## {CLOSER_TITLE}", "", markdown_table(list(closer), [list(closer.values())], right={0, 1, 2})]
    paths[0].write_text("\n".join(md), encoding="utf-8")

    rows = [[title, label, csv_number(va), csv_number(vb)] for title, section in sections for label, va, vb in section]
    if closer is not None:
        rows += [[CLOSER_TITLE, "closer", closer[a], closer[b]], [CLOSER_TITLE, NOTHING, closer[NOTHING], ""]]
    write_csv(paths[1], ["section", "statistic", a, b], rows)

    report = {"judgments": args.judgments, "a": a, "b": b, "alpha": args.alpha,
              **{k: json_value(v) for k, v in stats.items()}, "closer": closer}
    paths[2].write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    has_closer = closer is not None
    header = ["id", *(["question"] if texts is not None else []), f"{a} score", f"{b} score",
              *(["closer"] if has_closer else []), "reason"]
    table = [[q.id, *([texts[q.id]] if texts is not None else []), _score(q.score_a), _score(q.score_b),
              *([q.closer] if has_closer else []), q.reason] for q in judged]
    first_score = 1 + (texts is not None)
    scores = {first_score, first_score + 1}
    paths[3].write_text(f"# {a} vs {b}: judgments per question\n\n" + markdown_table(header, table, right=scores),
                        encoding="utf-8")
    write_csv(paths[4], header, table)
    return paths
