"""Loading record files through ``datasets`` and pointing at the exact record when one is wrong; writing JSONL
(:func:`write_jsonl`).

Every error a user's data can cause is a :class:`RecordError` naming file, line (or row) and field, raised
before any training work starts. Line numbers are the file's own: blank lines and a CSV header count, and a
CSV record spanning several lines (a quoted newline) is named by its first line. Files must be UTF-8 (a
byte-order mark is accepted); anything else is reported at its first bad line. In an ``.xlsx`` workbook (the first
sheet, or ``file.xlsx#Sheet``) the line is the spreadsheet's row number: row 1 is the header.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".xlsx": "xlsx"}
SUPPORTED = ".jsonl, .csv, .parquet or .xlsx"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SAVE_AS_UTF8 = "save the file as UTF-8"


class RecordError(ValueError):
    """A record in a data file is invalid. ``str()`` reads ``file:line: field 'x': what is wrong``; ``hint`` (optional)
    says how to fix it when the message alone does not."""

    def __init__(self, location: str, field: str | None, message: str, hint: str | None = None):
        self.location, self.field, self.message, self.hint = location, field, message, hint
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{location}: {where}{message}")


class DataConfigError(ValueError):
    """A data setting the stage needs is missing or does not fit the files (``data.test_file is required to test``)."""


@dataclass
class RecordFile:
    """A loaded file: its ``datasets.Dataset`` and how to name record ``i`` in an error message.

    The DataModules read records through this interface only (``dataset``, ``name``, ``locate``, ``error``,
    ``numbers_as_text``, ``tabular``, ``source_dir``), which ``datamodules.sources`` also gives a ``datasets``
    dataset (``hf://...``) and a weighted mix of sources.
    """

    path: Path
    dataset: "datasets.Dataset"
    lines: list[int] | None  # 1-based line of each record (JSONL, CSV; spreadsheet row for .xlsx); None for Parquet
    sheet: str | None = None  # the sheet named by ``file.xlsx#Sheet``

    @property
    def name(self) -> str:
        return f"{self.path}#{self.sheet}" if self.sheet else str(self.path)

    @property
    def numbers_as_text(self) -> bool:
        """A column mixing numbers and text is read as text (CSV, .xlsx): a number may arrive as its text."""
        return self.path.suffix.lower() in (".csv", ".xlsx")

    @property
    def tabular(self) -> bool:
        """Cells of a table (CSV, Parquet, .xlsx): an empty cell is a value (no labels), not a missing field."""
        return file_format(self.path) != "json"

    def source_dir(self, index: int) -> Path | None:
        """The folder a relative path in record ``index`` (an image) is resolved against: the file's own."""
        return self.path.parent

    def locate(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.name}:{self.lines[index]}"
        return f"{self.name} row {index + 1}"

    def error(self, index: int, field: str | None, message: str) -> RecordError:
        return RecordError(self.locate(index), field, message)


def file_format(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise RecordError(str(path), None, f"unsupported data file type {path.suffix!r}; use {SUPPORTED}") from None


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


def text_lines(path: str | Path):
    """``(line number, text)`` of every line of a UTF-8 file (line ending and a leading byte-order mark removed).

    A line that is not UTF-8 raises :class:`RecordError` at that line, with the first bad byte and its column;
    UTF-16 text (a UTF-16 byte-order mark, or NUL bytes) is named as such.
    """
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1:
                if raw.startswith(_UTF16_BOMS):
                    raise RecordError(where, None, "not UTF-8 text: the file is UTF-16 (it starts with a UTF-16 "
                                      f"byte-order mark); {SAVE_AS_UTF8}")
                raw = raw[len(_UTF8_BOM):] if raw.startswith(_UTF8_BOM) else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[:e.start].decode("utf-8", errors="replace")) + 1
                raise RecordError(where, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}); "
                                  f"{SAVE_AS_UTF8}") from None
            if "\x00" in text:
                raise RecordError(where, None, f"not UTF-8 text (NUL bytes: UTF-16 without a byte-order mark?); "
                                  f"{SAVE_AS_UTF8}")
            yield lineno, text.rstrip("\r\n")


