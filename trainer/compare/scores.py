"""The score files ``tuneloop compare summarize`` reads, in the two shapes a judge or a spreadsheet gives them:

- **long** (what ``compare judge`` writes): one row per question and model, columns ``id``, ``model``,
  ``score``, optional ``closer`` and ``reason``;
- **wide** (a spreadsheet): one row per question, one score column per model, named as ``--a``/``--b`` (``base``)
  or with `` score``/``_score`` after the name (``base score``, as ``per_question.csv`` writes it); optional
  ``id`` (else the question's position, 1, 2, ...), ``closer``, ``reason`` and ``question``.

Either shape as JSONL, CSV (UTF-8), Parquet or an ``.xlsx`` workbook (the first sheet, or ``file.xlsx#Sheet``).
``closer`` is optional: without the column there is no closer count. Every error names the file, the line
(the spreadsheet row: row 1 is the header) and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datamodules.records import RecordFile, check_number, load_record_file, require_fields
from trainer.compare.records import NOTHING, CompareError, _check_pairs, _lines_by_model, _record_id, _text

#: What ``summarize --help`` says about the accepted shapes.
SHAPES_HELP = """score files (--judgments): JSONL, CSV (UTF-8), Parquet or .xlsx (first sheet, or FILE.xlsx#Sheet),
in one of two shapes (columns marked * are optional):
  long: one row per question and model, as `compare judge` writes it
      id | model | score | closer* | reason*
      q1 | base  | 2     | tuned   | B names both purposes
      q1 | tuned | 4     | tuned   | B names both purposes
  wide: one row per question (a spreadsheet), a score column per model named as --a/--b
  (base), or with " score" or "_score" after the name (base score)
      id* | question* | base score | tuned score | closer* | reason*
      q1  | Why ...?  | 2          | 4           | tuned   | B names both purposes
closer: --a, --b or Nothing; without a closer column there is no closer table. Without an id
column the questions are numbered 1, 2, ... in row order. A wrong cell stops the command
with file:line (for .xlsx the row; row 1 is the header), the column and what is wrong."""


@dataclass(frozen=True)
class JudgedQuestion:
    """One question of a score file, both models' scores joined (a row of the per-question table)."""

    id: str | int
    score_a: float
    score_b: float
    closer: str | None  # a, b or NOTHING; None when the file has no closer column
    reason: str  # the judge's reason ("" when the file has none; both reasons when the two lines differ)


@dataclass(frozen=True)
class ScoreFile:
    """What ``summarize`` needs of a score file."""

    questions: list[JudgedQuestion]
    has_closer: bool
    texts: dict[str | int, str] | None  # question text by id (a wide file's ``question`` column), else None


def score_columns(columns: list[str], name: str) -> list[str]:
    """The columns of ``columns`` that can hold the scores of model ``name`` in a wide file."""
    return [c for c in (name, f"{name} score", f"{name}_score") if c in columns]


def load_scores(path: str, a: str, b: str) -> ScoreFile:
    """Read a score file of either shape (see the module docstring): the scores of ``a`` and ``b`` paired by
    question, in file order, checked (every question has both; a closer is ``a``, ``b`` or ``"Nothing"``)."""
    import datasets

    if a == b:
        raise CompareError(f"--a and --b name the same model {a!r}; compare two different models")
    datasets.disable_progress_bars()  # a few dozen lines: no "Generating train split" bar
    rf = load_record_file(path)
    columns = rf.dataset.column_names
    if "model" in columns:
        return _long(rf, path, a, b)
    found = {name: score_columns(columns, name) for name in (a, b)}
    if all(found.values()):
        return _wide(rf, a, b, {name: cols[0] for name, cols in found.items()})
    lacking = [f"{name!r} (or {name + ' score'!r})" for name, cols in found.items() if not cols]
    raise CompareError(f"{rf.name}: neither shape: no 'model' column (long: one row per question and model) and no "
                       f"score column {' or '.join(lacking)} (wide: one row per question); the file has columns "
                       f"{columns}")


def _closer(rf: RecordFile, i: int, value: Any, a: str, b: str) -> str:
    closer = _text(rf, i, "closer", value)
    if closer not in (a, b, NOTHING):
        raise rf.error(i, "closer", f"expected {a!r}, {b!r} or {NOTHING!r}, got {closer!r}")
    return closer


def _long(rf: RecordFile, path: str, a: str, b: str) -> ScoreFile:
    """One row per question and model: ``id, model, score`` (+ ``closer``, ``reason``)."""
    require_fields(rf, ["id", "model", "score"])
    scores = check_number(rf, "score")
    has_closer = "closer" in rf.dataset.column_names
    has_reason = "reason" in rf.dataset.column_names
    by_id: dict[str | int, dict[str, float]] = {}
    closer_of: dict[str | int, tuple[str, int]] = {}
    reasons: dict[str | int, dict[str, str]] = {}
    for i, row, qid, model in _lines_by_model(rf, "second judgment of model {model!r} on id {qid!r}"):
        by_id.setdefault(qid, {})[model] = scores[i]
        if model not in (a, b):
            continue
        if has_closer:
            closer = _closer(rf, i, row["closer"], a, b)
            first = closer_of.setdefault(qid, (closer, i))
            if first[0] != closer:
                raise rf.error(i, "closer", f"{closer!r} disagrees with {first[0]!r} at {rf.locate(first[1])} "
                                            f"(both lines of a question carry the same verdict)")
        if has_reason and row["reason"] is not None:
            reasons.setdefault(qid, {})[model] = _text(rf, i, "reason", row["reason"], allow_empty=True)
    _check_pairs(rf.name, by_id, a, b)
    out = []
    for qid, models in by_id.items():
        said = reasons.get(qid, {})
        texts = list(dict.fromkeys(said[m] for m in (a, b) if m in said))  # one text when both lines agree
        reason = texts[0] if len(texts) == 1 else "; ".join(f"{m}: {said[m]}" for m in (a, b) if m in said)
        out.append(JudgedQuestion(qid, models[a], models[b], closer_of[qid][0] if has_closer else None, reason))
    return ScoreFile(out, has_closer, None)


def _wide(rf: RecordFile, a: str, b: str, score_column: dict[str, str]) -> ScoreFile:
    """One row per question: a score column per model (+ ``id``, ``closer``, ``reason``, ``question``)."""
    columns = rf.dataset.column_names
    require_fields(rf, list(score_column.values()))
    scores = {name: check_number(rf, column) for name, column in score_column.items()}
    has_closer, has_id = "closer" in columns, "id" in columns
    seen: dict[str | int, int] = {}
    out, texts = [], ({} if "question" in columns else None)
    for i, row in enumerate(rf.dataset):
        qid = _record_id(rf, i, _whole(row["id"])) if has_id else i + 1
        if qid in seen:
            raise rf.error(i, "id", f"duplicate id {qid!r} (first at {rf.locate(seen[qid])})")
        seen[qid] = i
        closer = _closer(rf, i, row["closer"], a, b) if has_closer else None
        reason = row.get("reason")
        reason = "" if reason is None else _text(rf, i, "reason", str(reason), allow_empty=True)
        if texts is not None:
            texts[qid] = "" if row["question"] is None else str(row["question"])
        out.append(JudgedQuestion(qid, scores[a][i], scores[b][i], closer, reason))
    return ScoreFile(out, has_closer, texts)


def _whole(value: Any) -> Any:
    """A spreadsheet's whole-number float id (``3.0``) as the integer it shows."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
