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


def test_fsdp2_lora_adapter_is_consolidated_and_reproduces_the_trained_model(tmp_path):
    """FSDP2 (fully_shard per decoder layer) over 2 CPU processes: the adapter saved on rank 0 is the full,
    gathered adapter; loaded in one process it gives the distributed run's test loss."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamodules.instruction import InstructionDataModule

    run, proc = run_ddp(tmp_path, "configs/intent/exaone-4.0-1.2b-lora.yaml", "-c", "configs/strategy/fsdp.yaml",
                        "--trainer.limit_train_batches=6", "--trainer.limit_test_batches=4")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert len(adapter) == len(ckpt) > 0
    for key, value in ckpt.items():  # model.base_model.model.X.lora_A.default.weight -> base_model.model.X.lora_A.weight
        short = key.removeprefix("model.").replace(".default.", ".")
        assert torch.equal(adapter[short], value), key
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained, not the zero init

    tok = AutoTokenizer.from_pretrained(run / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base_model"), run / "adapter").eval()
    dm = InstructionDataModule(format="intent", test_file="data/samples/intent/test.jsonl",
                               labels=["지식", "이미지생성", "3D", "4D", "날씨", "일정", "잡담", "기타"],
                               cutoff_len=128, cache_dir=str(tmp_path / "cache"))
    dm.tokenizer = tok
    dm.setup("test")
    batch = dm.collate_fn([dm.splits["test"][i] for i in range(32)])  # 4 batches x 4 records x 2 ranks
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum") / (targets != -100).sum()
    metrics = json.loads((run / "metrics.json").read_text())["test"]["metrics"]
    assert float(nll) == pytest.approx(metrics["test/loss"], rel=1e-4)


def test_two_nodes_with_torchrun_on_one_machine(tmp_path):
    """Two torchrun 'nodes' (one process each) rendezvous on 127.0.0.1; Lightning sees 2 nodes, world size 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WANDB_MODE": "offline", "NNODES": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "GPUS_PER_NODE": "1", "RUN_ID": "twonodes", "ACCELERATOR": "cpu",
           "PYTHON": sys.executable}
    env.pop("TUNELOOP_RUN_VERSION", None)
    args = ["bash", "scripts/launch_multinode.sh", "-c", "configs/encoder/waam-anomaly.yaml", "-c",
            "configs/debug.yaml", "--trainer.strategy=ddp", f"--run.root={tmp_path}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
            "--run.test_after_fit=false", "-v"]  # -v: Lightning's rank lines (GLOBAL_RANK ... MEMBER) are shown
    nodes = [subprocess.Popen(args, cwd=ROOT, env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL) for rank in (0, 1)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    run = tmp_path / "waam-anomaly" / "run-twonodes"
    cfg = (run / "config.yaml").read_text()
    assert "num_nodes: 2" in cfg
    metrics = json.loads((run / "metrics.json").read_text())["fit"]
    # global 32 = micro 16 x 2 processes: one optimizer step per micro batch, 4 per epoch.
    assert metrics["global_step"] == 4
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1]


def test_scaling_invariance_one_vs_two_processes(tmp_path):
    """The recipe's global batch (32) is reached as 2 accumulated micro batches on 1 process or 1 micro batch
    on each of 2 processes: the same optimizer steps over the same samples, so the same per-step loss.

    Dropout is off (its masks are drawn per process). ``limit_train_batches`` counts micro batches per process,
    so 8 (1 process) and 4 (2 processes) cover the same 128 samples in 4 steps; likewise 2 and 1 validation
    batches cover the same 32 validation records."""
    common = ["-c", "configs/encoder/waam-anomaly.yaml", "-c", "configs/debug.yaml", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1", "--run.test_after_fit=false",
              "--model.init_args.backbone.tiny_size.dropout=0.0", "--trainer.limit_val_batches=2",
              "--model.init_args.optimizer.init_args.lr=1e-3"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    one = subprocess.run([sys.executable, "-m", "trainer", "fit", *common, f"--run.root={tmp_path}/one",
                          "--trainer.devices=1", "--trainer.limit_train_batches=8"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert one.returncode == 0, one.stderr[-3000:]
    run_two, _ = run_ddp(tmp_path / "two", "configs/encoder/waam-anomaly.yaml", "--trainer.limit_train_batches=4",
                         "--run.test_after_fit=false", "--model.init_args.backbone.tiny_size.dropout=0.0",
                         "--trainer.limit_val_batches=1", "--model.init_args.optimizer.init_args.lr=1e-3")
    fit_one = json.loads(next((tmp_path / "one").glob("*/*/metrics.json")).read_text())["fit"]
    fit_two = json.loads((run_two / "metrics.json").read_text())["fit"]
    assert (fit_one["world_size"], fit_one["accumulate_grad_batches"]) == (1, 2)
    assert (fit_two["world_size"], fit_two["accumulate_grad_batches"]) == (2, 1)
    steps_one, loss_one = zip(*fit_one["train_loss"])
    steps_two, loss_two = zip(*fit_two["train_loss"])
    assert steps_one == steps_two == (1, 2, 3, 4)
    # Same samples and weights per step: equal up to float summation order (measured difference < 1e-6).
    assert loss_one == pytest.approx(loss_two, rel=1e-4, abs=1e-5)
    assert len(set(loss_one)) > 1  # the loss moves: the steps really differ
    assert fit_one["metrics"]["val/loss"] == pytest.approx(fit_two["metrics"]["val/loss"], rel=1e-4)
