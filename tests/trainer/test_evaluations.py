"""What a run's evaluations leave behind: last.ckpt holds the final state, re-tests keep their own results
(trainer/evaluations.py), predict reports latency per record."""

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from trainer.cli import TuneloopCLI
from trainer.callbacks import latency_summary
from trainer.evaluations import evaluation_name

RECIPE = "configs/encoder/waam-multilabel.yaml"
DEBUG = "configs/debug.yaml"
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
# Monitoring the step in "min" mode keeps the first epoch's checkpoint as the best: after it nothing improves,
# which is when Lightning 2.6 stops refreshing last.ckpt.
KEEP_FIRST = """trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: step, mode: min, save_top_k: 1, save_last: true, filename: "best-{epoch}-{step}"}
    - class_path: tests.trainer.test_evaluations.FinalWeights
"""


class FinalWeights(Callback):
    """The module's weights when training ends (the post-fit test then loads the best checkpoint's)."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.state_dict_at_end = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-epoch fit (2 optimizer steps per epoch: global 32 = 2 micro batches of 16) whose best checkpoint is
    epoch 0's, then its post-fit test of that best checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    overlay = root / "keep_first.yaml"
    overlay.write_text(KEEP_FIRST)
    cli = TuneloopCLI(args=["fit", "-c", RECIPE, "-c", DEBUG, "-c", str(overlay), f"--run.root={root}",
                            "--run.version=r", *QUIET, "--trainer.max_epochs=2", "--trainer.limit_train_batches=4",
                            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
                            "--run.test_after_fit=true"])
    return cli, root / "waam-multilabel" / "r", root


def test_last_checkpoint_holds_the_final_weights_and_step(fitted):
    cli, run, _ = fitted
    assert cli.trainer.global_step == 4
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best.endswith("best-epoch=0-step=2.ckpt")  # the monitor kept an early epoch
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # saved after the last epoch ended: both epochs complete, as a resume from it sees them
    assert last["global_step"] == 4 and last["epoch"] == cli.trainer.current_epoch == 2
    final = next(c for c in cli.trainer.callbacks if isinstance(c, FinalWeights)).state_dict_at_end
    assert set(last["state_dict"]) == set(final)
    for key, value in final.items():
        assert torch.equal(last["state_dict"][key], value), key
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == 2


def test_post_fit_test_stays_in_the_run_directory(fitted):
    _, run, _ = fitted
    metrics = json.loads((run / "metrics.json").read_text())
    name = "test-best-epoch=0-step=2"
    assert metrics["test"]["evaluation"] == name and "test/f1_macro" in metrics["test"]["metrics"]
    entry = metrics["evaluations"][name]
    assert entry["global_step"] == 2 and entry["mode"] is None and entry["metrics"] == metrics["test"]["metrics"]
    assert entry["files"] == {"predictions": "predictions.jsonl", "plots": ["plots/test_confusion_matrix.png"]}
    assert (run / "predictions.jsonl").exists() and not (run / "evaluations").exists()


def test_retests_keep_their_own_results(fitted):
    _, run, root = fitted
    base = ["-c", RECIPE, "-c", DEBUG, f"--run.root={root}", *QUIET]

    def test(ckpt, batches):
        TuneloopCLI(args=["test", *base, f"--ckpt_path={run / 'checkpoints' / ckpt}",
                          f"--trainer.limit_test_batches={batches}"])
        return json.loads((run / "metrics.json").read_text())

    post_fit = (run / "predictions.jsonl").read_text()
    post_fit_test = json.loads((run / "metrics.json").read_text())["test"]
    metrics = test("last.ckpt", 1)
    assert list(metrics["evaluations"]) == ["test-best-epoch=0-step=2", "test-last"]
    assert metrics["test"] == post_fit_test and (run / "predictions.jsonl").read_text() == post_fit
    last = metrics["evaluations"]["test-last"]
    assert last["global_step"] == 4 and last["checkpoint"].endswith("last.ckpt")
    assert last["files"] == {"predictions": "evaluations/test-last/predictions.jsonl",
                             "plots": ["evaluations/test-last/plots/test_confusion_matrix.png"]}
    assert len((run / last["files"]["predictions"]).read_text().splitlines()) == 16
    assert last["metrics"] != post_fit_test["metrics"]

    # the same name again replaces only its own entry and files
    metrics = test("last.ckpt", 2)
    assert len((run / "evaluations/test-last/predictions.jsonl").read_text().splitlines()) == 32
    assert metrics["test"] == post_fit_test and (run / "predictions.jsonl").read_text() == post_fit
    # re-testing the post-fit test's own checkpoint is that evaluation again: it replaces the run's own test
    metrics = test("best-epoch=0-step=2.ckpt", 2)
    assert list(metrics["evaluations"]) == ["test-best-epoch=0-step=2", "test-last"]
    assert metrics["evaluations"]["test-best-epoch=0-step=2"]["files"]["predictions"] == "predictions.jsonl"
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 32


def test_predict_reports_latency_per_record(fitted):
    _, run, root = fitted
    TuneloopCLI(args=["predict", "-c", RECIPE, "-c", DEBUG, f"--run.root={root}", *QUIET,
                      f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.limit_predict_batches=2"])
    predict = json.loads((run / "metrics.json").read_text())["predict"]
    assert predict["items"] == 32
    assert 0 < predict["latency_mean_s"] and 0 < predict["latency_p95_s"]
    # two batches of 16: each record counts its batch's time / 16, so p95 is the slower batch's, >= the mean
    assert predict["latency_p95_s"] >= predict["latency_mean_s"] * (1 - 1e-9)
    assert predict["checkpoint"].endswith("last.ckpt")


def test_latency_summary_and_names():
    summary = latency_summary([0.1] * 10 + [0.3] * 10)
    assert summary["items"] == 20 and summary["latency_mean_s"] == pytest.approx(0.2)
    assert summary["latency_p95_s"] == pytest.approx(0.3)
    assert latency_summary([])["latency_mean_s"] is None
    assert evaluation_name("test", "rank", "runs/x/r/checkpoints/last.ckpt", post_fit=False) == "test-rank-last"
    assert evaluation_name("test", "generate", None, post_fit=False) == "test-generate-init"
    assert evaluation_name("test", None, None, post_fit=True) == "test-final"
    assert evaluation_name("test", None, "/a b/best-epoch=0-step=2.ckpt", post_fit=False) == "test-best-epoch=0-step=2"


@pytest.mark.slow
def test_retests_in_both_prediction_modes_keep_both(tmp_path):
    """The intent team's re-test of last.ckpt in rank mode after a generate-mode test keeps both."""
    base = ["-c", "configs/intent/exaone-4.0-1.2b-lora.yaml", "-c", DEBUG, f"--run.root={tmp_path}", *QUIET]
    TuneloopCLI(args=["fit", *base, "--run.version=r", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                      "--trainer.limit_val_batches=1", "--run.test_after_fit=false"])
    run = tmp_path / "intent-exaone-lora" / "r"
    for mode in ("generate", "rank"):
        TuneloopCLI(args=["test", *base, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                          "--trainer.limit_test_batches=1", f"--model.init_args.prediction_mode={mode}"])
    metrics = json.loads((run / "metrics.json").read_text())
    generate, rank = metrics["evaluations"]["test-generate-last"], metrics["evaluations"]["test-rank-last"]
    assert (generate["mode"], rank["mode"]) == ("generate", "rank")
    # the run had no post-fit test: its first test is the run's own (run dir, metrics.json["test"])
    assert metrics["test"]["evaluation"] == "test-generate-last" and metrics["test"]["metrics"] == generate["metrics"]
    assert generate["files"] == {"predictions": "predictions.jsonl", "per_label": "per_label.json",
                                 "plots": ["plots/test_confusion_matrix.png"]}
    assert rank["files"] == {"predictions": "evaluations/test-rank-last/predictions.jsonl",
                             "per_label": "evaluations/test-rank-last/per_label.json",
                             "plots": ["evaluations/test-rank-last/plots/test_confusion_matrix.png"]}
    assert rank["metrics"]["test/unknown_rate"] == 0.0
    for entry in (generate, rank):
        assert all((run / f).exists() for f in [entry["files"]["predictions"], entry["files"]["per_label"],
                                                 *entry["files"]["plots"]])
        assert len((run / entry["files"]["predictions"]).read_text().splitlines()) == 4
