"""InstructionDataModule: answer-only masking at exact positions, truncation policy, record errors,
length grouping."""

import math

import numpy as np
import pytest

from datamodules.instruction import InstructionDataModule, LengthGroupedSampler, padding_fraction
from datamodules.records import RecordError
from datamodules.templates import ALPACA_TEMPLATE, Segment, alpaca_prompt, tokenize_segments, truncate
from tests.conftest import write_jsonl

SYSTEM = "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
LABELS = ["날씨", "일정", "이미지생성"]


def _dm(tmp_path, tokenizer, fmt, rows, **kw):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = InstructionDataModule(format=fmt, train_file=str(path), val_file=str(path),
                               cache_dir=str(tmp_path / "cache"), **kw)
    dm.tokenizer = tokenizer
    return dm


def test_alpaca_template_is_mission_text():
    prompt = alpaca_prompt(SYSTEM, "What is X?")
    assert prompt == ALPACA_TEMPLATE.format(instruction=SYSTEM, input="What is X?")
    assert prompt.startswith("Below is an instruction that describes a task, paired with an input that provides "
                             "further context. Write a response that appropriately completes the request.\n\n"
                             "### Instruction:\n")
    assert prompt.endswith("### Input:\nWhat is X?\n\n### Response:\n")


def test_alpaca_masks_prompt_tokens_exactly(tmp_path, tokenizer):
    row = {"id": "a1", "instruction": SYSTEM, "input": "Which firm runs project Aurora?", "output": "Hanbit Energy."}
    dm = _dm(tmp_path, tokenizer, "alpaca", [row] * 2)
    dm.setup("fit")
    sample = dm.splits["train"][0]
    prompt_ids = tokenizer(alpaca_prompt(row["instruction"], row["input"]), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    expected = [tokenizer.bos_token_id] + prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert sample["input_ids"] == expected
    k = 1 + len(prompt_ids)  # BOS + prompt
    assert sample["labels"][:k] == [-100] * k
    assert sample["labels"][k:] == answer_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(sample["labels"][k:], skip_special_tokens=True) == row["output"]
    assert sample["prompt_ids"] == expected[:k]


def test_intent_label_is_the_only_trained_text(tmp_path, tokenizer):
    rows = [{"id": "i1", "text": "내일 날씨 알려줘", "label": "날씨"}, {"id": "i2", "text": "회의 잡아줘", "label": "일정"}]
    dm = _dm(tmp_path, tokenizer, "intent", rows, labels=LABELS)
    dm.setup("fit")
    s = dm.splits["train"][0]
    trained = [t for t, l in zip(s["input_ids"], s["labels"]) if l != -100]
    assert tokenizer.decode(trained, skip_special_tokens=True) == "날씨"
    assert trained[-1] == tokenizer.eos_token_id
    prompt = tokenizer.decode(s["prompt_ids"], skip_special_tokens=True)
    assert "내일 날씨 알려줘" in prompt and "날씨, 일정, 이미지생성" in prompt and prompt.endswith("Intent: ")


@pytest.mark.parametrize("template", [None, "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}"
                                            "{% if add_generation_prompt %}<|assistant|>{% endif %}"])
def test_chat_trains_assistant_turns_only(tmp_path, tokenizer, template):
    tokenizer.chat_template = template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Sunny"}]
    dm = _dm(tmp_path / str(bool(template)), tokenizer, "chat", [{"id": "c", "messages": messages}] * 2) \
        if (tmp_path / str(bool(template))).mkdir() is None else None
    dm.setup("fit")
    s = dm.splits["train"][0]
    spans, cur = [], []
    for t, l in zip(s["input_ids"], s["labels"]):
        if l != -100:
            cur.append(t)
        elif cur:
            spans.append(tokenizer.decode(cur, skip_special_tokens=True)), cur.clear()
    if cur:
        spans.append(tokenizer.decode(cur, skip_special_tokens=True))
    joined = "".join(spans)
    assert "Hello there" in joined and "Sunny" in joined
    assert "Hi" not in joined.replace("Hello", "") and "Weather" not in joined and "Be brief" not in joined
    assert s["reference"] == "Sunny"


def test_truncation_cuts_prompt_first_then_response(tokenizer):
    sample = tokenize_segments([Segment("one two three four five six seven eight nine ten", False),
                                Segment("alpha beta", True)], tokenizer)
    n_resp = sum(l != -100 for l in sample.labels)
    cut = truncate(sample, len(sample.input_ids) - 3)
    assert cut.prompt_truncated and not cut.response_truncated
    assert cut.input_ids[0] == tokenizer.bos_token_id  # BOS kept
    assert sum(l != -100 for l in cut.labels) == n_resp  # the whole response survives
    assert cut.input_ids[-n_resp:] == sample.input_ids[-n_resp:]
    tight = truncate(sample, 1 + 1 + 2)  # BOS + 1 prompt token + 2 response tokens
    assert tight.response_truncated and len(tight.input_ids) == 4
    assert sum(l != -100 for l in tight.labels) == 2
    assert truncate(sample, len(sample.input_ids)) is sample


def test_overlong_policies_count_and_name_records(tmp_path, tokenizer):
    long_prompt = " ".join(["word"] * 300)
    rows = [{"id": f"r{i}", "instruction": "Answer.", "input": long_prompt if i == 1 else "short", "output": "ok"}
            for i in range(4)]
    dm = _dm(tmp_path, tokenizer, "alpaca", rows, cutoff_len=200)
    dm.setup("fit")
    assert dm.truncation_report["train"] == {"ok": 3, "prompt_truncated": 1, "response_truncated": 0, "dropped": 0}
    assert max(len(x) for x in dm.splits["train"]["input_ids"]) <= 200
    dm = _dm(tmp_path, tokenizer, "alpaca", rows, cutoff_len=200, overlong="drop")
    dm.setup("fit")
    assert len(dm.splits["train"]) == 3 and dm.truncation_report["train"]["dropped"] == 1
    dm = _dm(tmp_path, tokenizer, "alpaca", rows, cutoff_len=200, overlong="error")
    with pytest.raises(RecordError, match=r"train.jsonl:2: sample is longer than cutoff_len=200"):
        dm.setup("fit")


@pytest.mark.parametrize("fmt, row, match", [
    ("alpaca", {"id": "x", "instruction": "Do.", "input": "q"}, r"train.jsonl:2: field 'output': missing or null"),
    ("alpaca", {"id": "x", "instruction": " ", "output": "a"}, r"train.jsonl:2: field 'instruction': empty text"),
    ("intent", {"id": "x", "text": "안녕", "label": "인사"}, r"train.jsonl:2: field 'label': label '인사' is not in"),
    ("chat", {"id": "x", "messages": [{"role": "robot", "content": "hi"}]}, r"train.jsonl:2: field 'messages\[0\]'"),
])
def test_bad_records_name_file_line_field(tmp_path, tokenizer, fmt, row, match):
    good = {"alpaca": {"id": "g", "instruction": "Do.", "input": "q", "output": "a"},
            "intent": {"id": "g", "text": "내일 날씨", "label": "날씨"},
            "chat": {"id": "g", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}}[fmt]
    dm = _dm(tmp_path, tokenizer, fmt, [good, row], labels=LABELS if fmt == "intent" else None)
    with pytest.raises(RecordError, match=match):
        dm.setup("fit")


def test_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 250, size=800).tolist()
    plain = padding_fraction(lengths, 8, rng.permutation(800).tolist())
    order = list(LengthGroupedSampler(lengths, 32, 8, seed=0))
    assert sorted(order) == list(range(800))  # a permutation: every sample once
    grouped = padding_fraction(lengths, 8, order)
    assert grouped < 0.25 * plain
    again = LengthGroupedSampler(lengths, 32, 8, seed=0)
    again.set_epoch(1)
    assert list(again) != order  # reshuffled per epoch, still seeded


