"""Throughput, MFU and memory per optimizer step (trainer.perf): what is counted, per step and on average."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.perf import (GPU_PEAK_TFLOPS, Throughput, attention_shape, batch_counts, count_parameters, device_peak,
                          gpu_row, precision_dtype)


# ----- counting ---------------------------------------------------------------------------------------------
def test_real_tokens_attended_pairs_and_records_of_a_batch():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    batch = {"input_ids": torch.zeros(2, 5), "attention_mask": mask, "id": ["a", "b"]}
    tokens, pairs, samples = batch_counts(batch, causal=True)
    # records of 3 and 5 tokens: 3*4/2 + 5*6/2 causal pairs; 9 + 25 without a mask
    assert (int(tokens), int(pairs), samples) == (8, 6 + 15, 2)
    assert int(batch_counts(batch, causal=False)[1]) == 9 + 25
    # Packed: records of 3, 2 and 1 tokens in one row (positions restart), one pad; the batch says it holds 3.
    packed = {"input_ids": torch.zeros(1, 7), "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 0]]),
              "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 0]]), "num_samples": 3}
    tokens, pairs, samples = batch_counts(packed, causal=True)
    assert (int(tokens), int(pairs), samples) == (6, 6 + 3 + 1, 3)
    assert batch_counts({"input_ids": torch.zeros(4, 3)}, causal=True) == (None, None, 4)  # no mask: no tokens
    assert batch_counts((torch.zeros(5, 2), torch.zeros(5)), causal=True) == (None, None, 5)


def test_parameters_that_do_matmul_work():
    class LM(torch.nn.Module):
        def __init__(self, tied: bool):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)
            self.body = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 50, bias=False)
            if tied:
                self.head.weight = self.embed.weight

    untied = LM(tied=False)
    untied.body.requires_grad_(False)
    assert count_parameters(untied) == (50 * 8, 8 * 8 + 8)  # the looked-up table is left out
    assert count_parameters(LM(tied=True)) == (50 * 8 + 8 * 8 + 8, 0)  # a tied head counts once


def test_gpu_names_map_to_their_datasheet_peaks():
    names = {"NVIDIA H100 80GB HBM3": "h100 sxm", "NVIDIA H100 PCIe": "h100 pcie", "NVIDIA H100 NVL": "h100 nvl",
             "NVIDIA H200": "h200", "NVIDIA H200 NVL": "h200 nvl", "NVIDIA A100-SXM4-80GB": "a100",
             "NVIDIA A100 80GB PCIe": "a100", "NVIDIA L40S": "l40s", "NVIDIA L40": "l40", "NVIDIA L4": "l4",
             "NVIDIA A10G": "a10g", "NVIDIA A10": "a10", "Tesla V100-SXM2-32GB": "v100",
             "Tesla V100-PCIE-16GB": "v100 pcie", "Tesla T4": "t4", "NVIDIA GeForce RTX 4090": "rtx 4090"}
    assert {n: gpu_row(n) for n in names} == names
    assert gpu_row("NVIDIA B200") is None
    assert GPU_PEAK_TFLOPS["h100 sxm"]["bf16"] == 989.4 and GPU_PEAK_TFLOPS["a100"]["tf32"] == 156.0
    assert all(set(row) == {"bf16", "fp16", "tf32", "fp32"} for row in GPU_PEAK_TFLOPS.values())
    assert [precision_dtype(p) for p in ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "32-true")] == \
        ["bf16", "bf16", "fp16", "fp16", "fp32"]
    try:
        torch.set_float32_matmul_precision("high")  # fp32 runs with TF32 matmuls
        assert precision_dtype("32-true") == "tf32"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert device_peak(torch.device("cpu"), "32-true", peak_tflops=2.0) == (2e12, "given: 2 TFLOP/s")


def test_attention_shape_of_a_transformers_model():
    from transformers import LlamaConfig

    class Wrapped(torch.nn.Module):
        config = LlamaConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, head_dim=16)

    assert attention_shape(Wrapped()) == (3, 4 * 16)  # heads x head dim, not the hidden size
    assert attention_shape(torch.nn.Linear(2, 2)) is None


# ----- one fit ----------------------------------------------------------------------------------------------
class Records(Dataset):
    """12 records of 4 features; record i has 2 + i % 3 real tokens of 4."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        mask = torch.tensor([1] * (2 + i % 3) + [0] * (2 - i % 3))
        return {"x": torch.full((4,), float(i)), "attention_mask": mask, "id": f"r{i}"}


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        return self.layer(self.frozen(batch["x"])).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        CLOCK[0] += 100.0  # a validation pass takes long: none of it may count as training time

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


CLOCK = [0.0]


def _tick() -> float:
    CLOCK[0] += 0.5  # every reading of the clock is half a second later
    return CLOCK[0]


