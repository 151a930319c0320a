"""Exact resume, trainer side: what a checkpoint needs beyond Lightning's own state and the DataModule's training
position (``datamodules/base.py``), so that a fit killed mid-epoch and resumed trains as if never interrupted.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import TuneloopDataModule
from trainer.callbacks import gather_objects


def rng_states() -> dict:
    """This process's random states (torch CPU and CUDA, numpy, Python) as tensors and plain values, so that a
    checkpoint holding them still loads with ``torch.load(weights_only=True)``."""
    import random

    import numpy as np

    key, mt, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    states = {"torch": torch.get_rng_state(),
              "numpy": {"key": key, "state": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)},
              "python": {"version": version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device (Lightning sets it per rank)
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])


def trained_steps(trainer: pl.Trainer | None) -> int:
    """Optimizer steps this launch took: a resumed fit starts at its checkpoint's step (``ResumeState`` notes where
    training started); 0 when training never started."""
    if trainer is None:
        return 0
    state = next((c for c in trainer.callbacks if isinstance(c, ResumeState)), None)
    start = 0 if state is None else state.started_at
    return 0 if start is None else trainer.global_step - start


class ResumeState(Callback):
    """What a resumed fit needs beyond what Lightning saves (weights, optimizer, scheduler, loop counters) and the
    DataModule's training position, so that it continues exactly as the uninterrupted fit would:

    * every process's random states (dropout masks, ...) go into each checkpoint and are restored just before the
      resumed fit's first training step (after every ``on_train_start`` hook: one that draws random numbers there
      drew them before the checkpoint in the uninterrupted fit, and would shift the resumed fit's stream);
    * the first trained micro batch is checked to be the one where the train sampler resumed
      (``TuneloopDataModule.resumed_at``): Lightning's ``batch_idx`` and the data must agree;
    * no ``ModelCheckpoint`` saves inside a gradient-accumulation window (a checkpoint cannot hold the partial
      gradient): a ``train_time_interval`` that comes due there is held until the window closes, and an
      ``every_n_train_steps`` one does not save its step again there. (Lightning skips a step it has saved
      already, but a resumed fit has saved none: on the first micro batch after a mid-epoch resume it would
      write the resumed step again, mid-window, as ``step-step=N-v1.ckpt`` and ``last.ckpt``, and a fit killed
      before the window closed would resume from it with a micro batch lost.)
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._restore: list[dict] | None = None  # every process's random states, from the checkpoint
        self._states: dict | None = None  # this process's, set at the first step of the resumed fit
        self._check_position = False
        self._held: list[tuple[ModelCheckpoint, float | None, int]] = []  # (callback, its clock, its last step)
        self.started_at: int | None = None  # the global step training started at (after a restore)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        if isinstance(trainer.datamodule, TuneloopDataModule):
            # Lightning warns that a plain DataLoader cannot resume inside an epoch; the DataModule's sampler does.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def state_dict(self) -> dict:
        # Called on every process while a checkpoint is written (rank zero writes it): gather all ranks' states.
        if self._trainer is None:
            return {}
        return {"rng": gather_objects(self._trainer, rng_states())}

    def load_state_dict(self, state: dict) -> None:
        self._restore = state.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.started_at is None:
            self.started_at = trainer.global_step
        states, self._restore = self._restore, None
        if states is None:
            return
        self._check_position = True
        if len(states) != trainer.world_size:
            rank_zero_warn(f"the checkpoint holds the random states of {len(states)} processes, this fit runs "
                           f"{trainer.world_size}: random states are not restored (dropout masks will differ)")
            return
        self._states = states[trainer.global_rank]

    def _release(self) -> None:
        for callback, last_checked, last_step in self._held:
            callback._last_time_checked, callback._last_global_step_saved = last_checked, last_step
        self._held = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self._release()  # a validation inside the window saves (or not) as Lightning decides

    def on_train_end(self, trainer, pl_module) -> None:
        self._release()  # a fit stopped inside a window (max_time): FinalLastCheckpoint still sees what was saved

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._release()
        if not self._check_position:
            return
        self._check_position = False
        if self._states is not None:
            # The train loader's iterator exists (building it draws from torch's generator) and its first batch is
            # fetched: what the uninterrupted fit did between saving and this step happens here again.
            set_rng_states(self._states)
            self._states = None
        data = trainer.datamodule
        expected = data.resumed_at if isinstance(data, TuneloopDataModule) else None
        if expected is not None and (trainer.current_epoch, batch_idx) != expected:
            raise RuntimeError(f"resumed at epoch {trainer.current_epoch} micro batch {batch_idx}, but the train "
                               f"sampler resumed at epoch {expected[0]} micro batch {expected[1]}: the resumed "
                               "fit would not see the samples the interrupted one had left")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Checkpoint callbacks run after this one (Lightning orders them last). Inside the window (Lightning 2.6):
        # ModelCheckpoint saves on time when its clock (``_last_time_checked``) has run out: hide the clock; it
        # saves on steps unless it saved this global step already (``_last_global_step_saved``): say it did.
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 >= trainer.num_training_batches:
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                self._held.append((callback, callback._last_time_checked, callback._last_global_step_saved))
                if callback._train_time_interval is not None:
                    callback._last_time_checked = None
                callback._last_global_step_saved = trainer.global_step


class FinalLastCheckpoint(Callback):
    """``last.ckpt`` holds the final state of every fit (weights, optimizer, loop counters, callback states), so
    ``tuneloop test|predict --ckpt_path .../last.ckpt`` evaluates the final weights and ``--ckpt_path last``
    resumes from the end.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only in a hook where it has just
    saved a top-k checkpoint ("only save last checkpoint if a checkpoint was actually saved in this step"), and
    its ``on_train_end`` only when it never saved anything. With a monitor, once the metric stops improving (or
    the last epoch's steps run without a validation after them), ``last.ckpt`` stays at the best checkpoint's
    step. At the end of training, each such callback whose latest save is older than the final step writes its
    last checkpoint again (a file of its own also under ``save_last="link"``, whose link would name the older
    top-k file). Every rank calls it (saving gathers per-rank state); rank zero writes.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        for callback in trainer.checkpoint_callbacks:
            # ``_last_global_step_saved``, ``_last_checkpoint_saved``, ``_monitor_candidates`` and
            # ``_save_last_checkpoint``: Lightning 2.6 (every top-k save there is followed by a last save)
            if (not isinstance(callback, ModelCheckpoint) or not callback.save_last
                    or callback._last_global_step_saved == trainer.global_step or trainer.fast_dev_run):
                continue
            callback._last_checkpoint_saved = ""  # "link" mode: write a file, do not link the older top-k one
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
