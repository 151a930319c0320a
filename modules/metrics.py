"""Task metrics on torchmetrics: one ``MetricCollection`` per task, synced across processes.

``build_metrics(task, num_labels)`` returns a collection without prefix; a module clones it per stage
(``collection.clone(prefix="val/")``, ``clone(prefix="test/")``) so that the logged keys are
``val/<metric>`` / ``test/<metric>`` with the snake_case names of DESIGN.md ("Metric names").

Every metric keeps its state as sums/counts with ``dist_reduce_fx="sum"`` (torchmetrics' own classes, and
:class:`PartialScore` here), so ``compute()`` gives the value over the union of all processes' samples, not
a mean of per-rank values. ``compute()`` is a collective under DDP/FSDP: every rank must call it.

Definitions match scikit-learn (the tests compare against it):

========================  =================================================================================
binary                    ``accuracy``, ``precision``, ``recall``, ``f1`` (of the positive class = 1;
                          prediction is ``prob > threshold``); ``f1_macro`` (= ``f1_score(average=
                          "macro")``: the mean of both classes' F1); ``exact_match`` and ``label_accuracy``,
                          the WAAM team's columns, which for one label per record both equal ``accuracy``
multiclass                ``accuracy`` (= ``accuracy_score`` = micro), ``f1_macro``, ``f1_micro``
multilabel                ``f1_macro``, ``f1_micro``, ``partial_score`` (= ``jaccard_score(average=
                          "samples", zero_division=1)``), ``exact_match`` (= subset ``accuracy_score``: every
                          label of the record right), ``label_accuracy`` (mean over labels of per-label
                          accuracy) and, given the label names, ``label_accuracy_<label>`` per label
regression                ``mse``, ``rmse``, ``mae``, ``r2`` (``multioutput="uniform_average"``: the mean
                          over targets of the per-target value) and, with more than one target,
                          ``mse_<name>``, ``rmse_<name>``, ``mae_<name>``, ``r2_<name>`` per target, in
                          original units; given the targets' standard deviations, ``mse_std``, ``rmse_std``,
                          ``mae_std`` (and per target ``mse_std_<name>``...) in standardized units, the units
                          of the training and validation loss (:mod:`modules.regression_metrics`)
========================  =================================================================================

Thresholding follows torchmetrics: a floating prediction counts as positive when ``prob > threshold``
(strictly greater), and a floating batch with any value outside [0, 1] is taken as logits and passed
through a sigmoid first (per batch). Pass probabilities to avoid depending on that heuristic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from torchmetrics.utilities.compute import normalize_logits_if_needed
from torchmetrics.wrappers import ClasswiseWrapper
from torchmetrics.wrappers.abstract import WrapperMetric

from modules.regression_metrics import RegressionMetricCollection, TargetScale, regression_metrics

__all__ = ["TASKS", "PartialScore", "RegressionMetricCollection", "TargetScale", "build_metrics", "compute_and_reset"]


class PartialScore(Metric):
    """Per-sample overlap of predicted and true label sets, averaged over samples.

    For each sample ``|pred ∩ true| / |pred ∪ true|``, and 1.0 when both sets are empty; the metric is the
    mean over all samples seen (= ``sklearn.metrics.jaccard_score(average="samples", zero_division=1)``).
    A sample whose predicted set is empty while its true set is not scores 0.

    States are a float64 sum of per-sample scores and a sample count, both reduced with ``sum`` across
    processes, so the value under DDP equals the single-process value on the union of the shards.

    Args:
        num_labels: Number of labels ``L``.
        threshold: A floating prediction is positive when ``prob > threshold``.

    ``update(preds, target)``: ``preds`` (N, L) probabilities (float; logits are sigmoided as in
    torchmetrics when any value lies outside [0, 1]) or {0, 1} integer/bool predictions; ``target`` (N, L)
    integer/bool in {0, 1}.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    count: Tensor

    def __init__(self, num_labels: int, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise ValueError(f"PartialScore: num_labels must be an integer >= 1, got {num_labels!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"PartialScore: threshold must lie in the open interval (0, 1), got {threshold!r}")
        self.num_labels = num_labels
        self.threshold = float(threshold)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(
                f"PartialScore: preds and target must have the same shape, got {tuple(preds.shape)} "
                f"and {tuple(target.shape)}"
            )
        if preds.ndim != 2 or preds.shape[1] != self.num_labels:
            raise ValueError(
                f"PartialScore: expected preds/target of shape (N, {self.num_labels}), got {tuple(preds.shape)}"
            )
        if target.is_floating_point():
            raise ValueError(f"PartialScore: target must be an integer or bool tensor in {{0, 1}}, got {target.dtype}")
        if target.numel() and ((target != 0) & (target != 1)).any():
            raise ValueError("PartialScore: target values must be 0 or 1")
        if preds.is_floating_point():
            preds = normalize_logits_if_needed(preds, "sigmoid") > self.threshold
        elif preds.numel() and ((preds != 0) & (preds != 1)).any():
            raise ValueError("PartialScore: integer preds must be 0 or 1 (or pass float probabilities)")
        pred_set = preds.bool()
        true_set = target.bool()
        intersection = (pred_set & true_set).sum(dim=1)
        union = (pred_set | true_set).sum(dim=1)
        per_sample = torch.where(
            union == 0,
            torch.ones_like(union, dtype=torch.float64),
            intersection.double() / union.clamp_min(1).double(),
        )
        self.score_sum += per_sample.sum()
        self.count += per_sample.numel()

    def compute(self) -> Tensor:
        return self.score_sum / self.count


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")


class _TwoClasses(WrapperMetric):
    """A two-class (multiclass) metric of binary probabilities (N,): class 1 when ``prob > threshold``, as the
    binary metrics decide (logits are sigmoided first, as there)."""

    def __init__(self, metric: Metric, threshold: float) -> None:
        super().__init__()
        self.metric, self.threshold = metric, threshold

    def _classes(self, preds: Tensor) -> Tensor:
        return (normalize_logits_if_needed(preds, "sigmoid") > self.threshold).long() if preds.is_floating_point() \
            else preds.long()

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.metric.update(self._classes(preds), target)

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        return self.metric(self._classes(preds), target)

    def compute(self) -> Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()


def _binary_metrics(num_labels: int, threshold: float, target_names: list[str] | None) -> MetricCollection:
    if num_labels not in (1, 2):
        raise ValueError(
            f"binary task takes num_labels 1 or 2 (one positive-class probability per sample), got "
            f"{num_labels}; use task='multiclass' or 'multilabel' for more classes"
        )
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
            # The WAAM team's table (MISSION §4), for binary tasks too: F1 of each class, averaged ...
            "f1_macro": _TwoClasses(MulticlassF1Score(num_classes=2, average="macro"), threshold),
            # ... and, a record having one label, "all labels right" and "each label right" are accuracy.
            "exact_match": BinaryAccuracy(threshold=threshold),
            "label_accuracy": BinaryAccuracy(threshold=threshold),
        }
    )


