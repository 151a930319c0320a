"""Bad inputs end every command the same way: one line ``tuneloop <command>: <file>:<line>: field '<f>': ...`` (or
the one-line form naming the setting), exit code 2, no traceback (unless ``--debug``), and nothing written to,
or left behind in, the runs directory: an earlier run there keeps every file byte for byte.

The cases run in-process through ``trainer.__main__.main`` (the debug recipes; most fail before any model
weights matter); one runs as a real ``python -m trainer`` process.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainer.cli  # noqa: F401 - Lightning's log handlers bind to the session's stderr, not to one test's capsys
from tests.conftest import ROOT
from trainer.__main__ import main
from trainer.errors import find_user_error, report

DEBUG = "configs/debug.yaml"
ENCODER = "configs/encoder/waam-anomaly.yaml"  # binary: text -> anomaly in [normal, abnormal]
REGRESSION = "configs/encoder/waam-heat-input.yaml"  # text -> heat_input_j_mm
INTENT = "configs/intent/exaone-4.0-1.2b-lora.yaml"  # text -> label in 8 Korean intents
SFT = "configs/sft/komt-llama2-13b-lora.yaml"  # alpaca: instruction, input, output
VLM = "configs/vlm/qwen2.5-vl-32b-qlora.yaml"  # image + question/answer (+ type, alert)
EXPERIMENT = "bad-inputs"


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Every bad file of the table, in one folder."""
    d = tmp_path_factory.mktemp("bad-data")
    ok = {"text": "current 150 A, voltage 22 V", "anomaly": "normal"}
    _jsonl(d / "label.jsonl", [ok, ok, ok, {**ok, "anomaly": "weird"}])
    _jsonl(d / "kind.jsonl", [{**ok, "anomaly": 5}, ok, ok])
    _jsonl(d / "cut.jsonl", [ok, ok, '{"text": "ok", "anomaly": "normal"'])
    _jsonl(d / "list.jsonl", [ok, "[1, 2]"])
    _jsonl(d / "nofield.jsonl", [{"note": "x", "anomaly": "normal"}])
    _jsonl(d / "emptytext.jsonl", [ok, ok, {**ok, "text": "  "}])
    (d / "empty.jsonl").write_text("\n\n")
    (d / "x.txt").write_text("text,anomaly\n")
    (d / "folder.jsonl").mkdir()
    (d / "latin1.jsonl").write_bytes(b"".join(json.dumps(ok).encode() + b"\n" for _ in range(6))
                                     + '{"text": "caf\xe9", "anomaly": "normal"}\n'.encode("latin-1"))
    (d / "utf16.jsonl").write_bytes((json.dumps(ok) + "\n").encode("utf-16"))
    rows = [f"r{i},current {i} A,{100 + i}.5" for i in range(2, 12)]
    rows[6] = "r8,current 8 A,abc"  # line 8 of the file (line 1 is the header)
    (d / "heat.csv").write_text("id,text,heat_input_j_mm\n" + "\n".join(rows) + "\n")
    (d / "wide.csv").write_text("id,text,heat_input_j_mm\nr2,a,1.5\nr3,b,2.5\nr4,c,3.5\nr5,d,4.5,9\n")
    (d / "nan.jsonl").write_text('{"text": "a", "heat_input_j_mm": 1.5}\n{"text": "b", "heat_input_j_mm": NaN}\n')
    intent = {"text": "내일 날씨 알려줘", "label": "날씨"}
    _jsonl(d / "intent.jsonl", [intent, {**intent, "label": "weather"}])
    alpaca = {"instruction": "Summarize the project.", "input": "", "output": "It builds anodes."}
    _jsonl(d / "alpaca.jsonl", [alpaca, {"instruction": "Say hi.", "input": "", "output": None}])
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    _jsonl(d / "role.jsonl", [{"messages": chat}, {"messages": [{"role": "bot", "content": "hi"}]}])
    _jsonl(d / "noanswer.jsonl", [{"messages": chat}, {"messages": chat[:1]}])
    # Images (relative to the data file) and vision records.
    Image.new("RGB", (160, 120), (200, 120, 40)).save(d / "ok.png")
    Image.new("RGB", (1, 500), (0, 0, 0)).save(d / "thin.png")
    Image.new("RGB", (1, 1), (0, 0, 0)).save(d / "dot.png")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint16)).save(d / "i16.png")
    (d / "garbage.png").write_bytes(b"not an image")
    qa = {"image": "ok.png", "question": "Is everyone wearing a helmet?", "answer": "Yes. Alert: False"}
    for name, change in {"noimage": {"image": "none.png"}, "thin": {"image": "thin.png"}, "dot": {"image": "dot.png"},
                         "i16": {"image": "i16.png"}, "garbage": {"image": "garbage.png"}, "qatype": {"type": "E"},
                         "alert": {"alert": "yes"}}.items():
        _jsonl(d / f"vlm-{name}.jsonl", [qa, {**qa, **change}])
    # Checkpoints: empty and truncated (a real checkpoint, cut).
    import torch

    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {"w": torch.zeros(64, 64)}}, d / "whole.ckpt")
    (d / "truncated.ckpt").write_bytes((d / "whole.ckpt").read_bytes()[:2000])
    (d / "empty.ckpt").write_bytes(b"")
    # Not Lightning checkpoints: a plain torch.save of weights, a safetensors file; and a weights-only checkpoint.
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, d / "plain.ckpt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "weights.safetensors"))
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "loops": {}, "epoch": 0, "global_step": 3},
               d / "weights-only.ckpt")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> Path:
    """A runs root holding an earlier run (``bad-inputs/earlier``) with the files a finished run leaves."""
    root = tmp_path_factory.mktemp("runs")
    earlier = root / EXPERIMENT / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "plots").mkdir()
    (earlier / "wandb" / "offline-run-1").mkdir(parents=True)
    (earlier / "config.yaml").write_text("run:\n  version: earlier\n")
    (earlier / "metrics.json").write_text('{"fit": {"metrics": {"val/loss": 0.5}}}\n')
    (earlier / "checkpoints" / "last.ckpt").write_bytes((data / "whole.ckpt").read_bytes())
    (earlier / "checkpoints" / "broken.ckpt").write_bytes((data / "truncated.ckpt").read_bytes())
    (earlier / "plots" / "loss_curve.png").write_bytes(b"png")
    (earlier / "wandb" / "offline-run-1" / "run.wandb").write_bytes(b"history")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, ``dir`` for a folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def fill_in(text: str, d: Path, runs: Path) -> str:
    return text.replace("{d}", str(d)).replace("{runs}", str(runs))


