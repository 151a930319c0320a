"""Exact mid-epoch resume, data side: a train sampler started at a checkpoint's position yields exactly the
samples the interrupted epoch had left, at any world size and micro batch, with and without length grouping;
the DataModule saves and restores that position; emptied splits stop the run with the file and the filter."""

from types import SimpleNamespace

import numpy as np
import pytest
from torch.utils.data import DataLoader

from datamodules.base import ResumableSampler, TuneloopDataModule
from datamodules.batch import BatchSpec
from datamodules.instruction import InstructionDataModule, LengthGroupedSampler
from datamodules.records import RecordError
from tests.conftest import write_jsonl

pytestmark = pytest.mark.resume

LENGTHS = [int(x) for x in np.random.default_rng(0).integers(5, 120, size=101)]  # 101: a partial last step


def _sampler(kind, world, rank, micro, global_batch=24):
    if kind == "grouped":
        return LengthGroupedSampler(LENGTHS, global_batch, micro, num_replicas=world, rank=rank, seed=7)
    return ResumableSampler(range(len(LENGTHS)), num_replicas=world, rank=rank, seed=7)


def _micro_batches(sampler, micro):
    return [list(b) for b in DataLoader(range(len(LENGTHS)), batch_size=micro, sampler=sampler)]


@pytest.mark.parametrize("kind", ["distributed", "grouped"])
@pytest.mark.parametrize("world,micro", [(1, 4), (1, 1), (2, 4), (3, 2), (4, 3)])
def test_started_sampler_yields_exactly_the_rest_of_the_epoch(kind, world, micro):
    for epoch in (0, 3):
        for rank in range(world):
            whole = _sampler(kind, world, rank, micro)
            whole.set_epoch(epoch)
            full = _micro_batches(whole, micro)
            for done in (0, 1, len(full) // 2, len(full) - 1, len(full)):
                resumed = _sampler(kind, world, rank, micro)
                resumed.start_at(epoch, done * micro)
                assert _micro_batches(resumed, micro) == full[done:], (epoch, rank, done)
                # Only that pass skips: the next pass over the epoch (StepTokenLoss lists it) is whole.
                assert _micro_batches(resumed, micro) == full


def test_start_applies_to_its_epoch_only_and_survives_set_epoch():
    sampler = _sampler("distributed", 2, 1, 4)
    sampler.start_at(2, 8)
    assert sampler.epoch == 2
    sampler.set_epoch(2)  # Lightning sets the epoch again before the epoch starts
    reference = _sampler("distributed", 2, 1, 4)
    reference.set_epoch(2)
    assert list(sampler) == list(reference)[8:]
    other = _sampler("distributed", 2, 1, 4)
    other.start_at(2, 8)
    other.set_epoch(3)  # a checkpoint from the end of epoch 2 resumes at epoch 3 from its start
    reference.set_epoch(3)
    assert list(other) == list(reference)


def test_resumed_ranks_together_cover_the_global_order_left():
    """Across ranks, the resumed micro batches are the unseen part of the same steps as the uninterrupted run."""
    world, micro, global_batch = 2, 2, 8
    steps = LengthGroupedSampler(LENGTHS, global_batch, micro, num_replicas=world, seed=7).steps()
    done_steps = 3
    seen = set()
    for rank in range(world):
        resumed = _sampler("grouped", world, rank, micro, global_batch)
        resumed.start_at(0, done_steps * global_batch // world)
        seen |= set(list(resumed))
    assert seen == {int(i) for step in steps[done_steps:] for i in step}


class _Data(TuneloopDataModule):
    def __init__(self, n: int, micro: int = 4, seed: int = 5):
        super().__init__(batch=BatchSpec(global_batch_size=16, micro_batch_size=micro), seed=seed)
        self.splits["train"] = list(range(n))


def _trainer(epoch, processed, batches=10, world=1, rank=0):
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    return SimpleNamespace(state=SimpleNamespace(fn="fit"), current_epoch=epoch, num_training_batches=batches,
                           world_size=world, global_rank=rank,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress),
                                                    _combined_loader=None))


