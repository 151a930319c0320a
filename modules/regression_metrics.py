"""Regression metrics (``build_metrics("regression", ...)`` in :mod:`modules.metrics`): errors in original units and,
beside them, in standardized units.

A regression head trains on standardized targets, ``z = (y - mean) / std`` with the training split's mean and
standard deviation per target, so its ``val/loss`` is an MSE in standardized units while ``val/mse`` is in the
targets' own units (J/mm squared for heat input). Both are reported, named apart:

=====================================  ==================================================================
original units                         ``mse``, ``rmse``, ``mae``, ``r2``; per target (T > 1) ``mse_<name>``,
                                       ``rmse_<name>``, ``mae_<name>``, ``r2_<name>``
standardized units (given the std)     ``mse_std``, ``rmse_std``, ``mae_std``; per target (T > 1)
                                       ``mse_std_<name>``, ``rmse_std_<name>``, ``mae_std_<name>``
=====================================  ==================================================================

Every key is the uniform average over targets of its per-target value (``rmse`` is the mean of the per-target
RMSEs, as scikit-learn's ``multioutput="uniform_average"``). ``mse_std`` is therefore the mean squared error over
all values in standardized units: what ``val/loss`` shows (the loss averages per batch in float32; the metric
accumulates in float64). An error ``e`` in original units is ``e / std`` standardized (the mean cancels), so the
standardized values are the original per-target ones divided by ``std`` (``rmse``, ``mae``) or ``std**2``
(``mse``) when computed. R^2 is the same in both units and has no ``_std`` key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score
from torchmetrics.wrappers import ClasswiseWrapper
from torchmetrics.wrappers.abstract import WrapperMetric

__all__ = ["RegressionMetricCollection", "TargetScale", "regression_metrics"]


class TargetScale:
    """The per-target standard deviations (T,) that standardize regression targets, read as ``getattr(owner, name)``
    each time the metrics are computed: a head's ``target_std`` buffer, which a checkpoint restores after the metrics
    were built (and which moves with the head between devices). Cloning a collection (``clone(prefix="val/")``)
    shares it instead of copying the owner."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name

    def __call__(self) -> Tensor:
        return torch.as_tensor(getattr(self.owner, self.name))

    def __deepcopy__(self, memo: dict) -> TargetScale:
        return self


