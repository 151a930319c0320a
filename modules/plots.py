"""Run plots as PNG files: loss curves, confusion matrices, regression parity plots.

Every function writes one PNG (creating parent directories), and returns its path. matplotlib is
imported inside the functions and used through ``matplotlib.figure.Figure`` with the Agg canvas, never
through ``pyplot``: no global backend is switched, no figure is registered in pyplot's figure manager
(so nothing stays open between calls), and it works headless on cluster nodes.

Label names in Korean (intent labels, the team's class names) are drawn with NanumGothic, the font file of the
``koreanize-matplotlib`` package (SIL Open Font License; found on disk, the package itself is never imported:
importing it would change matplotlib's global settings). Text is set in the family list :data:`FONT_FAMILIES`:
matplotlib draws each glyph with the first font that has it, so Latin text and digits keep DejaVu Sans (the
default) and only Hangul (and whatever else DejaVu lacks) falls back to NanumGothic. The fallback applies inside
each plot function only (an ``rc_context``); nothing global changes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FONT_FAMILIES", "confusion_matrix_plot", "korean_font_path", "loss_curve", "multilabel_confusion_plot",
           "parity_plot"]

DPI = 100
#: Fonts tried glyph by glyph, first to last: matplotlib's default for Latin text, then a Hangul font.
FONT_FAMILIES = ["DejaVu Sans", "NanumGothic"]
_registered: list[str] | None = None  # the families usable here, once the font files are registered


def korean_font_path() -> Path | None:
    """NanumGothic.ttf shipped in the ``koreanize-matplotlib`` package (located, not imported), or ``None``."""
    import importlib.util

    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "NanumGothic.ttf"
    return path if path.is_file() else None


def font_families() -> list[str]:
    """:data:`FONT_FAMILIES` with the Hangul font registered in matplotlib's font manager (once per process);
    DejaVu Sans alone when the font is not installed."""
    global _registered
    if _registered is None:
        from matplotlib import font_manager

        path = korean_font_path()
        if path is not None:
            font_manager.fontManager.addfont(str(path))
        _registered = FONT_FAMILIES if path is not None else FONT_FAMILIES[:1]
    return list(_registered)


def _fonts():
    """The context every plot is drawn in: the fallback family list (see the module docstring)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": font_families()})


def _with_fonts(plot: Callable) -> Callable:
    """A plot function drawn inside :func:`_fonts`."""

    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        with _fonts():
            return plot(*args, **kwargs)

    return drawn


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _panel_grid(n: int, max_cols: int, panel_width: float, panel_height: float) -> tuple[Any, list]:
    """A figure with a grid of ``n`` panels, at most ``max_cols`` to a row; grid cells past ``n`` are hidden.
    Returns the figure and all its axes in row order (at least one, also when ``n`` is 0)."""
    ncols = max(1, min(n, max_cols))
    nrows = max(1, math.ceil(n / ncols))
    fig = _new_figure(panel_width * ncols, panel_height * nrows)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        fig.clear()
    return path


def _annotate_counts(ax: Any, matrix: np.ndarray) -> None:
    """Write each cell's count in it, white on dark cells and black on light ones."""
    vmax = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            text = f"{int(value)}" if float(value).is_integer() else f"{value:.2f}"
            dark = vmax > 0 and value > vmax / 2
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=9)


