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
        self._eval_outputs: list = []  # this process's test-step outputs, for predictions.jsonl and plots

    def on_test_epoch_start(self) -> None:
        self._eval_outputs = []

    def pop_eval_outputs(self) -> list:
        """Test-step outputs of this process (for predictions.jsonl and plots), emptied on read."""
        outputs, self._eval_outputs = self._eval_outputs, []
        return outputs

    def plain_hyperparameters(self) -> None:
        """Store spec dataclasses in ``self.hparams`` as dicts: checkpoints stay loadable with
        ``torch.load(weights_only=True)`` (which refuses custom classes)."""
        for key, value in list(self.hparams.items()):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 (the ``fsdp`` preset): ``fully_shard`` every transformer block, then the root, over the
        data-parallel mesh. Blocks are the classes the model itself declares unsplittable
        (``_no_split_modules``). No-op under other strategies."""
        mesh = self.device_mesh
        if mesh is None:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if not blocks:
            raise TypeError(f"{type(model).__name__} declares no transformer blocks (_no_split_modules) to shard")
        precision = str(self.trainer.precision)
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision.startswith("bf16") and self.device.type == "cuda" else MixedPrecisionPolicy())
        dp_mesh = mesh["data_parallel"]
        for block in blocks:
            fully_shard(block, mesh=dp_mesh, mp_policy=policy)
        fully_shard(model, mesh=dp_mesh, mp_policy=policy)
        return model

    def full_state_dict(self) -> dict | None:
        """The model's full state dict on rank 0 when it is sharded (a collective: every rank calls it);
        ``None`` when it is not sharded (callers then use the module's own state)."""
        if self.device_mesh is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def configure_optimizers(self):
        if self.model is None:
            raise RuntimeError("configure_model() must build self.model before optimizers are configured")
        optimizer = self.optimizer_fn(param_groups(self.model))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_spec.build(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])
