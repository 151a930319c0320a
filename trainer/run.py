"""The run directory: ``runs/<experiment>/<version>/``, how every process agrees on it, and how runs never
overwrite each other.

``fit`` refuses a directory that holds an earlier run unless it resumes that run (``--ckpt_path`` inside it, or
``last``) or ``run.overwrite`` is set; a checkpoint is checked before anything is built or written; and a
start that fails before training leaves the directory as it found it (:class:`RunDirGuard`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

VERSION_ENV = "TUNELOOP_RUN_VERSION"
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")


class RunDirError(ValueError):
    """``fit`` was pointed at a directory that holds an earlier run, and it is no resume of that run."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class CheckpointError(ValueError):
    """``--ckpt_path`` names no complete checkpoint (missing, empty, truncated, not a checkpoint)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass
class RunSpec:
    """Where a run's artifacts go and what happens after ``fit``.

    Args:
        experiment: Experiment name: ``runs/<experiment>/``; also the W&B group.
        version: Run version (``runs/<experiment>/<version>/``); default: a timestamp (or the launcher's
            run id under torchrun/SLURM so that every node agrees).
        root: Root directory of all runs.
        project: Weights & Biases project.
        test_after_fit: After ``fit``, run ``test`` on the best checkpoint (needs ``data.test_file``).
        overwrite: Let ``fit`` replace a run directory that holds an earlier run (an existing ``version``). The
            earlier run is moved aside while the new one runs, put back if the new one fails before its first
            optimizer step, and deleted when the command ends otherwise. Without it such a ``fit`` stops, unless
            it resumes that run (``--ckpt_path`` inside it, or ``last``).
        log_artifacts: Upload the exported adapter (else the model), the resolved config, the predictions and the
            cv summary to W&B as versioned artifacts (``<experiment>-adapter``, ``-model``, ``-config``,
            ``-predictions``, ``-predict``, ``-cv_summary``). ``null`` = when W&B runs online; ``true`` also
            records them in an offline run (uploaded by ``wandb sync``).
        tags: W&B tags of the run.
        job_type: W&B job type; ``null`` = the command (``fit``, ``test``, ``predict``, ``validate``).
    """

    experiment: str = "default"
    version: str | None = None
    root: str = "runs"
    project: str = "tuneloop"
    test_after_fit: bool = False
    overwrite: bool = False
    log_artifacts: bool | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str | None = None


def resolve_version(requested: str | None, root: Path, env: dict[str, str]) -> str:
    """The run version all processes of one launch agree on.

    Explicit wins; then the launcher's job id (torchrun ``--rdzv-id``, SLURM job id), then the version the
    parent process chose (Lightning's subprocess launcher copies the environment to its children), then a
    new timestamp, made unique under ``root``.
    """
    if requested:
        return requested
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"run-{run_id}"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}"
    if int(env.get("LOCAL_RANK", "0")) > 0 and env.get(VERSION_ENV):
        return env[VERSION_ENV]
    base = time.strftime("%Y%m%d-%H%M%S")
    version, n = base, 1
    while (root / version).exists():
        version, n = f"{base}-{n}", n + 1
    return version


def run_dir_from_checkpoint(ckpt_path: str | None) -> Path | None:
    """``runs/e/v`` for a checkpoint at ``runs/e/v/checkpoints/x.ckpt`` (evaluate into the run it came from)."""
    if not ckpt_path or ckpt_path in ("best", "last", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def publish_version(version: str) -> None:
    """Make the version visible to processes this one launches (DDP children)."""
    os.environ[VERSION_ENV] = version


def is_launch_leader(env: dict[str, str]) -> bool:
    """Whether this process is global rank zero of its launch (the one that checks and cleans the run directory):
    torchrun's ``RANK``, SLURM's ``SLURM_PROCID``, and ``LOCAL_RANK`` of the processes Lightning launches."""
    return all(int(env.get(key) or 0) == 0 for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


# What every Lightning checkpoint holds (``Trainer.save_checkpoint``), and what a fit resumes from beyond the
# weights (absent from a ``ModelCheckpoint(save_weights_only=True)`` checkpoint).
CHECKPOINT_KEYS = ("pytorch-lightning_version", "state_dict")
RESUME_KEYS = ("optimizer_states", "lr_schedulers")
FOREIGN_HINT = ("--ckpt_path takes a checkpoint that tuneloop fit wrote (runs/<experiment>/<version>/checkpoints/"
                "*.ckpt); pretrained weights go in model.backbone.name_or_path")


def check_checkpoint(ckpt_path: str | None, stage: str = "fit") -> None:
    """Refuse, before anything is built or written, a ``--ckpt_path`` file that is missing, empty, truncated or no
    Lightning checkpoint (a safetensors file, a ``torch.save`` of another dict: named with what it lacks), and for
    ``fit`` a weights-only one (nothing to resume). Lightning's names (``best``, ``last``...), remote URLs and
    directories (sharded and DeepSpeed checkpoints) are left to Lightning."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES or "://" in ckpt_path:
        return
    path = Path(ckpt_path)
    if path.is_dir():
        return
    hint = "pick another checkpoint of the run (checkpoints/last.ckpt or best-*.ckpt); an interrupted copy or " \
           "save leaves a short file"
    if not path.exists():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"--ckpt_path {path}: the file is empty (0 bytes)", hint)
    with path.open("rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":  # torch.save's zip format: its directory is at the very end, so a cut file has none
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"--ckpt_path {path}: truncated checkpoint ({size} bytes, the end of the file is "
                                  "missing)", hint)
        _check_contents(path, stage)
    elif len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < size:
        # safetensors: an 8-byte header length, then the JSON header
        raise CheckpointError(f"--ckpt_path {path}: a safetensors file (tensors only), not a Lightning checkpoint: "
                              f"it has no {' or '.join(map(repr, CHECKPOINT_KEYS))}", FOREIGN_HINT)
    elif head[:1] != b"\x80":  # nor a legacy (pickle) checkpoint
        raise CheckpointError(f"--ckpt_path {path}: not a PyTorch checkpoint (it starts with {head[:2]!r})", hint)


