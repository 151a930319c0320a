"""Data sources (datamodules/sources.py): ``hf://`` datasets through ``datasets.load_dataset`` / ``load_from_disk``
(a local repository-like folder and a save_to_disk folder: never the network), weighted mixes through
``interleave_datasets``, and errors that name the source, split and record."""

import pytest

from datamodules.instruction import InstructionDataModule
from datamodules.records import DataConfigError, RecordError
from datamodules.sources import DatasetRef, MixItem, load_source
from tests.conftest import write_jsonl

README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
- config_name: ko
  data_files:
  - split: train
    path: data/ko-train.jsonl
  - split: test
    path: data/ko-test.jsonl
---
"""


def _qa(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "instruction": f"Question {prefix}{i}?", "output": f"Answer {prefix}{i}."}
            for i in range(n)]


def _repo(tmp_path, ko_train: list[dict]) -> str:
    """A folder laid out like a Hub dataset repository: two subsets, the ``ko`` one with two splits."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "train.jsonl", _qa("d", 3))
    write_jsonl(root / "data" / "ko-train.jsonl", ko_train)
    write_jsonl(root / "data" / "ko-test.jsonl", _qa("t", 2))
    (root / "README.md").write_text(README, encoding="utf-8")
    return str(root)


def _alpaca(tmp_path, train, val=None, **kw) -> InstructionDataModule:
    from transformers import AutoTokenizer

    from tests.conftest import TOKENIZER

    dm = InstructionDataModule(format="alpaca", train_file=train, val_file=val or train,
                               cache_dir=str(tmp_path / "cache"), **kw)
    dm.tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    return dm


def test_dataset_subset_and_split_tokenize_like_the_same_records_in_a_file(tmp_path):
    repo = _repo(tmp_path, _qa("k", 5))
    dm = _alpaca(tmp_path, f"hf://{repo}?subset=ko&split=train", f"hf://{repo}?subset=ko&split=test")
    dm.setup("fit")
    file_dm = _alpaca(tmp_path, str(write_jsonl(tmp_path / "same.jsonl", _qa("k", 5))))
    file_dm.setup("fit")
    assert len(dm.splits["train"]) == 5 and len(dm.splits["val"]) == 2
    assert dm.splits["train"]["input_ids"] == file_dm.splits["train"]["input_ids"]
    assert dm.splits["train"]["id"] == [f"k{i}" for i in range(5)]


def test_dataset_records_are_validated_and_named_by_split_and_index(tmp_path):
    rows = _qa("k", 5)
    rows[3]["output"] = " "
    repo = _repo(tmp_path, rows)
    with pytest.raises(RecordError, match=rf"^{repo}\[ko, train\]: record 3: field 'output': empty text$"):
        _alpaca(tmp_path, f"hf://{repo}?subset=ko&split=train").setup("fit")
    with pytest.raises(DataConfigError, match=r"the dataset has splits train, test; choose one with \?split=<name>"):
        load_source(f"hf://{repo}?subset=ko", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataConfigError, match=rf"^data source 'hf://{repo}\?subset=nope': cannot load {repo}\[nope\]: "
                                              r"BuilderConfig 'nope' not found"):
        load_source(f"hf://{repo}?subset=nope", cache_dir=str(tmp_path / "cache"))


def test_hub_options_reach_load_dataset_and_offline_is_one_line(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"instruction": ["a", "b"], "output": ["x", None]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = "hf://team/rd-qa?split=train[:2]&subset=ko&revision=0123abc&data_files=data/%2A.jsonl"
    with pytest.raises(RecordError, match=r"^team/rd-qa\[ko, train\[:2\]\]: record 1: field 'output': missing or null$"):
        _alpaca(tmp_path, source).setup("fit")
    assert calls[0] == ("team/rd-qa", {"name": "ko", "split": "train[:2]", "revision": "0123abc",
                                       "data_files": "data/*.jsonl", "cache_dir": str(tmp_path / "cache")})
    monkeypatch.undo()
    # HF_DATASETS_OFFLINE=1 (conftest): a dataset that is not cached stops with one line naming it.
    with pytest.raises(DataConfigError, match=r"^data source 'hf://nobody/missing\?split=train': cannot load "
                                              r"nobody/missing\[train\]: Couldn't reach 'nobody/missing'"):
        load_source("hf://nobody/missing?split=train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("text, match", [
    ("hf://datasets/team/qa", r"without 'datasets/' \(hf://team/qa\)"),
    ("hf://team/qa?spilt=train", r"'spilt=train' is not key=value with a key of split, subset, revision, data_files"),
    ("hf://?split=train", r"no dataset after hf://"),
])
def test_source_syntax_mistakes(text, match):
    with pytest.raises(DataConfigError, match=match):
        DatasetRef.parse(text)


def test_save_to_disk_folder_with_class_labels_feeds_an_encoder(tmp_path, tokenizer):
    import datasets

    from datamodules.encoder import EncoderDataModule

    labels = ["porosity", "crack", "none"]
    features = datasets.Features({"text": datasets.Value("string"), "defect": datasets.ClassLabel(names=labels)})
    split = datasets.Dataset.from_dict({"text": [f"weld {i}" for i in range(6)], "defect": [0, 1, 2, 2, 1, 0]}, features)
    datasets.DatasetDict(train=split, test=split.select([4, 5])).save_to_disk(str(tmp_path / "saved"))
    # The encoder's labels are in another order than the ClassLabel ids: names are what count.
    dm = EncoderDataModule(task="multiclass", text_fields=["text"], label_fields=["defect"], labels=labels[::-1],
                           train_file=f"hf://{tmp_path}/saved?split=train", val_file=f"hf://{tmp_path}/saved?split=test",
                           cache_dir=str(tmp_path / "cache"))
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert dm.train_targets.tolist() == [2, 1, 0, 0, 1, 2] and dm.splits["val"]["labels"] == [1, 2]
    with pytest.raises(DataConfigError, match="subset do not apply to a folder written by save_to_disk"):
        load_source(f"hf://{tmp_path}/saved?split=train&subset=x")


