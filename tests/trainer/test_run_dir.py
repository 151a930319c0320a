"""Runs never overwrite each other: ``fit`` into a run directory that holds a run stops unless it resumes that run or
``--run.overwrite=true`` replaces it, and a start that fails before training leaves the runs directory as it was."""

import hashlib
import json
from pathlib import Path

import pytest

import trainer.cli  # noqa: F401 - Lightning's log handlers bind to the session's stderr, not to one test's capsys
from trainer.__main__ import main
from trainer.cli import TuneloopCLI
from trainer.run import RunDirError, RunDirGuard, check_fit_target, is_launch_leader

RECIPE = "configs/encoder/waam-anomaly.yaml"
SMALL = ["-c", RECIPE, "-c", "configs/debug.yaml", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--run.test_after_fit=false"]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, ``dir`` for a folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs root with one finished tiny fit: ``waam-anomaly/r``."""
    root = tmp_path_factory.mktemp("runs")
    main(["fit", *SMALL, f"--run.root={root}", "--run.version=r"])
    assert (root / "waam-anomaly" / "r" / "checkpoints" / "last.ckpt").is_file()
    return root


def fit(runs: Path, *extra: str) -> None:
    main(["fit", *SMALL, f"--run.root={runs}", *extra])


def test_fit_into_an_existing_run_is_refused_and_changes_nothing(runs, capsys):
    before = snapshot(runs)
    with pytest.raises(SystemExit) as e:
        fit(runs, "--run.version=r")
    assert e.value.code == 2
    err = capsys.readouterr().err.rstrip().splitlines()
    run = runs / "waam-anomaly" / "r"
    assert err[-2] == (f"tuneloop fit: run directory {run} already holds a run (checkpoints, config.yaml, "
                       "metrics.json, model, plots); fit never writes over another run")
    assert err[-1] == (f"  hint: choose another --run.version (or leave it out for a new one), resume that run with "
                       f"--ckpt_path {run}/checkpoints/last.ckpt, or replace it with --run.overwrite=true")
    assert snapshot(runs) == before


def test_resume_of_that_run_is_allowed(runs):
    run = runs / "waam-anomaly" / "r"
    fit(runs, "--run.version=r", f"--ckpt_path={run}/checkpoints/last.ckpt", "--trainer.max_epochs=2")
    fit(runs, "--run.version=r", "--ckpt_path=last", "--trainer.max_epochs=2")  # nothing left to train: ends at once
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if "-v1" in n], names  # no last-v1.ckpt beside the old


def test_overwrite_replaces_the_run(runs):
    run = runs / "waam-anomaly" / "r"
    (run / "stale.txt").write_text("from the earlier run")
    fit(runs, "--run.version=r", "--run.overwrite=true")
    assert not (run / "stale.txt").exists() and (run / "config.yaml").exists()
    assert json.loads((run / "metrics.json").read_text())["fit"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["r"]  # the moved-aside run is deleted
    assert not [p for p in (run / "checkpoints").iterdir() if "-v1" in p.name]


def test_failed_start_leaves_no_run_directory_behind(runs):
    """An optimizer that cannot be built fails after the run directory got its config.yaml: it goes again."""
    before = snapshot(runs)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        TuneloopCLI(args=["fit", *SMALL, f"--run.root={runs}", "--model.init_args.optimizer.init_args.lr=-1"])
    assert snapshot(runs) == before


def test_failed_overwrite_puts_the_earlier_run_back(runs):
    before = snapshot(runs)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        TuneloopCLI(args=["fit", *SMALL, f"--run.root={runs}", "--run.version=r", "--run.overwrite=true",
                          "--model.init_args.optimizer.init_args.lr=-1"])
    assert snapshot(runs) == before


def test_failed_evaluation_restores_the_files_it_rewrote(runs, tmp_path):
    """``test`` writes config.test.yaml into the checkpoint's run before loading the checkpoint; when the load fails,
    the run gets its bytes back."""
    import torch

    run = runs / "waam-anomaly" / "r"
    (run / "config.test.yaml").write_text("an earlier evaluation\n")
    # Lightning-shaped (it passes check_checkpoint), but its weights belong to no model of this recipe.
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {"w": torch.zeros(2)}},
               run / "checkpoints" / "foreign.ckpt")
    before = snapshot(runs)
    with pytest.raises(RuntimeError, match="Missing key"):
        TuneloopCLI(args=["test", *SMALL, f"--run.root={runs}", f"--ckpt_path={run}/checkpoints/foreign.ckpt"])
    assert (run / "config.test.yaml").read_text() == "an earlier evaluation\n"
    assert snapshot(runs) == before
    (run / "config.test.yaml").unlink()
    (run / "checkpoints" / "foreign.ckpt").unlink()


