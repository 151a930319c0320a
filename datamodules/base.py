"""What every tuneloop DataModule shares: the batch spec, the loaders and where training stands in the epoch.

Exact mid-epoch resume: every checkpoint records the training position (epoch, micro batches this process has
trained in it) through ``state_dict``; a resumed fit starts the train sampler at that micro batch, which is
where Lightning's own ``batch_idx`` resumes (``fit_loop.epoch_loop.batch_progress``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.batch import BatchSpec
from datamodules.records import DataConfigError, RecordError, file_format, require_file

log = logging.getLogger(__name__)


def check_data_file(source: str) -> None:
    """What ``records.load_record_file`` checks first, with its messages, without reading the records: ``source``
    (``file.xlsx#Sheet``: the workbook) is an existing file of a supported type, readable and not empty."""
    path = require_file(Path(source.rpartition("#")[0] if source.rpartition("#")[0].lower().endswith(".xlsx")
                             else source))
    fmt = file_format(path)
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except PermissionError as e:
        raise DataConfigError(f"data file {path} cannot be read: {e.strerror.lower()}") from None
    if not head or (fmt in ("json", "csv") and not head.strip() and len(head) < 1 << 16):
        raise RecordError(str(path), None, "file has no records")


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose next pass can begin part-way through an epoch (exact mid-epoch resume).

    ``start_at(epoch, samples)`` sets the epoch and makes the next pass over it skip this process's first
    ``samples`` indices (the micro batches trained before the checkpoint). Only that one pass skips: the
    loader's. A later pass over the same epoch is whole, so ``StepTokenLoss``, which lists the epoch's micro
    batches from the batch sampler after the loader has started, indexes them by the same ``batch_idx``.
    Subclasses change the order by overriding ``epoch_indices``.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._start: tuple[int, int] | None = None

    def start_at(self, epoch: int, samples: int) -> None:
        """Begin the next pass at sample ``samples`` of this process's share of ``epoch``."""
        self.set_epoch(epoch)
        self._start = (epoch, samples)

    def epoch_indices(self) -> Iterator[int]:
        """This process's indices of the current epoch, in order (the seeded ``DistributedSampler`` split)."""
        return super().__iter__()

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, None
        skip = start[1] if start is not None and start[0] == self.epoch else 0
        return itertools.islice(self.epoch_indices(), skip, None)


class TuneloopDataModule(pl.LightningDataModule):
    """Base DataModule. Subclasses fill ``self.splits`` (``train``/``val``/``test``/``predict``) in ``setup``.

    ``batch`` is read by the CLI to derive gradient accumulation from the world size.
    """

    def __init__(self, batch: BatchSpec | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.batch = batch or BatchSpec()
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, Dataset] = {}
        self.files: dict = {}  # split -> data source (a file, ``hf://...`` or a mix); subclasses fill it
        self.collate_fn = None
        self._tokenizer = None
        # Exact resume: the (epoch, micro batch) a checkpoint resumes at, and the train sampler to start there.
        self.resumed_at: tuple[int, int] | None = None
        self._pending_start: tuple[int, int] | None = None

    def use_preprocessing(self, tokenizer, processor=None) -> None:
        """Take the model's tokenizer (and, for image + text models, its processor). The tuneloop CLI calls this
        with the module's ``tokenizer`` and ``processor``; with a plain ``Trainer``, call it yourself."""
        self.tokenizer = tokenizer

    @property
    def tokenizer(self):
        """The tokenizer of the model being trained (see ``use_preprocessing``)."""
        if self._tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} has no tokenizer: call "
                               "datamodule.use_preprocessing(module.tokenizer, module.processor) before fitting "
                               "(the tuneloop CLI does this)")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def log_report(self, message: str) -> None:
        """Log a data report (truncated or skipped samples): once, on global rank zero, not on every process."""
        trainer = self.trainer
        if trainer is None or trainer.is_global_zero:
            log.info(message)

    def check_files(self, stage: str) -> None:
        """The cheap checks of the data files ``stage`` reads, before anything is built, logged or written (the CLI
        calls this before the logger can start a run): the file a stage needs is set, and every local file it
        reads exists, is a file of a supported type and is not empty. Their records are checked by ``setup``;
        ``hf://`` datasets when they load."""
        stage = str(getattr(stage, "value", stage))  # Lightning's TrainerFn
        required = {"fit": "train", "test": "test", "predict": "predict"}.get(stage)
        if required and not self.files.get(required):
            name = "predict_file (or data.test_file)" if required == "predict" else f"{required}_file"
            raise DataConfigError(f"data.{name} is required to {stage}")
        reads = {"fit": ("train", "val"), "validate": ("val",) if self.files.get("val") else ("train",),
                 "test": ("test",), "predict": ("predict",)}.get(stage, ())
        for split in reads:
            source = self.files.get(split)
            items = [source] if isinstance(source, str) else list(source or [])  # a mix: its items' sources
            for item in items:
                path = item if isinstance(item, str) else item.get("source") if isinstance(item, dict) else \
                    getattr(item, "source", None)
                if isinstance(path, str) and "://" not in path:
                    check_data_file(path)

    def prompt_spec(self) -> dict | None:
        """How a record becomes the model's prompt, written as ``prompt.json`` beside an exported adapter so the
        adapter can be prompted without tuneloop; ``None`` for tasks without text prompts."""
        return None

    # ----- where training stands (saved in every checkpoint) ---------------------------------------------
    def state_dict(self) -> dict:
        """The training position, which Lightning saves in every checkpoint: the epoch and the micro batches
        each process has trained in it (the next epoch at 0 once the epoch's batches are all trained), plus
        what the position depends on (seed, micro batch, world size, training samples)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or "train" not in self.splits:
            return {}
        epoch, done = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"train_position": {"epoch": epoch, "micro_batches": done, "seed": self.seed,
                                   "micro_batch_size": self.batch.micro_batch_size,
                                   "world_size": trainer.world_size, "samples": len(self.splits["train"])}}

    def load_state_dict(self, state: dict) -> None:
        """Resume the train sampler where the checkpoint's training stood (Lightning calls this on resume)."""
        position = state.get("train_position")
        trainer = self.trainer
        if position is None or trainer is None or trainer.state.fn != "fit":
            return
        now = {"seed": self.seed, "micro_batch_size": self.batch.micro_batch_size, "world_size": trainer.world_size,
               "samples": len(self.splits["train"])}
        changed = {k: (position[k], v) for k, v in now.items() if position[k] != v}
        if changed and position["micro_batches"]:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise DataConfigError(f"the checkpoint stopped inside epoch {position['epoch']} (after micro batch "
                             f"{position['micro_batches']}); resuming it exactly needs the same data order, but "
                             f"{what}. Resume with the checkpoint's settings, or from an epoch-end checkpoint")
        self.resumed_at = self._pending_start = (position["epoch"], position["micro_batches"])
        loop = trainer.fit_loop
        if loop._combined_loader is not None:
            # Strategies that restore after setup (FSDP, DeepSpeed) built the train loader (for the schedule's
            # length) before loading the checkpoint, and worker processes may already have drawn its indices:
            # have Lightning build it again, so that it starts at the resume position.
            loop._combined_loader = None

    def _start_train_sampler(self, sampler: ResumableSampler) -> ResumableSampler:
        """Start a new train sampler at the resume position, once (later loaders start their epochs whole)."""
        if self._pending_start is not None:
            epoch, micro_batches = self._pending_start
            sampler.start_at(epoch, micro_batches * self.batch.micro_batch_size)
            self._pending_start = None
        return sampler

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"no {split!r} data: set the {split} file (or a split fraction) in the data config")
        if len(self.splits[split]) == 0:
            raise DataConfigError(f"the {split} split has no records: there is no {split} work to do")
        sampler = None
        if shuffle:
            # One seeded global permutation, split across processes: at any world size, optimizer step k sees
            # the same samples (world 1: micro batches in a row; world N: rank r takes every N-th sample).
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = self._start_train_sampler(ResumableSampler(self.splits[split], num_replicas=world, rank=rank,
                                                                 shuffle=True, seed=self.seed))
        return DataLoader(
            self.splits[split],
            batch_size=self.batch.micro_batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
