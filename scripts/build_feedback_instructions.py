#!/usr/bin/env python
"""Turn operator feedback on a PPE monitor's mistakes into QA instruction records (MISSION §3).

Input: a feedback JSONL (as written by scripts/make_ppe_data.py, or by the operators' tool), one hard case a
line::

    {"id": "ppe-0009", "image": "images/ppe-0009.png", "scenario": "Raise an alert if any worker is ...",
     "failure": "false_positive" | "false_negative",
     "feedback": "The worker on the left wears an orange T-shirt without reflective stripes, not a vest. ...",
     "model_output": "There are 2 workers. ... \\nAlert: False"}       # optional (null or left out)

``image`` is relative to the feedback file's directory (or absolute). ``failure`` fixes the correct decision:
a false positive (alert raised though everyone complied) means the correct answer is ``Alert: False``, a false
negative (no alert though someone does not comply) means ``Alert: True``. A record with a missing or empty
field, an unknown ``failure`` or a missing image file stops the run with exit code 2 and a message
``file:line: field 'x': what is wrong``.

Output: one QA instruction record per line, for each case and each requested type::

    {"id": "<case id>-<type>", "image": <path relative to the OUTPUT file's directory>, "scenario",
     "type": "A"|"B"|"C"|"D", "question", "answer", "alert": <the correct decision>, "source_id": <case id>,
     "review": "pending"|"accepted"|"edited"|"rejected", "mode": "template"|"teacher"}

Every ``answer`` ends with a last line ``Alert: True`` or ``Alert: False`` equal to ``alert``. Types:

A. fact verification: the monitoring question; the corrected facts (from the feedback) and the decision;
B. comparison and contrast: who complies and who does not, and the visual difference (a vest with reflective
   stripes vs an orange T-shirt without; a hard hat vs a bare head);
C. counterfactual: what would have to change for the opposite decision;
D. failure analysis: given the monitor's previous answer (``model_output``), name the error (its reasoning
   says one thing and its Alert line another, or something was misidentified) and give the corrected answer.
   Needs ``model_output``; a case without it (or whose ``model_output`` already ends with the correct Alert
   line) gets no D record and is counted in the summary.

Modes:

* ``--mode template`` (default): deterministic text from the feedback and the failure type, no model. The
  operator's sentences about the image are the facts; sentences about the alert or the model (``Alert should
  have been raised.``) are left out of them. ``review`` is ``accepted`` (the facts are the operator's own
  words) unless ``--review pending``.
* ``--mode teacher``: a vision-language teacher drafts each record from the image, the feedback and the type's
  task: ``--teacher-url`` (an OpenAI-compatible ``/chat/completions`` endpoint; the image goes as a base64 data
  URL in an ``image_url`` content part; the API key comes from the environment variable ``--api-key-env``) or
  ``--teacher-path`` (a local model, ``AutoModelForImageTextToText`` + ``AutoProcessor``, greedy). The reply
  must be strict JSON ``{"question": str, "answer": str, "alert": bool}`` (a ```json fence is accepted) whose
  answer ends with the Alert line matching ``alert``, and ``alert`` must be the correct decision; otherwise
  the teacher is asked again with the error (``--retries``), then the record goes to
  ``<out stem>.rejected.jsonl``. Drafts get ``review: "pending"``.

Both modes resume: records whose id is already in ``--out`` (or, in teacher mode, in the rejects file) are
skipped, and the run says so (``96 records already in train_ad.jsonl: skipped (resume); use --overwrite to
rebuild``); each record is appended and flushed as soon as it is made, so an interrupted run loses nothing
(a last line cut off mid-write is removed and redone). ``--overwrite`` deletes the output and its rejects file
(after the feedback has been checked) and builds everything anew: use it to regenerate a file, e.g. after
editing the feedback or the templates.

The feedback file of a baseline's test run (its false positives and false negatives) is made by
``scripts/make_feedback.py`` from the run's ``predictions.jsonl`` and the records it answered.

Review: a person checks the records and sets ``review``; edit ``question``/``answer`` by hand and set
``"edited"``, or use the ``review`` subcommand (in place unless ``--out``)::

    python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl \\
        --out data/samples/ppe/train_a.jsonl --types A --overwrite
    python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl \\
        --out data/samples/ppe/train_ad.jsonl --types A,B,C,D --overwrite
    python scripts/build_feedback_instructions.py feedback.jsonl --out drafts.jsonl --mode teacher \\
        --teacher-url http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-VL-32B-Instruct --retries 3
    python scripts/build_feedback_instructions.py review --in drafts.jsonl \\
        --accept ppe-0009-A ppe-0009-B --reject ppe-0011-C
    python scripts/build_feedback_instructions.py review --in drafts.jsonl --accept-all --drop-rejected \\
        --out train.jsonl
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datamodules.records import RecordError, json_objects, write_jsonl
from trainer.chat_client import ChatClient, InvalidResponse, RequestRejected, reply_json
from trainer.chat_client import EndpointUnavailable as TeacherUnavailable
from trainer.jsonl_out import rejects_path_for, resume_note, start_afresh, truncate_unfinished, written_ids

TYPES = ("A", "B", "C", "D")
FAILURES = {"false_positive": False, "false_negative": True}  # failure -> the correct alert decision
REQUIRED = ("id", "image", "scenario", "failure", "feedback")
REVIEW_VALUES = ("pending", "accepted", "edited", "rejected")
# The monitoring prompt's instruction, as in scripts/make_ppe_data.py (test.jsonl, val.jsonl).
QUESTION_SUFFIX = (
    "Look at every worker's head and torso. Describe each worker's helmet and torso clothing, then end your "
    'answer with a last line "Alert: True" (someone is missing a helmet or a safety vest) or "Alert: False" '
    "(everyone complies)."
)
END_WITH_ALERT = 'End with a last line "Alert: True" or "Alert: False".'
MAX_STORED_REPLY = 2000

_ALERT_LINE = re.compile(r"^Alert: (True|False)$")
_ANY_ALERT = re.compile(r"\bAlert:\s*(True|False)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Sentences about the decision or the model, not about the image.
_NOT_A_FACT = re.compile(r"\b(alert|alerts|alerted|alarm|model|answer|answered)\b", re.I)
_PLAIN = re.compile(r"\bplain\b", re.I)
# What the feedback is about: a vest / shirt confusion, a helmet / bare head confusion.
_VEST_CUE = re.compile(r"t-?shirt|\bshirt\b|\bno vest\b|\bnot a (safety )?vest\b|\bwithout (a )?(safety )?vest\b", re.I)
_HEAD_CUE = re.compile(
    r"\bno helmet\b|\bwithout (a )?helmet\b|bare[- ]head|\bhair\b|not wearing a (hard hat|helmet)|\bhard hat\b"
    r"|does wear a helmet|wearing an? \w+ helmet",
    re.I,
)
_HEAD_MISSING = re.compile(
    r"\bno helmet\b|\bwithout (a )?helmet\b|\bbare[- ]head|\bhair\b|not wearing a (hard hat|helmet)", re.I
)
_VIOLATION = re.compile(
    r"\bno helmet\b|\bwithout (a )?(helmet|hard hat)\b|\bbare[- ]head|\bnot (wearing )?(a )?(proper )?(safety )?vest\b"
    r"|\bno (safety )?vest\b|\black(s|ing)? (a )?(proper )?(safety )?vest\b|\bmissing\b|\bnot compliant\b"
    r"|\bnon-compliant\b",
    re.I,
)


class InvalidDraft(InvalidResponse):
    """The teacher answered, but not with a usable record (asked again with this message).

    ``RequestRejected`` (the teacher refuses this request: the record is rejected without retry) and
    ``TeacherUnavailable`` (cannot be reached: the run stops; re-run to resume) come from
    ``trainer.chat_client``, as does ``InvalidResponse`` (not a chat-completions response), this class's base."""


