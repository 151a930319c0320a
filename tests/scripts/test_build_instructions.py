"""scripts/build_instructions.py against a real (tiny) OpenAI-compatible HTTP server and a tiny local causal LM,
and the shipped instruction samples of scripts/make_instruction_samples.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from datamodules.records import RecordError, check_text, load_record_file, require_fields
from tests.conftest import load_script as _load_script
from trainer.chat_client import ChatClient

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples" / "instructions"
TOK_DIR = REPO / "data" / "tokenizers" / "tiny-bpe"
MISSION_SYSTEM = (
    "You are an API that converts text provided by a user role a single question and answer in perfect JSON format"
)
MISSION_INSTRUCTION = (
    "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
)




@pytest.fixture(scope="module")
def bi():
    return _load_script("build_instructions")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _records(n: int) -> list[dict]:
    return [
        {
            "id": f"rd-{i:04d}",
            "title": f"Project {i}",
            "abstract": f"This project develops technology number {i}. It is tested at a pilot plant.",
            "application_fields": ["energy", "manufacturing"],
            "keywords": ["pilot", f"tech-{i}"],
            "program_type": "Industrial Technology Innovation Program",
            "phase": "Phase 1 (basic research)",
            "firm": "Hanbit Energy Materials Co., Ltd.",
        }
        for i in range(1, n + 1)
    ]


def _title(user_message: str) -> str:
    return next(line[len("Title: "):] for line in user_message.splitlines() if line.startswith("Title: "))


def _default_reply(title: str) -> str:
    return json.dumps({"question": f"What does {title} develop?", "answer": f"{title} develops a technology."})


class TeacherServer:
    """A minimal OpenAI-compatible chat-completions server on 127.0.0.1 (free port), in a thread.

    ``reply(title)`` gives the assistant content for a record (or an HTTP error status); every request body
    and its headers are kept.
    """

    def __init__(self, reply=_default_reply):
        self.reply = reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                content = server.reply(_title(body["messages"][1]["content"]))
                if isinstance(content, int):  # an HTTP error status
                    self.send_error(content, "scripted error")
                    return
                payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.alive = True

    def stop(self):
        if self.alive:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.alive = False

    def titles(self) -> list[str]:
        return [_title(r["messages"][1]["content"]) for r in self.requests]


@pytest.fixture
def server():
    servers: list[TeacherServer] = []

    def start(reply=_default_reply) -> TeacherServer:
        servers.append(TeacherServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _assert_valid_alpaca(path: Path) -> list[dict]:
    """Valid for tuneloop's Alpaca loader: the record checks of datamodules.records pass."""
    rows = _read_jsonl(path)
    for r in rows:
        assert set(r) == {"id", "source_id", "instruction", "input", "output"}
        assert r["instruction"] == MISSION_INSTRUCTION
        assert r["id"].startswith(r["source_id"] + "-")
    rf = load_record_file(path)
    require_fields(rf, ["instruction", "input", "output"])
    for name in ("instruction", "input", "output"):
        check_text(rf, name)
    assert len({r["id"] for r in rows}) == len(rows)
    return rows


