"""Generation pieces the text-generating modules share: greedy decoding of left-padded prompts, eval mode for
sample generations during training, and the sample generations' record."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def greedy_new_tokens(model, inputs: Mapping, max_new_tokens: int, pad_token_id: int | None = None,
                      eos_token_id: int | None = None, prefer_config_eos: bool = False,
                      synced_gpus: bool = False) -> torch.Tensor:
    """Greedy continuations of the prompts in ``inputs`` (``input_ids`` (batch, prompt) left-padded,
    ``attention_mask``, any further model input such as ``pixel_values``): the new tokens only, (batch, new).

    Greedy whatever the checkpoint's ``generation_config.json`` says about sampling or beams; its other
    settings (repetition penalty, ...) stay. ``pad_token_id`` None: the generation config's (else its eos).
    ``eos_token_id`` stops generation; with ``prefer_config_eos`` only where the generation config names none
    (a base model's own stop tokens win: ``compare generate``, the local teachers). ``synced_gpus``: a sharded
    (FSDP2) forward is a collective, so every rank keeps stepping until all ranks are done."""
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if synced_gpus:
        options["synced_gpus"] = True
    if pad_token_id is not None:
        options["pad_token_id"] = pad_token_id
    if eos_token_id is not None and not (prefer_config_eos and model.generation_config.eos_token_id is not None):
        options["eos_token_id"] = eos_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, **options)  # (batch, prompt + new tokens)
    return out[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column


def greedy_generate(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                    synced_gpus: bool = False, **inputs) -> list[str]:
    """Greedy continuations of left-padded prompts (batch, prompt_seq) that stop at the tokenizer's EOS (what
    training taught the answers to end with), decoded without special tokens. ``inputs`` are further model
    inputs (e.g. pixel values)."""
    new = greedy_new_tokens(model, {"input_ids": prompt_ids, "attention_mask": prompt_mask, **inputs},
                            max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id, synced_gpus=synced_gpus)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, back in its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class SampleGenerations:
    """Answers to a few fixed validation prompts, written by the trainer's run artifacts to ``generations.jsonl``
    and logged as the W&B table ``val/generations`` (``images``: one per row, for an image column)."""

    rows: list[dict]
    columns: list[str]
    images: list | None = field(default=None)
