"""Encoder tasks (MISSION §4) on ``AutoModelForSequenceClassification``: one module, four heads.

======== ======== ==================== =========================================================
task     outputs  loss                 metrics (``val/…``, ``test/…``)
======== ======== ==================== =========================================================
binary   1 logit  BCEWithLogits        accuracy, precision, recall, f1
multicl. C logits cross-entropy        accuracy, f1_macro, f1_micro
multilab L logits BCEWithLogits        f1_macro, f1_micro, partial_score, exact_match, label_accuracy
regress. T values MSE (standardized)   mse, rmse, mae, r2 (+ per target), in original units
======== ======== ==================== =========================================================

The task and its label names come from the DataModule, so a recipe states them once; they are recorded in
the checkpoint (``checkpoint["tuneloop"]``). Regression targets are standardized with the training split's mean and
standard deviation (kept as buffers, so a checkpoint predicts in original units on its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from modules.backbone import BackboneSpec, LoraSpec, apply_lora, build_model, load_tokenizer
from modules.base import OptimizerCallable, TuneloopModule, default_optimizer
from modules.metrics import build_metrics, compute_and_reset
from modules.optim import SchedulerSpec


class EncoderModule(TuneloopModule):
    """Fine-tune a BERT-style encoder with a classification or regression head (full or LoRA).

    Args:
        backbone: Pretrained model and tokenizer (or the tiny debug model).
        lora: LoRA adapter on the encoder; the task head stays fully trainable. ``null`` = full fine-tuning.
        threshold: Probability above which a binary/multi-label output counts as positive.
        pos_weight: Weight of positive examples in BCEWithLogits (binary, multi-label): ``auto`` =
            negatives / positives of each label in the training split (for imbalanced labels), a list with
            one weight per label, or ``null`` for none.
        report_baseline: Also log the label-frequency baseline on validation (``val/baseline_<metric>``):
            majority class, labels more frequent than 50%, or the training mean for regression.
        optimizer: Optimizer factory called with parameter groups (biases and norms get no weight decay).
        scheduler: Learning-rate schedule over all optimizer steps.
    """

    peft_task_type = "SEQ_CLS"

    def __init__(
        self,
        backbone: BackboneSpec,
        lora: LoraSpec | None = None,
        threshold: float = 0.5,
        pos_weight: Literal["auto"] | list[float] | None = None,
        report_baseline: bool = True,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerSpec | None = None,
    ):
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"model.threshold must be in (0, 1), got {threshold}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.plain_hyperparameters()
        self.backbone = backbone
        self.lora = lora
        self.threshold = threshold
        self.pos_weight = pos_weight
        self.report_baseline = report_baseline
        self.tokenizer = load_tokenizer(backbone)
        self.task: str | None = None
        self.label_names: list[str] = []

    # ----- wiring to the data ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "task") or not hasattr(dm, "label_names"):
            raise TypeError("EncoderModule needs an EncoderDataModule (data.class_path: datamodules.encoder."
                            "EncoderDataModule)")
        if self.task is not None:  # already wired (e.g. test after fit in one process)
            return
        self.task, self.label_names, self.num_outputs = dm.task, list(dm.label_names), dm.num_outputs
        if self.task == "regression":
            mean, std = dm.target_stats or (torch.zeros(self.num_outputs), torch.ones(self.num_outputs))
            self.register_buffer("target_mean", mean.float().clone())
            self.register_buffer("target_std", std.float().clone())
        if self.task in ("binary", "multilabel"):
            weight = positive_weight(self.pos_weight, dm.train_targets if stage == "fit" else None,
                                     self.num_outputs)
            self.register_buffer("bce_pos_weight", weight)  # persistent: a checkpoint keeps its loss
        metrics = build_metrics(self.task, self.num_outputs, threshold=self.threshold,
                                target_names=self.label_names if self.task == "regression" else None)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        if self.report_baseline and stage == "fit":
            self.val_baseline = metrics.clone(prefix="val/baseline_")
            self.register_buffer("baseline_row", frequency_baseline(self.task, dm.train_targets, self.num_outputs), persistent=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What the head was trained for travels with the weights (the DataModule supplies it at load time).
        checkpoint["tuneloop"] = {"task": self.task, "label_names": self.label_names}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForSequenceClassification

        model = build_model(AutoModelForSequenceClassification, self.backbone, self.tokenizer,
                            num_labels=self.num_outputs)
        self.model = self.shard(apply_lora(model, self.lora, task_type=self.peft_task_type))

    # ----- forward, loss, predictions -------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (batch, outputs) for binary/multi-class/multi-label; standardized values for regression."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.model(**inputs).logits

    def loss(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), labels.float(), pos_weight=self.bce_pos_weight)
        if self.task == "multiclass":
            return F.cross_entropy(out, labels)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(out, labels.float(), pos_weight=self.bce_pos_weight)
        return F.mse_loss(out, (labels - self.target_mean) / self.target_std)

    def predictions(self, out: torch.Tensor) -> torch.Tensor:
        """Probabilities (binary (N,), multi-class (N,C), multi-label (N,L)) or values in original units (N,T)."""
        out = out.float()
        if self.task == "binary":
            return torch.sigmoid(out.squeeze(-1))
        if self.task == "multiclass":
            return out.softmax(-1)
        if self.task == "multilabel":
            return torch.sigmoid(out)
        return out * self.target_std + self.target_mean

    def _metric_target(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.long() if self.task in ("binary", "multilabel") else labels

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        n = len(batch["id"])
        self.log("val/loss", self.loss(out, batch["labels"]), prog_bar=True, sync_dist=True, batch_size=n)
        target = self._metric_target(batch["labels"])
        self.val_metrics.update(self.predictions(out), target)
        if getattr(self, "val_baseline", None) is not None:
            # The same prediction for every record: (n,) for binary, (n, outputs) otherwise.
            baseline = self.baseline_row.expand(n, -1)
            self.val_baseline.update(baseline.squeeze(-1) if self.task == "binary" else baseline, target)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs metric states across processes; sync_dist then averages identical values (no-op).
        self.log_dict(compute_and_reset(self.val_metrics), sync_dist=True)
        if getattr(self, "val_baseline", None) is not None:
            self.log_dict(compute_and_reset(self.val_baseline), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        n = len(batch["id"])
        self.log("test/loss", self.loss(out, batch["labels"]), sync_dist=True, batch_size=n)
        preds, target = self.predictions(out), self._metric_target(batch["labels"])
        self.test_metrics.update(preds, target)
        self._eval_outputs.append({"id": batch["id"], "pred": preds.cpu(), "target": batch["labels"].cpu()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"id": batch["id"], "pred": self.predictions(self(batch)).cpu()}
        if "labels" in batch:
            out["target"] = batch["labels"].cpu()
        return out

    def on_test_epoch_end(self) -> None:
        self.log_dict(compute_and_reset(self.test_metrics), sync_dist=True)

    # ----- artifacts --------------------------------------------------------------------------------
    def prediction_records(self, outputs: list[dict]) -> list[dict]:
        """One JSON-able row per record from step outputs (``id``, ``pred`` and, when known, ``target``)."""
        names = self.label_names
        rows = []
        for out in outputs:
            preds = out["pred"].numpy()
            targets = out["target"].numpy() if "target" in out else None
            for i, rid in enumerate(out["id"]):
                row = {"id": rid, **self._describe(preds[i], "pred")}
                if targets is not None:
                    row.update(self._describe(targets[i], "target", is_target=True))
                rows.append(row)
        return rows

    def _describe(self, value: np.ndarray, key: str, is_target: bool = False) -> dict:
        names = self.label_names
        if self.task == "regression":
            return {key: {n: float(v) for n, v in zip(names, np.atleast_1d(value))}}
        if self.task == "binary":
            if is_target:
                return {key: names[int(value)]}
            return {key: names[int(value > self.threshold)], "prob": float(value)}
        if self.task == "multiclass":
            if is_target:
                return {key: names[int(value)]}
            return {key: names[int(value.argmax())], "probs": {n: round(float(p), 6) for n, p in zip(names, value)}}
        if is_target:
            return {key: [n for n, v in zip(names, value) if v > 0.5]}
        return {key: [n for n, v in zip(names, value) if v > self.threshold],
                "probs": {n: round(float(p), 6) for n, p in zip(names, value)}}

    def save_figures(self, stage: str, outputs: list[dict], out_dir: Path) -> list[Path]:
        """Confusion matrix (classification) or parity plot (regression) of ``outputs`` as PNG."""
        from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

        from modules import plots

        if not outputs or "target" not in outputs[0]:
            return []
        preds = np.concatenate([o["pred"].numpy() for o in outputs])
        targets = np.concatenate([o["target"].numpy() for o in outputs])
        names = self.label_names
        if self.task == "regression":
            return [plots.parity_plot(targets.reshape(len(targets), -1), preds.reshape(len(preds), -1), names,
                                      out_dir / f"{stage}_parity.png")]
        if self.task == "multilabel":
            cm = multilabel_confusion_matrix(targets.astype(int), (preds > self.threshold).astype(int))
            return [plots.multilabel_confusion_plot(cm, names, out_dir / f"{stage}_confusion_matrix.png")]
        pred_idx = (preds > self.threshold).astype(int) if self.task == "binary" else preds.argmax(-1)
        cm = confusion_matrix(targets.astype(int), pred_idx, labels=list(range(len(names))))
        return [plots.confusion_matrix_plot(cm, names, out_dir / f"{stage}_confusion_matrix.png",
                                            title=f"{stage} confusion matrix")]


def positive_weight(spec: str | list[float] | None, train_targets: np.ndarray | None, num_outputs: int) -> torch.Tensor:
    """``pos_weight`` of BCEWithLogits, shape (outputs,): ones, the given list, or negatives/positives."""
    if spec is None or (spec == "auto" and train_targets is None):  # evaluation: restored from checkpoint
        return torch.ones(num_outputs)
    if spec == "auto":
        t = np.asarray(train_targets, dtype=np.float64).reshape(len(train_targets), -1)
        positives = t.sum(0)
        if (positives == 0).any():
            raise ValueError("pos_weight=auto: a label has no positive example in the training split")
        return torch.tensor((len(t) - positives) / positives, dtype=torch.float32)
    if len(spec) != num_outputs:
        raise ValueError(f"model.pos_weight has {len(spec)} values but the task has {num_outputs} outputs")
    return torch.tensor(spec, dtype=torch.float32)


def frequency_baseline(task: str, train_targets: np.ndarray, num_outputs: int) -> torch.Tensor:
    """The prediction a model that saw only label frequencies would make, for every record.

    binary: P(positive) (1,); multiclass: one-hot of the majority class (C,); multilabel: per-label frequency
    (L,), so labels present in more than half the records are predicted; regression: the training mean (T,).
    """
    t = np.asarray(train_targets)
    if task == "binary":
        return torch.tensor([t.mean()], dtype=torch.float32)
    if task == "multiclass":
        row = np.zeros(num_outputs, dtype=np.float32)
        row[np.bincount(t.astype(int), minlength=num_outputs).argmax()] = 1.0
        return torch.tensor(row)
    return torch.tensor(t.mean(axis=0), dtype=torch.float32)
