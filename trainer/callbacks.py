"""Callbacks that make a run leave its artifacts behind: metrics.json, predictions.jsonl, plots, a summary.

All file writes happen on global rank zero; per-process outputs are gathered first.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.trainer.states import TrainerFn

from datamodules.records import write_jsonl
from modules.base import TuneloopModule
from trainer import evaluations
from trainer.summary import best_validation, print_fit_summary, print_summary

log = logging.getLogger(__name__)


def run_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def gather_objects(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """Every process's ``obj`` (one list entry per rank); ``[obj]`` in a single process."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _floats(metrics: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if prefix and not key.startswith(prefix):
            continue
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = value if math.isfinite(value) else None
    return dict(sorted(out.items()))


def update_metrics_file(path: Path, section: str, values: dict) -> None:
    """Merge ``values`` into ``metrics.json`` under ``section`` (``fit``, ``test``, ...). Written atomically (a
    kill never leaves half a file); a non-finite number (a skipped step's nan loss, an inf score) is ``null``,
    as strict JSON has no NaN or Infinity."""
    from trainer.checkpoint_io import atomic_write_text

    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = _finite_or_null(values)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _dedupe(rows: list[dict]) -> list[dict]:
    """Distributed samplers pad the last batch by repeating records; keep the first of each id."""
    seen, out = set(), []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out


