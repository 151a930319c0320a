"""data.chat_template: a bundled name or a Jinja file overrides the tokenizer's template, answer-only masking stays
exact (the trained tokens are each answer's tokens and its EOS), and prompt.json carries the template."""

import pytest

from datamodules.chat_templates import BUNDLED, resolve_chat_template
from datamodules.instruction import InstructionDataModule
from datamodules.records import DataConfigError
from tests.conftest import write_jsonl

ROWS = [
    {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "내일 날씨?"},
                              {"role": "assistant", "content": "맑음, 최고 24도."},
                              {"role": "user", "content": "And Friday?"},
                              {"role": "assistant", "content": "Rain in the afternoon."}]},
    {"id": "c2", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
]


def _setup(tmp_path, tokenizer, chat_template):
    path = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    dm = InstructionDataModule(format="chat", chat_template=chat_template, train_file=str(path), val_file=str(path),
                               cache_dir=str(tmp_path / "cache"))
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def _trained_spans(sample) -> list[list[int]]:
    spans, cur = [], []
    for label in sample["labels"]:
        if label != -100:
            cur.append(label)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


# (bundled template, the tokenizer's EOS for it: the family's end of turn; None keeps the tiny tokenizer's </s>)
@pytest.mark.parametrize("name, eos", [("alpaca", None), ("chatml", "<|im_end|>"), ("exaone", "[|endofturn|]")])
def test_answers_and_their_eos_are_the_only_trained_tokens(tmp_path, tokenizer, name, eos):
    if eos:
        tokenizer.add_special_tokens({"eos_token": eos})
    own = tokenizer.chat_template
    dm = _setup(tmp_path, tokenizer, name)
    assert tokenizer.chat_template == own  # overridden for this data, not changed on the (model's) tokenizer
    for k, row in enumerate(ROWS):
        sample, messages = dm.splits["train"][k], row["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        spans = _trained_spans(sample)
        assert spans == [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
        assert [tokenizer.decode(s, skip_special_tokens=True) for s in spans] == answers
        # The whole sample is the template's text (no BOS of ours, no second EOS); the generation prompt is the
        # template's, as prompt.json tells a user to build it.
        text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=BUNDLED[name])
        assert sample["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, chat_template=BUNDLED[name],
                                               add_generation_prompt=True)
        assert sample["prompt_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert sample["reference"] == answers[-1]


def test_alpaca_template_renders_the_mission_prompt(tokenizer):
    from datamodules.templates import alpaca_prompt

    messages = ROWS[1]["messages"]
    rendered = tokenizer.apply_chat_template(messages[:1], tokenize=False, chat_template=BUNDLED["alpaca"],
                                             add_generation_prompt=True)
    assert rendered == alpaca_prompt("Hi")


def test_template_file_is_the_same_as_its_text_and_goes_into_prompt_json(tmp_path, tokenizer):
    file = tmp_path / "chatml.jinja"
    file.write_text(BUNDLED["chatml"], encoding="utf-8")
    (tmp_path / "file").mkdir()
    by_file = _setup(tmp_path / "file", tokenizer, str(file))
    by_name = _setup(tmp_path, tokenizer, "chatml")
    assert by_file.splits["train"]["input_ids"] == by_name.splits["train"]["input_ids"]
    spec = by_file.prompt_spec()
    assert spec["chat_template"] == BUNDLED["chatml"] and spec["format"] == "chat"
    assert "chat_template=chat_template" in spec["tokenize"]


def test_template_mistakes_are_one_line_errors(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"data.chat_template 'chatm' is neither a bundled template \(alpaca, chatml, "
                                         r"llama-2, exaone\) nor a file"):
        resolve_chat_template("chatm")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"data.chat_template {bad}: line 2: "):
        resolve_chat_template(str(bad))
    with pytest.raises(ValueError, match="data.chat_template applies to format 'chat'"):
        InstructionDataModule(format="alpaca", chat_template="chatml", train_file="x.jsonl")
    # A template that does not render a conversation as a prefix of its continuation cannot be masked.
    reverse = tmp_path / "reverse.jinja"
    reverse.write_text("{% for m in messages|reverse %}{{ m.content }}{% endfor %}", encoding="utf-8")
    with pytest.raises(DataConfigError, match="does not render a conversation as a prefix of its continuation"):
        _setup(tmp_path, tokenizer, str(reverse))


def test_a_conversation_to_predict_is_prompted_with_the_templates_generation_prompt(tmp_path, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "내일 날씨?"}]
    path = write_jsonl(tmp_path / "ask.jsonl", [{"id": "p1", "messages": messages}])
    dm = InstructionDataModule(format="chat", chat_template="exaone", predict_file=str(path),
                               cache_dir=str(tmp_path / "cache"))
    dm.tokenizer = tokenizer
    dm.setup("predict")
    sample = dm.splits["predict"][0]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=BUNDLED["exaone"],
                                           add_generation_prompt=True)
    assert prompt.endswith("[|assistant|]\n<think>\n\n</think>\n\n")
    assert sample["prompt_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert sample["reference"] == "" and sample["input_ids"][:len(sample["prompt_ids"])] == sample["prompt_ids"]
