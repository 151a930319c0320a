"""``trainer.local_generation``: which tokenizer an adapter uses (compare and merge), copying a tokenizer, and
greedy generation (only the new tokens, whatever the checkpoint's sampling defaults)."""

from __future__ import annotations

import pytest

from tests.conftest import TOKENIZER
from tests.trainer.test_compare import tiny_models  # noqa: F401 (the fixture: a tiny Llama and an adapter)
from trainer.local_generation import adapter_has_tokenizer, copy_tokenizer, encode_prompts, tokenizer_dir


def test_an_adapter_with_tokenizer_config_carries_its_tokenizer(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert not adapter_has_tokenizer(adapter) and tokenizer_dir("base", str(adapter)) == "base"
    assert tokenizer_dir("base", None) == "base"
    copy_tokenizer(str(TOKENIZER), adapter)  # what an adapter trained with added tokens ships
    assert adapter_has_tokenizer(adapter) and tokenizer_dir("base", str(adapter)) == str(adapter)


def test_copy_tokenizer_gives_the_same_tokens(tmp_path):
    from transformers import AutoTokenizer

    copy_tokenizer(str(TOKENIZER), tmp_path / "out")
    original, copied = AutoTokenizer.from_pretrained(str(TOKENIZER)), AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "내일 날씨 알려줘. R&D planning"
    assert copied(text)["input_ids"] == original(text)["input_ids"] and len(copied) == len(original)


@pytest.fixture(scope="module")
def tiny_lm(tiny_models, tmp_path_factory):
    """test_compare's random 2-layer Llama, with a generation_config.json that asks for sampling."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    from trainer.local_generation import load_causal_lm

    path = tmp_path_factory.mktemp("sampling-lm") / "base"
    shutil.copytree(tiny_models / "base", path)
    tok = AutoTokenizer.from_pretrained(path)
    GenerationConfig(do_sample=True, temperature=5.0, top_k=0, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(path)
    model, tokenizer = load_causal_lm(str(path), "cpu", "float32")
    assert model.generation_config.do_sample and model.generation_config.temperature == 5.0
    return model, tokenizer


def test_greedy_new_tokens_ignore_sampling_defaults_and_padding(tiny_lm):
    import torch

    from modules.generation import greedy_new_tokens
    from trainer.local_generation import generate_batch

    model, tokenizer = tiny_lm
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompts = ["기술성숙도란?", "What is a feasibility study about, in a few words?"]
    torch.manual_seed(1)
    first = generate_batch(model, tokenizer, prompts, 6, "cpu")
    torch.manual_seed(2)  # sampling would change with the seed; greedy does not
    assert generate_batch(model, tokenizer, prompts, 6, "cpu") == first
    # One prompt alone (no padding) continues exactly as inside the left-padded batch.
    alone = encode_prompts(tokenizer, prompts[:1])
    new = greedy_new_tokens(model, alone, 6, tokenizer.pad_token_id, tokenizer.eos_token_id, prefer_config_eos=True)
    assert new.shape[0] == 1 and new.shape[1] <= 6
    assert tokenizer.decode(new[0], skip_special_tokens=True).strip() == first[0]