# ----- HTTP teacher -------------------------------------------------------------------------------------
def test_http_teacher_accepts_valid_and_fenced_rejects_invalid(bi, server, tmp_path, monkeypatch, capsys):
    def reply(title: str) -> str:
        if title == "Project 3":
            return "Sure! Here is a question: what does project 3 do?"  # never JSON
        if title == "Project 4":
            return "```json\n" + _default_reply(title) + "\n```"
        if title == "Project 5":  # several pairs in one reply
            return json.dumps([{"question": "Q1 about 5?", "answer": "A1."},
                               {"question": "Q2 about 5?", "answer": "A2."}])
        return _default_reply(title)

    srv = server(reply)
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(5))
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setenv("TUNELOOP_TEST_TEACHER_KEY", "sk-test")
    summary = bi.main([str(raw), "--out", str(out), "--teacher-url", srv.url, "--teacher-model", "teacher-7b",
                       "--api-key-env", "TUNELOOP_TEST_TEACHER_KEY", "--retries", "2", "--no-progress"])

    assert (summary.accepted, summary.rejected, summary.skipped_done, summary.pairs_written) == (4, 1, 0, 5)
    assert summary.processed == 5 and summary.stopped is None
    assert summary.pairs_per_record == pytest.approx(5 / 4)
    printed = capsys.readouterr().out
    assert "processed this run: 5 (accepted 4, rejected 1)" in printed and "pairs written: 5" in printed

    # 4 records answered at once, project 3 asked 1 + 2 times.
    assert len(srv.requests) == 7 and srv.titles().count("Project 3") == 3
    for body, headers in zip(srv.requests, srv.headers):
        assert body["model"] == "teacher-7b"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert body["messages"][0]["content"] == MISSION_SYSTEM
        assert headers["Authorization"] == "Bearer sk-test"
    first = srv.requests[0]["messages"][1]["content"]
    for text in ("Title: Project 1", "Abstract: This project develops technology number 1.",
                 "Application fields: energy, manufacturing", "Firm: Hanbit Energy Materials Co., Ltd."):
        assert text in first
    retry = [r["messages"][1]["content"] for r in srv.requests if "Project 3" in r["messages"][1]["content"]][1]
    assert "previous reply was not usable (not valid JSON" in retry

    rows = _assert_valid_alpaca(out)
    assert [r["source_id"] for r in rows] == ["rd-0001", "rd-0002", "rd-0004", "rd-0005", "rd-0005"]
    assert rows[2]["input"] == "What does Project 4 develop?"  # the fence is gone
    assert [r["id"] for r in rows[3:]] == ["rd-0005-1", "rd-0005-2"]
    rejected = _read_jsonl(tmp_path / "pairs.rejected.jsonl")
    assert len(rejected) == 1 and rejected[0]["source_id"] == "rd-0003" and rejected[0]["attempts"] == 3
    assert rejected[0]["reason"].startswith("invalid reply: not valid JSON")
    assert rejected[0]["reply"].startswith("Sure!")

    # A second run has nothing to do: accepted and rejected records are both done.
    again = bi.main([str(raw), "--out", str(out), "--teacher-url", srv.url, "--teacher-model", "teacher-7b",
                     "--no-progress"])
    assert (again.skipped_done, again.processed) == (5, 0) and len(srv.requests) == 7


def test_several_workers_give_the_same_records(bi, server, tmp_path):
    srv = server()
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(8))
    teacher = bi.HttpTeacher(ChatClient(srv.url, "m", backoff=0.0))
    summary = bi.build(raw, tmp_path / "pairs.jsonl", teacher, workers=4)
    assert (summary.accepted, summary.pairs_written) == (8, 8)
    rows = _assert_valid_alpaca(tmp_path / "pairs.jsonl")
    assert sorted(r["source_id"] for r in rows) == [f"rd-{i:04d}" for i in range(1, 9)]


# ----- resuming -------------------------------------------------------------------------------------------
def test_resumes_after_the_server_dies(bi, server, tmp_path):
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(6))
    out = tmp_path / "pairs.jsonl"
    first = server()

    class DiesAfterThree(bi.HttpTeacher):
        """The server goes away right after its third answer."""

        def complete(self, system, user):
            reply = super().complete(system, user)
            if len(first.requests) == 3:
                first.stop()
            return reply

    summary = bi.build(raw, out, DiesAfterThree(ChatClient(first.url, "m", retries=1, backoff=0.0)))
    assert summary.stopped and "teacher unavailable" in summary.stopped
    assert (summary.accepted, summary.remaining) == (3, 3)
    assert "STOPPED with 3 records left" in summary.format()
    assert [r["source_id"] for r in _read_jsonl(out)] == ["rd-0001", "rd-0002", "rd-0003"]

    second = server()  # the server is back (a new one: its request count starts at 0)
    summary = bi.build(raw, out, bi.HttpTeacher(ChatClient(second.url, "m", backoff=0.0)))
    assert (summary.skipped_done, summary.accepted, summary.rejected, summary.stopped) == (3, 3, 0, None)
    assert second.titles() == ["Project 4", "Project 5", "Project 6"]
    rows = _assert_valid_alpaca(out)
    assert [r["source_id"] for r in rows] == [f"rd-{i:04d}" for i in range(1, 7)]  # each exactly once


