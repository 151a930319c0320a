#!/usr/bin/env python
"""tuneloop against the HF Trainer on the same jobs, side by side, in one command and one process tree.

    python scripts/bench.py                      # SFT sides a-d and encoder sides e-f, interleaved repeats
    python scripts/bench.py --steps 10 --repeats 5 --out runs/bench/bench.json
    python scripts/bench.py --dry-run            # the runs and their commands, nothing started

SFT job: the recipe ``configs/sft/komt-llama2-13b-lora.yaml`` + ``configs/debug.yaml`` + ``configs/bench/sft.yaml``
on the bench's random-init Llama (``scripts/bench_model.py``: ~17M parameters, saved once under
``runs/bench/model``, loaded by every side), the bundled Alpaca data at cutoff 256, fp32, LoRA r 32 on q/v
(dropout 0), AdamW, global batch 8 = 2 x micro 4, response-only loss, the same optimizer steps:

  a  tuneloop fit, ``data.packing: true``      (records of a micro batch packed into one row, padding-free)
  b  tuneloop fit, unpacked                  (padded micro batches, length-grouped as the recipe says)
  c  HF Trainer + PEFT, ``DataCollatorForSeq2Seq`` (padding)
  d  HF Trainer + PEFT, ``DataCollatorWithFlattening`` (HF's padding-free collator)

Encoder job: the demo (``configs/encoder/waam-multilabel.yaml`` + debug + ``configs/demo/minilm.yaml`` +
``configs/bench/encoder.yaml``: all-MiniLM-L6-v2, multi-label WAAM, fp32):

  e  tuneloop fit
  f  HF Trainer with ``AutoModelForSequenceClassification`` on the same MiniLM weights

Every run is its own process, started by this one: tuneloop through its CLI (``python -m trainer fit``) with a
timing callback (``scripts/bench_timing.py``), the HF side through ``scripts/bench_hf.py``. Both train the same
tokens (tuneloop's prompt template and truncation) in the same order (tuneloop's seeded sampler), so each
optimizer step sees the same tokens on every side (checked: ``same_batches``), and from the same weights (the
adapters' random init included: ``same_start_weights``); the final losses must agree within
``--loss-tolerance`` (relative), and the optimizer, LoRA, batch and clipping settings each side really ran with
must be equal, or the comparison is reported VOID. Repeats are interleaved (a b c d e f, a b c d e f, ...)
because the machine is shared; ratios are taken per repeat and their median reported. One warm-up run of the
first side comes before them and is discarded (``--warmup``). ``--time-budget``
starts no repeat that would end after it (at least one always runs), so a busy machine gets fewer repeats.

Reported per side: real-token throughput (non-pad tokens per second of optimizer steps 2..N: step 1 is
start-up), the same per CPU second of the process (steadier than the wall clock on a shared machine: it does
not count the time the neighbours hold the cores), padding fraction, final loss (the last step's token
mean), start-up (process start to the end of the first optimizer step, wall and CPU seconds) and MFU (model
FLOPs, ``bench_model.train_flops``, against the fp32 matmul peak with the same threads: measured before the
runs and after each, the best rate kept, since a busy neighbour lowers any single measurement). Each torch
process uses ``--threads`` threads (default 1: on a shared 2-core machine two threads per process fight the
neighbours and the timings scatter by 5x). A run is stopped once its timings are written (nothing after
training is measured; ``--keep-teardown`` lets it finish). Output: a table, and JSON (``--out``) with every
run's steps, marks and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

SIDES = {
    "a": {"job": "sft", "impl": "tuneloop", "packing": True, "label": "tuneloop, packed"},
    "b": {"job": "sft", "impl": "tuneloop", "packing": False, "label": "tuneloop, padded"},
    "c": {"job": "sft", "impl": "hf", "collator": "pad", "label": "HF Trainer+PEFT, padded"},
    "d": {"job": "sft", "impl": "hf", "collator": "flatten", "label": "HF Trainer+PEFT, padding-free"},
    "e": {"job": "encoder", "impl": "tuneloop", "label": "tuneloop encoder demo"},
    "f": {"job": "encoder", "impl": "hf", "label": "HF Trainer, SeqCls"},
}
REFERENCE = {"sft": "c", "encoder": "f"}  # the losses of the other sides are compared with these
RATIOS = {"a/c": ("a", "c"), "b/c": ("b", "c"), "a/d": ("a", "d"), "e/f": ("e", "f")}
JOBS = {
    "sft": ["configs/sft/komt-llama2-13b-lora.yaml", "configs/debug.yaml", "configs/bench/sft.yaml"],
    "encoder": ["configs/encoder/waam-multilabel.yaml", "configs/debug.yaml", "configs/demo/minilm.yaml",
                "configs/bench/encoder.yaml"],
}
TARGETS = {  # issue 12 section 4; packed against HF both ways: HF padded (c) and HF's padding-free collator (d)
    "packed_sft_vs_hf": ("a/c", ">=", 1.3),
    "packed_sft_vs_hf_padding_free": ("a/d", ">=", 1.3),
    "unpacked_sft_vs_hf": ("b/c", ">=", 1.0),
    "encoder_vs_hf": ("e/f", ">=", 1.0),
    "packed_padding_fraction": ("padding:a", "<=", 0.05),
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


# ----- configs ---------------------------------------------------------------------------------------------
def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base`` as stacked ``-c`` configs combine: mappings merge key by key, anything else
    (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_stack(paths: list[str]) -> dict:
    import yaml

    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, yaml.safe_load((ROOT / path).read_text()) or {})
    return merged


def init_args(cfg: dict, *keys: str) -> dict:
    for key in keys:
        cfg = (cfg or {}).get(key) or {}
    return dict(cfg)


def hf_settings(cfg: dict, steps: int) -> dict:
    """What the HF side is given from the resolved recipe: optimizer (torch AdamW defaults filled in), schedule
    (warmup in steps, by tuneloop's rule over ``steps``), clipping, seed, LoRA (``LoraSpec`` defaults filled in)."""
    model = init_args(cfg, "model", "init_args")
    opt = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "fused": False,
           **init_args(model, "optimizer", "init_args")}
    opt["betas"] = list(opt["betas"])
    sched = {"name": "linear", "warmup_ratio": 0.0, "warmup_steps": None, **(model.get("scheduler") or {})}
    warmup = sched["warmup_steps"] if sched["warmup_steps"] is not None else int(sched["warmup_ratio"] * steps)
    lora = model.get("lora")
    if lora is not None:
        lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", **lora}
    return {"optimizer": opt, "scheduler": {"name": sched["name"], "warmup_steps": min(warmup, steps)},
            "gradient_clip_val": init_args(cfg, "trainer").get("gradient_clip_val"), "seed": cfg.get("seed_everything", 0),
            "lora": lora, "gradient_checkpointing": bool(init_args(model, "backbone").get("gradient_checkpointing")),
            "batch": init_args(cfg, "data", "init_args", "batch"), "pos_weight": model.get("pos_weight")}


