#!/usr/bin/env python
"""What only a GPU can check, in one command on one CUDA GPU (under 8 minutes on an H100/H200 class GPU):

    scripts/gpu_check.sh                 # or: make gpu-check; the JSON report goes to runs/gpu_check/gpu_check.json
    scripts/gpu_check.sh --dry-run       # the jobs and their commands (runs anywhere, no GPU needed)
    scripts/gpu_check.sh --only preset:fsdp,qlora

Jobs (each its own process, one after another, each with a time limit; a failure never stops the others):

  preset:<name>   a debug fit of the SFT LoRA recipe (tiny Llama, configs/debug.yaml) in bf16 on one GPU with each
                  strategy preset that runs on one GPU: ddp, fsdp, fsdp1, deepspeed_zero2, deepspeed_zero3,
                  deepspeed_zero3_offload (post-fit test and adapter export included)
  qlora           the SFT QLoRA recipe's debug fit on CUDA (4-bit NF4 base by bitsandbytes), bf16
  bench:exaone    the bench's SFT job (scripts/bench.py) on an EXAONE-4.0-1.2B-shaped random-init model (every
                  dimension and the 102,400 vocabulary; built once on the GPU and saved under runs/bench/), LoRA r 8
                  on all linear layers, bf16, micro batch 4 x 256 tokens: real-token throughput, MFU against the
                  GPU's dense bf16 peak (trainer/perf.py's table), and tuneloop's own perf/ metrics
  plan:exaone     `tuneloop plan` of that job (one GPU, ddp) against the torch.cuda.max_memory_allocated the
                  bench job measured per optimizer step; the goal is within 15%

The report (JSON, also printed) holds every job's result, time and, for a failure, the end of its log. Without
CUDA nothing runs: the report says so (status "skipped") and the exit code is 0; with CUDA the exit code is 1
when a job failed or the plan missed its goal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PRESETS = ("ddp", "fsdp", "fsdp1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
SFT_DEBUG = ["configs/sft/komt-llama2-13b-lora.yaml", "configs/debug.yaml"]
QLORA_DEBUG = ["configs/sft/komt-llama2-13b-qlora.yaml", "configs/debug.yaml"]
EXAONE_JOB = ["configs/sft/komt-llama2-13b-lora.yaml", "configs/debug.yaml", "configs/bench/sft.yaml",
              "configs/bench/gpu-exaone.yaml"]
EXAONE_ARCH = "configs/models/exaone-4.0-1.2b"
EXAONE_DIR = ROOT / "runs" / "bench" / "exaone-4.0-1.2b-random"
JOBS = [*(f"preset:{p}" for p in PRESETS), "qlora", "bench:exaone", "plan:exaone"]
PLAN_GOAL = 0.15  # |plan - measured| / measured
OUT = ROOT / "runs" / "gpu_check"


def fit_command(configs: list[str], name: str, extra: list[str]) -> list[str]:
    """``tuneloop fit`` of ``configs`` into ``runs/gpu_check/<name>/check`` (replaced on a rerun), no tracker."""
    return [sys.executable, "-m", "trainer", "fit", *[a for c in configs for a in ("-c", c)],
            "--trainer.logger=false", f"--run.root={OUT}", f"--run.experiment={name.replace(':', '-')}",
            "--run.version=check", "--run.overwrite=true", *extra]


def commands(extra: list[str], bench_steps: int) -> dict[str, list[str] | str]:
    """Every job's command (a string for the jobs this script runs itself)."""
    jobs: dict[str, list[str] | str] = {}
    for preset in PRESETS:
        jobs[f"preset:{preset}"] = fit_command(SFT_DEBUG, f"preset:{preset}", [
            f"--trainer.strategy={preset}", "--trainer.devices=1", "--trainer.precision=bf16-mixed", *extra])
    jobs["qlora"] = fit_command(QLORA_DEBUG, "qlora", ["--trainer.devices=1", "--trainer.precision=bf16-mixed", *extra])
    jobs["bench:exaone"] = (f"build {EXAONE_DIR.relative_to(ROOT)} (random init, {EXAONE_ARCH}) once, then "
                            f"python -m trainer fit {' '.join('-c ' + c for c in EXAONE_JOB)} -c <run overlay: "
                            f"{bench_steps} steps, bench_timing.StepTimes>")
    jobs["plan:exaone"] = ("python -m trainer plan " + " ".join("-c " + c for c in EXAONE_JOB)
                           + " --gpus 1 --gpu-memory <this GPU> --json; ddp total vs the measured peak")
    return jobs