class ScriptedTeacher:
    """An in-process teacher: two pairs per record; raises ``fail`` on call number ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None, fail: BaseException | None = None):
        self.calls: list[str] = []
        self.fail_at, self.fail = fail_at, fail

    def complete(self, system: str, user: str) -> str:
        self.calls.append(_title(user))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise self.fail
        t = self.calls[-1]
        return json.dumps([{"question": f"{t} Q1?", "answer": "A1."}, {"question": f"{t} Q2?", "answer": "A2."}])


def test_resumes_after_an_interrupt(bi, tmp_path):
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(6))
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bi.build(raw, out, ScriptedTeacher(fail_at=4, fail=KeyboardInterrupt()))
    assert len(_read_jsonl(out)) == 6  # 3 records x 2 pairs survived the interrupt

    teacher = ScriptedTeacher()
    summary = bi.build(raw, out, teacher)
    assert teacher.calls == ["Project 4", "Project 5", "Project 6"]
    assert (summary.skipped_done, summary.accepted, summary.pairs_written) == (3, 3, 6)
    rows = _assert_valid_alpaca(out)
    assert [r["id"] for r in rows] == [f"rd-{i:04d}-{k}" for i in range(1, 7) for k in (1, 2)]


def test_a_line_cut_off_mid_write_is_redone(bi, tmp_path):
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(3))
    out = tmp_path / "pairs.jsonl"
    bi.build(raw, out, ScriptedTeacher())
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 25])  # a crash while writing record 3's second line

    logged: list[str] = []
    teacher = ScriptedTeacher()
    summary = bi.build(raw, out, teacher, log=logged.append)
    assert teacher.calls == ["Project 3"] and summary.skipped_done == 2
    assert any("unfinished record" in m for m in logged)
    rows = _assert_valid_alpaca(out)
    assert [r["id"] for r in rows] == [f"rd-{i:04d}-{k}" for i in range(1, 4) for k in (1, 2)]


def test_http_errors_reject_the_record_or_stop_the_run(bi, server, tmp_path):
    def reply(title: str):
        return {"Project 1": 400, "Project 3": 503}.get(title) or _default_reply(title)

    srv = server(reply)
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(4))
    summary = bi.build(raw, tmp_path / "pairs.jsonl", bi.HttpTeacher(ChatClient(srv.url, "m", retries=1, backoff=0.0)))
    # 400: this record's request is refused, no retry; 503 twice: the server is unwell, the run stops.
    assert srv.titles() == ["Project 1", "Project 2", "Project 3", "Project 3"]
    assert (summary.accepted, summary.rejected, summary.remaining) == (1, 1, 2)
    assert "HTTP 503" in summary.stopped
    reason = _read_jsonl(tmp_path / "pairs.rejected.jsonl")[0]["reason"]
    assert reason.startswith("request rejected: HTTP 400")


def test_nothing_listening_stops_the_run_without_output(bi, tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(2))
    teacher = bi.HttpTeacher(ChatClient(f"http://127.0.0.1:{port}/v1", "m", backoff=0.0))
    summary = bi.build(raw, tmp_path / "pairs.jsonl", teacher)
    assert summary.stopped and "after 4 attempts" in summary.stopped
    assert (summary.processed, summary.remaining) == (0, 2)
    assert not (tmp_path / "pairs.jsonl").exists()


# ----- local model teacher --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 32) with the tiny-bpe tokenizer, saved as a model directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(TOK_DIR))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_local_model_teacher_runs_end_to_end(bi, tiny_llama, tmp_path, capsys):
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(2))
    out = tmp_path / "pairs.jsonl"
    summary = bi.main([str(raw), "--out", str(out), "--teacher-path", str(tiny_llama), "--max-new-tokens", "12",
                       "--retries", "1", "--device", "cpu", "--no-progress"])
    # Random weights do not write JSON: both records are rejected after 1 + 1 attempts, the run completes.
    assert (summary.accepted, summary.rejected, summary.pairs_written, summary.stopped) == (0, 2, 0, None)
    assert "processed this run: 2 (accepted 0, rejected 2)" in capsys.readouterr().out
    rejected = _read_jsonl(tmp_path / "pairs.rejected.jsonl")
    assert [r["source_id"] for r in rejected] == ["rd-0001", "rd-0002"]
    for r in rejected:
        assert r["attempts"] == 2 and r["reason"].startswith("invalid reply: ") and "after 2 attempts" in r["reason"]
    assert not out.exists() or not _read_jsonl(out)


@pytest.mark.slow
def test_local_model_prompt_longer_than_the_model_is_rejected(bi, tiny_llama, tmp_path):
    teacher = bi.LocalTeacher(tiny_llama, max_new_tokens=8, device="cpu")
    teacher.max_positions = 64  # far shorter than a record's prompt
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(1))
    summary = bi.build(raw, tmp_path / "pairs.jsonl", teacher, retries=3)
    assert summary.rejected == 1
    reason = _read_jsonl(tmp_path / "pairs.rejected.jsonl")[0]["reason"]
    assert reason.startswith("request rejected: prompt of") and "64 positions" in reason


# ----- raw record validation --------------------------------------------------------------------------------
def _bad_raw(tmp_path: Path) -> Path:
    good = _records(4)
    no_title = {k: v for k, v in good[1].items() if k != "title"}
    empty_abstract = {**good[2], "abstract": "   "}
    return _write_jsonl(tmp_path / "raw.jsonl", [good[0], no_title, empty_abstract, "{not json", good[3], good[0]])


def test_bad_raw_record_names_file_line_and_field(bi, tmp_path):
    raw = _bad_raw(tmp_path)
    with pytest.raises(RecordError) as e:
        bi.build(raw, tmp_path / "pairs.jsonl", ScriptedTeacher())
    assert str(e.value) == f"{raw}:2: field 'title': missing"
    with pytest.raises(SystemExit) as e:
        bi.main([str(raw), "--out", str(tmp_path / "pairs.jsonl"), "--teacher-url", "http://127.0.0.1:9/v1",
                 "--teacher-model", "m", "--no-progress"])
    assert f"{raw}:2: field 'title': missing" in str(e.value.code)
    assert not (tmp_path / "pairs.jsonl").exists()  # nothing starts before the input is valid


def test_skip_invalid_counts_instead(bi, tmp_path):
    raw = _bad_raw(tmp_path)
    logged: list[str] = []
    teacher = ScriptedTeacher()
    summary = bi.build(raw, tmp_path / "pairs.jsonl", teacher, skip_invalid=True, log=logged.append)
    assert (summary.records, summary.invalid, summary.accepted) == (2, 4, 2)
    assert teacher.calls == ["Project 1", "Project 4"]
    assert summary.invalid_errors == [
        f"{raw}:2: field 'title': missing",
        f"{raw}:3: field 'abstract': empty text",
        f"{raw}:4: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{raw}:6: field 'id': duplicate id 'rd-0001' (first on line 1)",
    ]
    assert len(logged) == 4 and "4 invalid skipped" in summary.format()


# ----- shipped instruction samples (scripts/make_instruction_samples.py) -------------------------------------
def test_instruction_samples_are_the_default_generation(tmp_path, capsys):
    script = _load_script("make_instruction_samples")
    script.main(["--out", str(tmp_path)])
    for name in ("raw_records", "train", "val", "test", "questions"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (SAMPLES / f"{name}.jsonl").read_bytes(), name
    assert "raw_records: 60" in capsys.readouterr().out


def test_instruction_samples_split_by_record_and_follow_mission(bi):
    raw, errors = bi.read_records(SAMPLES / "raw_records.jsonl")  # valid input for the builder
    assert len(raw) == 60 and not errors
    assert 15 <= sum(any("가" <= ch <= "힣" for ch in r["title"]) for r in raw) <= 30  # English and Korean
    splits = {s: _read_jsonl(SAMPLES / f"{s}.jsonl") for s in ("train", "val", "test")}
    sources = {s: {r["id"].rsplit("-q", 1)[0] for r in rows} for s, rows in splits.items()}
    assert [len(sources[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not sources[a] & sources[b], (a, b)
    assert sources["train"] | sources["val"] | sources["test"] == {r["id"] for r in raw}
    pairs = sum(len(rows) for rows in splits.values())
    assert pairs / 60 == pytest.approx(2.5)
    for rows in splits.values():
        for r in rows:
            assert set(r) == {"id", "instruction", "input", "output"}
            assert r["instruction"] == MISSION_INSTRUCTION and r["input"].strip() and r["output"].strip()
    questions = _read_jsonl(SAMPLES / "questions.jsonl")
    test_by_id = {r["id"]: r for r in splits["test"]}
    assert len(questions) == 10
    for q in questions:
        assert set(q) == {"id", "question", "reference"}
        assert (test_by_id[q["id"]]["input"], test_by_id[q["id"]]["output"]) == (q["question"], q["reference"])


# ----- CSV / Parquet input with a column mapping (--fields) ----------------------------------------------------
class RecordingTeacher:
    """An in-process teacher that keeps every user message; ``invalid_for``: titles answered with non-JSON."""

    def __init__(self, invalid_for: tuple[str, ...] = ()):
        self.users: list[str] = []
        self.invalid_for = invalid_for

    def complete(self, system: str, user: str) -> str:
        self.users.append(user)
        title = _title(user)
        return "no JSON here" if title in self.invalid_for else _default_reply(title)


FIELDS = "id=ProjectNo,title=Title,abstract=Summary,keywords=Keywords,phase=Phase,firm=Company"


def _table(n: int) -> dict[str, list]:
    """Raw records as a user's table: other column names, numeric ids and phase, keywords as one text cell."""
    return {
        "ProjectNo": [1000 + i for i in range(1, n + 1)],
        "Title": [f"Project {i}" for i in range(1, n + 1)],
        "Summary": [f"This project develops technology number {i}." for i in range(1, n + 1)],
        "Keywords": ["energy, pilot"] * n,
        "Phase": [2] * n,
        "Company": ["Hanbit"] * (n - 1) + [None],  # an empty cell: the optional field is left out
        "Budget": [1.5] * n,  # a column the builder does not use
    }


