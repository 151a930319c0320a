"""Scaling rules: the recipe states the global batch, the launch decides how it is reached.

``global_batch_size = micro_batch_size x world_size x accumulate_grad_batches``. A recipe fixes the global
and the micro batch; the world size (devices x nodes) is only known at launch, so accumulation is derived
then. The same YAML therefore takes the same optimizer steps over the same number of samples on 1 CPU,
8 GPUs or 2 x 8 GPUs.

When the global batch does not divide over the launch (128 over micro 4 x 3 GPUs), ``rounding: exact`` (the
default) refuses, and ``rounding: floor`` rounds accumulation down (10) and trains with the effective global
batch ``micro x world x accumulation`` (120) instead; everything that reads the global batch at run time
(the length-grouped sampler, the scheduler's step count) reads the effective one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)
Rounding = Literal["exact", "floor"]


class BatchSizeError(ValueError):
    """The global batch cannot be split into micro batches over the given world size. The message names the
    recipe keys (``data.batch.global_batch_size``, ``data.batch.micro_batch_size``)."""


@dataclass
class BatchSpec:
    """Batch sizes of a recipe.

    Args:
        global_batch_size: Samples per optimizer step, summed over all processes and accumulation steps.
        micro_batch_size: Samples per forward/backward pass on one device.
        rounding: When ``global / (micro x world)`` is not whole: ``exact`` refuses to start; ``floor`` rounds
            accumulation down and trains with the smaller effective global batch (logged at launch).
    """

    global_batch_size: int = 32
    micro_batch_size: int = 8
    rounding: Rounding = "exact"

    def __post_init__(self) -> None:
        for key in ("global_batch_size", "micro_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BatchSizeError(f"data.batch.{key} must be a whole number >= 1, got {value!r}")
        if self.global_batch_size < self.micro_batch_size:
            raise BatchSizeError(
                f"data.batch.global_batch_size ({self.global_batch_size}) is smaller than micro_batch_size "
                f"(data.batch.micro_batch_size = {self.micro_batch_size})"
            )
        if self.rounding not in ("exact", "floor"):
            raise BatchSizeError(f"data.batch.rounding must be 'exact' or 'floor', got {self.rounding!r}")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps for ``world_size`` processes. Called once at launch (the CLI), so a
        rounded-down global batch is logged here."""
        acc = derive_accumulation(self.global_batch_size, self.micro_batch_size, world_size, self.rounding)
        effective = acc * self.micro_batch_size * world_size
        if effective != self.global_batch_size:
            log.warning(f"data.batch.rounding=floor: effective global batch {effective} (requested "
                        f"{self.global_batch_size}) = micro {self.micro_batch_size} x world {world_size} x "
                        f"accumulation {acc}")
        return acc

    def effective_global_batch_size(self, world_size: int) -> int:
        """Samples per optimizer step as trained: ``micro x world x accumulation`` (the requested global batch
        unless ``rounding: floor`` rounded it down)."""
        acc = derive_accumulation(self.global_batch_size, self.micro_batch_size, world_size, self.rounding)
        return acc * self.micro_batch_size * world_size


def derive_accumulation(global_batch_size: int, micro_batch_size: int, world_size: int,
                        rounding: Rounding = "exact") -> int:
    """Return ``global / (micro x world)``: refused unless whole (``exact``), rounded down (``floor``); never 0."""
    if world_size < 1:
        raise BatchSizeError(f"world size must be >= 1, got {world_size}")
    per_step = micro_batch_size * world_size
    if rounding == "floor" and global_batch_size < per_step:
        raise BatchSizeError(
            f"global_batch_size={global_batch_size} is smaller than micro_batch_size={micro_batch_size} x "
            f"world_size={world_size} (= {per_step}): not even one micro batch per process fits, so "
            "data.batch.rounding=floor cannot round down; raise the global batch or lower the micro batch"
        )
    if rounding != "floor" and global_batch_size % per_step != 0:
        floor = global_batch_size // per_step * per_step
        raise BatchSizeError(
            f"global_batch_size={global_batch_size} is not divisible by micro_batch_size={micro_batch_size} x "
            f"world_size={world_size} (= {per_step}); choose a global batch that is a multiple of {per_step}, "
            "or change the micro batch or the number of devices/nodes"
            + (f" (or set data.batch.rounding=floor to train with {floor})" if floor else "")
        )
    return global_batch_size // per_step
