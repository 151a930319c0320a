"""Loading record files through ``datasets`` and pointing at the exact record when one is wrong; writing JSONL
(:func:`write_jsonl`).

Every error a user's data can cause is a :class:`RecordError` naming file, line (or row) and field, raised
before any training work starts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class RecordError(ValueError):
    """A record in a data file is invalid. ``str()`` reads ``file:line: field 'x': what is wrong``."""

    def __init__(self, location: str, field: str | None, message: str):
        self.location, self.field, self.message = location, field, message
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{location}: {where}{message}")


@dataclass
class RecordFile:
    """A loaded file: its ``datasets.Dataset`` and how to name record ``i`` in an error message."""

    path: Path
    dataset: "datasets.Dataset"  # noqa: F821
    lines: list[int] | None  # 1-based line of each record (JSONL, CSV); None for Parquet

    def locate(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.path}:{self.lines[index]}"
        return f"{self.path} row {index + 1}"

    def error(self, index: int, field: str | None, message: str) -> RecordError:
        return RecordError(self.locate(index), field, message)


def file_format(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl, .csv or .parquet") from None


def _json_kind(value) -> str | None:
    """JSON type of a value as Arrow will see it (ints and floats are both numbers; null fits anything)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def parse_json_line(raw: str, location: str):
    """One JSON line; :class:`RecordError` at ``location`` (``file:line``) when it is not valid JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise RecordError(location, None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def json_objects(path: str | Path):
    """``(line number, object)`` of every non-blank line of a JSONL file, read as plain JSON; a line that is
    not a JSON object raises :class:`RecordError` naming file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            obj = parse_json_line(raw, f"{path}:{lineno}")
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}", None, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _scan_jsonl(path: Path) -> list[int]:
    """Check that each non-blank line is a JSON object whose fields keep one type across the file (Arrow
    needs one type per column); return the line number of each record."""
    lines: list[int] = []
    kinds: dict[str, tuple[str, int]] = {}
    for lineno, obj in json_objects(path):
        for key, value in obj.items():
            kind = _json_kind(value)
            if kind is None:
                continue
            first = kinds.setdefault(key, (kind, lineno))
            if first[0] != kind:
                raise RecordError(
                    f"{path}:{lineno}", key,
                    f"expected a {first[0]} like line {first[1]}, got {kind} {value!r}"
                )
        lines.append(lineno)
    return lines


def load_record_file(path: str | Path, cache_dir: str | None = None) -> RecordFile:
    """Load a JSONL/CSV/Parquet file with ``datasets`` (Arrow-cached), after a syntax check of JSONL."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    fmt = file_format(path)
    lines = None
    if fmt == "json":
        lines = _scan_jsonl(path)
        if not lines:
            raise RecordError(str(path), None, "file has no records")
    ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache_dir)
    if fmt == "csv":
        lines = [i + 2 for i in range(len(ds))]  # line 1 is the header
    if lines is not None and len(lines) != len(ds):
        raise RecordError(str(path), None, f"read {len(ds)} records but found {len(lines)} non-blank lines")
    return RecordFile(path=path, dataset=ds, lines=lines)


def require_fields(rf: RecordFile, fields: list[str]) -> None:
    """Every field must exist as a column and be non-null in every record."""
    for field in fields:
        if field not in rf.dataset.column_names:
            raise rf.error(0, field, f"missing (the file has fields {sorted(rf.dataset.column_names)})")
        for i, value in enumerate(rf.dataset[field]):
            if value is None:
                raise rf.error(i, field, "missing or null")


def check_text(rf: RecordFile, field: str) -> None:
    for i, value in enumerate(rf.dataset[field]):
        if not isinstance(value, str):
            raise rf.error(i, field, f"expected text, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise rf.error(i, field, "empty text")


def check_number(rf: RecordFile, field: str) -> list[float]:
    values = []
    for i, value in enumerate(rf.dataset[field]):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise rf.error(i, field, f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise rf.error(i, field, f"expected a finite number, got {value!r}")
        values.append(float(value))
    return values


def write_jsonl(path: str | Path, rows: list[dict], append: bool = False) -> None:
    """Write ``rows`` as JSON lines (UTF-8, ``ensure_ascii=False``, one object per line); the folder is made if
    missing.

    ``append=False`` replaces the file atomically: the lines go to ``<name>.tmp`` first, then over ``path``, so
    a reader (or a crash) never sees half a file. ``append=True`` adds the lines in one write, flushed and
    fsynced before returning, for outputs that grow record by record and must survive an interruption; with
    no rows it writes nothing (not even an empty file).
    """
    path = Path(path)
    if append and not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    target = path if append else path.with_name(path.name + ".tmp")
    with target.open("a" if append else "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if not append:
        os.replace(target, path)
