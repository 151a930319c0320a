"""Collators: padding is done per batch, after tokenization, so samplers and packing stay swappable."""

from __future__ import annotations

import torch


def pad_causal(features: list[dict], pad_id: int) -> dict:
    """The causal-LM part of a batch: right-padded ``input_ids``/``labels`` (-100 on padding)/
    ``attention_mask`` (batch, seq) for the loss, left-padded ``prompt_ids``/``prompt_mask`` (batch, prompt_seq)
    for generation, and ``loss_tokens`` (int): the batch's tokens that enter the loss."""
    n = len(features)
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    pwidth = max(len(f["prompt_ids"]) for f in features)
    prompt_ids = torch.full((n, pwidth), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, pwidth), dtype=torch.long)
    for i, f in enumerate(features):
        k, p = len(f["input_ids"]), len(f["prompt_ids"])
        input_ids[i, :k] = torch.tensor(f["input_ids"])
        labels[i, :k] = torch.tensor(f["labels"])
        mask[i, :k] = 1
        if p:
            prompt_ids[i, pwidth - p:] = torch.tensor(f["prompt_ids"])
            prompt_mask[i, pwidth - p:] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask, "loss_tokens": sum(f["loss_tokens"] for f in features)}


class PadCollator:
    """Pad tokenized features to the longest in the batch; carry ``id`` strings through untouched.

    Output: ``input_ids``/``attention_mask`` (batch, seq), ``labels`` as a tensor of ``label_dtype``
    with the shape of one label times batch, and ``id``: list[str].
    """

    def __init__(self, tokenizer, label_dtype: torch.dtype = torch.long, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.label_dtype = label_dtype
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        features = [dict(f) for f in features]
        ids = [f.pop("id") for f in features]
        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        batch = self.tokenizer.pad(
            features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        out = dict(batch)
        if labels is not None:
            out["labels"] = torch.tensor(labels, dtype=self.label_dtype)
        out["id"] = ids
        return out