def log_table(trainer: pl.Trainer, key: str, columns: list[str], rows: list[dict], images: list | None = None) -> None:
    """``rows`` as the W&B table ``key`` (with an image column when ``images`` are given)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            data = [[r[c] for c in columns] for r in rows]
            cols = list(columns)
            if images is not None:
                import wandb

                cols.append("image")
                data = [row + [wandb.Image(img)] for row, img in zip(data, images)]
            logger.log_table(key=key, columns=cols, data=data)


def log_images(trainer: pl.Trainer, paths: list[Path]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for p in paths:
                logger.log_image(key=f"plots/{p.stem}", images=[str(p)])


class RunArtifacts(Callback):
    """Loss curve, metrics.json, test predictions and plots in the run directory, and a final summary."""

    def __init__(self) -> None:
        self.train_steps: list[int] = []
        self.train_loss: list[float] = []
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self._pending: list[float] = []
        self._step_before = 0  # global step before the current micro batch
        self._fitted = False  # a test after this trainer's fit is the run's own test
        self._evaluation: evaluations.Evaluation | None = None
        self._figures: list[Path] = []
        self.val_history: list[dict] = []  # every validation pass of the fit: step, epoch, val/* metrics
        self._final: dict | None = None  # what print_final shows: set at the end of fit (and its test)

    def state_dict(self) -> dict:
        """The loss curve so far, saved in every checkpoint: a resumed fit's ``metrics.json`` and plots show the
        whole run, as an uninterrupted fit's would."""
        return {"train_steps": list(self.train_steps), "train_loss": list(self.train_loss),
                "val_steps": list(self.val_steps), "val_loss": list(self.val_loss), "pending": list(self._pending),
                "val_history": list(self.val_history)}

    def load_state_dict(self, state: dict) -> None:
        self.train_steps, self.train_loss = list(state["train_steps"]), list(state["train_loss"])
        self.val_steps, self.val_loss = list(state["val_steps"]), list(state["val_loss"])
        self._pending = list(state["pending"])
        self.val_history = list(state.get("val_history", []))  # absent in checkpoints written before it was kept

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning hands over the loss divided by the accumulation steps, so the losses of one optimizer
        # step sum to that step's mean loss.
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self._pending.append(float(loss.detach()))
        if trainer.global_step > self._step_before:  # this micro batch ended an optimizer step
            # Every process completes the step together: the recorded loss is the global mean.
            step_loss = torch.tensor(sum(self._pending), device=pl_module.device)
            if trainer.world_size > 1:
                step_loss = trainer.strategy.reduce(step_loss, reduce_op="mean")
            self.train_steps.append(trainer.global_step)
            self.train_loss.append(float(step_loss))
            self._pending = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Sample generations: every rank asks (a sharded model generates on all of them), rank 0 writes.
        if trainer.sanity_checking or not isinstance(pl_module, TuneloopModule):
            return
        sample = pl_module.sample_generations()
        if sample is not None and trainer.is_global_zero and sample.rows:
            write_jsonl(run_dir(trainer) / "generations.jsonl", sample.rows, append=True)
            log_table(trainer, "val/generations", sample.columns, sample.rows, sample.images)

    def on_validation_end(self, trainer, pl_module) -> None:
        # After the epoch-end metrics are aggregated (they are not yet in callback_metrics at epoch end).
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.val_steps.append(trainer.global_step)
        self.val_loss.append(float(trainer.callback_metrics["val/loss"]))
        if trainer.state.fn == TrainerFn.FITTING:  # the weights of this step may become the best checkpoint
            self.val_history.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                     "metrics": _floats(trainer.callback_metrics, prefix="val/")})

    def on_fit_end(self, trainer, pl_module) -> None:
        self._fitted = True
        if not trainer.is_global_zero:
            return
        from modules import plots

        out = run_dir(trainer)
        values = _floats(trainer.callback_metrics)
        ckpt = trainer.checkpoint_callback
        section = {"metrics": values, "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                   "world_size": trainer.world_size, "accumulate_grad_batches": trainer.accumulate_grad_batches,
                   "train_loss": [[s, l] for s, l in zip(self.train_steps, self.train_loss)]}
        if ckpt is not None and ckpt.best_model_path:
            section["best_checkpoint"] = ckpt.best_model_path
            section["monitor"] = ckpt.monitor
            if ckpt.best_model_score is not None:
                section["best_score"] = float(ckpt.best_model_score)
        best = best_validation(self.val_history, ckpt)
        if best is not None:
            section["best_val"] = best  # the validation metrics of the weights the post-fit test evaluates
        update_metrics_file(out / "metrics.json", "fit", section)
        paths = []
        if self.train_steps:
            paths.append(plots.loss_curve(self.train_steps, self.train_loss, self.val_steps, self.val_loss,
                                          out / "plots" / "loss_curve.png"))
        log_images(trainer, paths)
        from trainer.perf import Throughput

        perf = next((cb.summary_rows() for cb in trainer.callbacks if isinstance(cb, Throughput)), None)
        self._final = {"fit": values, "best": best, "perf": perf, "out": out, "test": None}

    def print_final(self, trainer) -> None:
        """The fit's one summary table (the CLI calls it after fit and its test): the best checkpoint's validation
        metrics, beside them the label-frequency baseline and the post-fit test's metrics."""
        final, self._final = self._final, None
        if final is not None and trainer.is_global_zero:
            print_fit_summary(final)

    def on_test_start(self, trainer, pl_module) -> None:
        # Named by stage, mode and checkpoint (trainer/evaluations.py): a re-test keeps its own files.
        if not trainer.is_global_zero:
            return
        mode = pl_module.hparams.get("prediction_mode") if isinstance(pl_module, TuneloopModule) else None
        ckpt = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self._evaluation = evaluations.begin(run_dir(trainer), "test", mode, ckpt, post_fit=self._fitted)
        self._figures = []

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not isinstance(pl_module, TuneloopModule):
            return
        gathered = gather_objects(trainer, pl_module.pop_eval_outputs())
        if not trainer.is_global_zero:
            return
        outputs = [o for rank_outputs in gathered for o in rank_outputs]
        evaluation = self._evaluation
        rows = _dedupe(pl_module.prediction_records(outputs))
        write_jsonl(evaluation.predictions, rows)
        from trainer.wandb_artifacts import log_test_results

        log_test_results(trainer, rows)  # W&B: predictions table, native confusion matrix
        self._figures = pl_module.save_figures("test", outputs, evaluation.plots)
        log_images(trainer, self._figures)

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        values = _floats(trainer.callback_metrics, prefix="test/")
        restored = (pl_module.restored_from if isinstance(pl_module, TuneloopModule) else None) or {}
        step = trainer.global_step if self._evaluation.checkpoint is None else restored.get("global_step")
        evaluations.record(self._evaluation, values, step, self._figures)
        log.info(f"test metrics, predictions and plots ({self._evaluation.name}) written to "
                 f"{self._evaluation.directory}")
        ckpt, best = self._evaluation.checkpoint, best_checkpoint(trainer)
        weights = ("best checkpoint" if ckpt and best and Path(ckpt) == Path(best) else Path(ckpt).stem if ckpt
                   else "final weights" if self._fitted else "initial weights")
        if self._final is not None:  # the fit's own test: one table with the fit's validation metrics
            self._final["test"] = {"metrics": values, "weights": weights}
        else:
            print_summary("test", values, run_dir(trainer), headers={"test": f"test: {weights}"})


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint by the recipe's monitor, or ``None`` when nothing is monitored (or saved yet)."""
    ckpt = trainer.checkpoint_callback
    if ckpt is None or not ckpt.monitor:
        return None
    return ckpt.best_model_path or None


def record_export(trainer: pl.Trainer, name: str, info: dict) -> None:
    """Note in metrics.json (``exports``) which checkpoint and step the exported directory ``name`` holds."""
    path = run_dir(trainer) / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    update_metrics_file(path, "exports", {**data.get("exports", {}), name: info})


