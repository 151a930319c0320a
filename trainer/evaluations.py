"""Evaluations of a run, kept side by side: each test of a checkpoint keeps its predictions, per-label table,
plots and metrics, so re-testing a run (another ``prediction_mode``, another checkpoint) never overwrites an
earlier result.

An evaluation is named ``<stage>[-<mode>]-<checkpoint>``: ``test-rank-last`` (``--ckpt_path .../last.ckpt``,
``prediction_mode=rank``), ``test-best-epoch=0-step=3`` (a module without prediction modes), ``test-init``
(no checkpoint: the model as built), ``test-final`` (the post-fit test of the final weights, nothing monitored).

Where its files go: the run's own test (the post-fit test, or the first test of a run that has none, or a
later evaluation of that same name) writes where runs always had it, ``predictions.jsonl``, ``per_label.json``
and ``plots/`` in the run directory and ``metrics.json["test"]``; every other evaluation writes into
``evaluations/<name>/`` (``predictions.jsonl``, ``per_label.json``, ``plots/``). Every evaluation is listed in
``metrics.json["evaluations"][<name>]`` with its stage, checkpoint, step, mode, metrics and files; a later one of
the same name replaces only its own entry and directory.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Evaluation:
    name: str
    stage: str  # "test"
    checkpoint: str | None  # the loaded checkpoint; None: the weights in memory
    mode: str | None  # the module's prediction_mode, when it has one
    run: Path  # the run directory
    top_level: bool  # the run's own test: files in the run directory, metrics.json["test"]

    @property
    def directory(self) -> Path:
        return self.run if self.top_level else self.run / "evaluations" / self.name

    @property
    def predictions(self) -> Path:
        return self.directory / "predictions.jsonl"

    @property
    def plots(self) -> Path:
        """``out_dir`` for the module's ``save_figures`` (which writes ``per_label.json`` beside it)."""
        return self.directory / "plots"


def evaluation_name(stage: str, mode: str | None, checkpoint: str | None, post_fit: bool) -> str:
    ckpt = Path(checkpoint).stem if checkpoint else ("final" if post_fit else "init")
    name = "-".join(part for part in (stage, mode, ckpt) if part)
    return re.sub(r"[^\w.=-]+", "_", name)  # one directory name, whatever the checkpoint is called


def begin(run: Path, stage: str, mode: str | None, checkpoint: str | None, post_fit: bool) -> Evaluation:
    """The evaluation about to run; an older evaluation of the same name has its directory emptied."""
    name = evaluation_name(stage, mode, checkpoint, post_fit)
    path = run / "metrics.json"
    owner = (json.loads(path.read_text()).get(stage) if path.exists() else None) or {}
    top_level = stage == "test" and (post_fit or not owner or owner.get("evaluation") == name)
    evaluation = Evaluation(name, stage, checkpoint, mode, run, top_level)
    if not top_level and evaluation.directory.exists():
        shutil.rmtree(evaluation.directory)
    return evaluation


def record(evaluation: Evaluation, metrics: dict, global_step: int | None, figures: list[Path]) -> None:
    """Note the evaluation's results in ``metrics.json``: its ``evaluations`` entry and, for the run's own test,
    the ``test`` section."""
    from trainer.callbacks import update_metrics_file

    run, path = evaluation.run, evaluation.run / "metrics.json"
    files = {"predictions": evaluation.predictions, "per_label": evaluation.directory / "per_label.json"}
    files = {key: str(p.relative_to(run)) for key, p in files.items() if p.exists()}
    files["plots"] = [str(Path(p).relative_to(run)) for p in figures]
    entry = {"name": evaluation.name, "stage": evaluation.stage, "checkpoint": evaluation.checkpoint,
             "global_step": global_step, "mode": evaluation.mode, "metrics": metrics, "files": files}
    if evaluation.top_level:
        update_metrics_file(path, evaluation.stage, {"metrics": metrics, "checkpoint": evaluation.checkpoint,
                                                     "evaluation": evaluation.name})
    data = json.loads(path.read_text()) if path.exists() else {}
    update_metrics_file(path, "evaluations", {**data.get("evaluations", {}), evaluation.name: entry})
