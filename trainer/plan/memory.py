"""Bytes per GPU of a meta-device model for every strategy preset (GiB = 2**30 bytes).

Weights: each parameter in the dtype it has when training starts (backbone dtype; fp32 for what
``prepare_model_for_kbit_training`` upcasts and for LoRA adapters); a ``*-true`` precision then converts every
floating tensor as Lightning's precision plugin does (``32-true`` and ``*-mixed`` convert nothing). 4-bit
weights: the packed bytes plus bitsandbytes' constants (an fp32 absmax per 64-value block; with double
quantization a uint8 per block, an fp32 per 256 blocks, an fp32 offset and a 256-entry fp32 code) and the
16-entry fp32 code. Gradients: trainable parameters, their dtype. Optimizer: AdamW/Adam 2 states in the
parameter dtype plus a 4-byte step per tensor; SGD with momentum 1 state; bitsandbytes 8-bit optimizers 2 x 1 byte.

Activations per micro batch (``b`` samples, ``s`` tokens, hidden ``h``, heads ``a``, MLP width ``I``; 16-bit
values, x2 for fp32): Korthikanti et al. 2022 (eq. 1: ``34 s b h + 5 a s^2 b`` per layer) with the MLP term
generalised: ``15 s b h`` for attention and norms plus ``s b (3 h + 4 I)`` for a GeLU MLP or ``s b (2 h + 8 I)``
for a gated one. The ``5 a s^2 b`` scores only with ``--attention eager`` (SDPA keeps none). LoRA dropout keeps
``s b in (bytes + 1)`` per adapted Linear. Gradient checkpointing: ``2 s b h`` per layer plus one layer's full
activations. Logits (``modules.token_loss.token_nll``, chunked), at the start of the backward, when every other
activation is still held: the head output, ``b s V`` values in the activation dtype (what the loss saves,
``logits_saved``), its gradient (the same size) and one fp32 chunk of ``min(b s, R)`` positions
(``R = loss_chunk_rows(V)``) being turned into a softmax: ``2 b s V x bytes + min(b s, R) V x 4``. The fp32 logits
are never whole (the plain loss kept ``b s V x 4`` of fp32 log-softmax and needed two more fp32 copies in its
backward). An upper bound: training applies the head only at positions that predict a response token
(``modules.token_loss.predicting_positions``), which the plan cannot know; ``s`` there is the response-bearing
span of the batch, often much less than the sequence (a classification label is a few tokens). Encoders: ``b x num_labels x 4``.
The vision tower's activations are not included (image tokens count in ``--seq-len``).

Per strategy (world W = gpus x nodes): ``ddp`` replicates everything plus one more copy of the gradients
(reducer buckets); ``fsdp``/``fsdp1`` divide weights, gradients and optimizer states by W and add the unsharded
working set (root module, two blocks gathered in bf16 under bf16 precisions, one block's fp32 gradients);
DeepSpeed runs a 16-bit module with fp32 master weights and Adam states (2 + 2 + 12 bytes per trainable
parameter): ``deepspeed_zero2`` divides gradients and optimizer states by W, ``deepspeed_zero3`` all three plus
the gathered working set (largest module or two blocks), ``deepspeed_zero3_offload`` keeps them in CPU memory
(reported per node); buckets: two of ``min(2e8, trainable)`` 16-bit elements. Overhead: 1.5 GiB (CUDA context,
workspaces) + 10 % of the rest (fragmentation).
"""

from __future__ import annotations

from trainer.plan.meta import VISION_TOWER_NAMES, Built
from trainer.plan.recipe import Recipe

GIB = 2**30
FIXED_OVERHEAD = 1.5 * GIB
FRAGMENTATION = 0.10
DS_BUCKET_ELEMENTS = int(2e8)  # Lightning's DeepSpeedStrategy reduce_bucket_size / allgather_bucket_size
_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16",
                "torch.float64": "float64"}


