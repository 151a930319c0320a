"""Throughput, model FLOPs utilization (MFU) and peak memory of every optimizer step.

:class:`Throughput` is one of the CLI's default callbacks. Per optimizer step it logs (W&B, at the trainer's
``log_every_n_steps``):

* ``perf/tokens_per_sec``: real tokens (``attention_mask`` ones: no padding; a packed batch's mask marks its real
  tokens too) of the step over all processes, per second of wall time;
* ``perf/samples_per_sec``: records per second (``num_samples`` of a batch that says how many records it packs,
  else its ``id`` list, else its rows);
* ``perf/mfu``: model FLOPs per second over the peak of the devices (:func:`device_peak`), all processes;
* ``perf/tflops_per_device``, ``perf/step_time_s`` and ``perf/peak_memory_gib`` (CUDA: the most memory tensors
  held during the step, ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set so far).

Time is wall time between optimizer-step boundaries, data loading included, the device synchronized once per
step at the boundary (never per micro batch); validation passes (and the checkpoints saved after them) are not
counted, a checkpoint written at a step boundary counts in the next step. The end-of-fit summary and
``metrics.json["perf"]`` hold the averages over this launch's steps after the first :attr:`Throughput.warmup_steps`
(compilation, allocator and loader warm-up), as totals over totals (tokens / seconds), and the peak memory.

Model FLOPs per step (what MFU counts; gradient-checkpointing recomputation is not counted, as in PaLM's MFU)::

    flops = tokens x (6 N_trainable + 4 N_frozen) + 12 x n_layers x d_attn x attended_pairs

* ``2 N`` per token for the forward matmuls, ``2 N`` for the gradient of the activations and ``2 N`` for the
  gradient of the weights, which frozen parameters (adapter training) skip: 6 per trainable, 4 per frozen
  parameter. ``N`` leaves out embedding tables that are only looked up (an output head tied to them counts).
  The output head counts at every token, as in the standard model's FLOPs, although the causal-LM loss applies
  it only where a response token is predicted (``modules.token_loss.predicting_positions``).
* Attention: per layer and per attended (query, key) pair, ``QK^T`` and ``AV`` are ``2 x 2 x d_attn`` FLOPs
  forward (``d_attn`` = heads x head dim), times 3 with the backward. A record of ``L`` tokens attends
  ``L (L + 1) / 2`` pairs under a causal mask (about ``6 n_layers L d_attn`` FLOPs per token) and ``L^2``
  without one (an encoder; ``12 n_layers L d_attn`` per token). Pairs are counted per record from the real tokens'
  positions (``position_ids`` of a packed batch), so padding and packing never inflate them.

The vision tower of an image-text model is counted like the language model (its parameters in ``N``), an
approximation. The peak: the device's dense tensor-core FLOP/s for the run's precision from :data:`GPU_PEAK_TFLOPS`
(matched on the CUDA device name), or on CPU a measured fp32 matmul (:func:`cpu_peak_flops`, best of ~0.1 s before
per process). A GPU missing from the table gets no ``perf/mfu`` (one warning) unless ``peak_tflops`` is given.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import resource
import sys
import time

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

GIB = 2**30

#: Dense (no sparsity) peak TFLOP/s per GPU by precision, from NVIDIA's datasheets. ``tf32`` is an fp32 run with
#: TF32 matmuls allowed; a GPU without the precision's tensor cores (V100/T4 bf16, no tf32) gets its fp32 rate.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h200 nvl": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "h200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "h100 nvl": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "h100 pcie": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "h100 sxm": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "a100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},  # SXM and PCIe
    "l40s": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "l40": {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "a10g": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},  # as the A10 datasheet
    "a10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "v100 pcie": {"bf16": 14.0, "fp16": 112.0, "tf32": 14.0, "fp32": 14.0},
    "v100": {"bf16": 15.7, "fp16": 125.0, "tf32": 15.7, "fp32": 15.7},  # SXM2
    "t4": {"bf16": 8.1, "fp16": 65.0, "tf32": 8.1, "fp32": 8.1},
    "rtx 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},  # fp32 accumulate
    "rtx 3090": {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6},  # fp32 accumulate
}

# CUDA device names ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla V100-PCIE-16GB") to table rows, first
# match wins; an H100 that is neither PCIe nor NVL is the SXM part.
_NAME_PATTERNS = [
    (r"h200.*nvl", "h200 nvl"), (r"h200", "h200"), (r"h100.*nvl", "h100 nvl"), (r"h100.*pcie", "h100 pcie"),
    (r"h100", "h100 sxm"), (r"a100", "a100"), (r"l40s", "l40s"), (r"l40\b", "l40"), (r"\bl4\b", "l4"),
    (r"a10g", "a10g"), (r"\ba10\b", "a10"), (r"v100.*pcie", "v100 pcie"), (r"v100", "v100"), (r"\bt4\b", "t4"),
    (r"4090", "rtx 4090"), (r"3090", "rtx 3090"),
]


def gpu_row(name: str) -> str | None:
    """The :data:`GPU_PEAK_TFLOPS` row of a CUDA device name, or ``None``."""
    lowered = name.lower()
    return next((row for pattern, row in _NAME_PATTERNS if re.search(pattern, lowered)), None)


def precision_dtype(precision: str) -> str:
    """``bf16``, ``fp16``, ``tf32`` or ``fp32``: the matmul precision of a Trainer precision (``bf16-mixed``...)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    return "tf32" if torch.get_float32_matmul_precision() != "highest" else "fp32"


