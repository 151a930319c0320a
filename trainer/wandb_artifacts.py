"""Weights & Biases artifacts and charts of a run.

With ``run.log_artifacts`` (default: on when W&B runs online, off offline; ``true`` records them in an offline
run too, uploaded by ``wandb sync``) every command logs what it wrote as versioned artifacts, one name per
experiment and kind, aliased with the run version:

=============================== ============ ==========================================================
artifact                        type         content
=============================== ============ ==========================================================
``<experiment>-adapter``        model        ``adapter/`` (PEFT adapter, tokenizer, ``prompt.json``, card)
``<experiment>-model``          model        ``model/`` (standalone transformers model, card), when no adapter
``<experiment>-config``         config       the resolved ``config.yaml`` (``config.<stage>.yaml`` of evaluations)
``<experiment>-predictions``    predictions  a test's ``predictions.jsonl`` (re-tests: ``evaluations/<name>/``)
``<experiment>-predict``        predictions  ``predictions.predict.jsonl``
``<experiment>-cv_summary``     cv_summary   ``cv_summary.json`` and ``.md`` (``tuneloop cv``, a W&B run of its own)
=============================== ============ ==========================================================

An artifact's metadata holds the export record of ``metrics.json`` (checkpoint, step, monitor, score) or its
evaluation (metrics). Only files this command wrote are logged, each once per content; W&B numbers the versions.

Independently of artifacts, a test logs its predictions as the table ``test/predictions`` and, for single-label
predictions (binary, multi-class, generative intent classification), a native ``test/confusion_matrix`` chart
(:func:`log_test_results`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

MAX_TABLE_ROWS = 10_000  # a W&B table of a large test set stays usable; predictions.jsonl keeps every row


def wandb_logger(trainer):
    """The trainer's ``WandbLogger``, or ``None``."""
    from lightning.pytorch.loggers import WandbLogger

    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


def artifacts_enabled(log_artifacts: bool | None, offline: bool) -> bool:
    """``run.log_artifacts``: ``null`` means on when online, off offline."""
    return (not offline) if log_artifacts is None else bool(log_artifacts)


def artifact_name(experiment: str, kind: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{experiment}-{kind}")


def alias(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)


def _signature(path: Path) -> tuple:
    """What changes when a file or a directory's files are rewritten: names, sizes, modification times."""
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in path.rglob("*") if p.is_file()))


def run_artifacts(run: Path, experiment: str) -> list[tuple[str, str, Path, dict]]:
    """The artifacts a run directory holds now: (name, type, path, metadata)."""
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    exports, evaluations = metrics.get("exports") or {}, metrics.get("evaluations") or {}
    found = []
    model = "adapter" if (run / "adapter").is_dir() else "model"
    if (run / model).is_dir():
        found.append((artifact_name(experiment, model), "model", run / model, {"export": exports.get(model)}))
    for config in sorted(run.glob("config*.yaml")):
        found.append((artifact_name(experiment, "config"), "config", config, {"file": config.name}))
    by_file = {entry.get("files", {}).get("predictions"): entry for entry in evaluations.values()}
    for path in [run / "predictions.jsonl", *sorted(run.glob("evaluations/*/predictions.jsonl"))]:
        if path.is_file():
            entry = by_file.get(str(path.relative_to(run))) or {}
            meta = {k: entry.get(k) for k in ("name", "checkpoint", "global_step", "mode", "metrics")}
            found.append((artifact_name(experiment, "predictions"), "predictions", path, meta))
    if (run / "predictions.predict.jsonl").is_file():
        found.append((artifact_name(experiment, "predict"), "predictions", run / "predictions.predict.jsonl",
                      {"predict": metrics.get("predict")}))
    return found


