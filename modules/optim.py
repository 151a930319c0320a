"""Optimizer parameter groups and learning-rate schedules shared by every task module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

# Parameters whose names contain one of these are never weight-decayed: biases and normalization weights.
_NO_DECAY_MARKERS = ("bias", "norm", "layernorm", "layer_norm", "ln_", "rmsnorm")


def param_groups(model: nn.Module) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Biases, normalization weights (any 1-d parameter, and names containing ``norm``) get ``weight_decay=0``;
    the decayed group carries no ``weight_decay`` key, so the optimizer's own ``weight_decay`` argument
    (set in the recipe) applies to it.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lowered = name.lower()
        if p.ndim < 2 or any(m in lowered for m in _NO_DECAY_MARKERS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@dataclass
class SchedulerSpec:
    """Learning-rate schedule, stepped once per optimizer step.

    Args:
        name: ``constant``, ``linear`` (decay to 0) or ``cosine`` (half cosine to 0), each after warmup.
        warmup_ratio: Warmup length as a fraction of all optimizer steps (ignored when warmup_steps is set).
        warmup_steps: Warmup length in optimizer steps.
    """

    name: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(self.warmup_ratio * total_steps)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The schedule over ``total_steps`` optimizer steps (from dataset size and global batch)."""
        from transformers import (
            get_constant_schedule_with_warmup,
            get_cosine_schedule_with_warmup,
            get_linear_schedule_with_warmup,
        )

        total_steps = max(int(total_steps), 1)
        warmup = self.warmup(total_steps)
        if self.name == "constant":
            return get_constant_schedule_with_warmup(optimizer, warmup)
        if self.name == "linear":
            return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
