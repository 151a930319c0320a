"""The bench's shared pieces: the random-init causal LM both sides load, model FLOPs per token, and the CPU's
measured matmul peak (for MFU). Used by ``scripts/bench.py`` (and ``scripts/gpu_check.py``); no Lightning here.

The model: a Llama (the SFT recipe's family, ``configs/models/komt-llama2-13b``) shrunk to 8 layers of width
384 (about 17M parameters), random init, saved once with ``save_pretrained`` under ``runs/bench/model`` and
loaded from there by tuneloop (``model.backbone.name_or_path``) and by the HF Trainer alike. Its tokenizer is
a byte-level BPE trained (``scripts/train_tokenizer.build_tokenizer``, deterministic) on English text of the
repository: the shipped ``data/tokenizers/tiny-bpe`` was trained for Korean and the WAAM records, splits the
English Alpaca samples into ~320 tokens each, so that at cutoff 256 every sample is truncated to exactly 256
tokens and there is no length variation to pad or pack; this one gives 164-208 tokens per sample, the spread
a real English tokenizer gives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "runs" / "bench" / "model"
#: English text for the bench tokenizer: the raw R&D records (the Alpaca pairs' source) and the WAAM records.
TOKENIZER_INPUTS = ("data/samples/instructions/raw_records.jsonl", "data/samples/waam/train.jsonl")
#: Shape of the bench model (Llama family); the rest comes from configs/models/komt-llama2-13b.
MODEL_SHAPE = {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 6,
               "intermediate_size": 1024, "max_position_embeddings": 512, "initializer_range": 0.02}
MANIFEST = "bench_model.json"
SEED = 0


def model_spec() -> dict:
    """What the saved model is made from; a saved model whose manifest differs is rebuilt."""
    return {"arch_config": "configs/models/komt-llama2-13b", "shape": MODEL_SHAPE, "seed": SEED,
            "tokenizer_inputs": list(TOKENIZER_INPUTS), "tokenizer_vocab_size": 8192, "version": 1}


def ensure_model(out: Path = MODEL_DIR) -> tuple[Path, bool]:
    """Build and save the bench model and tokenizer into ``out`` unless an identical one is there; returns
    (``out``, whether it was built now)."""
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == model_spec():
        return out, False
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "scripts"))
    import train_tokenizer

    spec = model_spec()
    tok = train_tokenizer.build_tokenizer([ROOT / p for p in TOKENIZER_INPUTS], spec["tokenizer_vocab_size"], 2, 1)
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer.save(tok, out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    config = AutoConfig.from_pretrained(str(ROOT / spec["arch_config"]))
    for key, value in MODEL_SHAPE.items():
        setattr(config, key, value)
    config.head_dim = MODEL_SHAPE["hidden_size"] // MODEL_SHAPE["num_attention_heads"]
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                                     tokenizer.eos_token_id)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out))
    params = sum(p.numel() for p in model.parameters())
    manifest.write_text(json.dumps({"spec": spec, "parameters": params, "vocab_size": len(tokenizer)}, indent=2) + "\n")
    return out, True


def ensure_random_model(arch_config: str, out: Path, tokenizer: str = "data/tokenizers/tiny-bpe",
                        dtype: str = "bfloat16", device: str = "cpu") -> tuple[Path, bool]:
    """A random-init model of a production architecture at full size (``configs/models/<name>``: every dimension
    and the vocabulary kept; special-token ids set to the local ``tokenizer``'s, which is saved beside it), for
    throughput and memory checks where the weights do not matter. Built on ``device`` (a GPU builds 1B parameters
    in seconds) and saved once into ``out``; an identical one there is reused."""
    spec = {"arch_config": arch_config, "tokenizer": tokenizer, "dtype": dtype, "seed": SEED, "version": 1}
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == spec:
        return out, False
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / tokenizer))
    config = AutoConfig.from_pretrained(str(ROOT / arch_config))
    if len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer} has {len(tok)} tokens, more than {arch_config}'s {config.vocab_size}")
    config.pad_token_id, config.bos_token_id, config.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    params = sum(p.numel() for p in model.parameters())
    manifest.write_text(json.dumps({"spec": spec, "parameters": params, "vocab_size": config.vocab_size}, indent=2) + "\n")
    del model
    return out, True


def model_info(model_dir: Path) -> dict:
    """Parameters of the saved model (from its manifest) and the shape numbers the FLOP count needs."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    manifest = Path(model_dir) / MANIFEST
    params = json.loads(manifest.read_text())["parameters"] if manifest.is_file() else None
    return {"parameters": params, **decoder_shape(config)}


def decoder_shape(config: dict) -> dict:
    """Layers, width and matmul weights per token of a Llama-style decoder config (``config.json`` as a dict):
    q/k/v/o, gate/up/down of every layer and the output head (the embedding lookup is no matmul)."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter
    return {"layers": layers, "attn_width": heads * head_dim,
            "matmul_params": layers * per_layer + config["vocab_size"] * h}


def encoder_shape(config: dict) -> dict:
    """The same for a BERT-style encoder: q/k/v/o and the two MLP matrices of every layer (pooler and
    classifier run once per record, not per token, and are left out)."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    return {"layers": layers, "attn_width": h, "matmul_params": layers * (4 * h * h + 2 * h * inter)}


def train_flops(tokens: int, sq_lengths: int, shape: dict, trainable_params: int = 0, frozen_base: bool = True) -> float:
    """Model FLOPs of one training pass over records of ``tokens`` real tokens in all, whose squared lengths sum
    to ``sq_lengths`` (padding does not count, and neither does activation recomputation: model FLOPs, not
    hardware FLOPs).

    Weights: forward 2 FLOPs per weight per token, backward 2 more for the input gradient and, for trained
    weights only, 2 for the weight gradient: ``4 N + 6 N_adapter`` per token with a frozen base (LoRA; the adapter
    weights are matmuls too), ``6 N`` in full fine-tuning. Attention scores and mixing (no weights), per layer
    and token of a record of ``l`` tokens: ``4 w l`` forward (QK^T and AV over ``l`` positions, width ``w``),
    twice that backward: ``12 w l`` (the PaLM convention: the full square, causal masking not subtracted), so
    ``12 L w sum(l^2)`` over the records."""
    n, layers, width = shape["matmul_params"], shape["layers"], shape["attn_width"]
    per_token = (4 * n + 6 * trainable_params) if frozen_base else 6 * n
    return float(per_token * tokens + 12 * layers * width * sq_lengths)


def measure_peak_flops(threads: int | None = None, size: int = 1024, seconds: float = 1.0, trials: int = 3) -> dict:
    """fp32 matmul FLOP/s of this CPU with ``threads`` torch threads: the best of ``trials`` timings of
    ``size`` x ``size`` products, each trial running for about ``seconds``. The best, because the machine is
    shared: slower trials measure the neighbours, not the chip."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        best = max(best, 2 * size ** 3 * n / (time.perf_counter() - start))
    return {"flops_per_sec": best, "threads": torch.get_num_threads(), "matmul": f"{size}x{size} fp32",
            "trials": trials}
