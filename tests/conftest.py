"""Shared fixtures: offline everything, a repo-relative working directory, tiny recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizers" / "tiny-bpe"

# Tests never reach the network: no hub, no W&B sync.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Recipes use repo-relative paths (data/samples/..., configs/models/...)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def save_tiny_llama_with_adapter(root: Path, base: str):
    """A random 2-layer Llama sized to the local tokenizer, saved with the tokenizer in ``root/base``, and a LoRA
    adapter (r 4 on q/v/o) on that saved base (so the adapter names it as its base), saved with the tokenizer in
    ``root/adapter``. The adapter's B matrices are perturbed (LoRA starts as a no-op: B = 0) so that the adapted
    model answers differently. Returns (the tokenizer, the adapted model in eval mode)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / base)
    tok.save_pretrained(root / base)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(root / base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    model.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return tok, model


def load_script(name: str):
    """Import ``scripts/<name>.py`` from its file path (``scripts`` is not a package), once per session."""
    import importlib.util
    import sys

    mod_name = f"_tuneloop_script_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module