# ----- input ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    image_path: Path  # absolute
    scenario: str
    failure: str
    feedback: str
    model_output: str | None
    location: str

    @property
    def alert(self) -> bool:
        return FAILURES[self.failure]


def _text(obj: dict, name: str, location: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(location, name, "missing")
        return None
    if not isinstance(value, str):
        raise RecordError(location, name, f"expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise RecordError(location, name, "empty text" + ("" if required else " (leave it out or null instead)"))
    return value.strip()


def read_feedback(path: str | Path) -> list[Case]:
    """Every case of a feedback JSONL; the first invalid record raises ``RecordError`` (file:line: field)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feedback file not found: {path}")
    base = Path(os.path.abspath(path.parent))
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for lineno, obj in json_objects(path):
        location = f"{path}:{lineno}"
        values = {name: _text(obj, name, location) for name in REQUIRED}
        if values["id"] in first_line:
            first = first_line[values["id"]]
            raise RecordError(location, "id", f"duplicate id {values['id']!r} (first on line {first})")
        if values["failure"] not in FAILURES:
            raise RecordError(location, "failure",
                              f"unknown value {values['failure']!r}; expected one of {', '.join(FAILURES)}")
        image = base / values["image"]
        if not image.is_file():
            raise RecordError(location, "image", f"image file not found: {image}")
        model_output = _text(obj, "model_output", location, required=False)
        first_line[values["id"]] = lineno
        cases.append(Case(values["id"], image, values["scenario"], values["failure"], values["feedback"],
                          model_output, location))
    if not cases:
        raise RecordError(str(path), None, "file has no records")
    return cases


# ----- template mode --------------------------------------------------------------------------------------------
def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def facts(case: Case) -> str:
    """The operator's sentences about the image (not those about the alert or the model)."""
    kept = [s for s in sentences(case.feedback) if not _NOT_A_FACT.search(s)]
    if kept:
        return " ".join(kept)
    if case.alert:
        return "According to the review, at least one worker is missing a helmet or a safety vest."
    return "According to the review, every worker wears a helmet and a safety vest."


def conclusion(alert: bool) -> str:
    if alert:
        return "So at least one worker is missing required PPE, and an alert must be raised."
    return "So every worker wears a helmet and a safety vest, and no alert is needed."


def question(case: Case, kind: str) -> str:
    if kind == "A":
        return f"{case.scenario} {QUESTION_SUFFIX}"
    if kind == "B":
        return (f"{case.scenario} Which workers in this image comply with the rule and which do not? Point out "
                f"the visual difference that decides it. {END_WITH_ALERT}")
    if kind == "C":
        return (f"{case.scenario} What would have to change in this image for the opposite decision? "
                f'End with a last line "Alert: True" or "Alert: False" for the image as it is.')
    return (f'{case.scenario} A previous answer of the monitor for this image was:\n"""\n{case.model_output}\n"""\n'
            f"What is wrong with this answer? Name the error, then give the corrected answer. {END_WITH_ALERT}")


def _contrast(case: Case) -> str:
    shirt, head = bool(_VEST_CUE.search(case.feedback)), bool(_HEAD_CUE.search(case.feedback))
    if not shirt and not head:
        shirt = head = True
    parts = []
    if shirt:
        parts.append("The difference is the reflective stripes: a safety vest is fluorescent yellow or orange with "
                     "two horizontal reflective silver stripes across the torso, while an orange or yellow T-shirt "
                     "can have the same bright colour but has no stripes, so it does not count as a vest.")
        if _PLAIN.search(case.feedback):
            parts.append("A plain shirt in a dull colour is not high-visibility clothing at all.")
    if head:
        parts.append("A hard hat is a smooth coloured dome with a brim; a bare head shows hair and has no brim.")
    return " ".join(parts)


def _violation_quote(text: str) -> str | None:
    """The first sentence of a model answer (without its Alert line) that reports a violation."""
    reasoning = _ANY_ALERT.sub("", text)
    for sentence in sentences(reasoning.replace("\n", " ")):
        if _VIOLATION.search(sentence) and not re.search(r"\bno alert\b", sentence, re.I):
            return sentence
    return None


def model_alert(text: str) -> bool | None:
    """The decision of a model answer: its last ``Alert: True|False`` (None when it has none)."""
    found = _ANY_ALERT.findall(text)
    return found[-1].lower() == "true" if found else None


def d_skip_reason(case: Case) -> str | None:
    """Why no type-D record can be made from ``case`` (None when it can)."""
    if case.model_output is None:
        return "D: no model_output"
    if model_alert(case.model_output) == case.alert:
        return "D: model_output already ends with the correct Alert line"
    return None


def template_answer(case: Case, kind: str) -> str:
    alert, fact_text = case.alert, facts(case)
    if kind == "A":
        body = f"{fact_text} {conclusion(alert)}"
    elif kind == "B":
        if alert:
            who = ("The workers described above without a hard hat or without a striped vest do not comply; every "
                   "other worker wears both and complies.")
        else:
            who = "Every worker complies: each one wears a hard hat and a safety vest with reflective stripes."
        body = f"{fact_text} {who} {_contrast(case)}"
    elif kind == "C":
        if alert:
            changes = []
            if _VEST_CUE.search(fact_text):
                changes.append("the worker without a vest would have to put on a fluorescent safety vest with two "
                               "reflective stripes instead of the shirt")
            if _HEAD_MISSING.search(fact_text):
                changes.append("the bare-headed worker would have to put on a hard hat")
            specific = f" In this image, {' and '.join(changes)}." if changes else ""
            body = (f"{fact_text} For no alert to be needed, every worker would have to wear both a hard hat and a "
                    f"high-visibility vest with reflective stripes.{specific} As the image is, an alert is needed.")
        else:
            body = (f"{fact_text} An alert would be needed if any worker were missing PPE: for example if a worker "
                    f"took off the hard hat, or wore an orange or yellow T-shirt without reflective stripes instead "
                    f"of the safety vest. As the image is, no alert is needed.")
    elif kind == "D":
        said = model_alert(case.model_output or "")
        quote = _violation_quote(case.model_output or "")
        if said is None:
            error = "The previous answer does not end with an Alert line, so it makes no decision."
        elif alert and quote:
            error = (f'The reasoning and the decision contradict each other: the answer says "{quote.rstrip(".")}", '
                     f"which breaks the rule, but its Alert line says False. A worker missing a helmet or a safety "
                     f"vest always means Alert: True.")
        elif alert:
            error = ("The answer missed the violation: it describes every worker as compliant and says "
                     "Alert: False, but it misidentified what a worker wears.")
        elif quote:
            error = (f'The answer reports a violation that is not there ("{quote.rstrip(".")}"). That is a '
                     f"misidentification, so its Alert: True is wrong.")
        else:
            error = ("The reasoning and the decision contradict each other: the answer finds no violation, but its "
                     "Alert line says True.")
        body = f"{error} Corrected answer: {fact_text} {conclusion(alert)}"
    else:
        raise ValueError(f"unknown type {kind!r}")
    return f"{body}\nAlert: {alert}"


# ----- teacher mode ---------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You write training data for a vision-language model that monitors construction sites for personal protective "
    "equipment (PPE). You see the image, the monitor's mistake and the operator's review, and write one "
    "question-answer pair. Reply with strict JSON only."
)
TYPE_TASKS = {
    "A": "Fact verification: the question asks whether the scenario's condition holds in the image, i.e. whether an "
         "alert must be raised; the answer states the corrected facts about the workers and the decision.",
    "B": "Comparison and contrast: the question asks which workers comply and which do not; the answer names them "
         "and the visual difference that decides it (a safety vest has two reflective stripes, an orange T-shirt "
         "has none; a hard hat has a brim, a bare head shows hair).",
    "C": "Counterfactual: the question asks what would have to change in the image for the opposite decision; the "
         "answer names the concrete change, then gives the decision for the image as it is.",
    "D": "Failure analysis: the question quotes the monitor's previous answer (below) and asks what is wrong with "
         "it; the answer names the error (its reasoning contradicting its Alert line, or something misidentified) "
         "and gives the corrected answer.",
}
_FAILURE_TEXT = {
    "false_positive": "a false positive: it raised an alert although every worker complies",
    "false_negative": "a false negative: it raised no alert although a worker is missing a helmet or a safety vest",
}


def teacher_prompt(case: Case, kind: str) -> str:
    lines = [f"Scenario: {case.scenario}",
             f"The monitor's decision for this image was {_FAILURE_TEXT[case.failure]}.",
             f"Operator's review of the image: {case.feedback}"]
    if case.model_output:
        lines.append(f'The monitor\'s previous answer:\n"""\n{case.model_output}\n"""')
    lines += [
        f"The correct decision for this image is Alert: {case.alert}.",
        f"Write one question-answer pair of type {kind}. {TYPE_TASKS[kind]}",
        'Reply with JSON only: {"question": "...", "answer": "...", "alert": true or false}. The answer must end '
        'with a last line "Alert: True" or "Alert: False" that agrees with "alert".',
    ]
    return "\n".join(lines)


def parse_draft(text: str, correct_alert: bool) -> dict:
    """``{"question", "answer", "alert"}`` of a strict JSON reply; raises ``InvalidDraft`` saying what is wrong."""
    data = reply_json(text, InvalidDraft)
    if not isinstance(data, dict):
        raise InvalidDraft(f"expected a JSON object, got {type(data).__name__}")
    for key in ("question", "answer"):
        value = data.get(key)
        if not isinstance(value, str):
            raise InvalidDraft(f"{key!r} is missing or not a string")
        if not value.strip():
            raise InvalidDraft(f"{key!r} is empty")
    if not isinstance(data.get("alert"), bool):
        raise InvalidDraft(f"'alert' must be true or false, got {data.get('alert')!r}")
    answer = data["answer"].strip()
    last = answer.splitlines()[-1].strip()
    match = _ALERT_LINE.match(last)
    if not match:
        raise InvalidDraft(f'the answer must end with a last line "Alert: True" or "Alert: False", not {last[:80]!r}')
    if (match.group(1) == "True") != data["alert"]:
        raise InvalidDraft(f"the answer's last line {last!r} contradicts \"alert\": {str(data['alert']).lower()}")
    if data["alert"] != correct_alert:
        raise InvalidDraft(f"\"alert\" is {str(data['alert']).lower()}, but the correct decision for this image is "
                           f"Alert: {correct_alert}")
    return {"question": data["question"].strip(), "answer": answer, "alert": data["alert"]}


class Teacher(Protocol):
    def complete(self, system: str, text: str, image: Path) -> str:
        """The teacher's reply to a system message and a user message of an image and text."""
        ...


def image_data_url(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}.get(
        path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class HttpTeacher:
    """A vision teacher behind an OpenAI-compatible chat-completions endpoint; the image goes as a base64 data URL.

    Args:
        client: The endpoint (``trainer.chat_client.ChatClient``: URL, model, key, temperature, token limit,
            timeout, and the retry policy: connection errors, timeouts, HTTP 429 and 5xx retried with backoff,
            ``Retry-After`` honoured; 400, 413, 422 reject the record; any other status, or retries spent, stop
            the run).
    """

    def __init__(self, client: ChatClient):
        self.client, self.url = client, client.url

    def complete(self, system: str, text: str, image: Path) -> str:
        return self.client.complete([
            {"role": "system", "content": system},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                {"type": "text", "text": text},
            ]},
        ])


