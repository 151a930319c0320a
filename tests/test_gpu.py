"""The GPU checks (scripts/gpu_check.py): each job as a test marked ``gpu``, skipped with a reason without CUDA; and
on any machine, the script's parts that need no GPU (job list, dry run, the plan-vs-memory arithmetic, the report).

    pytest -m gpu tests/test_gpu.py        # on a machine with a CUDA GPU (or: make gpu-check)
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_script

gpu_check = load_script("gpu_check")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("job", gpu_check.JOBS)
def test_gpu_job(job, tmp_path):
    out = tmp_path / "report.json"
    code = gpu_check.main(["--only", job, "--out", str(out), "--budget", "1e9"])
    report = json.loads(out.read_text())
    result = report["jobs"][job]
    assert result["ok"], json.dumps(result, indent=1)[-4000:]
    assert code == 0


def test_the_job_list_covers_every_single_gpu_preset_and_the_dry_run_names_them(capsys):
    assert [j for j in gpu_check.JOBS if j.startswith("preset:")] == [
        "preset:ddp", "preset:fsdp", "preset:fsdp1", "preset:deepspeed_zero2", "preset:deepspeed_zero3",
        "preset:deepspeed_zero3_offload"]
    assert gpu_check.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == gpu_check.JOBS
    assert all("--trainer.precision=bf16-mixed" in line for line in lines if line.startswith(("preset", "qlora")))
    assert "--trainer.strategy=deepspeed_zero3_offload" in lines[5]


def test_the_plan_check_brings_its_measurement_along():
    assert gpu_check.select("plan:exaone") == ["bench:exaone", "plan:exaone"]
    assert gpu_check.select("qlora,preset:ddp") == ["preset:ddp", "qlora"]
    with pytest.raises(SystemExit):
        gpu_check.select("preset:zero9")


def test_plan_against_measured_memory():
    gib = 2 ** 30
    plan = {"strategies": {"ddp": {"bytes": {"total": int(5.5 * gib), "overhead": int(1.5 * gib)}}}}
    steps = [{"max_memory_allocated": 9 * gib}, {"max_memory_allocated": 5 * gib, "device_used": 6 * gib},
             {"max_memory_allocated": int(4.8 * gib), "device_used": 6 * gib}]
    result = gpu_check.plan_vs_measured(plan, steps)  # the first step (load transients) is left out
    assert result["max_memory_allocated_gib"] == 5.0 and result["rel_error"] == 0.1 and result["ok"]
    assert result["rel_error_without_overhead"] == -0.2
    assert result["rel_error_vs_device_used"] == round(-0.5 / 6, 4)
    assert not gpu_check.plan_vs_measured(plan, [{}, {}])["ok"]


def test_the_report_counts_failures(tmp_path):
    report = gpu_check.report({"preset:ddp": {"ok": True}, "qlora": {"ok": False, "error": "exit 1"}}, 0.0, {})
    assert report["failed"] == ["qlora"] and report["passed"] == ["preset:ddp"] and not report["ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")
def test_without_cuda_nothing_runs_and_the_report_says_so(tmp_path):
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["status"] == "skipped"
