"""EncoderDataModule: loading, validation errors naming file/line/field, caching, splits and folds."""

import json
import time

import numpy as np
import pytest

from datamodules.encoder import EncoderDataModule, merge_rare
from datamodules.records import RecordError, load_record_file
from tests.conftest import write_jsonl

LABELS = ["a", "b", "c"]


def _dm(tmp_path, tokenizer, task="multiclass", **kw):
    args = dict(task=task, text_fields=["text"], label_fields=["label"],
                labels=LABELS if task != "regression" else None, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    dm = EncoderDataModule(**args)
    dm.tokenizer = tokenizer
    return dm


def _rows(n, task="multiclass", seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"id": f"r{i}", "text": f"record {i} value {rng.integers(100)}"}
        if task == "multiclass":
            row["label"] = LABELS[i % 3]
        elif task == "multilabel":
            row["label"] = [l for l in LABELS if rng.random() < 0.4]
        elif task == "binary":
            row["label"] = "b" if i % 2 else "a"
        else:
            row["label"] = float(rng.normal(100, 10))
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    "bad_row, line, field, message",
    [
        ({"id": "x", "label": "a"}, 3, "text", "missing or null"),
        ({"id": "x", "text": "   ", "label": "a"}, 3, "text", "empty text"),
        ({"id": "x", "text": 12, "label": "a"}, 3, "text", "expected a string like line 1, got number 12"),
        ({"id": "x", "text": "fine", "label": "zzz"}, 3, "label", "'zzz' is not in the declared labels"),
        ({"id": "x", "text": "fine"}, 3, "label", "missing or null"),
    ],
)
def test_bad_classification_records_name_file_line_field(tmp_path, tokenizer, bad_row, line, field, message):
    rows = _rows(4)
    rows.insert(2, bad_row)  # third record -> line 3
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = _dm(tmp_path, tokenizer, train_file=str(path))
    with pytest.raises(RecordError) as e:
        dm.setup("fit")
    assert str(e.value).startswith(f"{path}:{line}: field '{field}': ")
    assert message in str(e.value)


@pytest.mark.parametrize("value, message", [("12.5", "expected a number like line 1, got string '12.5'"),
                                            (None, "missing or null"),
                                            (True, "expected a number like line 1, got boolean")])
def test_bad_regression_targets(tmp_path, tokenizer, value, message):
    rows = _rows(5, task="regression")
    rows[3]["label"] = value
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = _dm(tmp_path, tokenizer, task="regression", train_file=str(path))
    with pytest.raises(RecordError, match=rf"train.jsonl:4: field 'label': {message}"):
        dm.setup("fit")


def test_nan_regression_target_is_an_error(tmp_path, tokenizer):
    rows = _rows(5, task="regression")
    lines = [json.dumps(r) for r in rows]
    lines[1] = lines[1].replace(str(rows[1]["label"]), "NaN")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dm = _dm(tmp_path, tokenizer, task="regression", train_file=str(path))
    with pytest.raises(RecordError, match=r"train.jsonl:2: field 'label': expected a finite number"):
        dm.setup("fit")


def test_multilabel_value_must_be_a_list_of_known_labels(tmp_path, tokenizer):
    rows = _rows(6, task="multilabel")
    rows[4]["label"] = ["a", "nope"]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = _dm(tmp_path, tokenizer, task="multilabel", train_file=str(path))
    with pytest.raises(RecordError, match=r"train.jsonl:5: field 'label': label 'nope' is not in"):
        dm.setup("fit")
    rows[4]["label"] = "a"
    write_jsonl(path, rows)
    with pytest.raises(RecordError, match=r"train.jsonl:5: field 'label': expected a list like line 1, got string"):
        _dm(tmp_path, tokenizer, task="multilabel", train_file=str(path)).setup("fit")


def test_invalid_json_line_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": oops}\n')
    with pytest.raises(RecordError, match=r"d.jsonl:4: invalid JSON"):
        load_record_file(path)
    path.write_text('{"text": "a"}\n\n{"text": "b", "label": 3}\n')
    rf = load_record_file(path)
    assert rf.locate(1) == f"{path}:3"  # the blank line is counted