def select(only: str | None) -> list[str]:
    if not only:
        return list(JOBS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown job(s) {unknown}; choose from {', '.join(JOBS)}")
    if "plan:exaone" in names and "bench:exaone" not in names:
        names.insert(names.index("plan:exaone"), "bench:exaone")  # the plan is checked against that run
    return [n for n in JOBS if n in names]


def env() -> dict[str, str]:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
         "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts"), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def run(cmd: list[str], log: Path, timeout: float) -> dict:
    """One job's process: ok, seconds, and the end of its log when it failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  stdin=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"ok": code == 0, "seconds": round(time.time() - start, 1), "log": str(log.relative_to(ROOT))}
    if code != 0:
        result["error"] = f"exit {code}" if code != "timeout" else f"timed out after {timeout:.0f} s"
        result["log_tail"] = log.read_text(errors="replace")[-3000:]
    return result


def perf_of(run_dir: Path) -> dict | None:
    """tuneloop's own ``metrics.json["perf"]`` of a run (tokens/s, MFU, peak memory), when it wrote one."""
    metrics = run_dir / "metrics.json"
    return json.loads(metrics.read_text()).get("perf") if metrics.is_file() else None


def bench_exaone(steps: int, timeout: float) -> dict:
    """The bench's SFT job on the EXAONE-shaped model: throughput, MFU, per-step CUDA memory."""
    import torch
    import yaml

    import bench
    from bench_model import decoder_shape, ensure_random_model

    start = time.time()
    model_dir, built = ensure_random_model(EXAONE_ARCH, EXAONE_DIR, device="cuda")
    torch.cuda.empty_cache()
    work = OUT / "bench-exaone"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "steps.json"
    overlay = {"run": {"root": str(OUT), "experiment": "bench-exaone", "version": "check", "overwrite": True},
               "trainer": {"max_steps": steps, "callbacks": [{"class_path": "bench_timing.StepTimes",
                                                              "init_args": {"out": str(out), "loss": "last"}}]}}
    (work / "run.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "-m", "trainer", "fit", *[a for c in EXAONE_JOB for a in ("-c", c)], "-c", str(work / "run.yaml")]
    result = bench.launch(cmd, out, work / "fit.log", env(), timeout, keep_teardown=True)  # its metrics.json too
    if "error" in result:
        return {"ok": False, "seconds": round(time.time() - start, 1), "model_built_now": built, **result}
    from trainer.perf import device_peak

    peak, source = device_peak(torch.device("cuda"), result["settings"]["precision"])
    shape = decoder_shape(json.loads((model_dir / "config.json").read_text()))
    summary = bench.summarize_run(result, shape, frozen_base=True, peak=peak or 0.0)
    memory = [{k: s.get(k) for k in ("max_memory_allocated", "max_memory_reserved", "device_used")}
              for s in result["steps"]]
    return {"ok": True, "seconds": round(time.time() - start, 1), "model_built_now": built,
            "model": {"dir": str(model_dir.relative_to(ROOT)), "arch_config": EXAONE_ARCH, **shape},
            "tokens_per_sec": summary["tokens_per_sec"], "mfu": summary["mfu"], "peak_flops": peak,
            "peak_source": source, "startup_sec": summary["startup_sec"], "padding_fraction": summary["padding_fraction"],
            "final_loss": summary["final_loss"], "steps": summary["steps"], "settings": result["settings"],
            "memory_per_step": memory,
            "tuneloop_perf": perf_of(OUT / "bench-exaone" / "check")}


def plan_vs_measured(plan: dict, steps: list[dict], strategy: str = "ddp") -> dict:
    """``tuneloop plan``'s per-GPU total of ``strategy`` against ``torch.cuda.max_memory_allocated``, the largest over
    the optimizer steps after the first (steady state: weights, adapter gradients, optimizer states and one step's
    activations; the first step's peak also holds load-time transients): the goal, within 15%. The plan's total
    also holds a fixed overhead (CUDA context, allocator slack: 1.5 GiB + 10%) that no allocated tensor shows, so
    two more comparisons go beside it: the plan without that overhead against the same peak, and the total
    against the device memory in use at step ends (context and allocator cache included)."""
    bytes_ = plan["strategies"][strategy]["bytes"]
    later = steps[1:] or steps
    allocated = max((s.get("max_memory_allocated") or 0 for s in later), default=0)
    used = max((s.get("device_used") or 0 for s in later), default=0)
    if not allocated:
        return {"ok": False, "error": "no CUDA memory was measured"}
    total, overhead = bytes_["total"], bytes_.get("overhead", 0)
    gib = 2 ** 30

    def rel(planned: int, measured: int) -> float | None:
        return round((planned - measured) / measured, 4) if measured else None

    error = rel(total, allocated)
    return {"ok": abs(error) <= PLAN_GOAL, "goal": f"|plan total - max_memory_allocated| / max_memory_allocated <= "
            f"{PLAN_GOAL:.0%}", "strategy": strategy, "plan_total_gib": round(total / gib, 3),
            "max_memory_allocated_gib": round(allocated / gib, 3), "rel_error": error,
            "plan_without_overhead_gib": round((total - overhead) / gib, 3),
            "rel_error_without_overhead": rel(total - overhead, allocated),
            "device_used_gib": round(used / gib, 3) if used else None, "rel_error_vs_device_used": rel(total, used),
            "plan_bytes": bytes_, "measured_over": f"optimizer steps 2..{len(steps)}"}


def report(results: dict[str, dict], started: float, device: dict) -> dict:
    """The JSON report: every job's result and a count of passed and failed ones."""
    failed = [n for n, r in results.items() if not r.get("ok")]
    return {"status": "ran", "device": device, "seconds": round(time.time() - started, 1), "jobs": results,
            "passed": [n for n in results if n not in failed], "failed": failed, "ok": not failed}


def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help=f"comma-separated jobs (default all): {', '.join(JOBS)}")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and their commands; run nothing")
    p.add_argument("--timeout", type=float, default=150, help="seconds per job before it is stopped (default 150)")
    p.add_argument("--budget", type=float, default=450,
                   help="seconds: no job starts after this (default 450, so that all ends within 8 minutes)")
    p.add_argument("--bench-steps", type=int, default=12, help="optimizer steps of bench:exaone (default 12)")
    p.add_argument("--fit-args", default="", help="extra arguments for every debug fit, e.g. '--trainer.deterministic=warn'")
    p.add_argument("--out", type=Path, default=OUT / "gpu_check.json", help="JSON report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)
    names = select(args.only)
    jobs = commands(args.fit_args.split(), args.bench_steps)
    if args.dry_run:
        for name in names:
            cmd = jobs[name]
            print(f"{name}: {cmd if isinstance(cmd, str) else ' '.join(cmd[1:])}")
        return 0
    started = time.time()
    device = device_info()
    if not device:
        result = {"status": "skipped", "reason": "no CUDA device (torch.cuda.is_available() is false): nothing checked"}
        print(json.dumps(result))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    results: dict[str, dict] = {}
    for name in names:
        if time.time() - started > args.budget:
            results[name] = {"ok": False, "error": f"not started: the {args.budget:.0f} s budget was spent"}
        elif name == "bench:exaone":
            results[name] = bench_exaone(args.bench_steps, args.timeout)
        elif name == "plan:exaone":
            bench_result = results.get("bench:exaone", {})
            if not bench_result.get("ok"):
                results[name] = {"ok": False, "error": "bench:exaone did not run: nothing measured to compare with"}
            else:
                cmd = [sys.executable, "-m", "trainer", "plan", *[a for c in EXAONE_JOB for a in ("-c", c)], "--gpus",
                       "1", "--gpu-memory", str(device["memory_gib"]), "--json"]
                proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=args.timeout)
                if proc.returncode != 0:
                    results[name] = {"ok": False, "error": f"exit {proc.returncode}", "log_tail": proc.stderr[-3000:]}
                else:
                    results[name] = plan_vs_measured(json.loads(proc.stdout), bench_result["memory_per_step"])
        else:
            results[name] = run(jobs[name], OUT / "logs" / f"{name.replace(':', '-')}.log", args.timeout)
        r = results[name]
        print(f"{name}: {'ok' if r.get('ok') else 'FAILED ' + str(r.get('error', ''))} "
              f"({r.get('seconds', '-')} s)", flush=True)
    summary = report(results, started, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "jobs"}, indent=1))
    print(f"report: {args.out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