class LocalTeacher:
    """A local vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``), greedy decoding
    (``modules.generation.greedy_new_tokens``, as ``tuneloop compare generate``).

    Args:
        path: Model directory.
        max_new_tokens: Upper bound on reply tokens.
        device: ``cpu``, ``cuda``, ... (default: ``cuda`` when available).
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 512, device: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from trainer.local_generation import default_device

        self.device = device or default_device()
        self.processor = AutoProcessor.from_pretrained(str(path))
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens

    def complete(self, system: str, text: str, image: Path) -> str:
        from PIL import Image

        from modules.generation import greedy_new_tokens

        with Image.open(image) as im:
            picture = im.convert("RGB")
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": text}]},
        ]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt").to(self.device)
        new = greedy_new_tokens(self.model, inputs, self.max_new_tokens)
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]


@dataclass
class Draft:
    fields: dict | None  # question, answer, alert when accepted
    reason: str | None
    attempts: int
    last_reply: str = ""


def ask(teacher: Teacher, case: Case, kind: str, retries: int) -> Draft:
    """Ask for one record until the draft validates, at most ``1 + retries`` times."""
    base = teacher_prompt(case, kind)
    text, reason, reply = base, None, ""
    for attempt in range(1, retries + 2):
        try:
            reply = teacher.complete(SYSTEM_PROMPT, text, case.image_path)
            return Draft(parse_draft(reply, case.alert), None, attempt, reply)
        except InvalidResponse as e:  # InvalidDraft included
            reason = f"invalid draft: {e}"
            text = f"{base}\n\nYour previous reply was not usable: {e}. Reply with the JSON only."
        except RequestRejected as e:
            return Draft(None, f"request rejected: {e}", attempt, reply)
    return Draft(None, f"{reason} (after {retries + 1} attempts)", retries + 1, reply)


# ----- output and resuming -------------------------------------------------------------------------------------
def done_ids(path: Path, log: Callable[[str], None] = print) -> set[str]:
    """Ids in an output (or rejects) file; a last line cut off mid-write is removed first."""
    if not path.is_file():
        return set()
    removed = truncate_unfinished(path)
    if removed:
        log(f"{path}: removed an unfinished last line ({removed} bytes); it will be redone")
    return written_ids(path, "id", "missing: this file was not written by this script")


@dataclass
class Summary:
    mode: str
    cases: int = 0
    written: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPES})
    skipped_done: int = 0  # (case, type) records already in the output or the rejects file
    done_in_out: int = 0  # of skipped_done: in the output
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    overwritten: list[str] = field(default_factory=list)  # files --overwrite deleted
    rejected: int = 0
    retries: int = 0
    stopped: str | None = None
    out_path: str = ""
    rejects_path: str = ""

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    def resume_note(self) -> str | None:
        return resume_note({self.out_path: self.done_in_out, self.rejects_path: self.skipped_done - self.done_in_out})

    def format(self) -> str:
        per_type = ", ".join(f"{t} {n}" for t, n in self.written.items() if n)
        lines = [f"build_feedback_instructions ({self.mode}): {self.cases} feedback records"]
        if self.overwritten:
            lines.append(f"  --overwrite: deleted {', '.join(self.overwritten)} first")
        lines.append(f"  written: {self.total_written} records ({per_type or 'none'}) to {self.out_path}")
        note = self.resume_note()
        lines.append(f"  {note}" if note else f"  skipped (already in the output): {self.skipped_done}")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped ({reason}): {n}")
        if self.mode == "teacher":
            lines.append(f"  teacher: {self.retries} retries, {self.rejected} rejected"
                         + (f" (see {self.rejects_path})" if self.rejected else ""))
        if self.stopped:
            lines.append(f"  STOPPED: {self.stopped}")
            lines.append("  re-run the same command to continue where it stopped")
        return "\n".join(lines)


def relative_image(case: Case, out_path: Path) -> str:
    return Path(os.path.relpath(case.image_path, os.path.abspath(out_path.parent))).as_posix()


def build(feedback_path: str | Path, out_path: str | Path, types: tuple[str, ...] = TYPES, mode: str = "template",
          teacher: Teacher | None = None, review: str | None = None, retries: int = 3, progress: bool = False,
          log: Callable[[str], None] = print, overwrite: bool = False) -> Summary:
    """Append the QA records of every (case, type) not yet in ``out_path`` (``overwrite``: delete it and its
    rejects file first, once the feedback is known to be valid); return the run's summary."""
    feedback_path, out_path = Path(feedback_path), Path(out_path)
    if os.path.abspath(feedback_path) == os.path.abspath(out_path):
        raise ValueError("--out must differ from the feedback file")
    if mode == "teacher" and teacher is None:
        raise ValueError("teacher mode needs a teacher")
    cases = read_feedback(feedback_path)
    review = review or ("accepted" if mode == "template" else "pending")
    rejects_path = rejects_path_for(out_path)
    summary = Summary(mode=mode, cases=len(cases), out_path=str(out_path), rejects_path=str(rejects_path))
    if overwrite:
        summary.overwritten = [str(p) for p in start_afresh(out_path, rejects_path)]
    in_out = done_ids(out_path, log)
    done = in_out | (done_ids(rejects_path, log) if mode == "teacher" else set())

    tasks: list[tuple[Case, str]] = []
    for case in cases:
        for kind in types:
            if f"{case.id}-{kind}" in done:
                summary.skipped_done += 1
                summary.done_in_out += f"{case.id}-{kind}" in in_out
                continue
            reason = d_skip_reason(case) if kind == "D" else None
            if reason:
                summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
                continue
            tasks.append((case, kind))
    note = summary.resume_note()
    if note:
        log(note)

    from tqdm import tqdm

    with tqdm(total=len(tasks), desc=mode, unit="rec", disable=not progress, file=sys.stderr) as bar:
        for case, kind in tasks:
            rid = f"{case.id}-{kind}"
            if mode == "template":
                fields = {"question": question(case, kind), "answer": template_answer(case, kind),
                          "alert": case.alert}
            else:
                try:
                    draft = ask(teacher, case, kind, retries)
                except TeacherUnavailable as e:
                    summary.stopped = f"teacher unavailable: {e}"
                    break
                summary.retries += draft.attempts - 1
                if draft.fields is None:
                    write_jsonl(rejects_path, [{"id": rid, "source_id": case.id, "type": kind,
                                                "reason": draft.reason, "attempts": draft.attempts,
                                                "reply": draft.last_reply[:MAX_STORED_REPLY]}], append=True)
                    summary.rejected += 1
                    bar.update(1)
                    continue
                fields = draft.fields
            write_jsonl(out_path, [{"id": rid, "image": relative_image(case, out_path), "scenario": case.scenario,
                                    "type": kind, "question": fields["question"], "answer": fields["answer"],
                                    "alert": fields["alert"], "source_id": case.id, "review": review,
                                    "mode": mode}], append=True)
            summary.written[kind] += 1
            bar.update(1)
    return summary


