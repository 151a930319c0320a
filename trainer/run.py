"""The run directory: ``runs/<experiment>/<version>/`` and how every process agrees on it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

VERSION_ENV = "TUNELOOP_RUN_VERSION"


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
    """

    experiment: str = "default"
    version: str | None = None
    root: str = "runs"
    project: str = "tuneloop"
    test_after_fit: bool = False


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
