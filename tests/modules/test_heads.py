"""modules/heads.py: each task head's loss (against a hand-written reference), predictions from fixed logits,
metric targets, baselines, JSON rows and figures; the registry and its error for an unknown task."""

import numpy as np
import pytest
import torch

from modules.heads import (
    HEADS,
    BinaryHead,
    MultiClassHead,
    MultiLabelHead,
    RegressionHead,
    head_class,
    positive_weight,
)

DEFECTS = ["porosity", "crack", "spatter"]


def _bce(logits, target, pos_weight):
    """BCEWithLogits written out: -(w y log s(x) + (1 - y) log(1 - s(x))), averaged."""
    s = torch.sigmoid(logits.double())
    y = target.double()
    return float((-(pos_weight.double() * y * torch.log(s) + (1 - y) * torch.log(1 - s))).mean())


def _from_data(cls, names, train_targets=None, pos_weight=None, target_stats=None, threshold=0.5):
    return cls.from_data(names, threshold=threshold, pos_weight=pos_weight, train_targets=train_targets,
                         target_stats=target_stats)


def test_registry_and_unknown_task():
    assert list(HEADS) == ["binary", "multiclass", "multilabel", "regression"]
    assert all(head_class(task).task == task for task in HEADS)
    with pytest.raises(ValueError, match="unknown encoder task 'classification'; valid tasks: binary, "
                                         "multiclass, multilabel, regression"):
        head_class("classification")


# ---------------------------------------------------------------------------------------------- binary
def test_binary_head():
    head = BinaryHead(["normal", "abnormal"], threshold=0.6, pos_weight=torch.tensor([3.0]))
    assert head.num_outputs == 1
    out = torch.tensor([[2.0], [-1.0], [0.3], [0.5]])  # (batch, 1)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = head.loss(out, labels)
    assert float(loss) == pytest.approx(_bce(out.squeeze(-1), labels, torch.tensor([3.0])), rel=1e-6)
    assert float(loss) == pytest.approx(0.83280, abs=1e-5)
    probs = head.predict(out)
    assert probs.shape == (4,)
    assert probs.tolist() == pytest.approx([0.880797, 0.268941, 0.574443, 0.622459], abs=1e-6)
    assert head.metric_target(labels).dtype == torch.long
    # P > threshold (0.6): 0.574 is "normal", 0.622 is "abnormal"
    rows = [head.describe_prediction(p) for p in probs.numpy()]
    assert [r["pred"] for r in rows] == ["abnormal", "normal", "normal", "abnormal"]
    assert rows[0]["prob"] == pytest.approx(0.880797, abs=1e-6)
    assert head.describe_target(np.float32(1.0)) == {"target": "abnormal"}
    # The team's columns for a binary task too: exact_match and label_accuracy equal accuracy (one label per record).
    assert set(head.metrics().keys()) == {"accuracy", "precision", "recall", "f1", "f1_macro", "exact_match",
                                          "label_accuracy"}


def test_binary_from_data_and_baseline():
    targets = np.array([0, 1, 0, 0], dtype=np.int64)
    head = _from_data(BinaryHead, ["a", "b"], targets, pos_weight="auto")
    assert head.pos_weight.tolist() == [3.0]  # 3 negatives per positive
    assert _from_data(BinaryHead, ["a", "b"], None, pos_weight="auto").pos_weight.tolist() == [1.0]  # from ckpt
    row = BinaryHead.frequency_baseline(targets, 1)
    assert row.tolist() == [0.25]
    assert head.baseline_predictions(row, 3).tolist() == [0.25] * 3  # (n,) like predict