def packing_available() -> bool:
    """Whether ``InstructionDataModule`` takes ``packing`` (side a), read from the source: nothing imported."""
    return "packing: bool" in (ROOT / "datamodules" / "instruction.py").read_text()


# ----- data both sides train on (tokenized by tuneloop's DataModule, in its sampler's order) ----------------
def prepare_data(job: str, cfg: dict, steps: int) -> dict:
    """Tokenize the job's training split with tuneloop's DataModule and list the order tuneloop's sampler draws it
    in for ``steps`` optimizer steps; tokenize it the HF side's way too (both map caches are warm before any run
    is timed). Returns what the HF job needs."""
    from datamodules.base import ResumableSampler
    from datamodules.batch import BatchSpec
    from modules.backbone import BackboneSpec, load_tokenizer, resolve_path

    model_args = init_args(cfg, "model", "init_args")
    backbone = BackboneSpec(**{k: v for k, v in init_args(model_args, "backbone").items() if k != "tiny_size"})
    tokenizer = load_tokenizer(backbone)
    data = init_args(cfg, "data", "init_args")
    batch = BatchSpec(**data.pop("batch"))
    if job == "sft":
        from datamodules.instruction import InstructionDataModule, LengthGroupedSampler

        data = {k: v for k, v in data.items() if not k.startswith("packing")}
        dm = InstructionDataModule(**data, batch=batch)
    else:
        from datamodules.encoder import EncoderDataModule

        dm = EncoderDataModule(**data, batch=batch)
    dm.use_preprocessing(tokenizer)
    dm.setup("fit")
    train = dm.splits["train"]
    full_steps = len(train) // batch.global_batch_size
    if steps > full_steps:
        raise SystemExit(f"bench: {job} has {full_steps} full optimizer steps per epoch ({len(train)} records / global "
                         f"batch {batch.global_batch_size}); use at most that many steps")
    if job == "sft" and dm.group_by_length:
        sampler = LengthGroupedSampler(train["length"], batch.global_batch_size, batch.micro_batch_size, seed=dm.seed)
    else:
        sampler = ResumableSampler(train, num_replicas=1, rank=0, shuffle=True, seed=dm.seed)
    sampler.set_epoch(0)
    order = list(sampler)[: steps * batch.global_batch_size]
    hf = {"job": job, "data": {k: v for k, v in init_args(cfg, "data", "init_args").items() if k != "batch"},
          "order": order, "model": resolve_path(backbone.name_or_path)}
    if job == "encoder":
        from modules.heads import positive_weight

        pos = hf_settings(cfg, steps)["pos_weight"]
        hf["num_labels"] = dm.num_outputs
        hf["pos_weight"] = positive_weight(pos, dm.train_targets, dm.num_outputs).tolist() if pos else None
    import bench_hf

    if len(bench_hf.tokenize(hf)) != len(train):  # also fills the HF side's map cache before anything is timed
        raise SystemExit(f"bench: the HF side's {job} records differ in number from tuneloop's")
    return hf


