"""Numeric guards: a non-finite loss, gradient or validation stops the fit (or skips the step) and is never
checkpointed as the best; a diverged model's losses, metrics and predictions read nan, never 0.0 or a label."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from modules.heads import BinaryHead, MultiLabelHead, NonFiniteRows, RegressionHead
from modules.token_loss import TokenMeanNLL, perplexity
from trainer.cli import TuneloopCLI
from trainer.guards import NonFiniteError, NonFiniteGuard

DEBUG = "configs/debug.yaml"
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SKIP = ["--trainer.callbacks+=trainer.guards.NonFiniteGuard", "--trainer.callbacks.policy=skip"]


# ----------------------------------------------------------------------------------- the guard on a tiny model
class Linear(LightningModule):
    """y = w x; the training loss of the steps in ``nan_steps`` (0-based global step) and the validation loss of
    the validations in ``nan_vals`` (0-based count) are nan."""

    def __init__(self, nan_steps=(), nan_vals=()):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_steps, self.nan_vals, self.vals, self.weights = set(nan_steps), set(nan_vals), 0, []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        return loss * math.nan if self.trainer.global_step in self.nan_steps else loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights.append(self.layer.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("val/loss", loss * math.nan if self.vals in self.nan_vals else loss)

    def on_validation_epoch_end(self):
        self.vals += 0 if self.trainer.sanity_checking else 1

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def fit(tmp_path, module, guard, epochs=3):
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    loader = DataLoader(data, batch_size=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    trainer = Trainer(max_epochs=epochs, callbacks=[guard, ckpt], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    return trainer, ckpt


def test_stop_names_the_global_step_and_the_value(tmp_path):
    with pytest.raises(NonFiniteError) as e:
        fit(tmp_path, Linear(nan_steps={5}), NonFiniteGuard())
    # Global step 6 (the 6th optimizer step, as metrics.json numbers its train_loss), nothing saved after it.
    assert str(e.value.code).startswith("tuneloop fit: non-finite training loss at global step 6: nan; stopped")
    assert not (tmp_path / "last.ckpt").exists() or torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] < 6


def test_skip_leaves_the_weights_alone_and_counts_the_step(tmp_path):
    module, guard = Linear(nan_steps={2, 5}), NonFiniteGuard(policy="skip")
    trainer, ckpt = fit(tmp_path, module, guard)
    assert guard.skipped == [3, 6] and trainer.global_step == 12
    assert torch.equal(module.weights[2], module.weights[1]) and torch.equal(module.weights[5], module.weights[4])
    assert not torch.equal(module.weights[3], module.weights[2])  # the next step trains again
    assert all(torch.isfinite(w).all() for w in module.weights)
    assert math.isfinite(float(ckpt.best_model_score))
    assert guard.state_dict() == {"skipped": [3, 6], "bad_validations": []}  # resumes with its count


def test_a_non_finite_validation_never_becomes_the_best_checkpoint(tmp_path):
    # Validation 0 is nan, 1 and 2 are finite: the best is one of the finite ones, never the nan one.
    guard = NonFiniteGuard(policy="skip")
    trainer, ckpt = fit(tmp_path, Linear(nan_vals={0}), guard)
    assert guard.bad_validations == [4]
    assert ckpt.best_model_path and math.isfinite(float(ckpt.best_model_score))
    assert torch.load(ckpt.best_model_path, weights_only=True)["global_step"] in (8, 12)
    # Every validation nan: no best, and the fit ends with an error instead of reporting an unusable model.
    with pytest.raises(NonFiniteError, match=r"every validation was non-finite \(global steps \[4, 8\]\)"):
        fit(tmp_path / "all", Linear(nan_vals={0, 1}), NonFiniteGuard(policy="skip"), epochs=2)
    with pytest.raises(NonFiniteError, match="non-finite validation at global step 4: val/loss=nan"):
        fit(tmp_path / "stop", Linear(nan_vals={0}), NonFiniteGuard())


def test_policy_is_checked():
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteGuard(policy="ignore")


def test_lightning_still_skips_a_step_it_has_saved():
    """The guard keeps a non-finite validation from being checkpointed through ModelCheckpoint's record of the
    step it saved last (Lightning 2.6); fail loudly if that private attribute stops being consulted."""
    import inspect

    source = inspect.getsource(ModelCheckpoint._should_skip_saving_checkpoint)
    assert "self._last_global_step_saved == trainer.global_step" in source


# ----------------------------------------------------------------------------------- train/grad_norm
class NormProbe(Linear):
    """Records the total gradient norm the optimizer sees (the module's hook runs after the callbacks', before
    Lightning clips) and the norm left after clipping."""

    def __init__(self):
        super().__init__()
        self.before, self.after, self.logged = [], [], []

    def on_before_optimizer_step(self, optimizer):
        self.before.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()])))
        self.logged.append(float(self.trainer.callback_metrics["train/grad_norm"]))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()])))


def test_grad_norm_is_logged_per_step_before_clipping(tmp_path):
    module = NormProbe()
    data = TensorDataset(torch.randn(16, 4) * 10, torch.randn(16, 1))
    trainer = Trainer(max_epochs=1, callbacks=[NonFiniteGuard()], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, gradient_clip_val=0.01,
                      default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert len(module.logged) == 4 and module.logged == pytest.approx(module.before, rel=1e-6)
    assert min(module.before) > 0.1 and max(module.after) == pytest.approx(0.01, rel=1e-3)  # clipped afterwards


def test_grad_norm_of_fsdp2_gradients_is_the_full_norm(tmp_path):
    """FSDP2 gradients are DTensors: the norm is reduced over the mesh (one process, gloo, CPU)."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        models = []
        for _ in range(2):  # the same weights, plain and sharded
            torch.manual_seed(0)
            models.append(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)))
        plain, sharded = models[0], fully_shard(models[1])
        x = torch.randn(6, 4)
        plain(x).pow(2).sum().backward()
        sharded(x).pow(2).sum().backward()
        assert type(sharded[0].weight.grad).__name__ == "DTensor"
        expected = float(torch.nn.utils.get_total_norm([p.grad for p in plain.parameters()]))
        optimizer = torch.optim.SGD(sharded.parameters(), lr=0.1)
        norm = NonFiniteGuard._grad_norm(SimpleNamespace(strategy=None), optimizer)
        assert isinstance(norm, float) and norm == pytest.approx(expected, rel=1e-6)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------- losses, metrics, predictions
