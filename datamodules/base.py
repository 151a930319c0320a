"""What every tuneloop DataModule shares: the batch spec and the loaders."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.batch import BatchSpec

log = logging.getLogger(__name__)


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
        self.collate_fn = None
        self._tokenizer = None

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

    def prompt_spec(self) -> dict | None:
        """How a record becomes the model's prompt, written as ``prompt.json`` beside an exported adapter so the
        adapter can be prompted without tuneloop; ``None`` for tasks without text prompts."""
        return None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"no {split!r} data: set the {split} file (or a split fraction) in the data config")
        sampler = None
        if shuffle:
            # One seeded global permutation, split across processes: at any world size, optimizer step k sees
            # the same samples (world 1: micro batches in a row; world N: rank r takes every N-th sample).
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = DistributedSampler(self.splits[split], num_replicas=world, rank=rank, shuffle=True,
                                         seed=self.seed)
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
