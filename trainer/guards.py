"""Numeric guards: a non-finite loss, gradient or validation never trains on silently, and never becomes "best".

:class:`NonFiniteGuard` is one of the CLI's default callbacks. What it watches, per optimizer step:

* the training loss of every micro batch (``on_before_backward``), and
* the gradient norm just before the optimizer steps (``on_before_optimizer_step``: after the backward of the
  step's last micro batch, after DDP's gradient all-reduce, before clipping). Under fp16 mixed precision the
  gradient is left to the ``GradScaler``, which skips inf/nan steps and lowers its scale by design.

That norm is also the run's ``train/grad_norm`` (logged per optimizer step, computed once): the total 2-norm of
every gradient before clipping (the GradScaler has unscaled them), the full norm under sharding (FSDP2's DTensor
gradients reduced over their mesh, FSDP1's flat shards summed over processes). DeepSpeed keeps gradients in its
own partitions: there the engine's norm of the step is logged after the step, when it has one.

The decision is reduced over every process, so all ranks stop or skip together. The policy:

* ``stop`` (default): the fit ends with one line, ``tuneloop fit: non-finite training loss at global step 8: nan
  ...``, exit code 2 (a :class:`NonFiniteError`); nothing is checkpointed from the non-finite state.
* ``skip``: the step's gradients are dropped (``optimizer.zero_grad(set_to_none=True)``: torch optimizers step
  only parameters that have a gradient, so weights and optimizer states stay as they were; the LR schedule
  still advances), a warning names the step, and ``metrics.json`` lists the skipped steps
  (``fit.nonfinite_steps``). Not available under DeepSpeed, whose engine steps its own gradient partitions.

Validation: ``val/loss`` or any monitored ``ModelCheckpoint`` value that is non-finite stops the fit (``stop``),
or (``skip``) no checkpoint is written from that validation, so it can never become the best one (the steps are
listed in ``fit.nonfinite_validations``); a fit under ``skip`` whose every validation was non-finite ends with
an error instead of testing an unusable model. Set the policy in a recipe or on the command line::

    trainer:
      callbacks:
        - class_path: trainer.guards.NonFiniteGuard
          init_args: {policy: skip}

    tuneloop fit -c RECIPE --trainer.callbacks+=trainer.guards.NonFiniteGuard --trainer.callbacks.policy=skip

A guard given this way replaces the default one.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

Policy = Literal["stop", "skip"]


class NonFiniteError(SystemExit):
    """A non-finite value stopped the fit. A ``SystemExit`` carrying its one-line message, which ``tuneloop``
    prints once (global rank zero) before exiting with code 2; every rank raises it at the same step."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 gradients), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _format(value: float | None) -> str:
    return "unknown (on another process)" if value is None else f"{value:g}"


