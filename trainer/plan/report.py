"""``plan()``: the recipe read, its model built on meta, its memory estimated, as one JSON-able dict."""

from __future__ import annotations

from dataclasses import asdict

from trainer.plan.memory import activations, inventory, strategy_memory
from trainer.plan.meta import build_meta_model
from trainer.plan.recipe import PlanError, read_recipe


def plan(configs: list[str], gpus: int = 1, nodes: int = 1, gpu_memory: float = 80.0, seq_len: int | None = None,
         attention: str = "sdpa") -> dict:
    """Everything ``tuneloop plan`` prints, as one JSON-able dict."""
    from datamodules.batch import BatchSizeError, derive_accumulation
    from trainer.strategies import RECOMMEND_ORDER

    if gpus < 1 or nodes < 1:
        raise PlanError(f"--gpus and --nodes must be >= 1, got {gpus} and {nodes}")
    if gpu_memory <= 0:
        raise PlanError(f"--gpu-memory must be > 0 GiB, got {gpu_memory}")
    recipe = read_recipe(configs, seq_len)
    built = build_meta_model(recipe)
    inv = inventory(built, recipe)
    act = activations(built, recipe, attention)
    strategies = strategy_memory(inv, act, recipe, gpus, nodes, gpu_memory)
    recommended = next((s for s in RECOMMEND_ORDER if strategies[s]["fits"]), None)
    world = gpus * nodes
    try:
        acc = derive_accumulation(recipe.batch.global_batch_size, recipe.batch.micro_batch_size, world,
                                  recipe.batch.rounding)
        accumulation = {"accumulate_grad_batches": acc, "error": None}
        effective = acc * recipe.batch.micro_batch_size * world  # < global when rounding: floor rounded down
    except BatchSizeError as e:
        accumulation = {"accumulate_grad_batches": None, "error": str(e)}
        effective = None
    spec = recipe.backbone
    return {
        "recipe": recipe.paths,
        "model": {
            "class": built.base_class,
            "model_type": built.model_type,
            "arch_config": spec.arch_config,
            "name_or_path": spec.name_or_path,
            "tiny": spec.tiny,
            "dtype": spec.dtype,
            "num_labels": recipe.num_labels,
            "task": recipe.task,
            "gradient_checkpointing": spec.gradient_checkpointing,
            "lora": asdict(recipe.lora) if recipe.lora is not None else None,
            "quant": asdict(recipe.quant) if recipe.quant is not None else None,
        },
        "params": {
            "total": built.base_total,
            "trainable": built.trainable,
            "all": built.all_params,
            "trainable_percent": round(100 * built.trainable / built.all_params, 4),
            "peft_line": built.peft_line,
            "four_bit": inv["four_bit_params"],
            "quantization_skip_patterns": built.quant_patterns,
            "unquantized_linear_modules": len(built.unquantized_linear),
        },
        "bytes": {
            "weights": inv["weights"],
            "weights_by_dtype": inv["weights_by_dtype"],
            "params_by_dtype": inv["params_by_dtype"],
            "gradients": inv["gradients"],
            "optimizer": inv["optimizer"],
            "activations": act["total"],
            "activations_layers": act["layers"],
            "logits": act["logits"],
        },
        "activations": act,
        "optimizer": inv["optimizer_note"],
        "precision": recipe.precision,
        "batch": {"global_batch_size": recipe.batch.global_batch_size,
                  "micro_batch_size": recipe.batch.micro_batch_size,
                  "rounding": recipe.batch.rounding, "effective_global_batch_size": effective,
                  "seq_len": recipe.seq_len, "seq_len_source": recipe.seq_len_source},
        "world": {"gpus": gpus, "nodes": nodes, "world_size": world},
        "accumulation": accumulation,
        "gpu_memory_gib": gpu_memory,
        "strategies": strategies,
        "recommended": recommended,
        "assumptions": {
            "overhead": "1.5 GiB fixed (CUDA context, workspaces) + 10% of the rest (fragmentation)",
            "weights": "backbone dtype; fp32 LoRA adapters and k-bit-prepared tensors; *-true precision converts",
            "activations": "Korthikanti et al. 2022 per layer, MLP term for the model's width and gating; "
                           f"attention scores {'counted (eager)' if attention == 'eager' else 'not stored (SDPA)'}",
            "deepspeed": "16-bit module + fp32 master and Adam states: 2 + 2 + 12 bytes per trainable parameter",
        },
    }
