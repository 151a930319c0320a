"""Two real processes (DDP, gloo on CPU): modules assume nothing about being alone.

Each run goes through ``python -m trainer`` because Lightning's launcher re-executes the command for rank 1.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.distributed


def run_ddp(tmp_path, recipe, *extra):
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    cmd = [sys.executable, "-m", "trainer", "fit", "-c", recipe, "-c", "configs/debug.yaml",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", f"--run.root={tmp_path}",
           "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, f"both ranks must write into one run directory, found {runs}"
    return runs[0], proc


def test_encoder_under_ddp(tmp_path):
    run, proc = run_ddp(tmp_path, "configs/encoder/waam-multilabel.yaml", "--trainer.limit_train_batches=4")
    cfg = (run / "config.yaml").read_text()
    assert "devices: '2'" in cfg and "strategy: ddp" in cfg
    rows = [json.loads(l) for l in (run / "predictions.jsonl").read_text().splitlines()]
    # limit_test_batches=4 per rank x micro batch 16 x 2 ranks, gathered on rank 0 without duplicates.
    assert len(rows) == 128 and len({r["id"] for r in rows}) == 128
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["global_step"] == 4  # 4 micro batches per rank, global 32 = 16 x 2 ranks: 1 step each
    assert "test/partial_score" in metrics["test"]["metrics"]


def test_causal_lora_under_ddp_saves_one_loadable_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = run_ddp(tmp_path, "configs/intent/exaone-4.0-1.2b-lora.yaml", "--trainer.limit_train_batches=6")
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    rows = [json.loads(l) for l in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 32  # 4 test batches x 4 x 2 ranks
    assert json.loads((run / "metrics.json").read_text())["test"]["metrics"]["test/loss"] > 0