def test_token_mean_nll_never_hides_a_non_finite_batch():
    metric = TokenMeanNLL()
    metric.update(torch.tensor(6.0), torch.tensor(3))
    assert float(metric.compute()) == 2.0
    metric.update(torch.tensor(math.inf), torch.tensor(2))
    assert math.isinf(float(metric.compute()))
    metric.update(torch.tensor(math.nan), torch.tensor(2))
    assert math.isnan(float(metric.compute()))  # never 0.0
    metric.reset()
    assert float(metric.compute()) == 0.0
    assert math.isnan(perplexity(math.nan)) and perplexity(math.inf) == math.inf and perplexity(0.0) == 1.0


def test_non_finite_predictions_are_marked_and_counted():
    head = MultiLabelHead(["a", "b"])
    assert head.prediction_row(np.array([np.nan, np.nan])) == {"pred": None, "nonfinite": True}
    assert head.prediction_row(np.array([0.9, 0.1]))["pred"] == ["a"]
    assert BinaryHead(["n", "p"]).prediction_row(np.float32(np.nan)) == {"pred": None, "nonfinite": True}
    assert RegressionHead(["t"]).prediction_row(np.array([np.inf]))["nonfinite"] is True
    rows = NonFiniteRows()
    rows.update(torch.tensor([[0.1, 0.2], [math.nan, 0.3], [math.inf, math.nan]]))
    rows.update(torch.tensor([0.5, math.nan]))  # binary: (N,)
    assert int(rows.compute()) == 3


# ----------------------------------------------------------------------------------- the debug recipes
def run_fit(tmp_path, recipe, *extra):
    TuneloopCLI(args=["fit", "-c", recipe, "-c", DEBUG, f"--run.root={tmp_path}", *QUIET, *extra])


def only_run(tmp_path):
    (run,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    return run


@pytest.mark.slow
def test_encoder_lr_1e3_stops_at_the_first_nan_step(tmp_path):
    # The tester's run: lr=1e3 on the multi-label encoder reaches nan at step 8. It used to train on to the end
    # and pick the all-nan model (empty label sets) as the best checkpoint.
    with pytest.raises(NonFiniteError, match=r"non-finite training loss at global step 8: nan"):
        run_fit(tmp_path, "configs/encoder/waam-multilabel.yaml", "--model.init_args.optimizer.init_args.lr=1000",
                "--trainer.limit_val_batches=1")
    run = only_run(tmp_path)
    assert not list(run.glob("checkpoints/best*")) and not (run / "predictions.jsonl").exists()


@pytest.mark.slow
def test_encoder_adam_eps_0_under_skip_never_checkpoints_the_nan_model(tmp_path):
    # eps=0: parameters with a zero gradient get 0/0 = nan in the first update; step 2's loss is nan.
    with pytest.raises(NonFiniteError, match=r"every validation was non-finite \(global steps \[2\]\)"):
        run_fit(tmp_path, "configs/encoder/waam-multilabel.yaml", "--model.init_args.optimizer.init_args.eps=0",
                "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1", *SKIP)
    run = only_run(tmp_path)
    fit = json.loads((run / "metrics.json").read_text())["fit"]
    assert fit["nonfinite_steps"] == [2] and fit["nonfinite_validations"] == [2] and fit["nonfinite_policy"] == "skip"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # the final state, never a best
    assert not (run / "predictions.jsonl").exists()

    # The nan checkpoint evaluated: metrics are nan (null), predictions marked, never bare NaN or empty label sets.
    TuneloopCLI(args=["test", "-c", "configs/encoder/waam-multilabel.yaml", "-c", DEBUG, *QUIET,
                      "--trainer.limit_test_batches=1", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    test = json.loads((run / "metrics.json").read_text())["test"]["metrics"]
    assert test and all(v is None for v in test.values()), test
    text = (run / "predictions.jsonl").read_text()
    assert "NaN" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows and all(r["pred"] is None and r["nonfinite"] for r in rows)


@pytest.mark.slow
def test_sft_adam_eps_0_stops_at_the_nan_validation_loss(tmp_path):
    # One optimizer step (global batch 4 = micro 4), then validation: the nan adapter's val/loss is nan, not the
    # 0.0 (and perplexity 1.0) a nan-dropping mean reported; the guard stops before anything is checkpointed.
    with pytest.raises(NonFiniteError, match=r"non-finite validation at global step 1: val/loss=nan"):
        run_fit(tmp_path, "configs/sft/komt-llama2-13b-lora.yaml", "--model.init_args.optimizer.init_args.eps=0",
                "--data.init_args.batch.global_batch_size=4", "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1")
    run = only_run(tmp_path)
    assert not (run / "checkpoints").exists() and not (run / "adapter").exists()
