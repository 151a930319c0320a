"""Collators: padding and packing are done per batch, after tokenization, so samplers and packing stay swappable."""

from __future__ import annotations

import torch


def left_pad_prompts(features: list[dict], pad_id: int) -> dict:
    """Left-padded ``prompt_ids``/``prompt_mask`` (batch, prompt_seq), one row per record (generation, ranking)."""
    n = len(features)
    pwidth = max(len(f["prompt_ids"]) for f in features)
    prompt_ids = torch.full((n, pwidth), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, pwidth), dtype=torch.long)
    for i, f in enumerate(features):
        p = len(f["prompt_ids"])
        if p:
            prompt_ids[i, pwidth - p:] = torch.tensor(f["prompt_ids"])
            prompt_mask[i, pwidth - p:] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}


def pad_causal(features: list[dict], pad_id: int) -> dict:
    """The causal-LM part of a batch: right-padded ``input_ids``/``labels`` (-100 on padding)/
    ``attention_mask`` (batch, seq) for the loss, left-padded ``prompt_ids``/``prompt_mask`` (batch, prompt_seq)
    for generation, and ``loss_tokens`` (int): the batch's tokens that enter the loss."""
    n = len(features)
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        input_ids[i, :k] = torch.tensor(f["input_ids"])
        labels[i, :k] = torch.tensor(f["labels"])
        mask[i, :k] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, **left_pad_prompts(features, pad_id),
            "loss_tokens": sum(f["loss_tokens"] for f in features)}


def pack_rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """Which records go into which packed row (indices into ``lengths``).

    ``row_tokens=None``: one row with every record, in order. Otherwise first-fit-decreasing: records by length,
    longest first, each into the first row that still has room for it within ``row_tokens`` tokens, else into a
    new row; a record longer than ``row_tokens`` gets a row of its own (records are never cut)."""
    if row_tokens is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):  # stable: ties keep batch order
        for r in range(len(rows)):
            if used[r] + lengths[i] <= row_tokens:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


def pack_causal(features: list[dict], pad_id: int, row_tokens: int | None = None) -> dict:
    """The causal-LM part of a batch with the records packed into rows, padding-free (one row) or nearly so.

    Records are concatenated into rows (:func:`pack_rows`), each whole. ``position_ids`` (rows, seq) restart
    at 0 at every record, which is how transformers finds packed sequences (``masking_utils``: a block-diagonal
    causal mask for sdpa/eager when the model gets no ``attention_mask``; flash-attention's varlen path), so
    no token attends across a record boundary. ``labels`` (rows, seq) are -100 on padding and at each record's
    first token, so no record is trained to predict the next record's first token. Rows are right-padded to
    the longest; the padding's positions restart at 0 too, so it is a segment of its own that attends to
    nothing real. ``attention_mask`` (rows, seq) is the real-token mask (for counting padding; not for the
    model). ``prompt_ids``/``prompt_mask`` stay one left-padded row per record (generation, ranking), in
    batch order, and ``loss_tokens`` is the same as unpacked: each record's loss tokens."""
    lengths = [len(f["input_ids"]) for f in features]
    rows = pack_rows(lengths, row_tokens)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            k = lengths[i]
            input_ids[r, start:start + k] = torch.tensor(features[i]["input_ids"])
            labels[r, start + 1:start + k] = torch.tensor(features[i]["labels"][1:])  # not the first token
            mask[r, start:start + k] = 1
            position_ids[r, start:start + k] = torch.arange(k)
            start += k
        position_ids[r, start:] = torch.arange(width - start)  # the padding: a segment of its own
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "position_ids": position_ids,
            **left_pad_prompts(features, pad_id), "loss_tokens": sum(f["loss_tokens"] for f in features)}


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
