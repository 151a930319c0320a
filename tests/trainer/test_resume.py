"""A fit killed mid-epoch and resumed from its checkpoint trains exactly as the uninterrupted fit.

Real processes, killed the hard way: ``python -m trainer fit`` with a checkpoint every optimizer step is
SIGKILLed (its whole process group: every DDP or FSDP2 rank) as soon as the step-2 checkpoint of a 4-step epoch
appears, then resumed with ``--ckpt_path last --run.version=<the killed run>``. The uninterrupted fit of the same seed
is the reference: ``metrics.json``'s per-step losses (the ones before the kill come from the checkpoint) and the
final trainable weights must agree within 1e-6 (measured: bit-identical). Dropout stays on, so the restored
random states matter; the second epoch checks that the epoch after the resumed one is whole and reshuffled.

Also: ``--ckpt_path last`` without a run, or in a run without checkpoints, is an error (never a fresh start),
and neither a time-based checkpoint nor a resumed fit's step checkpoint lands inside a gradient-accumulation
window.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from trainer.cli import TuneloopCLI
from trainer.run import CheckpointError

pytestmark = [pytest.mark.resume, pytest.mark.slow]

ENCODER = "configs/encoder/waam-anomaly.yaml"
INTENT = "configs/intent/exaone-4.0-1.2b-lora.yaml"
INTENT_QLORA = "configs/intent/exaone-4.0-1.2b-qlora.yaml"
STEPS_PER_EPOCH, EPOCHS = 4, 2

# The recipe's best checkpoint plus a step checkpoint after every optimizer step (all kept) and last.ckpt:
# the cadence a long production run would set with every_n_train_steps: 500 and save_top_k: 3.
CHECKPOINTS = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: {monitor}, mode: max, save_top_k: 1, save_last: false, filename: "best-{{step}}"}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: step, mode: max, save_top_k: -1, every_n_train_steps: 1, save_last: true,
                  filename: "step-{{step}}"}}
"""

# (recipe, monitored metric, devices, strategy, micro batch, global batch, extra arguments, tolerance): full
# fine-tuning of the encoder on one process (DistributedSampler order, accumulation 2); LoRA on the causal LM over
# 2 DDP processes with length grouping (LengthGroupedSampler, the step-wide token loss and its all-reduce); QLoRA
# (bitsandbytes 4-bit NF4 base stored in bf16, adapter-only checkpoints) under FSDP2 over 2 processes (fully_shard
# per decoder layer; rank 0 writes one full checkpoint, which the resumed fit shards again). LoRA dropout on,
# whatever the recipe says, so that the restored random states are needed. The tolerance bounds the per-step losses
# and the final trainable weights; every case measured bit-identical on CPU (so did QLoRA on one process and LoRA
# under FSDP2, run once as extra cases: left out to keep the suite short).
INTENT_ARGS = ["--data.init_args.num_sample_prompts=0", "--data.init_args.group_by_length=true",
               "--model.init_args.lora.dropout=0.1", "--model.init_args.bertscore_model=null"]
CASES = {
    "encoder": (ENCODER, "val/f1", 1, None, 4, 8, [], 1e-6),
    "intent-lora-ddp": (INTENT, "val/f1_macro", 2, "ddp", 2, 8, INTENT_ARGS, 1e-6),
    "intent-qlora-fsdp": (INTENT_QLORA, "val/f1_macro", 2, "fsdp", 2, 8, INTENT_ARGS, 1e-6),
}


def fit_command(tmp_path, case, version, *extra):
    recipe, monitor, devices, strategy, micro, global_batch, case_extra, _ = CASES[case]
    overlay = tmp_path / "checkpoints.yaml"
    overlay.write_text(CHECKPOINTS.format(monitor=monitor))
    accumulate = global_batch // (micro * devices)
    return [sys.executable, "-m", "trainer", "fit", "-c", recipe, "-c", "configs/debug.yaml", "-c", str(overlay),
            f"--run.root={tmp_path / 'runs'}", "--run.experiment=resume", f"--run.version={version}",
            "--run.test_after_fit=false",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={EPOCHS}",
            f"--trainer.limit_train_batches={STEPS_PER_EPOCH * accumulate}", "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0", f"--data.init_args.batch.micro_batch_size={micro}",
            f"--data.init_args.batch.global_batch_size={global_batch}",
            *([f"--trainer.devices={devices}", f"--trainer.strategy={strategy}", "--trainer.accelerator=cpu"]
              if devices > 1 else []),
            *case_extra, *extra]


def _env():
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    return env


def start(cmd, log):
    """``cmd`` in its own process group (so that a kill reaches every DDP rank), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc, log, timeout=600):
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def kill_at(proc, log, checkpoint, timeout=600):
    """SIGKILL ``proc``'s process group as soon as ``checkpoint`` exists."""
    deadline = time.monotonic() + timeout
    try:
        while not checkpoint.exists():
            assert proc.poll() is None, f"the fit ended before {checkpoint.name}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {checkpoint.name} after {timeout} s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def checkpoint_state(path):
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    position = next(v["train_position"] for k, v in ckpt.items() if isinstance(v, dict) and "train_position" in v)
    return ckpt, position


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.distributed] if CASES[c][2] > 1 else [])
                                  for c in CASES])