class AdapterExport(Callback):
    """Exports the PEFT adapter (``PeftModel.from_pretrained``-loadable, with the tokenizer and ``prompt.json``)
    and, for a module that ``exports_model``, the standalone model, so that ``<run dir>/adapter/`` and
    ``<run dir>/model/`` are the model whose test metrics the run reports:

    * a recipe with a monitored checkpoint: ``adapter/`` and ``model/`` are the best checkpoint, written when
      the post-fit evaluation has loaded it (the CLI arms this with :meth:`export_loaded_weights`); the final
      weights go to ``adapter-last/`` at the end of fit (a full model's final weights stay in ``last.ckpt``);
    * without a monitor: the final weights are the tested ones and go to ``adapter/`` and ``model/``.

    ``metrics.json`` (``exports``) records the checkpoint, global step and epoch each directory holds, and each
    gets a model card (``README.md``, ``trainer/model_card.py``), rewritten after every test so that the card of
    the tested weights carries their test metrics. Every rank calls the module's ``export_adapter`` and
    ``export_model`` (gathering sharded weights is a collective); they write on rank zero only. Modules with
    neither are skipped.
    """

    def __init__(self) -> None:
        self._export_on_load = False

    def export_loaded_weights(self) -> None:
        """Export ``adapter/`` at the start of the next evaluation, from the checkpoint it loads."""
        self._export_on_load = True

    @staticmethod
    def _export(trainer, pl_module, suffix: str, info: dict, model: bool) -> None:
        """``adapter<suffix>/`` of an adapter module and, with ``model``, ``model/`` of a module that
        ``exports_model``."""
        from trainer import model_card

        if not isinstance(pl_module, TuneloopModule):
            return
        written = []
        if pl_module.has_adapter:
            pl_module.export_adapter(run_dir(trainer) / f"adapter{suffix}")
            written.append(f"adapter{suffix}")
        if model and pl_module.exports_model:
            pl_module.export_model(run_dir(trainer) / "model")
            written.append("model")
        if trainer.is_global_zero:
            for name in written:
                record_export(trainer, name, info)
            for name in written:  # a card reads every export's record (an adapter's names the merged model/)
                model_card.write_card(run_dir(trainer), name)

    def on_fit_end(self, trainer, pl_module) -> None:
        best = best_checkpoint(trainer)
        info = {"weights": "final", "global_step": trainer.global_step}
        self._export(trainer, pl_module, "-last" if best else "", info, model=not best)

    def _on_eval_start(self, trainer, pl_module) -> None:
        if not self._export_on_load:
            return
        self._export_on_load = False
        restored = (pl_module.restored_from if isinstance(pl_module, TuneloopModule) else None) or {}
        ckpt = trainer.checkpoint_callback
        score = ckpt.best_model_score if ckpt is not None else None
        info = {"weights": "best", "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                "global_step": restored.get("global_step"), "epoch": restored.get("epoch"),
                "monitor": ckpt.monitor if ckpt is not None else None,
                "score": float(score) if score is not None else None}
        self._export(trainer, pl_module, "", info, model=True)

    def on_test_start(self, trainer, pl_module) -> None:
        self._on_eval_start(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        # After RunArtifacts (earlier in the callbacks) has recorded the evaluation in metrics.json.
        if trainer.is_global_zero:
            from trainer import model_card

            model_card.refresh_cards(run_dir(trainer))

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.VALIDATING:
            self._on_eval_start(trainer, pl_module)


class PredictionWriter(BasePredictionWriter):
    """``tuneloop predict`` writes ``predictions.predict.jsonl`` (one row per record) into the run directory,
    beside the test split's ``predictions.jsonl`` (which it leaves as it is), and reports the latency per record:
    each predict batch's wall time (``predict_step`` alone, device synchronized) divided by its records, counted
    once per record, as mean and p95 seconds (``metrics.json["predict"]`` and the final summary). It is batched
    latency at the recipe's micro batch, not the latency of a request of one record."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self._started = 0.0
        self._per_record: list[float] = []  # seconds, one entry per predicted record of this process

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._per_record = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize(pl_module.device)
        seconds = time.perf_counter() - self._started
        n = len(pl_module.prediction_records([outputs])) if isinstance(pl_module, TuneloopModule) else 1
        self._per_record.extend([seconds / n] * n if n else [])
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        gathered = gather_objects(trainer, (predictions, self._per_record))
        if not trainer.is_global_zero:
            return
        outputs = [o for rank_predictions, _ in gathered for o in rank_predictions]
        path = run_dir(trainer) / "predictions.predict.jsonl"
        rows = _dedupe(pl_module.prediction_records(outputs))
        write_jsonl(path, rows)
        log.info(f"wrote {len(rows)} predictions to {path}")
        latency = latency_summary([s for _, rank_seconds in gathered for s in rank_seconds])
        ckpt = trainer.ckpt_path
        update_metrics_file(run_dir(trainer) / "metrics.json", "predict",
                            {**latency, "checkpoint": str(ckpt) if ckpt else None, "predictions": path.name})
        print_summary("predict", {f"predict/{k}": v for k, v in latency.items()}, run_dir(trainer))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_summary(seconds: list[float]) -> dict:
    """Mean and 95th percentile (linear interpolation) of per-record seconds, and how many records."""
    if not seconds:
        return {"items": 0, "latency_mean_s": None, "latency_p95_s": None}
    ordered = sorted(seconds)
    position = 0.95 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    p95 = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return {"items": len(ordered), "latency_mean_s": sum(ordered) / len(ordered), "latency_p95_s": p95}

