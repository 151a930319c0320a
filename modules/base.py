"""The one thin base every task module shares: optimizer wiring and the LR schedule."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import torch

from trainer.optim import SchedulerSpec, param_groups

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the settings most fine-tuning recipes start from."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


class TuneloopModule(pl.LightningModule):
    """Base of the task modules: ``self.model`` is built in ``configure_model``; the optimizer is injected.

    Subclasses set ``self.model`` (an ``nn.Module``) and implement the steps. The schedule's length is
    ``trainer.estimated_stepping_batches``: dataset size / global batch x epochs (or ``max_steps``).
    """

    def __init__(self, optimizer: OptimizerCallable = default_optimizer, scheduler: SchedulerSpec | None = None):
        super().__init__()
        self.optimizer_fn = optimizer
        self.scheduler_spec = scheduler or SchedulerSpec()
        self.model: torch.nn.Module | None = None

    def plain_hyperparameters(self) -> None:
        """Store spec dataclasses in ``self.hparams`` as dicts: checkpoints stay loadable with
        ``torch.load(weights_only=True)`` (which refuses custom classes)."""
        for key, value in list(self.hparams.items()):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)

    def configure_optimizers(self):
        if self.model is None:
            raise RuntimeError("configure_model() must build self.model before optimizers are configured")
        optimizer = self.optimizer_fn(param_groups(self.model))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_spec.build(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])
