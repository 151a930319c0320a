"""Step timings of a ``tuneloop fit`` for ``scripts/bench.py``: a Lightning callback the bench names in the run's
config (``trainer.callbacks``, with ``scripts/`` on ``PYTHONPATH``), so the fit itself is the real CLI path.

Per optimizer step it records the wall-clock time (``time.time()``, the clock the bench's parent process
stamped the launch with) when the step has finished, the real (non-pad) and total tokens of its micro batches,
the loss tokens, the step's training loss and learning rate; at the start of training, what the comparison
must hold equal (optimizer settings, LoRA settings, accumulation, clipping) and a checksum of the trainable
weights as they start. Everything is written as JSON to ``out`` when training ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch

from bench_steps import (cuda_memory, lora_settings, micro_record, optimizer_settings, step_record, sync,
                         trainable_checksum, write_json)

T_IMPORTED = [time.time(), time.process_time()]  # marks: [wall clock, CPU seconds of this process]


class StepTimes(pl.Callback):
    """Writes per-step timings and the run's settings to ``out`` (JSON) when training ends.

    Args:
        out: Where the JSON goes.
        loss: How the step's ``train/loss`` is read: ``last`` (the module logs one value per optimizer step at its
            last micro batch: the causal-LM step token mean) or ``mean`` (one value per micro batch, averaged over
            the step: the encoder's per-sample means over equal micro batches).
    """

    def __init__(self, out: str, loss: Literal["last", "mean"] = "last"):
        self.out = Path(out)
        self.loss_mode = loss
        self.marks: dict[str, list[float]] = {"imported": T_IMPORTED}
        self.steps: list[dict] = []
        self.settings: dict = {}
        self._micro: list[dict] = []
        self._step = 0

    def setup(self, trainer, pl_module, stage) -> None:
        self.marks.setdefault("setup", [time.time(), time.process_time()])

    def on_train_start(self, trainer, pl_module) -> None:
        self.marks["train_start"] = [time.time(), time.process_time()]
        model = pl_module.model
        self.settings = {
            "optimizer": optimizer_settings(trainer.optimizers[0]),
            "lora": lora_settings(model),
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "micro_batch_size": trainer.datamodule.batch.micro_batch_size,
            "gradient_clip_val": trainer.gradient_clip_val,
            "precision": str(trainer.precision),
            "max_steps": trainer.max_steps,
            "trainable_checksum": trainable_checksum(model),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads(),
        }
        self._step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "first_batch" not in self.marks:
            self.marks["first_batch"] = [time.time(), time.process_time()]
        # attention_mask: the real tokens, also of packed rows (whose mask the model is not given)
        self._micro.append(micro_record(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"),
                                        batch.get("loss_tokens")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        self._micro[-1]["loss"] = loss.detach().clone() if loss is not None else None
        if trainer.global_step == self._step:  # still accumulating
            return
        self._step = trainer.global_step
        sync(pl_module.device)
        now = time.time()
        micro, self._micro = self._micro, []
        losses = [float(m["loss"]) for m in micro if m["loss"] is not None]
        value = (losses[-1] if self.loss_mode == "last" else sum(losses) / len(losses)) if losses else None
        self.steps.append({**step_record(self._step, now, micro, value, trainer.optimizers[0].param_groups[0]["lr"]),
                           **cuda_memory(pl_module.device)})

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks["train_end"] = [time.time(), time.process_time()]
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.out, {"side": "tuneloop", "marks": self.marks, "settings": self.settings,
                                  "steps": self.steps})
