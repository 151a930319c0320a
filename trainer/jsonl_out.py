"""Resumable JSONL output (reading JSONL with ``file:line`` errors is ``datamodules.records.json_objects``,
writing is ``datamodules.records.write_jsonl``).

A resumable writer appends each finished record at once (``write_jsonl(..., append=True)``: flushed and
fsynced), keeps its rejected inputs in ``<out stem>.rejected.jsonl`` and, on start, skips the ids already in
either file, and says so (:func:`resume_note`): a re-run that writes nothing must not look like a failure.
``--overwrite`` deletes both files first (:func:`start_afresh`). A crash during a write can leave a last line
without its newline: :func:`truncate_unfinished` removes it (and, where one record is written as several
lines, that record's other lines) so the record is redone.

One-shot writers (the split step, the feedback maker) write whole files and refuse to replace existing ones
unless told to: :func:`refuse_existing`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from datamodules.records import RecordError


def rejects_path_for(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.rejected.jsonl`` (same folder)."""
    out_path = Path(out_path)
    stem = out_path.name[: -len(".jsonl")] if out_path.name.endswith(".jsonl") else out_path.name
    return out_path.with_name(f"{stem}.rejected.jsonl")


def truncate_unfinished(path: Path, key: str | None = None,
                        record_of: Callable[[str], str | None] | None = None) -> int:
    """Remove a last line cut off mid-write; return the number of bytes removed (0: the file ends cleanly).

    With ``key`` and ``record_of`` (the value of ``key`` the cut-off text belongs to, or None), the complete
    lines just before it with the same ``key`` value go too: a record written as several lines is redone whole.
    """
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    group = record_of(data[cut:].decode("utf-8", "replace")) if record_of is not None else None
    if group is not None:
        while cut:
            start = data.rfind(b"\n", 0, cut - 1) + 1
            try:
                if json.loads(data[start:cut]).get(key) != group:
                    break
            except ValueError:
                break
            cut = start
    with path.open("r+b") as f:
        f.truncate(cut)
    return len(data) - cut


def written_ids(path: Path, key: str, not_ours: str) -> set[str]:
    """The text value of ``key`` on every line of an existing output file; a line without it raises
    :class:`RecordError` with the message ``not_ours``."""
    ids: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise RecordError(
                    f"{path}:{lineno}", None, f"invalid JSON in an existing output file ({e.msg})"
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
                raise RecordError(f"{path}:{lineno}", key, not_ours)
            ids.add(obj[key])
    return ids


def start_afresh(*paths: str | Path) -> list[Path]:
    """``--overwrite`` of a resumable writer: delete those of ``paths`` (an output and its rejects file) that
    exist; return them."""
    removed = []
    for path in map(Path, paths):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def resume_note(already: dict[str | Path, int], unit: str = "records") -> str | None:
    """What a resumed run skips, e.g. ``42 records already in out.jsonl and 3 in out.rejected.jsonl: skipped
    (resume); use --overwrite to rebuild``; None when ``already`` (file -> count) counts nothing."""
    parts = [(str(path), n) for path, n in already.items() if n]
    if not parts:
        return None
    (first, n), rest = parts[0], parts[1:]
    text = f"{n} {unit} already in {first}" + "".join(f" and {k} in {p}" for p, k in rest)
    return f"{text}: skipped (resume); use --overwrite to rebuild"


def refuse_existing(paths: list[str | Path], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming every existing file of ``paths`` unless ``overwrite``; checked before
    anything is written, so a refused run leaves every file as it was."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"output exists: {', '.join(existing)}; use --overwrite to replace "
                              f"{'it' if len(existing) == 1 else 'them'}")