# ----- review ------------------------------------------------------------------------------------------------------
def review_file(in_path: Path, out_path: Path | None = None, accept: list[str] = (), reject: list[str] = (),
                accept_all: bool = False, drop_rejected: bool = False) -> dict[str, int]:
    """Set ``review`` of the named records (``accept_all``: every pending one to accepted); write ``out_path``
    (default: in place). Returns the count of each review value written."""
    in_path = Path(in_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"instruction file not found: {in_path}")
    both = sorted(set(accept) & set(reject))
    if both:
        raise ValueError(f"ids both accepted and rejected: {', '.join(both)}")
    rows: list[dict] = []
    for lineno, obj in json_objects(in_path):
        location = f"{in_path}:{lineno}"
        if not isinstance(obj.get("id"), str):
            raise RecordError(location, "id", "missing")
        if obj.get("review") not in REVIEW_VALUES:
            raise RecordError(location, "review",
                              f"expected one of {', '.join(REVIEW_VALUES)}, got {obj.get('review')!r}")
        rows.append(obj)
    ids = {r["id"] for r in rows}
    unknown = [i for i in [*accept, *reject] if i not in ids]
    if unknown:
        raise ValueError(f"{in_path}: no record with id {', '.join(map(repr, unknown))}")
    for r in rows:
        if r["id"] in accept or (accept_all and r["review"] == "pending" and r["id"] not in reject):
            r["review"] = "accepted"
        elif r["id"] in reject:
            r["review"] = "rejected"
    if drop_rejected:
        rows = [r for r in rows if r["review"] != "rejected"]
    write_jsonl(out_path or in_path, rows)
    return {v: sum(r["review"] == v for r in rows) for v in REVIEW_VALUES}