class WandbArtifacts(Callback):
    """Logs the artifacts of :func:`run_artifacts` that this command wrote or rewrote, at the end of fit, test,
    predict and validate (after the exports, metrics and predictions of that stage), on rank zero, when the
    trainer logs to W&B and ``log_artifacts`` (``run.log_artifacts``) is on.

    Args:
        log_artifacts: ``True``/``False``, or ``None``: on when the W&B run is online.
        experiment: Names the artifacts (``<experiment>-<kind>``).
        version: The run version, each artifact's alias.
    """

    def __init__(self, log_artifacts: bool | None = None, experiment: str = "default", version: str = "") -> None:
        self.log_artifacts, self.experiment, self.version = log_artifacts, experiment, version
        self._since_ns = time.time_ns()  # files older than this command are not its own
        self._logged: dict[Path, tuple] = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.log_new(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self.log_new(trainer)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.log_new(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self.log_new(trainer)

    def log_new(self, trainer) -> list[str]:
        """Log every artifact written or changed since this command started and not yet logged; their names."""
        if not trainer.is_global_zero:
            return []
        logger = wandb_logger(trainer)
        if logger is None:
            return []
        experiment = logger.experiment
        if experiment.disabled or not artifacts_enabled(self.log_artifacts, experiment.offline):
            return []
        import wandb

        logged = []
        for name, kind, path, metadata in run_artifacts(Path(trainer.default_root_dir), self.experiment):
            signature = _signature(path)
            if not signature or self._logged.get(path) == signature or max(s[2] for s in signature) < self._since_ns:
                continue
            artifact = wandb.Artifact(name, type=kind, metadata=_json_safe({"run_version": self.version, **metadata}))
            if path.is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path), name=path.name)
            aliases = [alias(self.version)] if self.version else []
            weights = (metadata.get("export") or {}).get("weights")
            if weights:
                aliases.append(weights)
            experiment.log_artifact(artifact, aliases=aliases)
            self._logged[path] = signature
            logged.append(f"{name}:{path.name}")
        return logged


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def _cell(value):
    """A W&B table cell: scalars as they are, lists and dicts as JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False)


def log_test_results(trainer, rows: list[dict]) -> None:
    """A test's prediction rows (``predictions.jsonl``) as the W&B table ``test/predictions`` (the first
    :data:`MAX_TABLE_ROWS`) and, when every labelled row has one predicted and one true label, the native chart
    ``test/confusion_matrix`` (classes: the labels seen, sorted; rows without a prediction, a diverged model's,
    are left out). Rank zero, W&B loggers only."""
    logger = wandb_logger(trainer)
    if logger is None or not rows or not trainer.is_global_zero:
        return
    import wandb

    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows[:MAX_TABLE_ROWS]])
    payload = {"test/predictions": table}
    labelled = [row for row in rows if "target" in row]
    pairs = [(row["target"], row["pred"]) for row in labelled if row.get("pred") is not None]
    if pairs and all(isinstance(row["target"], str) and isinstance(row.get("pred"), (str, type(None)))
                     for row in labelled):
        names = sorted({t for t, _ in pairs} | {p for _, p in pairs})
        index = {n: i for i, n in enumerate(names)}
        payload["test/confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=[index[t] for t, _ in pairs], preds=[index[p] for _, p in pairs], class_names=names,
            title="test confusion matrix")
    logger.log_metrics(payload, step=trainer.global_step)


def log_cv_summary(spec, out_dir: Path, folds: int, summary: dict, offline: bool) -> Path | None:
    """``tuneloop cv``: ``cv_summary.json``/``.md`` as the artifact ``<experiment>-cv_summary`` of a W&B run of its
    own (job type ``cv`` unless ``run.job_type``; its files in ``<cv dir>/wandb``), with the fold means in its
    summary, when ``spec.log_artifacts`` (``run.*`` of the folds) allows it. Returns the W&B run directory."""
    if not artifacts_enabled(spec.log_artifacts, offline):
        return None
    import wandb

    version = out_dir.name
    run = wandb.init(project=spec.project, group=spec.experiment, name=f"{spec.experiment}/{version}",
                     job_type=spec.job_type or "cv", tags=list(spec.tags or []) or None, dir=str(out_dir),
                     mode="offline" if offline else "online", config={"folds": folds}, reinit="create_new")
    try:
        run.summary.update({f"cv/{key}_mean": s["mean"] for key, s in summary.items() if s["mean"] is not None})
        artifact = wandb.Artifact(artifact_name(spec.experiment, "cv_summary"), type="cv_summary",
                                  metadata=_json_safe({"folds": folds, "metrics": summary}))
        for name in ("cv_summary.json", "cv_summary.md"):
            artifact.add_file(str(out_dir / name), name=name)
        run.log_artifact(artifact, aliases=[alias(version)])
        return Path(run.dir).parent
    finally:
        run.finish()
