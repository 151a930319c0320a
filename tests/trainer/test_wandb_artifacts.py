"""W&B: what a run records for upload. The binary debug fit of ``test_encoder_export.py`` ran with W&B offline,
``run.log_artifacts=true`` and ``run.tags``; its offline transaction log (``run-<id>.wandb``: what ``wandb sync``
uploads) is read here record by record. The model, the resolved config and the predictions are artifacts whose
files are the run's own (same MD5); the tags and job type are the recipe's; the config holds the hyperparameters
once; the test logged a native confusion matrix and a predictions table. ``tuneloop cv``'s summary goes into a W&B
run of its own, only when artifacts are on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.trainer.test_encoder_export import fit_encoder_runs

BLOCK = 32768  # W&B's transaction log is LevelDB-log framed: 7-byte file header, 32 KiB blocks, 7-byte record headers


def read_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, records, pos, chunk = path.read_bytes(), [], 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if pos + 7 + length > len(raw):  # still being written
            break
        chunk += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
        elif kind == 0:
            chunk = b""
    return records


def offline_run(directory: Path, timeout: float = 60.0) -> tuple[Path, list]:
    """The offline run's directory and records. ``finish()`` returns before W&B's writer process has flushed the
    log, so it is read until its closing ``exit`` record is there."""
    (files,) = directory.glob("wandb/offline-run-*")
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(next(files.glob("run-*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return files, records
        time.sleep(0.1)


def of_kind(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


@pytest.fixture(scope="session")
def binary_run(tmp_path_factory) -> Path:
    """The binary fit of ``test_encoder_export.py`` (W&B offline, ``run.log_artifacts=true``, tags)."""
    return fit_encoder_runs(tmp_path_factory)["binary"]


def md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.slow
def test_offline_run_records_the_model_config_and_predictions_as_artifacts(binary_run):
    run = binary_run
    _, records = offline_run(run)
    ours = {a.name: a for a in of_kind(records, "artifact") if a.type != "run_table"}
    # Each once: the model when the post-fit test has written it and its card, the config at the end of fit.
    assert sorted(a.name for a in of_kind(records, "artifact") if a.type != "run_table") == sorted(ours)
    assert {name: a.type for name, a in ours.items()} == {"breast-cancer-binary-model": "model",
                                                          "breast-cancer-binary-config": "config",
                                                          "breast-cancer-binary-predictions": "predictions"}
    model = ours["breast-cancer-binary-model"]
    files = {e.path: e for e in model.manifest.contents}
    assert set(files) == {p.name for p in (run / "model").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    for name, entry in files.items():  # what sync uploads: the exported files, staged as they were
        assert entry.digest == md5(run / "model" / name) == md5(Path(entry.local_path)), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(model.metadata)["export"] == metrics["exports"]["model"]
    assert {"binary", "best"} <= set(model.aliases)
    (config,) = ours["breast-cancer-binary-config"].manifest.contents
    assert (config.path, config.digest) == ("config.yaml", md5(run / "config.yaml"))
    predictions = ours["breast-cancer-binary-predictions"]
    (rows,) = predictions.manifest.contents
    assert (rows.path, rows.digest) == ("predictions.jsonl", md5(run / "predictions.jsonl"))
    assert json.loads(predictions.metadata)["metrics"] == metrics["test"]["metrics"]


@pytest.mark.slow
def test_tags_job_type_and_hyperparameters_once(binary_run):
    run = binary_run
    _, records = offline_run(run)
    (wandb_run,) = of_kind(records, "run")
    assert list(wandb_run.tags) == ["smoke", "encoder"] and wandb_run.job_type == "fit"
    assert wandb_run.run_group == "breast-cancer-binary"
    config = {}
    for update in of_kind(records, "config"):
        config.update({item.key: json.loads(item.value_json) for item in update.update if item.key not in ("", "_wandb")})
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    # The resolved config only: the module's arguments are not logged a second time at the top level.
    assert set(config) == set(resolved) and "backbone" not in config and "threshold" not in config
    assert config["model"] == resolved["model"] and config["run"]["tags"] == ["smoke", "encoder"]


@pytest.mark.slow
def test_test_logs_a_native_confusion_matrix_and_the_predictions_table(binary_run):
    run = binary_run
    files, _ = offline_run(run)
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    (matrix,) = (files / "files" / "media" / "table" / "test").glob("confusion_matrix_table_*.table.json")
    table = json.loads(matrix.read_text())
    assert table["columns"] == ["Actual", "Predicted", "nPredictions"]
    counts = Counter((r["target"], r["pred"]) for r in rows)
    assert {(a, p): n for a, p, n in table["data"]} == {(a, p): float(counts[a, p])
                                                       for a in ("benign", "malignant") for p in ("benign", "malignant")}
    (logged,) = (files / "files" / "media" / "table" / "test").glob("predictions_*.table.json")
    table = json.loads(logged.read_text())
    assert table["columns"] == ["id", "pred", "prob", "target"]
    assert table["data"] == [[r["id"], r["pred"], r["prob"], r["target"]] for r in rows]


def test_cv_summary_is_an_artifact_of_its_own_run_when_artifacts_are_on(tmp_path, monkeypatch):
    from trainer.run import RunSpec
    from trainer.wandb_artifacts import log_cv_summary

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    out = tmp_path / "cv-1"
    out.mkdir()
    summary = {"val/f1": {"folds": [0.5, 0.7], "mean": 0.6, "std": 0.1414}}
    (out / "cv_summary.json").write_text(json.dumps({"folds": 2, "metrics": summary}))
    (out / "cv_summary.md").write_text("| metric |\n")
    # Offline, with run.log_artifacts left at null: nothing is logged.
    assert log_cv_summary(RunSpec(experiment="exp"), out, 2, summary, offline=True) is None
    assert not (out / "wandb").exists()
    spec = RunSpec(experiment="exp", log_artifacts=True, tags=["cv"])
    assert log_cv_summary(spec, out, 2, summary, offline=True) is not None
    _, records = offline_run(out)
    (wandb_run,) = of_kind(records, "run")
    assert wandb_run.job_type == "cv" and list(wandb_run.tags) == ["cv"] and wandb_run.display_name == "exp/cv-1"
    (artifact,) = of_kind(records, "artifact")
    assert (artifact.name, artifact.type) == ("exp-cv_summary", "cv_summary") and "cv-1" in artifact.aliases
    assert {e.path: e.digest for e in artifact.manifest.contents} == {
        "cv_summary.json": md5(out / "cv_summary.json"), "cv_summary.md": md5(out / "cv_summary.md")}
    assert json.loads(artifact.metadata)["metrics"] == summary
