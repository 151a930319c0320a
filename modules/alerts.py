"""The alert decision of a PPE-safety monitor (MISSION §3), parsed from generated text, and its metrics.

A vision-language model is asked e.g. "Raise an alert if any worker is missing a helmet or a safety vest"
and answers with reasoning and a decision line such as ``Alert: True``. :func:`parse_alert` reads that
decision (English or Korean; ``None`` when there is none), :class:`AlertStats` accumulates the confusion
counts as a torchmetrics ``Metric`` (synced across processes) and :func:`alert_summary` is the same in
plain Python for ``tuneloop compare alerts``.

Parsing rules of :func:`parse_alert`
------------------------------------

The text is first normalized: Unicode NFKC (full-width ``：`` becomes ``:``), markdown emphasis and code
marks (``*``, ``__``, backticks) removed, lower-cased.

1. **Explicit decisions** are key/value pairs, :data:`EXPLICIT`: a key (``Alert``, ``Alarm``, ``Raise an
   alert``, ``Alert decision``, ``Decision``/``Verdict`` (alert-valued only), ``경보``, ``경고``, ``알림``,
   ``알람``, ``경보 여부``, ``경보 발령 여부``, ``판단``/``결정`` (alert-valued only) ...), a separator
   (``:``, ``=``, ``-``, ``->``, ``→``, ``?``), optionally an opening bracket or quote, and a value from
   :data:`NEGATIVE_VALUES` (tried first: ``false``, ``no``, ``0``, ``none``, ``not needed``, ``no alert``,
   ``아니오``, ``아니요``, ``불필요``, ``필요 없음``, ``미발령``/``미발동``, ``없음`` ...) or
   :data:`POSITIVE_VALUES` (``true``, ``yes``, ``1``, ``raise``, ``needed``, ``예``, ``네``, ``필요``,
   ``발령``/``발동`` ...).

   - ``1``/``0`` are accepted as true/false; ``Alert: 1/0``, ``Alert: True/False`` or ``Alert: <True|False>``
     (a value followed by ``/``, ``|``, ``or`` and another value) is an echo of the answer format, not a
     decision, and is skipped.
   - Short words that also start ordinary phrases (``no``, ``none``, ``y``, ``n``, ``o``, ``x``, ``on``,
     ``off``) count only when followed by the end of the line, punctuation or ``because``/``since``/``as``/
     ``so``/``and``/``but`` ("Alert: No helmet on worker 2" is not a decision); other values need only
     a word boundary after them.
   - A key right after a negation (``not``, ``no``, ``never``, ``n't``) is not a key ("I will not raise an
     alert: everyone complies" is free phrasing, rule 2).
   - **Which explicit decision counts: the last one**, because an answer that corrects itself (type-D failure
     analysis: quote the wrong line, then give the corrected one) puts its final answer last. Except that
     *mentions* rank below *statements*: a key right after a quote mark (``the output was 'Alert: False'``)
     or in a sentence with a conditional (``if``, ``unless``, ``otherwise``, ``만약``, ``...다면``/``라면``:
     "it would be Alert: False if he wore a vest") is a mention. The answer is the last statement, or the
     last mention when there is no statement, so a counterfactual or a quotation after the answer does not
     override it.

2. **Free phrasing**, only when there is no explicit decision: :data:`NEGATIVE_PHRASES` (``no alert``,
   ``do not raise an alert``, ``an alert is not needed``, ``no need to raise an alert``, ``경보 필요
   없음``, ``경보를 발령할 필요가 없습니다``, ``알림 불필요``, ``경보를 발령하지 않습니다``, ``경보를 울리지
   않습니다``, ``경보를 발동하지 않습니다``, ``경보를 울릴 필요가 없습니다``, ``경보가 필요하지 않습니다`` ...)
   are found first and blanked out, then :data:`POSITIVE_PHRASES` (``raise an alert``, ``an alert should be
   raised``, ``경보를 발령해야 합니다``, ``따라서 경보를 울립니다``, ``경보를 발동합니다``, ``경보가
   필요합니다`` ...) are searched in what is left, so that the positive phrase inside a negated one ("no alert
   should *be raised*", ``경보를 울리지 않습니다``) does not count. Only negative phrases: ``False``; only
   positive: ``True``; both (contradictory): ``None``. Korean verbs of an alert: 발령 (issue), 발동
   (invoke), 울리다 (sound: 울립니다, 울려야, 울리지, 울릴), 발송/전송/송출/보내다 (send) ...

3. Anything else (empty text, a bare "Yes" whose question we cannot see, reasoning without a decision):
   ``None``. There is never a default decision: callers count ``None`` as *unparseable*.

Metric definitions (:class:`AlertStats`, :func:`alert_summary`)
---------------------------------------------------------------

Positive class = alert raised (``True``). Each case is gold ``True``/``False`` and a prediction ``True``,
``False`` or unparseable (``None``). With tp, fp, tn, fn counted over parsed predictions only and u+, u-
the unparseable cases whose gold is positive / negative (u = u+ + u-):

=====================  ====================================================================================
``n``                  tp + fp + tn + fn + u (every case)
``accuracy``           (tp + tn) / n: an unparseable output is a wrong answer
``precision``          tp / (tp + fp): an unparseable output is never a predicted alert; 0 when nothing was
                       predicted positive
``recall``             tp / (tp + fn + u+): every gold alert counts, an unparseable one is a missed alert;
                       0 when there is no gold alert
``f1``                 2 tp / (2 tp + fp + fn + u+) (the harmonic mean of the two; 0 when tp = 0)
``false_positives``    fp (parsed predictions only)
``false_negatives``    fn (parsed predictions only; u+ is in ``unparseable``)
``unparseable``        u
=====================  ====================================================================================

These equal scikit-learn's ``accuracy_score`` and ``precision_recall_fscore_support(y, p, labels=["alert"],
average=None, zero_division=0)`` when True/False/None are mapped to the string classes ``"alert"``,
``"no_alert"``, ``"unparseable"`` (the tests check it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ALERT_KEYS", "AlertStats", "alert_summary", "parse_alert"]

#: The keys of the dicts of :meth:`AlertStats.compute` and :func:`alert_summary`, in display order.
ALERT_KEYS = ("n", "accuracy", "precision", "recall", "f1", "false_positives", "false_negatives", "unparseable")

# ---------------------------------------------------------------------------------------------------------
# Rule tables (matched against normalized, lower-cased text)
# ---------------------------------------------------------------------------------------------------------

_KO = r"(?:경보|경고|알림|알람)"  # alert, warning, notification, alarm
# issue/invoke/sound/send ...; 울리다 in every form the answers use (울리지, 울려야, 울립니다, 울릴 필요, 울렸)
_KO_VERB = r"(?:발령|발동|발생|발송|송출|전송|제기|울(?:리|려|렸|림|립|릴)|보내|보낼|트리거)"
_AMBIGUOUS_END = r"(?=[ \t]*(?:[\r\n]|\Z|[^\w\s]|(?:because|since|as|so|and|but)\b))"  # "no" only as a whole answer

#: Values of an explicit decision meaning "no alert", tried before the positive ones.
NEGATIVE_VALUES = (
    r"(?:false|not\s+(?:needed|required|necessary|raised|warranted)|no[\s_-]*alert|do\s*n[o']t\s+(?:raise|alert)"
    r"|negative|아니[오요]?|아뇨|불필요\w*|필요\s*(?:가\s*|는\s*)?없\w*|필요(?:하지|치)\s*않\w*|미발[령동]\w*"
    r"|발[령동]\s*(?:안\s*함|하지\s*않\w*)|해당\s*없음|없음|거짓|×)(?!\w)"
    r"|0(?![\w.,]?\d)"
    r"|(?:no|none|n|x|off)" + _AMBIGUOUS_END
)
#: Values of an explicit decision meaning "raise the alert".
POSITIVE_VALUES = (
    r"(?:true|yes|positive|raised?|alert|needed|required|necessary|예|네|필요\w*|발[령동]\w*|참|있음|○)(?!\w)"
    r"|1(?![\w.,]?\d)|(?:y|o|on)" + _AMBIGUOUS_END
)
# "Decision: alert" / "판단: 경보 발령": a decision key takes only alert-naming values.
_DECISION_NEGATIVE = (r"(?:no[\s_-]*alert|do\s*n[o']t\s+(?:raise\s+(?:an?\s+)?)?alert|not\s+alert"
                      r"|경보\s*(?:불필요|필요\s*없\w*|미발[령동]|없음|발[령동]\s*안\s*함))(?![\w:])")
_DECISION_POSITIVE = r"(?:(?:raise\s+(?:an?\s+|the\s+)?)?alert|경보\s*(?:발령|발동|필요)\w*)(?![\w:])"

#: Explicit decisions: (key, negative values, positive values). The separator and rules sit in _explicit().
EXPLICIT: tuple[tuple[str, str, str], ...] = (
    (r"alert(?:\s+(?:decision|status|needed|required|raised))?|alarm"
     r"|raise\s+(?:an?\s+|the\s+)?alert|should\s+(?:an?\s+)?alert\s+be\s+raised", NEGATIVE_VALUES, POSITIVE_VALUES),
    (r"(?:final\s+)?(?:decision|verdict)", _DECISION_NEGATIVE, _DECISION_POSITIVE),
    (_KO + r"(?:\s*발[령동])?(?:\s*(?:필요\s*여부|여부|필요성|필요|결정|판단))?", NEGATIVE_VALUES, POSITIVE_VALUES),
    (r"(?:최종\s*)?(?:판단|결정|결론)", _DECISION_NEGATIVE, _DECISION_POSITIVE),
)
_SEPARATOR = r"[ \t]*(?:->|=>|[:=\-–—→⇒?])[ \t]*[(\[{<\"'「『“]?[ \t]*"
# "Alert: True/False", "Alert: <True|False>": a format echo, not a decision.
_ALTERNATIVE = re.compile(r"[ \t]*(?:/|\||\bor\b|또는|혹은)[ \t]*(?:" + NEGATIVE_VALUES + "|" + POSITIVE_VALUES + ")")
_NEGATED_KEY = re.compile(r"(?:\bnot|n't|\bno|\bnever)[\s-]*\Z")
# A key right after a quote, or after a conditional in its sentence, is a mention, not a statement.
_QUOTE_BEFORE = re.compile(r"[\"'“‘「『][ \t]*\Z")
_CONDITIONAL = re.compile(r"\b(?:if|unless|otherwise)\b|만약|다면|라면")

#: Free phrasing meaning "no alert", blanked out before the positive phrases are searched.
NEGATIVE_PHRASES = tuple(re.compile(p) for p in (
    r"\bno\s+need\s+(?:to\s+(?:raise|trigger|issue|send)\s+|for\s+)(?:an?\s+|the\s+|any\s+)?alerts?\b",
    r"\bno\s+alerts?\b",
    r"(?:\bnot|n't|\bnever)\s+(?:(?:need|needs|to|be|have)\s+){0,2}"
    r"(?:rais|trigger|issu|send)\w*\s+(?:an?\s+|the\s+|any\s+)?alerts?\b",
    r"\balerts?\s+(?:(?:is|was|are|should|would|will|must|does|do|can|need|needs|be)\s+){0,2}(?:not|never)\b",
    r"\balerts?\s+(?:is|was|are|should|would|wo|will|must|does|do|can|need)n't\b",
    r"\balerts?\s+(?:is|are|was|would\s+be)\s+(?:unnecessary|unwarranted|unneeded)\b",
    _KO + r"\w*\s*(?:" + _KO_VERB + r"\w*\s*)?(?:불필요|필요\s*(?:가|는|도|성이|성은)?\s*없|필요(?:하지|치)\s*않)",
    _KO + r"\w*\s*" + _KO_VERB + r"\w*?지\s*(?:않|말|마)",
    _KO + r"\w*\s*(?:" + _KO_VERB + r"\w*\s*)?안\s*(?:함|해|합니다|한다|됨)",
    _KO + r"\w*\s*안\s*" + _KO_VERB,
    _KO + r"\s*(?:미발[령동]|없음|없습니다|없다|대상이?\s*아)",
))
#: Free phrasing meaning "raise the alert" (searched after the negative phrases are blanked out).
POSITIVE_PHRASES = tuple(re.compile(p) for p in (
    r"\b(?:rais|trigger|issu|send)\w*\s+(?:an?\s+|the\s+)?alerts?\b",
    r"\balerts?\s+(?:(?:is|was|should|must|will|would|needs\s+to|need\s+to)\s+)?(?:be\s+)?"
    r"(?:raised|triggered|issued|needed|required|necessary|warranted|justified)\b",
    r"\bwarrants?\s+(?:an?\s+)?alert\b",
    _KO + r"\w*\s*" + _KO_VERB,
    _KO + r"\s*(?:이|가|은|는)?\s*필요",
))

_EXPLICIT = tuple(
    (re.compile(r"(?<![\w-])(?:" + key + ")" + _SEPARATOR), re.compile(neg), re.compile(pos))
    for key, neg, pos in EXPLICIT
)


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\*+|__|`+|[\u200b-\u200d\ufeff]", "", text)  # markdown emphasis/code, zero-width marks
    return text.lower()


def _explicit(text: str) -> list[tuple[int, bool, bool]]:
    """Every explicit decision as (position, value, is_statement), in no particular order."""
    found = []
    for key, neg, pos in _EXPLICIT:
        # Overlapping scan: "Decision: Alert: True" must see the key "alert" inside the decision's value.
        start = 0
        while (m := key.search(text, start)) is not None:
            start = m.start() + 1
            if _NEGATED_KEY.search(text[max(0, m.start() - 12):m.start()]):
                continue  # "not raise an alert: ..." is free phrasing
            for pattern, value in ((neg, False), (pos, True)):
                v = pattern.match(text, m.end())
                if v is not None:
                    break
            else:
                continue
            if _ALTERNATIVE.match(text, v.end()):
                continue
            found.append((m.start(), value, _is_statement(text, m.start())))
    return found


def _is_statement(text: str, key_start: int) -> bool:
    """False for a mention: a key right after a quote mark, or in a sentence with a conditional."""
    line_start, line_end = text.rfind("\n", 0, key_start) + 1, text.find("\n", key_start)
    before, after = text[line_start:key_start], text[key_start:line_end if line_end >= 0 else len(text)]
    before = before[max(before.rfind(". "), before.rfind("! "), before.rfind("? "), before.rfind("。")) + 1:]
    after = re.split(r"[.!?](?:\s|\Z)|。", after, maxsplit=1)[0]
    return not (_QUOTE_BEFORE.search(before) or _CONDITIONAL.search(before + after))


def parse_alert(text: str) -> bool | None:
    """The alert decision in a model's generated text: ``True`` (raise the alert), ``False`` (no alert) or
    ``None`` (no decision found, or contradictory free phrasing). The rules are in the module docstring:
    explicit ``Alert: ...`` pairs win over free phrasing; among them the last one is the answer (a quoted or
    conditional one only when there is no other); free phrasing decides only when it points one way.

    >>> parse_alert("Worker 2 wears an orange T-shirt, not a vest.\\nAlert: True")
    True
    >>> parse_alert("경보를 발령할 필요가 없습니다.")
    False
    >>> parse_alert("Worker 2 is missing a vest.") is None
    True
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_alert expects text, got {type(text).__name__}")
    text = _normalize(text)
    explicit = _explicit(text)
    if explicit:
        statements = [e for e in explicit if e[2]]
        return max(statements or explicit)[1]
    negative = False
    for phrase in NEGATIVE_PHRASES:
        text, count = phrase.subn(lambda m: " " * len(m.group()), text)
        negative = negative or count > 0
    positive = any(phrase.search(text) for phrase in POSITIVE_PHRASES)
    if positive == negative:
        return None  # neither, or both (contradictory)
    return positive


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def _rates(tp, fp, tn, fn, unp_pos, unp_neg, div) -> dict[str, Any]:
    """The figures of the module docstring from the counts; ``div(a, b)`` is a / b, or 0 when b is 0."""
    unparseable = unp_pos + unp_neg
    n = tp + fp + tn + fn + unparseable
    return {
        "n": n,
        "accuracy": div(tp + tn, n),
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn + unp_pos),
        "f1": div(2 * tp, 2 * tp + fp + fn + unp_pos),
        "false_positives": fp,
        "false_negatives": fn,
        "unparseable": unparseable,
    }