def _check_contents(path: Path, stage: str) -> None:
    """The keys of a zip-format checkpoint, read memory-mapped (its tensors stay on disk). A file that does not load
    with ``weights_only=True`` is left to Lightning (a configured ``CheckpointIO`` may load it otherwise)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not this check's to report
        return
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"--ckpt_path {path}: not a Lightning checkpoint: it holds a {type(checkpoint).__name__}"
                              f", not a dict with {' and '.join(map(repr, CHECKPOINT_KEYS))}", FOREIGN_HINT)
    keys = sorted(map(str, checkpoint))
    found = f"{', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" if keys else "none"
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"--ckpt_path {path}: not a Lightning checkpoint: it has no "
                              f"{' or '.join(map(repr, missing))} (its keys: {found})", FOREIGN_HINT)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    if stage == "fit" and missing:
        raise CheckpointError(f"--ckpt_path {path}: a weights-only checkpoint (no {' or '.join(map(repr, missing))}): "
                              "a fit cannot resume from it",
                              "resume from a full checkpoint (ModelCheckpoint save_weights_only: false), or "
                              "evaluate this one with tuneloop test")


def _holds_files(directory: Path) -> bool:
    return directory.is_dir() and any(p.is_file() for p in directory.rglob("*"))


def _inside(ckpt_path: str | None, directory: Path) -> bool:
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES or "://" in ckpt_path:
        return False
    return directory.resolve() in Path(ckpt_path).resolve().parents


def check_fit_target(out: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """``fit`` into ``out``: fine when it is new or empty, a resume of the run in it, or ``overwrite`` is set;
    else :class:`RunDirError`."""
    if overwrite or not _holds_files(out) or ckpt_path == "last" or _inside(ckpt_path, out):
        return
    found = ", ".join(sorted(p.name for p in out.iterdir())[:6])
    raise RunDirError(f"run directory {out} already holds a run ({found}); fit never writes over another run",
                      f"choose another --run.version (or leave it out for a new one), resume that run with "
                      f"--ckpt_path {out / 'checkpoints' / 'last.ckpt'}, or replace it with --run.overwrite=true")


KEEP_BYTES = 1 << 20  # files up to this size are kept in memory and restored after a failed start (configs, metrics)


@dataclass
class RunDirGuard:
    """What a run directory held before this launch, so that a start which fails before training leaves it as it
    was: what the launch added is removed (the directory and its new parents too when the launch made them), small
    files it rewrote (``config.yaml``, ``metrics.json``...) get their bytes back, and an earlier run that
    ``run.overwrite`` moved aside is put back. A resumed fit that fails after training more steps keeps them, but
    ``config.yaml`` stays the earlier run's (the resume wrote its own at the start). Used on global rank zero only.

    Attributes:
        out: The run directory.
        before: Paths (relative to ``out``) that existed before the launch.
        kept: The bytes of its files up to :data:`KEEP_BYTES` (checkpoints are larger, and a start never writes them).
        made: The directories the launch may create: ``out`` and its parents that did not exist.
        replaced: Where ``run.overwrite`` moved the earlier run (deleted by :meth:`close`).
        resume: The launch resumes the run in ``out`` (a fit from a checkpoint inside it).
    """

    out: Path
    before: set[str] = field(default_factory=set)
    kept: dict[str, bytes] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)
    replaced: Path | None = None
    resume: bool = False

    @classmethod
    def open(cls, out: Path, overwrite: bool = False, resume_from: str | None = None) -> "RunDirGuard":
        """Snapshot ``out``; with ``overwrite``, first move an earlier run in it aside
        (``.<version>.replaced-<pid>``). ``resume_from``: the checkpoint a fit starts from."""
        replaced = None
        if overwrite and _holds_files(out):
            replaced = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(replaced)
        made = [p for p in (out, *out.parents) if not p.exists()]
        paths = list(out.rglob("*")) if out.is_dir() else []
        small = [p for p in paths if p.is_file() and p.stat().st_size <= KEEP_BYTES]
        kept = {str(p.relative_to(out)): p.read_bytes() for p in small}
        return cls(out, {str(p.relative_to(out)) for p in paths}, kept, made, replaced,
                   resume=not overwrite and _inside(resume_from, out))

    def failed(self, started: bool) -> None:
        """After an exception. ``started``: this launch took an optimizer step, so what it wrote stays (and replaces
        the earlier run); a resume gets the earlier run's ``config.yaml`` back all the same."""
        if started:
            if self.resume and "config.yaml" in self.kept:
                (self.out / "config.yaml").write_bytes(self.kept["config.yaml"])
            self.close()
            return
        _finish_wandb()
        if self.out in self.made:
            shutil.rmtree(self.out, ignore_errors=True)
        elif self.out.is_dir():
            added = sorted((p for p in self.out.rglob("*") if str(p.relative_to(self.out)) not in self.before),
                           key=lambda p: len(p.parts), reverse=True)
            for path in added:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            for name, data in self.kept.items():
                path = self.out / name
                if not path.is_file() or path.read_bytes() != data:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
        for parent in self.made[1:]:
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        if self.replaced is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.replaced.rename(self.out)
            self.replaced = None

    def close(self) -> None:
        """The command ended after training began (or without failing): the run ``run.overwrite`` moved aside goes."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None


def _finish_wandb() -> None:
    """End a W&B run this process started (its files are about to be removed); nothing when W&B is not in use."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)