@pytest.mark.parametrize("n", [96, 100, 93])
def test_length_grouped_steps_hold_the_same_samples_at_any_world_size_and_micro_batch(n):
    """Optimizer step k (global batch 24) takes the same samples on 1 process with micro 4, 2 or 1 and on 2 or
    3 processes with micro 4: the samples of a step never depend on how the step is split."""
    lengths = np.random.default_rng(1).integers(5, 200, size=n).tolist()

    def steps(world, micro):
        per_rank = [list(LengthGroupedSampler(lengths, 24, micro, num_replicas=world, rank=r, seed=3))
                    for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1  # every process gets as many samples (no DDP hang)
        assert all(len(p) == len(LengthGroupedSampler(lengths, 24, micro, num_replicas=world, seed=3)) for p in per_rank)
        per_step = 24 // world
        return [sorted(set(i for p in per_rank for i in p[k * per_step:(k + 1) * per_step]))
                for k in range(math.ceil(len(per_rank[0]) / per_step))]

    reference = steps(1, 4)
    assert sorted(i for s in reference for i in s) == list(range(n))
    for world, micro in [(1, 2), (1, 1), (2, 4), (3, 4), (2, 1)]:
        assert steps(world, micro) == reference, (world, micro)
    micro_batches = [list(LengthGroupedSampler(lengths, 24, 4, num_replicas=2, rank=0, seed=3))[i:i + 4]
                     for i in range(0, 24, 4)]
    spread = [max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in micro_batches]
    assert np.mean(spread) < 0.25 * (max(lengths) - min(lengths))  # similar lengths within a micro batch


@pytest.mark.parametrize("global_zero", [True, False])
def test_truncation_report_is_logged_once_on_rank_zero_only(tmp_path, tokenizer, caplog, global_zero):
    import logging
    from types import SimpleNamespace

    caplog.set_level(logging.INFO, logger="datamodules")
    rows = [{"id": "long", "instruction": "Summarize.", "input": "word " * 200, "output": "ok"}]
    dm = _dm(tmp_path, tokenizer, "alpaca", rows, cutoff_len=64)
    dm.trainer = SimpleNamespace(is_global_zero=global_zero)  # what a DDP rank's Trainer says of itself
    dm.setup("fit")
    assert dm.truncation_report["train"]["prompt_truncated"] == 1
    reports = [r.getMessage() for r in caplog.records if r.name.startswith("datamodules")]
    assert any("1 prompts truncated" in m for m in reports) == global_zero, reports