# ----- one full replica -----------------------------------------------------------------------------------
def _four_bit_constants(n: int, double_quant: bool, blocksize: int = 64) -> int:
    """Bytes of bitsandbytes' quantization state for one 4-bit tensor of ``n`` values."""
    blocks = -(-n // blocksize)
    code = 16 * 4  # the NF4/FP4 code book (fp32) of the QuantState
    if double_quant:
        # uint8 absmax per block; the nested state: fp32 absmax per 256 blocks, its 256-entry fp32 code, offset
        return blocks * 1 + (-(-blocks // 256)) * 4 + 256 * 4 + 4 + code
    return blocks * 4 + code


def _optimizer_state_bytes(optimizer: str, args: dict, numel: int, itemsize: int) -> tuple[int, str]:
    name = optimizer.rsplit(".", 1)[-1].lower()
    if "8bit" in name:
        return 2 * numel, f"{optimizer}: 2 x 1 byte per trainable parameter"
    if "sgd" in name:
        momentum = float(args.get("momentum", 0) or 0)
        return (numel * itemsize if momentum else 0), f"{optimizer}: {'1 state' if momentum else 'no state'}"
    if "adam" in name:
        return 2 * numel * itemsize, f"{optimizer}: exp_avg + exp_avg_sq in the parameter dtype"
    return 2 * numel * itemsize, f"{optimizer}: assumed 2 states per parameter (as AdamW)"


def inventory(built: Built, recipe: Recipe) -> dict:
    """Bytes of weights (by dtype and 4-bit), gradients and optimizer states of one full replica, plus the
    block sizes the sharded strategies need."""
    from modules.adapter import base_model

    base = base_model(built.model)
    sixteen = recipe.precision.startswith(("bf16", "16"))
    # Unsharded working copies: DeepSpeed runs a 16-bit module under any 16-bit precision; the fsdp preset's
    # FSDP2 MixedPrecisionPolicy gathers in bf16 under bf16 precisions (reduce in fp32), else as stored.
    ds_item = 2 if sixteen else None
    fsdp_item = 2 if recipe.precision.startswith("bf16") else None
    dq = recipe.quant.double_quant if recipe.quant is not None else False

    weights: dict[str, int] = {}
    numels: dict[str, int] = {}
    q4_numel = q4_bytes = 0
    train_numel = train_bytes = optim_bytes = 0
    train_tensors = 0
    frozen_float_numel = 0
    optim_note = ""
    param_info = {}  # id -> (bytes gathered by FSDP, bytes gathered by DeepSpeed, trainable numel)
    for name, p in built.model.named_parameters():
        if p.__class__.__name__ == "Params4bit":
            n = p.plan_numel
            b = p.numel() * p.element_size() + _four_bit_constants(n, dq)
            q4_numel += n
            q4_bytes += b
            weights["4bit"] = weights.get("4bit", 0) + b
            numels["4bit"] = numels.get("4bit", 0) + n
            param_info[id(p)] = (b, b, 0)
            continue
        n, item = p.numel(), p.element_size()
        key = _DTYPE_NAMES.get(str(p.dtype), str(p.dtype))
        weights[key] = weights.get(key, 0) + n * item
        numels[key] = numels.get(key, 0) + n
        param_info[id(p)] = (n * (fsdp_item or item), n * (ds_item or item), n if p.requires_grad else 0)
        if p.requires_grad:
            train_numel += n
            train_bytes += n * item
            train_tensors += 1
            ob, optim_note = _optimizer_state_bytes(recipe.optimizer, recipe.optimizer_args, n, item)
            optim_bytes += ob
        else:
            frozen_float_numel += n
    optim_bytes += 4 * train_tensors  # torch keeps a 4-byte step per parameter tensor

    # Transformer blocks (the units FSDP/ZeRO-3 gather), the root's own parameters and the largest module.
    block_classes = set(getattr(base, "_no_split_modules", None) or [])
    blocks: dict[str, tuple[int, int, int]] = {}
    block_counts: dict[str, int] = {}
    in_block: set[int] = set()
    for mname, module in base.named_modules():
        cname = type(module).__name__
        if cname in block_classes and not any(mname.startswith(b + ".") for b in blocks):
            size = [0, 0, 0]
            for p in module.parameters():
                if id(p) not in in_block:
                    in_block.add(id(p))
                    for k, v in enumerate(param_info.get(id(p), (0, 0, 0))):
                        size[k] += v
            blocks[mname] = tuple(size)
            block_counts[cname] = block_counts.get(cname, 0) + 1
    root = sum(info[0] for pid, info in param_info.items() if pid not in in_block)
    largest_leaf = 0
    for module in base.modules():
        own = sum(param_info.get(id(p), (0, 0, 0))[1] for p in module.parameters(recurse=False))
        largest_leaf = max(largest_leaf, own)
    return {
        "weights_by_dtype": weights,
        "params_by_dtype": numels,
        "weights": sum(weights.values()),
        "four_bit_params": q4_numel,
        "four_bit_bytes": q4_bytes,
        "trainable_params": train_numel,
        "trainable_weight_bytes": train_bytes,
        "frozen_float_params": frozen_float_numel,
        "gradients": train_bytes,
        "optimizer": optim_bytes,
        "optimizer_note": optim_note or f"{recipe.optimizer}: nothing to train",
        "trainable_tensors": train_tensors,
        "max_block_bytes_fsdp": max((b[0] for b in blocks.values()), default=0),
        "max_block_bytes_deepspeed": max((b[1] for b in blocks.values()), default=0),
        "max_block_trainable_params": max((b[2] for b in blocks.values()), default=0),
        "root_bytes_fsdp": root,
        "largest_module_bytes_deepspeed": largest_leaf,
        "block_classes": block_counts,
        "sixteen_bit": sixteen,
    }


# ----- activations ----------------------------------------------------------------------------------------
def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _text_layers(base) -> list:
    """(name, module) of the language model's repeated blocks (the class that repeats num_hidden_layers times)."""
    text = _text_config(base.config)
    n_layers = getattr(text, "num_hidden_layers", None)
    classes = set(getattr(base, "_no_split_modules", None) or [])
    found: dict[str, list] = {}
    for name, module in base.named_modules():
        if type(module).__name__ in classes:
            found.setdefault(type(module).__name__, []).append((name, module))
    candidates = [v for v in found.values() if len(v) == n_layers] or list(found.values())
    if not candidates:
        return []
    # Prefer the class that is not inside a vision tower.
    candidates.sort(key=lambda v: any(t in v[0][0].split(".") for t in VISION_TOWER_NAMES))
    return candidates[0]


def _lora_extra_per_token(built: Built, recipe: Recipe, act_bytes: int) -> int:
    """Bytes per token of one text block kept by LoRA (dropout copies and masks, the rank-r intermediate)."""
    if recipe.lora is None:
        return 0
    from torch import nn

    from modules.adapter import base_model

    layers = _text_layers(base_model(built.model))
    if not layers:
        return 0
    extra = 0
    for _, module in layers[0][1].named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or not lora_a:
            continue
        for key, lin in lora_a.items():
            drop = module.lora_dropout[key] if hasattr(module, "lora_dropout") else None
            if drop is not None and not isinstance(drop, nn.Identity):
                extra += lin.in_features * (act_bytes + 1)
            extra += lin.out_features * act_bytes
    return extra


def activations(built: Built, recipe: Recipe, attention: str = "sdpa") -> dict:
    """Activation bytes of one micro batch (see module docstring for the formula)."""
    from modules.adapter import base_model

    base = base_model(built.model)
    text = _text_config(base.config)
    h, a, L = text.hidden_size, text.num_attention_heads, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", None) or 4 * h
    s, b = recipe.seq_len, recipe.batch.micro_batch_size
    if recipe.precision == "32-true":
        act_bytes = 2 if recipe.backbone.dtype in ("bfloat16", "float16") else 4
    elif recipe.precision == "64-true":
        act_bytes = 8
    else:
        act_bytes = 2
    layers = _text_layers(base)
    gated = False
    if layers:
        names = {n.rsplit(".", 1)[-1] for n, _ in layers[0][1].named_modules()}
        gated = bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"})
    mlp = (8 * inter + 2 * h) if gated else (4 * inter + 3 * h)
    per_token = (15 * h + mlp) * act_bytes // 2
    scores = 5 * a * s * s * b * act_bytes // 2 if attention == "eager" else 0
    lora_extra = _lora_extra_per_token(built, recipe, act_bytes)
    full_layer = s * b * (per_token + lora_extra) + scores
    checkpointing = recipe.backbone.gradient_checkpointing
    if checkpointing:
        layers_bytes = L * 2 * s * b * h * act_bytes // 2 + full_layer
    else:
        layers_bytes = L * full_layer
    if recipe.is_encoder:
        logits = logits_saved = b * (recipe.num_labels or 1) * 4
        vocab = chunk = None
    else:
        from modules.token_loss import loss_chunk_rows

        vocab = text.vocab_size
        chunk = min(b * s, loss_chunk_rows(vocab))
        logits_saved = b * s * vocab * act_bytes
        logits = 2 * logits_saved + chunk * vocab * 4
    return {
        "total": layers_bytes + logits,
        "layers": layers_bytes,
        "logits": logits,
        "logits_saved": logits_saved,
        "per_layer_full": full_layer,
        "lora_bytes_per_token_per_layer": lora_extra,
        "micro_batch": b,
        "seq_len": s,
        "hidden": h,
        "heads": a,
        "layers_count": L,
        "intermediate": inter,
        "gated_mlp": gated,
        "vocab": vocab,
        "loss_chunk_positions": chunk,
        "bytes_per_value": act_bytes,
        "gradient_checkpointing": checkpointing,
        "attention": attention,
    }


# ----- per strategy ---------------------------------------------------------------------------------------
_BUFFER_NOTES = {
    "ddp": "DDP reducer buckets (one more copy of the gradients)",
    "fsdp": "unsharded working set: root module (embeddings, head) + 2 blocks",
    "fsdp1": "unsharded working set: root module (embeddings, head) + 2 blocks",
    "deepspeed_zero2": "reduce/allgather buckets",
    "deepspeed_zero3": "gathered working set (largest module or 2 blocks) + buckets",
    "deepspeed_zero3_offload": "gathered working set + buckets; params/grads/optimizer in CPU memory",
}


def strategy_memory(inv: dict, act: dict, recipe: Recipe, gpus: int, nodes: int, gpu_memory_gib: float) -> dict:
    """GiB per GPU for each strategy preset (see module docstring)."""
    from trainer.strategies import PRESETS, SHARDS_PARAMETERS

    world = gpus * nodes
    sixteen = inv["sixteen_bit"]
    w_float_lightning = inv["weights"] - inv["four_bit_bytes"]
    grads, optim = inv["gradients"], inv["optimizer"]
    n_train = inv["trainable_params"]
    # DeepSpeed: module cast to 16-bit (when the precision is 16-bit), fp32 master + Adam states (ZeRO's K=12).
    ds_item = 2 if sixteen else 4
    ds_float = (inv["trainable_params"] + inv["frozen_float_params"]) * ds_item
    ds_grads = n_train * ds_item
    ds_optim = n_train * (12 if sixteen else 8)
    ds_buffers = 2 * min(DS_BUCKET_ELEMENTS, n_train) * ds_item
    q4 = inv["four_bit_bytes"]
    # FSDP2: root (embeddings, head) + current and prefetched block, and one block's gradients unsharded in
    # fp32 before the reduce-scatter (reduce_dtype fp32).
    fsdp_working = (inv["root_bytes_fsdp"] + 2 * inv["max_block_bytes_fsdp"]
                    + 4 * inv["max_block_trainable_params"])
    z3_working = max(inv["largest_module_bytes_deepspeed"], 2 * inv["max_block_bytes_deepspeed"])
    A = act["total"]

    parts = {
        "ddp": dict(weights=q4 + w_float_lightning, gradients=grads, optimizer=optim, activations=A,
                    buffers=grads),
        "fsdp": dict(weights=(q4 + w_float_lightning) / world, gradients=grads / world, optimizer=optim / world,
                     activations=A, buffers=fsdp_working),
        "deepspeed_zero2": dict(weights=q4 + ds_float, gradients=ds_grads / world, optimizer=ds_optim / world,
                                activations=A, buffers=ds_buffers),
        "deepspeed_zero3": dict(weights=(q4 + ds_float) / world, gradients=ds_grads / world,
                                optimizer=ds_optim / world, activations=A, buffers=z3_working + ds_buffers),
        "deepspeed_zero3_offload": dict(weights=0, gradients=0, optimizer=0, activations=A,
                                        buffers=z3_working + ds_buffers),
    }
    parts["fsdp1"] = dict(parts["fsdp"])
    out = {}
    for name in PRESETS:
        p = parts[name]
        subtotal = sum(p.values())
        overhead = FIXED_OVERHEAD + FRAGMENTATION * subtotal
        total = subtotal + overhead
        notes = []
        if name in SHARDS_PARAMETERS and recipe.quant is not None:
            storage, compute = recipe.quant.quant_storage, recipe.quant.compute_dtype
            if storage is None:
                notes.append(f"the preset stores the 4-bit base as {compute} (quant_storage) to shard it")
            elif storage != compute:
                notes.append(f"refused by the preset: quant.quant_storage ({storage}) must equal compute_dtype "
                             f"({compute}) to shard the 4-bit base")
        if name == "deepspeed_zero3_offload":
            cpu = (q4 + ds_float + n_train * 4 + ds_optim) * gpus / world
            notes.append(f"CPU memory per node ~ {cpu / GIB:.1f} GiB")
        entry = {
            "gib_per_gpu": round(total / GIB, 2),
            "fits": total <= gpu_memory_gib * GIB,
            "bytes": {k: int(v) for k, v in p.items()} | {"overhead": int(overhead), "total": int(total)},
            "buffers_are": _BUFFER_NOTES[name],
            "notes": notes,
        }
        if name == "deepspeed_zero3_offload":
            entry["cpu_gib_per_node"] = round(cpu / GIB, 2)
        out[name] = entry
    return out