def test_sigkilled_fit_resumes_exactly(tmp_path, case):
    runs = tmp_path / "runs" / "resume"
    last_step = STEPS_PER_EPOCH * EPOCHS
    started = time.monotonic()
    # The uninterrupted fit and the one to kill run side by side (on an idle machine, two cores at work).
    whole = start(fit_command(tmp_path, case, "whole"), tmp_path / "whole.log")
    try:
        kill_at(start(fit_command(tmp_path, case, "cut"), tmp_path / "cut.log"), tmp_path / "cut.log",
                runs / "cut" / "checkpoints" / "step-step=2.ckpt")
    finally:
        finish(whole, tmp_path / "whole.log")
    assert not (runs / "cut" / "metrics.json").exists()  # killed before the end of fit

    # What --ckpt_path last resumes: the newest checkpoint, inside the first epoch.
    newest = max((runs / "cut" / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    ckpt, position = checkpoint_state(newest)
    assert 2 <= ckpt["global_step"] < STEPS_PER_EPOCH and position["epoch"] == 0
    _, _, devices, _, micro, global_batch, _, tolerance = CASES[case]
    assert position["micro_batches"] == ckpt["global_step"] * global_batch // (micro * devices)  # a step boundary
    assert len(ckpt["callbacks"]["ResumeState"]["rng"]) == devices  # every rank's random states

    finish(start(fit_command(tmp_path, case, "cut", "--ckpt_path=last"), tmp_path / "resumed.log"),
           tmp_path / "resumed.log")
    elapsed = time.monotonic() - started

    whole = json.loads((runs / "whole" / "metrics.json").read_text())["fit"]
    resumed = json.loads((runs / "cut" / "metrics.json").read_text())["fit"]
    assert resumed["world_size"] == devices
    assert [s for s, _ in resumed["train_loss"]] == [s for s, _ in whole["train_loss"]] == list(range(1, last_step + 1))
    loss_diff = max(abs(a - b) for (_, a), (_, b) in zip(whole["train_loss"], resumed["train_loss"]))
    final = f"checkpoints/step-step={last_step}.ckpt"
    a, _ = checkpoint_state(runs / "whole" / final)
    b, _ = checkpoint_state(runs / "cut" / final)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    weight_diff = max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in a["state_dict"])
    print(f"{case}: resumed from step {ckpt['global_step']}: max |step-loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e} ({elapsed:.0f} s)")
    if "lora" in case:  # the adapter trained (LoRA B starts at zero)
        assert max(float(v.abs().max()) for k, v in a["state_dict"].items() if "lora_B" in k) > 0
    assert loss_diff <= tolerance and weight_diff <= tolerance
    assert "not resumable" not in (tmp_path / "resumed.log").read_text()
    # The resumed fit wrote no second checkpoint of the step it resumed at (inside an accumulation window).
    names = sorted(p.name for p in (runs / "cut" / "checkpoints").glob("*.ckpt"))
    assert names == sorted(p.name for p in (runs / "whole" / "checkpoints").glob("*.ckpt")), names
    if CASES[case][0] == INTENT_QLORA:  # the 4-bit base, stored in the dtype FSDP2 shards
        assert "fsdp shards the 4-bit base: quant_storage set to bfloat16" in (tmp_path / "whole.log").read_text()


def _fit(tmp_path, *args):
    """``tuneloop fit`` in this process; these stop before anything is built."""
    return TuneloopCLI(args=["fit", "-c", ENCODER, "-c", "configs/debug.yaml", f"--run.root={tmp_path}",
                             "--trainer.logger=false", *args])


def test_ckpt_path_last_never_trains_from_scratch(tmp_path):
    with pytest.raises(CheckpointError, match="no run to resume; pass --run.version or a checkpoint path"):
        _fit(tmp_path, "--ckpt_path=last")
    with pytest.raises(CheckpointError, match="no checkpoint in .*waam-anomaly/v1/checkpoints to resume"):
        _fit(tmp_path, "--ckpt_path=last", "--run.version=v1")
    assert not (tmp_path / "waam-anomaly" / "v1").exists()


def test_checkpoint_cadence_settings_survive_the_cli_wiring(tmp_path):
    """A recipe's step or time cadence and top-k reach Lightning as written; the CLI only adds the directory."""
    overlay = tmp_path / "cadence.yaml"
    overlay.write_text(CHECKPOINTS.format(monitor="val/f1").replace("every_n_train_steps: 1",
                                                                     'train_time_interval: "1:30:00"'))
    cli = TuneloopCLI(args=["-c", ENCODER, "-c", "configs/debug.yaml", "-c", str(overlay), f"--run.root={tmp_path}",
                            "--run.version=v", "--trainer.logger=false"], run=False)
    best, steps = cli.trainer.checkpoint_callbacks
    assert cli.trainer.checkpoint_callback is best and best.monitor == "val/f1"  # "best" and the post-fit test
    assert (steps.monitor, steps.save_top_k, steps.save_last) == ("step", -1, True)
    assert steps._train_time_interval.total_seconds() == 5400
    assert best.dirpath == steps.dirpath == str(tmp_path / "waam-anomaly" / "v" / "checkpoints")
    assert any(type(c).__name__ == "ResumeState" for c in cli.trainer.callbacks)


def test_ckpt_path_last_is_the_newest_checkpoint_of_the_run(tmp_path):
    from trainer.cli import newest_checkpoint
    from trainer.run import RunSpec

    directory = tmp_path / "waam-anomaly" / "v1" / "checkpoints"
    directory.mkdir(parents=True)
    for i, name in enumerate(["best-step=2.ckpt", "step-step=5.ckpt", "last.ckpt"]):
        (directory / name).write_bytes(b"x")
        os.utime(directory / name, ns=(i * 10**9, i * 10**9))
    run = RunSpec(experiment="waam-anomaly", version="v1", root=str(tmp_path))
    assert newest_checkpoint(run, {}) == str(directory / "last.ckpt")
    os.utime(directory / "step-step=5.ckpt", ns=(9 * 10**9, 9 * 10**9))  # a step checkpoint newer than last
    assert newest_checkpoint(run, {}) == str(directory / "step-step=5.ckpt")
    # A launcher's job id names the run too: a requeued SLURM job resumes its own run.
    (tmp_path / "waam-anomaly" / "v1").rename(tmp_path / "waam-anomaly" / "slurm-77")
    unnamed = RunSpec(experiment="waam-anomaly", root=str(tmp_path))
    slurm = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8"}
    requeued = tmp_path / "waam-anomaly" / "slurm-77" / "checkpoints" / "step-step=5.ckpt"
    assert newest_checkpoint(unnamed, slurm) == str(requeued)
    with pytest.raises(ValueError, match="no run to resume"):
        newest_checkpoint(unnamed, {**slurm, "SLURM_JOB_ID": "78"})


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    import torch

    from trainer.resume import rng_states, set_rng_states

    torch.manual_seed(1), np.random.seed(2), random.seed(3), np.random.randn(1)  # an odd gaussian left cached
    torch.save({"rng": rng_states()}, tmp_path / "x.ckpt")
    draw = lambda: (torch.rand(3).tolist(), np.random.randn(3).tolist(), random.random())  # noqa: E731
    expected = draw()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_states(torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"])
    assert draw() == expected


def test_timed_checkpoints_land_on_optimizer_step_boundaries(tmp_path):
    """Lightning's ModelCheckpoint(train_time_interval=...) would save inside an accumulation window (the
    partial gradient is not in the checkpoint); ResumeState holds it until the window closes."""
    from datetime import timedelta

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    from trainer.resume import ResumeState

    class SlowModel(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    class Saves(Callback):
        micro_batches: list[int] = []

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            self.micro_batches.append(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    saves = Saves()
    timed = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=0.05), save_top_k=-1,
                            filename="{step}")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=32, accumulate_grad_batches=4, limit_val_batches=0,
                         callbacks=[timed, saves, ResumeState()], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(SlowModel())
    assert len(saves.micro_batches) >= 3, saves.micro_batches
    assert all(n % 4 == 0 for n in saves.micro_batches), saves.micro_batches


def test_resumed_fit_never_saves_inside_an_accumulation_window(tmp_path):
    """Lightning skips a step it has saved already, but a resumed fit has saved none: on the first micro batch
    after a mid-epoch resume it wrote the resumed step again, inside the window (``step=2.ckpt`` at micro batch 9
    of 4 x 4), a checkpoint that resumes with a micro batch lost. ResumeState holds it until the window closes."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    from trainer.resume import ResumeState

    class Saves(Callback):
        def __init__(self):
            self.micro_batches = []

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            self.micro_batches.append(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def fit(directory, ckpt_path=None):
        saves = Saves()
        steps = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=-1, filename="{step}")
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=16, accumulate_grad_batches=4, limit_val_batches=0,
                             callbacks=[steps, saves, ResumeState()], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)
        return saves.micro_batches, sorted(p.name for p in directory.iterdir())

    assert fit(tmp_path / "whole") == ([4, 8, 12, 16], ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt", "step=4.ckpt"])
    # Resumed from step 2 (micro batch 8): the next saves are steps 3 and 4, at micro batches 12 and 16.
    assert fit(tmp_path / "resumed", tmp_path / "whole" / "step=2.ckpt") == ([12, 16], ["step=3.ckpt", "step=4.ckpt"])