def _write_csv(path: Path, table: dict[str, list]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(table)
        for row in zip(*table.values()):
            writer.writerow(["" if v is None else v for v in row])
    return path


def test_csv_records_with_a_column_mapping(bi, server, tmp_path, capsys):
    raw = _write_csv(tmp_path / "projects.csv", _table(3))
    out = tmp_path / "pairs.jsonl"
    srv = server()
    summary = bi.main([str(raw), "--fields", FIELDS, "--out", str(out), "--teacher-url", srv.url,
                       "--teacher-model", "m", "--no-progress"])
    assert (summary.records, summary.accepted, summary.pairs_written) == (3, 3, 3)
    rows = _assert_valid_alpaca(out)
    assert [r["source_id"] for r in rows] == ["1001", "1002", "1003"]  # numeric ids become text
    first, last = (r["messages"][1]["content"] for r in (srv.requests[0], srv.requests[-1]))
    assert "Title: Project 1\nAbstract: This project develops technology number 1.\nKeywords: energy, pilot\n" \
           "Phase: 2\nFirm: Hanbit\n" in first
    assert "Firm:" not in last and "Budget" not in first


def test_parquet_records_with_a_column_mapping(bi, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _table(2)
    table["Keywords"] = [["energy", "pilot"], ["storage"]]  # real lists
    table["ProjectNo"] = [f"P-{i}" for i in table["ProjectNo"]]
    raw = tmp_path / "projects.parquet"
    pq.write_table(pa.table(table), raw)
    records, errors = bi.read_records(raw, fields=bi.parse_fields(FIELDS))
    assert not errors
    assert records[0] == {"id": "P-1001", "title": "Project 1", "keywords": ["energy", "pilot"], "phase": "2",
                          "abstract": "This project develops technology number 1.", "firm": "Hanbit"}
    teacher = RecordingTeacher()
    summary = bi.build(raw, tmp_path / "pairs.jsonl", teacher, fields=bi.parse_fields(FIELDS))
    assert summary.accepted == 2 and "Keywords: storage\n" in teacher.users[1]
    assert [r["source_id"] for r in _assert_valid_alpaca(tmp_path / "pairs.jsonl")] == ["P-1001", "P-1002"]


def test_missing_column_names_the_file_and_the_column(bi, tmp_path, capsys):
    table = _table(3)
    del table["Summary"]
    raw = _write_csv(tmp_path / "projects.csv", table)
    argv = [str(raw), "--fields", FIELDS, "--out", str(tmp_path / "pairs.jsonl"), "--teacher-url",
            "http://127.0.0.1:9/v1", "--teacher-model", "m", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        bi.main(argv)
    assert str(e.value.code) == (
        f"error: {raw}: field 'Summary': no such column (mapped to the builder's 'abstract' by --fields "
        f"abstract=Summary); the file has columns Budget, Company, Keywords, Phase, ProjectNo, Title")
    # Without a mapping, the builder's own name is looked for, and the message says how to map it.
    jsonl = _write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "Title": "T", "abstract": "A"}])
    with pytest.raises(RecordError, match=r"raw.jsonl: field 'title': no such column \(the builder's 'title'; name "
                                          r"your column with --fields title=COLUMN\); the file has columns Title, "
                                          r"abstract, id"):
        bi.read_records(jsonl)
    # A cell that is empty in one row is named by its line; unknown fields are refused by the parser.
    table = _table(3)
    table["Title"][1] = None
    raw = _write_csv(tmp_path / "projects.csv", table)
    with pytest.raises(RecordError, match=f"^{raw}:3: field 'Title': missing$"):
        bi.read_records(raw, fields=bi.parse_fields(FIELDS))
    with pytest.raises(SystemExit):
        bi.build_parser().parse_args([str(raw), "--out", "o.jsonl", "--teacher-url", "u", "--fields", "titel=Title"])
    assert "unknown field 'titel'" in capsys.readouterr().err


