"""``tuneloop plan``: exact parameter counts and a per-GPU memory estimate for every strategy preset, before
launch and without weights.

    tuneloop plan -c RECIPE [-c OVERLAY ...] [--gpus N] [--nodes M] [--gpu-memory GiB] [--seq-len L] [--json]

How the recipe is read
    The YAML files are stacked left to right the way ``tuneloop fit -c ... -c ...`` stacks them (nested
    mappings merge key by key, a later scalar/list/null replaces, a ``class_path`` that changes drops the
    earlier ``init_args``). The planner reads only the keys it needs (``model.class_path``,
    ``model.init_args.{backbone,lora,quant,optimizer}``, ``data.init_args.{batch,cutoff_len|max_length,task,
    labels,label_fields}``, ``trainer.precision``) and turns them into the same dataclasses the modules use
    (``BackboneSpec``, ``LoraSpec``, ``QuantSpec``, ``BatchSpec``), so field names and values are validated the
    same way. It deliberately does not build Lightning's CLI parser: that imports every task module and
    Lightning (seconds), runs ``seed_everything``, and fails for a recipe whose module does not exist yet, while
    the planner needs none of it. Missing keys take the classes' defaults (``trainer.precision``: Lightning's
    ``32-true``; the data cutoff: the DataModule's signature default, read only when the recipe has none).

How the model is counted
    The architecture config (``backbone.arch_config``; shrunk with the local tokenizer like the debug overlay
    when ``tiny: true``) is instantiated on the meta device (no memory, no weights) with the class the task
    module would use: ``AutoModelForSequenceClassification`` (``num_labels`` from the data: binary 1,
    regression the number of ``label_fields``, else the number of ``labels``) for ``EncoderModule``,
    ``AutoModelForCausalLM`` otherwise, and the vision-language class for a VL ``model_type`` (e.g.
    ``qwen2_5_vl`` -> ``Qwen2_5_VLForConditionalGeneration``).

    QLoRA (``model.quant``) is reproduced, not approximated: the Linear layers that transformers would
    quantize are chosen with transformers' own functions (``HfQuantizer.get_modules_to_not_convert`` on
    ``QuantSpec.to_bnb()``'s skip list, then ``should_convert_module``), and each chosen weight is replaced by a
    meta ``bitsandbytes.nn.Params4bit`` of the packed shape bitsandbytes produces (``(n + 1) // (2 x
    storage itemsize)`` elements of the storage dtype). PEFT's ``prepare_model_for_kbit_training`` then runs
    as in ``modules.backbone.apply_lora`` (it freezes the base and upcasts the remaining 16-bit tensors to
    fp32), and ``peft.get_peft_model`` wraps the meta model (``low_cpu_mem_usage=True``: adapters on meta too).
    The printed line is PEFT's own ``print_trainable_parameters()`` output, captured verbatim; for a 4-bit
    base PEFT counts a ``Params4bit`` as ``numel x 2 x element_size`` (one packed byte = two 4-bit values),
    which the packed meta tensors reproduce exactly. A vision-language model whose recipe gives no
    ``quant.skip_modules`` keeps its vision tower unquantized (``model.visual`` plus transformers' default
    skips, the output head), as production QLoRA of such models does.

How memory is estimated (bytes per GPU; GiB = 2**30 bytes)
    Weights: per parameter in the dtype it has when training starts: the backbone dtype, fp32 for what
    ``prepare_model_for_kbit_training`` upcasts, fp32 LoRA adapters (PEFT autocasts adapters to fp32);
    a ``*-true`` precision (``bf16-true``, ``16-true``, ``64-true``) then converts every floating tensor to
    that dtype as Lightning's precision plugin does (``32-true`` and ``*-mixed`` convert nothing, so with
    ``bf16-mixed`` the trainable master weights stay fp32 and with ``bf16-true`` they are bf16). 4-bit
    weights: the packed bytes plus the quantization constants (one fp32 absmax per 64-value block; with
    double quantization one uint8 per block plus one fp32 per 256 blocks, an fp32 offset and the nested
    256-entry fp32 code) and the 16-entry fp32 code; the output head and skipped modules stay unquantized.
    Gradients: trainable parameters only, in their dtype. Optimizer: AdamW/Adam keep ``exp_avg`` and
    ``exp_avg_sq`` in the parameter's dtype (``torch.optim``: 2 x 4 bytes for fp32 master weights, 2 x 2
    under ``bf16-true``) plus a 4-byte step per tensor; SGD with momentum one state, bitsandbytes 8-bit
    optimizers 2 x 1 byte.
    Activations (per micro batch ``b``, sequence ``s``, hidden ``h``, heads ``a``, MLP width ``I``, 16-bit;
    x2 for fp32): Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    eq. 1: ``34 s b h + 5 a s^2 b`` bytes per layer without recomputation), with the MLP term generalised to
    the model's width and gating (``15 s b h`` for attention and norms, plus ``s b (3 h + 4 I)`` for a GeLU MLP,
    which is 19 s b h at I = 4 h, or ``s b (2 h + 8 I)`` for a gated SwiGLU MLP). The ``5 a s^2 b`` attention
    score term is counted with ``--attention eager`` only: transformers' default SDPA attention (flash /
    memory-efficient kernels on GPUs) does not keep the s x s scores. LoRA dropout (p > 0) keeps a dropped
    copy of each adapted layer's input and its mask: ``s b in (bytes + 1)`` per adapted Linear. With
    gradient checkpointing: ``2 s b h`` per layer (the checkpointed layer inputs) plus one layer's full
    activations during its recomputation. Logits: ``b s V x 4`` bytes for the fp32 loss (plus the 16-bit
    head output); encoders: ``b x num_labels``. The vision tower's activations (image-size dependent) are
    not included; image tokens count in ``--seq-len``.
    Per strategy (world W = gpus x nodes): ``ddp`` replicates everything and holds one more copy of the
    gradients in its reducer buckets (Lightning's DDP keeps ``gradient_as_bucket_view=False``); ``fsdp`` /
    ``fsdp1`` (full shard) divide weights, gradients and optimizer states by W and add the unsharded working
    set (the root module's parameters, i.e. embeddings and head, plus two transformer blocks: the current one
    and the prefetched next, gathered in bf16 under bf16 precisions, plus one block's gradients in fp32 before
    the reduce-scatter); DeepSpeed casts the module to 16-bit and keeps an
    fp32 master copy with the fp32 Adam states (ZeRO's 2 + 2 + 12 bytes per trainable parameter):
    ``deepspeed_zero2`` replicates the weights and divides gradients and optimizer states by W,
    ``deepspeed_zero3`` divides all three by W and adds the gathered working set (the larger of the biggest
    single module and two blocks), ``deepspeed_zero3_offload`` keeps parameters, gradients and optimizer states
    in CPU memory (reported per node) and only the working set on the GPU. DeepSpeed buckets: two of
    ``min(2e8, trainable)`` 16-bit elements (Lightning's ``reduce/allgather_bucket_size``). A frozen 4-bit base
    is sharded by FSDP/ZeRO-3 too (the presets set ``quant.quant_storage`` to the compute dtype for that; the
    bytes, and PEFT's count for weights with a multiple of 4 values, do not change).
    Overhead: 1.5 GiB (CUDA context, cuBLAS/NCCL workspaces) + 10 % of the rest (allocator fragmentation).
    The recommended preset is the simplest that fits, in this order: ddp, fsdp, deepspeed_zero2,
    deepspeed_zero3, deepspeed_zero3_offload.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# The presets of trainer/strategies.py (not imported: it pulls in Lightning; a test keeps the two equal).
STRATEGIES = ("ddp", "fsdp", "fsdp1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
RECOMMEND_ORDER = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
SHARDS_PARAMS = {"fsdp", "fsdp1", "deepspeed_zero3", "deepspeed_zero3_offload"}
FIXED_OVERHEAD = 1.5 * GIB
FRAGMENTATION = 0.10
DS_BUCKET_ELEMENTS = int(2e8)  # Lightning's DeepSpeedStrategy reduce_bucket_size / allgather_bucket_size
VL_MODEL_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")

_PRECISIONS = {
    "32": "32-true", "32-true": "32-true", "16": "16-mixed", "16-mixed": "16-mixed", "16-true": "16-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true", "64": "64-true",
    "64-true": "64-true",
}


class PlanError(ValueError):
    """The recipe cannot be planned (missing file, missing key, unknown value)."""


# ----- reading the recipe ---------------------------------------------------------------------------------
def _merge(base: Any, over: Any) -> Any:
    """Merge one config layer over another as ``-c`` stacking does (see module docstring)."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    if "class_path" in over and "class_path" in base and over["class_path"] != base["class_path"]:
        out.pop("init_args", None)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if key in out else value
    return out


