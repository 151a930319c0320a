"""Where records come from: a data file, a ``datasets`` dataset, or a weighted mix of them.

A source is accepted wherever a data file is (``data.train_file``, ``val_file``, ``test_file``, ``predict_file``):

``data/train.jsonl``
    a file (.jsonl, .csv, .parquet, .xlsx), as :func:`datamodules.records.load_record_file` reads it;
``hf://owner/name?split=train&subset=ko&revision=<commit>&data_files=<glob>``
    a dataset loaded by ``datasets.load_dataset(owner/name, name=subset, split=split, revision=revision,
    data_files=data_files)`` into the ``datasets`` cache (every query key is optional; ``split`` may be a slice,
    ``train[:1000]``, and is needed when the dataset has several splits). ``owner/name`` may also be a local
    folder: one laid out like a Hub dataset repository (data files, a ``README.md`` with ``configs:``) or one
    written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
a list of ``{source: ..., weight: ...}``
    a mix: each source is loaded and checked on its own, then ``datasets.interleave_datasets`` draws records
    with probabilities proportional to the weights, seeded by the data seed (``data.mix_stopping``: stop when
    every source has been drawn in full, ``all_exhausted``, or at the first that runs out, ``first_exhausted``).

Every source names its records in errors the same way: ``file:line`` for files, ``owner/name[train]: record 17``
for datasets (the 0-based index in the loaded split, ``dataset[17]``); a record of a mix is named by its source.
``ClassLabel`` columns of a dataset are read as their label names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union
from urllib.parse import unquote

from datamodules.records import DataConfigError, RecordError, RecordFile, load_record_file

if TYPE_CHECKING:
    import datasets

HF_SCHEME = "hf://"
_QUERY_KEYS = ("split", "subset", "revision", "data_files")
MixStopping = Literal["all_exhausted", "first_exhausted"]


@dataclass
class MixItem:
    """One source of a mix.

    Args:
        source: A data file or ``hf://`` dataset (see ``datamodules.sources``).
        weight: Relative share of the mix (the probabilities are the weights divided by their sum).
    """

    source: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"mix weight of {self.source!r} must be a positive number, got {self.weight!r}")


# What a DataModule's ``*_file`` argument accepts: a file or ``hf://`` dataset, or a weighted mix of them given as
# ``{source, weight}`` mappings (or ``MixItem``s from Python). Mappings, not ``list[MixItem]``: for a list of
# dataclasses jsonargparse would read a plain path's file as a config (``train_file: data.csv`` -> its text).
DataSource = Union[str, list[dict]]


@dataclass(frozen=True)
class DatasetRef:
    """A parsed ``hf://path?split=..&subset=..&revision=..&data_files=..`` source."""

    path: str
    split: str | None = None
    subset: str | None = None
    revision: str | None = None
    data_files: str | None = None

    @classmethod
    def parse(cls, text: str) -> "DatasetRef":
        rest = text[len(HF_SCHEME):]
        path, _, query = rest.partition("?")
        if not path:
            raise DataConfigError(f"data source {text!r}: no dataset after {HF_SCHEME} (hf://owner/name?split=train)")
        if path.startswith("datasets/"):
            raise DataConfigError(f"data source {text!r}: write the dataset id without 'datasets/' "
                                  f"({HF_SCHEME}{path[len('datasets/'):]})")
        values: dict[str, str] = {}
        for pair in filter(None, query.split("&")):
            key, eq, value = pair.partition("=")
            if key not in _QUERY_KEYS or not eq or not value:
                raise DataConfigError(f"data source {text!r}: {pair!r} is not key=value with a key of "
                                      f"{', '.join(_QUERY_KEYS)}")
            values[key] = unquote(value)
        return cls(path=path, **values)

    @property
    def name(self) -> str:
        """How errors name the dataset: ``owner/name[train]``, ``owner/name[ko, train]`` with a subset."""
        inside = ", ".join(x for x in (self.subset, self.split) if x)
        return f"{self.path}[{inside}]" if inside else self.path


