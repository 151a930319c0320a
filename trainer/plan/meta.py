"""The recipe's model on the meta device (no memory, no weights), built and counted as the task module would.

The architecture config (``backbone.arch_config``; shrunk with the local tokenizer like the debug overlay when
``tiny: true``) is instantiated with the class the module uses: ``AutoModelForSequenceClassification`` for a
``SEQ_CLS`` module (``num_labels`` from the data), ``AutoModelForCausalLM`` otherwise, the vision-language class
for a VL ``model_type`` (e.g. ``qwen2_5_vl`` -> ``Qwen2_5_VLForConditionalGeneration``). Only local files are
read (``local_files_only``).

QLoRA is reproduced, not approximated: the Linear layers transformers would quantize are chosen with
transformers' own functions (``HfQuantizer.get_modules_to_not_convert`` on ``QuantSpec.to_bnb()``'s skip list,
then ``should_convert_module``), and each chosen weight becomes a meta ``bitsandbytes.nn.Params4bit`` of the
packed shape bitsandbytes produces (``(n + 1) // (2 x storage itemsize)`` elements of the storage dtype). PEFT's
``prepare_model_for_kbit_training`` and ``get_peft_model`` (``low_cpu_mem_usage=True``: adapters on meta too)
then run as in ``modules.backbone.apply_lora``; the printed line is PEFT's own ``print_trainable_parameters()``,
which counts a ``Params4bit`` as ``numel x 2 x element_size``, reproduced exactly by the packed tensors. A VL
model whose recipe gives no ``quant.skip_modules`` keeps its vision tower unquantized.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.plan.recipe import REPO, PlanError, Recipe

VL_MODEL_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")


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
        config = load_arch_config(spec, local_files_only=True, **overrides)
        if spec.tiny:
            if spec.tokenizer and not Path(resolve_path(spec.tokenizer)).exists() and (REPO / spec.tokenizer).exists():
                spec.tokenizer = str(REPO / spec.tokenizer)
            config = shrink_config(config, load_tokenizer(spec, local_files_only=True), spec.tiny_size)
    except (OSError, ValueError) as e:
        raise PlanError(f"cannot read the architecture config {source!r}: {e}") from None
    return config


def build_meta_model(recipe: Recipe) -> Built:
    """The recipe's model on the meta device, quantized and wrapped with LoRA as the task module would."""
    import torch

    from modules.adapter import base_model

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
    base_total = peft_count(model)[1]
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
        trainable, all_params = peft_count(model)
        # Full fine-tuning: no PEFT model; the same line in PEFT's format, from PEFT's way of counting.
        peft_line = (f"trainable params: {trainable:,d} || all params: {all_params:,d} || "
                     f"trainable%: {100 * trainable / all_params:.4f}")
    _apply_precision(model, recipe.precision)
    # Names as they end up in the (PEFT-wrapped) model, e.g. ...q_proj.base_layer.weight.
    quantized = {name: p.plan_numel for name, p in model.named_parameters() if hasattr(p, "plan_numel")}
    return Built(model=model, base_class=type(base_model(model)).__name__, model_type=config.model_type,
                 base_total=base_total, quantized=quantized, quant_patterns=patterns, unquantized_linear=kept,
                 peft_line=peft_line, trainable=trainable, all_params=all_params)


def peft_count(model) -> tuple[int, int]:
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


def _apply_precision(model, precision: str) -> None:
    """Lightning's ``*-true`` precision plugins convert every floating tensor (not the 4-bit ones)."""
    import torch

    dtype = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}.get(precision)
    if dtype is None:
        return
    for p in model.parameters():
        if p.__class__.__name__ != "Params4bit" and p.is_floating_point():
            p.data = p.data.to(dtype)