# (id, command, recipe, extra args, message after "tuneloop <command>: "): the message is literal text, or (literal
# text, a regular expression for the rest); {d} is the data folder and {runs} the runs root.
CASES = [
    # --- encoder (classification and regression) -----------------------------------------------------------
    ("missing-file", "fit", ENCODER, ["--data.init_args.train_file={d}/nope.jsonl"],
     "data file not found: {d}/nope.jsonl"),
    ("directory-as-file", "fit", ENCODER, ["--data.init_args.train_file={d}/folder.jsonl"],
     "data file {d}/folder.jsonl is a directory; give a .jsonl, .csv, .parquet or .xlsx file"),
    ("unsupported-type", "fit", ENCODER, ["--data.init_args.train_file={d}/x.txt"],
     "{d}/x.txt: unsupported data file type '.txt'; use .jsonl, .csv, .parquet or .xlsx"),
    ("latin1", "fit", ENCODER, ["--data.init_args.train_file={d}/latin1.jsonl"],
     "{d}/latin1.jsonl:7: not UTF-8 text (byte 0xe9 at column 14); save the file as UTF-8"),
    ("utf16", "fit", ENCODER, ["--data.init_args.train_file={d}/utf16.jsonl"],
     "{d}/utf16.jsonl:1: not UTF-8 text: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
        "save the file as UTF-8"),
    ("json-cut-at-end", "fit", ENCODER, ["--data.init_args.train_file={d}/cut.jsonl"],
     "{d}/cut.jsonl:3: invalid JSON (Expecting ',' delimiter at column 35; the line ends before the JSON value "
        "is complete)"),
    ("json-not-an-object", "fit", ENCODER, ["--data.init_args.train_file={d}/list.jsonl"],
     "{d}/list.jsonl:2: expected a JSON object, got list"),
    ("unknown-label", "fit", ENCODER, ["--data.init_args.train_file={d}/label.jsonl"],
     "{d}/label.jsonl:4: field 'anomaly': label 'weird' is not in the declared labels ['normal', 'abnormal']"),
    ("type-mismatch-in-record-1", "fit", ENCODER, ["--data.init_args.train_file={d}/kind.jsonl"],
     "{d}/kind.jsonl:1: field 'anomaly': expected a string like line 2, got number 5"),
    ("missing-field", "fit", ENCODER, ["--data.init_args.train_file={d}/nofield.jsonl"],
     "{d}/nofield.jsonl:1: field 'text': missing (the file has fields ['anomaly', 'note'])"),
    ("empty-text", "fit", ENCODER, ["--data.init_args.train_file={d}/emptytext.jsonl"],
     "{d}/emptytext.jsonl:3: field 'text': empty text"),
    ("empty-file", "fit", ENCODER, ["--data.init_args.train_file={d}/empty.jsonl"],
     "{d}/empty.jsonl: file has no records"),
    ("csv-not-a-number", "fit", REGRESSION, ["--data.init_args.train_file={d}/heat.csv"],
     "{d}/heat.csv:8: field 'heat_input_j_mm': expected a number, got 'abc'"),
    ("csv-extra-field", "fit", REGRESSION, ["--data.init_args.train_file={d}/wide.csv"],
     "{d}/wide.csv:5: 4 fields, but the header has 3: id, text, heat_input_j_mm"),
    ("nan-target", "fit", REGRESSION, ["--data.init_args.train_file={d}/nan.jsonl"],
     "{d}/nan.jsonl:2: field 'heat_input_j_mm': expected a finite number, got nan"),
    ("bad-test-file-into-earlier-run", "test", ENCODER,
     ["--data.init_args.test_file={d}/label.jsonl", "--ckpt_path={runs}/bad-inputs/earlier/checkpoints/last.ckpt"],
     "{d}/label.jsonl:4: field 'anomaly': label 'weird' is not in the declared labels ['normal', 'abnormal']"),
    # --- intent / SFT instruction data ----------------------------------------------------------------------
    ("intent-unknown-label", "fit", INTENT, ["--data.init_args.train_file={d}/intent.jsonl"],
     ("{d}/intent.jsonl:2: field 'label': label 'weather' is not in the declared labels ", r"\[.*\]")),
    ("alpaca-null-output", "fit", SFT, ["--data.init_args.train_file={d}/alpaca.jsonl"],
     "{d}/alpaca.jsonl:2: field 'output': missing or null"),
    ("chat-unknown-role", "fit", SFT, ["--data.init_args.format=chat", "--data.init_args.train_file={d}/role.jsonl"],
     "{d}/role.jsonl:2: field 'messages[0]': expected {'role': one of ('system', 'user', 'assistant'), "
        "'content': text}, got {'role': 'bot', 'content': 'hi'}"),
    ("chat-no-answer", "fit", SFT, ["--data.init_args.format=chat", "--data.init_args.train_file={d}/noanswer.jsonl"],
     "{d}/noanswer.jsonl:2: field 'messages': no assistant turn to learn from"),
    ("overlong-error", "fit", SFT, ["--data.init_args.overlong=error", "--data.init_args.cutoff_len=16"],
     ("data/samples/instructions/train.jsonl:1: sample is longer than cutoff_len=16 tokens (",
      r"\d+ such records in this file\); raise data\.cutoff_len or set data\.overlong to truncate or drop")),
    ("cutoff-too-small", "fit", INTENT, ["--data.init_args.cutoff_len=2"],
     "data.cutoff_len must be >= 8, got 2"),
    # --- vision instruction data -----------------------------------------------------------------------------
    ("image-not-found", "fit", VLM, ["--data.init_args.train_file={d}/vlm-noimage.jsonl"],
     "{d}/vlm-noimage.jsonl:2: field 'image': image file not found: {d}/none.png"),
    ("image-unreadable", "fit", VLM, ["--data.init_args.train_file={d}/vlm-garbage.jsonl"],
     ("{d}/vlm-garbage.jsonl:2: field 'image': unreadable image {d}/garbage.png: ", ".*")),
    ("image-aspect-ratio", "fit", VLM, ["--data.init_args.train_file={d}/vlm-thin.jsonl"],
     "{d}/vlm-thin.jsonl:2: field 'image': thin.png is 1x500 pixels: aspect ratio 500:1 is over the image "
        "processor's limit of 200:1; crop or pad the image"),
    ("image-too-small", "fit", VLM, ["--data.init_args.train_file={d}/vlm-dot.jsonl"],
     "{d}/vlm-dot.jsonl:2: field 'image': dot.png is 1x1 pixels: smaller than the image processor's minimum of "
        "28 pixels per side (patch_size 14 x merge_size 2); use a larger image"),
    ("image-16-bit", "fit", VLM, ["--data.init_args.train_file={d}/vlm-i16.jsonl"],
     ("{d}/vlm-i16.jsonl:2: field 'image': unsupported image mode 'I;16' in {d}/i16.png; convert it to RGB ",
      r"\(supported: .*\)")),
    ("unknown-qa-type", "fit", VLM, ["--data.init_args.train_file={d}/vlm-qatype.jsonl"],
     "{d}/vlm-qatype.jsonl:2: field 'type': unknown QA type 'E'; expected one of A, B, C, D"),
    ("alert-not-boolean", "fit", VLM, ["--data.init_args.train_file={d}/vlm-alert.jsonl"],
     "{d}/vlm-alert.jsonl:2: field 'alert': expected true or false, got 'yes'"),
    ("pixel-bounds-swapped", "fit", VLM, ["--data.init_args.min_pixels=5000", "--data.init_args.max_pixels=4000"],
     "data.min_pixels (5000) is larger than data.max_pixels (4000)"),
    ("no-test-file", "test", VLM, ["--data.init_args.test_file=null"], "data.test_file is required to test"),
    # --- config and command line ------------------------------------------------------------------------------
    ("micro-batch-zero", "fit", ENCODER, ["--data.init_args.batch.micro_batch_size=0"],
     "data.batch.micro_batch_size must be a whole number >= 1, got 0"),
    ("global-batch-negative", "fit", INTENT, ["--data.init_args.batch.global_batch_size=-4"],
     "data.batch.global_batch_size must be a whole number >= 1, got -4"),
    ("batch-indivisible", "fit", ENCODER, ["--data.init_args.batch.micro_batch_size=12"],
     ("global_batch_size=32 is not divisible by micro_batch_size=12 x world_size=1 (= 12); ", ".*")),
    ("accumulation-set-by-hand", "fit", ENCODER, ["--trainer.accumulate_grad_batches=4"],
     "trainer.accumulate_grad_batches is derived from data.batch (global / (micro x world size)); set "
        "data.batch.global_batch_size instead"),
    ("val-fraction-out-of-range", "fit", ENCODER, ["--data.init_args.val_file=null",
                                                   "--data.init_args.val_fraction=1.5"],
     "data.val_fraction must be in (0, 1), got 1.5"),
    ("checkpoint-missing", "fit", ENCODER, ["--ckpt_path={d}/nope.ckpt"], "--ckpt_path {d}/nope.ckpt: no such file"),
    ("checkpoint-empty", "fit", ENCODER, ["--ckpt_path={d}/empty.ckpt"],
     "--ckpt_path {d}/empty.ckpt: the file is empty (0 bytes)"),
    ("checkpoint-truncated", "fit", ENCODER, ["--ckpt_path={d}/truncated.ckpt"],
     "--ckpt_path {d}/truncated.ckpt: truncated checkpoint (2000 bytes, the end of the file is missing)"),
    ("checkpoint-plain-dict", "fit", ENCODER, ["--ckpt_path={d}/plain.ckpt"],
     "--ckpt_path {d}/plain.ckpt: not a Lightning checkpoint: it has no 'pytorch-lightning_version' or 'state_dict' "
        "(its keys: model, step)"),
    ("checkpoint-safetensors", "test", ENCODER, ["--ckpt_path={d}/weights.safetensors"],
     "--ckpt_path {d}/weights.safetensors: a safetensors file (tensors only), not a Lightning checkpoint: it has no "
        "'pytorch-lightning_version' or 'state_dict'"),
    ("checkpoint-weights-only", "fit", ENCODER, ["--ckpt_path={d}/weights-only.ckpt"],
     "--ckpt_path {d}/weights-only.ckpt: a weights-only checkpoint (no 'optimizer_states' or 'lr_schedulers'): a fit "
        "cannot resume from it"),
    ("checkpoint-truncated-in-earlier-run", "test", ENCODER,
     ["--ckpt_path={runs}/bad-inputs/earlier/checkpoints/broken.ckpt"],
     "--ckpt_path {runs}/bad-inputs/earlier/checkpoints/broken.ckpt: truncated checkpoint (2000 bytes, the end "
        "of the file is missing)"),
    ("fit-into-earlier-run", "fit", ENCODER, ["--run.version=earlier"],
     "run directory {runs}/bad-inputs/earlier already holds a run (checkpoints, config.yaml, metrics.json, plots, "
        "wandb); fit never writes over another run"),
]
if __import__("torch").cuda.is_available() is False:
    CASES.append(("cuda-only-strategy-on-cpu", "fit", ENCODER, ["--trainer.strategy=fsdp1"],
                  "strategy 'fsdp1' needs CUDA GPUs and none is available; on CPU use --trainer.strategy=fsdp "
                     "(FSDP2) or --trainer.strategy=ddp"))