def test_csv_line_numbers_count_the_header(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text("id,text,label\nr0,hello,a\nr1,world,q\n")
    dm = _dm(tmp_path, tokenizer, train_file=str(path))
    with pytest.raises(RecordError, match=r"train.csv:3: field 'label': label 'q'"):
        dm.setup("fit")


def test_parquet_loads(tmp_path, tokenizer):
    import pandas as pd

    path = tmp_path / "train.parquet"
    pd.DataFrame(_rows(30)).to_parquet(path)
    dm = _dm(tmp_path, tokenizer, train_file=str(path), val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 24 and len(dm.splits["val"]) == 6


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_record_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported data file type"):
        load_record_file(tmp_path / "x.txt")


def test_batches_and_targets(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(40, task="multilabel"))
    dm = _dm(tmp_path, tokenizer, task="multilabel", train_file=str(path), val_file=str(path))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == dm.batch.micro_batch_size
    assert batch["labels"].shape == (dm.batch.micro_batch_size, 3)
    assert batch["input_ids"][:, 0].eq(tokenizer.bos_token_id).all()
    assert set(batch["labels"].unique().tolist()) <= {0.0, 1.0}
    assert dm.num_outputs == 3 and dm.label_names == LABELS


def test_tokenization_is_cached_on_disk(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(50))
    dm = _dm(tmp_path, tokenizer, train_file=str(path), val_file=str(path))
    dm.setup("fit")
    files = [f["filename"] for f in dm.splits["val"].cache_files]
    assert files, "tokenized split should live in an Arrow cache file"
    mtimes = {f: __import__("os").path.getmtime(f) for f in files}
    time.sleep(0.05)
    dm2 = _dm(tmp_path, tokenizer, train_file=str(path), val_file=str(path))
    dm2.setup("fit")
    files2 = [f["filename"] for f in dm2.splits["val"].cache_files]
    assert files2 == files  # same fingerprint -> same cache file, reused
    assert all(__import__("os").path.getmtime(f) == mtimes[f] for f in files)  # not rewritten


def test_seeded_stratified_split(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(90))
    a = _dm(tmp_path, tokenizer, train_file=str(path), val_fraction=0.2, seed=3)
    b = _dm(tmp_path, tokenizer, train_file=str(path), val_fraction=0.2, seed=3)
    a.setup("fit"), b.setup("fit")
    assert a.splits["val"]["id"] == b.splits["val"]["id"]
    counts = np.bincount(np.array(a.splits["val"]["labels"]), minlength=3)
    assert counts.tolist() == [6, 6, 6]  # stratified: 18 val records, 6 per class


def test_kfold_partitions_the_pool(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", _rows(60))
    val = write_jsonl(tmp_path / "val.jsonl", [dict(r, id=f"v{i}") for i, r in enumerate(_rows(15, seed=1))])
    seen = []
    for fold in range(3):
        dm = _dm(tmp_path, tokenizer, train_file=str(train), val_file=str(val), num_folds=3, fold=fold)
        dm.setup("fit")
        val_ids, train_ids = set(dm.splits["val"]["id"]), set(dm.splits["train"]["id"])
        assert not val_ids & train_ids and len(val_ids | train_ids) == 75
        # 25 records per class over 3 folds: stratified folds hold 8 or 9 of each class.
        assert set(np.bincount(np.array(dm.splits["val"]["labels"]), minlength=3).tolist()) <= {8, 9}
        seen.append(val_ids)
    assert sum(len(s) for s in seen) == 75 and len(set().union(*seen)) == 75  # disjoint folds cover the pool


def test_merge_rare_strata():
    s = np.array(["x"] * 5 + ["y"] * 4 + ["z"])
    merged = merge_rare(s, 2)
    assert (merged == "z").sum() == 0 and (merged == "x").sum() == 6


def test_argument_errors():
    with pytest.raises(ValueError, match="needs data.labels"):
        EncoderDataModule(task="multiclass", text_fields=["t"], label_fields=["l"])
    with pytest.raises(ValueError, match="binary task needs two labels"):
        EncoderDataModule(task="binary", text_fields=["t"], label_fields=["l"], labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="num_folds and data.fold"):
        EncoderDataModule(task="regression", text_fields=["t"], label_fields=["l"], num_folds=3)