# ----- one run -----------------------------------------------------------------------------------------------
def run_command(side: str, steps: int, work: Path, tag: str, hf_job: dict | None) -> tuple[list[str], Path]:
    """The command of one run and the JSON file its timings go to (its config/job files are written here)."""
    spec = SIDES[side]
    out = work / f"{tag}.json"
    if spec["impl"] == "hf":
        job_file = work / f"{tag}.job.json"
        job_file.write_text(json.dumps({**hf_job, "job": spec["job"], "collator": spec.get("collator"),
                                        "steps": steps, "out": str(out)}))
        return [sys.executable, str(ROOT / "scripts" / "bench_hf.py"), str(job_file)], out
    import yaml

    overlay = {"run": {"root": str(work / "runs"), "version": tag, "overwrite": True},
               "trainer": {"max_steps": steps, "callbacks": [{"class_path": "bench_timing.StepTimes", "init_args": {
                   "out": str(out), "loss": "last" if spec["job"] == "sft" else "mean"}}]}}
    if spec["job"] == "sft":
        overlay["data"] = {"init_args": {"packing": spec["packing"]}}
    cfg = work / f"{tag}.yaml"
    cfg.write_text(yaml.safe_dump(overlay))
    configs = [a for c in JOBS[spec["job"]] for a in ("-c", c)]
    return [sys.executable, "-m", "trainer", "fit", *configs, "-c", str(cfg)], out


def child_env(threads: int) -> dict:
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def launch(cmd: list[str], out: Path, log: Path, env: dict, timeout: float, keep_teardown: bool = False) -> dict:
    """Start one run, wait for its timings (the JSON its timing callback writes when training ends), and return
    them with the launch time. What a run does after training (adapter export, summaries, exit) is not measured:
    unless ``keep_teardown``, the run is stopped once its timings are written."""
    out.unlink(missing_ok=True)
    with open(log, "w") as f:
        spawned = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        code = None
        while code is None and time.time() - spawned < timeout:
            if out.is_file() and not keep_teardown:
                break
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:  # timings written (or out of time): end this run's process group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = 0 if out.is_file() else "timeout"
    ended = time.time()
    if code != 0 or not out.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        return {"error": f"exit {code}", "log": str(log), "log_tail": tail, "wall": ended - spawned}
    return {**json.loads(out.read_text()), "spawned": spawned, "wall": ended - spawned, "log": str(log)}


