"""Checkpoints, metrics.json and adapter exports cannot be corrupted: a process killed at any moment of a save
leaves the previous file loadable (with ``torch.load(weights_only=True)``), never half of the new one."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from trainer.callbacks import update_metrics_file
from trainer.checkpoint_io import AtomicCheckpointIO, atomic_write_text

MB = 1 << 20


# A helper process imports torch once and forks one writer per kill (a fresh interpreter per kill would spend
# seconds importing torch; forking the test process itself can hang in its thread pools). A writer saves
# checkpoints of ~16 MB through AtomicCheckpointIO, each a consistent whole (every tensor holds its step number),
# until it is killed; it says "ready" after its first complete save.
FORK_HELPER = r"""
import os, sys
import torch
from trainer.checkpoint_io import AtomicCheckpointIO
path = sys.argv[1]
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        io, step = AtomicCheckpointIO(), 0
        while True:
            step += 1
            state = {f"w{i}": torch.full((1 << 20,), float(step)) for i in range(4)}
            io.save_checkpoint({"global_step": step, "state_dict": state}, path)
            if step == 1:
                os.write(1, f"ready {os.getpid()}\n".encode())
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_a_kill_during_a_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    helper = subprocess.Popen([sys.executable, "-c", FORK_HELPER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    rng = random.Random(0)
    iterations, mid_write, steps = 20, 0, []
    try:
        for _ in range(iterations):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            line = helper.stdout.readline()
            assert line.startswith("ready"), line
            time.sleep(rng.uniform(0.0, 0.4))  # a save takes ~0.05-0.3 s: the kill lands anywhere in the loop
            os.kill(int(line.split()[1]), signal.SIGKILL)
            assert helper.stdout.readline() == "reaped\n"
            mid_write += any(path.parent.glob(f".{path.name}.tmp-*"))  # the kill interrupted a write
            checkpoint = torch.load(path, weights_only=True)  # never raises: the file is always a whole checkpoint
            step = checkpoint["global_step"]
            assert all(torch.equal(t, torch.full((MB,), float(step))) for t in checkpoint["state_dict"].values())
            steps.append(step)
    finally:
        helper.kill()
        helper.wait()
    print(f"{iterations} kills, {mid_write} during a write; steps on disk: {steps}")
    assert mid_write >= 3, "too few kills landed inside a write to exercise it"
    # The next save clears what a killed writer left behind.
    AtomicCheckpointIO().save_checkpoint({"global_step": 0}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"global_step": 1, "obj": Path("x")}, path)  # a pickled class: weights_only refuses it
    io = AtomicCheckpointIO()
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        io.load_checkpoint(path)
    assert io.load_checkpoint(path, weights_only=False)["global_step"] == 1  # only when the caller asks


def test_metrics_file_is_written_whole_and_strict_json(tmp_path):
    path = tmp_path / "metrics.json"
    update_metrics_file(path, "fit", {"best_score": math.inf, "train_loss": [[1, 0.5], [2, math.nan]], "x": 1})
    update_metrics_file(path, "test", {"metrics": {"test/loss": math.nan}})
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data == {"fit": {"best_score": None, "train_loss": [[1, 0.5], [2, None]], "x": 1},
                    "test": {"metrics": {"test/loss": None}}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    atomic_write_text(tmp_path / "a.txt", "é")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é"


def test_adapter_export_is_all_or_nothing(tmp_path):
    from modules.adapter import AdapterBackbone

    class Saves:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def save_pretrained(self, path, **kwargs):
            (Path(path) / self.name).write_text("v2")
            if self.fail:
                raise OSError("disk full")

    class Module:
        model = Saves("adapter_model.safetensors")
        trainer = type("T", (), {"is_global_zero": True, "strategy": object()})()

        def full_state_dict(self):
            return None

    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("v1")
    backbone = AdapterBackbone.__new__(AdapterBackbone)
    backbone.lora, backbone.preprocessing = object(), Saves("tokenizer.json", fail=True)
    with pytest.raises(OSError, match="disk full"):
        backbone.export(Module(), out, prompt=None)
    assert [p.name for p in out.iterdir()] == ["adapter_model.safetensors"]  # the previous export, untouched
    assert (out / "adapter_model.safetensors").read_text() == "v1"
    backbone.preprocessing = Saves("tokenizer.json")
    assert backbone.export(Module(), out, prompt={"template": "{text}"}) == out
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors", "prompt.json", "tokenizer.json"]
    assert (out / "adapter_model.safetensors").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .tmp or .old left


def test_the_cli_writes_checkpoints_atomically(tmp_path):
    from trainer.cli import TuneloopCLI

    cli = TuneloopCLI(args=["-c", "configs/encoder/waam-anomaly.yaml", "-c", "configs/debug.yaml",
                            f"--run.root={tmp_path}", "--trainer.logger=false"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