def _multiclass_metrics(num_labels: int, threshold: float, target_names: list[str] | None) -> MetricCollection:
    if num_labels < 2:
        raise ValueError(f"multiclass task needs num_labels >= 2 classes, got {num_labels}; use task='binary'")
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro"),
            "f1_micro": MulticlassF1Score(num_classes=num_labels, average="micro"),
        }
    )


def _multilabel_metrics(num_labels: int, threshold: float, target_names: list[str] | None) -> MetricCollection:
    if num_labels < 2:
        raise ValueError(
            f"multilabel task needs num_labels >= 2 labels, got {num_labels}; use task='binary' for one label"
        )
    metrics: dict[str, Metric] = {
        "f1_macro": MultilabelF1Score(num_labels=num_labels, threshold=threshold, average="macro"),
        "f1_micro": MultilabelF1Score(num_labels=num_labels, threshold=threshold, average="micro"),
        "partial_score": PartialScore(num_labels=num_labels, threshold=threshold),
        "exact_match": MultilabelExactMatch(num_labels=num_labels, threshold=threshold),
        "label_accuracy": MultilabelAccuracy(num_labels=num_labels, threshold=threshold, average="macro"),
    }
    if target_names is not None:  # label_accuracy_<label>: the share of records where that label is right
        metrics["label_accuracy_per_label"] = ClasswiseWrapper(
            MultilabelAccuracy(num_labels=num_labels, threshold=threshold, average=None), labels=target_names,
            prefix="label_accuracy_")
    return MetricCollection(metrics)