def _as_codes(values: Any, what: str, allow_unparseable: bool) -> Tensor:
    """A list of bool/None or a tensor as a long tensor (N,) of 1 (alert), 0 (no alert), -1 (unparseable)."""
    if isinstance(values, Tensor):
        if values.ndim > 1 or values.is_floating_point() or values.is_complex():
            raise ValueError(f"AlertStats: {what} must be a 1-D integer or bool tensor, got {values.dtype} "
                             f"of shape {tuple(values.shape)}")
        codes = values.long().reshape(-1)
    else:
        codes_list = []
        for i, v in enumerate(values):
            if v is None and allow_unparseable:
                codes_list.append(-1)
            elif isinstance(v, bool):
                codes_list.append(int(v))
            else:
                allowed = "True, False or None" if allow_unparseable else "True or False"
                raise ValueError(f"AlertStats: {what}[{i}] must be {allowed}, got {v!r}")
        codes = torch.tensor(codes_list, dtype=torch.long)
    allowed = (-1, 0, 1) if allow_unparseable else (0, 1)
    if codes.numel() and not torch.isin(codes, torch.tensor(allowed, device=codes.device)).all():
        raise ValueError(f"AlertStats: {what} values must be in {allowed}, got {sorted(set(codes.tolist()))}")
    return codes


