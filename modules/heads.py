"""Encoder heads: one small class per task kind, so that ``EncoderModule`` never asks which task it runs.

A head is what a task adds on top of the encoder's output layer ``out: (batch, outputs)``: its loss, the
metric inputs, the predictions, the rows of predictions.jsonl and the figures.

========== ========= ============================== ============================ ==========================
head       outputs   loss                           prediction                   figure
========== ========= ============================== ============================ ==========================
binary     1 logit   BCEWithLogits (``pos_weight``)  P(positive) (N,)             confusion matrix
multiclass C logits  cross-entropy                  softmax (N, C)               confusion matrix
multilabel L logits  BCEWithLogits (``pos_weight``)  sigmoid (N, L)               per-label confusion
regression T values  MSE on standardized targets    values in original units     parity plot
========== ========= ============================== ============================ ==========================

``HEADS`` maps the ``data.task`` string to its class; :func:`head_class` names the valid tasks for any other.
A head's tensors (``pos_weight``, the regression target mean and std) are persistent buffers, so a checkpoint
computes the same loss and predicts in original units on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from modules.metrics import TargetScale, build_metrics

PosWeight = Literal["auto"] | list[float] | None

__all__ = ["HEADS", "BinaryHead", "EncoderHead", "MultiClassHead", "MultiLabelHead", "NonFiniteRows",
           "RegressionHead", "head_class", "positive_weight"]


class EncoderHead(nn.Module):
    """Base of the task heads: the names of the outputs and the decision threshold.

    Args:
        label_names: Classes (binary: ``[negative, positive]``), labels or regression targets, in output order.
        threshold: Probability above which a binary/multi-label output counts as positive.
    """

    task: ClassVar[str]
    #: ``problem_type`` of the exported transformers model: its own loss and the text-classification pipeline's
    #: activation follow it (sigmoid for multi-label and for one logit, softmax, none for regression).
    problem_type: ClassVar[str]

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5) -> None:
        super().__init__()
        self.label_names = list(label_names)
        self.threshold = threshold

    def export_labels(self) -> list[str]:
        """``id2label`` of the exported model, in output order."""
        return self.label_names

    def output_affine(self) -> tuple[Tensor, Tensor] | None:
        """(scale, shift), each (outputs,), that turn the model's raw outputs into what :meth:`predict` reports
        before any activation; folded into the exported model's output layer. ``None``: used as they are."""
        return None

    @classmethod
    def from_data(cls, label_names: Sequence[str], *, threshold: float, pos_weight: PosWeight,
                  train_targets: np.ndarray | None,
                  target_stats: tuple[Tensor, Tensor] | None) -> EncoderHead:
        """The head for a DataModule's labels. ``train_targets`` (encoded, the training split's) are given
        when fitting and ``None`` otherwise (the buffers then come from the checkpoint); ``target_stats``
        is the training split's (mean, std) of regression targets. Each head takes what it needs."""
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer."""
        return len(self.label_names)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        """Training loss of ``out`` (batch, outputs) against the batch's ``labels``."""
        raise NotImplementedError

    def predict(self, out: Tensor) -> Tensor:
        """What the model predicts from ``out`` (batch, outputs): probabilities or values."""
        raise NotImplementedError

    def metric_target(self, labels: Tensor) -> Tensor:
        """The batch's ``labels`` as the metrics take them."""
        return labels

    def metrics(self) -> MetricCollection:
        """The task's metrics, without prefix (``modules.metrics.build_metrics``)."""
        raise NotImplementedError

    @classmethod
    def frequency_baseline(cls, train_targets: np.ndarray, num_outputs: int) -> Tensor:
        """The prediction of a model that saw only the training split's label frequencies (or mean),
        the same for every record, shape (outputs,)."""
        return torch.tensor(np.asarray(train_targets).mean(axis=0), dtype=torch.float32)

    def baseline_predictions(self, row: Tensor, n: int) -> Tensor:
        """``row`` (outputs,) repeated for ``n`` records, shaped like :meth:`predict`'s output."""
        return row.expand(n, -1)

    def describe_prediction(self, value: np.ndarray) -> dict:
        """JSON fields of one record's prediction (``pred`` and, for classifiers, its probabilities)."""
        raise NotImplementedError

    def describe_target(self, value: np.ndarray) -> dict:
        """JSON field ``target`` of one record's encoded target."""
        return {"target": self.label_names[int(value)]}

    def prediction_row(self, value: np.ndarray) -> dict:
        """:meth:`describe_prediction` of a finite output. A non-finite one (a diverged model) is marked, never
        written as a number or silently thresholded (``nan > t`` is False: an all-nan multi-label model would
        "predict" empty label sets): ``{"pred": None, "nonfinite": True}``."""
        if not np.isfinite(value).all():
            return {"pred": None, "nonfinite": True}
        return self.describe_prediction(value)

    def figures(self, stage: str, preds: np.ndarray, targets: np.ndarray, out_dir: Path) -> list[Path]:
        """PNG figures of a split's predictions (as :meth:`predict` gives them) against its targets."""
        raise NotImplementedError

    def _probs(self, value: np.ndarray) -> dict[str, float]:
        return {n: round(float(p), 6) for n, p in zip(self.label_names, value)}