class NonFiniteGuard(Callback):
    """Stop the fit (or skip the optimizer step) on a non-finite training loss or gradient norm, and keep a
    non-finite validation from being checkpointed as the best (see the module docstring).

    Args:
        policy: ``stop`` (default): end the fit with a one-line message naming the global step and the value,
            exit code 2. ``skip``: drop the step's gradients, count the step (log and ``metrics.json``
            ``fit.nonfinite_steps``) and go on.
    """

    def __init__(self, policy: Policy = "stop") -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped: list[int] = []  # global steps (as in metrics.json train_loss) whose optimizer step was dropped
        self.bad_validations: list[int] = []  # global steps of validations with non-finite values (skip policy)
        self._bad: torch.Tensor | None = None  # this optimizer step: any non-finite micro-batch loss (on device)
        self._value: torch.Tensor | None = None  # the first non-finite micro-batch loss of this step
        self._step_before = 0  # global step before the current micro batch (DeepSpeed's norm, after the step)
        self._deepspeed_norm = True  # cleared (with one message) when the DeepSpeed engine reports none

    def setup(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if stage == "fit" and self.policy == "skip" and isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError("NonFiniteGuard policy 'skip' is not supported under DeepSpeed (its engine steps its own "
                             "gradient partitions); use policy 'stop'")

    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped), "bad_validations": list(self.bad_validations)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = list(state.get("skipped", []))
        self.bad_validations = list(state.get("bad_validations", []))

    # ----- training ---------------------------------------------------------------------------------------------
    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Kept on the device: one host sync per optimizer step (in on_before_optimizer_step), not per micro batch.
        loss = loss.detach().reshape(-1)[:1]
        bad = ~torch.isfinite(loss)
        if self._bad is None:
            self._bad, self._value = bad, loss
        else:
            self._value = torch.where(self._bad, self._value, loss)
            self._bad = self._bad | bad

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss_bad = bool(self._bad.any()) if self._bad is not None else False
        loss_value = float(self._value) if loss_bad else None
        self._bad = self._value = None
        norm = self._grad_norm(trainer, optimizer)
        if norm is not None:
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        grad_bad = norm is not None and not math.isfinite(norm) and not self._scaler_decides(trainer)
        if not trainer.strategy.reduce_boolean_decision(loss_bad or grad_bad, all=False):
            return
        step = trainer.global_step + 1  # the step being taken, numbered as metrics.json's train_loss numbers it
        what = (f"training loss at global step {step}: {_format(loss_value)}" if loss_bad or not grad_bad
                else f"gradient norm at global step {step}: {_format(norm)}")
        if self.policy == "stop":
            raise NonFiniteError(f"tuneloop fit: non-finite {what}; stopped (NonFiniteGuard policy 'stop'; "
                                 "lower the learning rate, check the data, or set policy 'skip')")
        optimizer.zero_grad(set_to_none=True)  # optimizers skip parameters without a gradient: no update at all
        self.skipped.append(step)
        log.warning(f"non-finite {what}: optimizer step skipped ({len(self.skipped)} skipped so far)")

    @staticmethod
    def _scaler_decides(trainer) -> bool:
        """fp16 mixed precision: the GradScaler skips steps with inf/nan gradients itself (and must see them)."""
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    @staticmethod
    def _grad_norm(trainer, optimizer) -> float | None:
        """The total 2-norm of the gradients the optimizer is about to step (every process's shards together), or
        ``None`` when it holds none (DeepSpeed)."""
        from lightning.pytorch.strategies import FSDPStrategy

        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if isinstance(trainer.strategy, FSDPStrategy):  # FSDP1: flat local shards; every process joins the sum
            local = [_local(g) for g in grads]
            square = (torch.nn.utils.get_total_norm(local, norm_type=2.0).float() ** 2 if local
                      else torch.zeros((), device=trainer.strategy.root_device))
            return float(trainer.strategy.reduce(square, reduce_op="sum").sqrt())
        if not grads:
            return None
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor of partial norms; reduced over the mesh
            norm = norm.full_tensor()
        return float(norm)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """DeepSpeed: log the engine's gradient norm of the step just taken (it computes it before clipping)."""
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if (not self._deepspeed_norm or trainer.global_step == self._step_before
                or not isinstance(trainer.strategy, DeepSpeedStrategy)):
            return
        engine = trainer.strategy.deepspeed_engine
        norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
        if norm is None:
            self._deepspeed_norm = False
            log.info("train/grad_norm is not logged: this DeepSpeed engine reports no gradient norm")
            return
        pl_module.log("train/grad_norm", float(norm), on_step=True, on_epoch=False, batch_size=1)

    # ----- validation -------------------------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        # Runs before every ModelCheckpoint hook (Lightning orders checkpoint callbacks last).
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        keys = {"val/loss"} | {cb.monitor for cb in trainer.checkpoint_callbacks
                               if isinstance(cb, ModelCheckpoint) and cb.monitor}
        metrics = trainer.callback_metrics
        bad = {k: float(metrics[k]) for k in sorted(keys) if k in metrics and not math.isfinite(float(metrics[k]))}
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        step = trainer.global_step
        values = ", ".join(f"{k}={v:g}" for k, v in bad.items()) or "on another process"
        if self.policy == "stop":
            raise NonFiniteError(f"tuneloop fit: non-finite validation at global step {step}: {values}; stopped "
                                 "(NonFiniteGuard policy 'stop')")
        self.bad_validations.append(step)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                # ModelCheckpoint skips a step it has "already saved" (Lightning 2.6, on validation end and on
                # train epoch end): this validation leaves no checkpoint, so it can never be the best one.
                cb._last_global_step_saved = step
        log.warning(f"non-finite validation at global step {step}: {values}; no checkpoint saved from it")

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.bad_validations:
            return
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor and not cb.best_model_path:
                self._record(trainer)
                raise NonFiniteError(
                    f"tuneloop fit: every validation was non-finite (global steps {self.bad_validations}); no "
                    f"checkpoint is best by {cb.monitor} and the final weights are not usable")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # Only after a fit that finished, after every on_fit_end: RunArtifacts has written the fit section by now.
        if stage == "fit":
            self._record(trainer)

    def _record(self, trainer) -> None:
        """Add the skipped steps and non-finite validations to ``metrics.json``'s fit section (rank zero)."""
        if not trainer.is_global_zero:
            return
        import json

        from trainer.callbacks import run_dir, update_metrics_file

        path = run_dir(trainer) / "metrics.json"
        fit = json.loads(path.read_text()).get("fit", {}) if path.exists() else {}
        update_metrics_file(path, "fit", {**fit, "nonfinite_policy": self.policy, "nonfinite_steps": list(self.skipped),
                                          "nonfinite_validations": list(self.bad_validations)})