def summarize_run(result: dict, shape: dict, frozen_base: bool, peak: float | None = None) -> dict:
    """Throughput, padding, losses, start-up and MFU of one finished run."""
    steps = result["steps"]
    if len(steps) < 2:
        return {"error": f"only {len(steps)} optimizer steps recorded"}
    from bench_model import train_flops

    measured = steps[1:]  # the first step is start-up (lazy init, the loss-token table, allocator warm-up)
    seconds = steps[-1]["time"] - steps[0]["time"]
    tokens = sum(s["real_tokens"] for s in measured)
    trainable = result["settings"].get("trainable_params", 0) if frozen_base else 0
    flops = sum(train_flops(s["real_tokens"], s["sq_lengths"], shape, trainable, frozen_base) for s in measured)
    real, total = sum(s["real_tokens"] for s in steps), sum(s["total_tokens"] for s in steps)
    # [seconds since the launch, CPU seconds of the process] at each mark of its start-up
    marks = {k: [round(w - result["spawned"], 2), round(c, 2)] for k, (w, c) in result["marks"].items()}
    cpu = steps[-1]["cpu"] - steps[0]["cpu"]
    return {"tokens_per_sec": tokens / seconds, "tokens_per_cpu_sec": tokens / cpu if cpu > 0 else None,
            "seconds_measured": seconds, "cpu_seconds_measured": cpu, "steps": len(steps),
            "padding_fraction": 1 - real / total, "final_loss": steps[-1]["loss"], "losses": [s["loss"] for s in steps],
            "startup_sec": steps[0]["time"] - result["spawned"], "startup_cpu_sec": steps[0].get("cpu"),
            "startup_marks": marks,
            "mfu": flops / seconds / peak if peak else None, "model_flops_per_sec": flops / seconds,
            "mfu_cpu_time": flops / cpu / peak if peak and cpu > 0 else None,
            "model_flops_per_cpu_sec": flops / cpu if cpu > 0 else None,
            "step_real_tokens": [s["real_tokens"] for s in steps], "lrs": [s["lr"] for s in steps],
            "wall_sec": result["wall"]}


# ----- summary ------------------------------------------------------------------------------------------------
COMPARED_SETTINGS = ("optimizer", "lora", "accumulate_grad_batches", "micro_batch_size", "gradient_clip_val",
                     "max_steps", "trainable_params")


def comparable(settings: dict) -> dict:
    """The settings both sides must share, normalized (no clipping = 0; the optimizer's ``foreach`` is an
    implementation choice of torch, not a hyperparameter)."""
    out = {k: settings.get(k) for k in COMPARED_SETTINGS}
    out["gradient_clip_val"] = out["gradient_clip_val"] or 0.0
    if out["optimizer"]:
        out["optimizer"] = {k: v for k, v in out["optimizer"].items() if k != "foreach"}
    return out


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs: dict[str, list[dict]], settings: dict[str, dict], tolerance: float,
              peak: float | None = None) -> dict:
    """Per side: medians over repeats (MFU against ``peak`` when given, else as each run computed it); per ratio:
    the median of the per-repeat ratios; the validity checks (equal settings, same batches, final losses within
    ``tolerance``) and the issue's targets."""
    if peak:
        for results in runs.values():
            for r in results:
                if "error" not in r:
                    r["mfu"] = r["model_flops_per_sec"] / peak
                    r["mfu_cpu_time"] = r["model_flops_per_cpu_sec"] / peak if r.get("model_flops_per_cpu_sec") else None
    sides = {}
    for side, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            sides[side] = {"label": SIDES[side]["label"], "errors": [r["error"] for r in results]}
            continue
        sides[side] = {
            "label": SIDES[side]["label"], "job": SIDES[side]["job"], "runs": len(ok),
            "tokens_per_sec": median([r["tokens_per_sec"] for r in ok]),
            "tokens_per_sec_runs": [round(r["tokens_per_sec"], 1) for r in ok],
            "tokens_per_cpu_sec": median([r["tokens_per_cpu_sec"] for r in ok]),
            "tokens_per_cpu_sec_runs": [round(r["tokens_per_cpu_sec"], 1) for r in ok],
            "padding_fraction": median([r["padding_fraction"] for r in ok]),
            "final_loss": median([r["final_loss"] for r in ok]),
            "final_loss_runs": [r["final_loss"] for r in ok],
            "startup_sec": median([r["startup_sec"] for r in ok]),
            "startup_sec_runs": [round(r["startup_sec"], 2) for r in ok],
            "startup_cpu_sec": median([r["startup_cpu_sec"] for r in ok]),
            "startup_marks": ok[0]["startup_marks"],
            "mfu": median([r["mfu"] for r in ok]),
            "mfu_cpu_time": median([r["mfu_cpu_time"] for r in ok]),
            "errors": [r["error"] for r in results if "error" in r],
        }
    ratios = {}
    for name, (x, y) in RATIOS.items():
        pairs = [(rx, ry) for rx, ry in zip(runs.get(x, []), runs.get(y, [])) if "error" not in rx and "error" not in ry]
        per = [rx["tokens_per_sec"] / ry["tokens_per_sec"] for rx, ry in pairs]
        per_cpu = [rx["tokens_per_cpu_sec"] / ry["tokens_per_cpu_sec"] for rx, ry in pairs]
        ratios[name] = {"median": median(per), "runs": [round(p, 3) for p in per],
                        "cpu_median": median(per_cpu), "cpu_runs": [round(p, 3) for p in per_cpu]}
    checks = {}
    for job, ref in REFERENCE.items():
        members = [s for s in SIDES if SIDES[s]["job"] == job and "tokens_per_sec" in sides.get(s, {})]
        if ref not in members or len(members) < 2:
            continue
        ref_loss = sides[ref]["final_loss"]
        diffs = {s: abs(sides[s]["final_loss"] - ref_loss) / abs(ref_loss) for s in members
                 if sides[s]["final_loss"] is not None and ref_loss}
        batches = {s: runs[s][0].get("step_real_tokens") for s in members if "error" not in runs[s][0]}
        ref_settings = comparable(settings[ref])
        differ = {s: {k: (v, ref_settings[k]) for k, v in comparable(settings[s]).items() if v != ref_settings[k]}
                  for s in members}
        checks[job] = {
            "reference": ref, "loss_tolerance_rel": tolerance,
            "final_loss_rel_diff": {s: round(d, 5) for s, d in diffs.items()},
            "losses_agree": bool(diffs) and max(diffs.values()) <= tolerance,
            "same_batches": len({json.dumps(b) for b in batches.values()}) == 1,
            "settings_differ": {s: d for s, d in differ.items() if d},
            "same_start_weights": len({round(settings[s].get("trainable_checksum") or 0, 3) for s in members}) == 1,
        }
        checks[job]["valid"] = (checks[job]["losses_agree"] and checks[job]["same_batches"]
                                and not checks[job]["settings_differ"])
    return {"sides": sides, "ratios": ratios, "checks": checks, "targets": targets(sides, ratios)}


