"""Variable-length (padding-free) attention for packed rows on PyTorch's SDPA: each record attends only to
itself, at the cost of its own length, as flash-attention's varlen kernel does on GPU.

Packed rows (``data.packing``, :func:`modules.causal_lm.model_inputs`) hold several records end to end. With
``attn_implementation="sdpa"`` transformers builds one block-diagonal causal mask over the whole row
(``masking_utils.find_packed_sequence_indices``) and SDPA then computes every query against every key of the
row, masked: a row of four 180-token records costs the attention of one 720-token record, four times that of the
four records, and SDPA's mask path is slower per element than its ``is_causal`` path. Measured on the bench
model (CPU, one thread), packed steps cost 28% more time per token than padded ones because of it.

``VARLEN`` is SDPA with one ``is_causal`` call per record when the forward carries flash-attention's varlen
arguments (``cu_seq_lens_q``/``cu_seq_lens_k``, the cumulative record lengths over the flattened rows, which
:func:`modules.causal_lm.model_inputs` passes); without them (padded batches, evaluation, generation with a
cache) it is transformers' SDPA unchanged, mask and all. :func:`use_varlen` switches a model from ``sdpa`` to
it the first time it sees a packed batch; ``flash_attention_*`` (varlen natively) and ``eager`` are left as
they are. The registered name is a runtime setting only: ``save_pretrained`` does not write it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from modules.adapter import base_model

VARLEN = "tuneloop_sdpa_varlen"
#: Forward keyword with the record boundaries as Python ints (``cu_seq_lens_q`` on the host).
BOUNDS_KEY = "tuneloop_varlen_bounds"


def varlen_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out. With
    ``cu_seq_lens_q`` in ``kwargs`` the batch is one row of records laid end to end (``cu_seq_lens_q`` their
    boundaries) and ``attention_mask``, built by transformers for the same row, is not needed."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    for unsupported in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"packed rows with {unsupported!r} attention: use attn_implementation "
                                      "'eager' or a flash_attention_* one, or turn data.packing off")
    if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        raise ValueError(f"varlen attention wants one row of records with as many keys as queries, got query "
                         f"{tuple(query.shape)} and key {tuple(key.shape)}")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    window = kwargs.get("sliding_window")
    bounds = kwargs.get(BOUNDS_KEY) or cu.tolist()  # host copy made once per forward, not per layer (a GPU sync)
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])  # (1, seq, heads, dim)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        n, mask = end - start, None
        if window is not None and causal and n > window:  # a record longer than a sliding layer's window
            i = torch.arange(n, device=query.device)
            offset = i[:, None] - i[None, :]
            mask = (offset >= 0) & (offset < window)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                           is_causal=causal and mask is None and n > 1)
        out[:, start:end] = o.transpose(1, 2)
    return out, None


AttentionInterface.register(VARLEN, varlen_sdpa_forward)
# The mask for batches without varlen arguments (padded, generation) is SDPA's.
AttentionMaskInterface.register(VARLEN, sdpa_mask)
assert VARLEN in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def use_varlen(model) -> str:
    """Switch ``model`` (a transformers model, or a PEFT one around it) from ``sdpa`` to :data:`VARLEN`, once;
    returns the attention implementation it then has."""
    inner = base_model(model)
    impl = inner.config._attn_implementation
    if impl == "sdpa":
        inner.set_attn_implementation(VARLEN)
        impl = inner.config._attn_implementation
    return impl


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """Flash-attention's varlen arguments of one row (1, seq) whose positions restart at 0 at every record
    (transformers' ``prepare_fa_kwargs_from_position_ids``): ``cu_seq_lens_q/k`` (int32 record boundaries, 0 and
    seq included) and ``max_length_q/k``, plus the same boundaries as Python ints (:data:`BOUNDS_KEY`)."""
    (cu, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    bounds = tuple(cu.tolist())
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
            BOUNDS_KEY: bounds}
