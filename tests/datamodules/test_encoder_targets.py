"""datamodules/encoder.py target encodings: one per task kind, picked from the task string."""

import numpy as np
import pytest
import torch

from datamodules.encoder import (
    TARGET_ENCODINGS,
    BinaryEncoding,
    EncoderDataModule,
    MultiClassEncoding,
    MultiLabelEncoding,
    RegressionEncoding,
    target_encoding,
)
from datamodules.records import RecordError, load_record_file
from tests.conftest import write_jsonl


def _records(tmp_path, values, field="label"):
    return load_record_file(write_jsonl(tmp_path / "d.jsonl", [{"text": "t", field: v} for v in values]))


def test_registry_and_unknown_task():
    assert list(TARGET_ENCODINGS) == ["binary", "multiclass", "multilabel", "regression"]
    assert all(cls.task == task for task, cls in TARGET_ENCODINGS.items())
    with pytest.raises(ValueError, match="unknown encoder task 'ranking'; valid tasks: binary, multiclass, "
                                         "multilabel, regression"):
        target_encoding("ranking", ["label"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown encoder task 'ranking'"):
        EncoderDataModule(task="ranking", text_fields=["t"], label_fields=["l"], labels=["a", "b"])


def test_binary_encoding(tmp_path):
    enc = target_encoding("binary", ["label"], ["normal", "abnormal"])
    assert isinstance(enc, BinaryEncoding) and enc.num_outputs == 1 and enc.names == ["normal", "abnormal"]
    assert enc.label_dtype == torch.float32  # BCEWithLogits takes float targets
    targets = enc.encode(_records(tmp_path, ["abnormal", "normal", "abnormal"]))
    assert targets.dtype == np.int64 and targets.tolist() == [1, 0, 1]
    assert enc.strata(targets).tolist() == [1, 0, 1]
    assert enc.encode(_records(tmp_path, [True, False])).tolist() == [1, 0]  # booleans index the two labels
    assert enc.stats(targets) is None


def test_multiclass_encoding(tmp_path):
    enc = target_encoding("multiclass", ["label"], ["a", "b", "c"])
    assert isinstance(enc, MultiClassEncoding) and enc.num_outputs == 3 and enc.label_dtype == torch.long
    targets = enc.encode(_records(tmp_path, ["c", "a", "b"]))
    assert targets.tolist() == [2, 0, 1] and enc.strata(targets).tolist() == [2, 0, 1]
    with pytest.raises(RecordError, match="d.jsonl:1: field 'label': label False is not in the declared labels"):
        enc.encode(_records(tmp_path, [False, True]))


def test_multilabel_encoding(tmp_path):
    enc = target_encoding("multilabel", ["label"], ["a", "b", "c"])
    assert isinstance(enc, MultiLabelEncoding) and enc.num_outputs == 3 and enc.label_dtype == torch.float32
    targets = enc.encode(_records(tmp_path, [["a", "c"], [], ["b"]]))
    assert targets.dtype == np.float32 and targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert enc.strata(targets).tolist() == ["101", "000", "010"]


def test_regression_encoding(tmp_path):
    enc = target_encoding("regression", ["heat", "energy"], None)
    assert isinstance(enc, RegressionEncoding) and enc.names == ["heat", "energy"] and enc.num_outputs == 2
    rows = [{"text": "t", "heat": h, "energy": e} for h, e in [(1.0, 5.0), (3.0, 5.0)]]
    targets = enc.encode(load_record_file(write_jsonl(tmp_path / "r.jsonl", rows)))
    assert targets.dtype == np.float32 and targets.tolist() == [[1.0, 5.0], [3.0, 5.0]]
    assert enc.strata(targets) is None
    mean, std = enc.stats(targets)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # a constant target divides by 1


@pytest.mark.parametrize(
    "task, label_fields, labels, match",
    [
        ("multiclass", ["a", "b"], ["x", "y"], r"task 'multiclass' takes exactly one label field, got \['a', 'b'\]"),
        ("multilabel", ["a"], None, "task 'multilabel' needs data.labels: the label set, in order"),
        ("binary", ["a"], ["x", "x"], r"data.labels has duplicates: \['x', 'x'\]"),
        ("binary", ["a"], ["x", "y", "z"], "binary task needs two labels"),
        ("regression", [], None, "regression needs at least one target in data.label_fields"),
    ],
)
def test_encoding_argument_errors(task, label_fields, labels, match):
    with pytest.raises(ValueError, match=match):
        target_encoding(task, label_fields, labels)