@_with_fonts
def loss_curve(
    train_steps: Sequence[int],
    train_loss: Sequence[float],
    val_steps: Sequence[int],
    val_loss: Sequence[float],
    path: str | Path,
) -> Path:
    """Training loss per step and validation loss at its steps on one axis; returns ``path``.

    Either series may be empty (a run without validation draws the training curve only).

    Raises:
        ValueError: steps and losses of a series differ in length.
    """
    if len(train_steps) != len(train_loss):
        raise ValueError(f"train_steps ({len(train_steps)}) and train_loss ({len(train_loss)}) differ in length")
    if len(val_steps) != len(val_loss):
        raise ValueError(f"val_steps ({len(val_steps)}) and val_loss ({len(val_loss)}) differ in length")
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if len(train_steps):
        ax.plot(list(train_steps), list(train_loss), label="train/loss", color="tab:blue", linewidth=1.2)
    if len(val_steps):
        ax.plot(list(val_steps), list(val_loss), label="val/loss", color="tab:orange", marker="o", linewidth=1.5)
    if not len(train_steps) and not len(val_steps):
        ax.text(0.5, 0.5, "no loss values", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


@_with_fonts
def confusion_matrix_plot(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """A C x C confusion matrix (rows = true class, columns = predicted class) with counts in the cells.

    Raises:
        ValueError: the matrix is not square or does not match ``labels``.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    if m.shape[0] != len(labels):
        raise ValueError(f"confusion matrix is {m.shape[0]}x{m.shape[0]} but {len(labels)} labels were given")
    c = m.shape[0]
    side = max(4.0, 0.6 * c + 2.5)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(list(labels), rotation=45, ha="right")
    ax.set_yticklabels(list(labels))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    _annotate_counts(ax, m)
    return _save(fig, path)


@_with_fonts
def multilabel_confusion_plot(matrices: np.ndarray, labels: Sequence[str], path: str | Path) -> Path:
    """One 2x2 panel per label, in ``sklearn.metrics.multilabel_confusion_matrix`` layout.

    ``matrices`` has shape (L, 2, 2) with ``[[tn, fp], [fn, tp]]`` per label (rows = true 0/1, columns =
    predicted 0/1).

    Raises:
        ValueError: shape is not (L, 2, 2) or does not match ``labels``.
    """
    m = np.asarray(matrices)
    if m.ndim != 3 or m.shape[1:] != (2, 2):
        raise ValueError(f"multilabel confusion matrices must have shape (L, 2, 2), got {m.shape}")
    if m.shape[0] != len(labels):
        raise ValueError(f"{m.shape[0]} confusion matrices but {len(labels)} labels were given")
    n = m.shape[0]
    fig, axes = _panel_grid(n, 4, 3.0, 3.0)
    for k, ax in enumerate(axes[:n]):
        ax.imshow(m[k], cmap="Blues", interpolation="nearest", vmin=0)
        ax.set_xticks([0, 1])
        ax.set_yticks([0, 1])
        ax.set_xticklabels(["0", "1"])
        ax.set_yticklabels(["0", "1"])
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(str(labels[k]), fontsize=10)
        _annotate_counts(ax, m[k])
    if n == 0:
        axes[0].text(0.5, 0.5, "no labels", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle("Per-label confusion matrices")
    fig.tight_layout()
    return _save(fig, path)


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``sklearn.metrics.r2_score`` of one target; nan when undefined (fewer than 2 values, a non-finite
    value, or a constant target)."""
    from sklearn.metrics import r2_score

    if y_true.size < 2 or not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        return float("nan")  # r2_score warns on one value and rejects nan/inf
    with np.errstate(divide="ignore", invalid="ignore"):  # constant target: nan or -inf, not 1.0 or 0.0
        r2 = float(r2_score(y_true, y_pred, force_finite=False))
    return r2 if math.isfinite(r2) else float("nan")


@_with_fonts
def parity_plot(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    target_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Predicted vs true per target, with the y = x line and R^2 in each panel's title.

    ``y_true`` and ``y_pred`` have shape (N, T) (or (N,) for one target), ``len(target_names) == T``.

    Raises:
        ValueError: shapes differ or do not match ``target_names``.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} must have the same shape")
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.ndim != 2:
        raise ValueError(f"expected arrays of shape (N, T) or (N,), got {yt.shape}")
    t = yt.shape[1]
    if t != len(target_names):
        raise ValueError(f"{t} targets but {len(target_names)} target_names were given")
    fig, axes = _panel_grid(t, 3, 4.2, 4.0)
    for k, ax in enumerate(axes[:t]):
        true_k, pred_k = yt[:, k], yp[:, k]
        ax.scatter(true_k, pred_k, s=12, alpha=0.6, color="tab:blue", edgecolors="none")
        finite = np.concatenate([true_k, pred_k])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.05 * (hi - lo) if hi > lo else (abs(lo) * 0.05 or 1.0)
            lo, hi = lo - pad, hi + pad
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="tab:gray", linewidth=1.0, label="y = x")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        r2 = _r2(true_k, pred_k)
        r2_text = "n/a" if math.isnan(r2) else f"{r2:.3f}"
        ax.set_title(f"{target_names[k]}  (R\u00b2 = {r2_text})", fontsize=10)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_aspect("equal", adjustable="box")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