def _resolve_file(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO / p).exists():
        return REPO / p
    places = sorted({str(Path.cwd()), str(REPO)})
    raise PlanError(f"recipe not found: {path} (looked in {' and '.join(places)})")


def stack_configs(paths: list[str]) -> dict:
    """The recipe and overlays merged left to right."""
    import yaml

    if not paths:
        raise PlanError("give at least one recipe with -c RECIPE")
    config: dict = {}
    for path in paths:
        file = _resolve_file(path)
        try:
            layer = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise PlanError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(layer, dict):
            raise PlanError(f"{path}: a recipe is a mapping of sections (trainer, model, data), got {type(layer).__name__}")
        config = _merge(config, layer)
    return config


def _section(config: dict, name: str) -> tuple[str | None, dict]:
    sec = config.get(name) or {}
    if isinstance(sec, str):  # `model: modules.x.Class` shorthand
        return sec, {}
    if not isinstance(sec, dict):
        raise PlanError(f"{name}: expected a mapping with class_path/init_args, got {sec!r}")
    init = dict(sec.get("init_args") or {})
    init.update({k: v for k, v in sec.items() if k not in ("class_path", "init_args", "dict_kwargs")})
    return sec.get("class_path"), init


def _dataclass(cls, value: Any, key: str):
    if value is None:
        return None
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise PlanError(f"{key}: expected a mapping, got {value!r}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise PlanError(f"{key}: unknown field(s) {unknown}; {cls.__name__} takes {sorted(names)}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise PlanError(f"{key}: {e}") from None


@dataclass
class Recipe:
    """What the planner needs from a stacked recipe."""

    paths: list[str]
    model_class_path: str
    data_class_path: str | None
    backbone: Any  # modules.backbone.BackboneSpec
    lora: Any  # LoraSpec | None
    quant: Any  # QuantSpec | None
    batch: Any  # datamodules.batch.BatchSpec
    seq_len: int
    seq_len_source: str
    precision: str
    optimizer: str
    optimizer_args: dict = field(default_factory=dict)
    task: str | None = None
    num_labels: int | None = None

    module_class: Any = None  # the LightningModule class of model.class_path; describes how it builds its model
    model_args: dict = field(default_factory=dict)  # model.init_args as written in the recipe

    @property
    def is_encoder(self) -> bool:
        """A sequence-classification model (head of ``num_labels``), as the module declares."""
        return self.module_class.peft_task_type == "SEQ_CLS"


def _signature_default(class_path: str | None, name: str) -> Any:
    if not class_path:
        return None
    import importlib
    import inspect

    module, _, cls = class_path.rpartition(".")
    try:
        param = inspect.signature(getattr(importlib.import_module(module), cls)).parameters.get(name)
    except Exception:  # noqa: BLE001 - a module that cannot be imported simply has no default to offer
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _module_class(class_path: str):
    """The task module class named by ``model.class_path`` (it declares how it builds its model)."""
    import importlib

    from modules.base import TuneloopModule

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise PlanError(f"model.class_path {class_path!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, TuneloopModule)):
        raise PlanError(f"model.class_path {class_path!r} is not a tuneloop task module (modules.base.TuneloopModule)")
    return cls


def read_recipe(paths: list[str], seq_len: int | None = None) -> Recipe:
    """Stack ``paths`` and extract the planner's inputs (validated through the modules' dataclasses)."""
    from modules.backbone import BackboneSpec, LoraSpec, QuantSpec, TinySpec
    from datamodules.batch import BatchSizeError, BatchSpec

    config = stack_configs(paths)
    model_cp, model_args = _section(config, "model")
    data_cp, data_args = _section(config, "data")
    if not model_cp:
        raise PlanError("model.class_path is not set (e.g. modules.causal_lm.CausalLMModule)")
    bb = model_args.get("backbone")
    if not isinstance(bb, dict) or not bb.get("name_or_path"):
        raise PlanError("model.init_args.backbone.name_or_path is not set")
    bb = dict(bb)
    bb["tiny_size"] = _dataclass(TinySpec, bb.get("tiny_size") or {}, "model.init_args.backbone.tiny_size")
    backbone = _dataclass(BackboneSpec, bb, "model.init_args.backbone")
    lora = _dataclass(LoraSpec, model_args.get("lora"), "model.init_args.lora")
    quant = _dataclass(QuantSpec, model_args.get("quant"), "model.init_args.quant")
    if quant is not None and lora is None:
        raise PlanError("model.quant (4-bit base) needs model.lora: a quantized base is trained through adapters")
    try:
        batch = _dataclass(BatchSpec, data_args.get("batch") or {}, "data.init_args.batch")
    except BatchSizeError as e:
        raise PlanError(f"data.init_args.batch: {e}") from None

    if seq_len is not None:
        source = "--seq-len"
    else:
        for key in ("cutoff_len", "max_length"):
            if data_args.get(key) is not None:
                seq_len, source = int(data_args[key]), f"data.{key}"
                break
        else:
            for key in ("cutoff_len", "max_length"):
                default = _signature_default(data_cp, key)
                if default is not None:
                    seq_len, source = int(default), f"data.{key} (default)"
                    break
            else:
                raise PlanError("the recipe has no data.init_args.cutoff_len / max_length: pass --seq-len")
    if seq_len < 1:
        raise PlanError(f"sequence length must be >= 1, got {seq_len}")

    raw_precision = (config.get("trainer") or {}).get("precision")
    precision = _PRECISIONS.get(str(raw_precision if raw_precision is not None else "32-true"))
    if precision is None:
        raise PlanError(f"trainer.precision {raw_precision!r} is not one of {sorted(_PRECISIONS)}")

    opt = model_args.get("optimizer")
    if isinstance(opt, dict):
        optimizer, optimizer_args = opt.get("class_path") or "torch.optim.AdamW", dict(opt.get("init_args") or {})
    elif isinstance(opt, str):
        optimizer, optimizer_args = opt, {}
    else:
        optimizer, optimizer_args = "torch.optim.AdamW", {}  # modules.base.default_optimizer

    recipe = Recipe(paths=list(paths), model_class_path=model_cp, data_class_path=data_cp, backbone=backbone,
                    lora=lora, quant=quant, batch=batch, seq_len=seq_len, seq_len_source=source,
                    precision=precision, optimizer=optimizer, optimizer_args=optimizer_args,
                    module_class=_module_class(model_cp), model_args=dict(model_args))
    if recipe.is_encoder:
        task = data_args.get("task")
        if task is None:
            raise PlanError("an encoder recipe needs data.init_args.task (binary, multiclass, multilabel, regression)")
        if task == "binary":
            n = 1
        elif task == "regression":
            n = len(data_args.get("label_fields") or [])
        else:
            n = len(data_args.get("labels") or [])
        if n < 1:
            raise PlanError(f"cannot tell the number of outputs of task {task!r}: set data.labels / data.label_fields")
        recipe.task, recipe.num_labels = task, n
    return recipe


# ----- the model on the meta device -----------------------------------------------------------------------
def _four_bit_constants(n: int, double_quant: bool, blocksize: int = 64) -> int:
    """Bytes of bitsandbytes' quantization state for one 4-bit tensor of ``n`` values."""
    blocks = -(-n // blocksize)
    code = 16 * 4  # the NF4/FP4 code book (fp32) of the QuantState
    if double_quant:
        # uint8 absmax per block; the nested state: fp32 absmax per 256 blocks, its 256-entry fp32 code, offset
        return blocks * 1 + (-(-blocks // 256)) * 4 + 256 * 4 + 4 + code
    return blocks * 4 + code


def _vision_tower(model) -> str | None:
    best = None
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES and (best is None or name.count(".") < best.count(".")):
            best = name
    return best


def _quantize_on_meta(model, quant) -> tuple[dict[str, int], list[str], list[str]]:
    """Swap the weights transformers would quantize for packed meta ``Params4bit``; returns {param: numel},
    the skip patterns used, and the unquantized Linear modules."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    bnb_config = quant.to_bnb()
    skip = bnb_config.llm_int8_skip_modules
    add_defaults = False
    if skip is None and getattr(model.config, "vision_config", None) is not None:
        tower = _vision_tower(model)
        if tower:
            skip, add_defaults = [tower], True
    keep_fp32 = model._keep_in_fp32_modules
    patterns = HfQuantizer.get_modules_to_not_convert(model, skip, list(keep_fp32) if keep_fp32 else None,
                                                      add_default_skips=add_defaults)
    storage = bnb_config.bnb_4bit_quant_storage
    itemsize = torch.empty((), dtype=storage).element_size()
    quantized, kept = {}, []
    for name, module in model.named_modules():
        if not (type(module) is nn.Linear or isinstance(module, Conv1D)):
            continue
        if not should_convert_module(name, patterns):
            kept.append(name)
            continue
        # bitsandbytes packs two 4-bit values per byte of the storage dtype, and PEFT's
        # get_nb_trainable_parameters counts a Params4bit as numel x 2 x element_size to undo that: a meta
        # Params4bit of the packed shape makes PEFT's own count (and printed line) the 4-bit model's.
        n = module.weight.numel()
        packed = torch.empty(((n + 1) // (itemsize * 2), 1), dtype=storage, device="meta")
        module.weight = bnb.nn.Params4bit(packed, requires_grad=False, blocksize=64,
                                          compress_statistics=bnb_config.bnb_4bit_use_double_quant,
                                          quant_type=bnb_config.bnb_4bit_quant_type, quant_storage=storage)
        module.weight.plan_numel = n  # the unpacked size, for the bytes of the quantization constants
        quantized[f"{name}.weight"] = n
    model.is_loaded_in_4bit = True  # what from_pretrained sets; prepare_model_for_kbit_training reads it
    return quantized, patterns, kept


def _model_class(recipe: Recipe, config):
    import transformers

    model_type = getattr(config, "model_type", None)
    if model_type in VL_MODEL_CLASSES:
        return getattr(transformers, VL_MODEL_CLASSES[model_type])
    if recipe.is_encoder:
        return transformers.AutoModelForSequenceClassification
    if getattr(config, "vision_config", None) is not None:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def _load_config(recipe: Recipe):
    from modules.backbone import load_arch_config, load_tokenizer, resolve_path, shrink_config

    spec = recipe.backbone
    overrides = {"num_labels": recipe.num_labels} if recipe.is_encoder else {}
    source = spec.arch_config or spec.name_or_path
    if not spec.arch_config and not Path(resolve_path(spec.name_or_path)).exists():
        raise PlanError(f"backbone.arch_config is not set and {spec.name_or_path!r} is not a local directory: "
                        "set model.init_args.backbone.arch_config (configs/models/<name>); the planner never downloads")
    if spec.arch_config and not Path(resolve_path(spec.arch_config)).exists():
        if (REPO / spec.arch_config).exists():
            spec.arch_config = str(REPO / spec.arch_config)
        else:
            raise PlanError(f"backbone.arch_config {spec.arch_config!r} does not exist")
    try:
        config = load_arch_config(spec, **overrides)
        if spec.tiny:
            if spec.tokenizer and not Path(resolve_path(spec.tokenizer)).exists() and (REPO / spec.tokenizer).exists():
                spec.tokenizer = str(REPO / spec.tokenizer)
            config = shrink_config(config, load_tokenizer(spec), spec.tiny_size)
    except (OSError, ValueError) as e:
        raise PlanError(f"cannot read the architecture config {source!r}: {e}") from None
    return config


@dataclass
class Built:
    model: Any  # PeftModel or the transformers model, on meta
    base_class: str
    model_type: str
    base_total: int  # parameters of the transformers model before adapters (PEFT-style count when 4-bit)
    quantized: dict  # {param name in the final model: original numel}
    quant_patterns: list
    unquantized_linear: list
    peft_line: str
    trainable: int
    all_params: int


def build_meta_model(recipe: Recipe) -> Built:
    """The recipe's model on the meta device, quantized and wrapped with LoRA as the task module would."""
    import torch

    config = _load_config(recipe)
    cls = _model_class(recipe, config)
    spec = recipe.backbone
    with torch.device("meta"):
        if cls.__name__.startswith("AutoModel"):
            model = cls.from_config(config, dtype=spec.torch_dtype, trust_remote_code=spec.trust_remote_code)
        else:
            model = cls._from_config(config, dtype=spec.torch_dtype)
    quantized, patterns, kept = {}, [], []
    if recipe.quant is not None:
        quant = recipe.module_class.planned_quant(recipe.quant)  # as the module quantizes (e.g. VLM: not the vision tower)
        quantized, patterns, kept = _quantize_on_meta(model, quant)
    base_total = _peft_count(model)[1]
    if recipe.lora is not None:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if recipe.quant is not None:
            with warnings.catch_warnings():  # transformers' deprecation notes about checkpointing names
                warnings.simplefilter("ignore", FutureWarning)
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                                        gradient_checkpointing_kwargs={"use_reentrant": False})
        task_type = recipe.module_class.peft_task_type
        # As the module resolves it (VLM: the language model's linear layers, the vision tower's with lora).
        lora = recipe.module_class.planned_lora(model, recipe.lora, recipe.model_args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora.to_peft(task_type), low_cpu_mem_usage=True)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            model.print_trainable_parameters()
        peft_line = buf.getvalue().strip()
        trainable, all_params = model.get_nb_trainable_parameters()
    else:
        trainable, all_params = _peft_count(model)
        # Full fine-tuning: no PEFT model; the same line in PEFT's format, from PEFT's way of counting.
        peft_line = (f"trainable params: {trainable:,d} || all params: {all_params:,d} || "
                     f"trainable%: {100 * trainable / all_params:.4f}")
    _apply_precision(model, recipe.precision)
    # Names as they end up in the (PEFT-wrapped) model, e.g. ...q_proj.base_layer.weight.
    quantized = {name: p.plan_numel for name, p in model.named_parameters() if hasattr(p, "plan_numel")}
    return Built(model=model, base_class=type(_base(model)).__name__, model_type=config.model_type,
                 base_total=base_total, quantized=quantized, quant_patterns=patterns, unquantized_linear=kept,
                 peft_line=peft_line, trainable=trainable, all_params=all_params)


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def _peft_count(model) -> tuple[int, int]:
    """(trainable, all) counted as PEFT's ``get_nb_trainable_parameters`` counts (4-bit: numel x 2 x bytes)."""
    trainable = total = 0
    for _, p in model.named_parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = n * 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _true_dtype(precision: str):
    import torch

    return {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}.get(precision)


def _apply_precision(model, precision: str) -> None:
    """Lightning's ``*-true`` precision plugins convert every floating tensor (not the 4-bit ones)."""
    dtype = _true_dtype(precision)
    if dtype is None:
        return
    for p in model.parameters():
        if p.__class__.__name__ != "Params4bit" and p.is_floating_point():
            p.data = p.data.to(dtype)


# ----- bytes ----------------------------------------------------------------------------------------------
_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16",
                "torch.float64": "float64"}


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
    base = _base(built.model)
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


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _lora_extra_per_token(built: Built, recipe: Recipe, act_bytes: int) -> tuple[int, str | None]:
    """Bytes per token of one text block kept by LoRA (dropout copies and masks, the rank-r intermediate)."""
    if recipe.lora is None:
        return 0, None
    from torch import nn

    base = _base(built.model)
    layers = _text_layers(base)
    if not layers:
        return 0, None
    first = layers[0][1]
    extra = 0
    for _, module in first.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or not lora_a:
            continue
        for key, lin in lora_a.items():
            drop = module.lora_dropout[key] if hasattr(module, "lora_dropout") else None
            if drop is not None and not isinstance(drop, nn.Identity):
                extra += lin.in_features * (act_bytes + 1)
            extra += lin.out_features * act_bytes
    return extra, layers[0][0].rsplit(".", 1)[0]


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


def activations(built: Built, recipe: Recipe, attention: str = "sdpa") -> dict:
    """Activation bytes of one micro batch (see module docstring for the formula)."""
    base = _base(built.model)
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
    lora_extra, _ = _lora_extra_per_token(built, recipe, act_bytes)
    full_layer = s * b * (per_token + lora_extra) + scores
    checkpointing = recipe.backbone.gradient_checkpointing
    if checkpointing:
        layers_bytes = L * 2 * s * b * h * act_bytes // 2 + full_layer
    else:
        layers_bytes = L * full_layer
    if recipe.is_encoder:
        logits = b * (recipe.num_labels or 1) * 4
        vocab = None
    else:
        vocab = text.vocab_size
        logits = b * s * vocab * 4 + (b * s * vocab * act_bytes if act_bytes < 4 else 0)
    return {
        "total": layers_bytes + logits,
        "layers": layers_bytes,
        "logits": logits,
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
        "bytes_per_value": act_bytes,
        "gradient_checkpointing": checkpointing,
        "attention": attention,
    }


def strategy_memory(inv: dict, act: dict, recipe: Recipe, gpus: int, nodes: int, gpu_memory_gib: float) -> dict:
    """GiB per GPU for each strategy preset (see module docstring)."""
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
    buffer_notes = {
        "ddp": "DDP reducer buckets (one more copy of the gradients)",
        "fsdp": "unsharded working set: root module (embeddings, head) + 2 blocks",
        "fsdp1": "unsharded working set: root module (embeddings, head) + 2 blocks",
        "deepspeed_zero2": "reduce/allgather buckets",
        "deepspeed_zero3": "gathered working set (largest module or 2 blocks) + buckets",
        "deepspeed_zero3_offload": "gathered working set + buckets; params/grads/optimizer in CPU memory",
    }
    out = {}
    for name in STRATEGIES:
        p = parts[name]
        subtotal = sum(p.values())
        overhead = FIXED_OVERHEAD + FRAGMENTATION * subtotal
        total = subtotal + overhead
        notes = []
        if name in SHARDS_PARAMS and recipe.quant is not None:
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
            "buffers_are": buffer_notes[name],
            "notes": notes,
        }
        if name == "deepspeed_zero3_offload":
            entry["cpu_gib_per_node"] = round(cpu / GIB, 2)
        out[name] = entry
    return out


# ----- the plan -------------------------------------------------------------------------------------------
def plan(configs: list[str], gpus: int = 1, nodes: int = 1, gpu_memory: float = 80.0, seq_len: int | None = None,
         attention: str = "sdpa") -> dict:
    """Everything ``tuneloop plan`` prints, as one JSON-able dict."""
    from datamodules.batch import BatchSizeError, derive_accumulation

    if gpus < 1 or nodes < 1:
        raise PlanError(f"--gpus and --nodes must be >= 1, got {gpus} and {nodes}")
    if gpu_memory <= 0:
        raise PlanError(f"--gpu-memory must be > 0 GiB, got {gpu_memory}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the planner reads local configs only
    recipe = read_recipe(configs, seq_len)
    built = build_meta_model(recipe)
    inv = inventory(built, recipe)
    act = activations(built, recipe, attention)
    strategies = strategy_memory(inv, act, recipe, gpus, nodes, gpu_memory)
    recommended = next((s for s in RECOMMEND_ORDER if strategies[s]["fits"]), None)
    world = gpus * nodes
    try:
        acc = derive_accumulation(recipe.batch.global_batch_size, recipe.batch.micro_batch_size, world)
        accumulation = {"accumulate_grad_batches": acc, "error": None}
    except BatchSizeError as e:
        accumulation = {"accumulate_grad_batches": None, "error": str(e)}
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


# ----- output ---------------------------------------------------------------------------------------------
def _gib(x: float) -> str:
    return f"{x / GIB:,.2f}"


def render_text(result: dict, console=None) -> None:
    """Rich tables on ``console`` (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console(width=max(Console().width, 120))
    m, p, b, act = result["model"], result["params"], result["bytes"], result["activations"]
    method = "full fine-tuning"
    if m["lora"]:
        lora = m["lora"]
        targets = lora["target_modules"] if isinstance(lora["target_modules"], str) else ",".join(lora["target_modules"])
        method = f"{'DoRA' if lora['use_dora'] else 'LoRA'} r={lora['r']} alpha={lora['alpha']} {targets}"
    if m["quant"]:
        q = m["quant"]
        method = f"Q{method} · 4-bit {q['quant_type']}{' double-quant' if q['double_quant'] else ''}"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("recipe", " + ".join(result["recipe"]))
    model_line = f"{m['class']} ({m['model_type']}) · {m['arch_config'] or m['name_or_path']}"
    if m["tiny"]:
        model_line += " · tiny (debug)"
    if m["num_labels"]:
        model_line += f" · {m['task']}, num_labels={m['num_labels']}"
    head.add_row("model", model_line)
    head.add_row("method", f"{method} · weights {m['dtype']} · precision {result['precision']}"
                 + (" · gradient checkpointing" if m["gradient_checkpointing"] else ""))
    head.add_row("params", f"total {p['total']:,d} · trainable {p['trainable']:,d}"
                 + (f" · 4-bit {p['four_bit']:,d}" if p["four_bit"] else ""))
    head.add_row("PEFT", p["peft_line"])
    if m["quant"]:
        head.add_row("unquantized", f"{p['unquantized_linear_modules']} Linear modules kept in the compute dtype "
                     f"(skip patterns: {', '.join(sorted(p['quantization_skip_patterns'])) or 'none'})")
    bt = result["batch"]
    head.add_row("batch", f"global {bt['global_batch_size']} · micro {bt['micro_batch_size']} · seq len "
                 f"{bt['seq_len']} ({bt['seq_len_source']})")
    w = result["world"]
    acc = result["accumulation"]
    acc_text = (f"accumulate_grad_batches = {acc['accumulate_grad_batches']}" if acc["error"] is None
                else "[red]the global batch does not divide (below)[/red]")
    head.add_row("world", f"{w['gpus']} GPU(s) x {w['nodes']} node(s) = {w['world_size']} · {acc_text}")
    console.print(head)
    if acc["error"] is not None:
        console.print(f"[red]accumulation: {acc['error']}[/red]", soft_wrap=True, markup=True, highlight=False)

    mem = Table(title="Memory of one full replica (before sharding)", title_justify="left")
    mem.add_column("part")
    mem.add_column("detail")
    mem.add_column("params", justify="right")
    mem.add_column("GiB", justify="right")
    for dtype, nbytes in sorted(b["weights_by_dtype"].items()):
        detail = "4-bit packed + quantization constants" if dtype == "4bit" else dtype
        mem.add_row("weights", detail, f"{b['params_by_dtype'][dtype]:,d}", _gib(nbytes))
    mem.add_row("gradients", "trainable parameters, their dtype", f"{p['trainable']:,d}", _gib(b["gradients"]))
    mem.add_row("optimizer", result["optimizer"], "", _gib(b["optimizer"]))
    ck = "checkpointing: 2sbh per layer + one layer" if act["gradient_checkpointing"] else "no recomputation"
    mem.add_row("activations", f"{act['layers_count']} layers · b={act['micro_batch']} s={act['seq_len']} "
                f"h={act['hidden']} · {ck}", "", _gib(b["activations_layers"]))
    mem.add_row("logits", f"fp32 loss over {act['vocab']:,d} tokens" if act["vocab"] else "classifier outputs",
                "", _gib(b["logits"]))
    console.print(mem)

    st = Table(title=f"Per GPU, world size {w['world_size']} ({result['gpu_memory_gib']:g} GiB each)",
               title_justify="left")
    for col in ("strategy", "weights", "grads", "optimizer", "act.+logits", "buffers", "overhead", "total GiB",
                "fits"):
        st.add_column(col, justify="left" if col in ("strategy", "fits") else "right", no_wrap=True)
    for name, entry in result["strategies"].items():
        x = entry["bytes"]
        fits = "[green]yes[/green]" if entry["fits"] else "[red]no[/red]"
        st.add_row(name, _gib(x["weights"]), _gib(x["gradients"]), _gib(x["optimizer"]), _gib(x["activations"]),
                   _gib(x["buffers"]), _gib(x["overhead"]), f"{entry['gib_per_gpu']:,.2f}", fits)
    console.print(st)
    for name, entry in result["strategies"].items():
        for note in entry["notes"]:
            console.print(f"  {name}: {note}")
    rec = result["recommended"]
    if rec:
        console.print(f"[bold]recommended:[/bold] {rec} (the simplest preset that fits; "
                      f"tuneloop fit ... --trainer.strategy={rec})")
    else:
        console.print("[bold red]no preset fits[/bold red]: lower data.batch.micro_batch_size or --seq-len, enable "
                      "backbone.gradient_checkpointing, use QLoRA, or add GPUs")
    a = result["assumptions"]
    console.print(f"[dim]assumptions: {a['overhead']}; {a['activations']}; {a['deepspeed']}. "
                  "Details: trainer/plan.py docstring.[/dim]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop plan",
        description="Count a recipe's parameters exactly on the meta device (no weights, no download), print PEFT's "
                    "trainable-parameter line, and estimate memory per GPU for every strategy preset (ddp, fsdp, "
                    "fsdp1, deepspeed_zero2, deepspeed_zero3, deepspeed_zero3_offload) with the recommended one "
                    "and the derived gradient accumulation.",
        epilog="examples:\n"
               "  tuneloop plan -c configs/sft/komt-llama2-13b-lora.yaml --gpus 8\n"
               "  tuneloop plan -c configs/sft/komt-llama2-13b-qlora.yaml --gpu-memory 24\n"
               "  tuneloop plan -c configs/intent/exaone-4.0-1.2b-lora.yaml -c configs/debug.yaml --json\n\n"
               "Estimates follow the assumptions in trainer/plan.py's docstring (Korthikanti et al. 2022 "
               "activations, ZeRO byte counts, 1.5 GiB + 10% overhead).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", action="append", required=True, metavar="YAML",
                        help="recipe, then overlays (stacked left to right as in `tuneloop fit`)")
    parser.add_argument("--gpus", type=int, default=1, help="devices per node (default 1)")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GiB",
                        help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--seq-len", type=int, default=None, metavar="L",
                        help="tokens per sample (default: data.cutoff_len or data.max_length of the recipe)")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                        help="sdpa (default; flash/memory-efficient kernels keep no s x s scores) or eager "
                             "(adds Korthikanti's 5·a·s²·b per layer)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        result = plan(args.config, gpus=args.gpus, nodes=args.nodes, gpu_memory=args.gpu_memory,
                      seq_len=args.seq_len, attention=args.attention)
    except PlanError as e:
        raise SystemExit(f"tuneloop plan: {e}") from None
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render_text(result)


if __name__ == "__main__":
    main(sys.argv[1:])