def _regression_metrics(num_labels: int, threshold: float, target_names: list[str] | None) -> MetricCollection:
    return regression_metrics(num_labels, target_names)  # build_metrics adds the standardized keys' scale


# The metrics of each task: builder(num_labels, threshold, target_names), arguments already checked.
_BUILDERS: dict[str, Callable[[int, float, list[str] | None], MetricCollection]] = {
    "binary": _binary_metrics,
    "multiclass": _multiclass_metrics,
    "multilabel": _multilabel_metrics,
    "regression": _regression_metrics,
}
TASKS = tuple(_BUILDERS)


def build_metrics(
    task: str,
    num_labels: int,
    *,
    threshold: float = 0.5,
    target_names: list[str] | None = None,
    target_scale: TargetScale | None = None,
) -> MetricCollection:
    """The metrics of ``task`` as a ``MetricCollection`` (no prefix; clone with ``prefix="val/"`` etc.).

    Args:
        task: One of :data:`TASKS`.
        num_labels: ``binary``: 1 or 2 (both mean one positive class; 2 lets a caller pass its count of
            class names, e.g. ``["normal", "abnormal"]``; predictions are always the positive-class
            probability). ``multiclass``: number of classes C >= 2. ``multilabel``: number of labels
            L >= 2. ``regression``: number of targets T >= 1.
        threshold: Decision threshold in the open interval (0, 1) for ``binary`` and ``multilabel``
            (positive when ``prob > threshold``). Ignored by ``multiclass`` (argmax) and ``regression``.
        target_names: Names of the classes/labels/targets; when given its length must be ``num_labels``.
            Required for ``regression`` with T > 1: the per-target keys are ``mse_<name>`` etc.;
            ``multilabel``: the per-label keys ``label_accuracy_<label>``.
        target_scale: ``regression``: where the targets' standard deviations (T,) are read when computing,
            for the keys in standardized units (``mse_std``...; see :mod:`modules.regression_metrics`).

    Inputs of ``update(preds, target)`` (and ``forward``):

    - ``binary``: ``preds`` (N,) float probability of the positive class in [0, 1]; ``target`` (N,)
      int in {0, 1}. Keys: ``accuracy``, ``precision``, ``recall``, ``f1``, ``f1_macro``, ``exact_match``,
      ``label_accuracy``.
    - ``multiclass``: ``preds`` (N, C) logits or probabilities (argmax is taken; (N,) integer class ids
      also work); ``target`` (N,) int in [0, C). Keys: ``accuracy``, ``f1_macro``, ``f1_micro``.
    - ``multilabel``: ``preds`` (N, L) float probabilities; ``target`` (N, L) int in {0, 1}. Keys:
      ``f1_macro``, ``f1_micro``, ``partial_score``, ``exact_match``, ``label_accuracy`` (and
      ``label_accuracy_<label>`` given ``target_names``).
    - ``regression``: ``preds`` (N, T) float in original units; ``target`` (N, T) float; (N,) also
      accepted when T == 1. Keys: ``mse``, ``rmse``, ``mae``, ``r2`` (uniform average over targets: e.g.
      ``rmse`` is the mean of the per-target RMSEs, not the RMSE of all values, as in scikit-learn), plus
      ``mse_<name>``, ``rmse_<name>``, ``mae_<name>``, ``r2_<name>`` when T > 1; with ``target_scale`` also
      ``mse_std``, ``rmse_std``, ``mae_std`` (and ``mse_std_<name>``... when T > 1). Accumulated in float64
      (see :class:`RegressionMetricCollection`).

    Raises:
        ValueError: unknown task (the message lists the valid ones), bad ``num_labels`` for the task,
            ``threshold`` outside (0, 1), ``target_names`` missing (regression, T > 1), of the wrong length,
            with duplicates or empty names, ``target_scale`` for another task than regression.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    _check_int("num_labels", num_labels)
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in the open interval (0, 1), got {threshold!r}") from None
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in the open interval (0, 1), got {threshold}")
    if target_names is not None:
        target_names = list(target_names)
        if len(target_names) != num_labels:
            raise ValueError(
                f"target_names has {len(target_names)} names but num_labels is {num_labels}: {target_names}"
            )
        if not all(isinstance(n, str) and n for n in target_names):
            raise ValueError(f"target_names must be non-empty strings, got {target_names}")
        if len(set(target_names)) != len(target_names):
            raise ValueError(f"target_names must be unique, got {target_names}")

    if target_scale is not None:
        if task != "regression":
            raise ValueError(f"target_scale (standardized-unit metrics) is for regression, not {task!r}")
        return regression_metrics(num_labels, target_names, target_scale)
    return _BUILDERS[task](num_labels, threshold, target_names)


def compute_and_reset(collection: MetricCollection) -> dict[str, float]:
    """``collection.compute()`` as ``{key: python float}``, then ``collection.reset()``.

    A collective under DDP (every rank must call it). The collection is reset even when compute fails
    (e.g. R^2 with fewer than two samples), so a caught error does not leak state into the next epoch.
    """
    try:
        values = collection.compute()
        out: dict[str, float] = {}
        for key, value in values.items():
            tensor = torch.as_tensor(value)
            if tensor.numel() != 1:
                raise ValueError(f"metric {key!r} is not a scalar (shape {tuple(tensor.shape)})")
            out[key] = float(tensor.item())
        return out
    finally:
        collection.reset()


class LabelPredictionStats(Metric):
    """Classification by generated text: ``num_labels`` real labels plus one ``unknown`` column.

    ``update(preds, target)`` with class indices (N,); a pred equal to ``num_labels`` is an output that
    matched no label. ``compute()`` gives accuracy (unknown counts as wrong), precision/recall/F1 macro and
    micro over the real labels (= scikit-learn with ``labels=range(num_labels)``, zero_division=0), and the
    unknown rate. States are sums, synced across processes.
    """

    full_state_update = False

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.add_state("confusion", default=torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        idx = target.long() * (self.num_labels + 1) + preds.long()
        self.confusion += torch.bincount(idx, minlength=(self.num_labels + 1) ** 2).reshape(self.confusion.shape)

    def compute(self) -> dict[str, Tensor]:
        cm = self.confusion.double()
        c = self.num_labels
        tp = cm.diagonal()[:c]
        predicted = cm[:, :c].sum(0)  # column sums: predicted as label j
        actual = cm[:c, :].sum(1)  # row sums: truly label i
        div = lambda a, b: torch.where(b > 0, a / b.clamp(min=1e-12), torch.zeros_like(a))  # noqa: E731
        precision, recall = div(tp, predicted), div(tp, actual)
        f1 = div(2 * precision * recall, precision + recall)
        present = (actual + predicted) > 0  # sklearn averages over labels seen in either
        p_micro, r_micro = div(tp.sum(), predicted.sum()), div(tp.sum(), actual.sum())
        total = cm.sum()
        return {
            "accuracy": div(tp.sum(), total),
            "precision_macro": precision[present].mean(),
            "recall_macro": recall[present].mean(),
            "f1_macro": f1[present].mean(),
            "precision_micro": p_micro,
            "recall_micro": r_micro,
            "f1_micro": div(2 * p_micro * r_micro, p_micro + r_micro),
            "unknown_rate": div(cm[:, c].sum(), total),
        }


def per_label_table(confusion, names: list[str]) -> list[dict]:
    """Per-label precision, recall, F1 and support from a confusion matrix (rows true, columns predicted;
    extra trailing columns such as ``unknown`` count as wrong predictions)."""
    import numpy as np

    cm = np.asarray(confusion, dtype=np.float64)
    rows = []
    for i, name in enumerate(names):
        tp, pred, act = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        p = tp / pred if pred else 0.0
        r = tp / act if act else 0.0
        rows.append({"label": name, "precision": float(p), "recall": float(r),
                     "f1": float(2 * p * r / (p + r)) if p + r else 0.0, "support": int(act)})
    return rows
