"""Experiment tracking: Weights & Biases by default, offline when there is no API key.

The key is W&B's own business: it reads ``WANDB_API_KEY`` (or ``~/.netrc`` after ``wandb login``) itself. tuneloop
only asks whether one exists and never passes it on, so it cannot reach a config, a checkpoint, the logged
hyperparameters or the run directory (``tests/trainer/test_secrets.py`` searches every file a run writes).
"""

from __future__ import annotations

import netrc
from pathlib import Path


def wandb_has_credentials(env: dict[str, str]) -> bool:
    """True when W&B can sync: an API key in the environment or in ~/.netrc (``wandb login``)."""
    if env.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline(env: dict[str, str]) -> bool:
    """Offline unless credentials exist and WANDB_MODE does not ask for offline/disabled."""
    if env.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return True
    return not wandb_has_credentials(env)


def wandb_logger_config(run_dir: Path, project: str, experiment: str, version: str, offline: bool,
                        tags: list[str] | None = None, job_type: str | None = None) -> dict:
    """Config of the default WandbLogger: its files live in the run directory; it never prompts. ``tags`` and
    ``job_type`` (``run.tags``, ``run.job_type`` or the command) go to ``wandb.init``. Lightning's own model
    upload stays off (``log_model``): the exported model is uploaded as an artifact by
    ``trainer.wandb_artifacts.WandbArtifacts`` (``run.log_artifacts``)."""
    init_args = {
        "project": project,
        "group": experiment,
        "name": f"{experiment}/{version}",
        "save_dir": str(run_dir),
        "offline": offline,
        "log_model": False,
    }
    if tags:
        init_args["tags"] = list(tags)
    if job_type:
        init_args["job_type"] = job_type
    return {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": init_args}