HINTS = {"fit-into-earlier-run": "choose another --run.version", "checkpoint-truncated": "pick another checkpoint",
         "checkpoint-plain-dict": "--ckpt_path takes a checkpoint that tuneloop fit wrote",
         "checkpoint-safetensors": "--ckpt_path takes a checkpoint that tuneloop fit wrote",
         "checkpoint-weights-only": "resume from a full checkpoint (ModelCheckpoint save_weights_only: false)"}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_runs_untouched(case, data, runs, capsys):
    name, command, recipe, extra, message = case
    argv = [command, "-c", recipe, "-c", DEBUG, f"--run.root={runs}", f"--run.experiment={EXPERIMENT}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", *[fill_in(a, data, runs) for a in extra]]
    literal, rest = message if isinstance(message, tuple) else (message, "")
    before = snapshot(runs)
    code, out, err = run_main(argv, capsys)
    assert code == 2, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("tuneloop")]
    assert len(lines) == 1, err[-3000:]
    assert re.fullmatch(re.escape(f"tuneloop {command}: {fill_in(literal, data, runs)}") + rest, lines[0]), lines[0]
    if name in HINTS:
        assert err.splitlines()[-1].startswith(f"  hint: {HINTS[name]}")
    assert snapshot(runs) == before  # the earlier run byte for byte, and no new (empty) run directory


