"""Prompt templates: how a record becomes (prompt, response) text segments.

A sample is a list of ``Segment(text, train)``: the loss is computed on ``train=True`` segments only
(responses), never on prompts. Tokenization happens per segment (``tokenize_segments``) so the boundary
between prompt and response is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from datamodules.records import DataConfigError

# MISSION §2, verbatim.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
INTENT_INSTRUCTION = (
    "Classify the user's utterance into exactly one of these intents: {labels}. Answer with the intent only."
)
INTENT_TEMPLATE = "{instruction}\n\nUtterance: {text}\nIntent: "


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt of MISSION §2 (the no-input variant when ``input`` is empty)."""
    if input and input.strip():
        return ALPACA_TEMPLATE.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT_TEMPLATE.format(instruction=instruction)


def intent_prompt(text: str, labels: list[str], instruction: str = INTENT_INSTRUCTION) -> str:
    """Prompt of generative intent classification; the label follows it as text."""
    return INTENT_TEMPLATE.format(instruction=instruction.format(labels=", ".join(labels)), text=text)


CHAT_ROLES = ("system", "user", "assistant")


def check_messages(rf, i: int, messages, need_answer: bool = False, need_user: str | None = None) -> None:
    """Validate a record's chat ``messages`` (a non-empty list of ``{role, content}`` with text content, no empty
    assistant answer); ``need_answer``: an assistant turn must be there to learn from; ``need_user``: a user
    turn must be there (the text says what for). Errors name the file, line and message index (``rf`` is a
    ``datamodules.records.RecordFile``)."""
    if not isinstance(messages, list) or not messages:
        raise rf.error(i, "messages", "expected a non-empty list of {role, content} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise rf.error(i, f"messages[{j}]", f"expected {{'role': one of {CHAT_ROLES}, 'content': text}}, got {m!r}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise rf.error(i, f"messages[{j}].content", "empty assistant answer")
    if need_answer and not any(m["role"] == "assistant" for m in messages):
        raise rf.error(i, "messages", "no assistant turn to learn from")
    if need_user and not any(m["role"] == "user" for m in messages):
        raise rf.error(i, "messages", f"no user turn {need_user}")


def chat_segments(messages: list[dict], tokenizer, chat_template: str | None = None) -> list[Segment]:
    """Segments of a chat: assistant turns are trained, everything else (system, user, markup) is not.

    With a chat template (``chat_template``, else the tokenizer's), each assistant turn is the text the template
    adds between the conversation so far (with the generation prompt) and the conversation including that turn:
    what the model must write after ``apply_chat_template(..., add_generation_prompt=True)``. A template whose
    turns end with EOS and put separators before the next turn (the bundled ones, ``datamodules.chat_templates``)
    trains exactly the answer and its EOS. Without a template, a plain ``<|role|>`` layout is used. A conversation
    without an assistant turn (a record to predict) is all prompt, ending with the generation prompt.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    segments: list[Segment] = []
    if not template:
        for m in messages:
            header = f"<|{m['role']}|>\n"
            if m["role"] == "assistant":
                segments += [Segment(header, False), Segment(m["content"], True), Segment("\n", False)]
            else:
                segments.append(Segment(f"{header}{m['content']}\n", False))
        if not any(s.train for s in segments):  # a conversation to answer (prediction): the answer's header
            segments.append(Segment("<|assistant|>\n", False))
        return segments

    def render(conversation: list[dict], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation,
                                             chat_template=template)

    rendered = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, full = render(messages[:i], generation=True), render(messages[: i + 1])
        if not (prefix.startswith(rendered) and full.startswith(prefix)):
            raise DataConfigError("the chat template (data.chat_template, else the tokenizer's) does not render a "
                                  "conversation as a prefix of its continuation; answer-only masking cannot be "
                                  "derived from it")
        segments += [Segment(prefix[len(rendered):], False), Segment(full[len(prefix):], True)]
        rendered = full
    if not segments:  # a conversation to answer (prediction): all of it and the generation prompt
        segments.append(Segment(render(messages, generation=True), False))
    return segments


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens
    response_start: int  # index of the first token of the last trained segment
    prompt_truncated: bool = False
    response_truncated: bool = False


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts a text with BOS (Llama: yes; many chat-tuned models: no)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def tokenize_segments(segments: list[Segment], tokenizer, add_eos: bool = True, add_bos: bool | None = None) -> Tokenized:
    """Token ids and labels of a sample; BOS first when the tokenizer adds one (``add_bos=None``: ask it),
    EOS closes the response (once: not after a response that already ends with a trained EOS)."""
    ids: list[int] = []
    labels: list[int] = []
    if add_bos if add_bos is not None else adds_bos(tokenizer):
        ids.append(tokenizer.bos_token_id)
        labels.append(-100)
    response_start = len(ids)
    for seg in segments:
        piece = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        if seg.train:
            response_start = len(ids)
        ids += piece
        labels += piece if seg.train else [-100] * len(piece)
    # A template whose answers end with EOS has trained it already: one EOS closes the response.
    if add_eos and tokenizer.eos_token_id is not None and not (labels and labels[-1] == tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return Tokenized(ids, labels, response_start)


def loss_token_count(labels: list[int]) -> int:
    """Tokens of a sample that enter the loss: labels at positions 1.. (position t is predicted from t-1)."""
    return sum(1 for label in labels[1:] if label != -100)


def truncate(sample: Tokenized, cutoff: int, keep_prompt: int = 1) -> Tokenized | None:
    """Fit a sample into ``cutoff`` tokens: the prompt loses tokens from its left first (after BOS), keeping
    at least ``keep_prompt``; only then is the response cut from its right. ``None`` when no response token
    would remain (the caller counts it as dropped)."""
    excess = len(sample.input_ids) - cutoff
    if excess <= 0:
        return sample
    ids, labels, start = list(sample.input_ids), list(sample.labels), sample.response_start
    has_bos = bool(ids) and labels[0] == -100 and start > 0
    first = 1 if has_bos else 0
    removable = max(start - first - keep_prompt, 0)
    cut = min(excess, removable)
    if cut:
        del ids[first:first + cut], labels[first:first + cut]
        start -= cut
        excess -= cut
    response_cut = False
    if excess > 0:
        del ids[-excess:], labels[-excess:]
        response_cut = True
        if not any(l != -100 for l in labels[start:]):
            return None
    return Tokenized(ids, labels, start, prompt_truncated=cut > 0, response_truncated=response_cut)
