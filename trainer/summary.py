"""What a run prints when it ends, and once at the start: the final metrics as one table per stage (the fit's
table puts the best checkpoint's validation metrics beside the post-fit test's), and one line of model size
instead of Lightning's model table.

:class:`~trainer.callbacks.RunArtifacts` collects the values; this file lays them out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from lightning.pytorch.callbacks import ModelSummary

log = logging.getLogger(__name__)


def best_validation(history: list[dict], ckpt) -> dict | None:
    """The validation pass whose weights the best checkpoint holds (``weights: best``): the first pass whose monitored
    value equals the checkpoint's best score (a new best must be strictly better); without a monitor the last pass
    (``weights: last``: the final weights are the tested ones). ``None`` when no pass matches."""
    if not history:
        return None
    if ckpt is None or not ckpt.monitor or ckpt.best_model_score is None:
        return {**history[-1], "weights": "last"}
    score = float(ckpt.best_model_score)
    for entry in history:
        value = entry["metrics"].get(ckpt.monitor)
        if value is not None and math.isclose(value, score, rel_tol=1e-6, abs_tol=1e-9):
            return {**entry, "weights": "best"}
    return None


def _cell(value: float | int | None) -> str:
    """A metric as the table shows it; ``nan`` for an undefined one (``None`` in metrics.json)."""
    return "nan" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"


def print_summary(stage: str, values: dict[str, float | None], out: Path,
                  extra: list[tuple[str, str]] | None = None, headers: dict[str, str] | None = None,
                  note: list[str] | None = None) -> None:
    """The final metrics as one table: a row per metric, a column per stage (``val/f1`` and ``test/f1`` share the
    row ``f1``; ``headers`` names a stage's column, e.g. ``val: best (step 40)``), a baseline
    (``val/baseline_x``) in a column beside its stage; under it ``extra`` (name, formatted value: the fit's throughput
    averages) on one line, the ``note`` lines and the run directory."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    columns: dict[str, dict[str, float | None]] = {}  # stage (or "<stage>/baseline") -> metric -> value
    for key, value in values.items():
        prefix, _, name = key.partition("/")
        if not name or prefix == "perf":
            continue
        if name.startswith("baseline_"):
            prefix, name = f"{prefix}/baseline", name[len("baseline_"):]
        columns.setdefault(prefix, {})[name] = value
    order = {"val": 0, "val/baseline": 1, "test": 2}
    stages = sorted(columns, key=lambda c: (order.get(c, 3), c))
    names = sorted({name for metrics in columns.values() for name in metrics})
    headers = headers or {}
    title = f"tuneloop {stage}: final metrics"
    table = Table(title=title, min_width=len(title) + 4, box=box.MINIMAL_HEAVY_HEAD, show_edge=False)
    table.add_column("metric")
    for c in stages:
        title = f"label-frequency baseline ({c.split('/')[0]})" if c.endswith("/baseline") else headers.get(c, c)
        table.add_column(title, justify="right")
    for name in names:
        table.add_row(name, *(_cell(columns[c][name]) if name in columns[c] else "" for c in stages))
    console = Console()
    if not console.is_terminal:  # a log file: the table at its natural width, not wrapped at 80 columns
        console.width = max(console.width, 160)
    if names:
        console.print(table)
    else:  # nothing per stage (a fit without validation or test): the heading, then the lines below
        console.print(title, markup=False, highlight=False)
    lines = [", ".join(f"{key} {text}" for key, text in extra)] if extra else []
    for line in [*lines, *(note or []), f"run directory: {out}"]:  # unwrapped: a path stays one line to copy
        console.print(line, markup=False, highlight=False, soft_wrap=True)


class CompactModelSummary(ModelSummary):
    """One line instead of Lightning's model table (its FLOPs are 0 without an example input): the parameters,
    how many train, their size, and where the fit runs. ``-v`` keeps Lightning's table instead."""

    def on_fit_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.utilities.model_summary import get_human_readable_count as count

        summary = self._summary(trainer, pl_module)
        if trainer.is_global_zero:
            device = trainer.strategy.root_device.type
            log.info(f"model: {count(summary.total_parameters)} parameters, {count(summary.trainable_parameters)} "
                     f"trainable ({summary.model_size:.1f} MB); {trainer.world_size} x {device}, precision "
                     f"{trainer.precision}, {trainer.estimated_stepping_batches} optimizer steps, accumulation "
                     f"{trainer.accumulate_grad_batches}")


def print_fit_summary(final: dict) -> None:
    """The fit's table from what :class:`~trainer.callbacks.RunArtifacts` kept: ``fit`` (the metrics at the end of
    fit), ``best`` (:func:`best_validation`), ``test`` (the post-fit test: metrics, which weights) or None,
    ``perf`` rows and the run directory ``out``. Validation metrics are the best checkpoint's (the last logged
    ones when no pass matches it); the training metrics of the last step go under the table."""
    values, best, test = final["fit"], final["best"], final["test"]
    headers, note = {}, []
    if best is not None:
        values = {k: v for k, v in values.items() if not k.startswith("val/")} | best["metrics"]
        headers["val"] = f"val: {best['weights']} (step {best['step']})"
    last = [f"{k} {v:.4g}" for k, v in values.items() if k.startswith("train/") and v is not None]
    if last:
        note.append("at the last step: " + ", ".join(last))
    values = {k: v for k, v in values.items() if not k.startswith("train/")}
    if test is not None:
        values |= test["metrics"]
        headers["test"] = f"test: {test['weights']}"
    print_summary("fit", values, final["out"], extra=final["perf"], headers=headers, note=note)
