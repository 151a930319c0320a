"""Scaling rules: the recipe states the global batch, the launch decides how it is reached.

``global_batch_size = micro_batch_size x world_size x accumulate_grad_batches``. A recipe fixes the global
and the micro batch; the world size (devices x nodes) is only known at launch, so accumulation is derived
then. The same YAML therefore takes the same optimizer steps over the same number of samples on 1 CPU,
8 GPUs or 2 x 8 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchSizeError(ValueError):
    """The global batch cannot be split into micro batches over the given world size."""


@dataclass
class BatchSpec:
    """Batch sizes of a recipe.

    Args:
        global_batch_size: Samples per optimizer step, summed over all processes and accumulation steps.
        micro_batch_size: Samples per forward/backward pass on one device.
    """

    global_batch_size: int = 32
    micro_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise BatchSizeError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.global_batch_size < self.micro_batch_size:
            raise BatchSizeError(
                f"global_batch_size ({self.global_batch_size}) is smaller than micro_batch_size "
                f"({self.micro_batch_size})"
            )

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps for ``world_size`` processes."""
        return derive_accumulation(self.global_batch_size, self.micro_batch_size, world_size)


def derive_accumulation(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Return ``global / (micro x world)``; raise a clear error when it is not a positive whole number."""
    if world_size < 1:
        raise BatchSizeError(f"world size must be >= 1, got {world_size}")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step != 0:
        raise BatchSizeError(
            f"global_batch_size={global_batch_size} is not divisible by micro_batch_size={micro_batch_size} x "
            f"world_size={world_size} (= {per_step}); choose a global batch that is a multiple of {per_step}, "
            "or change the micro batch or the number of devices/nodes"
        )
    return global_batch_size // per_step
