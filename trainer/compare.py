"""``tuneloop compare``: a base model against its fine-tuned version on questions with reference answers, the
evaluation of MISSION §2. Three steps, each reading the JSONL the previous one wrote:

- ``generate``  questions -> answers: every model answers every question (greedy decoding).
- ``judge``     answers -> judgments: a judge (an LLM over HTTP, ROUGE-L or BERTScore) picks the answer
  closer to the reference (or "Nothing"), scores both 1-5 and says why.
- ``summarize`` judgments -> statistics: the two score columns compared like a spreadsheet's analysis
  toolpak (descriptive statistics, paired two-sample t-test for means, F-test for variances).

And one step of its own, the evaluation of MISSION §3:

- ``alerts``    predictions of several models on the same test cases -> accuracy, precision, recall, F1,
  false positives/negatives and unparseable outputs of their alert decisions, side by side (definitions and
  parsing rules in :mod:`modules.alerts`).

File formats (one JSON object per line):

- questions: ``id`` (text or integer, unique), ``question`` (or ``instruction`` + optional ``input``),
  ``reference``.
- answers: ``id, model, question, reference, answer`` (one line per question and model).
- judgments: ``id, model, score`` (1-5), ``reason``, ``closer`` (a model name or ``"Nothing"``, the same on
  both lines of a question).
- predictions (``alerts``, one file per model, as ``tuneloop test``/``predict`` write them): ``id``,
  ``target_alert`` (or ``alert``) true/false, and ``pred_alert`` true/false/null (null = unparseable) or,
  without that key, ``generation`` (or ``answer``) to parse with :func:`modules.alerts.parse_alert`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.records import RecordError, RecordFile, json_objects, load_record_file, require_fields
from trainer.judges import DEFAULT_BERTSCORE_MODEL, Judge, JudgeError

#: The system instruction of MISSION §2's Alpaca prompt (``--system`` replaces it).
DEFAULT_SYSTEM = (
    "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
)
NOTHING = "Nothing"  # the "closer" value when neither answer is closer; no model may be called that
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")

EPILOG = """examples:
  tuneloop compare generate --questions data/samples/compare/questions.jsonl \\
      --model base=models/komt-llama2-13b --model tuned=models/komt-llama2-13b+runs/rnd/adapter \\
      --out runs/compare/answers.jsonl --device cuda --dtype bfloat16
  tuneloop compare judge --answers runs/compare/answers.jsonl --a base --b tuned \\
      --url https://api.openai.com/v1 --judge-model gpt-4o --api-key-env OPENAI_API_KEY \\
      --out runs/compare/judgments.jsonl
  tuneloop compare summarize --judgments data/samples/compare/judgments.jsonl --a base --b tuned
  tuneloop compare alerts --predictions runs/ppe-base/predictions.jsonl runs/ppe-tuned/predictions.jsonl \\
      --names base tuned --out runs/compare/ppe

Run `tuneloop compare <step> --help` for the options of a step."""


ALERTS_DESCRIPTION = """\
Score the alert decisions (positive = alert raised) of one or more models on the same test cases, one
--predictions file per model, side by side: n, accuracy, precision, recall, F1, false positives, false
negatives, unparseable.

A line's prediction is 'pred_alert' (true, false, null = unparseable) or, without that key, the decision
parsed from 'generation' (or 'answer'); its gold decision is 'target_alert' (or 'alert'). Unparseable
outputs count as wrong in accuracy, never as predicted alerts, and as missed alerts in recall; false
positives/negatives count parsed outputs only."""
ALERTS_EPILOG = """example:
  tuneloop compare alerts --predictions runs/ppe-base/predictions.jsonl runs/ppe-a/predictions.jsonl \\
      runs/ppe-ad/predictions.jsonl --names base tuned_a tuned_ad --out runs/compare/ppe"""


class CompareError(ValueError):
    """A wrong option or an inconsistent input file; the message names what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------


# The Alpaca prompt of MISSION §2: the same text the SFT recipes train with, so base and tuned models are
# asked exactly as training asked them.
from datamodules.templates import alpaca_prompt  # noqa: E402


@dataclass(frozen=True)
class Question:
    """One question record: ``question`` is set, or ``instruction`` (with ``input``, possibly empty)."""

    id: str | int
    reference: str
    question: str | None = None
    instruction: str | None = None
    input: str = ""

    @property
    def text(self) -> str:
        """The question as written to the answers file."""
        if self.question is not None:
            return self.question
        return f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction

    def prompt(self, template: str, system: str) -> str:
        """The model input: ``alpaca`` puts ``system`` as the instruction and the question as the input (an
        ``instruction`` record keeps its own instruction and input); ``none`` is :attr:`text` as is."""
        if template == "none":
            return self.text
        if self.question is not None:
            return alpaca_prompt(system, self.question)
        return alpaca_prompt(self.instruction, self.input)


# ---------------------------------------------------------------------------------------------------------
# Reading and checking the three files
# ---------------------------------------------------------------------------------------------------------


def _jsonl(path: str) -> RecordFile:
    import datasets

    if Path(path).suffix.lower() != ".jsonl":
        raise CompareError(f"{path}: expected a .jsonl file")
    datasets.disable_progress_bars()  # a few dozen lines: no "Generating train split" bar
    return load_record_file(path)