class _Wrapped(WrapperMetric):
    """A wrapper whose value is computed from one wrapped metric's (states, update and reset are the wrapped one's)."""

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        if not isinstance(metric, Metric):
            raise ValueError(f"{type(self).__name__} wraps a torchmetrics.Metric, got {metric!r}")
        self.metric = metric

    @property
    def higher_is_better(self) -> bool | None:  # type: ignore[override]
        return self.metric.higher_is_better

    def _filter_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return self.metric._filter_kwargs(**kwargs)

    def _value(self, value: Tensor) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> Tensor | dict[str, Tensor]:
        return self._value(self.metric(*args, **kwargs))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.metric.update(*args, **kwargs)

    def compute(self) -> Tensor | dict[str, Tensor]:
        return self._value(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()

    def set_dtype(self, dst_type: str | torch.dtype) -> _Wrapped:
        # The wrapper has no states of its own; ``Metric.set_dtype`` would not reach the wrapped metric's.
        self.metric.set_dtype(dst_type)
        return self


class _OutputMean(_Wrapped):
    """Mean over the outputs of a metric that returns one value per output (uniform average over targets)."""

    def _value(self, value: Tensor) -> Tensor:
        return value.mean()


class _Standardized(_Wrapped):
    """A per-target error metric (original units, T values) in standardized units: divided by ``std ** power``
    (``power`` 2 for squared errors, 1 otherwise). Its value is the mean over targets, or with ``labels`` one
    value per target, keyed ``<prefix><label>`` (as ``ClasswiseWrapper`` does; nesting that wrapper around this
    one would keep the inner states out of ``set_dtype``)."""

    def __init__(self, metric: Metric, scale: TargetScale, power: int, labels: list[str] | None = None,
                 prefix: str = "") -> None:
        super().__init__(metric)
        self.scale, self.power, self.labels, self.prefix = scale, power, labels, prefix

    def _value(self, value: Tensor) -> Tensor | dict[str, Tensor]:
        std = self.scale().to(device=value.device, dtype=value.dtype).reshape(-1)
        standardized = value.reshape(-1) / std**self.power
        if self.labels is None:
            return standardized.mean()
        return {f"{self.prefix}{label}": v for label, v in zip(self.labels, standardized)}


class RegressionMetricCollection(MetricCollection):
    """MetricCollection for regression that checks shapes and accumulates in float64.

    Regression targets are compared in original units (e.g. heat input of hundreds of J/mm); R^2 is
    computed from sums of squares, which lose several digits in float32 when the mean is large relative to
    the spread. Inputs are therefore cast to float64 (states are float64 too) before reaching the metrics.
    Apple MPS has no float64: there inputs are cast to float32, and the states must be moved with
    ``collection.set_dtype(torch.float32)`` before ``.to("mps")``.

    ``update(preds, target)``/``forward(preds, target)``: (N, T) float; (N,) also accepted when T == 1.
    """

    def __init__(self, metrics: dict[str, Metric], num_targets: int, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self.num_targets = num_targets
        self.set_dtype(torch.float64)

    def _prepare(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        preds = torch.as_tensor(preds)
        target = torch.as_tensor(target)
        t = self.num_targets
        if preds.shape != target.shape:
            raise ValueError(
                f"regression metrics: preds and target must have the same shape, got {tuple(preds.shape)} "
                f"and {tuple(target.shape)}"
            )
        if t == 1:
            if preds.ndim == 2 and preds.shape[1] == 1:
                preds, target = preds.reshape(-1), target.reshape(-1)
            elif preds.ndim != 1:
                raise ValueError(
                    f"regression metrics: expected shape (N,) or (N, 1) for 1 target, got {tuple(preds.shape)}"
                )
        elif preds.ndim != 2 or preds.shape[1] != t:
            raise ValueError(f"regression metrics: expected shape (N, {t}) for {t} targets, got {tuple(preds.shape)}")
        dtype = torch.float32 if preds.device.type == "mps" else torch.float64
        return preds.to(dtype), target.to(dtype)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(*self._prepare(preds, target))

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Any]:  # type: ignore[override]
        return super().forward(*self._prepare(preds, target))


def regression_metrics(num_targets: int, target_names: list[str] | None,
                       target_scale: TargetScale | None = None) -> RegressionMetricCollection:
    """The metrics of a regression with ``num_targets`` targets (see the module docstring); ``target_names`` is
    needed when there are several (the per-target keys), ``target_scale`` for the standardized-unit keys."""
    t = num_targets
    if t > 1 and target_names is None:
        raise ValueError(f"regression with {t} targets needs target_names (one name per target)")

    def errors(squared: bool | None, per_target: bool) -> Metric:
        outputs = {"num_outputs": t} if t > 1 or per_target else {}
        return MeanAbsoluteError(**outputs) if squared is None else MeanSquaredError(squared=squared, **outputs)

    metrics: dict[str, Metric] = {
        # With equal sample counts per target the mean over all values is the uniform average.
        "mse": MeanSquaredError(),
        "rmse": _OutputMean(errors(False, True)) if t > 1 else MeanSquaredError(squared=False),
        "mae": MeanAbsoluteError(),
        "r2": R2Score(multioutput="uniform_average") if t > 1 else R2Score(),
    }
    kinds = {"mse": (True, 2), "rmse": (False, 1), "mae": (None, 1)}  # name: (squared, power of std)
    if t > 1:
        metrics.update({f"{name}_per_target": ClasswiseWrapper(errors(squared, True), labels=target_names,
                                                               prefix=f"{name}_")
                        for name, (squared, _) in kinds.items()})
        metrics["r2_per_target"] = ClasswiseWrapper(R2Score(multioutput="raw_values"), labels=target_names,
                                                    prefix="r2_")
    if target_scale is not None:
        for name, (squared, power) in kinds.items():
            metrics[f"{name}_std"] = _Standardized(errors(squared, True), target_scale, power)
            if t > 1:
                metrics[f"{name}_std_per_target"] = _Standardized(errors(squared, True), target_scale, power,
                                                                  labels=target_names, prefix=f"{name}_std_")
    return RegressionMetricCollection(metrics, num_targets=t)