@pytest.mark.parametrize("steps", [0, 1])
def test_failed_resume_keeps_the_earlier_config(runs, monkeypatch, steps):
    """A resumed fit writes its own config.yaml when it starts. Failing before its first optimizer step (the
    restored step is no step of this launch) it leaves the run as it was; failing after it trained a step it keeps
    what it wrote (a step checkpoint), but config.yaml is the earlier run's again."""
    from modules.encoder import EncoderModule

    run = runs / "waam-anomaly" / "r"
    config = (run / "config.yaml").read_bytes()
    step = torch_load(run / "checkpoints" / "last.ckpt")["global_step"]
    before = snapshot(runs)
    training_step = EncoderModule.training_step

    def fails_after(self, batch, batch_idx):
        if self.trainer.global_step >= step + steps:
            raise RuntimeError("boom")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(EncoderModule, "training_step", fails_after)
    with pytest.raises(RuntimeError, match="boom"):
        TuneloopCLI(args=["fit", *SMALL, f"--run.root={runs}", "--run.version=r", f"--trainer.max_epochs={8 + steps}",
                          f"--ckpt_path={run}/checkpoints/last.ckpt",
                          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                          "--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_top_k=-1",
                          "--trainer.callbacks.filename=step-{step}"])
    assert (run / "config.yaml").read_bytes() == config
    if steps == 0:
        assert snapshot(runs) == before
    else:
        assert torch_load(run / "checkpoints" / f"step-step={step + 1}.ckpt")["global_step"] == step + 1
        (run / "checkpoints" / f"step-step={step + 1}.ckpt").unlink()


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_guard_and_target_rules(tmp_path):
    out = tmp_path / "e" / "v"
    check_fit_target(out, None, overwrite=False)  # new
    out.mkdir(parents=True)
    check_fit_target(out, None, overwrite=False)  # empty
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirError, match="already holds a run"):
        check_fit_target(out, str(tmp_path / "elsewhere.ckpt"), overwrite=False)
    check_fit_target(out, str(out / "checkpoints" / "last.ckpt"), overwrite=False)  # resume
    check_fit_target(out, "last", overwrite=False)
    check_fit_target(out, None, overwrite=True)

    guard = RunDirGuard.open(tmp_path / "new" / "deep" / "v")
    (tmp_path / "new" / "deep" / "v" / "wandb").mkdir(parents=True)
    guard.failed(started=False)
    assert not (tmp_path / "new").exists()  # the parents it made go too
    guard = RunDirGuard.open(tmp_path / "kept")
    (tmp_path / "kept" / "checkpoints").mkdir(parents=True)
    guard.failed(started=True)
    assert (tmp_path / "kept" / "checkpoints").is_dir()  # training had begun: what it wrote stays

    assert is_launch_leader({}) and is_launch_leader({"RANK": "0", "LOCAL_RANK": "0"})
    assert not is_launch_leader({"LOCAL_RANK": "1"}) and not is_launch_leader({"RANK": "3", "LOCAL_RANK": "0"})
