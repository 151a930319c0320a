"""Optimizer parameter groups, tuneloop's AdamW and learning-rate schedules shared by every task module."""

from __future__ import annotations

import sys
from collections.abc import Iterable
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


#: Devices whose fused AdamW kernel tuneloop picks by itself (torch 2.13 has one for CUDA and for CPU).
FUSED_DEVICES = ("cuda", "cpu")
Implementation = Literal["fused", "foreach", "single-tensor"]


def adamw_implementation(params: Iterable[torch.Tensor], fused: bool | None = None) -> Implementation:
    """Which AdamW kernel steps ``params`` (tensors, after parameter groups are unpacked).

    ``fused=None`` (auto): ``fused`` (one kernel per device and dtype for every parameter; the HF Trainer's
    default) when every parameter is a floating tensor (FSDP2's DTensors included) on a device of
    :data:`FUSED_DEVICES`, unless DeepSpeed runs this process (its engine replaces the parameters by its own flat
    partitions, on the CPU under offload); otherwise ``foreach`` where every parameter is on a GPU, else
    ``single-tensor``, torch's own defaults. ``True``: ``fused`` (torch refuses devices without the kernel);
    ``False``: never fused.
    """
    params = list(params)
    if fused or (fused is None and params and not _deepspeed(params) and all(
            p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)):
        return "fused"
    return "foreach" if params and all(p.device.type == "cuda" for p in params) else "single-tensor"


def _deepspeed(params: list[torch.Tensor]) -> bool:
    """DeepSpeed runs this process: ZeRO-3 partitioned parameters (``ds_id``), or Lightning's DeepSpeedStrategy has
    initialized DeepSpeed's process group (ZeRO-2). DeepSpeed is looked up, never imported."""
    if any(hasattr(p, "ds_id") for p in params):
        return True
    deepspeed = sys.modules.get("deepspeed")
    return deepspeed is not None and deepspeed.comm.is_initialized()


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` on the fastest kernel for where the parameters are (``fused`` on CUDA and CPU).
    torch's own default is foreach on GPUs and the single-tensor loop on the CPU; one AdamW step of a
    22.7M-parameter MiniLM (103 tensors, one CPU thread, torch 2.13) took 144 ms single-tensor, 119 ms foreach and
    19 ms fused. The math is torch's AdamW; only the kernel differs (results equal within float rounding).

    The parameters' device is read here, when the module's ``configure_optimizers`` builds the optimizer (after
    the model is on its device and sharded). A checkpoint resumes on the kernel chosen for this process (its
    step counters moved where that kernel keeps them), whichever kernel wrote it.

    Args:
        params: Parameters or parameter groups (the task module passes decayed / non-decayed groups).
        lr: Learning rate (the peak of the schedule).
        betas: Coefficients of the running averages of the gradient and its square.
        eps: Added to the denominator.
        weight_decay: Decoupled weight decay of the decayed group (biases and norms get 0).
        amsgrad: Use the AMSGrad variant.
        fused: ``null`` (default): the fused kernel where the device has one and DeepSpeed does not run the
            step, else foreach (GPU) or single-tensor (see :func:`adamw_implementation`); ``true``: always fused;
            ``false``: never.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, fused: bool | None = None):
        params = list(params)
        tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
        #: ``fused``, ``foreach`` or ``single-tensor``: the kernel that steps this optimizer.
        self.implementation: Implementation = adamw_implementation(tensors, fused)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         fused=self.implementation == "fused", foreach=self.implementation == "foreach")
        # Under fp16 mixed precision the GradScaler unscales the gradients before the step, as for any optimizer
        # (not inside the fused kernel): gradient clipping, which Lightning refuses for an optimizer that unscales
        # itself, and the logged gradient norm see true gradients.
        self._step_supports_amp_scaling = False

    def load_state_dict(self, state_dict: dict) -> None:
        # A checkpoint's groups carry the kernel of the process that saved it; this process keeps its own. Fused
        # kernels keep the step counter as an fp32 tensor on the parameter's device, the others on the CPU.
        fused = self.implementation == "fused"
        groups = [{**g, "fused": fused, "foreach": self.implementation == "foreach"}
                  for g in state_dict["param_groups"]]
        super().load_state_dict({**state_dict, "param_groups": groups})
        if not fused:
            for state in self.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to("cpu", torch.float32)


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
