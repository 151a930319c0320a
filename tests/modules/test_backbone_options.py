"""BackboneSpec.attn_implementation and .revision reach transformers; flash-attention that cannot run stops first."""

import importlib.util

import pytest
import torch

from modules.backbone import BackboneError, BackboneSpec, build_model, load_arch_config, load_tokenizer
from tests.conftest import TOKENIZER

LLAMA = "configs/models/komt-llama2-13b"


def _tiny(attn: str | None) -> BackboneSpec:
    return BackboneSpec(name_or_path="davidkim205/komt-llama2-13b-v1", arch_config=LLAMA, tokenizer=str(TOKENIZER),
                        tiny=True, attn_implementation=attn)


def test_eager_and_sdpa_give_the_same_logits_and_reach_the_model_config():
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 22, 7, 3], [1, 8, 4, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    logits = {}
    for attn in ("eager", "sdpa"):
        spec = _tiny(attn)
        torch.manual_seed(0)
        model = build_model(AutoModelForCausalLM, spec, load_tokenizer(spec)).eval()
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            logits[attn] = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert logits["eager"].abs().max() > 0.1  # not a degenerate model
    torch.testing.assert_close(logits["eager"][real], logits["sdpa"][real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("has_flash_attn, has_cuda, missing", [
    (False, True, "the flash-attn package"), (True, False, "a CUDA GPU"),
    (False, False, "the flash-attn package and a CUDA GPU"),
])
def test_flash_attention_that_cannot_run_is_one_line_before_any_loading(monkeypatch, has_flash_attn, has_cuda, missing):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if has_flash_attn else None)
                        if name == "flash_attn" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)

    class NeverLoaded:
        @staticmethod
        def from_pretrained(*a, **k):
            raise AssertionError("weights were loaded")

        from_config = from_pretrained

    for spec in (_tiny("flash_attention_2"), BackboneSpec(name_or_path="x/y", attn_implementation="flash_attention_2")):
        with pytest.raises(BackboneError, match=rf"^model.backbone.attn_implementation=flash_attention_2 needs {missing}, "
                                                r"missing here; use sdpa \(or eager\)$"):
            build_model(NeverLoaded, spec, tokenizer=None)


def test_revision_reaches_weights_config_and_tokenizer_of_name_or_path_only(monkeypatch, tmp_path):
    import transformers

    calls = []

    def recorder(what):
        def from_pretrained(path, **kwargs):
            calls.append((what, str(path), kwargs.get("revision"), kwargs.get("attn_implementation")))
            raise OSError("stop here")  # nothing is loaded: only the arguments are checked
        return from_pretrained

    class Auto:
        from_pretrained = staticmethod(recorder("weights"))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorder("tokenizer"))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", recorder("config"))
    spec = BackboneSpec(name_or_path="LGAI-EXAONE/EXAONE-4.0-1.2B", revision="0123abc", attn_implementation="sdpa")
    for load in (lambda: load_tokenizer(spec), lambda: load_arch_config(spec),
                 lambda: build_model(Auto, spec, tokenizer=None)):
        with pytest.raises(FileNotFoundError, match="cannot load the"):
            load()
    assert calls == [("tokenizer", "LGAI-EXAONE/EXAONE-4.0-1.2B", "0123abc", None),
                     ("config", "LGAI-EXAONE/EXAONE-4.0-1.2B", "0123abc", None),
                     ("weights", "LGAI-EXAONE/EXAONE-4.0-1.2B", "0123abc", "sdpa")]
    calls.clear()
    # The revision names a version of name_or_path: a separate tokenizer or architecture config is loaded as it is.
    other = BackboneSpec(name_or_path="LGAI-EXAONE/EXAONE-4.0-1.2B", revision="0123abc", tokenizer="team/tok",
                         arch_config="team/config")
    for load in (lambda: load_tokenizer(other), lambda: load_arch_config(other)):
        with pytest.raises(FileNotFoundError):
            load()
    assert calls == [("tokenizer", "team/tok", None, None), ("config", "team/config", None, None)]
