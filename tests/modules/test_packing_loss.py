"""Packed micro batches (``data.packing``) train exactly as padded ones: same summed NLL, same loss tokens, same
gradients (fp32), and no attention across record boundaries. The tiny Llama (SFT recipe's family, full
fine-tuning, gradient checkpointing as the recipe) and the tiny EXAONE 4 (intent recipe's family, LoRA on every
linear layer through PEFT)."""

from types import SimpleNamespace

import pytest
import torch

from datamodules.collate import pack_causal, pad_causal
from modules.backbone import BackboneSpec, LoraSpec, TinySpec
from modules.causal_lm import CausalLMModule, packed_logits
from modules.token_loss import predicting_positions, token_nll
from modules.adapter import base_model
from modules.varlen_attention import VARLEN
from tests.conftest import TOKENIZER

LENGTHS, PROMPTS = [23, 7, 40, 12, 31, 5], [15, 3, 30, 6, 20, 2]


def features(seed: int = 0) -> list[dict]:
    """Records of different lengths whose prompts are masked, as ``InstructionDataModule`` tokenizes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, p in zip(LENGTHS, PROMPTS):
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        labels = [-100] * p + ids[p:]
        out.append({"input_ids": ids, "labels": labels, "prompt_ids": ids[:p],
                    "loss_tokens": sum(1 for l in labels[1:] if l != -100)})
    return out


def tiny_module(arch: str, lora: LoraSpec | None, checkpointing: bool, attn: str = "sdpa") -> CausalLMModule:
    torch.manual_seed(0)
    spec = BackboneSpec(name_or_path=arch, arch_config=f"configs/models/{arch}", tokenizer=str(TOKENIZER), tiny=True,
                        tiny_size=TinySpec(initializer_range=0.3, dropout=0.0), gradient_checkpointing=checkpointing)
    module = CausalLMModule(backbone=spec, lora=lora)
    module.configure_model()
    base_model(module.model).set_attn_implementation(attn)
    module.requested_attn = attn
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero: make both count
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return module


@pytest.fixture(scope="module", params=[("komt-llama2-13b", None, True), ("exaone-4.0-1.2b", LoraSpec(r=4, dropout=0.0), False),
                                        ("exaone-4.0-1.2b", LoraSpec(r=4, dropout=0.0), False, "eager")],
                ids=["llama-full-varlen", "exaone-lora-varlen", "exaone-lora-eager"])
def module(request):
    return tiny_module(*request.param)


def loss_and_grads(module, batch, head_at_response: bool = False):
    """Summed NLL, loss tokens and gradients: from the full logits, or as training computes them (the head applied
    only at positions that predict a response token)."""
    module.zero_grad(set_to_none=True)
    nll, tokens = module.response_nll(batch) if head_at_response else token_nll(module(batch), batch["labels"])
    nll.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    return nll.detach(), int(tokens), grads


def test_packed_loss_and_gradients_equal_padded(module):
    feats = features()
    ref_nll, ref_tokens, ref_grads = loss_and_grads(module, pad_causal(feats, 0))
    assert ref_tokens == sum(f["loss_tokens"] for f in feats) == 42
    assert "lora_A" in next(iter(ref_grads)) or module.lora is None
    assert module.model.training and module.model.is_gradient_checkpointing == (module.lora is None)
    cases = [(pad_causal(feats, 0), 6, True)]  # padded, as training computes it
    for row_tokens, rows in [(None, 1), (45, 3)]:  # one row of 118 tokens; first-fit-decreasing 40+5 | 31+12 | 23+7
        cases += [(pack_causal(feats, 0, row_tokens), rows, head) for head in (False, True)]
    for batch, rows, head in cases:
        assert batch["input_ids"].shape[0] == rows
        nll, tokens, grads = loss_and_grads(module, batch, head)
        assert tokens == ref_tokens
        if rows < 6:  # packed: sdpa has become the varlen one
            impl = base_model(module.model).config._attn_implementation
            assert impl == {"sdpa": VARLEN}.get(module.requested_attn, module.requested_attn)
        # Summed NLL of 42 tokens (about 460): float summation order only (measured 1.3e-7 relative).
        torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=0.0)
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():  # measured at most 2.1e-6 of the tensor's largest gradient
            scale = float(ref_grads[name].abs().max())
            assert scale > 0 and float((g - ref_grads[name]).abs().max()) <= 1e-5 * scale, name


def test_no_attention_across_record_boundaries(module):
    feats = features()[:3]  # 23 | 7 | 40 tokens in one row
    changed = [dict(f) for f in feats]
    changed[1]["input_ids"] = [t + 1 for t in feats[1]["input_ids"]]  # every token of the middle record
    a, b = pack_causal(feats, 0), pack_causal(changed, 0)
    mid, after = slice(23, 30), slice(30, 70)
    with torch.no_grad():
        la, lb = module(a), module(b)
        assert (la[0, mid] - lb[0, mid]).abs().max() > 1e-2  # the perturbed record itself changes
        torch.testing.assert_close(lb[0, :23], la[0, :23], rtol=0, atol=1e-6)
        torch.testing.assert_close(lb[0, after], la[0, after], rtol=0, atol=1e-6)
        # The same rows with plain causal attention (no positions), or with a KV cache (a forward's default unless
        # gradient checkpointing turns it off), which switches transformers' packed-sequence detection off: the
        # record after the perturbed one sees it.
        cached = [] if module.model.is_gradient_checkpointing else [{"position_ids": a["position_ids"]}]
        for kwargs in [{}, *cached]:
            plain_a = module.model(input_ids=a["input_ids"], **kwargs).logits
            plain_b = module.model(input_ids=b["input_ids"], **kwargs).logits
            assert (plain_a[0, after] - plain_b[0, after]).abs().max() > 1e-2


def test_varlen_and_flash_attention_get_the_rows_end_to_end_in_one():
    """Flash-attention's varlen path reads record boundaries from the positions of a single row only; the SDPA
    varlen one (``sdpa`` is switched to it) from the record boundaries passed with that row; eager keeps the rows."""
    seen = []

    class Model(torch.nn.Module):
        def __init__(self, impl):
            super().__init__()
            self.config = SimpleNamespace(_attn_implementation=impl)

        def set_attn_implementation(self, impl):
            self.config._attn_implementation = impl

        def forward(self, input_ids, position_ids, attention_mask, use_cache, **kwargs):
            seen.append((tuple(input_ids.shape), position_ids.clone(), attention_mask, use_cache, kwargs))
            return SimpleNamespace(logits=torch.stack([input_ids, position_ids], -1).float())  # (rows, seq, 2)

    batch = pack_causal(features(), 0, row_tokens=45)  # 3 rows of 45: 40+5 | 31+12 (+2 padding) | 23+7 (+15)
    cu = [0, 40, 45, 76, 88, 90, 113, 120, 135]
    for impl, shape, bounds in [("flash_attention_2", (1, 135), None), ("sdpa", (1, 135), cu),
                                ("eager", (3, 45), None)]:
        model = Model(impl)
        logits = packed_logits(model, batch["input_ids"], batch["position_ids"])
        assert seen[-1][0] == shape and seen[-1][2:4] == (None, False)
        assert model.config._attn_implementation == (VARLEN if impl == "sdpa" else impl)
        kwargs = seen[-1][4]
        assert (kwargs["cu_seq_lens_q"].tolist() if bounds else kwargs) == (bounds or {})
        assert torch.equal(seen[-1][1].reshape(3, 45), batch["position_ids"])
        assert torch.equal(logits[..., 0].long(), batch["input_ids"]) and torch.equal(logits[..., 1].long(),
                                                                                      batch["position_ids"])


def test_varlen_attention_keeps_sliding_windows_and_gqa():
    """A hybrid EXAONE 4 (the 32B's layout: sliding-window layers of window 8 and global ones, grouped KV heads):
    each packed record's logits equal its logits alone, where transformers' own SDPA masks apply the window."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained("configs/models/exaone-4.0-1.2b")
    config.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8, "sliding_window_pattern": 2,
                   "layer_types": ["sliding_attention", "full_attention"] * 2, "vocab_size": 512})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    feats = features()
    batch = pack_causal(feats, 0, row_tokens=45)
    with torch.no_grad():
        packed = packed_logits(model, batch["input_ids"], batch["position_ids"])
        assert model.config._attn_implementation == VARLEN
        flat_ids, flat_logits = batch["input_ids"].reshape(-1), packed.reshape(-1, 512)
        for f in feats:
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            n = len(f["input_ids"])
            start = next(i for i in range(flat_ids.numel() - n + 1) if flat_ids[i:i + n].tolist() == f["input_ids"])
            torch.testing.assert_close(flat_logits[start:start + n], alone, rtol=0, atol=1e-5)
        # The window is applied: with it off, records longer than 8 tokens get other logits.
        sliding = [m for m in model.modules() if getattr(m, "is_sliding", False)]
        assert len(sliding) == 2
        for m in sliding:
            m.sliding_window = 10_000
        wide = packed_logits(model, batch["input_ids"], batch["position_ids"])
        assert (wide - packed).abs().max() > 1e-3


def test_head_only_at_predicting_positions():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    positions = predicting_positions(labels)
    assert positions.tolist() == [0, 1, 2]  # 0 and 1 predict row 2's 5 and row 1's 7; 2 predicts 8
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    full, n_full = token_nll(logits, labels)
    kept, n_kept = token_nll(logits[:, positions], labels, positions=positions)
    assert int(n_full) == int(n_kept) == 3
    torch.testing.assert_close(kept, full, rtol=1e-12, atol=0)
    # No response token at all: one position stands in (predicting nothing), so the graph still reaches the head.
    none = torch.full((2, 5), -100)
    assert predicting_positions(none).tolist() == [0]
    x = logits[:, :1].clone().requires_grad_()
    nll, n = token_nll(x, none, positions=predicting_positions(none))
    nll.backward()
    assert int(n) == 0 and float(nll) == 0.0 and x.grad is not None and not x.grad.any()
