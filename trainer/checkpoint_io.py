"""Checkpoint files that a kill, a full disk or a power cut cannot corrupt, and loading without pickled code.

:func:`atomic_write` writes a file into a hidden temporary beside it (same directory, hence same filesystem),
flushes and fsyncs it, renames it over the target (``os.replace``: atomic on POSIX) and fsyncs the directory.
A reader, or a process killed at any moment, sees the previous file or the new one, never half of one.
(Lightning's own ``_atomic_save`` builds the whole checkpoint in memory, writes it to the system temporary
directory and moves it, which is a copy when ``/tmp`` is another filesystem, and never fsyncs.)

:class:`AtomicCheckpointIO` is the CLI's checkpoint IO (``use_atomic_checkpoints``). What it covers: every
checkpoint Lightning writes through the strategy's ``CheckpointIO`` (single device, DDP, the ``fsdp`` preset
with its default full checkpoint on rank 0, ``fsdp1`` with full state dicts). Not covered: DeepSpeed (the
engine writes its own directory of shards) and distributed checkpoints (``save_distributed_checkpoint=True``,
torch.distributed.checkpoint writes one file per rank). Loading uses ``torch.load(weights_only=True)`` unless
the caller asks otherwise: a checkpoint cannot run code when it is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """The hidden temporary a write of ``path`` goes through: ``.<name>.tmp-<pid>`` beside it (no ``.ckpt``
    suffix, so checkpoint globs never pick it up)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by a process killed while writing it (only one process writes a given file)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(binary_file)`` atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """``torch.save(checkpoint)`` to ``path`` atomically, streamed to the file (no second copy in memory)."""
    atomic_write(path, lambda f: torch.save(checkpoint, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, fsynced local writes and ``weights_only=True`` loading by
    default. Remote paths (``s3://...``) keep Lightning's fsspec transaction."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


def use_atomic_checkpoints(trainer) -> None:
    """Give ``trainer``'s strategy :class:`AtomicCheckpointIO` where it uses Lightning's default IO; a
    ``CheckpointIO`` plugin the config names (e.g. ``AsyncCheckpointIO``) is left as it is."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
