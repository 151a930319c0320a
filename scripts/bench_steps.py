"""What both sides of ``scripts/bench.py`` record, the same way: tokens per micro batch, step records, the settings
that must be equal. Imports torch only (the HF side must not pay for importing Lightning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_memory(device: torch.device) -> dict:
    """CUDA: the most memory tensors held (``max_memory_allocated``) and the allocator reserved since the last reset
    of the peak statistics (tuneloop's Throughput callback resets them after every step, after this is read), and
    the device memory in use now (CUDA context and the allocator's cache included); CPU: nothing."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)  # the device as nvidia-smi sees it: context and cache included
    return {"max_memory_allocated": torch.cuda.max_memory_allocated(device),
            "max_memory_reserved": torch.cuda.max_memory_reserved(device), "device_used": total - free}


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict:
    """The hyperparameters that define an AdamW step (identical on both sides, or the comparison is void)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # HF wraps it (accelerate's AcceleratedOptimizer)
    d = optimizer.defaults
    return {"class": type(optimizer).__name__, "lr": d.get("lr"), "betas": list(d.get("betas", ())),
            "eps": d.get("eps"), "fused": bool(d.get("fused")), "foreach": d.get("foreach"),
            # (weight decay, parameters) of every non-empty group, by decay: how decay is applied, not group order
            "groups": sorted([g["weight_decay"], sum(p.numel() for p in g["params"])]
                             for g in optimizer.param_groups if g["params"])}


def lora_settings(model: torch.nn.Module) -> dict | None:
    """r, alpha, dropout and target modules of a PEFT model's default adapter; ``None`` without one."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(targets) if not isinstance(targets, str) else targets}


def trainable_checksum(model: torch.nn.Module) -> float:
    """Sum of |w| over the trainable weights: equal on both sides when they start from the same weights."""
    return float(sum(p.detach().abs().double().sum() for p in model.parameters() if p.requires_grad))


def record_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> list[int]:
    """Real tokens of every record of a micro batch (batch, seq): the rows of a padded batch, or the records of
    packed rows, whose ``position_ids`` restart at 0 at every record (a segment with no real token is padding)."""
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if position_ids is None:
        return [int(n) for n in mask.sum(-1).tolist() if n]
    lengths = []
    for pos, real in zip(position_ids.reshape(-1, position_ids.shape[-1]).tolist(),
                         mask.reshape(-1, mask.shape[-1]).tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        lengths += [n for n in (sum(real[a:b]) for a, b in zip(starts, starts[1:])) if n]
    return lengths


def micro_record(input_ids, attention_mask=None, position_ids=None, loss_tokens=None) -> dict:
    """What a step record sums over its micro batches: real and total tokens, loss tokens, records and the sum of
    squared record lengths (the attention FLOPs grow with it)."""
    lengths = record_lengths(input_ids, attention_mask, position_ids)
    return {"real": sum(lengths), "total": input_ids.numel(), "loss_tokens": loss_tokens, "records": len(lengths),
            "sq_lengths": sum(n * n for n in lengths)}


def step_record(step: int, now: float, micro: list[dict], loss: float | None, lr: float) -> dict:
    """One optimizer step: its finish time (wall, and this process's CPU seconds so far: on a shared machine the
    CPU time of a start-up is the steadier measure) and the sums over its micro batches."""
    import time

    return {"step": step, "time": now, "cpu": time.process_time(), "real_tokens": sum(m["real"] for m in micro),
            "total_tokens": sum(m["total"] for m in micro),
            "loss_tokens": sum(int(m["loss_tokens"]) for m in micro if m["loss_tokens"] is not None),
            "records": sum(m["records"] for m in micro), "sq_lengths": sum(m["sq_lengths"] for m in micro),
            "micro_batches": len(micro), "loss": loss, "lr": lr}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (the bench reads the file as soon as it appears)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