def _confusion_figure(stage: str, targets: np.ndarray, pred_idx: np.ndarray, names: list[str],
                      out_dir: Path) -> list[Path]:
    """Single-label confusion matrix (rows true, columns predicted) as ``<stage>_confusion_matrix.png``."""
    from sklearn.metrics import confusion_matrix

    from modules import plots

    cm = confusion_matrix(targets.astype(int), pred_idx, labels=list(range(len(names))))
    return [plots.confusion_matrix_plot(cm, names, out_dir / f"{stage}_confusion_matrix.png",
                                        title=f"{stage} confusion matrix")]


class BinaryHead(EncoderHead):
    """One logit for the positive class (``label_names[1]``); BCEWithLogits with ``pos_weight`` (1,).

    ``predict``: P(positive) (N,); the predicted label is ``P > threshold``.
    """

    task = "binary"
    problem_type = "multi_label_classification"  # one logit: BCE in transformers, sigmoid in the pipeline

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5, pos_weight: Tensor | None = None):
        super().__init__(label_names, threshold)
        self.register_buffer("pos_weight", torch.ones(1) if pos_weight is None else pos_weight)

    @classmethod
    def from_data(cls, label_names, *, threshold, pos_weight, train_targets, target_stats) -> BinaryHead:
        return cls(label_names, threshold, positive_weight(pos_weight, train_targets, 1))

    @property
    def num_outputs(self) -> int:
        return 1

    def export_labels(self) -> list[str]:
        return [self.label_names[1]]  # the one logit is the positive class's

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), labels.float(), pos_weight=self.pos_weight)

    def predict(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out.squeeze(-1))

    def metric_target(self, labels: Tensor) -> Tensor:
        return labels.long()

    def metrics(self) -> MetricCollection:
        return build_metrics("binary", 1, threshold=self.threshold)

    @classmethod
    def frequency_baseline(cls, train_targets: np.ndarray, num_outputs: int) -> Tensor:
        return torch.tensor([np.asarray(train_targets).mean()], dtype=torch.float32)  # P(positive), (1,)

    def baseline_predictions(self, row: Tensor, n: int) -> Tensor:
        return row.expand(n, -1).squeeze(-1)

    def describe_prediction(self, value: np.ndarray) -> dict:
        return {"pred": self.label_names[int(value > self.threshold)], "prob": float(value)}

    def figures(self, stage, preds, targets, out_dir) -> list[Path]:
        return _confusion_figure(stage, targets, (preds > self.threshold).astype(int), self.label_names, out_dir)


class MultiClassHead(EncoderHead):
    """C logits, cross-entropy; ``predict``: softmax (N, C), the predicted class is the argmax."""

    task = "multiclass"
    problem_type = "single_label_classification"

    @classmethod
    def from_data(cls, label_names, *, threshold, pos_weight, train_targets, target_stats) -> MultiClassHead:
        return cls(label_names, threshold)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out, labels)

    def predict(self, out: Tensor) -> Tensor:
        return out.softmax(-1)

    def metrics(self) -> MetricCollection:
        return build_metrics("multiclass", self.num_outputs)

    @classmethod
    def frequency_baseline(cls, train_targets: np.ndarray, num_outputs: int) -> Tensor:
        row = np.zeros(num_outputs, dtype=np.float32)  # one-hot of the majority class, (C,)
        row[np.bincount(np.asarray(train_targets).astype(int), minlength=num_outputs).argmax()] = 1.0
        return torch.tensor(row)

    def describe_prediction(self, value: np.ndarray) -> dict:
        return {"pred": self.label_names[int(value.argmax())], "probs": self._probs(value)}

    def figures(self, stage, preds, targets, out_dir) -> list[Path]:
        return _confusion_figure(stage, targets, preds.argmax(-1), self.label_names, out_dir)