@pytest.mark.parametrize("command, argument, message", [
    ("fit", "--data.init_args.train_file={d}/nope.jsonl", "data file not found: {d}/nope.jsonl"),
    ("fit", "--data.init_args.val_file={d}/empty.ckpt", "{d}/empty.ckpt: unsupported data file type '.ckpt'; use "
                                                        ".jsonl, .csv, .parquet or .xlsx"),
    ("test", "--data.init_args.test_file={d}/folder.jsonl", "data file {d}/folder.jsonl is a directory; give a "
                                                            ".jsonl, .csv, .parquet or .xlsx file"),
    ("predict", "--data.init_args.predict_file=" + "{d}/nope.csv", "data file not found: {d}/nope.csv"),
    ("fit", "--data.init_args.train_file=null", "data.train_file is required to fit"),
], ids=["fit-missing", "fit-val-type", "test-directory", "predict-missing", "fit-unset"])
def test_bad_data_file_stops_before_the_logger_starts_a_run(command, argument, message, data, tmp_path, capsys,
                                                            monkeypatch):
    """With the default logger (W&B, offline here): the data files are checked before W&B starts, so a bad one
    creates no W&B run and no run directory."""
    import functools

    import wandb

    @functools.wraps(wandb.init)  # its signature: the CLI checks the logger's arguments against it
    def no_run(*args, **kwargs):
        pytest.fail("a W&B run was started")

    monkeypatch.setattr(wandb, "init", no_run)
    code, _, err = run_main([command, "-c", ENCODER, "-c", DEBUG, f"--run.root={tmp_path / 'runs'}",
                             "--trainer.enable_progress_bar=false", fill_in(argument, data, tmp_path)], capsys)
    assert code == 2, err[-3000:]
    assert err.rstrip().splitlines()[-1] == f"tuneloop {command}: {fill_in(message, data, tmp_path)}"
    assert not (tmp_path / "runs").exists()


