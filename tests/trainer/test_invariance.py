"""The causal-LM and vision-language recipes train the same at any process count and micro batch size (same
global batch).

The loss is the summed token NLL of an optimizer step over the step's loss tokens, on every process and every
micro batch (``modules.token_loss``), and step k takes the same samples however it is split (the distributed
sampler, and ``LengthGroupedSampler`` for the SFT recipe's ``group_by_length``). So per-step losses and the
final adapter agree to float summation order. Averaging per-micro-batch means instead (the earlier loss)
gave step losses differing by up to 0.12 and adapters by up to 0.045 on these same runs. Packing
(``data.packing``: a micro batch's records in one row, attention within each record) trains the same too: the
intent recipe packed on 2 processes equals it padded on 1. (The SFT debug data would not show it: with the
tiny tokenizer every record fills cutoff_len, so its micro batches have no padding to remove.)

Real processes: each run is ``python -m trainer fit`` (DDP over gloo on CPU for 2 processes). Dropout is off
(its masks are drawn per process); fp32 (the debug overlay). The learning rate is small (1e-4) because AdamW
divides by the gradient's running scale: a weight whose gradient nearly cancels to zero turns float
summation-order noise into an update of a fraction of the learning rate (measured at lr 1e-3: 8e-6).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.distributed

INTENT = "configs/intent/exaone-4.0-1.2b-lora.yaml"
SFT = "configs/sft/komt-llama2-13b-lora.yaml"
VLM = "configs/vlm/qwen2.5-vl-32b-qlora.yaml"
# Packed micro batches: each micro batch's records in one row, without padding.
PACKED = ["--data.init_args.packing=true"]


def fit(root, recipe, devices, micro, steps, global_batch, *extra):
    """Fit ``steps`` optimizer steps of one epoch; returns (metrics.json's fit section, final adapter tensors)."""
    from safetensors.torch import load_file

    accumulate = global_batch // (micro * devices)
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("TUNELOOP_RUN_VERSION", None)
    cmd = [sys.executable, "-m", "trainer", "fit", "-c", recipe, "-c", "configs/debug.yaml", f"--run.root={root}",
           "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
           "--run.test_after_fit=false", f"--trainer.devices={devices}", "--trainer.limit_val_batches=1",
           f"--trainer.limit_train_batches={steps * accumulate}", f"--data.init_args.batch.micro_batch_size={micro}",
           f"--data.init_args.batch.global_batch_size={global_batch}", "--model.init_args.lora.dropout=0.0",
           "--model.init_args.backbone.tiny_size.dropout=0.0", "--model.init_args.optimizer.init_args.lr=1e-4",
           *(["--trainer.strategy=ddp", "--trainer.accelerator=cpu"] if devices > 1 else []), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = [p for p in root.glob("*/*") if p.is_dir()]
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["exports"]  # the final weights: adapter-last/ when a best checkpoint was exported as adapter/
    name = "adapter-last" if "adapter-last" in final else "adapter"
    assert final[name]["global_step"] == steps
    return metrics["fit"], load_file(run / name / "adapter_model.safetensors")


@pytest.mark.parametrize("recipe,global_batch,runs,extra", [
    # Every split of the step once across the three (each run is a process start: the suite's time): micro batch
    # 4 and 1 on one process; 2 DDP processes with accumulation (VLM), without (SFT), packed (intent).
    (INTENT, 24, [(1, 4), (1, 1), (2, 4, PACKED)], []),
    (SFT, 8, [(1, 4), (1, 1), (2, 4)], []),
    # QLoRA's compute dtype is the recipe's bf16: fp32 here, so that only the split of the step differs.
    (VLM, 4, [(1, 2), (2, 1), (2, 2)], ["--model.init_args.quant.compute_dtype=float32"]),
], ids=["intent", "sft", "vlm"])
def test_process_count_and_micro_batch_size_do_not_change_training(tmp_path, recipe, global_batch, runs, extra):
    (devices, micro), *others = runs
    reference, ref_weights = fit(tmp_path / f"p{devices}-m{micro}", recipe, devices, micro, 4, global_batch, *extra)
    steps, losses = zip(*reference["train_loss"])
    assert steps == (1, 2, 3, 4) and len(set(losses)) == 4  # four real steps that move the loss
    moved = max(float(v.abs().max()) for k, v in ref_weights.items() if "lora_B" in k)
    assert moved > 1e-4  # the adapter trained (LoRA B starts at zero; AdamW moves ~lr per step)
    for devices, micro, *more in others:
        more = more[0] if more else []
        name = f"p{devices}-m{micro}" + ("-packed" if more else "")
        other, weights = fit(tmp_path / name, recipe, devices, micro, 4, global_batch, *extra, *more)
        assert (other["world_size"], other["accumulate_grad_batches"]) == (devices, global_batch // (micro * devices))
        if more:  # packed: no padding at all, where the padded reference had some (the same records)
            padding = other["metrics"]["train/padding_fraction"], reference["metrics"]["train/padding_fraction"]
            print(f"{recipe} padding fraction packed {padding[0]:.3f}, padded {padding[1]:.3f}")
            assert padding[0] == 0.0 < padding[1], padding
        other_steps, other_losses = zip(*other["train_loss"])
        assert other_steps == steps
        assert weights.keys() == ref_weights.keys()
        diff = max(float((weights[k] - ref_weights[k]).abs().max()) for k in ref_weights)
        print(f"{recipe} {devices} process(es), micro {micro} {' '.join(more)}: max step-loss difference "
              f"{max(abs(a - b) for a, b in zip(losses, other_losses)):.2e}, max adapter difference {diff:.2e}")
        assert max(abs(a - b) for a, b in zip(losses, other_losses)) < 1e-5, (devices, micro, losses, other_losses)
        assert diff < 1e-5, (devices, micro, diff)
