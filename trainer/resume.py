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


class ResumeState(Callback):
    """What a resumed fit needs beyond what Lightning saves (weights, optimizer, scheduler, loop counters) and the
    DataModule's training position, so that it continues exactly as the uninterrupted fit would:

    * every process's random states (dropout masks, ...) go into each checkpoint and are restored when the
      resumed fit starts training;
    * the first trained micro batch is checked to be the one where the train sampler resumed
      (``TuneloopDataModule.resumed_at``): Lightning's ``batch_idx`` and the data must agree;
    * a ``ModelCheckpoint(train_time_interval=...)`` is held back inside a gradient-accumulation window (a
      checkpoint cannot hold the partial gradient), so a timed checkpoint lands on an optimizer-step boundary.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._restore: list[dict] | None = None
        self._check_position = False
        self._held: list[tuple[ModelCheckpoint, float]] = []

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
        # After the train loader is built (building its iterator draws from torch's generator), before the first
        # step; what the uninterrupted fit did between saving and its next step happens here again.
        states, self._restore = self._restore, None
        if states is None:
            return
        self._check_position = True
        if len(states) != trainer.world_size:
            rank_zero_warn(f"the checkpoint holds the random states of {len(states)} processes, this fit runs "
                           f"{trainer.world_size}: random states are not restored (dropout masks will differ)")
            return
        set_rng_states(states[trainer.global_rank])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for callback, last_checked in self._held:
            callback._last_time_checked = last_checked
        self._held = []
        if not self._check_position:
            return
        self._check_position = False
        data = trainer.datamodule
        expected = data.resumed_at if isinstance(data, TuneloopDataModule) else None
        if expected is not None and (trainer.current_epoch, batch_idx) != expected:
            raise RuntimeError(f"resumed at epoch {trainer.current_epoch} micro batch {batch_idx}, but the train "
                               f"sampler resumed at epoch {expected[0]} micro batch {expected[1]}: the resumed "
                               "fit would not see the samples the interrupted one had left")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Checkpoint callbacks run after this one (Lightning orders them last). ModelCheckpoint saves on time
        # when its clock (``_last_time_checked``, Lightning 2.6) has run out; hide the clock inside the window.
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 >= trainer.num_training_batches:
            return
        for callback in trainer.checkpoint_callbacks:
            if (isinstance(callback, ModelCheckpoint) and callback._train_time_interval is not None
                    and callback._last_time_checked is not None):
                self._held.append((callback, callback._last_time_checked))
                callback._last_time_checked = None


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