# ----- command line ----------------------------------------------------------------------------------------------
def parse_types(text: str) -> tuple[str, ...]:
    wanted = {t.strip().upper() for t in text.split(",") if t.strip()}
    unknown = sorted(wanted - set(TYPES))
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of A,B,C,D, got {text!r}")
    return tuple(t for t in TYPES if t in wanted)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_feedback_instructions.py",
        description=(
            "Turn operator feedback on a PPE monitor's false positives / false negatives (JSONL: id, image, scenario, "
            "failure, feedback, model_output) into QA instruction records of types A (fact verification), B "
            "(comparison), C (counterfactual) and D (failure analysis), from templates or drafted by a "
            "vision-language teacher. Resumable: re-run the same command and it continues where it stopped (it "
            "says how many records it skipped); --overwrite builds the output anew. "
            "Review subcommand: 'build_feedback_instructions.py review --help'."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl "
            "--out data/samples/ppe/train_a.jsonl --types A --overwrite\n"
            "  python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl "
            "--out data/samples/ppe/train_ad.jsonl --types A,B,C,D --overwrite\n"
            "  python scripts/build_feedback_instructions.py feedback.jsonl --out drafts.jsonl --mode teacher \\\n"
            "      --teacher-url http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-VL-32B-Instruct\n"
            "  python scripts/build_feedback_instructions.py review --in drafts.jsonl --accept-all --reject ppe-0011-C"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("feedback", type=Path, help="feedback JSONL (image paths relative to its folder)")
    p.add_argument("--out", type=Path, required=True,
                   help="output JSONL of QA records (appended to; ids already in it, or in its rejects file in "
                        "teacher mode, are skipped and counted)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete --out and its rejects file first and build every record anew (the feedback is "
                        "checked before anything is deleted)")
    p.add_argument("--types", type=parse_types, default=TYPES,
                   help="comma-separated record types to build, e.g. A or A,B,C,D (default: A,B,C,D)")
    p.add_argument("--mode", choices=("template", "teacher"), default="template",
                   help="template: deterministic text from the feedback; teacher: drafted by a VLM (default: template)")
    p.add_argument("--review", choices=("pending", "accepted"), default=None,
                   help="review value of new records (default: accepted in template mode, pending in teacher mode)")
    # The teacher options repeat those of build_instructions.py on purpose: each script's --help is read from
    # its own parser, and the defaults and the local teacher differ (VLM here, causal LM there).
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--teacher-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    teacher.add_argument("--teacher-path", type=Path, help="local vision-language model directory")
    p.add_argument("--teacher-model", help="model name sent to --teacher-url (required with it)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key for --teacher-url; unset: no key sent "
                        "(default: OPENAI_API_KEY)")
    p.add_argument("--temperature", type=float, default=0.0, help="--teacher-url sampling temperature (default: 0)")
    p.add_argument("--max-tokens", type=int, default=768, help="teacher reply token limit (default: 768)")
    p.add_argument("--timeout", type=float, default=180.0, help="--teacher-url seconds per request (default: 180)")
    p.add_argument("--device", default=None, help="--teacher-path device (default: cuda when available)")
    p.add_argument("--retries", type=int, default=3,
                   help="extra attempts for a draft that fails validation before it is rejected (default: 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_review_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_feedback_instructions.py review",
        description="Set the review column of QA records: accept or reject by id, or accept every pending record.",
        epilog=(
            "examples:\n"
            "  python scripts/build_feedback_instructions.py review --in drafts.jsonl --accept ppe-0009-A ppe-0009-B\n"
            "  python scripts/build_feedback_instructions.py review --in drafts.jsonl --accept-all --reject ppe-0011-C "
            "--drop-rejected --out train.jsonl\n"
            "Records edited by hand: set their review to \"edited\" in the file; --accept-all leaves them as they are."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--in", dest="in_path", type=Path, required=True, help="QA records JSONL")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: --in, in place)")
    p.add_argument("--accept", nargs="+", action="extend", default=[], metavar="ID", help="ids to accept")
    p.add_argument("--reject", nargs="+", action="extend", default=[], metavar="ID", help="ids to reject")
    p.add_argument("--accept-all", action="store_true", help="accept every pending record (not the --reject ones)")
    p.add_argument("--drop-rejected", action="store_true", help="leave rejected records out of the output")
    return p


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def review_main(argv: list[str]) -> dict[str, int]:
    args = build_review_parser().parse_args(argv)
    try:
        counts = review_file(args.in_path, args.out, args.accept, args.reject, args.accept_all, args.drop_rejected)
    except (RecordError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    print(f"review: wrote {sum(counts.values())} records to {args.out or args.in_path} ("
          + ", ".join(f"{v} {n}" for v, n in counts.items()) + ")")
    return counts


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["review"]:
        return review_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    if os.path.abspath(args.out) == os.path.abspath(args.feedback):
        parser.error("--out must differ from the feedback file")
    teacher: Teacher | None = None
    if args.mode == "teacher":
        if args.teacher_url:
            if not args.teacher_model:
                parser.error("--teacher-model is required with --teacher-url")
            api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
            teacher = HttpTeacher(ChatClient(args.teacher_url, args.teacher_model, api_key=api_key,
                                             temperature=args.temperature, max_tokens=args.max_tokens,
                                             timeout=args.timeout))
        elif args.teacher_path:
            if not args.teacher_path.is_dir():
                parser.error(f"--teacher-path {args.teacher_path} is not a directory")
        else:
            parser.error("--mode teacher needs --teacher-url (with --teacher-model) or --teacher-path")
    elif args.teacher_url or args.teacher_path:
        parser.error("--teacher-url / --teacher-path need --mode teacher")
    try:
        cases_ok = read_feedback(args.feedback)  # bad input stops here, before a model is loaded
        del cases_ok
        if args.mode == "teacher" and teacher is None:
            teacher = LocalTeacher(args.teacher_path, max_new_tokens=args.max_tokens, device=args.device)
        summary = build(args.feedback, args.out, types=args.types, mode=args.mode, teacher=teacher,
                        review=args.review, retries=args.retries, progress=not args.no_progress,
                        overwrite=args.overwrite)
    except (RecordError, FileNotFoundError) as e:
        _fail(str(e))
    print(summary.format())
    if summary.stopped:
        raise SystemExit(2)
    return summary


if __name__ == "__main__":
    main()