def parse_json_line(raw: str, location: str):
    """One JSON line; :class:`RecordError` at ``location`` (``file:line``) when it is not valid JSON. The column
    is the line's own (its line ending and a byte-order mark are not part of it)."""
    text = raw.rstrip("\r\n").lstrip("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = "; the line ends before the JSON value is complete" if e.pos >= len(text.rstrip()) else ""
        raise RecordError(location, None, f"invalid JSON ({e.msg} at column {e.colno}{cut})") from None


def json_objects(path: str | Path):
    """``(line number, object)`` of every non-blank line of a JSONL file, read as plain JSON; a line that is
    not a JSON object (or not UTF-8) raises :class:`RecordError` naming file and line."""
    for lineno, raw in text_lines(path):
        if not raw.strip():
            continue
        obj = parse_json_line(raw, f"{path}:{lineno}")
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{lineno}", None, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _scan_jsonl(path: Path) -> list[int]:
    """Check that each non-blank line is a JSON object whose fields keep one type across the file (Arrow
    needs one type per column); return the line number of each record.

    When a field's type differs between records, the odd one out is blamed: the first record whose type is
    not the one most records have (ties: the type seen first).
    """
    lines: list[int] = []
    kinds: dict[str, dict[str, list]] = {}  # field -> kind -> [count, first line, first value]
    for lineno, obj in json_objects(path):
        for key, value in obj.items():
            kind = _json_kind(value)
            if kind is not None:
                seen = kinds.setdefault(key, {}).setdefault(kind, [0, lineno, value])
                seen[0] += 1
        lines.append(lineno)
    for key, by_kind in kinds.items():
        if len(by_kind) > 1:
            expected = max(by_kind, key=lambda k: (by_kind[k][0], -by_kind[k][1]))
            odd = min((k for k in by_kind if k != expected), key=lambda k: by_kind[k][1])
            _, lineno, value = by_kind[odd]
            raise RecordError(f"{path}:{lineno}", key,
                              f"expected a {expected} like line {by_kind[expected][1]}, got {odd} {value!r}")
    return lines


def _scan_csv(path: Path) -> list[int]:
    """The first line of each CSV record (line 1 is the header; blank lines are skipped, as ``datasets`` does);
    a record with more or fewer fields than the header is a :class:`RecordError` at its line."""
    lines = text_lines(path)
    reader = csv.reader(text + "\n" for _, text in lines)
    header = next(reader, None)
    if not header:
        raise RecordError(str(path), None, "file has no header line")
    starts, end = [], reader.line_num
    for row in reader:
        start, end = end + 1, reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise RecordError(f"{path}:{start}", None, f"{len(row)} fields, but the header has {len(header)}: "
                              f"{', '.join(header)}")
        starts.append(start)
    return starts


def _read_error(path: Path, error: Exception) -> RecordError:
    """What ``datasets`` (Arrow, pandas) could not read, as one line at the file."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    detail = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    return RecordError(str(path), None, f"cannot be read as {path.suffix.lstrip('.')}: {detail}")


def _xlsx_cell(value):
    """A cell as a record value: dates as ISO text, whole-number floats kept as floats (Arrow keeps the column's
    type), empty text as missing."""
    import datetime

    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _read_xlsx(path: Path, sheet: str | None) -> tuple["datasets.Dataset", list[int]]:
    """The sheet (the first one when ``sheet`` is None) as a ``datasets.Dataset`` and the row number of each record.

    Row 1 is the header; empty rows are skipped (as blank CSV lines are). A column mixing numbers and text is read
    as text, as pandas reads such a CSV column, so that Arrow gets one type per column.
    """
    import datasets

    try:
        import openpyxl
    except ImportError:
        raise RecordError(str(path), None, "reading .xlsx needs openpyxl: pip install openpyxl") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # a zip/XML error: not a workbook
        raise _read_error(path, e) from e
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise RecordError(str(path), None, f"no sheet {sheet!r}; the workbook has sheets {book.sheetnames}")
        rows = book[sheet] if sheet is not None else book.worksheets[0]
        where = f"{path}#{sheet}" if sheet else str(path)
        it = rows.iter_rows(values_only=True)
        header = next(it, None)
        if not header or all(v is None for v in header):
            raise RecordError(f"{where}:1", None, "the sheet has no header row (row 1 names the fields)")
        while header and header[-1] is None:
            header = header[:-1]
        names = []
        for col, name in enumerate(header, start=1):
            if name is None or not str(name).strip():
                raise RecordError(f"{where}:1", None, f"column {col} has no name in the header row")
            if str(name) in names:
                raise RecordError(f"{where}:1", None, f"column name {str(name)!r} appears twice in the header row")
            names.append(str(name))
        columns: dict[str, list] = {n: [] for n in names}
        lines = []
        for rowno, row in enumerate(it, start=2):
            values = [_xlsx_cell(v) for v in row]
            if all(v is None for v in values):
                continue
            extra = [v for v in values[len(names):] if v is not None]
            if extra:
                raise RecordError(f"{where}:{rowno}", None, f"a value ({extra[0]!r}) right of the last named column "
                                  f"({names[-1]})")
            values += [None] * (len(names) - len(values))
            for name, value in zip(names, values):
                columns[name].append(value)
            lines.append(rowno)
    finally:
        book.close()
    for name, values in columns.items():
        kinds = {_json_kind(v) for v in values} - {None}
        if len(kinds) > 1:
            columns[name] = [None if v is None else _number_text(v) for v in values]
    return datasets.Dataset.from_dict(columns), lines


def _number_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def require_file(path: Path) -> Path:
    """``path`` if it is an existing file; else the one-line error a data file that is missing or a directory gets."""
    if path.is_dir():
        raise IsADirectoryError(f"data file {path} is a directory; give a {SUPPORTED} file")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"data file not found: {path}{where}")
    return path


def load_record_file(path: str | Path, cache_dir: str | None = None) -> RecordFile:
    """Load a JSONL/CSV/Parquet file with ``datasets`` (Arrow-cached), after a check of its encoding and syntax
    (JSONL, CSV) that names the first bad line; or the first sheet of an ``.xlsx`` workbook (``file.xlsx#Sheet``:
    that sheet)."""
    import datasets

    path, sheet = str(path), None
    if "#" in path and path.rpartition("#")[0].lower().endswith(".xlsx"):
        path, _, sheet = path.rpartition("#")
    path = require_file(Path(path))
    fmt = file_format(path)
    if fmt == "xlsx":
        ds, lines = _read_xlsx(path, sheet)
        if len(ds) == 0:
            raise RecordError(f"{path}#{sheet}" if sheet else str(path), None, "the sheet has no records")
        return RecordFile(path=path, dataset=ds, lines=lines, sheet=sheet)
    lines = _scan_jsonl(path) if fmt == "json" else _scan_csv(path) if fmt == "csv" else None
    if lines == []:
        raise RecordError(str(path), None, "file has no records")
    import pyarrow

    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache_dir)
    except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException) as e:
        raise _read_error(path, e) from e
    if len(ds) == 0:
        raise RecordError(str(path), None, "file has no records")
    if fmt == "csv" and lines is not None and len(lines) != len(ds):
        lines = None  # pandas split the rows otherwise (quoting): name rows, not lines
    elif lines is not None and len(lines) != len(ds):
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


def check_text(rf: RecordFile, field: str, numbers: bool = False) -> bool:
    """Every value is non-empty text; with ``numbers``, a column of finite numbers is accepted too. Returns
    whether the column holds numbers (a typed column holds one or the other)."""
    numeric = False
    for i, value in enumerate(rf.dataset[field]):
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise rf.error(i, field, f"expected text or a finite number, got {value!r}")
            numeric = True
            continue
        if not isinstance(value, str):
            expected = "text or a number" if numbers else "text"
            raise rf.error(i, field, f"expected {expected}, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise rf.error(i, field, "empty text")
    return numeric


def check_number(rf: RecordFile, field: str) -> list[float]:
    """The field's values as floats. In a CSV file a column with one non-number is read as text, so there a
    value is a number when its text parses as one, and the first that does not is named."""
    text_numbers = rf.numbers_as_text
    values = []
    for i, value in enumerate(rf.dataset[field]):
        if text_numbers and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise rf.error(i, field, f"expected a number, got {value!r}") from None
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