# ------------------------------------------------------------------------------------------ multiclass
def test_multiclass_head():
    head = MultiClassHead(["none", *DEFECTS])
    out = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5]])
    labels = torch.tensor([0, 3])
    reference = -float(torch.log_softmax(out.double(), -1)[torch.arange(2), labels].mean())
    assert float(head.loss(out, labels)) == pytest.approx(reference, rel=1e-6)
    assert float(head.loss(out, labels)) == pytest.approx(1.98933, abs=1e-5)
    probs = head.predict(out)
    assert probs.shape == (2, 4) and probs.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert head.metric_target(labels) is labels
    row = head.describe_prediction(probs[1].numpy())
    assert row["pred"] == "crack"
    assert list(row["probs"]) == ["none", *DEFECTS]
    assert row["probs"]["crack"] == round(float(probs[1, 2]), 6)
    assert head.describe_target(np.int64(2)) == {"target": "crack"}
    assert MultiClassHead.frequency_baseline(np.array([2, 2, 0]), 4).tolist() == [0, 0, 1, 0]
    assert set(head.metrics().keys()) == {"accuracy", "f1_macro", "f1_micro"}


# ------------------------------------------------------------------------------------------ multilabel
def test_multilabel_head():
    weight = torch.tensor([1.0, 2.0, 4.0])
    head = MultiLabelHead(DEFECTS, threshold=0.5, pos_weight=weight)
    out = torch.tensor([[1.5, -2.0, 0.2], [-0.3, 0.8, -1.2]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert float(head.loss(out, labels)) == pytest.approx(_bce(out, labels, weight), rel=1e-6)
    assert float(head.loss(out, labels)) == pytest.approx(0.71346, abs=1e-5)
    probs = head.predict(out)
    assert probs.shape == (2, 3)
    assert head.metric_target(labels).dtype == torch.long
    assert head.describe_prediction(probs[0].numpy())["pred"] == ["porosity", "spatter"]  # sigmoid(0.2) > 0.5
    assert head.describe_prediction(probs[1].numpy())["pred"] == ["crack"]
    assert head.describe_target(labels[0].numpy()) == {"target": ["porosity", "spatter"]}
    assert set(head.metrics().keys()) == {"f1_macro", "f1_micro", "partial_score", "exact_match", "label_accuracy",
                                          "label_accuracy_per_label"}
    metrics = head.metrics().clone(prefix="val/")
    metrics.update(probs, head.metric_target(labels))  # predicted {porosity, spatter}, {crack}: both records right
    labels_right = {k: v for k, v in metrics.compute().items() if k.startswith("val/label_accuracy_")}
    assert labels_right == {"val/label_accuracy_porosity": 1.0, "val/label_accuracy_crack": 1.0,
                            "val/label_accuracy_spatter": 1.0}


def test_multilabel_from_data_and_baseline():
    targets = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=np.float32)
    head = _from_data(MultiLabelHead, DEFECTS, targets, pos_weight="auto")
    assert head.pos_weight.tolist() == pytest.approx([1 / 3, 3.0, 1 / 3])
    assert _from_data(MultiLabelHead, DEFECTS, targets, pos_weight=[1.0, 2.0, 3.0]).pos_weight.tolist() == [1, 2, 3]
    assert _from_data(MultiLabelHead, DEFECTS, targets).pos_weight.tolist() == [1.0, 1.0, 1.0]
    row = MultiLabelHead.frequency_baseline(targets, 3)
    assert row.tolist() == pytest.approx([0.75, 0.25, 0.75])
    assert head.baseline_predictions(row, 2).shape == (2, 3)


def test_positive_weight_errors():
    with pytest.raises(ValueError, match="a label has no positive example"):
        positive_weight("auto", np.array([[1, 0], [1, 0]]), 2)
    with pytest.raises(ValueError, match="model.pos_weight has 1 values but the task has 2 outputs"):
        positive_weight([2.0], None, 2)


# ------------------------------------------------------------------------------------------ regression
def test_regression_head():
    mean, std = torch.tensor([400.0, 2000.0]), torch.tensor([50.0, 300.0])
    head = _from_data(RegressionHead, ["heat_input", "energy"], target_stats=(mean, std))
    assert head.num_outputs == 2
    out = torch.tensor([[0.5, -1.0], [1.0, 0.2]])  # standardized units
    labels = torch.tensor([[450.0, 1800.0], [420.0, 2100.0]])
    z = (labels - mean) / std
    assert float(head.loss(out, labels)) == pytest.approx(float(((out - z) ** 2).mean()), rel=1e-6)
    assert float(head.loss(out, labels)) == pytest.approx(0.18472, abs=1e-5)
    preds = head.predict(out)
    assert preds.flatten().tolist() == pytest.approx([425.0, 1700.0, 450.0, 2060.0])  # original units
    assert head.metric_target(labels) is labels
    assert head.describe_prediction(preds[0].numpy()) == {"pred": {"heat_input": 425.0, "energy": 1700.0}}
    assert head.describe_target(labels[1].numpy()) == {"target": {"heat_input": 420.0, "energy": 2100.0}}
    assert RegressionHead.frequency_baseline(np.array([[1.0], [3.0]]), 1).tolist() == [2.0]
    keys = set(head.metrics().keys())
    assert {"mse", "rmse", "mae", "r2", "mse_std", "rmse_std", "mae_std"} <= keys


def test_regression_metrics_in_standardized_units_are_the_loss_units():
    """val/mse_std is the validation loss (the MSE of standardized values); val/mse the same errors in original units.
    The scale is the head's buffer when the metrics are computed: a checkpoint restores it after they were built."""
    from modules.metrics import compute_and_reset

    head = _from_data(RegressionHead, ["heat_input", "energy"])  # evaluation: stats come from the checkpoint
    val = head.metrics().clone(prefix="val/")
    head.load_state_dict({"target_mean": torch.tensor([400.0, 2000.0]), "target_std": torch.tensor([50.0, 300.0])})
    out = torch.tensor([[0.5, -1.0], [1.0, 0.2]])  # standardized: predicts [425, 1700] and [450, 2060]
    labels = torch.tensor([[450.0, 1800.0], [420.0, 2100.0]])
    val.update(head.predict(out), head.metric_target(labels))
    got = compute_and_reset(val)
    assert got["val/mse_std"] == pytest.approx(float(head.loss(out, labels)), rel=1e-6)
    assert got["val/mse_std"] == pytest.approx(0.18472, abs=1e-5)
    # heat input: errors 25 and 30 J/mm (0.5 and 0.6 standardized); energy: -100 and -40 J (-1/3 and -2/15)
    assert got["val/mse_heat_input"] == pytest.approx((25**2 + 30**2) / 2)
    assert got["val/mse_std_heat_input"] == pytest.approx((0.5**2 + 0.6**2) / 2)
    assert got["val/mae_std_energy"] == pytest.approx((1 / 3 + 2 / 15) / 2)
    assert got["val/rmse_std_energy"] == pytest.approx(got["val/rmse_energy"] / 300)
    assert got["val/r2_energy"] == pytest.approx(1 - (100**2 + 40**2) / (150**2 * 2))  # r2: no _std twin


def test_regression_without_stats_is_neutral_until_the_checkpoint_loads():
    head = _from_data(RegressionHead, ["energy"])
    assert head.target_mean.tolist() == [0.0] and head.target_std.tolist() == [1.0]
    state = head.state_dict()
    assert set(state) == {"target_mean", "target_std"}  # persistent: a checkpoint predicts on its own


# --------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("task", list(HEADS))
def test_each_head_saves_its_figure(tmp_path, task):
    rng = np.random.default_rng(0)
    n = 12
    if task == "binary":
        head, preds, targets = BinaryHead(["a", "b"]), rng.random(n), rng.integers(0, 2, n)
    elif task == "multiclass":
        head, preds, targets = MultiClassHead(["a", "b", "c"]), rng.random((n, 3)), rng.integers(0, 3, n)
    elif task == "multilabel":
        head, preds, targets = MultiLabelHead(DEFECTS), rng.random((n, 3)), rng.integers(0, 2, (n, 3))
    else:
        head, preds, targets = RegressionHead(["energy"]), rng.random((n, 1)), rng.random((n, 1))
    paths = head.figures("test", preds, targets, tmp_path)
    name = "test_parity.png" if task == "regression" else "test_confusion_matrix.png"
    assert paths == [tmp_path / name] and paths[0].stat().st_size > 0
