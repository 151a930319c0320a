"""Secrets come from the environment and are never written: not into configs, checkpoints, W&B files, logs, run
directories or outputs. A marker key is set, a fit (W&B offline) and an HTTP judge run, and every file they
wrote, and everything they printed, is searched for it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modules.backbone import BackboneSpec
from tests.conftest import ROOT
from tests.trainer.fake_chat import chat  # noqa: F401 (the fixture)

MARKER = "sk-tuneloop-secret-7f3c9a1e"
VALID = '{"closer": "B", "score_a": 2, "score_b": 4, "reason": "B matches the reference."}'


def files_holding(root: Path, marker: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``marker`` (binary files too: checkpoints, W&B's .wandb)."""
    needle = marker.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_wandb_key_never_reaches_the_run_directory_or_the_logs(tmp_path):
    wandb_home = tmp_path / "wandb-home"  # where W&B keeps settings and caches: searched too
    env = {**os.environ, "WANDB_API_KEY": MARKER, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(wandb_home / "config"),
           "WANDB_CACHE_DIR": str(wandb_home / "cache"), "WANDB_DATA_DIR": str(wandb_home / "data")}
    env.pop("TUNELOOP_RUN_VERSION", None)
    env.pop("WANDB_SILENT", None)  # its messages are logs too
    cmd = [sys.executable, "-m", "trainer", "fit", "-c", "configs/encoder/waam-anomaly.yaml", "-c", "configs/debug.yaml",
           f"--run.root={tmp_path / 'runs'}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
           "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
           "-v"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    assert list(run.glob("wandb/offline-run-*")), "W&B ran (offline) into the run directory"
    assert list(run.glob("checkpoints/*.ckpt")) and (run / "config.yaml").exists()
    assert MARKER not in proc.stdout + proc.stderr
    assert files_holding(tmp_path, MARKER) == []


def test_judge_key_is_sent_but_never_written(tmp_path, chat, monkeypatch, capsys):  # noqa: F811
    from trainer.compare.cli import main

    server = chat([(200, VALID)])
    monkeypatch.setenv("TUNELOOP_TEST_JUDGE_KEY", MARKER)
    out = tmp_path / "judgments.jsonl"
    main(["judge", "--answers", str(ROOT / "data/samples/compare/answers.jsonl"), "--a", "base", "--b", "tuned",
          "--out", str(out), "--judge", "http", "--url", server.url, "--judge-model", "judge-7b",
          "--api-key-env", "TUNELOOP_TEST_JUDGE_KEY", "--backoff", "0"])
    assert server.requests and all(r["headers"]["Authorization"] == f"Bearer {MARKER}" for r in server.requests)
    assert len(out.read_text().splitlines()) == 20
    printed = capsys.readouterr()
    assert MARKER not in printed.out + printed.err
    assert files_holding(tmp_path, MARKER) == []

    # An error (the server rejects the key) names the URL and the status, not the key.
    bad = chat([(401, '{"error": "invalid api key"}')])
    with pytest.raises(BaseException) as e:
        main(["judge", "--answers", str(ROOT / "data/samples/compare/answers.jsonl"), "--a", "base", "--b", "tuned",
              "--out", str(tmp_path / "bad.jsonl"), "--judge", "http", "--url", bad.url, "--judge-model", "judge-7b",
              "--api-key-env", "TUNELOOP_TEST_JUDGE_KEY", "--retries", "0", "--backoff", "0"])
    printed = capsys.readouterr()
    assert MARKER not in str(e.value) + printed.out + printed.err
    assert files_holding(tmp_path, MARKER) == []


def test_remote_code_is_off_unless_a_recipe_turns_it_on():
    default = {f.name: f.default for f in dataclasses.fields(BackboneSpec)}["trust_remote_code"]
    assert default is False
    assert BackboneSpec(name_or_path="bert-base-uncased").trust_remote_code is False
    for recipe in (ROOT / "configs").rglob("*.yaml"):
        assert "trust_remote_code: true" not in recipe.read_text().lower(), recipe


def test_no_config_or_script_takes_a_key_as_a_value():
    # Keys are named by environment variable (--api-key-env, WANDB_API_KEY), never given as values.
    for path in [*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "scripts").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"api_key:|--api-key[ =\"']|\bsk-[A-Za-z0-9]{16,}", text), path
