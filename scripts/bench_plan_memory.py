"""Measured vs estimated: the planner's weight, gradient and optimizer bytes against what a real model holds.

    python scripts/bench_plan_memory.py            # the default cases below (CPU, about a minute)
    python scripts/bench_plan_memory.py -c RECIPE -c configs/debug.yaml [-c OVERLAY ...]

For each case the recipe is planned (``trainer.plan``, meta device) and then built for real the way the task
module builds it (``modules.backbone.build_model`` + ``apply_lora``; a 4-bit base is quantized by
bitsandbytes on the CPU), one forward/backward pass runs on a small random batch and one AdamW step is taken.
Memory is measured by walking the tensors (not RSS): every distinct parameter's ``numel x element_size``
(4-bit weights: the packed data plus their ``QuantState`` tensors), every ``.grad``, and every tensor in the
optimizer's state. Activations are not measured here (CPU peak memory is not comparable with a GPU's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL_LLAMA = """
model:
  init_args:
    backbone:
      tiny_size: {hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 688}
"""
FULL_FT = "model:\n  init_args:\n    lora: null\n    quant: null\n"
FP32_COMPUTE = "model:\n  init_args:\n    quant: {compute_dtype: float32}\n"
BF16_TRUE = "trainer:\n  precision: bf16-true\n"


def _overlay(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def default_cases(directory: Path) -> list[tuple[str, list[str]]]:
    """(label, configs) for a tiny and a small Llama (hidden 256, 4 layers), full fine-tuning, LoRA and QLoRA."""
    small = _overlay(directory, "small_llama.yaml", SMALL_LLAMA)
    full = _overlay(directory, "full_ft.yaml", FULL_FT)
    fp32 = _overlay(directory, "fp32_compute.yaml", FP32_COMPUTE)
    bf16 = _overlay(directory, "bf16_true.yaml", BF16_TRUE)
    lora = "configs/sft/komt-llama2-13b-lora.yaml"
    qlora = "configs/sft/komt-llama2-13b-qlora.yaml"
    debug = "configs/debug.yaml"
    return [
        ("tiny llama, full fine-tuning", [lora, debug, full]),
        ("tiny llama, LoRA r=32", [lora, debug]),
        ("small llama (h=256, 4 layers), full fine-tuning", [lora, debug, small, full]),
        ("small llama (h=256, 4 layers), LoRA r=32", [lora, debug, small]),
        ("small llama (h=256, 4 layers), QLoRA r=32 (4-bit on CPU)", [qlora, debug, small, fp32]),
        ("small llama (h=256, 4 layers), LoRA r=32, bf16-true", [lora, debug, small, bf16]),
        ("tiny bert, multi-label, full fine-tuning", ["configs/encoder/waam-multilabel.yaml", debug]),
    ]


def _tensor_bytes(t, seen: set) -> int:
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return 0
    key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
    if key in seen:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def _quant_state_bytes(qs, seen: set) -> int:
    if qs is None:
        return 0
    total = 0
    for value in vars(qs).values():
        total += _tensor_bytes(value, seen)
    state2 = getattr(qs, "state2", None)
    if state2 is not None:
        total += _quant_state_bytes(state2, seen)
    return total


def measure(configs: list[str], batch: int = 2, seq_len: int = 16) -> dict:
    """Build the recipe's model for real, run one training step, and count weight/grad/optimizer bytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from modules.backbone import apply_lora, build_model, load_tokenizer
    from trainer.plan import read_recipe

    recipe = read_recipe(configs)
    spec = recipe.backbone
    if not spec.tiny:
        raise SystemExit("measure() builds the model for real: stack configs/debug.yaml (tiny: true)")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(spec)
    encoder = recipe.is_encoder
    auto = AutoModelForSequenceClassification if encoder else AutoModelForCausalLM
    overrides = {"num_labels": recipe.num_labels} if encoder else {}
    with tempfile.TemporaryDirectory() as tiny_dir:
        model = build_model(auto, spec, tokenizer, quant=recipe.quant, device="cpu",
                            tiny_dir=tiny_dir if recipe.quant is not None else None, **overrides)
        model = apply_lora(model, recipe.lora, task_type="SEQ_CLS" if encoder else "CAUSAL_LM",
                           quantized=recipe.quant is not None, gradient_checkpointing=spec.gradient_checkpointing)
    if recipe.precision in ("bf16-true", "16-true"):  # what Lightning's precision plugin does at fit start
        from lightning.pytorch.plugins.precision import HalfPrecision

        model = HalfPrecision(recipe.precision).convert_module(model)
    model.train()

    seen: set = set()
    weights = 0
    params = []
    for p in {id(p): p for p in model.parameters()}.values():
        params.append(p)
        weights += _tensor_bytes(p, seen)
        if p.__class__.__name__ == "Params4bit":
            weights += _quant_state_bytes(p.quant_state, seen)

    ids = torch.randint(3, len(tokenizer), (batch, seq_len))
    if encoder:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = out.float().pow(2).mean()
    else:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    optimizer.step()
    optim = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor))
    return {"weights": weights, "gradients": grads, "optimizer": optim}


