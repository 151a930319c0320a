"""scripts/bench.py's pieces, without running a bench: config stacking, what the HF side is given, FLOP counts,
token counting of padded and packed batches, the per-run summary, the aggregation (ratios, validity checks,
targets) and the dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT, load_script

bench = load_script("bench")
bench_model = load_script("bench_model")
bench_steps = load_script("bench_steps")


def test_configs_stack_as_the_cli_stacks_them():
    assert bench.deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2}) == {
        "a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    cfg = bench.load_stack(bench.JOBS["sft"])
    model = cfg["model"]["init_args"]
    assert cfg["trainer"]["callbacks"] == []  # the recipe's ModelCheckpoint is gone
    assert model["lora"] == {"r": 32, "alpha": 64, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert model["backbone"]["name_or_path"] == "runs/bench/model" and model["backbone"]["tiny"] is False
    assert cfg["data"]["init_args"]["batch"] == {"global_batch_size": 8, "micro_batch_size": 4}
    assert cfg["data"]["init_args"]["cutoff_len"] == 256 and cfg["trainer"]["precision"] == "32-true"


def test_the_hf_side_gets_the_recipes_optimizer_schedule_and_lora():
    hf = bench.hf_settings(bench.load_stack(bench.JOBS["sft"]), steps=5)
    assert hf["optimizer"] == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "fused": False}
    assert hf["scheduler"] == {"name": "linear", "warmup_steps": 1}
    assert hf["gradient_clip_val"] == 1.0 and hf["seed"] == 42 and hf["gradient_checkpointing"] is False
    enc = bench.hf_settings(bench.load_stack(bench.JOBS["encoder"]), steps=4)
    # the demo's AdamW: lr 2e-4, decay 0.01, torch's betas/eps; warmup ratio 0.1 of 4 steps -> int(0.4) = 0 steps
    assert enc["optimizer"]["lr"] == 2e-4 and enc["optimizer"]["weight_decay"] == 0.01
    assert enc["scheduler"] == {"name": "linear", "warmup_steps": 0}
    assert enc["lora"] is None and enc["pos_weight"] == "auto"


def test_flops_of_a_decoder_and_an_encoder():
    llama = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
             "intermediate_size": 16, "vocab_size": 10}
    shape = bench_model.decoder_shape(llama)
    # per layer: q, o 8x8; k, v 8x4 (one kv head of 4); gate/up/down 3 x 8x16; plus the 10x8 head
    assert shape == {"layers": 2, "attn_width": 8, "matmul_params": 2 * (64 * 2 + 32 * 2 + 384) + 80}
    minilm = json.loads((ROOT / "configs/models/all-MiniLM-L6-v2/config.json").read_text())
    assert bench_model.encoder_shape(minilm)["matmul_params"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    # LoRA: 4 N per token over the frozen base + 6 per adapter weight; attention 12 L w sum(l^2)
    assert bench_model.train_flops(10, 50, shape, trainable_params=3) == (4 * shape["matmul_params"] + 18) * 10 + 12 * 2 * 8 * 50
    assert bench_model.train_flops(10, 50, shape, frozen_base=False) == 6 * shape["matmul_params"] * 10 + 9600


def test_real_tokens_of_padded_and_packed_batches():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert bench_steps.record_lengths(torch.zeros(2, 4), mask) == [3, 2]
    # one packed row: records of 3 and 2 tokens, then 2 pad tokens (a segment of their own, no real token)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1]])
    real = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    assert bench_steps.record_lengths(torch.zeros(1, 7), real, positions) == [3, 2]
    assert bench_steps.record_lengths(torch.zeros(1, 5), None, positions[:, :5]) == [3, 2]  # HF flattening: no mask
    micro = bench_steps.micro_record(torch.zeros(1, 7), real, positions, loss_tokens=torch.tensor(4))
    assert micro == {"real": 5, "total": 7, "loss_tokens": micro["loss_tokens"], "records": 2, "sq_lengths": 13}
    step = bench_steps.step_record(3, 10.0, [micro, micro], 1.5, 1e-3)
    assert (step["real_tokens"], step["total_tokens"], step["loss_tokens"], step["records"]) == (10, 14, 8, 4)


def _result(times, real=100, total=125, loss=2.0, spawned=0.0):
    steps = [{"time": t, "cpu": t / 2, "real_tokens": real, "total_tokens": total, "sq_lengths": 0, "loss": loss,
              "lr": 1e-3} for t in times]
    return {"steps": steps, "spawned": spawned, "marks": {"imported": [1.0, 0.5]}, "settings": {"trainable_params": 0},
            "wall": times[-1] + 1}


def test_a_run_is_summarized_from_step_two_on():
    shape = {"layers": 1, "attn_width": 1, "matmul_params": 1000}
    run = bench.summarize_run(_result([5.0, 6.0, 7.0, 9.0]), shape, frozen_base=False, peak=1e6)
    assert run["startup_sec"] == 5.0 and run["startup_cpu_sec"] == 2.5  # launch -> end of step 1
    assert run["tokens_per_sec"] == pytest.approx(300 / 4.0)  # steps 2-4 over the 4 s after step 1
    assert run["tokens_per_cpu_sec"] == pytest.approx(300 / 2.0)
    assert run["padding_fraction"] == pytest.approx(0.2)
    assert run["mfu"] == pytest.approx(6 * 1000 * 300 / 4.0 / 1e6)
    assert "error" in bench.summarize_run(_result([5.0]), shape, frozen_base=False, peak=1e6)


def test_aggregate_takes_median_ratios_and_voids_a_comparison_whose_losses_differ():
    shape = {"layers": 1, "attn_width": 1, "matmul_params": 10}
    fast = [bench.summarize_run(_result([1.0, 2.0, 3.0]), shape, False, 1e6) for _ in range(3)]
    slow = [bench.summarize_run(_result([1.0, 3.0, 5.0]), shape, False, 1e6) for _ in range(3)]
    settings = {"optimizer": {"lr": 1e-3, "foreach": None}, "lora": None, "accumulate_grad_batches": 2,
                "micro_batch_size": 4, "gradient_clip_val": None, "max_steps": 3, "trainable_params": 5}
    summary = bench.aggregate({"b": fast, "c": slow}, {"b": settings, "c": {**settings, "gradient_clip_val": 0.0,
                                                                           "optimizer": {"lr": 1e-3, "foreach": False}}},
                              tolerance=0.01)
    assert summary["ratios"]["b/c"]["median"] == pytest.approx(2.0)
    assert summary["checks"]["sft"]["valid"]  # foreach and None-vs-0 clipping are not differences
    assert summary["targets"]["unpacked_sft_vs_hf"]["met"] is True
    off = [bench.summarize_run(_result([1.0, 2.0, 3.0], loss=2.1), shape, False, 1e6) for _ in range(3)]
    void = bench.aggregate({"b": off, "c": slow}, {"b": settings, "c": settings}, tolerance=0.01)
    assert not void["checks"]["sft"]["losses_agree"] and not void["checks"]["sft"]["valid"]
    differ = bench.aggregate({"b": fast, "c": slow}, {"b": settings, "c": {**settings, "micro_batch_size": 8}}, 0.01)
    assert differ["checks"]["sft"]["settings_differ"] == {"b": {"micro_batch_size": (4, 8)}}
    assert "VOID" in bench.table(void)


def test_repeats_are_interleaved_and_the_dry_run_lists_them(capsys):
    assert bench.plan("abc", 2) == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    bench.main(["--dry-run", "--repeats", "2", "--sides", "bcf"])
    warmup, *lines = capsys.readouterr().out.splitlines()
    assert warmup.startswith("[warm-up 1/1] b") and "discarded" in warmup
    assert len(lines) == 6 and lines[0].startswith("[1/6] b") and "python -m trainer fit" in lines[0]
    assert "bench_hf.py" in lines[1] and "encoder" not in lines[0]
    bench.main(["--dry-run", "--repeats", "1", "--sides", "c", "--warmup", "0"])
    assert capsys.readouterr().out.splitlines()[0].startswith("[1/1] c")
    with pytest.raises(SystemExit):
        bench.main(["--dry-run", "--sides", "xz"])


def test_the_hf_side_imports_no_lightning():
    # bench_hf.py itself, and the tuneloop module it uses (the prompt template); bench_steps.py imports torch only
    probe = ("import sys; sys.path[:0] = ['.', 'scripts']; import bench_hf, datamodules.templates; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'torch', 'trainer', 'modules')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
    import ast

    tree = ast.parse((ROOT / "scripts" / "bench_steps.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "os", "pathlib", "time", "torch"}
    sampler = load_script("bench_hf").ListSampler([3, 1, 2])
    assert list(sampler) == [3, 1, 2] and len(sampler) == 3


def test_the_timing_callback_records_one_entry_per_optimizer_step(tmp_path):
    timing = load_script("bench_timing")
    cb = timing.StepTimes(str(tmp_path / "t.json"))
    trainer = SimpleNamespace(global_step=0, callback_metrics={}, optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])],
                              is_global_zero=True)
    module = SimpleNamespace(device=torch.device("cpu"))
    batch = {"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "loss_tokens": 3}
    for step in (1, 2):
        for micro in range(2):  # accumulation 2: the step ends with the second micro batch
            cb.on_train_batch_start(trainer, module, batch, micro)
            trainer.callback_metrics["train/loss"] = torch.tensor(float(step))
            trainer.global_step = step if micro == 1 else step - 1
            cb.on_train_batch_end(trainer, module, None, batch, micro)
    cb.on_train_end(trainer, module)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [s["step"] for s in saved["steps"]] == [1, 2]
    assert saved["steps"][0]["real_tokens"] == 10 and saved["steps"][0]["total_tokens"] == 12
    assert saved["steps"][1]["loss"] == 2.0 and saved["steps"][0]["micro_batches"] == 2