@dataclass
class DatasetRecords:
    """A ``datasets`` dataset as records (the :class:`~datamodules.records.RecordFile` interface)."""

    ref: DatasetRef
    dataset: "datasets.Dataset"
    local_dir: Path | None  # the dataset's folder when it is local: relative paths in records resolve there

    numbers_as_text = False  # typed columns
    tabular = False  # a null is a missing value

    @property
    def name(self) -> str:
        return self.ref.name

    def locate(self, index: int) -> str:
        return f"{self.name}: record {index}"

    def error(self, index: int, field: str | None, message: str) -> RecordError:
        return RecordError(self.locate(index), field, message)

    def source_dir(self, index: int) -> Path | None:
        return self.local_dir


@dataclass
class MixedRecords:
    """Records interleaved from several sources; record ``i`` is ``parts[origin_source[i]]``'s record
    ``origin_index[i]`` (errors name it there)."""

    parts: list
    dataset: "datasets.Dataset"
    origin_source: list[int]
    origin_index: list[int]

    @property
    def name(self) -> str:
        return "mix of " + ", ".join(p.name for p in self.parts)

    @property
    def numbers_as_text(self) -> bool:
        return any(p.numbers_as_text for p in self.parts)

    @property
    def tabular(self) -> bool:
        return all(p.tabular for p in self.parts)

    def _origin(self, index: int):
        return self.parts[self.origin_source[index]], self.origin_index[index]

    def locate(self, index: int) -> str:
        part, i = self._origin(index)
        return part.locate(i)

    def error(self, index: int, field: str | None, message: str) -> RecordError:
        part, i = self._origin(index)
        return part.error(i, field, message)

    def source_dir(self, index: int) -> Path | None:
        part, i = self._origin(index)
        return part.source_dir(i)


Records = Union[RecordFile, DatasetRecords, MixedRecords]


def describe(source) -> str:
    """A source as the user wrote it, for messages (a mix as its list of sources and weights)."""
    if isinstance(source, str):
        return source
    return "[" + ", ".join(f"{s.source} (weight {s.weight:g})" for s in _mix_items(source)) + "]"


def _mix_items(source) -> list[MixItem]:
    """The items of a mix given as ``MixItem``s (the CLI) or as plain mappings (Python callers)."""
    items = []
    for item in source:
        if isinstance(item, MixItem):
            items.append(item)
        elif isinstance(item, dict) and isinstance(item.get("source"), str):
            extra = set(item) - {"source", "weight"}
            if extra:
                raise DataConfigError(f"mix item {item!r}: unknown key(s) {sorted(extra)}; an item has source and weight")
            try:
                items.append(MixItem(item["source"], item.get("weight", 1.0)))
            except ValueError as e:
                raise DataConfigError(str(e)) from None
        else:
            raise DataConfigError(f"mix item {item!r}: expected {{source: <file or hf://...>, weight: <number>}}")
    return items


def load_source(source: DataSource, cache_dir: str | None = None, seed: int = 0,
                stopping: MixStopping = "all_exhausted", check: Callable[[Records], None] | None = None) -> Records:
    """The records of ``source`` (a file, ``hf://`` dataset or mix, see the module docstring). ``check`` validates
    the records of each source before any mixing (it raises :class:`~datamodules.records.RecordError`, which names
    the source's file and line or record)."""
    if isinstance(source, str):
        records = load_dataset_source(source, cache_dir) if source.startswith(HF_SCHEME) else \
            load_record_file(source, cache_dir)
        if check is not None:
            check(records)
        return records
    items = _mix_items(source)
    if not items:
        raise DataConfigError("a mix of sources needs at least one {source, weight} item")
    parts = [load_source(item.source, cache_dir, check=check) for item in items]
    return _interleave(parts, [item.weight for item in items], seed, stopping)


def per_record(records: Records, by_source: dict[int, list]) -> list:
    """Values a ``check`` computed for each source (``by_source[id(source)]``, one per record of that source), in
    the order of ``records``: the source itself, or a mix drawing from several."""
    if id(records) in by_source:
        return list(by_source[id(records)])
    return [by_source[id(records.parts[s])][i] for s, i in zip(records.origin_source, records.origin_index)]


