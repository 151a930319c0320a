"""PPE-safety sample data (MISSION §3): scripts/make_ppe_data.py draws the scenes and writes ground truth, test set,
operator feedback and validation records; scripts/build_feedback_instructions.py turns feedback into QA records of
types A-D (templates, or a vision-language teacher over an OpenAI-compatible HTTP API, here a local fake)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, load_script, write_jsonl

PPE = ROOT / "data" / "samples" / "ppe"
SCENARIO = "Raise an alert if any worker is missing a helmet or a safety vest."
RECORD_KEYS = {"id", "image", "scenario", "type", "question", "answer", "alert", "source_id", "review", "mode"}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _last_line(text: str) -> str:
    return text.rstrip().splitlines()[-1]


@pytest.fixture(scope="module")
def gen():
    return load_script("make_ppe_data")


@pytest.fixture(scope="module")
def bfi():
    return load_script("build_feedback_instructions")


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    return _read_jsonl(PPE / "scenes.jsonl")


@pytest.fixture(scope="module")
def regenerated(gen, bfi, tmp_path_factory) -> Path:
    """The documented commands, run again into a temporary folder."""
    out = tmp_path_factory.mktemp("ppe")
    gen.main(["--out", str(out), "--no-progress"])
    bfi.main([str(out / "feedback.jsonl"), "--out", str(out / "train_a.jsonl"), "--types", "A", "--no-progress"])
    bfi.main([str(out / "feedback.jsonl"), "--out", str(out / "train_ad.jsonl"), "--types", "A,B,C,D",
              "--no-progress"])
    return out


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ----- generator ----------------------------------------------------------------------------------------------------
def test_generator_is_deterministic_and_seeded(gen, tmp_path, capsys):
    small = ["--seed", "3", "--train", "12", "--val", "2", "--test", "4", "--feedback", "4", "--no-progress"]
    gen.main([*small, "--out", str(tmp_path / "a")])
    gen.main([*small, "--out", str(tmp_path / "b")])
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")
    assert len([f for f in files if f.endswith(".png")]) == 18
    for name in files:  # byte-identical, PNGs included
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    gen.main([*small[:1], "4", *small[2:], "--out", str(tmp_path / "c")])
    assert (tmp_path / "c" / "scenes.jsonl").read_bytes() != (tmp_path / "a" / "scenes.jsonl").read_bytes()
    # A smaller run into the same folder removes the images it no longer has.
    gen.main(["--train", "4", "--val", "0", "--test", "2", "--feedback", "2", "--no-progress",
              "--out", str(tmp_path / "a")])
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 6
    assert "removed 12 images" in capsys.readouterr().out


def test_shipped_data_is_what_the_scripts_make(regenerated):
    shipped = _files(PPE)
    assert shipped == _files(regenerated)
    expected = {"scenes.jsonl", "test.jsonl", "val.jsonl", "feedback.jsonl", "train_a.jsonl", "train_ad.jsonl"}
    assert expected <= set(shipped)
    for name in shipped:
        if name.endswith(".jsonl"):
            assert (PPE / name).read_bytes() == (regenerated / name).read_bytes(), name
        else:  # the same pixels (PNG bytes may differ with another zlib)
            with Image.open(PPE / name) as a, Image.open(regenerated / name) as b:
                assert a.mode == b.mode == "RGB" and a.size == b.size, name
                assert np.array_equal(np.asarray(a), np.asarray(b)), name
    assert sum((PPE / n).stat().st_size for n in shipped) < 3_000_000


def test_every_image_path_exists_and_opens(scenes):
    referenced = set()
    for name in ("scenes", "test", "val", "feedback", "train_a", "train_ad"):
        for r in _read_jsonl(PPE / f"{name}.jsonl"):
            path = PPE / r["image"]  # relative to the JSONL file's folder
            assert not Path(r["image"]).is_absolute() and path.is_file(), (name, r["id"])
            referenced.add(path.name)
    assert referenced == {p.name for p in (PPE / "images").glob("*.png")}
    for s in scenes:
        with Image.open(PPE / s["image"]) as im:
            im.verify()
        with Image.open(PPE / s["image"]) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert 112 <= im.width <= 224 and 112 <= im.height <= 224
            assert (im.width, im.height) == (s["width"], s["height"])


def test_ground_truth_is_consistent(gen, scenes):
    assert [s["id"] for s in scenes] == [f"ppe-{i:04d}" for i in range(1, 121)]
    for split, n in (("train", 72), ("val", 8), ("test", 40)):
        rows = [s for s in scenes if s["split"] == split]
        assert len(rows) == n and sum(s["compliant"] for s in rows) == n // 2, split
    torsos = set()
    for s in scenes:
        assert 1 <= len(s["workers"]) <= 5
        assert s["compliant"] == all(w["helmet"] and w["torso"] == "vest" for w in s["workers"]), s["id"]
        assert s["alert"] is (not s["compliant"])
        for w in s["workers"]:
            assert (w["helmet_color"] is None) == (not w["helmet"])
            assert w["helmet_color"] is None or w["helmet_color"] in ("yellow", "white", "orange", "red", "blue")
            assert w["torso_color"] in gen.TORSO_COLORS[w["torso"]]
            torsos.add(w["torso"])
            x0, y0, x1, y1 = w["box"]
            assert 0 <= x0 < x1 <= s["width"] and 0 <= y0 < y1 <= s["height"]
            for inner in ("head_box", "torso_box"):
                a0, b0, a1, b1 = w[inner]
                assert x0 <= a0 < a1 <= x1 and y0 <= b0 < b1 <= y1, (s["id"], inner)
        boxes = [w["box"] for w in s["workers"]]
        assert all(a[2] <= b[0] for a, b in zip(boxes, boxes[1:])), s["id"]  # left to right, apart
    assert torsos == {"vest", "lookalike", "plain"}
    workers = [w for s in scenes for w in s["workers"]]
    assert sum(w["torso"] == "lookalike" for w in workers) >= 20 and sum(not w["helmet"] for w in workers) >= 20


def test_drawing_matches_ground_truth(gen, scenes):
    """Exact colours: a vest's torso is vest colour plus reflective stripes, a look-alike T-shirt has none, a helmet
    shows its colour, a bare head none of the helmet colours; the stripe colour appears nowhere but on vests."""
    stripe = np.array(gen.STRIPE)
    helmet_colors = [np.array(c) for c in gen.HELMET_COLORS.values()]
    for s in scenes:
        pixels = np.asarray(Image.open(PPE / s["image"]).convert("RGB"))
        outside_vests = np.ones(pixels.shape[:2], bool)
        for w in s["workers"]:
            x0, y0, x1, y1 = w["torso_box"]
            torso = pixels[y0:y1, x0:x1].reshape(-1, 3)
            is_stripe = (torso == stripe).all(1)
            garment = np.array(gen.TORSO_COLORS[w["torso"]][w["torso_color"]])
            if w["torso"] == "vest":
                assert is_stripe.sum() >= 2 * 2 * (x1 - x0), s["id"]  # two stripes, at least 2 rows each
                assert ((torso == garment).all(1) | is_stripe).all(), s["id"]
                bx0, by0, bx1, by1 = w["box"]
                outside_vests[by0:by1, bx0:bx1] = False
            else:
                assert not is_stripe.any() and (torso == garment).all(), s["id"]
            x0, y0, x1, y1 = w["head_box"]
            head = pixels[y0:y1, x0:x1].reshape(-1, 3)
            if w["helmet"]:
                assert (head == np.array(gen.HELMET_COLORS[w["helmet_color"]])).all(1).sum() >= 12, s["id"]
            else:
                assert not any((head == c).all(1).any() for c in helmet_colors), s["id"]
                assert any((head == np.array(c)).all(1).sum() >= 6 for c in gen.HAIR_COLORS.values()), s["id"]
        assert not (pixels[outside_vests] == stripe).all(1).any(), s["id"]


def test_test_set_is_balanced_with_reference_answers(gen, bfi, scenes):
    test = _read_jsonl(PPE / "test.jsonl")
    truth = {s["id"]: s for s in scenes}
    assert len(test) == 40 and sum(r["alert"] for r in test) == 20
    assert gen.QUESTION_SUFFIX == bfi.QUESTION_SUFFIX  # the tuned prompt is the test prompt
    for r in test:
        assert set(r) == {"id", "image", "scenario", "question", "answer", "alert"}
        s = truth[r["id"]]
        assert s["split"] == "test" and r["alert"] == s["alert"] and r["scenario"] == SCENARIO
        assert r["question"].startswith(SCENARIO)
        assert '"Alert: True"' in r["question"] and '"Alert: False"' in r["question"]
        assert _last_line(r["answer"]) == f"Alert: {s['alert']}"
        n = len(s["workers"])
        assert r["answer"].startswith("There is 1 worker." if n == 1 else f"There are {n} workers")
        lookalikes = sum(w["torso"] == "lookalike" for w in s["workers"])
        assert r["answer"].count("T-shirt without reflective stripes") == lookalikes
        assert r["answer"].count("no helmet") == sum(not w["helmet"] for w in s["workers"])


def test_val_records_have_the_instruction_shape(scenes):
    val = _read_jsonl(PPE / "val.jsonl")
    truth = {s["id"]: s for s in scenes}
    assert len(val) == 8 and sum(r["alert"] for r in val) == 4
    for r in val:
        assert set(r) == RECORD_KEYS and r["type"] == "A" and r["id"] == f"{r['source_id']}-A"
        assert truth[r["source_id"]]["split"] == "val" and r["alert"] == truth[r["source_id"]]["alert"]
        assert _last_line(r["answer"]) == f"Alert: {r['alert']}"


def test_feedback_cases_are_hard_train_cases(bfi, scenes):
    feedback = _read_jsonl(PPE / "feedback.jsonl")
    truth = {s["id"]: s for s in scenes}
    assert len(feedback) == 24
    assert sum(f["failure"] == "false_positive" for f in feedback) == 12
    inconsistent = 0
    for f in feedback:
        assert set(f) == {"id", "image", "scenario", "failure", "feedback", "model_output"}
        s = truth[f["id"]]
        assert s["split"] == "train"
        correct = f["failure"] == "false_negative"
        assert s["alert"] == correct  # a false positive is a compliant scene, a false negative is not
        assert _last_line(f["model_output"]) == f"Alert: {not correct}"  # the monitor was wrong
        said = f["model_output"].rsplit("\n", 1)[0]
        if correct and re.search(r"not a safety vest|lacks a safety vest", said):
            inconsistent += 1  # the reasoning names the violation, the Alert line says False
    assert inconsistent >= 3
    # Look-alike T-shirts among the false negatives, real vests called T-shirts among the false positives.
    assert sum("T-shirt" in f["feedback"] for f in feedback if f["failure"] == "false_negative") >= 3
    assert sum("not a T-shirt" in f["feedback"] for f in feedback if f["failure"] == "false_positive") >= 3
    assert len(bfi.read_feedback(PPE / "feedback.jsonl")) == 24  # valid input for the builder


def test_shipped_instruction_sets(scenes):
    fb = {f["id"]: f for f in _read_jsonl(PPE / "feedback.jsonl")}
    a_only, a_to_d = _read_jsonl(PPE / "train_a.jsonl"), _read_jsonl(PPE / "train_ad.jsonl")
    assert [r["type"] for r in a_only] == ["A"] * 24
    assert len(a_to_d) == 96 and {t: sum(r["type"] == t for r in a_to_d) for t in "ABCD"} == dict.fromkeys("ABCD", 24)
    assert [r for r in a_to_d if r["type"] == "A"] == a_only
    for r in a_to_d:
        assert set(r) == RECORD_KEYS and (r["review"], r["mode"]) == ("accepted", "template")
        assert r["id"] == f"{r['source_id']}-{r['type']}"
        assert r["alert"] == (fb[r["source_id"]]["failure"] == "false_negative")
        assert _last_line(r["answer"]) == f"Alert: {r['alert']}"
        assert r["image"] == fb[r["source_id"]]["image"]


# ----- builder, template mode -------------------------------------------------------------------------------------
INCONSISTENT_OUTPUT = (
    "There are 2 workers. Worker 1 wears a yellow helmet and a fluorescent yellow safety vest with reflective stripes. "
    "Worker 2 wears a white helmet and an orange T-shirt without reflective stripes, not a safety vest. Worker 2 lacks "
    "a safety vest, but the work is routine.\nAlert: False"
)


def _case(tmp_path: Path, **overrides) -> dict:
    """A feedback record whose image lies in ``tmp_path/images``."""
    (tmp_path / "images").mkdir(exist_ok=True)
    if not (tmp_path / "images" / "a.png").exists():
        shutil.copy(PPE / "images" / "ppe-0009.png", tmp_path / "images" / "a.png")
    record = {
        "id": "case-1", "image": "images/a.png", "scenario": SCENARIO, "failure": "false_negative",
        "feedback": "The worker on the right wears an orange T-shirt without reflective stripes, not a vest. "
                    "The other worker wears a helmet and a proper vest. Alert should have been raised.",
        "model_output": INCONSISTENT_OUTPUT,
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not ...}


def test_template_mode_builds_all_four_types_from_one_record(bfi, tmp_path, capsys):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path)])
    out = tmp_path / "built" / "deeper" / "qa.jsonl"
    summary = bfi.main([str(feedback), "--out", str(out), "--no-progress"])
    rows = _read_jsonl(out)
    assert [r["id"] for r in rows] == ["case-1-A", "case-1-B", "case-1-C", "case-1-D"]
    assert [r["type"] for r in rows] == list("ABCD") and summary.written == dict.fromkeys("ABCD", 1)
    for r in rows:
        assert set(r) == RECORD_KEYS
        assert (r["alert"], r["source_id"], r["review"], r["mode"]) == (True, "case-1", "accepted", "template")
        assert r["image"] == "../../images/a.png" and (out.parent / r["image"]).is_file()  # relative to the output
        assert r["answer"].endswith("\nAlert: True") and r["question"].startswith(SCENARIO)
        assert "Alert should have been raised" not in r["answer"]  # a sentence about the decision, not a fact
        assert "orange T-shirt without reflective stripes" in r["answer"]  # the operator's facts
    a, b, c, d = (r["answer"] for r in rows)
    assert a.endswith("an alert must be raised.\nAlert: True")
    assert "reflective stripes" in b and "comply" in b
    assert "For no alert to be needed" in c and "put on a fluorescent safety vest" in c
    assert "Alert: False" in rows[3]["question"] and INCONSISTENT_OUTPUT in rows[3]["question"]
    assert d.startswith('The reasoning and the decision contradict each other: the answer says "Worker 2 wears a '
                        'white helmet and an orange T-shirt without reflective stripes, not a safety vest", which '
                        'breaks the rule, but its Alert line says False.')
    assert "written: 4 records (A 1, B 1, C 1, D 1)" in capsys.readouterr().out

    # Re-running resumes: nothing is written twice.
    again = bfi.main([str(feedback), "--out", str(out), "--no-progress"])
    assert again.skipped_done == 4 and again.total_written == 0 and len(_read_jsonl(out)) == 4


def test_types_a_only_false_positive_and_missing_model_output(bfi, tmp_path, capsys):
    fp = _case(tmp_path, id="case-2", failure="false_positive", model_output=...,
               feedback="False alarm. The worker on the left wears a fluorescent orange safety vest with two "
                        "reflective stripes, not a T-shirt. Both workers have helmets and vests.")
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path), fp])
    a_only = bfi.main([str(feedback), "--out", str(tmp_path / "a.jsonl"), "--types", "A", "--review", "pending",
                       "--no-progress"])
    rows = _read_jsonl(tmp_path / "a.jsonl")
    assert [r["id"] for r in rows] == ["case-1-A", "case-2-A"] and a_only.total_written == 2
    assert all(r["type"] == "A" and r["review"] == "pending" for r in rows)
    assert rows[1]["alert"] is False and rows[1]["answer"].endswith("no alert is needed.\nAlert: False")
    assert "False alarm" not in rows[1]["answer"]

    summary = bfi.main([str(feedback), "--out", str(tmp_path / "ad.jsonl"), "--no-progress"])
    assert [r["id"] for r in _read_jsonl(tmp_path / "ad.jsonl")][4:] == ["case-2-A", "case-2-B", "case-2-C"]
    assert summary.skipped == {"D: no model_output": 1}
    assert "skipped (D: no model_output): 1" in capsys.readouterr().out


def test_rerun_says_what_it_skipped_and_overwrite_rebuilds(bfi, tmp_path, capsys):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path)])
    out = tmp_path / "qa.jsonl"
    bfi.main([str(feedback), "--out", str(out), "--no-progress"])
    capsys.readouterr()
    again = bfi.main([str(feedback), "--out", str(out), "--types", "A,B", "--no-progress"])
    printed = capsys.readouterr().out
    note = f"2 records already in {out}: skipped (resume); use --overwrite to rebuild"
    assert printed.startswith(note + "\n") and f"\n  {note}\n" in printed
    assert again.total_written == 0

    # The feedback changed (the operator fixed a sentence): --overwrite rebuilds, the output holds only the new run.
    fixed = "The worker on the right wears an orange T-shirt without reflective stripes, not a safety vest."
    write_jsonl(feedback, [_case(tmp_path, feedback=fixed)])
    fresh = bfi.main([str(feedback), "--out", str(out), "--types", "A", "--overwrite", "--no-progress"])
    rows = _read_jsonl(out)
    assert (fresh.skipped_done, fresh.total_written, [r["id"] for r in rows]) == (0, 1, ["case-1-A"])
    assert rows[0]["answer"].startswith(fixed)
    assert f"--overwrite: deleted {out} first" in capsys.readouterr().out

    # Invalid feedback with --overwrite: nothing is deleted.
    write_jsonl(feedback, [_case(tmp_path, failure="unknown")])
    with pytest.raises(SystemExit):
        bfi.main([str(feedback), "--out", str(out), "--overwrite", "--no-progress"])
    assert _read_jsonl(out) == rows


def _run_bad(bfi, tmp_path, rows, capsys) -> str:
    feedback = write_jsonl(tmp_path / "feedback.jsonl", rows)
    with pytest.raises(SystemExit) as e:
        bfi.main([str(feedback), "--out", str(tmp_path / "out.jsonl"), "--no-progress"])
    assert e.value.code == 2
    assert not (tmp_path / "out.jsonl").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"feedback": ...}, "field 'feedback': missing"),
        ({"scenario": "  "}, "field 'scenario': empty text"),
        ({"failure": "false_alarm"}, "field 'failure': unknown value 'false_alarm'; expected one of false_positive"),
        ({"image": "images/nope.png"}, "field 'image': image file not found"),
        ({"model_output": 3}, "field 'model_output': expected text, got int 3"),
    ],
)
def test_bad_feedback_names_file_line_and_field(bfi, tmp_path, capsys, overrides, expected):
    err = _run_bad(bfi, tmp_path, [_case(tmp_path), _case(tmp_path, id="case-2", **overrides)], capsys)
    assert err.startswith(f"error: {tmp_path / 'feedback.jsonl'}:2: {expected}")


def test_bad_feedback_from_the_command_line_exits_2_without_traceback(tmp_path):
    (tmp_path / "images").mkdir()
    shutil.copy(PPE / "images" / "ppe-0009.png", tmp_path / "images" / "a.png")
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps(_case(tmp_path)) + "\n{not json\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_feedback_instructions.py"), str(feedback),
                           "--out", str(tmp_path / "out.jsonl")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {feedback}:2: invalid JSON (Expecting property name enclosed in double " \
                                  f"quotes at column 2)"
    assert "Traceback" not in proc.stderr


def test_review_subcommand(bfi, tmp_path, capsys):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path)])
    drafts = tmp_path / "drafts.jsonl"
    bfi.main([str(feedback), "--out", str(drafts), "--review", "pending", "--no-progress"])
    counts = bfi.main(["review", "--in", str(drafts), "--accept", "case-1-A", "--reject", "case-1-C"])
    assert counts == {"pending": 2, "accepted": 1, "edited": 0, "rejected": 1}
    assert [r["review"] for r in _read_jsonl(drafts)] == ["accepted", "pending", "rejected", "pending"]
    counts = bfi.main(["review", "--in", str(drafts), "--accept-all", "--drop-rejected", "--out",
                       str(tmp_path / "final.jsonl")])
    assert counts == {"pending": 0, "accepted": 3, "edited": 0, "rejected": 0}
    assert [r["id"] for r in _read_jsonl(tmp_path / "final.jsonl")] == ["case-1-A", "case-1-B", "case-1-D"]
    assert "wrote 3 records" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bfi.main(["review", "--in", str(drafts), "--accept", "case-9-A"])
    assert e.value.code == 2 and "no record with id 'case-9-A'" in capsys.readouterr().err


# ----- builder, teacher mode over a fake OpenAI-compatible server ---------------------------------------------------
def _draft(text: str, alert: bool | None = None) -> str:
    """A valid draft for the request text (its type and correct decision are in the prompt)."""
    kind = re.search(r"of type ([ABCD])\.", text).group(1)
    correct = re.search(r"The correct decision for this image is Alert: (True|False)\.", text).group(1) == "True"
    alert = correct if alert is None else alert
    return json.dumps({"question": f"Type {kind} question?", "answer": f"Type {kind} answer.\nAlert: {alert}",
                       "alert": alert})


class FakeTeacher:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 in a thread; ``reply(n, text)`` gives the
    assistant content of request ``n`` (0-based), or an int HTTP status."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                text = next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
                content = fake.reply(len(fake.requests) - 1, text)
                if isinstance(content, int):
                    self.send_error(content, "scripted error")
                    return
                payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload.encode())))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [next(p["text"] for p in b["messages"][1]["content"] if p["type"] == "text") for b in self.requests]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def fake_teacher():
    started: list[FakeTeacher] = []

    def start(reply) -> FakeTeacher:
        started.append(FakeTeacher(reply))
        return started[-1]

    yield start
    for t in started:
        t.stop()


def _teacher_args(feedback: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [str(feedback), "--out", str(out), "--mode", "teacher", "--teacher-url", url, "--teacher-model", "vlm",
            "--no-progress", *extra]


def test_teacher_retries_after_invalid_json(bfi, fake_teacher, tmp_path, capsys):
    srv = fake_teacher(lambda n, text: "Sure, here is a question!" if n == 0 else _draft(text))
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path)])
    out = tmp_path / "drafts.jsonl"
    summary = bfi.main(_teacher_args(feedback, out, srv.url, "--types", "A", "--retries", "2"))
    assert (summary.total_written, summary.retries, summary.rejected) == (1, 1, 0)
    rows = _read_jsonl(out)
    assert len(rows) == 1 and set(rows[0]) == RECORD_KEYS
    row = rows[0]
    assert (row["id"], row["review"], row["mode"], row["alert"]) == ("case-1-A", "pending", "teacher", True)
    assert rows[0]["answer"] == "Type A answer.\nAlert: True" and rows[0]["image"] == "images/a.png"
    # The image travels as a base64 data URL; the retry names what was wrong.
    assert len(srv.requests) == 2
    body = srv.requests[0]
    assert body["model"] == "vlm" and body["messages"][0]["role"] == "system"
    image_part = next(p for p in body["messages"][1]["content"] if p["type"] == "image_url")
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == (tmp_path / "images" / "a.png").read_bytes()
    first, retry = srv.texts()
    assert "orange T-shirt without reflective stripes" in first and "Alert: True" in first
    assert "previous reply was not usable: not valid JSON" in retry
    assert "1 retries, 0 rejected" in capsys.readouterr().out


def test_teacher_draft_contradicting_the_failure_type_is_rejected(bfi, fake_teacher, tmp_path):
    # A false negative needs Alert: True; this teacher always says False (consistently within the draft).
    srv = fake_teacher(lambda n, text: _draft(text, alert=False))
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path)])
    out = tmp_path / "drafts.jsonl"
    summary = bfi.main(_teacher_args(feedback, out, srv.url, "--types", "A,B", "--retries", "1"))
    assert (summary.total_written, summary.rejected, summary.retries) == (0, 2, 2) and len(srv.requests) == 4
    assert not out.exists() or not _read_jsonl(out)
    rejected = _read_jsonl(tmp_path / "drafts.rejected.jsonl")
    assert [r["id"] for r in rejected] == ["case-1-A", "case-1-B"]
    assert all(r["attempts"] == 2 and "correct decision for this image is Alert: True" in r["reason"] for r in rejected)
    assert 'previous reply was not usable: "alert" is false' in srv.texts()[1]  # the error is fed back


@pytest.mark.parametrize(
    "reply, message",
    [
        ('{"question": "Q?", "answer": "A.\\nAlert: True"}', "'alert' must be true or false"),
        ('{"question": "", "answer": "A.\\nAlert: True", "alert": true}', "'question' is empty"),
        ('{"question": "Q?", "answer": "A. Alert: yes", "alert": true}', 'must end with a last line "Alert: True"'),
        ('{"question": "Q?", "answer": "A.\\nAlert: False", "alert": true}', "contradicts"),
        ('["Q?", "A"]', "expected a JSON object"),
    ],
)
def test_draft_validation(bfi, reply, message):
    with pytest.raises(bfi.InvalidDraft, match=re.escape(message)):
        bfi.parse_draft(reply, True)
    fenced = "```json\n" + '{"question": "Q?", "answer": "A.\\nAlert: True", "alert": true}' + "\n```"
    assert bfi.parse_draft(fenced, True) == {"question": "Q?", "answer": "A.\nAlert: True", "alert": True}


def test_teacher_run_resumes_after_the_server_goes_away(bfi, fake_teacher, tmp_path, capsys):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_case(tmp_path), _case(tmp_path, id="case-2")])
    out = tmp_path / "drafts.jsonl"
    # The third request gets 401 (a misconfigured or vanished server): the run stops, keeping what it made.
    first = fake_teacher(lambda n, text: 401 if n == 2 else _draft(text))
    with pytest.raises(SystemExit) as e:
        bfi.main(_teacher_args(feedback, out, first.url))
    assert e.value.code == 2 and "STOPPED" in capsys.readouterr().out
    assert [r["id"] for r in _read_jsonl(out)] == ["case-1-A", "case-1-B"]
    # A line cut off mid-write is removed and redone.
    with out.open("a", encoding="utf-8") as f:
        f.write('{"id": "case-1-C", "image": "images/a.pn')
    second = fake_teacher(lambda n, text: _draft(text))
    summary = bfi.main(_teacher_args(feedback, out, second.url))
    assert summary.skipped_done == 2 and summary.total_written == 6 and summary.stopped is None
    assert [re.search(r"of type ([ABCD])", t).group(1) for t in second.texts()] == list("CDABCD")
    ids = [r["id"] for r in _read_jsonl(out)]
    assert ids == [f"case-{i}-{t}" for i in (1, 2) for t in "ABCD"]
    # Done is done: a third run asks nothing.
    third = fake_teacher(lambda n, text: _draft(text))
    assert bfi.main(_teacher_args(feedback, out, third.url)).skipped_done == 8 and not third.requests


def test_local_teacher_sends_the_image_and_decodes_only_new_tokens(bfi, tmp_path):
    """LocalTeacher.complete with a stand-in processor and model (a real VLM is too big for the test suite)."""
    import contextlib

    class Batch(dict):
        def to(self, device):
            self["device"] = device
            return self

    class Processor:
        def apply_chat_template(self, messages, **kwargs):
            self.messages, self.kwargs = messages, kwargs
            return Batch(input_ids=np.array([[1, 2, 3]]))

        def batch_decode(self, ids, skip_special_tokens):
            return [" ".join(map(str, row)) for row in ids.tolist()]

    class Model:
        def generate(self, **kwargs):
            self.kwargs = kwargs
            return np.array([[1, 2, 3, 7, 8]])

    teacher = object.__new__(bfi.LocalTeacher)
    teacher.torch = type("FakeTorch", (), {"no_grad": staticmethod(contextlib.nullcontext)})
    teacher.processor, teacher.model, teacher.device, teacher.max_new_tokens = Processor(), Model(), "cpu", 64
    shutil.copy(PPE / "images" / "ppe-0009.png", tmp_path / "a.png")
    assert teacher.complete("system text", "user text", tmp_path / "a.png") == "7 8"
    system, user = teacher.processor.messages
    assert system == {"role": "system", "content": [{"type": "text", "text": "system text"}]}
    assert [p["type"] for p in user["content"]] == ["image", "text"] and user["content"][1]["text"] == "user text"
    assert isinstance(user["content"][0]["image"], Image.Image) and user["content"][0]["image"].mode == "RGB"
    assert teacher.processor.kwargs["add_generation_prompt"] and teacher.processor.kwargs["return_dict"]
    assert teacher.model.kwargs["do_sample"] is False and teacher.model.kwargs["max_new_tokens"] == 64
