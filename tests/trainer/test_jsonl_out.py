"""The JSONL writer (``datamodules.records.write_jsonl``) that compare and the instruction builders write with,
and the resumable-output helpers of ``trainer.jsonl_out`` around it."""

from __future__ import annotations

import json

from datamodules.records import write_jsonl
from trainer.jsonl_out import rejects_path_for, truncate_unfinished, written_ids


def test_replace_writes_utf8_one_object_per_line_atomically(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(path, [{"id": "q1", "answer": "내일 날씨"}, {"id": 2, "answer": None}])
    raw = path.read_bytes()
    assert raw == '{"id": "q1", "answer": "내일 날씨"}\n{"id": 2, "answer": null}\n'.encode()  # no \\uXXXX escapes
    write_jsonl(path, [{"id": "x"}])  # replaced, not appended
    assert path.read_text(encoding="utf-8") == '{"id": "x"}\n'
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # the temporary file is gone
    write_jsonl(path, [])
    assert path.read_bytes() == b""


def test_append_adds_lines_and_writes_nothing_for_no_rows(tmp_path):
    path = tmp_path / "new" / "pairs.jsonl"
    write_jsonl(path, [], append=True)
    assert not path.exists()
    write_jsonl(path, [{"id": "a-1"}], append=True)
    write_jsonl(path, [{"id": "a-2"}, {"id": "b-1"}], append=True)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a-1", "a-2", "b-1"]


def test_resume_helpers_read_what_write_jsonl_appended(tmp_path):
    out = tmp_path / "pairs.jsonl"
    assert rejects_path_for(out) == tmp_path / "pairs.rejected.jsonl"
    write_jsonl(out, [{"id": "r1-1", "source_id": "r1"}, {"id": "r1-2", "source_id": "r1"}], append=True)
    assert truncate_unfinished(out) == 0
    with out.open("a", encoding="utf-8") as f:
        f.write('{"id": "r2-1", "sou')  # a crash mid-write
    assert truncate_unfinished(out) == len('{"id": "r2-1", "sou')
    assert written_ids(out, "source_id", "not ours") == {"r1"}