def _mix_files(tmp_path, n_a=300, n_b=100):
    a = write_jsonl(tmp_path / "a.jsonl", _qa("a", n_a))
    b = write_jsonl(tmp_path / "b.jsonl", _qa("b", n_b))
    return str(a), str(b)


def test_mix_draws_by_weight_seeded_and_names_records_by_their_source(tmp_path):
    a, b = _mix_files(tmp_path)
    mix = [MixItem(a, 1.0), MixItem(b, 3.0)]
    first = load_source(mix, seed=7, stopping="first_exhausted")
    again = load_source(mix, seed=7, stopping="first_exhausted")
    other = load_source(mix, seed=8, stopping="first_exhausted")
    ids = first.dataset["id"]
    assert ids == again.dataset["id"] and ids != other.dataset["id"]  # the data seed fixes the mix
    from_b = sum(i.startswith("b") for i in ids)
    assert from_b == 100 and 0.70 < from_b / len(ids) < 0.80  # b (weight 3 of 4) ran out first
    # every record is named by its own file and line
    k = ids.index("b42")
    assert first.locate(k) == f"{b}:43" and first.error(k, "output", "x").args[0] == f"{b}:43: field 'output': x"
    # all_exhausted: every record of every source is drawn at least once (the smaller share repeats)
    full = load_source(mix, seed=7)
    assert set(full.dataset["id"]) == {f"a{i}" for i in range(300)} | {f"b{i}" for i in range(100)}


def test_mix_in_a_datamodule_checks_each_source_and_locates_later_errors(tmp_path):
    a, b = _mix_files(tmp_path, 6, 4)
    rows = _qa("b", 4)
    rows[2]["output"] = ""
    bad_b = str(write_jsonl(tmp_path / "bad_b.jsonl", rows))
    with pytest.raises(RecordError, match=rf"^{bad_b}:3: field 'output': empty text$"):
        _alpaca(tmp_path, [{"source": a, "weight": 1}, {"source": bad_b, "weight": 1}]).setup("fit")
    long = _qa("b", 4)
    long[1]["instruction"] = " ".join(["word"] * 300)
    long_b = str(write_jsonl(tmp_path / "long_b.jsonl", long))
    dm = _alpaca(tmp_path, [{"source": a, "weight": 1}, {"source": long_b, "weight": 2}], a, cutoff_len=160,
                 overlong="error", seed=3)
    with pytest.raises(RecordError, match=rf"^{long_b}:2: sample is longer than cutoff_len=160"):
        dm.setup("fit")
    dm = _alpaca(tmp_path, [{"source": a, "weight": 1}, {"source": b, "weight": 2}], a, seed=3)
    dm.setup("fit")
    assert sorted(set(dm.splits["train"]["id"])) == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)]


def test_mix_of_incompatible_columns_names_both_sources(tmp_path):
    ints = str(write_jsonl(tmp_path / "ints.jsonl", [{**r, "id": i} for i, r in enumerate(_qa("x", 3))]))
    texts = str(write_jsonl(tmp_path / "texts.jsonl", _qa("y", 3)))
    with pytest.raises(DataConfigError, match=rf"^cannot mix {ints} and {texts}: field 'id' holds int64 in one and "
                                              r"string in the other"):
        load_source([MixItem(ints), MixItem(texts)])
    # a column one source lacks is null there
    extra = str(write_jsonl(tmp_path / "extra.jsonl", [{**r, "input": "ctx"} for r in _qa("z", 2)]))
    mixed = load_source([MixItem(texts), MixItem(extra)], seed=0)
    assert {(r["id"][0], r["input"]) for r in mixed.dataset} == {("y", None), ("z", "ctx")}
    with pytest.raises(ValueError, match="mix weight of 'a.jsonl' must be a positive number, got 0"):
        MixItem("a.jsonl", 0)


def test_recipe_and_command_line_give_paths_as_text_and_a_mix_as_items(tmp_path):
    import lightning.pytorch as pl
    from jsonargparse import ArgumentParser

    from datamodules.sources import _mix_items

    parser = ArgumentParser()  # as LightningCLI adds the data module: class_path + init_args
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    csv = tmp_path / "train.csv"
    csv.write_text("instruction,output\nq,a\n", encoding="utf-8")
    args = ["--data=datamodules.instruction.InstructionDataModule", "--data.init_args.format=alpaca",
            f"--data.init_args.train_file={csv}", "--data.init_args.val_file=hf://team/qa?split=validation&revision=0123abc",
            '--data.init_args.test_file=[{"source": "a.jsonl", "weight": 3}, {"source": "hf://team/qa?split=test"}]']
    data = parser.parse_args(args).data.init_args
    assert data.train_file == str(csv)  # the path, not the file's text read as a config
    assert data.val_file == "hf://team/qa?split=validation&revision=0123abc"
    assert _mix_items(data.test_file) == [MixItem("a.jsonl", 3.0), MixItem("hf://team/qa?split=test", 1.0)]
    with pytest.raises(DataConfigError, match=r"unknown key\(s\) \['wieght'\]; an item has source and weight"):
        _mix_items([{"source": "a.jsonl", "wieght": 2}])