def _with_trainer(dm, trainer):
    dm.trainer = trainer  # LightningDataModule.trainer is a plain attribute
    return dm


def test_datamodule_saves_and_restores_the_train_position():
    saved = _with_trainer(_Data(50), _trainer(epoch=1, processed=3)).state_dict()
    assert saved["train_position"] == {"epoch": 1, "micro_batches": 3, "seed": 5, "micro_batch_size": 4,
                                       "world_size": 1, "samples": 50}
    resumed = _with_trainer(_Data(50), _trainer(epoch=0, processed=0))
    resumed.load_state_dict(saved)
    assert resumed.resumed_at == (1, 3)
    reference = _with_trainer(_Data(50), _trainer(0, 0)).train_dataloader()
    reference.sampler.set_epoch(1)
    assert [list(b) for b in resumed.train_dataloader()] == [list(b) for b in reference][3:]
    # Later loaders (reload_dataloaders_every_n_epochs) start their epochs whole.
    assert len(list(resumed.train_dataloader())) == len(reference)


def test_a_finished_epoch_resumes_at_the_next_one():
    saved = _with_trainer(_Data(50), _trainer(epoch=1, processed=10, batches=10)).state_dict()
    assert (saved["train_position"]["epoch"], saved["train_position"]["micro_batches"]) == (2, 0)


def test_mid_epoch_resume_with_another_data_order_is_refused():
    saved = _with_trainer(_Data(50), _trainer(epoch=0, processed=3)).state_dict()
    with pytest.raises(ValueError, match=r"same data order, but micro_batch_size 4 -> 2"):
        _with_trainer(_Data(50, micro=2), _trainer(0, 0)).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"world_size 1 -> 2"):
        _with_trainer(_Data(50), _trainer(0, 0, world=2)).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"samples 50 -> 49"):
        _with_trainer(_Data(49), _trainer(0, 0)).load_state_dict(saved)
    # At an epoch boundary nothing depends on the old order.
    boundary = _with_trainer(_Data(50), _trainer(epoch=0, processed=10)).state_dict()
    _with_trainer(_Data(50, micro=2), _trainer(0, 0, world=2)).load_state_dict(boundary)


def test_a_loader_built_before_the_checkpoint_loaded_is_built_again():
    """FSDP and DeepSpeed restore after setup: the train loader already exists; Lightning must build it again."""
    trainer = _trainer(0, 0)
    trainer.fit_loop._combined_loader = object()
    dm = _with_trainer(_Data(50), trainer)
    dm.load_state_dict(_with_trainer(_Data(50), _trainer(0, 3)).state_dict())
    assert trainer.fit_loop._combined_loader is None


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_emptied_by_the_overlong_filter_names_file_and_filter(tmp_path, tokenizer, split):
    long = {"text": "아주 긴 문장 " * 60, "label": "날씨"}
    short = {"text": "내일 날씨", "label": "날씨"}
    emptied = write_jsonl(tmp_path / f"{split}.jsonl", [long] * 3)
    other = write_jsonl(tmp_path / "other.jsonl", [short] * 3)
    files = {"train_file": str(other), "val_file": str(other), f"{split}_file": str(emptied)}
    dm = InstructionDataModule(format="intent", labels=["날씨", "일정"], cutoff_len=128, overlong="drop",
                               cache_dir=str(tmp_path / "cache"), **files)
    dm.tokenizer = tokenizer
    with pytest.raises(RecordError, match=rf"^{emptied}: overlong: drop removed 3 of 3 records \(cutoff_len=128\)"):
        dm.setup("fit")


def test_empty_split_is_an_error_in_the_loader():
    dm = _Data(0)
    with pytest.raises(ValueError, match="the train split has no records"):
        dm.train_dataloader()
