"""Collators: padding is done per batch, after tokenization, so samplers and packing stay swappable."""

from __future__ import annotations

import torch


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