class MultiLabelHead(EncoderHead):
    """L logits, BCEWithLogits with ``pos_weight`` (L,); ``predict``: sigmoid (N, L), a label is predicted
    when its probability is above the threshold. Baseline: each label's training frequency."""

    task = "multilabel"
    problem_type = "multi_label_classification"

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5, pos_weight: Tensor | None = None):
        super().__init__(label_names, threshold)
        self.register_buffer("pos_weight", torch.ones(len(self.label_names)) if pos_weight is None else pos_weight)

    @classmethod
    def from_data(cls, label_names, *, threshold, pos_weight, train_targets, target_stats) -> MultiLabelHead:
        return cls(label_names, threshold, positive_weight(pos_weight, train_targets, len(label_names)))

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, labels.float(), pos_weight=self.pos_weight)

    def predict(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def metric_target(self, labels: Tensor) -> Tensor:
        return labels.long()

    def metrics(self) -> MetricCollection:
        return build_metrics("multilabel", self.num_outputs, threshold=self.threshold, target_names=self.label_names)

    def describe_prediction(self, value: np.ndarray) -> dict:
        return {"pred": [n for n, v in zip(self.label_names, value) if v > self.threshold],
                "probs": self._probs(value)}

    def describe_target(self, value: np.ndarray) -> dict:
        return {"target": [n for n, v in zip(self.label_names, value) if v > 0.5]}  # targets are 0/1

    def figures(self, stage, preds, targets, out_dir) -> list[Path]:
        from sklearn.metrics import multilabel_confusion_matrix

        from modules import plots

        cm = multilabel_confusion_matrix(targets.astype(int), (preds > self.threshold).astype(int))
        return [plots.multilabel_confusion_plot(cm, self.label_names, out_dir / f"{stage}_confusion_matrix.png")]


class RegressionHead(EncoderHead):
    """T values, MSE against targets standardized with the training split's ``target_mean`` and
    ``target_std`` (T,); ``predict`` gives values in original units (N, T). Baseline: the training mean.

    ``label_names`` are the target names (the metrics' per-target keys ``r2_<name>`` etc.). The metrics are in
    original units (``mse``, ``rmse``, ``mae``, ``r2``) and in standardized units (``mse_std``, ``rmse_std``,
    ``mae_std``), the units of the loss: ``val/mse_std`` is ``val/loss``.
    """

    task = "regression"
    problem_type = "regression"

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5, target_mean: Tensor | None = None,
                 target_std: Tensor | None = None):
        super().__init__(label_names, threshold)
        t = len(self.label_names)
        self.register_buffer("target_mean", (torch.zeros(t) if target_mean is None else target_mean).float().clone())
        self.register_buffer("target_std", (torch.ones(t) if target_std is None else target_std).float().clone())

    @classmethod
    def from_data(cls, label_names, *, threshold, pos_weight, train_targets, target_stats) -> RegressionHead:
        return cls(label_names, threshold, *(target_stats or (None, None)))

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(out, (labels - self.target_mean) / self.target_std)

    def predict(self, out: Tensor) -> Tensor:
        return out * self.target_std + self.target_mean

    def output_affine(self) -> tuple[Tensor, Tensor]:
        return self.target_std, self.target_mean

    def metrics(self) -> MetricCollection:
        # Also in standardized units (mse_std..., what the loss shows), read from target_std when computed: a
        # checkpoint restores it after the metrics are built.
        return build_metrics("regression", self.num_outputs, target_names=self.label_names,
                             target_scale=TargetScale(self, "target_std"))

    def describe_prediction(self, value: np.ndarray) -> dict:
        return {"pred": self._values(value)}

    def describe_target(self, value: np.ndarray) -> dict:
        return {"target": self._values(value)}

    def _values(self, value: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.label_names, np.atleast_1d(value))}

    def figures(self, stage, preds, targets, out_dir) -> list[Path]:
        from modules import plots

        # (N, T) also for one target
        return [plots.parity_plot(targets.reshape(len(targets), -1), preds.reshape(len(preds), -1),
                                  self.label_names, out_dir / f"{stage}_parity.png")]


class NonFiniteRows(Metric):
    """Records whose prediction (batch, ...) holds a non-finite value, summed over processes. The encoder
    reports every metric of a split with such records as nan: torchmetrics would threshold nan as negative
    and score a diverged model like a healthy one."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor) -> None:
        self.count += (~torch.isfinite(preds.reshape(len(preds), -1))).any(-1).sum()

    def compute(self) -> Tensor:
        return self.count


HEADS: dict[str, type[EncoderHead]] = {
    "binary": BinaryHead,
    "multiclass": MultiClassHead,
    "multilabel": MultiLabelHead,
    "regression": RegressionHead,
}


def head_class(task: str) -> type[EncoderHead]:
    """The head class of ``task`` (``data.task``)."""
    if task not in HEADS:
        raise ValueError(f"unknown encoder task {task!r}; valid tasks: {', '.join(HEADS)}")
    return HEADS[task]


def positive_weight(spec: PosWeight, train_targets: np.ndarray | None, num_outputs: int) -> Tensor:
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
