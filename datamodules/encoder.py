"""Encoder tasks (MISSION §4): text records -> tokenized batches with binary, multi-class, multi-label or
regression targets.

Files (JSONL/CSV/Parquet/.xlsx) load through ``datasets``; tokenization is a ``datasets.map`` and so is cached on
disk (a second run with the same file, tokenizer and settings does not re-tokenize). Records are validated
before anything else and a bad one stops the run with ``file:line: field 'x': ...``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch

from datamodules.base import TuneloopDataModule
from datamodules.collate import PadCollator
from datamodules.records import DataConfigError, RecordFile, check_number, check_text, require_fields
from datamodules.sources import DataSource, MixStopping, load_source, per_record
from datamodules.batch import BatchSpec

Task = Literal["binary", "multiclass", "multilabel", "regression"]


class TargetEncoding:
    """How one task kind reads its target field(s) from records and encodes them as an array.

    Args:
        label_fields: Target field(s) of the records.
        labels: The label set of a classification task, in output order (``None`` for regression).

    Raises:
        ValueError: the fields or labels do not fit the task (checked at construction, before any file is read).
    """

    task: ClassVar[str]
    label_dtype: ClassVar[torch.dtype] = torch.float32  # of the padded ``labels`` batch tensor

    def __init__(self, label_fields: list[str], labels: list[str] | None) -> None:
        self.label_fields = list(label_fields)
        self.labels = list(labels) if labels else None

    @property
    def names(self) -> list[str]:
        """Class/label names (classification) or target names (regression), in output order."""
        return self.labels

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer: C classes, L labels or T targets (binary: 1)."""
        return len(self.names)

    def encode(self, rf: RecordFile) -> np.ndarray:
        """The records' targets: class ids (N,), 0/1 label rows (N, L) or values (N, T)."""
        raise NotImplementedError

    def strata(self, targets: np.ndarray) -> np.ndarray | None:
        """What stratified splits and folds balance, one key per record; ``None``: plain splits."""
        return None

    def stats(self, train_targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) the model standardizes targets with; ``None`` for classification."""
        return None


class BinaryEncoding(TargetEncoding):
    """One label field holding one of two labels ``[negative, positive]`` (a boolean value means
    ``labels[int(value)]``): class ids (N,), stratified by class. The model has one output, the positive
    class's logit, and the batch's labels are float (for BCEWithLogits)."""

    task = "binary"

    def __init__(self, label_fields: list[str], labels: list[str] | None) -> None:
        super().__init__(label_fields, labels)
        _check_classification(self.task, self.label_fields, self.labels)
        if len(self.labels) != 2:
            raise ValueError(f"binary task needs two labels [negative, positive], got {labels}")

    @property
    def num_outputs(self) -> int:
        return 1

    def encode(self, rf: RecordFile) -> np.ndarray:
        return _class_ids(rf, self.label_fields[0], self.labels, booleans=True)

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return targets.astype(np.int64)


class MultiClassEncoding(TargetEncoding):
    """One label field holding one of ``labels``: class ids (N,), stratified by class."""

    task = "multiclass"
    label_dtype = torch.long  # cross-entropy takes class ids

    def __init__(self, label_fields: list[str], labels: list[str] | None) -> None:
        super().__init__(label_fields, labels)
        _check_classification(self.task, self.label_fields, self.labels)

    def encode(self, rf: RecordFile) -> np.ndarray:
        return _class_ids(rf, self.label_fields[0], self.labels, booleans=False)

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return targets.astype(np.int64)


class MultiLabelEncoding(TargetEncoding):
    """One field holding a list of labels, or text with the labels joined by ``delimiter`` (``porosity|spatter``,
    as a CSV or spreadsheet column holds them; empty text or an empty cell: no labels): 0/1 rows (N, L),
    stratified by label set. ``delimiter=None`` accepts lists only."""

    task = "multilabel"

    def __init__(self, label_fields: list[str], labels: list[str] | None, delimiter: str | None = "|") -> None:
        super().__init__(label_fields, labels)
        _check_classification(self.task, self.label_fields, self.labels)
        if delimiter is not None and not delimiter:
            raise ValueError("data.label_delimiter must be a non-empty string, or null for lists only")
        self.delimiter = delimiter

    def _names(self, rf: RecordFile, i: int, value) -> list:
        """The labels of record ``i``: its list, or its text split at the delimiter."""
        field = self.label_fields[0]
        if isinstance(value, list):
            return value
        if value is None and rf.tabular and self.delimiter is not None:
            return []  # an empty CSV/spreadsheet cell
        if not isinstance(value, str) or self.delimiter is None:
            how = "" if self.delimiter is None else f" or text joined by {self.delimiter!r}"
            raise rf.error(i, field, f"expected a list of labels{how}, got {type(value).__name__} {value!r}")
        if not value.strip():
            return []
        names = [name.strip() for name in value.split(self.delimiter)]
        if "" in names:
            raise rf.error(i, field, f"empty label in {value!r} (labels are joined by {self.delimiter!r})")
        return names

    def encode(self, rf: RecordFile) -> np.ndarray:
        field = self.label_fields[0]
        index = {name: i for i, name in enumerate(self.labels)}
        values = rf.dataset[field]
        out = np.zeros((len(values), len(self.labels)), dtype=np.float32)
        for i, value in enumerate(values):
            for name in self._names(rf, i, value):
                if name not in index:
                    raise rf.error(i, field, f"label {name!r} is not in the declared labels {self.labels}")
                out[i, index[name]] = 1.0
        return out

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return np.array(["".join("1" if v else "0" for v in row) for row in targets])


class RegressionEncoding(TargetEncoding):
    """One or more numeric fields, named after their fields: values (N, T), standardized by the model with
    the training split's mean and standard deviation."""

    task = "regression"

    def __init__(self, label_fields: list[str], labels: list[str] | None) -> None:
        super().__init__(label_fields, labels)
        if not self.label_fields:
            raise ValueError("regression needs at least one target in data.label_fields")

    @property
    def names(self) -> list[str]:
        return self.label_fields

    def encode(self, rf: RecordFile) -> np.ndarray:
        return np.stack([np.asarray(check_number(rf, f), dtype=np.float32) for f in self.label_fields], axis=1)

    def stats(self, train_targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mean = train_targets.mean(axis=0)
        std = train_targets.std(axis=0)
        std[std == 0] = 1.0  # a constant target: divide by 1, not 0
        return torch.tensor(mean), torch.tensor(std)


def _check_classification(task: str, label_fields: list[str], labels: list[str] | None) -> None:
    if len(label_fields) != 1:
        raise ValueError(f"task {task!r} takes exactly one label field, got {label_fields}")
    if not labels:
        raise ValueError(f"task {task!r} needs data.labels: the label set, in order")
    if len(set(labels)) != len(labels):
        raise ValueError(f"data.labels has duplicates: {labels}")


def _class_ids(rf: RecordFile, field: str, labels: list[str], booleans: bool) -> np.ndarray:
    """Index in ``labels`` of each record's ``field`` value, (N,); with ``booleans``, False/True mean
    ``labels[0]``/``labels[1]``."""
    index = {name: i for i, name in enumerate(labels)}
    values = rf.dataset[field]
    out = np.zeros(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if booleans and isinstance(value, bool):
            value = labels[int(value)]
        if not isinstance(value, str) or value not in index:
            raise rf.error(i, field, f"label {value!r} is not in the declared labels {labels}")
        out[i] = index[value]
    return out


TARGET_ENCODINGS: dict[str, type[TargetEncoding]] = {
    "binary": BinaryEncoding,
    "multiclass": MultiClassEncoding,
    "multilabel": MultiLabelEncoding,
    "regression": RegressionEncoding,
}


def target_encoding(task: str, label_fields: list[str], labels: list[str] | None,
                    label_delimiter: str | None = "|") -> TargetEncoding:
    """The target encoding of ``task``, checked against its fields and labels (``label_delimiter``: multilabel)."""
    if task not in TARGET_ENCODINGS:
        raise ValueError(f"unknown encoder task {task!r}; valid tasks: {', '.join(TARGET_ENCODINGS)}")
    if task == "multilabel":
        return MultiLabelEncoding(label_fields, labels, label_delimiter)
    return TARGET_ENCODINGS[task](label_fields, labels)


class EncoderDataModule(TuneloopDataModule):
    """Text classification/regression data for an encoder (BERT-style) model.

    Args:
        task: ``binary`` (one label field with two values), ``multiclass`` (one label field),
            ``multilabel`` (one field holding a list of labels) or ``regression`` (one or more numeric fields).
        text_fields: Record fields fed to the encoder; several are joined as ``name: value`` lines, and a numeric
            field (``current``, a number) is written ``name: value`` (``current: 182.5``) even alone.
        label_fields: Target field(s). Regression targets are named after their fields.
        labels: The label set of a classification task, in a fixed order (binary: ``[negative, positive]``).
        label_delimiter: Multilabel: a label field given as text (a CSV, Parquet or .xlsx column) is split at this
            delimiter (``porosity|spatter``; empty: no labels); a list (JSONL) is taken as it is. ``null``: lists only.
        train_file: Training records (.jsonl, .csv, .parquet, or .xlsx: the first sheet, or ``file.xlsx#Sheet``), a
            dataset ``hf://owner/name?split=train`` (also ``subset``, ``revision``, ``data_files``), or a mix
            ``[{source: ..., weight: ...}, ...]`` (``datamodules.sources``); the other files take the same.
        val_file: Validation records; if unset, ``val_fraction`` of the training file (seeded, stratified).
        test_file: Test records (``tuneloop test``).
        predict_file: Records to predict (``tuneloop predict``); targets optional. Defaults to the test file.
        id_field: Field that identifies a record in predictions.jsonl (row number when absent).
        mix_stopping: A mix ends when every source has been drawn in full (``all_exhausted``: small sources repeat)
            or when the first runs out (``first_exhausted``).
        val_fraction: Validation share split off the training file when there is no ``val_file``.
        num_folds: K of K-fold cross-validation (set by ``tuneloop cv``); train+val files form the pool.
        fold: Which fold (0-based) is the validation fold.
        max_length: Token cutoff per record.
        batch: Global and micro batch size (accumulation is derived from the world size at launch).
        num_workers: DataLoader worker processes.
        seed: Seed of splits, folds and shuffling.
        cache_dir: ``datasets`` cache directory (default: the HF datasets cache).
    """

    def __init__(
        self,
        task: Task,
        text_fields: list[str],
        label_fields: list[str],
        labels: list[str] | None = None,
        label_delimiter: str | None = "|",
        train_file: DataSource | None = None,
        val_file: DataSource | None = None,
        test_file: DataSource | None = None,
        predict_file: DataSource | None = None,
        id_field: str | None = "id",
        mix_stopping: MixStopping = "all_exhausted",
        val_fraction: float = 0.1,
        num_folds: int | None = None,
        fold: int | None = None,
        max_length: int = 256,
        batch: BatchSpec | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__(batch=batch, num_workers=num_workers, seed=seed)
        if not text_fields:
            raise ValueError("data.text_fields must name at least one field")
        self.encoding = target_encoding(task, label_fields, labels, label_delimiter)
        if (num_folds is None) != (fold is None):
            raise ValueError("data.num_folds and data.fold are set together (tuneloop cv sets both)")
        if num_folds is not None and not (num_folds >= 2 and 0 <= fold < num_folds):
            raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got fold={fold} num_folds={num_folds}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.task = task
        self.text_fields = list(text_fields)
        self.label_fields = list(label_fields)
        self.labels = list(labels) if labels else None
        self.label_delimiter = label_delimiter
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file or test_file}
        self.id_field, self.mix_stopping = id_field, mix_stopping
        self.val_fraction = val_fraction
        self.num_folds, self.fold = num_folds, fold
        self.max_length = max_length
        self.cache_dir = cache_dir
        self.target_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_targets: np.ndarray | None = None

    # ----- what the model needs to know about the data --------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        """Class/label names (classification) or target names (regression), in output order."""
        return self.encoding.names

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer: 1 for binary, C classes, L labels or T targets."""
        return self.encoding.num_outputs

    @property
    def train_targets(self) -> np.ndarray:
        """Encoded targets of the training split (for baselines and target statistics)."""
        if self._train_targets is None:
            raise RuntimeError("call setup('fit') first")
        return self._train_targets

    # ----- loading and validation -----------------------------------------------------------------------
    def _load(self, split: str, need_targets: bool):
        checked: dict[int, np.ndarray | None] = {}  # targets of each source, checked before any mixing

        def check(rf) -> None:
            has_targets = all(f in rf.dataset.column_names for f in self.label_fields)
            targets_read = need_targets or has_targets
            # An empty CSV/spreadsheet cell is a multilabel record without labels, not a missing field.
            may_be_empty = self.task == "multilabel" and self.label_delimiter is not None and rf.tabular
            require_fields(rf, self.text_fields + (self.label_fields if targets_read and not may_be_empty else []))
            if targets_read and may_be_empty and self.label_fields[0] not in rf.dataset.column_names:
                require_fields(rf, self.label_fields)  # names the missing column
            for field in self.text_fields:
                check_text(rf, field, numbers=True)
            checked[id(rf)] = self.encoding.encode(rf) if targets_read else None

        rf = load_source(self.files[split], self.cache_dir, seed=self.seed, stopping=self.mix_stopping, check=check)
        if id(rf) in checked:  # one source
            return rf, checked[id(rf)]
        if any(t is None for t in checked.values()):  # a mix reads targets when every source has them
            return rf, None
        targets = per_record(rf, checked)
        return rf, np.asarray(targets, dtype=next(iter(checked.values())).dtype)

    def _tokenize(self, rf: RecordFile, targets: np.ndarray | None, split: str):
        tokenizer = self.tokenizer
        text_fields, max_length = self.text_fields, self.max_length
        numeric = {f for f in text_fields if rf.dataset.features[f].dtype.startswith(("int", "float"))}  # else string
        id_field = self.id_field if self.id_field in rf.dataset.column_names else None

        def encode(batch, indices):
            if len(text_fields) == 1 and text_fields[0] not in numeric:
                texts = batch[text_fields[0]]
            else:  # several fields, or a number: "name: value" lines
                texts = ["\n".join(f"{f}: {batch[f][j]}" for f in text_fields) for j in range(len(indices))]
            enc = tokenizer(texts, truncation=True, max_length=max_length)
            enc["id"] = [str(batch[id_field][j]) if id_field else str(i) for j, i in enumerate(indices)]
            return enc

        ds = rf.dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=rf.dataset.column_names,
            desc=f"tokenize {split}",
        )
        if targets is not None:
            ds = ds.add_column("labels", targets.tolist())
        return ds

    def _split_indices(self, targets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Train/val indices of the pool: the K-fold split when ``fold`` is set, else a held-out fraction."""
        from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

        strata = self.encoding.strata(targets)
        if self.num_folds is not None:
            if strata is not None:
                splitter = StratifiedKFold(self.num_folds, shuffle=True, random_state=self.seed)
                folds = list(splitter.split(np.zeros(n), merge_rare(strata, self.num_folds)))
            else:
                folds = list(KFold(self.num_folds, shuffle=True, random_state=self.seed).split(np.zeros(n)))
            return folds[self.fold]
        stratify = merge_rare(strata, 2) if strata is not None else None
        return train_test_split(np.arange(n), test_size=self.val_fraction, random_state=self.seed, stratify=stratify)

    def setup(self, stage: str) -> None:
        import datasets

        self.collate_fn = PadCollator(self.tokenizer, label_dtype=self.encoding.label_dtype)
        if stage in ("fit", "validate") and "train" not in self.splits:
            if not self.files["train"]:
                raise DataConfigError("data.train_file is required to fit or validate")
            rf, targets = self._load("train", need_targets=True)
            train_ds = self._tokenize(rf, targets, "train")
            if self.files["val"] and self.num_folds is None:
                val_rf, val_targets = self._load("val", need_targets=True)
                self.splits["val"] = self._tokenize(val_rf, val_targets, "val")
                self.splits["train"], self._train_targets = train_ds, targets
            else:
                pool, pool_targets = train_ds, targets
                if self.files["val"]:  # K-fold: the validation file joins the pool
                    val_rf, val_targets = self._load("val", need_targets=True)
                    pool = datasets.concatenate_datasets([pool, self._tokenize(val_rf, val_targets, "val")])
                    pool_targets = np.concatenate([pool_targets, val_targets])
                train_idx, val_idx = self._split_indices(pool_targets, len(pool))
                self.splits["train"], self.splits["val"] = pool.select(train_idx), pool.select(val_idx)
                self._train_targets = pool_targets[train_idx]
            self.target_stats = self.encoding.stats(self._train_targets)
        if stage == "test" and "test" not in self.splits:
            if not self.files["test"]:
                raise DataConfigError("data.test_file is required to test")
            rf, targets = self._load("test", need_targets=True)
            self.splits["test"] = self._tokenize(rf, targets, "test")
        if stage == "predict" and "predict" not in self.splits:
            if not self.files["predict"]:
                raise DataConfigError("data.predict_file (or data.test_file) is required to predict")
            rf, targets = self._load("predict", need_targets=False)
            self.splits["predict"] = self._tokenize(rf, targets, "predict")


def merge_rare(strata: np.ndarray, min_count: int) -> np.ndarray:
    """Put strata with fewer than ``min_count`` members into one bucket so stratified splitters accept them."""
    values, counts = np.unique(strata, return_counts=True)
    rare = set(values[counts < min_count].tolist())
    if not rare:
        return strata
    merged = np.array(["__rare__" if s in rare else str(s) for s in strata])
    # A lone rare bucket that is itself too small is folded into the most frequent stratum.
    if (merged == "__rare__").sum() < min_count:
        merged[merged == "__rare__"] = str(values[counts.argmax()])
    return merged