class AlertStats(Metric):
    """Accuracy, precision, recall and F1 of alert decisions parsed from generated text, with the counts of
    false positives, false negatives and unparseable outputs (definitions in the module docstring; positive
    class = alert raised, an unparseable output is wrong, never a predicted alert, and a missed alert when
    the gold says alert).

    ``update(pred, gold)``: ``pred`` a list of ``True``/``False``/``None`` (``None`` = unparseable, see
    :func:`parse_alert`) or an integer/bool tensor (N,) with 1/0 and -1 for unparseable; ``gold`` a list of
    ``True``/``False`` or a tensor (N,) of 1/0. Lists become tensors on the metric's device.

    ``compute()`` returns ``{key: Tensor}`` for :data:`ALERT_KEYS`: counts as long tensors, rates as float64
    (float32 on Apple MPS), 0 where a denominator is 0. States are counts with ``dist_reduce_fx="sum"``,
    so under DDP the result is that of the union of all processes' cases (``compute()`` is a collective).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: Tensor
    fp: Tensor
    tn: Tensor
    fn: Tensor
    unparseable: Tensor
    unparseable_pos: Tensor
    unparseable_neg: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "tn", "fn", "unparseable", "unparseable_pos", "unparseable_neg"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Sequence[bool | None] | Tensor, gold: Sequence[bool] | Tensor) -> None:
        p = _as_codes(pred, "pred", allow_unparseable=True).to(self.device)
        g = _as_codes(gold, "gold", allow_unparseable=False).to(self.device)
        if p.shape != g.shape:
            raise ValueError(f"AlertStats: pred and gold must have the same length, got {p.numel()} and {g.numel()}")
        self.tp += ((p == 1) & (g == 1)).sum()
        self.fp += ((p == 1) & (g == 0)).sum()
        self.tn += ((p == 0) & (g == 0)).sum()
        self.fn += ((p == 0) & (g == 1)).sum()
        self.unparseable += (p == -1).sum()
        self.unparseable_pos += ((p == -1) & (g == 1)).sum()
        self.unparseable_neg += ((p == -1) & (g == 0)).sum()

    def compute(self) -> dict[str, Tensor]:
        dtype = torch.float32 if self.tp.device.type == "mps" else torch.float64

        def div(a: Tensor, b: Tensor) -> Tensor:
            a, b = a.to(dtype), b.to(dtype)
            return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))

        return _rates(self.tp, self.fp, self.tn, self.fn, self.unparseable_pos, self.unparseable_neg, div)


def alert_summary(gold: Sequence[bool], pred: Sequence[bool | None]) -> dict[str, int | float]:
    """:class:`AlertStats` in plain Python for one list of cases: ``{key: int | float}`` for
    :data:`ALERT_KEYS` (counts as ``int``, rates as ``float``, 0.0 where a denominator is 0).

    ``gold``: ``True``/``False`` per case; ``pred``: ``True``/``False``/``None`` (unparseable), same length.
    """
    if len(gold) != len(pred):
        raise ValueError(f"alert_summary: gold and pred must have the same length, got {len(gold)} and {len(pred)}")
    counts = dict.fromkeys(("tp", "fp", "tn", "fn", "unp_pos", "unp_neg"), 0)
    for i, (g, p) in enumerate(zip(gold, pred)):
        if not isinstance(g, bool):
            raise ValueError(f"alert_summary: gold[{i}] must be True or False, got {g!r}")
        if p is not None and not isinstance(p, bool):
            raise ValueError(f"alert_summary: pred[{i}] must be True, False or None, got {p!r}")
        key = ("unp_pos" if g else "unp_neg") if p is None else {(True, True): "tp", (True, False): "fp",
                                                                    (False, False): "tn", (False, True): "fn"}[p, g]
        counts[key] += 1
    return _rates(**counts, div=lambda a, b: a / b if b else 0.0)