def test_every_local_source_of_a_mix_is_checked_before_loading():
    from datamodules.encoder import EncoderDataModule

    ok = "data/samples/waam/train.jsonl"
    dm = EncoderDataModule(task="binary", text_fields=["text"], label_fields=["anomaly"], labels=["normal", "abnormal"],
                           train_file=[{"source": ok, "weight": 1}, {"source": "hf://owner/name?split=train"},
                                       {"source": "data/nope.jsonl", "weight": 2}])
    with pytest.raises(FileNotFoundError, match="data file not found: data/nope.jsonl"):
        dm.check_files("fit")
    dm.files["train"] = dm.files["train"][:2]  # the file and the dataset (checked when it loads)
    dm.check_files("fit")


def test_parse_errors_stay_one_block_from_the_parser(runs, capsys):
    """jsonargparse's own message (usage, then ``error: ...``) exits 2 without a traceback."""
    code, out, err = run_main(["fit", "-c", ENCODER, f"--run.root={runs}", "--data.init_args.nope=1"], capsys)
    assert code == 2 and "Traceback" not in out + err and "error: Parser key \"data\"" in err
    code, out, err = run_main(["fit", "-c", "configs/nope.yaml"], capsys)
    assert code == 2 and "Traceback" not in err and "File does not exist" in err
    code, out, err = run_main(["fot"], capsys)
    assert code == 2 and err.startswith("tuneloop: unknown command 'fot'")
    code, out, err = run_main(["plan", "-c", "configs/nope.yaml"], capsys)
    assert code == 2 and err.strip().startswith("tuneloop plan: recipe not found: configs/nope.yaml")