def _text(rf: RecordFile, i: int, field: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise rf.error(i, field, f"expected text, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise rf.error(i, field, "empty text")
    return value


def _record_id(rf: RecordFile, i: int, value: Any) -> str | int:
    if value is None:
        raise rf.error(i, "id", "missing or null")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise rf.error(i, "id", f"expected text or an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value.strip():
        raise rf.error(i, "id", "empty text")
    return value


def load_questions(path: str) -> list[Question]:
    """Read and check a questions JSONL; errors name ``file:line: field``."""
    rf = _jsonl(path)
    columns = set(rf.dataset.column_names)
    if "question" not in columns and "instruction" not in columns:
        raise rf.error(0, "question", f"missing: give 'question' or 'instruction' (the file has {sorted(columns)})")
    require_fields(rf, ["id", "reference"])
    seen: dict[str | int, int] = {}
    questions = []
    for i, row in enumerate(rf.dataset):
        qid = _record_id(rf, i, row["id"])
        if qid in seen:
            raise rf.error(i, "id", f"duplicate id {qid!r} (first at {rf.locate(seen[qid])})")
        seen[qid] = i
        reference = _text(rf, i, "reference", row["reference"])
        question, instruction = row.get("question"), row.get("instruction")
        if question is not None and instruction is not None:
            raise rf.error(i, "question", "give either 'question' or 'instruction' (+ 'input'), not both")
        if question is None and instruction is None:
            raise rf.error(i, "question", "missing: give 'question' or 'instruction' (+ optional 'input')")
        if question is not None:
            if row.get("input") is not None:
                raise rf.error(i, "input", "'input' goes with 'instruction', not with 'question'")
            questions.append(Question(qid, reference, question=_text(rf, i, "question", question)))
        else:
            input_ = row.get("input")
            input_ = "" if input_ is None else _text(rf, i, "input", input_, allow_empty=True)
            questions.append(Question(qid, reference, instruction=_text(rf, i, "instruction", instruction),
                                      input=input_))
    return questions


def _check_models(path: str, found: list[str], a: str, b: str) -> None:
    if a == b:
        raise CompareError(f"--a and --b name the same model {a!r}; compare two different models")
    for flag, name in (("--a", a), ("--b", b)):
        if name not in found:
            raise CompareError(f"{path}: no records of model {name!r} ({flag}); models in the file: {sorted(found)}")


def _pairs_complete(path: str, by_id: dict, a: str, b: str) -> None:
    """Every question id must have a record of both models; the error lists those that do not."""
    lacking = [f"{qid!r} lacks {m!r}" for qid, models in by_id.items() for m in (a, b) if m not in models]
    if lacking:
        shown = ", ".join(lacking[:10]) + (f", ... ({len(lacking) - 10} more)" if len(lacking) > 10 else "")
        raise CompareError(f"{path}: {len(lacking)} question(s) lack a record of one of the two models: {shown}")


@dataclass(frozen=True)
class Answer:
    question: str
    reference: str
    answer: str


def load_answers(path: str, a: str, b: str) -> dict[str | int, dict[str, Answer]]:
    """Read the answers JSONL of ``generate``: ``{question id: {model: Answer}}`` in file order, checked to
    hold an answer of ``a`` and of ``b`` for every question."""
    rf = _jsonl(path)
    require_fields(rf, ["id", "model", "question", "reference", "answer"])
    by_id: dict[str | int, dict[str, Answer]] = {}
    line_of: dict[tuple, int] = {}
    for i, row in enumerate(rf.dataset):
        qid, model = _record_id(rf, i, row["id"]), _text(rf, i, "model", row["model"])
        if (qid, model) in line_of:
            raise rf.error(i, "model", f"second answer of model {model!r} to id {qid!r} "
                                       f"(first at {rf.locate(line_of[qid, model])})")
        line_of[qid, model] = i
        by_id.setdefault(qid, {})[model] = Answer(
            _text(rf, i, "question", row["question"]), _text(rf, i, "reference", row["reference"]),
            _text(rf, i, "answer", row["answer"], allow_empty=True),
        )
    _check_models(path, sorted({m for models in by_id.values() for m in models}), a, b)
    _pairs_complete(path, by_id, a, b)
    return by_id


def load_judgments(path: str, a: str, b: str) -> tuple[list[float], list[float], dict[str, int]]:
    """Read a judgments JSONL: the scores of ``a`` and ``b`` paired by question id (in file order) and the
    counts of the closer model (``a``, ``b``, ``"Nothing"``)."""
    from datamodules.records import check_number

    rf = _jsonl(path)
    require_fields(rf, ["id", "model", "score", "closer"])
    scores = check_number(rf, "score")
    by_id: dict[str | int, dict[str, float]] = {}
    closer_of: dict[str | int, tuple[str, int]] = {}
    line_of: dict[tuple, int] = {}
    for i, row in enumerate(rf.dataset):
        qid, model = _record_id(rf, i, row["id"]), _text(rf, i, "model", row["model"])
        if (qid, model) in line_of:
            raise rf.error(i, "model", f"second judgment of model {model!r} on id {qid!r} "
                                       f"(first at {rf.locate(line_of[qid, model])})")
        line_of[qid, model] = i
        by_id.setdefault(qid, {})[model] = scores[i]
        closer = _text(rf, i, "closer", row["closer"])
        if model in (a, b):
            if closer not in (a, b, NOTHING):
                raise rf.error(i, "closer", f"expected {a!r}, {b!r} or {NOTHING!r}, got {closer!r}")
            first = closer_of.setdefault(qid, (closer, i))
            if first[0] != closer:
                raise rf.error(i, "closer", f"{closer!r} disagrees with {first[0]!r} at {rf.locate(first[1])} "
                                            f"(both lines of a question carry the same verdict)")
    _check_models(path, sorted({m for models in by_id.values() for m in models}), a, b)
    _pairs_complete(path, by_id, a, b)
    counts = {a: 0, b: 0, NOTHING: 0}
    for closer, _ in closer_of.values():
        counts[closer] += 1
    return [m[a] for m in by_id.values()], [m[b] for m in by_id.values()], counts


# ---------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model NAME=BASE[+ADAPTER]``: a local causal LM directory and an optional PEFT adapter."""

    name: str
    base: str
    adapter: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse and check (paths exist) ``NAME=BASE`` or ``NAME=BASE+ADAPTER``; BASE may be ``package:...``."""
        from modules.backbone import resolve_path

        name, eq, paths = text.partition("=")
        if not eq or not paths:
            raise CompareError(f"--model {text!r}: expected NAME=BASE or NAME=BASE+ADAPTER")
        if not _MODEL_NAME.match(name) or name == NOTHING:
            raise CompareError(f"--model {text!r}: name {name!r} must be letters, digits, '_', '.', '-' "
                               f"(and not {NOTHING!r})")
        base, plus, adapter = paths.partition("+")
        if plus and not adapter:
            raise CompareError(f"--model {text!r}: nothing after '+' (expected BASE+ADAPTER)")
        try:
            base, adapter = resolve_path(base), resolve_path(adapter) if adapter else adapter
        except FileNotFoundError as e:
            raise CompareError(f"--model {text!r}: {e}") from None
        if not (Path(base) / "config.json").is_file():
            what = "has no config.json" if Path(base).is_dir() else "does not exist"
            raise CompareError(f"--model {text!r}: base model directory {base} {what} "
                               "(expected a Hugging Face causal LM directory)")
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            what = "has no adapter_config.json" if Path(adapter).is_dir() else "does not exist"
            raise CompareError(f"--model {text!r}: adapter directory {adapter} {what} (expected a PEFT adapter "
                               "saved with save_pretrained)")
        return cls(name, base, adapter or None)

    @property
    def tokenizer_dir(self) -> str:
        """The adapter directory if it holds tokenizer files (an adapter trained with added tokens ships its
        tokenizer), else the base model directory."""
        if self.adapter and any((Path(self.adapter) / f).is_file() for f in _TOKENIZER_FILES):
            return self.adapter
        return self.base

    def __str__(self) -> str:
        return self.base + (f" + {self.adapter}" if self.adapter else "")


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise CompareError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return choice


def load_causal_lm(spec: ModelSpec, device: str, dtype: str):
    """The model (with its adapter, eval mode, on ``device``) and its tokenizer set for left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_dir)
    # Batched generation appends new tokens on the right, so prompts must end at the same position.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CompareError(f"tokenizer {spec.tokenizer_dir} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec.base, dtype={"float32": torch.float32,
                                                                   "bfloat16": torch.bfloat16}[dtype])
    if spec.adapter:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft 0.21 calls a property transformers 5 deprecates; not ours to fix
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = PeftModel.from_pretrained(model, spec.adapter)
    return model.eval().to(device), tokenizer


