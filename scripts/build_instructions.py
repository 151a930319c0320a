#!/usr/bin/env python
"""Turn raw R&D project records into Alpaca instruction data with a teacher model (MISSION §2).

Production had a base LLM turn each of 53,255 project records into question-answer pairs; this is that
step. For every record of the input file (JSONL, CSV or Parquet; ``id, title, abstract`` required;
``application_fields, keywords`` lists and ``program_type, phase, firm`` text optional) the teacher gets

* the system message, verbatim from production: ``SYSTEM_PROMPT``;
* a user message with the record (title, abstract, fields, ...) and the reply format.

Column names: ``--fields title=Title,abstract=Abstract,id=ProjectNo`` maps the builder's fields (left) to the
file's columns (right); a field it does not name is read from the column of the same name. A required field
(or one named in ``--fields``) whose column is not in the file stops the run with the file, the column and the
columns the file has. A list field may also be one text (a CSV cell ``"energy, manufacturing"``: it is shown
to the teacher as it is). In CSV and Parquet files numbers in text fields are read as text (``Phase`` 2 ->
"2"; the column types are inferred, so a numeric id column loses leading zeros: ``0042`` -> "42") and empty
cells count as missing.

The reply must be strict JSON, ``{"question": str, "answer": str}`` or a list of such objects (several
pairs per record); a reply wrapped in a ```json fence is accepted. A reply that is not usable is asked
again (``--retries`` times, the user message then names what was wrong); after that the record is
rejected with the reason and the run goes on. Each pair becomes one Alpaca record::

    {"id": "rd-0001-1", "source_id": "rd-0001", "instruction": <MISSION §2 instruction>,
     "input": <question>, "output": <answer>}

Teachers: ``--teacher-url`` an OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp server,
OpenAI; standard library ``urllib`` only; the API key comes from the environment variable named by
``--api-key-env``), or ``--teacher-path`` a local Hugging Face causal LM directory (greedy decoding).

Resumable: each record's pairs are appended to ``--out`` (flushed and fsynced) as soon as the record is
done; a rejected record goes to ``<out stem>.rejected.jsonl`` next to it. On start, records whose id is in
either file are skipped, and the run says how many (``42 records already in pairs.jsonl: skipped (resume);
use --overwrite to rebuild``), so re-running the same command after an interruption (Ctrl-C, the server going
away) continues where it stopped, and never writes a record twice. Nothing written is rewritten, except
that a last line cut off mid-write (a crash during the write) is removed together with the other lines
of that record, which is then redone. A rejected record is not asked again on a re-run: delete its line
from the rejects file to retry it (e.g. with another teacher). ``--overwrite`` deletes the output and the
rejects file (after the input has been checked) and builds everything anew. ::

    python scripts/build_instructions.py data/samples/instructions/raw_records.jsonl --out /tmp/pairs.jsonl \\
        --teacher-url http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-7B-Instruct --workers 8
    python scripts/build_instructions.py projects.csv --fields id=ProjectNo,title=Title,abstract=Summary \\
        --out pairs.jsonl --teacher-path /models/teacher --max-new-tokens 256
    python scripts/split_instructions.py pairs.jsonl --out-dir data/rd --val 0.1 --test 0.1 --eval-sample 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datamodules.records import RecordError, load_record_file, parse_json_line, write_jsonl
from trainer.chat_client import ChatClient, InvalidResponse, RequestRejected, reply_json
from trainer.chat_client import EndpointUnavailable as TeacherUnavailable
from trainer.jsonl_out import rejects_path_for, resume_note, start_afresh, truncate_unfinished, written_ids

# MISSION §2, verbatim (grammar included): the teacher's system message in production.
SYSTEM_PROMPT = (
    "You are an API that converts text provided by a user role a single question and answer in perfect JSON format"
)
# MISSION §2: the instruction of the Alpaca prompt the student is tuned with.
INSTRUCTION = "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."

REQUIRED_TEXT = ("title", "abstract")
OPTIONAL_TEXT = ("program_type", "phase", "firm")
OPTIONAL_LISTS = ("application_fields", "keywords")
_LABELS = {
    "title": "Title",
    "abstract": "Abstract",
    "application_fields": "Application fields",
    "keywords": "Keywords",
    "program_type": "Program type",
    "phase": "Phase",
    "firm": "Firm",
}
REPLY_FORMAT = (
    'Reply with JSON only: {"question": "...", "answer": "..."}, or a JSON list of such objects for several '
    "question-answer pairs. Write them in the language of the record."
)
MAX_STORED_REPLY = 2000  # characters of a rejected reply kept in the rejects file


class InvalidReply(InvalidResponse):
    """The teacher answered, but not with usable JSON (the record is asked again).

    ``RequestRejected`` (the teacher refuses this record's request: rejected without retry) and
    ``TeacherUnavailable`` (cannot be reached or is misconfigured: the run stops; re-run to resume) come from
    ``trainer.chat_client``, as does ``InvalidResponse`` (not a chat-completions response), this class's base."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


@dataclass
class Outcome:
    """What became of one record: ``pairs`` when accepted, else the rejection ``reason``."""

    record_id: str
    pairs: list[QAPair]
    reason: str | None
    attempts: int
    last_reply: str = ""


@dataclass
class Summary:
    records: int = 0  # valid records in the input
    invalid: int = 0  # skipped with --skip-invalid
    skipped_done: int = 0  # already in the output or the rejects file
    done_in_out: int = 0  # of skipped_done: records with pairs in the output
    done_in_rejects: int = 0  # of skipped_done: records in the rejects file
    overwritten: list[str] = field(default_factory=list)  # files --overwrite deleted
    accepted: int = 0
    rejected: int = 0
    pairs_written: int = 0
    stopped: str | None = None  # why the run stopped early (teacher unavailable); None when complete
    out_path: str = ""
    rejects_path: str = ""
    invalid_errors: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Records the teacher answered in this run (accepted or rejected)."""
        return self.accepted + self.rejected

    @property
    def remaining(self) -> int:
        return self.records - self.skipped_done - self.processed

    @property
    def pairs_per_record(self) -> float:
        return self.pairs_written / self.accepted if self.accepted else 0.0

    def format(self) -> str:
        lines = [f"build_instructions: {self.records} valid records"
                 + (f", {self.invalid} invalid skipped" if self.invalid else "")]
        if self.overwritten:
            lines.append(f"  --overwrite: deleted {', '.join(self.overwritten)} first")
        note = resume_note({self.out_path: self.done_in_out, self.rejects_path: self.done_in_rejects})
        lines.append(f"  {note}" if note else f"  skipped (already done): {self.skipped_done}")
        lines.append(f"  processed this run: {self.processed} (accepted {self.accepted}, rejected {self.rejected})")
        lines.append(f"  pairs written: {self.pairs_written} ({self.pairs_per_record:.2f} per accepted record)")
        lines.append(f"  output: {self.out_path}" + (f"; rejects: {self.rejects_path}" if self.rejected else ""))
        if self.stopped:
            lines.append(f"  STOPPED with {self.remaining} records left: {self.stopped}")
            lines.append("  re-run the same command to continue where it stopped")
        return "\n".join(lines)


# ----- input records -------------------------------------------------------------------------------------
FIELDS = ("id", *REQUIRED_TEXT, *OPTIONAL_LISTS, *OPTIONAL_TEXT)  # the builder's field names


def parse_fields(text: str) -> dict[str, str]:
    """``--fields title=Title,abstract=Abstract`` -> ``{"title": "Title", "abstract": "Abstract"}`` (builder
    field -> the file's column). Raises ``argparse.ArgumentTypeError`` saying what is wrong."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, column = (x.strip() for x in item.partition("="))
        if not eq or not name or not column:
            raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN, got {item!r}")
        if name not in FIELDS:
            raise argparse.ArgumentTypeError(f"unknown field {name!r} in {item!r}; the builder's fields are "
                                             f"{', '.join(FIELDS)}")
        if name in mapping:
            raise argparse.ArgumentTypeError(f"field {name!r} mapped twice")
        mapping[name] = column
    if not mapping:
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN[,FIELD=COLUMN...], got {text!r}")
    return mapping


class Columns:
    """Which column of the input file holds each builder field (``--fields``; unnamed fields: same name)."""

    def __init__(self, fields: dict[str, str] | None = None):
        unknown = sorted(set(fields or {}) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; the builder's fields are {', '.join(FIELDS)}")
        self.explicit = dict(fields or {})
        self.of = {name: self.explicit.get(name, name) for name in FIELDS}

    def check(self, where: str, present: set[str]) -> None:
        """Every required field's column, and every column named in ``--fields``, is in ``present``."""
        for name in FIELDS:
            column = self.of[name]
            if column in present or (name not in self.explicit and name not in ("id", *REQUIRED_TEXT)):
                continue
            how = (f"mapped to the builder's {name!r} by --fields {name}={column}" if name in self.explicit
                   else f"the builder's {name!r}; name your column with --fields {name}=COLUMN")
            raise RecordError(where, column, f"no such column ({how}); the file has columns "
                                             f"{', '.join(sorted(present)) or '(none)'}")

    def pick(self, row: dict, tabular: bool) -> dict:
        """The builder's fields of one input row (absent and empty cells left out)."""
        record = {}
        for name, column in self.of.items():
            value = _cell(name, row.get(column)) if tabular else row.get(column)
            if isinstance(value, str) and name in OPTIONAL_LISTS:
                value = [value]  # one text cell: shown to the teacher as it is
            if value is not None:
                record[name] = value
        return record


def _cell(name: str, value):
    """A CSV/Parquet cell as the builder reads it: NaN is missing, a number in a text field is text (the file's
    column types are inferred, not chosen), an integral float id is an integer."""
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer() and name == "id":
            return int(value)
    if name in REQUIRED_TEXT + OPTIONAL_TEXT and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


def _check_record(obj, location: str, columns: Columns | None = None) -> str:
    """Validate one raw record (builder field names); return its id as text. Raises RecordError naming
    ``location`` and the column."""
    label = (columns or Columns()).of  # errors name the user's column
    if not isinstance(obj, dict):
        raise RecordError(location, None, f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        raise RecordError(location, label["id"], "missing or empty (resuming needs a unique id per record)")
    for name in REQUIRED_TEXT:
        value = obj.get(name)
        if value is None:
            raise RecordError(location, label[name], "missing")
        if not isinstance(value, str):
            raise RecordError(location, label[name], f"expected text, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise RecordError(location, label[name], "empty text")
    for name in OPTIONAL_TEXT:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(location, label[name], f"expected text, got {type(value).__name__} {value!r}")
    for name in OPTIONAL_LISTS:
        value = obj.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RecordError(location, label[name], f"expected a list of strings, got {value!r}")
    return str(rid)


def _rows(path: Path) -> tuple[list[tuple[str, dict | RecordError]], set[str], bool]:
    """``(location, row)`` of every row of the file (a JSONL line that is not a JSON object: its error, in its
    place), the columns the rows have, and whether the file is tabular. JSONL is read line by line; CSV and
    Parquet through ``datasets`` (``datamodules.records.load_record_file``)."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise RecordError(str(path), None, f"unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    if suffix in (".csv", ".parquet"):
        import datasets

        datasets.disable_progress_bars()
        rf = load_record_file(path)
        return [(rf.locate(i), row) for i, row in enumerate(rf.dataset)], set(rf.dataset.column_names), True
    rows, present = [], set()
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            location = f"{path}:{lineno}"
            try:
                obj = parse_json_line(raw, location)
                if not isinstance(obj, dict):
                    raise RecordError(location, None, f"expected a JSON object, got {type(obj).__name__}")
                present.update(obj)
            except RecordError as e:
                obj = e
            rows.append((location, obj))
    return rows, present, False


def read_records(path: str | Path, skip_invalid: bool = False,
                 fields: dict[str, str] | None = None) -> tuple[list[dict], list[RecordError]]:
    """Valid records of a JSONL, CSV or Parquet file, with the builder's field names (``fields``: builder field
    -> the file's column, as ``--fields``) and ``id`` made text; and, with ``skip_invalid``, the errors of the
    skipped ones. Without it the first invalid record raises ``RecordError`` (``file:line: field 'x': ...``).
    A required (or mapped) column the file lacks raises ``RecordError`` even with ``skip_invalid``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw records file not found: {path}")
    columns = Columns(fields)
    errors: list[RecordError] = []
    rows, present, tabular = _rows(path)
    if present:
        columns.check(str(path), present)
    records: list[dict] = []
    first_at: dict[str, str] = {}
    for location, row in rows:
        try:
            if isinstance(row, RecordError):
                raise row
            record = columns.pick(row, tabular)
            rid = _check_record(record, location, columns)
            if rid in first_at:
                first = first_at[rid]
                first = f"on line {first.rsplit(':', 1)[1]}" if first.startswith(f"{path}:") else f"at {first}"
                raise RecordError(location, columns.of["id"], f"duplicate id {rid!r} (first {first})")
        except RecordError as e:
            if not skip_invalid:
                raise
            errors.append(e)
            continue
        first_at[rid] = location
        records.append({**record, "id": rid})
    return records, errors


def user_message(record: dict) -> str:
    """The record as the teacher's user message: one labelled line per field, then the reply format."""
    lines = []
    for name, label in _LABELS.items():
        value = record.get(name)
        if isinstance(value, list):
            value = ", ".join(v for v in value if v.strip())
        if value:
            lines.append(f"{label}: {value.strip()}")
    return "\n".join(lines) + "\n\n" + REPLY_FORMAT


# ----- teacher replies -----------------------------------------------------------------------------------
def parse_reply(text: str) -> list[QAPair]:
    """Pairs of a strict JSON reply (an object or a list of objects with non-empty ``question`` and
    ``answer`` strings), optionally inside one ```json fence. Raises ``InvalidReply`` saying what is wrong."""
    data = reply_json(text, InvalidReply)
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InvalidReply("an empty JSON list")
    pairs: list[QAPair] = []
    for i, item in enumerate(items):
        where = f"item {i}: " if isinstance(data, list) else ""
        if not isinstance(item, dict):
            raise InvalidReply(f"{where}expected an object with 'question' and 'answer', got {type(item).__name__}")
        for key in ("question", "answer"):
            value = item.get(key)
            if not isinstance(value, str):
                raise InvalidReply(f"{where}{key!r} is missing or not a string")
            if not value.strip():
                raise InvalidReply(f"{where}{key!r} is empty")
        pair = QAPair(item["question"].strip(), item["answer"].strip())
        if pair not in pairs:  # a teacher repeating itself adds nothing
            pairs.append(pair)
    return pairs


class Teacher(Protocol):
    def complete(self, system: str, user: str) -> str:
        """The teacher's reply to one system + user message pair."""
        ...


def ask(teacher: Teacher, record: dict, retries: int) -> Outcome:
    """Ask ``teacher`` about ``record`` until the reply parses, at most ``1 + retries`` times."""
    base = user_message(record)
    user, reason, reply = base, None, ""
    for attempt in range(1, retries + 2):
        try:
            reply = teacher.complete(SYSTEM_PROMPT, user)
            return Outcome(record["id"], parse_reply(reply), None, attempt, reply)
        except InvalidResponse as e:  # InvalidReply included
            reason = f"invalid reply: {e}"
            # Say what was wrong: a greedy teacher given the same prompt would answer the same again.
            user = f"{base}\n\nYour previous reply was not usable ({e}). Reply with the JSON only."
        except RequestRejected as e:
            return Outcome(record["id"], [], f"request rejected: {e}", attempt, reply)
    return Outcome(record["id"], [], f"{reason} (after {retries + 1} attempts)", retries + 1, reply)


# ----- teachers ------------------------------------------------------------------------------------------
class HttpTeacher:
    """A teacher behind an OpenAI-compatible chat-completions endpoint.

    Args:
        client: The endpoint (``trainer.chat_client.ChatClient``: URL, model, key, temperature, token limit,
            timeout, and the retry policy: connection errors, timeouts, HTTP 429 and 5xx retried with backoff,
            ``Retry-After`` honoured; then the run stops).
    """

    def __init__(self, client: ChatClient):
        self.client, self.url = client, client.url

    def complete(self, system: str, user: str) -> str:
        return self.client.complete([{"role": "system", "content": system}, {"role": "user", "content": user}])


class LocalTeacher:
    """A local Hugging Face causal LM, greedy decoding (``trainer.local_generation``, as ``tuneloop compare
    generate``).

    The prompt is the tokenizer's chat template when it has one, else a plain ``System:/User:/Assistant:``
    layout.

    Args:
        path: Model directory (``AutoModelForCausalLM`` + ``AutoTokenizer``), loaded in its own dtype.
        max_new_tokens: Upper bound on reply tokens.
        device: ``cpu``, ``cuda``, ... (default: ``cuda`` when available).
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 256, device: str | None = None):
        from trainer.local_generation import default_device, load_causal_lm

        self.device = device or default_device()
        self.model, self.tokenizer = load_causal_lm(str(path), self.device)
        self.max_new_tokens = max_new_tokens
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def _prompt_ids(self, system: str, user: str) -> list[int]:
        tok = self.tokenizer
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        # No template: no post-processor either (a RoBERTa-style one would close the prompt with EOS).
        ids = tok(f"System: {system}\n\nUser: {user}\n\nAssistant: ", add_special_tokens=False)["input_ids"]
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids

    def complete(self, system: str, user: str) -> str:
        import torch

        from modules.generation import greedy_new_tokens

        ids = self._prompt_ids(system, user)
        if self.max_positions and len(ids) + self.max_new_tokens > self.max_positions:
            raise RequestRejected(
                f"prompt of {len(ids)} tokens + max_new_tokens {self.max_new_tokens} exceeds the model's "
                f"{self.max_positions} positions"
            )
        input_ids = torch.tensor([ids], device=self.device)  # (1, prompt_len)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        new = greedy_new_tokens(self.model, inputs, self.max_new_tokens, self.tokenizer.pad_token_id)
        return self.tokenizer.decode(new[0], skip_special_tokens=True)


# ----- output files and resuming ---------------------------------------------------------------------------
_SOURCE_ID = re.compile(r'"source_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_PAIR_ID = re.compile(r'^\{"id"\s*:\s*"((?:[^"\\]|\\.)*)-\d+"')


def _partial_source_id(partial: str) -> str | None:
    """The record a cut-off line belongs to: its ``source_id``, or its pair id ``<source_id>-<k>`` when
    the cut came before ``source_id``."""
    match = _SOURCE_ID.search(partial) or _PAIR_ID.search(partial)
    return json.loads(f'"{match.group(1)}"') if match else None


def finished_ids(path: Path, log: Callable[[str], None] = print) -> set[str]:
    """``source_id`` of every line of an output or rejects file (empty set when it does not exist). A last
    line cut off mid-write is removed first, with the other lines of its record (which is then redone)."""
    if not path.is_file():
        return set()
    removed = truncate_unfinished(path, key="source_id", record_of=_partial_source_id)
    if removed:
        log(f"{path}: removed {removed} bytes of an unfinished record at the end (it will be redone)")
    return written_ids(path, "source_id", "missing: this file was not written by build_instructions")


def alpaca_rows(outcome: Outcome) -> list[dict]:
    return [
        {"id": f"{outcome.record_id}-{k}", "source_id": outcome.record_id, "instruction": INSTRUCTION,
         "input": p.question, "output": p.answer}
        for k, p in enumerate(outcome.pairs, start=1)
    ]


def _answers(teacher: Teacher, todo: list[dict], retries: int, workers: int) -> Iterable[Outcome]:
    """Outcomes as records finish: in order with one worker, as they come with several (threads, for
    network-bound teachers). On ``TeacherUnavailable`` no new request starts; the ones in flight are
    still yielded, then the error is raised."""
    if workers <= 1:
        for record in todo:
            yield ask(teacher, record, retries)
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queue = iter(todo)
    stop: TeacherUnavailable | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = set()
        while True:
            while stop is None and len(pending) < 2 * workers and (record := next(queue, None)) is not None:
                pending.add(pool.submit(ask, teacher, record, retries))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    yield future.result()
                except TeacherUnavailable as e:
                    stop = stop or e
    if stop is not None:
        raise stop


def build(
    records_path: str | Path,
    out_path: str | Path,
    teacher: Teacher,
    retries: int = 3,
    skip_invalid: bool = False,
    workers: int = 1,
    progress: bool = False,
    log: Callable[[str], None] = print,
    fields: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Summary:
    """Ask ``teacher`` for QA pairs of every record of ``records_path`` not yet in ``out_path`` or its
    rejects file; append each finished record at once. ``fields``: builder field -> the file's column
    (``--fields``); ``overwrite``: delete the output and the rejects file first (after the input is checked).
    Returns the run's summary; ``summary.stopped`` is set when the teacher became unavailable (what was
    finished is kept: re-run to continue)."""
    records_path, out_path = Path(records_path), Path(out_path)
    if records_path.resolve() == out_path.resolve():
        raise ValueError(f"--out must differ from the input file {records_path}")
    records, errors = read_records(records_path, skip_invalid, fields)
    rejects_path = rejects_path_for(out_path)
    summary = Summary(records=len(records), invalid=len(errors), out_path=str(out_path),
                      rejects_path=str(rejects_path), invalid_errors=[str(e) for e in errors])
    for e in errors[:5]:
        log(f"skipped invalid record: {e}")
    if len(errors) > 5:
        log(f"... and {len(errors) - 5} more invalid records skipped")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        summary.overwritten = [str(p) for p in start_afresh(out_path, rejects_path)]
    in_out, in_rejects = finished_ids(out_path, log), finished_ids(rejects_path, log)
    todo = [r for r in records if r["id"] not in in_out and r["id"] not in in_rejects]
    summary.skipped_done = len(records) - len(todo)
    summary.done_in_out = sum(r["id"] in in_out for r in records)
    summary.done_in_rejects = summary.skipped_done - summary.done_in_out
    note = resume_note({out_path: summary.done_in_out, rejects_path: summary.done_in_rejects})
    if note:
        log(note)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("teacher", total=len(todo))
        try:
            for outcome in _answers(teacher, todo, retries, workers):
                if outcome.pairs:
                    rows = alpaca_rows(outcome)
                    write_jsonl(out_path, rows, append=True)
                    summary.accepted += 1
                    summary.pairs_written += len(rows)
                else:
                    write_jsonl(rejects_path, [{"source_id": outcome.record_id, "reason": outcome.reason,
                                                "attempts": outcome.attempts,
                                                "reply": outcome.last_reply[:MAX_STORED_REPLY]}], append=True)
                    summary.rejected += 1
                bar.update(task, advance=1,
                           description=f"teacher: {summary.accepted} accepted, {summary.rejected} rejected")
        except TeacherUnavailable as e:
            summary.stopped = f"teacher unavailable: {e}"
    return summary


# ----- command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Turn raw R&D project records (JSONL, CSV or Parquet: id, title, abstract, application_fields, keywords, "
            "program_type, phase, firm; other column names via --fields) into Alpaca question-answer records with "
            "a teacher model: an OpenAI-compatible chat-completions endpoint (--teacher-url) or a local Hugging Face "
            "causal LM (--teacher-path). Resumable: re-run the same command after an interruption and it continues "
            "where it stopped (it says how many records it skipped); --overwrite starts afresh."
        ),
        epilog=f"The teacher's system message is: {SYSTEM_PROMPT!r}",
    )
    p.add_argument("records", type=Path, help="raw records file: .jsonl, .csv or .parquet (one project per row)")
    p.add_argument("--fields", type=parse_fields, default=None, metavar="FIELD=COLUMN,...",
                   help="the file's column of each builder field, e.g. id=ProjectNo,title=Title,abstract=Summary,"
                        "keywords=Keywords; fields not named are read from the column of the same name "
                        f"(fields: {', '.join(FIELDS)})")
    p.add_argument("--out", type=Path, required=True,
                   help="output Alpaca JSONL (appended to: records already in it or in its rejects file are "
                        "skipped; rejected records go to <out stem>.rejected.jsonl)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete --out and its rejects file first and build every record anew (the input is "
                        "checked before anything is deleted)")
    # The teacher options repeat those of build_feedback_instructions.py on purpose: each script's --help is
    # read from its own parser, and the defaults and the local teacher differ (causal LM here, VLM there).
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    teacher.add_argument("--teacher-path", type=Path, help="local Hugging Face causal LM directory")
    p.add_argument("--teacher-model", help="model name sent to --teacher-url (required with it)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key for --teacher-url; when unset, no key is sent "
                   "(default: OPENAI_API_KEY)")
    p.add_argument("--temperature", type=float, default=0.0, help="--teacher-url sampling temperature (default: 0)")
    p.add_argument("--max-tokens", type=int, default=512, help="--teacher-url reply token limit (default: 512)")
    p.add_argument("--timeout", type=float, default=120.0, help="--teacher-url seconds per request (default: 120)")
    p.add_argument("--workers", type=int, default=1,
                   help="concurrent requests to --teacher-url (default: 1; the local model always uses 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="--teacher-path reply token limit (default: 256)")
    p.add_argument("--device", default=None, help="--teacher-path device (default: cuda when available, else cpu)")
    p.add_argument("--retries", type=int, default=3,
                   help="extra attempts for a record whose reply is not valid JSON before it is rejected (default: 3)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip and count invalid raw records instead of stopping at the first one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> Summary:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.out.resolve() == args.records.resolve():
        parser.error("--out must differ from the input file")
    if args.teacher_url and not args.teacher_model:
        parser.error("--teacher-model is required with --teacher-url")
    if args.teacher_path and not args.teacher_path.is_dir():
        parser.error(f"--teacher-path {args.teacher_path} is not a directory")
    try:
        if args.teacher_url:
            # Settings are read here, at the edge, and passed in.
            api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
            teacher: Teacher = HttpTeacher(ChatClient(args.teacher_url, args.teacher_model, api_key=api_key,
                                                      temperature=args.temperature, max_tokens=args.max_tokens,
                                                      timeout=args.timeout))
            workers = args.workers
        else:
            read_records(args.records, args.skip_invalid, args.fields)  # bad input stops before a model loads
            teacher = LocalTeacher(args.teacher_path, max_new_tokens=args.max_new_tokens, device=args.device)
            workers = 1
        summary = build(args.records, args.out, teacher, retries=args.retries, skip_invalid=args.skip_invalid,
                        workers=workers, progress=not args.no_progress, fields=args.fields,
                        overwrite=args.overwrite)
    except (RecordError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(summary.format())
    if summary.stopped:
        raise SystemExit(2)
    return summary


if __name__ == "__main__":
    main()
