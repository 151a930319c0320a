"""trainer/plots.py writes PNGs that open as images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.plots import confusion_matrix_plot, loss_curve, multilabel_confusion_plot, parity_plot


def _check_png(path, expected):
    assert path == expected
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGB", "RGBA")
        width, height = image.size
        assert width > 0 and height > 0


def test_loss_curve_with_validation(tmp_path):
    steps = list(range(1, 51))
    loss = [2.0 / s**0.5 for s in steps]
    out = loss_curve(steps, loss, [10, 20, 30, 40, 50], [0.9, 0.6, 0.5, 0.45, 0.44], tmp_path / "a" / "b" / "loss.png")
    _check_png(out, tmp_path / "a" / "b" / "loss.png")


def test_loss_curve_train_only(tmp_path):
    out = loss_curve([1, 2, 3], [1.0, 0.8, 0.7], [], [], str(tmp_path / "loss.png"))
    _check_png(out, tmp_path / "loss.png")


def test_loss_curve_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="train_steps"):
        loss_curve([1, 2], [1.0], [], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="val_steps"):
        loss_curve([1], [1.0], [1, 2], [0.5], tmp_path / "x.png")


def test_confusion_matrix_plot(tmp_path):
    matrix = [[50, 3, 1], [4, 40, 6], [0, 2, 44]]
    out = confusion_matrix_plot(matrix, ["normal", "porosity", "crack"], tmp_path / "plots" / "cm.png")
    _check_png(out, tmp_path / "plots" / "cm.png")
    out = confusion_matrix_plot(np.array(matrix), ["a", "b", "c"], tmp_path / "cm2.png", title="Test")
    _check_png(out, tmp_path / "cm2.png")
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix_plot(matrix, ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_plot([[1, 2, 3]], ["a"], tmp_path / "bad.png")


def test_multilabel_confusion_plot(tmp_path):
    rng = np.random.default_rng(0)
    matrices = rng.integers(0, 100, size=(5, 2, 2))
    out = multilabel_confusion_plot(matrices, [f"defect_{i}" for i in range(5)], tmp_path / "mlcm.png")
    _check_png(out, tmp_path / "mlcm.png")
    with pytest.raises(ValueError, match=r"\(L, 2, 2\)"):
        multilabel_confusion_plot(np.zeros((3, 3, 3)), ["a", "b", "c"], tmp_path / "bad.png")


def test_parity_plot_two_targets(tmp_path):
    rng = np.random.default_rng(1)
    y_true = np.column_stack([rng.normal(450, 40, 80), rng.normal(2000, 300, 80)])
    y_pred = y_true + rng.normal(0, 20, size=y_true.shape)
    out = parity_plot(y_true, y_pred, ["heat_input", "energy"], tmp_path / "parity.png")
    _check_png(out, tmp_path / "parity.png")
    with pytest.raises(ValueError, match="target_names"):
        parity_plot(y_true, y_pred, ["only_one"], tmp_path / "bad.png")


def test_parity_plot_single_target_flat(tmp_path):
    y = np.linspace(0, 1, 20)
    out = parity_plot(y, y + 0.01, ["energy"], tmp_path / "parity1.png")
    _check_png(out, tmp_path / "parity1.png")


def test_parity_r2_is_sklearns_and_nan_when_undefined():
    import math

    from sklearn.metrics import r2_score

    from modules.plots import _r2

    rng = np.random.default_rng(2)
    y_true = rng.normal(450, 40, 50)
    y_pred = y_true + rng.normal(0, 20, 50)
    ss_res, ss_tot = np.sum((y_true - y_pred) ** 2), np.sum((y_true - y_true.mean()) ** 2)
    assert _r2(y_true, y_pred) == pytest.approx(1 - ss_res / ss_tot, abs=1e-12)
    assert _r2(y_true, y_pred) == pytest.approx(r2_score(y_true, y_pred), abs=1e-12)
    # Shown as "n/a": a constant target (predicted exactly or not), one value, a non-finite value.
    for t, p in [(np.ones(5), np.ones(5)), (np.ones(5), np.arange(5.0)), (np.array([1.0]), np.array([2.0])),
                 (np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0]))]:
        assert math.isnan(_r2(t, p))


# ------------------------------------------------------------------------------------- non-Latin labels
KOREAN = ["날씨", "음악 재생", "알람 설정"]  # intent labels as the intent team writes them


def _missing_glyphs(draw) -> list[str]:
    """The "Glyph ... missing from font(s)" warnings matplotlib raises while ``draw()`` renders text."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_korean_labels_are_drawn_with_a_hangul_font(tmp_path):
    matrix = np.array([[3, 1, 0], [0, 4, 1], [1, 0, 5]])
    assert _missing_glyphs(lambda: confusion_matrix_plot(matrix, KOREAN, tmp_path / "cm.png")) == []
    assert _missing_glyphs(lambda: multilabel_confusion_plot(np.ones((3, 2, 2), int), KOREAN, tmp_path / "ml.png")) == []
    _check_png(tmp_path / "cm.png", tmp_path / "cm.png")

    # The same text with matplotlib's default font alone draws empty boxes: the check above can fail.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def default_font():
        with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
            fig = Figure()
            FigureCanvasAgg(fig)
            fig.add_subplot(1, 1, 1).set_title(KOREAN[0])
            fig.savefig(tmp_path / "boxes.png")

    assert any("DejaVu Sans" in w for w in _missing_glyphs(default_font))


def test_the_hangul_font_covers_the_labels_and_latin_text_keeps_dejavu():
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    from modules.plots import font_families, korean_font_path

    path = korean_font_path()
    assert path is not None and path.name == "NanumGothic.ttf"  # koreanize-matplotlib is a dependency
    assert font_families() == ["DejaVu Sans", "NanumGothic"]
    hangul = {ord(c) for label in KOREAN for c in label if not c.isspace()}
    assert hangul <= set(TTFont(path)["cmap"].getBestCmap())
    dejavu = font_manager.findfont(font_manager.FontProperties(family=["DejaVu Sans"]))
    assert not hangul <= set(TTFont(dejavu)["cmap"].getBestCmap())
    # The first family decides Latin text: still DejaVu Sans, as before the fallback.
    assert font_manager.findfont(font_manager.FontProperties(family=font_families())) == dejavu
    named = font_manager.findfont(font_manager.FontProperties(family="NanumGothic"), fallback_to_default=False)
    assert named == str(path)