def encode_prompts(tokenizer, prompts: list[str]):
    """Left-padded ``input_ids`` and ``attention_mask``: (batch, longest prompt).

    The tokenizer's special tokens are added (e.g. BOS), except a trailing EOS that some post-processors
    append: it would tell the model that the text is over before the answer starts.
    """
    eos = tokenizer.eos_token_id
    ids = []
    for prompt in prompts:
        tokens = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if eos is not None and len(tokens) > 1 and tokens[-1] == eos:
            tokens = tokens[:-1]
        ids.append(tokens)
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    """Greedy answers to ``prompts`` (the prompt stripped, special tokens dropped, whitespace trimmed)."""
    import torch
    from transformers import GenerationConfig

    batch = encode_prompts(tokenizer, prompts).to(device)
    # A fresh config: greedy whatever sampling defaults the checkpoint's generation_config.json carries.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None
        else tokenizer.eos_token_id,
    )
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config)  # (batch, prompt + new tokens)
    new_tokens = out[:, batch["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_generate(args: argparse.Namespace) -> list[dict]:
    if args.max_new_tokens < 1:
        raise CompareError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise CompareError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.system is not None and args.template != "alpaca":
        raise CompareError("--system is the instruction of the Alpaca template; it needs --template alpaca")
    specs = [ModelSpec.parse(m) for m in args.model]  # all checked before any model is loaded
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CompareError(f"--model names must differ, got {names}")
    questions = load_questions(args.questions)
    prompts = [q.prompt(args.template, args.system or DEFAULT_SYSTEM) for q in questions]
    device, out = _device(args.device), Path(args.out)

    from rich.console import Console
    from rich.table import Table

    answers: dict[str, list[str]] = {}
    timing: dict[str, tuple[float, float]] = {}  # model -> (load seconds, generation seconds)
    rows: list[dict] = []
    for spec in specs:
        start = time.perf_counter()
        model, tokenizer = load_causal_lm(spec, device, args.dtype)
        loaded = time.perf_counter()
        answers[spec.name] = []
        with _progress() as progress:
            task = progress.add_task(f"{spec.name}: answering", total=len(questions))
            for k in range(0, len(prompts), args.batch_size):
                chunk = prompts[k:k + args.batch_size]
                answers[spec.name] += generate_batch(model, tokenizer, chunk, args.max_new_tokens, device)
                progress.advance(task, len(chunk))
        timing[spec.name] = (loaded - start, time.perf_counter() - loaded)
        del model  # one model in memory at a time
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
        # Rewritten after every model, ordered by question then model: a crash keeps the finished models.
        rows = [{"id": q.id, "model": name, "question": q.text, "reference": q.reference, "answer": texts[i]}
                for i, q in enumerate(questions) for name, texts in answers.items()]
        _write_jsonl(out, rows)

    console = Console()
    console.print(f"tuneloop compare generate: {len(questions)} questions x {len(specs)} models -> {out}")
    table = Table()
    for col in ("model", "weights", "answers", "empty", "mean chars", "load s", "s / answer"):
        table.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for spec in specs:
        texts, (load_s, gen_s) = answers[spec.name], timing[spec.name]
        table.add_row(spec.name, str(spec), str(len(texts)), str(sum(not t for t in texts)),
                      f"{sum(map(len, texts)) / len(texts):.0f}", f"{load_s:.1f}", f"{gen_s / len(texts):.3f}")
    console.print(table)
    return rows


# ---------------------------------------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------------------------------------


def make_judge(args: argparse.Namespace, api_key: str | None) -> Judge:
    """The judge backend of ``--judge`` with its options checked."""
    from trainer.judges import BertScoreJudge, HttpJudge, RougeJudge

    if args.retries < 0:
        raise CompareError(f"--retries must be >= 0, got {args.retries}")
    if args.timeout <= 0:
        raise CompareError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.judge == "http":
        if not args.url:
            raise CompareError("--judge http needs --url (e.g. http://localhost:8000/v1)")
        if not args.judge_model:
            raise CompareError("--judge http needs --judge-model (the model name the endpoint serves)")
        return HttpJudge(args.url, args.judge_model, api_key, args.retries, args.timeout, args.backoff)
    for flag, value in (("--url", args.url), ("--api-key-env", args.api_key_env)):
        if value:
            raise CompareError(f"{flag} is an option of --judge http, not of --judge {args.judge}")
    if args.judge == "rouge":
        if args.judge_model:
            raise CompareError("--judge-model is not an option of --judge rouge")
        return RougeJudge()
    from modules.backbone import resolve_path

    try:
        path = resolve_path(args.judge_model or DEFAULT_BERTSCORE_MODEL)
    except FileNotFoundError as e:
        raise CompareError(f"--judge bertscore: {e}") from None
    if not Path(path).is_dir():
        raise CompareError(f"--judge bertscore: encoder directory {path} does not exist")
    return BertScoreJudge(path)


def read_api_key(var: str | None, environ: dict[str, str]) -> str | None:
    """The API key from the environment variable ``var`` (``None`` without ``--api-key-env``)."""
    if var is None:
        return None
    key = environ.get(var, "").strip()
    if not key:
        raise CompareError(f"--api-key-env {var}: the environment variable {var} is not set or empty")
    return key


def run_judge(args: argparse.Namespace, api_key: str | None) -> list[dict]:
    a, b = args.a, args.b
    if NOTHING in (a, b):
        raise CompareError(f"{NOTHING!r} is the verdict for no closer model, not a model name")
    judge = make_judge(args, api_key)
    by_id = load_answers(args.answers, a, b)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.table import Table

    rows: list[dict] = []
    failures: list[tuple[str | int, str]] = []
    closer_counts = {a: 0, b: 0, NOTHING: 0}
    start = time.perf_counter()
    # Written line by line: an interrupted run keeps what was judged.
    with out.open("w", encoding="utf-8") as f, _progress() as progress:
        task = progress.add_task(f"judging ({judge.name})", total=len(by_id))
        for qid, models in by_id.items():
            ans_a, ans_b = models[a], models[b]
            try:
                verdict = judge.judge(ans_a.question, ans_a.reference, ans_a.answer, ans_b.answer)
            except JudgeError as e:
                failures.append((qid, str(e)))
                progress.console.print(f"question {qid!r}: {e}", style="red", markup=False, highlight=False)
                progress.advance(task)
                continue
            closer = {"A": a, "B": b}.get(verdict.closer, NOTHING)
            closer_counts[closer] += 1
            for model, score in ((a, verdict.score_a), (b, verdict.score_b)):
                row = {"id": qid, "model": model, "score": score, "reason": verdict.reason, "closer": closer}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
            f.flush()
            progress.advance(task)
    seconds = time.perf_counter() - start

    judged = len(by_id) - len(failures)
    console = Console()
    console.print(f"tuneloop compare judge ({judge.name}): {judged} of {len(by_id)} questions judged, "
                  f"{seconds / max(len(by_id), 1):.2f} s per question -> {out}")
    table = Table()
    for col in ("model", "mean score", "closer"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model in (a, b):
        scores = [r["score"] for r in rows if r["model"] == model]
        table.add_row(model, f"{sum(scores) / len(scores):.2f}" if scores else "-", str(closer_counts[model]))
    table.add_row(NOTHING, "", str(closer_counts[NOTHING]))
    table.add_row("failures", "", str(len(failures)))
    console.print(table)
    if failures:
        ids = ", ".join(repr(qid) for qid, _ in failures)
        raise JudgeError(f"{len(failures)} of {len(by_id)} question(s) could not be judged ({ids}); "
                         f"question {failures[0][0]!r}: {failures[0][1]}")
    return rows


# ---------------------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------------------

STAT_KEYS = ("n", "mean_a", "mean_b", "var_a", "var_b", "sd_a", "sd_b", "sem_a", "sem_b", "pearson_r", "t_stat",
             "df", "p_one_tail", "p_two_tail", "t_crit_one_tail", "t_crit_two_tail", "f_stat", "p_f_one_tail",
             "f_crit_one_tail")


def paired_statistics(a: list[float], b: list[float], alpha: float = 0.05) -> dict:
    """Compare two paired score columns as a spreadsheet's analysis toolpak does (Excel's "t-Test: Paired Two
    Sample for Means" and "F-Test Two-Sample for Variances"), with scipy.

    Returns a dict with the keys :data:`STAT_KEYS`:

    - ``n``; ``mean_*``; ``var_*`` sample variance (ddof 1); ``sd_*``; ``sem_*`` = sd / sqrt(n);
      ``pearson_r`` between the columns.
    - Paired t-test of mean(a - b) = 0: ``t_stat``, ``df`` = n - 1, ``p_one_tail`` (the tail beyond |t|),
      ``p_two_tail`` (twice that), ``t_crit_one_tail`` = t quantile 1 - alpha, ``t_crit_two_tail`` = t
      quantile 1 - alpha/2.
    - F-test: ``f_stat`` = var_a / var_b with df n - 1 and n - 1. As Excel: if F > 1, ``p_f_one_tail`` =
      P(F_dist > F) and ``f_crit_one_tail`` = the 1 - alpha quantile; otherwise (F <= 1) ``p_f_one_tail`` =
      P(F_dist < F) and ``f_crit_one_tail`` = the alpha quantile.

    Degenerate inputs: fewer than 2 pairs (or columns of different length) raise ``ValueError``. Where
    Excel shows #DIV/0! the value is NaN: ``pearson_r`` when either column is constant; ``t_stat`` and its
    p-values when every difference a - b is the same; ``f_stat`` and its p-value and critical value when
    var_b is 0 (var_a = 0 < var_b gives F = 0, p = 0). Critical values depend only on n and alpha.
    """
    import numpy as np
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired columns must have the same length, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError(f"the paired statistics need at least 2 pairs, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite numbers")
    nan = float("nan")
    df = n - 1
    var_a, var_b = float(x.var(ddof=1)), float(y.var(ddof=1))
    sd_a, sd_b = math.sqrt(var_a), math.sqrt(var_b)
    pearson_r = float(stats.pearsonr(x, y).statistic) if var_a > 0 and var_b > 0 else nan

    diff = x - y
    if float(diff.var(ddof=1)) > 0:
        t_stat = float(stats.ttest_rel(x, y).statistic)
        p_one = float(stats.t.sf(abs(t_stat), df))
        p_two = 2 * p_one
    else:
        t_stat = p_one = p_two = nan

    if var_b > 0:
        f_stat = var_a / var_b
        if f_stat > 1:
            p_f, f_crit = float(stats.f.sf(f_stat, df, df)), float(stats.f.ppf(1 - alpha, df, df))
        else:
            p_f, f_crit = float(stats.f.cdf(f_stat, df, df)), float(stats.f.ppf(alpha, df, df))
    else:
        f_stat = p_f = f_crit = nan

    return {
        "n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "var_a": var_a, "var_b": var_b,
        "sd_a": sd_a, "sd_b": sd_b, "sem_a": sd_a / math.sqrt(n), "sem_b": sd_b / math.sqrt(n),
        "pearson_r": pearson_r, "t_stat": t_stat, "df": df, "p_one_tail": p_one, "p_two_tail": p_two,
        "t_crit_one_tail": float(stats.t.ppf(1 - alpha, df)),
        "t_crit_two_tail": float(stats.t.ppf(1 - alpha / 2, df)),
        "f_stat": f_stat, "p_f_one_tail": p_f, "f_crit_one_tail": f_crit,
    }


def _json_value(value: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "#DIV/0!" if not math.isfinite(value) else f"{value:.6g}"


def print_summary(s: dict, closer: dict[str, int], a: str, b: str, alpha: float, path: str) -> None:
    """The figures laid out like Excel's toolpak output, the two models side by side."""
    from rich.console import Console
    from rich.table import Table

    def table(title: str, rows: list[tuple[str, Any, Any]]) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column("")
        t.add_column(a, justify="right")
        t.add_column(b, justify="right")
        for label, va, vb in rows:
            t.add_row(label, "" if va is None else _fmt(va), "" if vb is None else _fmt(vb))
        return t

    console = Console()
    console.print(f"tuneloop compare summarize: {path}, {a} vs {b}, {s['n']} paired questions, alpha {alpha}")
    console.print(table("Descriptive statistics", [
        ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
        ("Standard Deviation", s["sd_a"], s["sd_b"]), ("Standard Error", s["sem_a"], s["sem_b"]),
        ("Observations", s["n"], s["n"]),
    ]))
    console.print(table("t-Test: Paired Two Sample for Means", [
        ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
        ("Observations", s["n"], s["n"]), ("Pearson Correlation", s["pearson_r"], None),
        ("Hypothesized Mean Difference", 0, None), ("df", s["df"], None), ("t Stat", s["t_stat"], None),
        ("P(T<=t) one-tail", s["p_one_tail"], None), ("t Critical one-tail", s["t_crit_one_tail"], None),
        ("P(T<=t) two-tail", s["p_two_tail"], None), ("t Critical two-tail", s["t_crit_two_tail"], None),
    ]))
    console.print(table("F-Test Two-Sample for Variances", [
        ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
        ("Observations", s["n"], s["n"]), ("df", s["df"], s["df"]), ("F", s["f_stat"], None),
        ("P(F<=f) one-tail", s["p_f_one_tail"], None), ("F Critical one-tail", s["f_crit_one_tail"], None),
    ]))
    closer_table = Table(title="Closer to the reference (questions)", title_justify="left")
    for name in closer:
        closer_table.add_column(name, justify="right")
    closer_table.add_row(*(str(v) for v in closer.values()))
    console.print(closer_table)


def run_summarize(args: argparse.Namespace) -> dict:
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha must be between 0 and 1, got {args.alpha}")
    score_a, score_b, closer = load_judgments(args.judgments, args.a, args.b)
    try:
        stats = paired_statistics(score_a, score_b, args.alpha)
    except ValueError as e:
        raise CompareError(f"{args.judgments}: {e}") from None
    if args.json:
        print(json.dumps({**{k: _json_value(v) for k, v in stats.items()}, "closer": closer}, ensure_ascii=False))
    else:
        print_summary(stats, closer, args.a, args.b, args.alpha, args.judgments)
    return {**stats, "closer": closer}


# ---------------------------------------------------------------------------------------------------------
# alerts
# ---------------------------------------------------------------------------------------------------------

#: Rows of the alerts table: (key of modules.alerts.alert_summary, label).
ALERT_ROWS = (("n", "n"), ("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
              ("f1", "F1"), ("false_positives", "false positives"), ("false_negatives", "false negatives"),
              ("unparseable", "unparseable"))
_GENERIC_STEMS = {"predictions", "prediction", "preds", "generations", "answers", "test"}


def _prediction_rows(path: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line. Read as plain JSON (not through ``datasets``): a
    missing ``pred_alert`` (parse the text) and ``"pred_alert": null`` (unparseable) must stay apart."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl":
        raise CompareError(f"{path}: expected a .jsonl file")
    if not p.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    rows = list(json_objects(path))
    if not rows:
        raise RecordError(path, None, "file has no records")
    return rows


def load_alert_predictions(path: str) -> dict[str | int, tuple[bool, bool | None]]:
    """Read a predictions JSONL (as ``tuneloop test``/``predict`` write it): ``{id: (gold, pred)}`` in file
    order, ``pred`` ``None`` when unparseable.

    Per line: ``id`` (text or integer, unique); the gold decision ``target_alert`` (or ``alert`` on a line
    without a ``target_alert`` key), ``true``/``false``; the prediction ``pred_alert`` (``true``,
    ``false`` or ``null`` = unparseable) or, when the line has no ``pred_alert`` key, the decision parsed with
    :func:`modules.alerts.parse_alert` from ``generation`` (or ``answer``). Errors name ``file:line: field``.
    """
    from modules.alerts import parse_alert

    cases: dict[str | int, tuple[bool, bool | None]] = {}
    line_of: dict[str | int, int] = {}
    for lineno, row in _prediction_rows(path):
        where = f"{path}:{lineno}"
        qid = row.get("id")
        if qid is None:
            raise RecordError(where, "id", "missing or null")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or (isinstance(qid, str) and not qid.strip()):
            raise RecordError(where, "id", f"expected non-empty text or an integer, got {qid!r}")
        if qid in line_of:
            raise RecordError(where, "id", f"duplicate id {qid!r} (first at {path}:{line_of[qid]})")
        line_of[qid] = lineno
        gold_field = "alert" if "target_alert" not in row and "alert" in row else "target_alert"
        gold = row.get(gold_field)
        if gold is None:
            raise RecordError(where, gold_field, "missing or null: every line needs the gold decision, true or false "
                                                 "('target_alert', or 'alert' in files without 'target_alert')")
        if not isinstance(gold, bool):
            raise RecordError(where, gold_field, f"expected true or false, got {type(gold).__name__} {gold!r}")
        if "pred_alert" in row:
            pred = row["pred_alert"]
            if pred is not None and not isinstance(pred, bool):
                raise RecordError(where, "pred_alert", f"expected true, false or null (unparseable), got "
                                                       f"{type(pred).__name__} {pred!r}")
        else:
            text_field = "generation" if "generation" in row else "answer" if "answer" in row else None
            if text_field is None:
                raise RecordError(where, "pred_alert", "missing: give 'pred_alert' (true/false/null) or the "
                                                       "generated text as 'generation' (or 'answer') to parse")
            text = row[text_field]
            if not isinstance(text, str):
                raise RecordError(where, text_field, f"expected text, got {type(text).__name__} {text!r}")
            pred = parse_alert(text)
        cases[qid] = (gold, pred)
    return cases


def _default_name(path: str) -> str:
    """A file's stem, or its directory's name for a generic stem (runs/ppe-tuned/predictions.jsonl)."""
    p = Path(path).resolve()
    return p.parent.name if p.stem.lower() in _GENERIC_STEMS and p.parent.name else p.stem


def alert_model_names(paths: list[str], names: list[str] | None) -> list[str]:
    """``--names`` checked against ``--predictions``, or the default names; unique and well formed."""
    if names is not None and len(names) != len(paths):
        raise CompareError(f"--names gives {len(names)} name(s) for {len(paths)} --predictions file(s); "
                           "give one name per file, in the same order")
    flag = "--names" if names is not None else "default name (from the file name; set --names)"
    names = names if names is not None else [_default_name(p) for p in paths]
    for name, path in zip(names, paths):
        if not _MODEL_NAME.match(name):
            raise CompareError(f"{flag} {name!r} of {path}: a name must be letters, digits, '_', '.', '-'")
    seen: dict[str, str] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise CompareError(f"{flag}: {name!r} names both {seen[name]} and {path}; names must be unique")
        seen[name] = path
    return names


def common_alert_ids(cases: dict[str, dict], paths: dict[str, str], intersect: bool) -> list[str | int]:
    """The ids every model has, in the first file's order. Without ``intersect`` all files must cover the
    same ids (else the error names how many differ and examples)."""
    names = list(cases)
    first = names[0]
    common = [qid for qid in cases[first] if all(qid in cases[m] for m in names[1:])]
    if not intersect:
        for m in names[1:]:
            only_first = [q for q in cases[first] if q not in cases[m]]
            only_m = [q for q in cases[m] if q not in cases[first]]
            if only_first or only_m:
                parts = [f"{len(ids)} id(s) only in {paths[who]} (e.g. {ids[0]!r})"
                         for who, ids in ((first, only_first), (m, only_m)) if ids]
                raise CompareError(f"{paths[first]} and {paths[m]} cover different ids: {'; '.join(parts)}. "
                                   "A side-by-side comparison needs the same cases; pass --intersect to compare on "
                                   "the ids common to all files")
    if not common:
        raise CompareError("the prediction files have no id in common")
    return common


def _alert_cell(key: str, value: int | float) -> str:
    return str(value) if key in ("n", "false_positives", "false_negatives", "unparseable") else f"{value:.4f}"


def alerts_markdown(results: dict[str, dict]) -> str:
    """The side-by-side table as Markdown: one row per figure, one column per model."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key, label in ALERT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_alert_cell(key, results[m][key]) for m in names) + " |")
    return ("\n".join(lines) + "\n\nPositive class: alert raised. Unparseable outputs count as wrong in accuracy, "
            "never as predicted alerts, and as missed alerts in recall; false positives/negatives count parsed "
            "outputs only.\n")


def run_alerts(args: argparse.Namespace) -> dict:
    """Alert metrics of every predictions file on the same cases; prints the table (or JSON), writes
    ``alerts.json`` and ``alerts.md`` under ``--out``. Returns the JSON object."""
    names = alert_model_names(args.predictions, args.names)  # before loading torch: option errors come fast
    from modules.alerts import alert_summary

    paths = dict(zip(names, args.predictions))
    cases = {name: load_alert_predictions(path) for name, path in paths.items()}
    ids = common_alert_ids(cases, paths, args.intersect)
    first = names[0]
    for name in names[1:]:
        disagree = [qid for qid in ids if cases[name][qid][0] != cases[first][qid][0]]
        if disagree:
            raise CompareError(f"{paths[first]} and {paths[name]} disagree on the gold decision of {len(disagree)} "
                               f"id(s) (e.g. {disagree[0]!r}); the files must come from the same test set")
    results = {name: alert_summary([cases[name][qid][0] for qid in ids], [cases[name][qid][1] for qid in ids])
               for name in names}
    report = {
        "cases": len(ids),
        "dropped": {name: len(cases[name]) - len(ids) for name in names} if args.intersect else None,
        "models": {name: {"file": paths[name], **results[name]} for name in names},
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "alerts.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (out / "alerts.md").write_text(alerts_markdown(results), encoding="utf-8")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return report
    from rich.console import Console
    from rich.table import Table

    console = Console()
    dropped = ""
    if args.intersect and any(report["dropped"].values()):
        dropped = " (--intersect dropped " + ", ".join(f"{k} from {n}" for n, k in report["dropped"].items()) + ")"
    console.print(f"tuneloop compare alerts: {len(ids)} cases x {len(names)} models{dropped}; positive = alert")
    table = Table(title="Alert decisions", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for key, label in ALERT_ROWS:
        table.add_row(label, *(_alert_cell(key, results[m][key]) for m in names))
    console.print(table)
    if args.out:
        console.print(f"-> {Path(args.out) / 'alerts.json'}, {Path(args.out) / 'alerts.md'}")
    return report


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop compare",
        description="Compare a base model with its fine-tuned version on questions with reference answers: "
        "generate answers, judge them against the references, summarize the two score columns (paired t-test, "
        "F-test). Or compare models' alert decisions on the same test cases (alerts).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="{generate,judge,summarize,alerts}")

    gen = steps.add_parser(
        "generate", help="every model answers every question (greedy) -> answers JSONL",
        description="Every --model answers every question with greedy decoding; writes one JSONL line per "
        "question and model: {id, model, question, reference, answer}.",
    )
    gen.add_argument("--questions", required=True, metavar="FILE",
                     help="JSONL with id, question (or instruction + optional input) and reference")
    gen.add_argument("--model", action="append", required=True, metavar="NAME=BASE[+ADAPTER]",
                     help="a model to ask (repeat the option): a local causal LM directory (or package:<module>/"
                     "<dir>), optionally + a PEFT adapter directory, e.g. tuned=models/base+runs/x/adapter")
    gen.add_argument("--out", required=True, metavar="FILE", help="answers JSONL to write")
    gen.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                     help="most tokens generated per answer (default 256)")
    gen.add_argument("--template", choices=("alpaca", "none"), default="alpaca",
                     help="alpaca (default): the Alpaca prompt of the fine-tuning recipe, --system as the "
                     "instruction and the question as ### Input ('instruction' records keep their own instruction "
                     "and input); none: the question as is")
    gen.add_argument("--system", default=None, metavar="TEXT",
                     help=f"instruction of the Alpaca prompt for 'question' records (default: {DEFAULT_SYSTEM!r})")
    gen.add_argument("--batch-size", type=int, default=4, metavar="N",
                     help="prompts generated together, left-padded (default 4)")
    gen.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                     help="where the models run (default auto: cuda when available)")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="weight dtype (default float32; bfloat16 for large models on GPU)")

    judge = steps.add_parser(
        "judge", help="judge the answers of two models against the references -> judgments JSONL",
        description="For every question, a judge picks the answer (of --a or --b) closer to the reference or "
        "'Nothing', scores both 1-5 and gives a reason; writes two JSONL lines per question: {id, model, score, "
        "reason, closer}. Judges: http (an LLM behind an OpenAI-compatible /chat/completions endpoint), rouge "
        "(ROUGE-L F1, offline), bertscore (BERTScore F1 with the packaged all-MiniLM-L6-v2, offline); the "
        "offline judges score similarities [0,.2) 1, [.2,.4) 2, [.4,.6) 3, [.6,.8) 4, [.8,1] 5 and call a "
        "difference of at most 0.02 'Nothing'.",
    )
    judge.add_argument("--answers", required=True, metavar="FILE", help="answers JSONL written by generate")
    judge.add_argument("--a", required=True, metavar="NAME", help="model shown to the judge as answer A")
    judge.add_argument("--b", required=True, metavar="NAME", help="model shown to the judge as answer B")
    judge.add_argument("--out", required=True, metavar="FILE", help="judgments JSONL to write")
    judge.add_argument("--judge", choices=("http", "rouge", "bertscore"), default="http",
                       help="judge backend (default http)")
    judge.add_argument("--url", default=None,
                       help="http: base URL (http://host:8000/v1) or the full .../chat/completions endpoint")
    judge.add_argument("--judge-model", default=None, metavar="NAME",
                       help="http: model name sent to the endpoint; bertscore: encoder directory or "
                       f"package:<module>/<dir> (default {DEFAULT_BERTSCORE_MODEL})")
    judge.add_argument("--api-key-env", default=None, metavar="VAR",
                       help="http: environment variable holding the API key, sent as 'Authorization: Bearer' "
                       "(e.g. OPENAI_API_KEY); none sent without it")
    judge.add_argument("--retries", type=int, default=3, metavar="N",
                       help="http: extra attempts after an invalid reply or an HTTP/connection error (default 3)")
    judge.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="http: seconds to wait for one response (default 60)")
    judge.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                       help="http: wait SECONDS x k before retry k after an HTTP/connection error (default 1)")

    summ = steps.add_parser(
        "summarize", help="paired t-test and F-test of the two score columns (spreadsheet toolpak style)",
        description="Pair the scores of --a and --b by question id and report, like a spreadsheet's analysis "
        "toolpak: mean, variance, standard deviation, standard error, Pearson correlation, the paired two-sample "
        "t-test for means (t, df, one/two-tailed p and critical t) and the F-test for variances (F = var_a / "
        "var_b, one-tailed p and critical F as Excel computes them), plus how often each model was closer. "
        "Undefined figures (a constant column, equal differences) are shown as #DIV/0! (null in --json).",
    )
    summ.add_argument("--judgments", required=True, metavar="FILE", help="judgments JSONL written by judge")
    summ.add_argument("--a", required=True, metavar="NAME", help="first model (variable 1)")
    summ.add_argument("--b", required=True, metavar="NAME", help="second model (variable 2)")
    summ.add_argument("--json", action="store_true",
                      help="print one JSON object (keys: " + ", ".join(STAT_KEYS) + ", closer) instead of tables")
    summ.add_argument("--alpha", type=float, default=0.05,
                      help="significance level of the critical values (default 0.05)")

    alerts = steps.add_parser(
        "alerts", help="accuracy, precision, recall, F1, false positives of alert decisions, models side by side",
        description=ALERTS_DESCRIPTION, epilog=ALERTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    alerts.add_argument("--predictions", nargs="+", required=True, metavar="FILE",
                        help="predictions JSONL per model: id, target_alert (or alert) and pred_alert (or "
                        "generation/answer to parse)")
    alerts.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="one name per --predictions file, in order (default: the file's stem, or its directory's "
                        "name for predictions.jsonl); unique")
    alerts.add_argument("--out", default=None, metavar="DIR",
                        help="also write DIR/alerts.json and DIR/alerts.md (the same figures)")
    alerts.add_argument("--intersect", action="store_true",
                        help="compare on the ids common to all files (default: files with different ids are an error)")
    alerts.add_argument("--json", action="store_true",
                        help="print one JSON object (cases, dropped, models: {name: {file, " + ", ".join(
                            k for k, _ in ALERT_ROWS) + "}}) instead of the table")
    return parser


def main(argv: list[str]) -> None:
    """``tuneloop compare generate|judge|summarize|alerts ...``; a wrong input stops with a one-line error."""
    import os

    args = build_parser().parse_args(argv)
    try:
        if args.step == "generate":
            run_generate(args)
        elif args.step == "judge":
            # The key is read here, at the edge, and passed in.
            api_key = read_api_key(args.api_key_env, dict(os.environ)) if args.judge == "http" else None
            run_judge(args, api_key)
        elif args.step == "summarize":
            run_summarize(args)
        else:
            run_alerts(args)
    except (CompareError, RecordError, JudgeError, FileNotFoundError) as e:
        raise SystemExit(f"tuneloop compare {args.step}: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