def targets(sides: dict, ratios: dict) -> dict:
    out = {}
    for name, (what, op, bound) in TARGETS.items():
        if what.startswith("padding:"):
            value, cpu = sides.get(what.split(":")[1], {}).get("padding_fraction"), None
        else:
            value, cpu = ratios.get(what, {}).get("median"), ratios.get(what, {}).get("cpu_median")
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"what": what, "target": f"{op} {bound}", "value": value, "met": met}
        if cpu is not None:
            out[name].update(cpu_value=cpu, cpu_met=cpu >= bound if op == ">=" else cpu <= bound)
    for job, (tl, hf) in {"sft": ("b", "c"), "encoder": ("e", "f")}.items():
        for clock, key in (("wall", "startup_sec"), ("cpu", "startup_cpu_sec")):
            a, b = sides.get(tl, {}).get(key), sides.get(hf, {}).get(key)
            out[f"startup_{job}_{clock}_vs_hf"] = {
                "what": f"start-up {tl} vs {hf} ({clock} s, process start to the end of step 1)", "target": "<= HF",
                "value": a, "hf": b, "met": None if a is None or b is None else a <= b}
    return out


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(summary: dict) -> str:
    lines = [f"{'side':<4} {'':<32} {'tokens/s':>9} {'/CPU s':>8} {'padding':>8} {'final loss':>11} "
             f"{'start-up s':>11} {'(CPU s)':>8} {'MFU':>7} {'(CPU)':>7}"]
    for side, s in summary["sides"].items():
        if "tokens_per_sec" not in s:
            lines.append(f"{side:<4} {s['label']:<32} failed: {s['errors'][:1]}")
            continue
        lines.append(f"{side:<4} {s['label']:<32} {s['tokens_per_sec']:>9.1f} {fmt(s['tokens_per_cpu_sec'], '.1f'):>8} "
                     f"{s['padding_fraction']:>8.1%} "
                     f"{fmt(s['final_loss'], '.4f'):>11} {s['startup_sec']:>11.2f} {fmt(s['startup_cpu_sec'], '.2f'):>8} "
                     f"{fmt(s['mfu'], '.1%'):>7} {fmt(s['mfu_cpu_time'], '.1%'):>7}")
    lines.append("throughput ratios, median of per-repeat ratios, wall clock (CPU time): " + ", ".join(
        f"{k} {fmt(v['median'], '.3f')} ({fmt(v['cpu_median'], '.3f')})" for k, v in summary["ratios"].items()))
    for job, c in summary["checks"].items():
        lines.append(f"{job}: {'VALID' if c['valid'] else 'VOID'} comparison (final losses within "
                     f"{c['loss_tolerance_rel']:.1%} of side {c['reference']}: {c['losses_agree']}, same batches: "
                     f"{c['same_batches']}, settings differ: {c['settings_differ'] or 'none'})")
    word = {True: "met", False: "NOT met", None: "n/a"}
    for name, t in summary["targets"].items():
        text = f"{fmt(t['value'], '.3f')} ({word[t['met']]})"
        if t.get("hf") is not None:
            text = f"{t['value']:.2f} vs HF {t['hf']:.2f} ({word[t['met']]})"
        if t.get("cpu_value") is not None:
            text = f"wall {text}, CPU time {t['cpu_value']:.3f} ({word[t['cpu_met']]})"
        lines.append(f"target {name}: {t['what']} {t['target']}: {text}")
    return "\n".join(lines)