# ----- re-runs: what was skipped, and --overwrite -----------------------------------------------------------------
def test_rerun_says_what_it_skipped_and_overwrite_rebuilds(bi, server, tmp_path, capsys):
    raw = _write_jsonl(tmp_path / "raw.jsonl", _records(3))
    out = tmp_path / "pairs.jsonl"
    bi.build(raw, out, RecordingTeacher(invalid_for=("Project 2",)), retries=0)
    assert len(_read_jsonl(out)) == 2 and len(_read_jsonl(tmp_path / "pairs.rejected.jsonl")) == 1

    logged: list[str] = []
    teacher = RecordingTeacher()
    again = bi.build(raw, out, teacher, log=logged.append)
    note = (f"2 records already in {out} and 1 in {tmp_path / 'pairs.rejected.jsonl'}: skipped (resume); "
            f"use --overwrite to rebuild")
    assert logged == [note] and f"\n  {note}\n" in again.format()
    assert (again.processed, again.pairs_written, teacher.users) == (0, 0, [])

    # --overwrite checks the input first: a bad input deletes nothing.
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "title": "T"}])
    with pytest.raises(RecordError):
        bi.build(bad, out, teacher, overwrite=True)
    assert len(_read_jsonl(out)) == 2

    srv = server()
    fresh = bi.main([str(raw), "--out", str(out), "--overwrite", "--teacher-url", srv.url, "--teacher-model", "m",
                     "--no-progress"])
    assert (fresh.skipped_done, fresh.accepted, fresh.rejected) == (0, 3, 0)
    assert srv.titles() == ["Project 1", "Project 2", "Project 3"]
    assert [r["source_id"] for r in _assert_valid_alpaca(out)] == ["rd-0001", "rd-0002", "rd-0003"]
    assert not (tmp_path / "pairs.rejected.jsonl").exists()
    assert f"--overwrite: deleted {out}, {tmp_path / 'pairs.rejected.jsonl'} first" in capsys.readouterr().out