def test_debug_shows_the_traceback_before_the_message(data, runs, capsys, monkeypatch):
    argv = ["fit", "-c", ENCODER, "-c", DEBUG, f"--run.root={runs}", "--trainer.logger=false",
            f"--data.init_args.train_file={data}/label.jsonl"]
    before = snapshot(runs)
    code, _, err = run_main([*argv, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "datamodules.records.RecordError" in err
    assert err.rstrip().splitlines()[-1].startswith(f"tuneloop fit: {data}/label.jsonl:4: field 'anomaly'")
    monkeypatch.setenv("TUNELOOP_DEBUG", "1")
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "Traceback" in err
    assert snapshot(runs) == before


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainer.cli, "run_cli", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", "-c", ENCODER])
    assert find_user_error(KeyError("x")) is None and report(RuntimeError("x"), "fit") is None


def test_under_ddp_only_rank_zero_prints_and_every_rank_exits_2(capsys):
    from datamodules.records import RecordError

    error = RecordError("data/x.jsonl:7", "label", "label 'q' is not in the declared labels ['a']")
    assert report(error, "fit", rank=1) == 2
    assert capsys.readouterr().err == ""
    assert report(error, "fit", rank=0) == 2
    assert capsys.readouterr().err == "tuneloop fit: data/x.jsonl:7: field 'label': label 'q' is not in the " \
                                      "declared labels ['a']\n"


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    from datamodules.records import load_record_file

    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n\n{"text": "b"}\n')
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext,label\na,x\n\n\"multi\nline\",y\n")
    jsonl = load_record_file(tmp_path / "bom.jsonl", cache_dir=str(tmp_path / "cache"))
    assert jsonl.dataset["text"] == ["a", "b"] and jsonl.lines == [1, 3]
    csv = load_record_file(tmp_path / "bom.csv", cache_dir=str(tmp_path / "cache"))
    assert csv.dataset.column_names == ["text", "label"] and csv.lines == [2, 4]  # the file's lines, header included


def test_command_line_process_exits_2_with_one_line_and_no_traceback(data, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("TUNELOOP_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "trainer", "fit", "-c", ENCODER, "-c", DEBUG,
                           f"--run.root={tmp_path / 'runs'}", f"--data.init_args.train_file={data}/latin1.jsonl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (f"tuneloop fit: {data}/latin1.jsonl:7: not UTF-8 text (byte 0xe9 "
                                                     "at column 14); save the file as UTF-8")
    assert not (tmp_path / "runs").exists()  # the W&B logger had started a run directory: it is gone


@pytest.mark.distributed
def test_under_two_ddp_processes_the_error_is_printed_once(data, tmp_path):
    """Both ranks read the bad file and raise; rank zero prints, the launch exits 2 and leaves no run directory."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    proc = subprocess.run([sys.executable, "-m", "trainer", "fit", "-c", ENCODER, "-c", DEBUG,
                           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                           "--trainer.logger=false", f"--run.root={tmp_path / 'runs'}",
                           f"--data.init_args.train_file={data}/label.jsonl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tuneloop fit:")]
    assert lines == [f"tuneloop fit: {data}/label.jsonl:4: field 'anomaly': label 'weird' is not in the declared "
                     "labels ['normal', 'abnormal']"]
    # The launcher's child watch (trainer/faults.py) does not name rank 1's exit: code 2 is this user error.
    assert "rank 1 (pid" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