# ----- main --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per SFT run (default 5; 3 to 15)")
    p.add_argument("--encoder-steps", type=int, default=4, help="optimizer steps per encoder run (default 4; >= 3)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every side, at most (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="runs of the first side before the repeats, discarded (default 1): the first runs of a "
                        "session read cold caches (measured ~10%% slower)")
    p.add_argument("--time-budget", type=float, default=500,
                   help="seconds: no new repeat starts that would end after this (default 500; 0: no limit). On a "
                        "busy machine fewer repeats run; at least one always does")
    p.add_argument("--sides", default="abcdef", help="which sides to run (default abcdef; see above)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process, both sides and the peak measurement (default 1; 0: torch's default)")
    p.add_argument("--loss-tolerance", type=float, default=0.01,
                   help="largest relative difference of a side's final loss from the HF side's (default 0.01)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "bench.json", help="JSON output")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "work", help="run logs and files")
    p.add_argument("--run-timeout", type=float, default=300, help="seconds before a run is stopped (default 300)")
    p.add_argument("--keep-teardown", action="store_true",
                   help="let every run end by itself (adapter export, summaries); by default a run is stopped once "
                        "its timings are written, since nothing after training is measured")
    p.add_argument("--prepare", action="store_true", help="only build and save the bench model, then exit")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their commands; start nothing")
    return p


def plan(sides: str, repeats: int) -> list[tuple[str, int]]:
    """The interleaved run order: every side once per repeat, repeat after repeat."""
    return [(side, r) for r in range(repeats) for side in sides]


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)  # the recipes name repo-relative paths
    unknown = set(args.sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"bench: unknown sides {sorted(unknown)}; choose from {''.join(SIDES)}")
    sides = "".join(s for s in SIDES if s in args.sides)
    notes = []
    if "a" in sides and not packing_available():
        sides = sides.replace("a", "")
        notes.append("side a skipped: datamodules/instruction.py has no data.init_args.packing")
    steps = {"sft": args.steps, "encoder": args.encoder_steps}
    if min(steps.values()) < 3:
        raise SystemExit("bench: at least 3 optimizer steps per run (the first is start-up, and a rate needs two more)")
    order = plan(sides, args.repeats)
    if args.dry_run:
        for w in range(args.warmup):
            print(f"[warm-up {w + 1}/{args.warmup}] {sides[0]} ({SIDES[sides[0]]['label']}), discarded")
        for n, (side, r) in enumerate(order, 1):
            spec = SIDES[side]
            what = ("python -m trainer fit " + " ".join(f"-c {c}" for c in JOBS[spec["job"]]) + " -c <run overlay>"
                    if spec["impl"] == "tuneloop" else "python scripts/bench_hf.py <job.json>")
            print(f"[{n}/{len(order)}] {side} ({spec['label']}), repeat {r + 1}, {steps[spec['job']]} steps: {what}")
        for note in notes:
            print(note)
        return None
    started = time.time()
    from bench_model import MODEL_DIR, decoder_shape, encoder_shape, ensure_model, measure_peak_flops

    model_dir, built = ensure_model()
    print(f"bench model: {model_dir} ({'built now' if built else 'saved earlier'})", flush=True)
    if args.prepare:
        return None
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    peaks = [measure_peak_flops(args.threads or None)]
    print(f"CPU fp32 matmul peak: {peaks[0]['flops_per_sec'] / 1e9:.1f} GFLOP/s with {peaks[0]['threads']} thread(s) "
          "(measured again after every run; the best is kept)", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = {SIDES[s]["job"] for s in sides}
    cfgs = {job: load_stack(JOBS[job]) for job in jobs}
    hf_jobs, shapes = {}, {}
    for job in sorted(jobs):
        data = prepare_data(job, cfgs[job], steps[job])
        hf_jobs[job] = {**hf_settings(cfgs[job], steps[job]), **data, "threads": args.threads}
        config = json.loads((Path(data["model"]) / "config.json").read_text())
        shapes[job] = decoder_shape(config) if job == "sft" else encoder_shape(config)
    env = child_env(args.threads)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    settings: dict[str, dict] = {}
    for w in range(args.warmup):  # discarded: the first runs of a session read cold caches and ran ~10% slower
        side = sides[0]
        cmd, out = run_command(side, steps[SIDES[side]["job"]], args.work, f"warmup{w}", hf_jobs[SIDES[side]["job"]])
        result = launch(cmd, out, args.work / f"warmup{w}.log", env, args.run_timeout, args.keep_teardown)
        print(f"[warm-up {w + 1}/{args.warmup}] {side} ({SIDES[side]['label']}): "
              f"{'FAILED ' + result['error'] if 'error' in result else 'done'} (discarded)", flush=True)
    repeat_started = time.time()
    for n, (side, r) in enumerate(order, 1):
        if side == sides[0] and r > 0:  # a new repeat: only when it should end within the budget
            per_repeat = (time.time() - repeat_started) / r
            if args.time_budget and time.time() + per_repeat - started > args.time_budget:
                notes.append(f"stopped after {r} of {args.repeats} repeats: another would end after the "
                             f"{args.time_budget:.0f} s time budget ({per_repeat:.0f} s per repeat)")
                print(notes[-1], flush=True)
                break
        spec = SIDES[side]
        job = spec["job"]
        tuneloop_opt = next((settings[s]["optimizer"] for s in settings if SIDES[s]["job"] == job
                             and SIDES[s]["impl"] == "tuneloop"), None)
        if spec["impl"] == "hf" and tuneloop_opt is not None:  # the HF side takes the fused flag tuneloop ran with
            hf_jobs[job]["optimizer"]["fused"] = tuneloop_opt["fused"]
        cmd, out = run_command(side, steps[job], args.work, f"{side}{r}", hf_jobs[job])
        result = launch(cmd, out, args.work / f"{side}{r}.log", env, args.run_timeout, args.keep_teardown)
        if "error" not in result:
            settings.setdefault(side, result["settings"])
            peaks.append(measure_peak_flops(args.threads or None, seconds=0.3, trials=2))
            peak = max(p["flops_per_sec"] for p in peaks)
            result = summarize_run(result, shapes[job], frozen_base=job == "sft", peak=peak)
        runs[side].append(result)
        if "error" in result:
            print(f"[{n}/{len(order)}] {side} ({spec['label']}) repeat {r + 1}: FAILED {result['error']}; "
                  f"log {result.get('log')}\n{result.get('log_tail', '')[-800:]}", flush=True)
            continue
        print(f"[{n}/{len(order)}] {side} ({spec['label']}) repeat {r + 1}: {result['tokens_per_sec']:.1f} tokens/s, "
              f"padding {result['padding_fraction']:.1%}, loss {fmt(result['final_loss'], '.4f')}, start-up "
              f"{result['startup_sec']:.1f} s, MFU {fmt(result['mfu'], '.1%')} ({result['wall_sec']:.0f} s)", flush=True)
    peak = {**max(peaks, key=lambda p: p["flops_per_sec"]), "measurements": len(peaks),
            "all_gflops": [round(p["flops_per_sec"] / 1e9, 1) for p in peaks]}
    summary = aggregate(runs, settings, args.loss_tolerance, peak["flops_per_sec"])
    done = min(len(v) for v in runs.values())
    summary.update({
        "bench": {"steps": steps, "repeats": done, "repeats_requested": args.repeats, "threads": args.threads,
                  "order": "".join(side for side, r in order if r < done), "warmup_runs": args.warmup,
                  "seconds": round(time.time() - started, 1), "notes": notes,
                  "model": {"dir": str(model_dir.relative_to(ROOT)) if model_dir == MODEL_DIR else str(model_dir),
                            **json.loads((model_dir / "bench_model.json").read_text())},
                  "peak": peak, "shapes": shapes},
        "settings": settings, "runs": runs})
    print(table(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written to {args.out} ({summary['bench']['seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
