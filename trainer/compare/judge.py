"""``tuneloop compare judge``: for every question, a judge (:mod:`trainer.judges`: an LLM over HTTP, ROUGE-L or
BERTScore) picks the answer of ``--a`` or ``--b`` closer to the reference (or "Nothing"), scores both 1-5 and
says why -> judgments JSONL, two lines per question."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from datamodules.records import write_jsonl
from trainer.compare.records import NOTHING, CompareError, load_answers, progress
from trainer.judges import DEFAULT_BERTSCORE_MODEL, Judge, JudgeError, load_judge_prompt


def make_judge(args: argparse.Namespace, api_key: str | None) -> Judge:
    """The judge backend of ``--judge`` with its options checked."""
    from trainer.judges import BertScoreJudge, HttpJudge, RougeJudge

    if args.retries < 0:
        raise CompareError(f"--retries must be >= 0, got {args.retries}")
    if args.timeout <= 0:
        raise CompareError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.backoff < 0:
        raise CompareError(f"--backoff must be >= 0 seconds, got {args.backoff}")
    if args.judge == "http":
        if not args.url:
            raise CompareError("--judge http needs --url (e.g. http://localhost:8000/v1)")
        if not args.judge_model:
            raise CompareError("--judge http needs --judge-model (the model name the endpoint serves)")
        prompt = load_judge_prompt(args.prompt, args.system)
        return HttpJudge(args.url, args.judge_model, api_key, args.retries, args.timeout, args.backoff, prompt)
    for flag, value in (("--url", args.url), ("--api-key-env", args.api_key_env), ("--prompt", args.prompt),
                        ("--system", args.system)):
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
    """Judge every question of ``--answers`` (``api_key``: for ``--judge http``), write ``--out``, print the
    mean scores and closer counts; :class:`JudgeError` after the run when some question could not be judged.
    Returns the rows written."""
    a, b = args.a, args.b
    if NOTHING in (a, b):
        raise CompareError(f"{NOTHING!r} is the verdict for no closer model, not a model name")
    judge = make_judge(args, api_key)
    by_id = load_answers(args.answers, a, b)
    out = Path(args.out)
    write_jsonl(out, [])  # a fresh file, then one question's two lines at a time

    from rich.console import Console
    from rich.table import Table

    rows: list[dict] = []
    failures: list[tuple[str | int, str]] = []
    closer_counts = {a: 0, b: 0, NOTHING: 0}
    start = time.perf_counter()
    # Appended question by question: an interrupted run keeps what was judged.
    with progress() as bar:
        task = bar.add_task(f"judging ({judge.name})", total=len(by_id))
        for qid, models in by_id.items():
            ans_a, ans_b = models[a], models[b]
            try:
                verdict = judge.judge(ans_a.question, ans_a.reference, ans_a.answer, ans_b.answer)
            except JudgeError as e:
                failures.append((qid, str(e)))
                bar.console.print(f"question {qid!r}: {e}", style="red", markup=False, highlight=False)
                bar.advance(task)
                continue
            closer = {"A": a, "B": b}.get(verdict.closer, NOTHING)
            closer_counts[closer] += 1
            pair = [{"id": qid, "model": model, "score": score, "reason": verdict.reason, "closer": closer}
                    for model, score in ((a, verdict.score_a), (b, verdict.score_b))]
            write_jsonl(out, pair, append=True)
            rows += pair
            bar.advance(task)
    seconds = time.perf_counter() - start

    judged = len(by_id) - len(failures)
    console = Console()
    prompt = ""
    if args.judge == "http":
        prompt = f", prompt: {args.prompt or 'built-in'}" + (f", system: {args.system}" if args.system else "")
    console.print(f"tuneloop compare judge ({judge.name}{prompt}): {judged} of {len(by_id)} questions judged, "
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