def load_dataset_source(text: str, cache_dir: str | None = None) -> DatasetRecords:
    """An ``hf://`` source through ``datasets``; whatever it cannot load is one :class:`DataConfigError`."""
    import datasets

    ref = DatasetRef.parse(text)
    local = Path(ref.path)
    saved = local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file())
    try:
        if saved:
            extra = [k for k in ("subset", "revision", "data_files") if getattr(ref, k)]
            if extra:
                raise DataConfigError(f"data source {text!r}: {', '.join(extra)} do not apply to a folder written by "
                                      "save_to_disk (it holds one version of its splits)")
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict) and ref.split is not None:
                if ref.split not in loaded:
                    raise DataConfigError(f"data source {text!r}: no split {ref.split!r}; the folder has splits "
                                          f"{', '.join(loaded)} (split slices need a dataset load_dataset reads)")
                loaded = loaded[ref.split]
        else:
            loaded = datasets.load_dataset(ref.path, name=ref.subset, split=ref.split, revision=ref.revision,
                                           data_files=ref.data_files, cache_dir=cache_dir)
    except DataConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (datasets raises many types; each is a user mistake in the source)
        raise DataConfigError(f"data source {text!r}: cannot load {ref.name}: {_first_line(e)}") from e
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        if len(loaded) != 1:
            raise DataConfigError(f"data source {text!r}: the dataset has splits {', '.join(loaded)}; choose one "
                                  f"with ?split=<name>")
        split, loaded = next(iter(loaded.items()))
        ref = DatasetRef(ref.path, split, ref.subset, ref.revision, ref.data_files)
    if not isinstance(loaded, datasets.Dataset):
        raise DataConfigError(f"data source {text!r}: expected a dataset of records, got {type(loaded).__name__}")
    if len(loaded) == 0:
        raise RecordError(ref.name, None, "the dataset has no records")
    return DatasetRecords(ref, _label_names(loaded), local.resolve() if local.is_dir() else None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _label_names(ds):
    """``ClassLabel`` columns as their names (records then read as they would in a JSONL file)."""
    import datasets

    names = {c: f.names for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    if not names:
        return ds

    def to_names(batch):
        return {c: [None if v is None or v < 0 else names[c][v] for v in batch[c]] for c in names}

    features = ds.features.copy()
    for c in names:
        features[c] = datasets.Value("string")
    return ds.map(to_names, batched=True, features=features, desc="label names")


_SOURCE, _INDEX = "__tuneloop_source", "__tuneloop_index"


def _interleave(parts: list, weights: list[float], seed: int, stopping: MixStopping) -> MixedRecords:
    """Interleave the parts' datasets (columns aligned: a column a part lacks is null there; one column, one type)."""
    import datasets

    features: dict = {}
    for part in parts:
        for column, feature in part.dataset.features.items():
            if features.get(column) is None or features[column] == datasets.Value("null"):
                features[column] = feature
    aligned = []
    for k, part in enumerate(parts):
        ds = part.dataset
        for column, feature in features.items():
            if column not in ds.column_names:
                ds = ds.add_column(column, [None] * len(ds), feature=feature)
        target = datasets.Features({c: features[c] for c in ds.column_names})
        if ds.features != target:
            try:
                ds = ds.cast(target)
            except Exception as e:  # noqa: BLE001  (Arrow cast errors)
                column = next(c for c in ds.column_names if ds.features[c] != target[c])
                first = next(p for p in parts if column in p.dataset.column_names
                             and p.dataset.features[column] == features[column])
                raise DataConfigError(f"cannot mix {first.name} and {part.name}: field {column!r} holds "
                                      f"{_kind(features[column])} in one and {_kind(ds.features[column])} in the "
                                      f"other ({_first_line(e)})") from e
        ds = ds.add_column(_SOURCE, [k] * len(ds)).add_column(_INDEX, list(range(len(ds))))
        aligned.append(ds)
    total = sum(weights)
    mixed = datasets.interleave_datasets(aligned, probabilities=[w / total for w in weights], seed=seed,
                                         stopping_strategy=stopping)
    origin_source, origin_index = mixed[_SOURCE], mixed[_INDEX]
    return MixedRecords(parts, mixed.remove_columns([_SOURCE, _INDEX]), list(origin_source), list(origin_index))


def _kind(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return dtype if isinstance(dtype, str) else type(feature).__name__