def _fit(tmp_path, monkeypatch, callbacks, epochs=1, validate=False):
    CLOCK[0] = 0.0
    monkeypatch.setattr("trainer.perf.time.perf_counter", _tick)
    trainer = pl.Trainer(max_epochs=epochs, accumulate_grad_batches=3, callbacks=callbacks, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), log_every_n_steps=1, limit_val_batches=1,
                         logger=pl.loggers.CSVLogger(str(tmp_path), name="csv"))
    loader = DataLoader(Records(), batch_size=2)
    trainer.fit(Tiny(), loader, loader if validate else None)
    return trainer


def test_per_step_rates_and_averages_after_the_warm_up(tmp_path, monkeypatch):
    perf = Throughput(warmup_steps=1, peak_tflops=1e-9)  # 1000 FLOP/s per device
    trainer = _fit(tmp_path, monkeypatch, [perf])
    # 6 micro batches of 2 records, 3 per optimizer step: 2 steps of 6 records. Real tokens: 2 + i % 3 per record.
    assert trainer.global_step == 2 and [s["samples"] for s in perf.steps] == [6, 6]
    assert [s["tokens"] for s in perf.steps] == [18, 18]
    assert [s["seconds"] for s in perf.steps] == [0.5, 0.5]  # one clock reading per step boundary
    # N: 4 + 1 trainable (6 FLOPs each per token), 16 + 4 frozen (4 each); no attention (not a transformers model)
    assert perf.params == {"trainable": 5, "frozen": 20} and perf.flops_per_token == 6 * 5 + 4 * 20
    assert perf.steps[0]["flops"] == 18 * 110
    summary = perf.summary()
    assert summary["steps_measured"] == 1 and summary["warmup_steps_excluded"] == 1
    assert summary["tokens_per_sec"] == 36.0 and summary["samples_per_sec"] == 12.0
    assert summary["mfu"] == pytest.approx(18 * 110 / 0.5 / 1000)
    assert summary["peak_memory_gib"] > 0  # the process's resident set on CPU
    logged = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in logged[1:]]
    steps = [r for r in rows if r["perf/tokens_per_sec"]]
    assert [float(r["perf/tokens_per_sec"]) for r in steps] == [36.0, 36.0]
    assert float(steps[0]["perf/mfu"]) == pytest.approx(3.96)


def test_validation_is_not_counted_and_metrics_json_keeps_the_averages(tmp_path, monkeypatch):
    perf = Throughput(warmup_steps=5, peak_tflops=1e-9)
    _fit(tmp_path, monkeypatch, [perf], epochs=2, validate=True)
    assert CLOCK[0] > 200  # two validations of 100 s happened
    assert [s["seconds"] for s in perf.steps] == [0.5] * 4  # and none of it was counted
    # The warm-up would leave nothing: the averages cover every step.
    assert perf.summary()["warmup_steps_excluded"] == 0 and perf.summary()["steps_measured"] == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())["perf"]
    assert metrics["tokens_per_sec"] == 36.0 and metrics["params"] == {"trainable": 5, "frozen": 20}
    rows = dict(perf.summary_rows())
    assert rows["perf/tokens_per_sec"] == "36" and rows["perf/mfu"] == "396.00 %"
    assert rows["perf averaged over"] == "4 steps after 0 warm-up" and rows["perf MFU peak"] == "given: 1e-09 TFLOP/s"


# ----- a debug recipe through the CLI ------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_sft_debug_fit_reports_perf_in_metrics_json_and_the_summary(tmp_path, capsys):
    from trainer.cli import TuneloopCLI

    cli = TuneloopCLI(args=["fit", "-c", "configs/sft/komt-llama2-13b-lora.yaml", "-c", "configs/debug.yaml",
                            f"--run.root={tmp_path}", "--run.version=r", "--trainer.logger=false",
                            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                            "--run.test_after_fit=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                            "--trainer.limit_val_batches=0", "--data.init_args.batch.global_batch_size=4"])
    perf = next(cb for cb in cli.trainer.callbacks if isinstance(cb, Throughput))  # a default callback
    model = cli.model.model
    embed = model.get_input_embeddings().weight.numel()  # looked up, no matmul (the tiny Llama's head is untied)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) - embed
    assert perf.params == {"trainable": trainable, "frozen": frozen} and trainable and frozen
    text = model.config.get_text_config()
    assert perf.causal and perf.attention_flops_per_pair == 12 * text.num_hidden_layers * text.hidden_size
    assert len(perf.steps) == 3 and all(s["samples"] == 4 and s["tokens"] > 0 for s in perf.steps)
    saved = json.loads((tmp_path / "sft-komt-lora" / "r" / "metrics.json").read_text())["perf"]
    assert saved["steps_measured"] == 1 and saved["warmup_steps_excluded"] == 2
    assert saved["flops_per_token"] == 6 * trainable + 4 * frozen and 0 < saved["mfu"] < 1
    assert saved["tokens_per_sec"] == pytest.approx(perf.steps[2]["tokens"] / perf.steps[2]["seconds"])
    assert "CPU fp32 matmul measured" in saved["peak_source"] and saved["peak_tflops_per_device"] > 0
    assert "perf/tokens_per_sec" in capsys.readouterr().out  # the end-of-fit summary table
