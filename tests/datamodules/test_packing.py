"""Padding-free packing (``data.packing``): records concatenated into rows, never cut, positions restarting at
every record, the first token of every record out of the loss, padding as a segment of its own."""

import pytest
import torch

from datamodules.collate import pack_causal, pack_rows, pad_causal
from datamodules.instruction import InstructionDataModule
from tests.conftest import write_jsonl

PAD = 0


def record(n: int, start: int, prompt: int = 2) -> dict:
    """A tokenized record of ``n`` tokens (ids ``start``..): the first ``prompt`` masked, the rest trained."""
    ids = list(range(start, start + n))
    labels = [-100] * prompt + ids[prompt:]
    return {"input_ids": ids, "labels": labels, "loss_tokens": sum(1 for l in labels[1:] if l != -100),
            "prompt_ids": ids[:prompt]}


FEATURES = [record(5, 100), record(9, 200, prompt=4), record(3, 300), record(7, 400, prompt=1)]


def segments(batch: dict) -> list[list[int]]:
    """The real tokens of each packed record, read back from the rows by the position restarts."""
    out = []
    for ids, pos, mask in zip(batch["input_ids"], batch["position_ids"], batch["attention_mask"]):
        for t, p, m in zip(ids.tolist(), pos.tolist(), mask.tolist()):
            if not m:
                continue
            if p == 0:
                out.append([])
            out[-1].append(t)
    return out


def test_one_row_holds_the_whole_micro_batch_without_padding():
    batch = pack_causal(FEATURES, PAD)
    assert batch["input_ids"].shape == (1, 24) and int(batch["attention_mask"].sum()) == 24  # zero padding
    assert batch["input_ids"][0].tolist() == [t for f in FEATURES for t in f["input_ids"]]  # in order, none cut
    assert batch["position_ids"][0].tolist() == [*range(5), *range(9), *range(3), *range(7)]
    # Each record's own labels, but its first token (which the previous record's last token would predict) is out.
    expected = []
    for f in FEATURES:
        expected += [-100] + f["labels"][1:]
    assert batch["labels"][0].tolist() == expected
    assert batch["loss_tokens"] == sum(f["loss_tokens"] for f in FEATURES) == int((batch["labels"][:, 1:] != -100).sum())


def test_first_token_of_every_record_is_masked_even_when_it_is_a_label():
    trained_first = {**record(4, 500, prompt=0)}  # no prompt: the unpacked loss skips token 0 all the same
    batch = pack_causal([FEATURES[0], trained_first], PAD)
    assert batch["labels"][0, 5].item() == -100 and batch["labels"][0, 6].item() == 501
    assert batch["loss_tokens"] == int((batch["labels"][:, 1:] != -100).sum()) == 3 + 3


def test_first_fit_decreasing_rows_pad_as_a_segment_of_their_own():
    assert pack_rows([5, 9, 3, 7], 12) == [[1, 2], [3, 0]]  # 9+3, 7+5
    assert pack_rows([5, 9, 3, 7], None) == [[0, 1, 2, 3]]
    batch = pack_causal(FEATURES, PAD, row_tokens=12)
    assert batch["input_ids"].shape == (2, 12)
    assert segments(batch) == [FEATURES[i]["input_ids"] for i in (1, 2, 3, 0)]
    assert batch["attention_mask"].sum(-1).tolist() == [12, 12]
    # Row budget 10: 9 | 7+3 | 5; the rows are padded to the longest (10) and the padding restarts at 0.
    batch = pack_causal(FEATURES, PAD, row_tokens=10)
    assert batch["attention_mask"].sum(-1).tolist() == [9, 10, 5]
    assert batch["position_ids"][0].tolist() == [*range(9), 0]
    assert batch["position_ids"][2].tolist() == [*range(5), *range(5)]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD).all()
    assert batch["loss_tokens"] == int((batch["labels"][:, 1:] != -100).sum())


def test_a_record_longer_than_the_row_budget_gets_its_own_row_uncut():
    batch = pack_causal(FEATURES, PAD, row_tokens=4)
    assert batch["input_ids"].shape == (4, 9)
    assert sorted(map(tuple, segments(batch))) == sorted(tuple(f["input_ids"]) for f in FEATURES)


def test_prompts_stay_one_left_padded_row_per_record_as_unpacked():
    packed, padded = pack_causal(FEATURES, PAD, row_tokens=12), pad_causal(FEATURES, PAD)
    assert torch.equal(packed["prompt_ids"], padded["prompt_ids"])
    assert torch.equal(packed["prompt_mask"], padded["prompt_mask"])
    assert padded["prompt_ids"][1].tolist() == [200, 201, 202, 203]
    assert padded["prompt_ids"][3].tolist() == [PAD, PAD, PAD, 400]


def test_datamodule_packs_its_micro_batches(tmp_path, tokenizer):
    rows = [{"id": f"a{i}", "instruction": "Answer briefly." * (1 + i % 3), "output": "Yes. " * (1 + i)}
            for i in range(6)]
    path = str(write_jsonl(tmp_path / "train.jsonl", rows))

    def batch(**kw):
        dm = InstructionDataModule(format="alpaca", train_file=path, val_file=path, cache_dir=str(tmp_path / "c"), **kw)
        dm.tokenizer = tokenizer
        dm.setup("fit")
        return dm, dm.collate_fn([dm.splits["train"][i] for i in range(4)])

    dm, padded = batch()
    _, packed = batch(packing=True)
    lengths = dm.splits["train"]["length"][:4]
    assert "position_ids" not in padded and packed["input_ids"].shape == (1, sum(lengths))
    assert packed["id"] == padded["id"] == ["a0", "a1", "a2", "a3"] and packed["reference"] == padded["reference"]
    assert packed["loss_tokens"] == padded["loss_tokens"] == int((packed["labels"][:, 1:] != -100).sum())
    # The real tokens and labels are the padded batch's, record by record.
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][padded["attention_mask"] == 1])
    _, two = batch(packing=True, packing_row_tokens=2 * max(lengths))  # first-fit-decreasing: 2 + 2 records
    longest = sorted(lengths, reverse=True)
    assert longest[1] + longest[2] > longest[0]  # so the third-longest does not fit beside the first two
    assert two["input_ids"].shape == (2, longest[0] + longest[1])
    assert sorted(map(tuple, segments(two))) == sorted(tuple(dm.splits["train"][i]["input_ids"]) for i in range(4))
    with pytest.raises(ValueError, match="packing_row_tokens"):
        InstructionDataModule(format="alpaca", train_file=path, packing=True, packing_row_tokens=0)