@functools.lru_cache(maxsize=None)
def cpu_peak_flops(size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of the best of repeated fp32 ``size`` x ``size`` matmuls over about ``seconds`` on this process's
    threads; measured once per process. A busy machine measures low (and so reads a higher MFU)."""
    a = b = torch.full((size, size), 0.5)  # no random numbers: the run's RNG stream stays untouched
    torch.mm(a, b)  # first call: allocation and kernel selection
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / max(time.perf_counter() - t, 1e-9))
    return best


def device_peak(device: torch.device, precision: str, peak_tflops: float | None = None,
                cpu_seconds: float = 0.3) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for the run's precision, and where the number comes from; on CPU measured over
    about ``cpu_seconds``."""
    if peak_tflops is not None:
        return peak_tflops * 1e12, f"given: {peak_tflops:g} TFLOP/s"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        row, dtype = gpu_row(name), precision_dtype(precision)
        if row is None:
            return None, f"{name}: not in trainer.perf.GPU_PEAK_TFLOPS"
        return GPU_PEAK_TFLOPS[row][dtype] * 1e12, f"{name} ({row}), {dtype} dense tensor peak"
    if device.type == "cpu":
        flops = cpu_peak_flops(seconds=cpu_seconds)
        return flops, f"CPU fp32 matmul measured: {flops / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads"
    return None, f"{device.type}: no known peak"


# ----- the model -------------------------------------------------------------------------------------------
def _numel(p: torch.Tensor) -> int:
    """Elements of a parameter as the model sees it, never materializing it: DeepSpeed ZeRO-3 (``ds_numel``),
    bitsandbytes 4-bit (the shape it quantized), DTensor (its global shape) or a plain tensor."""
    if hasattr(p, "ds_numel"):
        return int(p.ds_numel)
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None:
        return math.prod(quant_state.shape)
    return p.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameters that do matmul work per token: embedding tables that are only looked up
    are left out (a head tied to one counts)."""
    embedding, used = set(), set()
    for module in model.modules():
        own = {id(p) for p in module.parameters(recurse=False)}
        (embedding if isinstance(module, torch.nn.Embedding) else used).update(own)
    trainable = frozen = 0
    for p in model.parameters():  # each shared parameter once
        if id(p) in embedding and id(p) not in used:
            continue
        if p.requires_grad:
            trainable += _numel(p)
        else:
            frozen += _numel(p)
    return trainable, frozen


def attention_shape(model: torch.nn.Module) -> tuple[int, int] | None:
    """(layers, heads x head dim) of a transformers model's language part, or ``None`` for other models."""
    config = getattr(model, "config", None)  # PreTrainedModel and PeftModel have one; a plain nn.Module not
    if config is None or not hasattr(config, "get_text_config"):
        return None
    text = config.get_text_config()
    layers, heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_attention_heads", None)
    if not layers or not heads:
        return None
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(layers), int(heads * head_dim)


def batch_counts(batch, causal: bool) -> tuple[object, object, object]:
    """(real tokens, attended (query, key) pairs, records) of a micro batch; tensors stay on the device (read
    once per optimizer step). A batch without ``attention_mask`` counts no tokens."""
    if not isinstance(batch, dict):
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else None
        return None, None, (len(first) if first is not None else 0)
    mask = batch.get("attention_mask")
    if "num_samples" in batch:
        samples = batch["num_samples"]
    elif "id" in batch:
        samples = len(batch["id"])
    else:
        rows = mask if mask is not None else batch.get("input_ids")
        samples = rows.shape[0] if rows is not None else 0
    if mask is None:
        return None, None, samples
    mask = mask.long()
    positions = batch.get("position_ids")
    if positions is None or positions.shape != mask.shape:  # not packed (or 3-D rope positions): per row
        positions = mask.cumsum(-1) - 1
    # A record of L tokens: sum over its tokens of (pos + 1) = L (L + 1) / 2 causal pairs, of (2 pos + 1) = L^2.
    per_token = positions + 1 if causal else 2 * positions + 1
    return mask.sum(), (per_token * mask).sum(), samples


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / GIB
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * (1 if sys.platform == "darwin" else 1024) / GIB  # Linux reports KiB, macOS bytes


# ----- the callback ----------------------------------------------------------------------------------------
class Throughput(Callback):
    """Log tokens/s, samples/s, MFU and peak memory per optimizer step; keep their averages for the summary and
    ``metrics.json["perf"]`` (see the module docstring).

    Args:
        warmup_steps: The first optimizer steps of a launch left out of the averages (they are still logged).
        peak_tflops: The peak TFLOP/s of one device, for a GPU missing from the table (or to override it).
    """

    def __init__(self, warmup_steps: int = 2, peak_tflops: float | None = None) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.peak_tflops = peak_tflops
        self.flops_per_token = 0  # 6 N_trainable + 4 N_frozen
        self.attention_flops_per_pair = 0  # 12 n_layers d_attn
        self.causal = True
        self.params: dict[str, int] = {}
        self.peak: float | None = None  # FLOP/s of one device
        self.peak_source = ""
        self.world = 1
        self.device = torch.device("cpu")
        self.steps: list[dict] = []  # this launch's steps: seconds, tokens, samples, flops, memory
        self.last: dict | None = None  # the latest step's logged values
        self.total_tokens = self.total_seconds = 0.0  # over every step of this launch, warm-up included
        self._t0: float | None = None
        self._step_before = 0
        self._acc: list = [None, None, 0]  # tokens, pairs, samples of the current optimizer step

    # ----- fit start: count once -----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        from modules.base import TuneloopModule

        model = pl_module.model if isinstance(pl_module, TuneloopModule) else pl_module
        trainable, frozen = count_parameters(model)
        if isinstance(trainer.strategy, FSDPStrategy):  # FSDP1 parameters are this process's flat shards
            counts = trainer.strategy.reduce(torch.tensor([trainable, frozen], device=pl_module.device),
                                             reduce_op="sum")
            trainable, frozen = (int(c) for c in counts.tolist())
        self.params = {"trainable": trainable, "frozen": frozen}
        self.flops_per_token = 6 * trainable + 4 * frozen
        shape = attention_shape(model)
        self.causal = not (isinstance(pl_module, TuneloopModule) and pl_module.peft_task_type == "SEQ_CLS")
        self.attention_flops_per_pair = 12 * shape[0] * shape[1] if shape else 0
        self.device, self.world = pl_module.device, trainer.world_size
        # On CPU a short first measurement (a few matmuls, before step 1) for the per-step logs; the fit's end
        # measures for longer and the summary keeps the better of the two (on_train_end).
        self.peak, self.peak_source = device_peak(self.device, trainer.precision, self.peak_tflops, cpu_seconds=0.1)
        if self.peak is None:
            log.warning(f"no peak FLOP/s for {self.peak_source}: perf/mfu is not logged (set the Throughput "
                        "callback's peak_tflops)")
        self.steps, self.last, self._t0 = [], None, None
        self.total_tokens = self.total_seconds = 0.0

    def on_validation_end(self, trainer, pl_module) -> None:
        self._t0 = None  # the next step's clock starts when training resumes

    # ----- per micro batch: counts on the device --------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step
        if self._t0 is None:
            _synchronize(self.device)  # once per (re)start of training, not per micro batch
            self._t0 = time.perf_counter()
        self._acc = [a if b is None else b if a is None else a + b
                     for a, b in zip(self._acc, batch_counts(batch, self.causal))]

    # ----- per optimizer step: one synchronization ------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_before or self._t0 is None:
            return  # accumulating: not a step boundary
        _synchronize(self.device)
        now = time.perf_counter()
        seconds, self._t0 = now - self._t0, now
        tokens, pairs, samples = self._acc
        self._acc = [None, None, 0]
        counts = [0.0 if c is None else float(c) for c in (tokens, pairs, samples)]  # the device is synchronized
        if self.world > 1:  # every process takes the step together: throughput over all of them
            summed = trainer.strategy.reduce(torch.tensor(counts, dtype=torch.float64, device=self.device),
                                             reduce_op="sum")
            counts = summed.tolist()
        tokens, pairs, samples = counts
        flops = tokens * self.flops_per_token + pairs * self.attention_flops_per_pair
        step = {"seconds": seconds, "tokens": tokens, "samples": samples, "flops": flops,
                "memory_gib": _peak_memory_gib(self.device)}
        self.steps.append(step)
        self.total_tokens += tokens
        self.total_seconds += seconds
        self.last = self._rates([step])
        pl_module.log_dict({f"perf/{k}": v for k, v in self.last.items() if v is not None}, on_step=True,
                           on_epoch=False, batch_size=1)

    def _rates(self, steps: list[dict]) -> dict:
        seconds = sum(s["seconds"] for s in steps)
        flops_per_sec = sum(s["flops"] for s in steps) / seconds if seconds > 0 else 0.0
        return {
            "tokens_per_sec": sum(s["tokens"] for s in steps) / seconds if seconds > 0 else 0.0,
            "samples_per_sec": sum(s["samples"] for s in steps) / seconds if seconds > 0 else 0.0,
            "mfu": flops_per_sec / (self.peak * self.world) if self.peak else None,
            "tflops_per_device": flops_per_sec / self.world / 1e12,
            "step_time_s": seconds / len(steps),
            "peak_memory_gib": max(s["memory_gib"] for s in steps),
        }

    def totals(self) -> tuple[float, float]:
        """(tokens, seconds) over every step of this launch so far (the plain progress lines' tokens/s)."""
        return self.total_tokens, self.total_seconds

    def summary(self) -> dict | None:
        """The averages over this launch's steps after the warm-up (all of them when there are no more), or
        ``None`` before the first step."""
        if not self.steps:
            return None
        skip = self.warmup_steps if len(self.steps) > self.warmup_steps else 0
        return {**self._rates(self.steps[skip:]), "steps_measured": len(self.steps) - skip,
                "warmup_steps_excluded": skip, "world_size": self.world, "params": dict(self.params),
                "flops_per_token": self.flops_per_token, "attention_flops_per_pair": self.attention_flops_per_pair,
                "peak_tflops_per_device": self.peak / 1e12 if self.peak else None, "peak_source": self.peak_source,
                "memory": ("CUDA max allocated per step" if self.device.type == "cuda"
                           else "peak resident memory of the process")}

    def summary_rows(self) -> list[tuple[str, str]] | None:
        """The averages as (name, text) rows of the end-of-fit summary table, with what they cover."""
        s = self.summary()
        if s is None:
            return None
        memory = "CUDA max allocated" if self.device.type == "cuda" else "process peak resident"
        return [("perf/tokens_per_sec", f"{s['tokens_per_sec']:,.0f}"),
                ("perf/samples_per_sec", f"{s['samples_per_sec']:,.2f}"),
                ("perf/mfu", "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.2f} %"),
                ("perf/tflops_per_device", f"{s['tflops_per_device']:.4g}"),
                ("perf/step_time_s", f"{s['step_time_s']:.4f}"),
                ("perf/peak_memory_gib", f"{s['peak_memory_gib']:.2f} ({memory})"),
                ("perf averaged over", f"{s['steps_measured']} steps after {s['warmup_steps_excluded']} warm-up"),
                ("perf MFU peak", self.peak_source)]

    def on_train_end(self, trainer, pl_module) -> None:
        """On CPU, measure the peak again now that the fit is over and keep the higher of the two: a peak measured
        while other work held the cores reads low and would put the averaged MFU above what the cores can do."""
        if self.device is not None and self.device.type == "cpu" and self.peak_tflops is None and self.peak:
            again = cpu_peak_flops.__wrapped__(seconds=0.3)
            if again > self.peak:
                self.peak = again
                self.peak_source = (f"CPU fp32 matmul measured (best of fit start and end): {again / 1e9:.1f} "
                                    f"GFLOP/s on {torch.get_num_threads()} threads")

    def on_fit_end(self, trainer, pl_module) -> None:
        summary = self.summary()
        if summary is None or not trainer.is_global_zero:
            return
        from trainer.callbacks import run_dir, update_metrics_file

        update_metrics_file(run_dir(trainer) / "metrics.json", "perf", summary)