def measure_activations(configs: list[str]) -> int:
    """Bytes autograd keeps for backward in one forward pass of a micro batch at the recipe's sequence length
    (``saved_tensors_hooks``; parameters and duplicates of one storage are not counted)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from modules.backbone import apply_lora, build_model, load_tokenizer
    from trainer.plan import read_recipe

    recipe = read_recipe(configs)
    if recipe.quant is not None or not recipe.backbone.tiny:
        raise SystemExit("activations are measured for tiny, unquantized recipes only")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(recipe.backbone)
    encoder = recipe.is_encoder
    auto = AutoModelForSequenceClassification if encoder else AutoModelForCausalLM
    overrides = {"num_labels": recipe.num_labels} if encoder else {}
    model = build_model(auto, recipe.backbone, tokenizer, **overrides)
    model = apply_lora(model, recipe.lora, task_type="SEQ_CLS" if encoder else "CAUSAL_LM")
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set = set()
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    b, s = recipe.batch.micro_batch_size, recipe.seq_len
    ids = torch.randint(3, len(tokenizer), (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if encoder:
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().pow(2).mean()
        else:
            from modules.token_loss import token_nll  # tuneloop's chunked loss, as the causal-LM module trains

            loss, _ = token_nll(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, ids)
    del loss  # everything was saved during the forward; no backward needed
    return total


NO_CHECKPOINTING = ("model:\n  init_args:\n    backbone:\n      gradient_checkpointing: false\n"
                    "data:\n  init_args:\n    cutoff_len: 128\n")


def activation_cases(directory: Path) -> list[tuple[str, list[str], str]]:
    """(label, configs, attention) for the activation comparison. Without gradient checkpointing (its
    recomputation happens in backward, outside what the forward's saved-tensor hooks see). BERT runs with
    dropout, for which PyTorch's CPU SDPA falls back to the math kernel that keeps the s x s scores, so it is
    compared with ``--attention eager``; on GPUs flash/memory-efficient SDPA keep none."""
    small = _overlay(directory, "small_llama.yaml", SMALL_LLAMA)
    full = _overlay(directory, "full_ft.yaml", FULL_FT)
    no_ck = _overlay(directory, "no_checkpointing.yaml", NO_CHECKPOINTING)
    lora = "configs/sft/komt-llama2-13b-lora.yaml"
    debug = "configs/debug.yaml"
    return [
        ("small llama (h=256, 4 layers, s=128, b=4), full fine-tuning", [lora, debug, small, full, no_ck], "sdpa"),
        ("small llama (h=256, 4 layers, s=128, b=4), LoRA r=32", [lora, debug, small, no_ck], "sdpa"),
        ("tiny bert (h=64, 2 layers, s=128, b=16), eager scores", ["configs/encoder/waam-multilabel.yaml", debug],
         "eager"),
    ]


def compare_activations(configs: list[str], attention: str = "sdpa") -> dict:
    from trainer.plan import plan

    act = plan(configs, attention=attention)["activations"]
    est = act["layers"] + act["logits_saved"]  # what the forward saves (the logits' gradient comes in backward)
    got = measure_activations(configs)
    return {"estimated": est, "measured": got, "error_pct": 100.0 * (est - got) / got}


def compare(configs: list[str]) -> dict:
    """Planner estimate and measurement side by side, with the relative error of each part (in %)."""
    from trainer.plan import plan

    estimate = plan(configs)["bytes"]
    measured = measure(configs)
    rows = {}
    for key in ("weights", "gradients", "optimizer"):
        est, got = estimate[key], measured[key]
        rows[key] = {"estimated": est, "measured": got, "error_pct": 100.0 * (est - got) / got if got else 0.0}
    est = sum(estimate[k] for k in rows)
    got = sum(measured[k] for k in rows)
    rows["total"] = {"estimated": est, "measured": got, "error_pct": 100.0 * (est - got) / got}
    return rows


def print_comparison(label: str, rows: dict) -> None:
    print(f"{label}")
    for key, r in rows.items():
        print(f"  {key:<10} estimated {r['estimated']:>13,d} B   measured {r['measured']:>13,d} B   "
              f"error {r['error_pct']:+6.2f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None,
                        help="recipe and overlays (must include configs/debug.yaml); default: built-in cases")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' checkpointing renames
    warnings.filterwarnings("ignore", category=UserWarning)
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as d:
        cases = [(" + ".join(args.config), args.config)] if args.config else default_cases(Path(d))
        for label, configs in cases:
            print_comparison(label, compare(configs))
        if not args.config:
            print("activations of one micro batch: planner vs bytes autograd saves for backward (CPU, fp32)")
            for label, configs, attention in activation_cases(Path(d)):
                rows = compare_activations(configs, attention)
                print(f"  {label:<58} estimated {rows['estimated']:>12,d} B   measured {rows['measured']:>12,d} B"
                      f"   error {rows['error_pct']:+6.1f}%")


if __name__ == "__main__":
    main()
