"""modules/metrics.py against scikit-learn's definitions, fed in uneven batches."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    root_mean_squared_error,
)
from torchmetrics.regression import R2Score

from modules.metrics import TASKS, PartialScore, build_metrics, compute_and_reset

TOL = 1e-5


def _batches(n: int) -> list[slice]:
    """Three uneven batches covering 0..n."""
    a, b = n // 7, n // 7 + n // 2
    return [slice(0, a), slice(a, b), slice(b, n)]


def _feed(collection, preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    for s in _batches(len(target)):
        collection.update(preds[s], target[s])
    return compute_and_reset(collection)


def _close(got: dict[str, float], expected: dict[str, float], tol: float = TOL) -> None:
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=tol, abs=tol), key


# --------------------------------------------------------------------------------------------- binary


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_matches_sklearn(threshold):
    g = torch.Generator().manual_seed(0)
    n = 503
    target = torch.randint(0, 2, (n,), generator=g)
    # Informative but noisy probabilities.
    probs = (0.35 * target + 0.65 * torch.rand(n, generator=g)).clamp(0, 1)
    y_pred = (probs > threshold).long().numpy()
    y_true = target.numpy()
    assert set(y_pred) == {0, 1} and set(y_true) == {0, 1}

    got = _feed(build_metrics("binary", 1, threshold=threshold), probs, target)
    _close(
        got,
        {
            "accuracy": accuracy_score(y_true, y_pred),
            "precision": precision_score(y_true, y_pred),
            "recall": recall_score(y_true, y_pred),
            "f1": f1_score(y_true, y_pred),
            "f1_macro": f1_score(y_true, y_pred, average="macro"),
            "exact_match": accuracy_score(y_true, y_pred),  # one label per record: all labels right = accuracy
            "label_accuracy": accuracy_score(y_true, y_pred),
        },
    )


def test_binary_accepts_two_labels_and_prefix_clone():
    collection = build_metrics("binary", 2, target_names=["normal", "abnormal"])
    val = collection.clone(prefix="val/")
    val.update(torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1, 0, 0, 0]))
    got = compute_and_reset(val)
    assert set(got) == {"val/accuracy", "val/precision", "val/recall", "val/f1", "val/f1_macro", "val/exact_match",
                        "val/label_accuracy"}
    assert got["val/accuracy"] == got["val/exact_match"] == got["val/label_accuracy"] == pytest.approx(0.75)
    assert got["val/precision"] == pytest.approx(0.5)
    assert got["val/recall"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in got.values())


def test_binary_macro_f1_by_hand():
    """6 records, threshold 0.5: predicted [1, 1, 0, 0, 0, 1] against [1, 0, 0, 0, 1, 1]. Positive class: TP 2, FP 1,
    FN 1, F1 2/3; negative class: TP 2, FP 1, FN 1, F1 2/3; both 2/3, so macro 2/3. Then one record more, a
    negative predicted positive: positive F1 = 2*2/(2*2+2+1) = 4/7, negative F1 = 2*2/(2*2+1+2) = 4/7."""
    collection = build_metrics("binary", 1)
    collection.update(torch.tensor([0.9, 0.6, 0.4, 0.1, 0.5, 0.7]), torch.tensor([1, 0, 0, 0, 1, 1]))
    got = compute_and_reset(collection)
    assert got["f1_macro"] == pytest.approx(2 / 3) and got["f1"] == pytest.approx(2 / 3)
    assert got["exact_match"] == got["label_accuracy"] == got["accuracy"] == pytest.approx(4 / 6)
    collection.update(torch.tensor([0.9, 0.6, 0.4, 0.1, 0.5, 0.7, 0.8]), torch.tensor([1, 0, 0, 0, 1, 1, 0]))
    got = compute_and_reset(collection)
    assert got["f1"] == pytest.approx(4 / 7) and got["f1_macro"] == pytest.approx(4 / 7)
    # Unbalanced: 3 of 4 predicted right, the one positive missed; F1 positive 0, negative 2*3/(2*3+1) = 6/7.
    collection.update(torch.tensor([0.2, 0.1, 0.3, 0.4]), torch.tensor([1, 0, 0, 0]))
    got = compute_and_reset(collection)
    assert got["f1"] == 0.0 and got["f1_macro"] == pytest.approx(3 / 7) and got["accuracy"] == pytest.approx(0.75)
    # Logits (values outside [0, 1]) are sigmoided first, as for the other binary metrics: 0.0 is p = 0.5, negative.
    collection.update(torch.tensor([2.0, -1.0, 0.0, 3.0]), torch.tensor([1, 0, 1, 0]))
    got = compute_and_reset(collection)
    assert got["accuracy"] == pytest.approx(0.5) and got["f1_macro"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- multiclass


@pytest.mark.parametrize("as_probabilities", [False, True])
def test_multiclass_matches_sklearn(as_probabilities):
    g = torch.Generator().manual_seed(1)
    n, c = 611, 5
    target = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    logits[torch.arange(n), target] += 1.0  # better than chance, not perfect
    preds = logits.softmax(-1) if as_probabilities else logits
    y_pred = logits.argmax(-1).numpy()
    y_true = target.numpy()
    assert set(y_pred) == set(y_true) == set(range(c))

    got = _feed(build_metrics("multiclass", c), preds, target)
    _close(
        got,
        {
            "accuracy": accuracy_score(y_true, y_pred),
            "f1_macro": f1_score(y_true, y_pred, average="macro"),
            "f1_micro": f1_score(y_true, y_pred, average="micro"),
        },
    )


# ----------------------------------------------------------------------------------------- multilabel


def _multilabel_expected(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "f1_macro": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_micro": f1_score(y_true, y_pred, average="micro", zero_division=0),
        "partial_score": jaccard_score(y_true, y_pred, average="samples", zero_division=1),
        "exact_match": accuracy_score(y_true, y_pred),
        "label_accuracy": float(np.mean([accuracy_score(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])])),
    }


def _multilabel_data(seed: int, n: int = 457, labels: int = 6):
    g = torch.Generator().manual_seed(seed)
    rates = torch.linspace(0.15, 0.6, labels)
    target = (torch.rand(n, labels, generator=g) < rates).long()
    probs = (0.3 * target + 0.7 * torch.rand(n, labels, generator=g)).clamp(0, 1)
    return probs, target


def test_multilabel_matches_sklearn():
    probs, target = _multilabel_data(2)
    y_true, y_pred = target.numpy(), (probs > 0.5).long().numpy()
    assert y_true.sum(0).min() > 0 and y_pred.sum(0).min() > 0  # every label present in both
    got = _feed(build_metrics("multilabel", 6), probs, target)
    _close(got, _multilabel_expected(y_true, y_pred))
    # With the label names: each label's accuracy too.
    names = [f"d{j}" for j in range(6)]
    got = _feed(build_metrics("multilabel", 6, target_names=names), probs, target)
    per_label = {f"label_accuracy_{n}": accuracy_score(y_true[:, j], y_pred[:, j]) for j, n in enumerate(names)}
    _close(got, {**_multilabel_expected(y_true, y_pred), **per_label})


def test_multilabel_exact_match_and_label_accuracy_by_hand():
    """4 records x 3 labels, threshold 0.5. Right per record: all, 2 of 3, all, 1 of 3: exact match 2/4. Right per
    label: a 4/4, b 3/4, c 2/4: label accuracy their mean, 3/4."""
    preds = torch.tensor([[0.9, 0.1, 0.8], [0.7, 0.6, 0.2], [0.2, 0.3, 0.1], [0.8, 0.4, 0.9]])
    target = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
    test = build_metrics("multilabel", 3, target_names=["a", "b", "c"]).clone(prefix="test/")
    test.update(preds, target)
    got = compute_and_reset(test)
    assert {k: got[k] for k in got if "accuracy" in k or "exact" in k} == pytest.approx({
        "test/exact_match": 0.5, "test/label_accuracy": 0.75, "test/label_accuracy_a": 1.0,
        "test/label_accuracy_b": 0.75, "test/label_accuracy_c": 0.5}, rel=1e-6)


def test_multilabel_empty_sets_match_sklearn():
    probs, target = _multilabel_data(3)
    # Rows 0..19: true and predicted sets both empty (score 1 each).
    target[:20] = 0
    probs[:20] = 0.1
    # Rows 20..39: predicted set empty, true set not (score 0 each).
    target[20:40, 0] = 1
    probs[20:40] = 0.2
    y_true, y_pred = target.numpy(), (probs > 0.5).long().numpy()
    both_empty = (y_true.sum(1) == 0) & (y_pred.sum(1) == 0)
    pred_only_empty = (y_true.sum(1) > 0) & (y_pred.sum(1) == 0)
    assert both_empty.sum() >= 20 and pred_only_empty.sum() >= 20

    got = _feed(build_metrics("multilabel", 6), probs, target)
    _close(got, _multilabel_expected(y_true, y_pred))

    # The same rows on their own: the both-empty rows score 1, the pred-empty rows 0.
    ps = PartialScore(num_labels=6)
    ps.update(probs[:20], target[:20])
    assert ps.compute().item() == pytest.approx(1.0)
    ps = PartialScore(num_labels=6)
    ps.update(probs[20:40], target[20:40])
    assert ps.compute().item() == pytest.approx(0.0)


def test_multilabel_label_absent_everywhere_matches_sklearn():
    """A label never true and never predicted counts as F1 = 0 in the macro mean, as in sklearn."""
    probs, target = _multilabel_data(4)
    target[:, 5] = 0
    probs[:, 5] = 0.0
    y_true, y_pred = target.numpy(), (probs > 0.5).long().numpy()
    got = _feed(build_metrics("multilabel", 6), probs, target)
    _close(got, _multilabel_expected(y_true, y_pred))
    # With the label names: each label's accuracy too.
    names = [f"d{j}" for j in range(6)]
    got = _feed(build_metrics("multilabel", 6, target_names=names), probs, target)
    per_label = {f"label_accuracy_{n}": accuracy_score(y_true[:, j], y_pred[:, j]) for j, n in enumerate(names)}
    _close(got, {**_multilabel_expected(y_true, y_pred), **per_label})


def test_multilabel_threshold_is_applied_everywhere():
    probs, target = _multilabel_data(5)
    y_true, y_pred = target.numpy(), (probs > 0.35).long().numpy()
    got = _feed(build_metrics("multilabel", 6, threshold=0.35), probs, target)
    _close(got, _multilabel_expected(y_true, y_pred))


def test_partial_score_hand_computed():
    target = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    probs = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.3, 0.4], [0.2, 0.1, 0.3], [0.8, 0.7, 0.6]])
    # Sample 1: {0} vs {0,1} -> 1/2.  Sample 2: {} vs {} -> 1.  Sample 3: {} vs {0,2} -> 0.
    # Sample 4: {0,1,2} vs {1} -> 1/3.  Mean = (1/2 + 1 + 0 + 1/3) / 4 = 11/24 = 0.458333...
    metric = PartialScore(num_labels=3)
    metric.update(probs[:3], target[:3])
    metric.update(probs[3:], target[3:])
    assert metric.compute().item() == pytest.approx(11 / 24, abs=1e-12)
    assert 11 / 24 == pytest.approx(0.4583333333)
    # Integer/bool predictions are taken as sets directly.
    metric = PartialScore(num_labels=3)
    metric.update((probs > 0.5).long(), target)
    assert metric.compute().item() == pytest.approx(11 / 24, abs=1e-12)


def test_partial_score_rejects_bad_inputs():
    metric = PartialScore(num_labels=3)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.rand(4, 3), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metric.update(torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="0 or 1"):
        metric.update(torch.rand(4, 3), torch.full((4, 3), 2))
    with pytest.raises(ValueError, match="integer or bool"):
        metric.update(torch.rand(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="threshold"):
        PartialScore(num_labels=3, threshold=1.0)
    with pytest.raises(ValueError, match="num_labels"):
        PartialScore(num_labels=0)


# ----------------------------------------------------------------------------------------- regression


def _regression_expected(y_true: np.ndarray, y_pred: np.ndarray, names: list[str] | None) -> dict[str, float]:
    expected = {
        "mse": mean_squared_error(y_true, y_pred),
        "rmse": root_mean_squared_error(y_true, y_pred),
        "mae": mean_absolute_error(y_true, y_pred),
        "r2": r2_score(y_true, y_pred),
    }
    if names:
        for j, name in enumerate(names):
            expected[f"mse_{name}"] = mean_squared_error(y_true[:, j], y_pred[:, j])
            expected[f"rmse_{name}"] = root_mean_squared_error(y_true[:, j], y_pred[:, j])
            expected[f"mae_{name}"] = mean_absolute_error(y_true[:, j], y_pred[:, j])
            expected[f"r2_{name}"] = r2_score(y_true[:, j], y_pred[:, j])
    return expected


def test_regression_multi_target_matches_sklearn():
    g = torch.Generator().manual_seed(6)
    n = 521
    # Original units with very different scales (heat input J/mm, energy J, a ratio).
    mean = torch.tensor([450.0, 2000.0, 1.0])
    std = torch.tensor([40.0, 300.0, 0.2])
    target = mean + std * torch.randn(n, 3, generator=g)
    preds = target + torch.tensor([0.5, 0.8, 1.2]) * std * torch.randn(n, 3, generator=g)
    names = ["heat_input", "energy", "ratio"]
    y_true, y_pred = target.double().numpy(), preds.double().numpy()  # float32 values, compared in float64

    got = _feed(build_metrics("regression", 3, target_names=names), preds, target)
    expected = _regression_expected(y_true, y_pred, names)
    _close(got, expected, tol=1e-4)
    # Accumulation is float64, so agreement is in fact much closer than the float32 tolerance.
    _close(got, expected, tol=1e-9)
    # rmse is the uniform average of per-target RMSEs (sklearn), not sqrt of the overall mse.
    assert got["rmse"] == pytest.approx(np.mean([got[f"rmse_{n_}"] for n_ in names]))
    assert got["rmse"] != pytest.approx(np.sqrt(got["mse"]), rel=1e-3)


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_regression_single_target_matches_sklearn(shape):
    g = torch.Generator().manual_seed(7)
    n = 389
    target = 1000.0 + 10.0 * torch.randn(n, generator=g)
    preds = target + 3.0 * torch.randn(n, generator=g)
    y_true, y_pred = target.double().numpy(), preds.double().numpy()
    if shape == "column":
        preds, target = preds[:, None], target[:, None]
    got = _feed(build_metrics("regression", 1, target_names=["energy"]), preds, target)
    _close(got, _regression_expected(y_true, y_pred, None), tol=1e-9)


def test_regression_in_standardized_units_by_hand():
    """Targets a (mean 10, std 2) and b (mean 100, std 20); errors a [1, 0, 1], b [10, 20, -30]. Original units:
    mse_a 2/3, mse_b 1400/3. Standardized (error / std): a [0.5, 0, 0.5], b [0.5, 1, -1.5]: mse_std_a 1/6, mse_std_b
    7/6, mse_std 2/3 (the mean of all six squared standardized errors: the head's loss), mae_std_a 1/3, mae_std_b 1,
    rmse_std_a sqrt(1/6), rmse_std_b sqrt(7/6). R^2 is the same in both units."""
    from modules.metrics import TargetScale

    class Head:
        target_std = torch.tensor([2.0, 20.0])

    head = Head()
    target = torch.tensor([[10.0, 100.0], [12.0, 80.0], [8.0, 130.0]])
    preds = target + torch.tensor([[1.0, 10.0], [0.0, 20.0], [1.0, -30.0]])
    val = build_metrics("regression", 2, target_names=["a", "b"], target_scale=TargetScale(head, "target_std"))
    val = val.clone(prefix="val/")  # shares the scale: it is read from the head when computed
    val.update(preds, target)
    got = compute_and_reset(val)
    expected = {"mse_a": 2 / 3, "mse_b": 1400 / 3, "mse_std_a": 1 / 6, "mse_std_b": 7 / 6, "mse_std": 2 / 3,
                "mae_std_a": 1 / 3, "mae_std_b": 1.0, "mae_std": 2 / 3, "rmse_std_a": (1 / 6) ** 0.5,
                "rmse_std_b": (7 / 6) ** 0.5, "rmse_std": ((1 / 6) ** 0.5 + (7 / 6) ** 0.5) / 2}
    for key, value in expected.items():
        assert got[f"val/{key}"] == pytest.approx(value, rel=1e-12), key
    standardized = ((preds - target) / Head.target_std) ** 2
    assert got["val/mse_std"] == pytest.approx(float(standardized.mean()), rel=1e-6)
    assert {k for k in got if "_std" in k} == {f"val/{k}" for k in expected if "_std" in k}  # no r2_std
    head.target_std = torch.tensor([1.0, 10.0])  # e.g. restored from a checkpoint after the metrics were built
    val.update(preds, target)
    got = compute_and_reset(val)
    assert got["val/mse_std_a"] == pytest.approx(2 / 3) and got["val/mse_std_b"] == pytest.approx(14 / 3)
    # One target: the overall keys only.
    with pytest.raises(ValueError, match="target_scale .* is for regression"):
        build_metrics("binary", 1, target_scale=TargetScale(head, "target_std"))
    head.target_std = torch.tensor([4.0])
    single = build_metrics("regression", 1, target_scale=TargetScale(head, "target_std"))
    single.update(preds[:, 0], target[:, 0])
    got = compute_and_reset(single)
    assert sorted(got) == ["mae", "mae_std", "mse", "mse_std", "r2", "rmse", "rmse_std"]
    assert (got["mse_std"], got["mae_std"]) == (pytest.approx(2 / 3 / 16), pytest.approx(2 / 3 / 4))


def test_regression_float64_accumulation_fixes_large_mean_r2():
    """Targets with a large mean and a small spread: float32 sums of squares lose R^2 digits."""
    g = torch.Generator().manual_seed(0)
    target = 1000.0 + 10.0 * torch.randn(600, generator=g)
    preds = target + 3.0 * torch.randn(600, generator=g)
    expected = r2_score(target.double().numpy(), preds.double().numpy())
    plain = R2Score()
    collection = build_metrics("regression", 1)
    for p, t in zip(preds.split(32), target.split(32)):
        plain.update(p, t)
        collection.update(p, t)
    assert abs(plain.compute().item() - expected) > 1e-5  # what float32 states would give
    assert compute_and_reset(collection)["r2"] == pytest.approx(expected, abs=1e-9)


def test_regression_forward_returns_batch_values():
    collection = build_metrics("regression", 2, target_names=["a", "b"]).clone(prefix="test/")
    out = collection(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    assert out["test/mse"].item() == pytest.approx(1.0)
    assert out["test/mse_b"].item() == pytest.approx(2.0)
    assert out["test/mae_a"].item() == pytest.approx(0.0)


def test_regression_rejects_bad_shapes():
    collection = build_metrics("regression", 2, target_names=["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        collection.update(torch.rand(5), torch.rand(5))
    with pytest.raises(ValueError, match="same shape"):
        collection.update(torch.rand(5, 2), torch.rand(5, 3))
    single = build_metrics("regression", 1)
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        single.update(torch.rand(5, 2), torch.rand(5, 2))


# --------------------------------------------------------------------------------------------- common


def test_compute_and_reset_returns_floats_and_resets():
    collection = build_metrics("multiclass", 3)
    collection.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0]))
    first = compute_and_reset(collection)
    assert first["accuracy"] == pytest.approx(0.75) and type(first["accuracy"]) is float
    collection.update(torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert compute_and_reset(collection)["accuracy"] == pytest.approx(0.0)  # nothing left from before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "classification", "num_labels": 2}, "binary, multiclass, multilabel, regression"),
        ({"task": "multilabel", "num_labels": 0}, "num_labels must be >= 1"),
        ({"task": "multilabel", "num_labels": 2.0}, "num_labels must be an integer"),
        ({"task": "binary", "num_labels": 3}, "binary task takes num_labels 1 or 2"),
        ({"task": "multiclass", "num_labels": 1}, "multiclass task needs num_labels >= 2"),
        ({"task": "multilabel", "num_labels": 1}, "multilabel task needs num_labels >= 2"),
        ({"task": "binary", "num_labels": 1, "threshold": 0.0}, r"open interval \(0, 1\)"),
        ({"task": "binary", "num_labels": 1, "threshold": 1.0}, r"open interval \(0, 1\)"),
        ({"task": "multilabel", "num_labels": 3, "threshold": 1.5}, r"open interval \(0, 1\)"),
        ({"task": "regression", "num_labels": 2}, "needs target_names"),
        ({"task": "regression", "num_labels": 2, "target_names": ["a"]}, "has 1 names but num_labels is 2"),
        ({"task": "regression", "num_labels": 2, "target_names": ["a", "a"]}, "unique"),
        ({"task": "regression", "num_labels": 2, "target_names": ["a", ""]}, "non-empty"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_metrics(**kwargs)


def test_tasks_constant():
    assert TASKS == ("binary", "multiclass", "multilabel", "regression")


# ---------------------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world: int, port: int, out_dir: str, data: dict) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cut = data["cut"]  # uneven shards
        shard = slice(0, cut) if rank == 0 else slice(cut, None)
        partial = PartialScore(num_labels=data["probs"].shape[1])
        partial.update(data["probs"][shard], data["target"][shard])
        multilabel = build_metrics("multilabel", data["probs"].shape[1])
        multilabel.update(data["probs"][shard], data["target"][shard])
        regression = build_metrics("regression", 2, target_names=["a", "b"])
        regression.update(data["reg_preds"][shard], data["reg_target"][shard])
        result = {
            "partial": partial.compute().item(),
            "multilabel": compute_and_reset(multilabel),
            "regression": compute_and_reset(regression),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_partial_score_syncs_across_two_processes(tmp_path):
    import torch.multiprocessing as mp

    probs, target = _multilabel_data(8, n=203, labels=4)
    target[:10] = 0
    probs[:10] = 0.1
    g = torch.Generator().manual_seed(9)
    reg_target = torch.randn(203, 2, generator=g) * 5 + 20
    reg_preds = reg_target + torch.randn(203, 2, generator=g)
    data = {"probs": probs, "target": target, "reg_preds": reg_preds, "reg_target": reg_target, "cut": 71}
    # fork where available: the children inherit the imported torch/torchmetrics instead of re-importing
    # them (several seconds each); spawn elsewhere.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _sync_worker, args=(2, _free_port(), str(tmp_path), data), nprocs=2, join=True, start_method=method
    )

    single = PartialScore(num_labels=4)
    single.update(probs, target)
    expected_partial = single.compute().item()
    expected_ml = _multilabel_expected(target.numpy(), (probs > 0.5).long().numpy())
    expected_reg = _regression_expected(reg_target.double().numpy(), reg_preds.double().numpy(), ["a", "b"])
    assert expected_partial == pytest.approx(expected_ml["partial_score"], abs=1e-12)
    shard_only = PartialScore(num_labels=4)
    shard_only.update(probs[:71], target[:71])
    assert shard_only.compute().item() != pytest.approx(expected_partial, abs=1e-6)  # so sync is what is tested
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["partial"] == pytest.approx(expected_partial, abs=1e-12)
        _close(result["multilabel"], expected_ml)
        _close(result["regression"], expected_reg, tol=1e-9)
