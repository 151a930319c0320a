"""The files of ``tuneloop compare`` (questions, answers; the score files of ``summarize`` are in
:mod:`~trainer.compare.scores`): reading and checking them, with errors that name ``file:line: field``; and what
every step shares (:class:`CompareError`, :data:`NOTHING`, model names,
the progress bar). The formats are described in :mod:`trainer.compare`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.records import RecordFile, load_record_file, require_fields

# The Alpaca prompt of MISSION §2: the same text the SFT recipes train with, so base and tuned models are
# asked exactly as training asked them.
from datamodules.templates import alpaca_prompt

NOTHING = "Nothing"  # the "closer" value when neither answer is closer; no model may be called that
#: What a model name (``--model NAME=...``, ``--names``) may be.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


class CompareError(ValueError):
    """A wrong option or an inconsistent input file; the message names what is wrong."""


def progress():
    """The progress bar of the long steps (generate, judge): description, bar, done/total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


@dataclass(frozen=True)
class Question:
    """One question record: ``question`` is set, or ``instruction`` (with ``input``, possibly empty)."""

    id: str | int
    reference: str
    question: str | None = None
    instruction: str | None = None
    input: str = ""

    @property
    def text(self) -> str:
        """The question as written to the answers file."""
        if self.question is not None:
            return self.question
        return f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction

    def prompt(self, template: str, system: str) -> str:
        """The model input: ``alpaca`` puts ``system`` as the instruction and the question as the input (an
        ``instruction`` record keeps its own instruction and input); ``none`` is :attr:`text` as is."""
        if template == "none":
            return self.text
        if self.question is not None:
            return alpaca_prompt(system, self.question)
        return alpaca_prompt(self.instruction, self.input)


def _jsonl(path: str) -> RecordFile:
    import datasets

    if Path(path).suffix.lower() != ".jsonl":
        raise CompareError(f"{path}: expected a .jsonl file")
    datasets.disable_progress_bars()  # a few dozen lines: no "Generating train split" bar
    return load_record_file(path)


def _text(rf: RecordFile, i: int, field: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise rf.error(i, field, f"expected text, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise rf.error(i, field, "empty text")
    return value


def _record_id(rf: RecordFile, i: int, value: Any) -> str | int:
    if value is None:
        raise rf.error(i, "id", "missing or null")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise rf.error(i, "id", f"expected text or an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value.strip():
        raise rf.error(i, "id", "empty text")
    return value


def load_questions(path: str) -> list[Question]:
    """Read and check a questions JSONL; errors name ``file:line: field``."""
    rf = _jsonl(path)
    columns = set(rf.dataset.column_names)
    if "question" not in columns and "instruction" not in columns:
        raise rf.error(0, "question", f"missing: give 'question' or 'instruction' (the file has {sorted(columns)})")
    require_fields(rf, ["id", "reference"])
    seen: dict[str | int, int] = {}
    questions = []
    for i, row in enumerate(rf.dataset):
        qid = _record_id(rf, i, row["id"])
        if qid in seen:
            raise rf.error(i, "id", f"duplicate id {qid!r} (first at {rf.locate(seen[qid])})")
        seen[qid] = i
        reference = _text(rf, i, "reference", row["reference"])
        question, instruction = row.get("question"), row.get("instruction")
        if question is not None and instruction is not None:
            raise rf.error(i, "question", "give either 'question' or 'instruction' (+ 'input'), not both")
        if question is None and instruction is None:
            raise rf.error(i, "question", "missing: give 'question' or 'instruction' (+ optional 'input')")
        if question is not None:
            if row.get("input") is not None:
                raise rf.error(i, "input", "'input' goes with 'instruction', not with 'question'")
            questions.append(Question(qid, reference, question=_text(rf, i, "question", question)))
        else:
            input_ = row.get("input")
            input_ = "" if input_ is None else _text(rf, i, "input", input_, allow_empty=True)
            questions.append(Question(qid, reference, instruction=_text(rf, i, "instruction", instruction),
                                      input=input_))
    return questions


def _lines_by_model(rf: RecordFile, second: str):
    """``(index, row, question id, model)`` of every line of an answers or judgments file; a second line of
    one model on one id raises, worded by ``second`` (a format string of ``model`` and ``qid``)."""
    line_of: dict[tuple, int] = {}
    for i, row in enumerate(rf.dataset):
        qid, model = _record_id(rf, i, row["id"]), _text(rf, i, "model", row["model"])
        if (qid, model) in line_of:
            raise rf.error(i, "model", second.format(model=model, qid=qid)
                           + f" (first at {rf.locate(line_of[qid, model])})")
        line_of[qid, model] = i
        yield i, row, qid, model


def _check_pairs(path: str, by_id: dict, a: str, b: str) -> None:
    """``a`` and ``b`` are two different models of the file, and every question id has a record of both; the
    error lists the ids that do not."""
    found = sorted({m for models in by_id.values() for m in models})
    if a == b:
        raise CompareError(f"--a and --b name the same model {a!r}; compare two different models")
    for flag, name in (("--a", a), ("--b", b)):
        if name not in found:
            raise CompareError(f"{path}: no records of model {name!r} ({flag}); models in the file: {sorted(found)}")
    lacking = [f"{qid!r} lacks {m!r}" for qid, models in by_id.items() for m in (a, b) if m not in models]
    if lacking:
        shown = ", ".join(lacking[:10]) + (f", ... ({len(lacking) - 10} more)" if len(lacking) > 10 else "")
        raise CompareError(f"{path}: {len(lacking)} question(s) lack a record of one of the two models: {shown}")


@dataclass(frozen=True)
class Answer:
    question: str
    reference: str
    answer: str


def load_answers(path: str, a: str, b: str) -> dict[str | int, dict[str, Answer]]:
    """Read the answers JSONL of ``generate``: ``{question id: {model: Answer}}`` in file order, checked to
    hold an answer of ``a`` and of ``b`` for every question."""
    rf = _jsonl(path)
    require_fields(rf, ["id", "model", "question", "reference", "answer"])
    by_id: dict[str | int, dict[str, Answer]] = {}
    for i, row, qid, model in _lines_by_model(rf, "second answer of model {model!r} to id {qid!r}"):
        by_id.setdefault(qid, {})[model] = Answer(
            _text(rf, i, "question", row["question"]), _text(rf, i, "reference", row["reference"]),
            _text(rf, i, "answer", row["answer"], allow_empty=True),
        )
    _check_pairs(path, by_id, a, b)
    return by_id


def load_question_texts(path: str) -> dict[str | int, str]:
    """Question text by id, from a questions JSONL (what ``generate`` reads) or an answers JSONL (what it
    writes: one line per question and model, each with the question)."""
    rf = _jsonl(path)
    if "model" not in rf.dataset.column_names:
        return {q.id: q.text for q in load_questions(path)}
    require_fields(rf, ["id", "question"])
    texts: dict[str | int, str] = {}
    for i, row in enumerate(rf.dataset):
        texts.setdefault(_record_id(rf, i, row["id"]), _text(rf, i, "question", row["question"]))
    return texts
