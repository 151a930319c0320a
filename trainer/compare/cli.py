"""``tuneloop compare`` command line: the parser of the four steps and :func:`main`, which runs one and turns
a wrong input into a one-line error. Heavy libraries load inside the steps, so ``--help`` is instant."""

from __future__ import annotations

import argparse

from datamodules.records import RecordError
from trainer.compare.alerts import ALERT_ROWS, ALERTS_DESCRIPTION, ALERTS_EPILOG, run_alerts
from trainer.compare.generate import DEFAULT_SYSTEM, run_generate
from trainer.compare.judge import read_api_key, run_judge
from trainer.compare.records import CompareError
from trainer.compare.runs import RUNS_DESCRIPTION, RUNS_EPILOG, run_runs
from trainer.compare.scores import SHAPES_HELP
from trainer.compare.stats import STAT_KEYS, run_summarize
from trainer.judges import DEFAULT_BERTSCORE_MODEL, JudgeError
from trainer.local_generation import LocalModelError

EPILOG = """examples:
  tuneloop compare generate --questions data/samples/compare/questions.jsonl \\
      --model base=models/komt-llama2-13b --model tuned=models/komt-llama2-13b+runs/rnd/adapter \\
      --out runs/compare/answers.jsonl --device cuda --dtype bfloat16
  tuneloop compare judge --answers runs/compare/answers.jsonl --a base --b tuned \\
      --url https://api.openai.com/v1 --judge-model gpt-4o --api-key-env OPENAI_API_KEY \\
      --out runs/compare/judgments.jsonl
  tuneloop compare summarize --judgments data/samples/compare/judgments.jsonl --a base --b tuned \
      --questions data/samples/compare/questions.jsonl --out runs/compare/tables
  tuneloop compare alerts --predictions runs/ppe-base/predictions.jsonl runs/ppe-tuned/predictions.jsonl \\
      --names base tuned --out runs/compare/ppe
  tuneloop compare runs runs/intent-exaone-lora/base runs/intent-exaone-lora/tuned --out runs/compare/intent

Run `tuneloop compare <step> --help` for the options of a step."""


class _WrapOneLiners(argparse.HelpFormatter):
    """Wraps a one-line description, keeps a text with line breaks (a layout such as SHAPES_HELP) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop compare",
        description="Compare a base model with its fine-tuned version on questions with reference answers: "
        "generate answers, judge them against the references, summarize the two score columns (paired t-test, "
        "F-test). Or compare models' alert decisions on the same test cases (alerts), or the metrics of finished "
        "runs side by side (runs).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="{generate,judge,summarize,alerts,runs}")

    gen = steps.add_parser(
        "generate", help="every model answers every question (greedy) -> answers JSONL",
        description="Every --model answers every question with greedy decoding; writes one JSONL line per "
        "question and model: {id, model, question, reference, answer}.",
    )
    gen.add_argument("--questions", required=True, metavar="FILE",
                     help="JSONL with id, question (or instruction + optional input) and reference")
    gen.add_argument("--model", action="append", required=True, metavar="NAME=BASE[+ADAPTER]",
                     help="a model to ask (repeat the option): a local causal LM directory (or package:<module>/"
                     "<dir>, or a Hub model hf://owner/name[@revision] from the HF cache or the Hub), optionally + "
                     "a PEFT adapter directory, e.g. tuned=models/base+runs/x/adapter")
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
                       help="http: extra requests after a connection error, timeout, HTTP 429 or 5xx, and extra "
                       "attempts after an invalid reply (default 3)")
    judge.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="http: seconds to wait for one response (default 60)")
    judge.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                       help="http: wait SECONDS before the first retry after a connection error, timeout, HTTP 429 "
                       "or 5xx, doubled before each next one; a Retry-After header on 429/503 is honoured instead "
                       "(every wait at most 60 s) (default 1)")
    judge.add_argument("--prompt", default=None, metavar="FILE",
                       help="http: the judge's user message, a UTF-8 text file (e.g. your own 1-5 score anchors) "
                       "with the placeholders {question}, {reference}, {answer_a} and {answer_b}, each at least once "
                       "and no other {word} ({{word}} sends a literal {word}; other braces, such as a JSON example, "
                       "are sent as written). It must ask for the reply JSON {\"closer\": \"A\"|\"B\"|\"Nothing\", "
                       "\"score_a\": 1-5, \"score_b\": 1-5, \"reason\": ...}. Checked before any request (default: "
                       "the built-in prompt, JUDGE_PROMPT in trainer/judges.py)")
    judge.add_argument("--system", default=None, metavar="FILE",
                       help="http: the judge's system message, a UTF-8 text file sent as is (default: the built-in "
                       "JUDGE_SYSTEM, an impartial judge replying with one JSON object)")

    summ = steps.add_parser(
        "summarize", help="paired t-test and F-test of the two score columns (spreadsheet toolpak style); --out: as "
        "Markdown, CSV, JSON, with a per-question table",
        description="Pair the scores of --a and --b by question id and report, like a spreadsheet's analysis "
        "toolpak: mean, variance, standard deviation, standard error, Pearson correlation, the paired two-sample "
        "t-test for means (t, df, one/two-tailed p and critical t) and the F-test for variances (F = var_a / "
        "var_b, one-tailed p and critical F as Excel computes them), plus how often each model was closer. "
        "Undefined figures (a constant column, equal differences) are shown as #DIV/0! (null in --json). --out DIR "
        "writes the same tables (Tables 5-6) and the judgments per question (Table 7) as files.",
        epilog=SHAPES_HELP, formatter_class=_WrapOneLiners,
    )
    # --a/--b as in judge, with this step's own help: every step lists its options in its own --help.
    summ.add_argument("--judgments", required=True, metavar="FILE",
                      help="the scores: the judgments JSONL written by judge, or a CSV/XLSX/JSONL of either shape "
                      "below (closer optional)")
    summ.add_argument("--a", required=True, metavar="NAME",
                      help="first model (variable 1): its 'model' value, or its score column in a wide file")
    summ.add_argument("--b", required=True, metavar="NAME",
                      help="second model (variable 2): its 'model' value, or its score column in a wide file")
    summ.add_argument("--json", action="store_true",
                      help="print one JSON object (keys: " + ", ".join(STAT_KEYS) + ", closer: counts, or null "
                      "without a closer column) instead of tables")
    summ.add_argument("--alpha", type=float, default=0.05,
                      help="significance level of the critical values (default 0.05)")
    summ.add_argument("--out", default=None, metavar="DIR",
                      help="also write DIR/statistics.{md,csv,json} (the tables above: descriptive statistics, "
                      "t-test, F-test, closer counts; CSV in full precision) and DIR/per_question.{md,csv} (id, "
                      "question, both scores, closer, reason)")
    summ.add_argument("--questions", default=None, metavar="FILE",
                      help="questions JSONL (as generate reads it) or the answers JSONL of generate: the question "
                      "text of each id for per_question.* (default: a wide file's question column; without either "
                      "that column is left out)")

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

    runs = steps.add_parser(
        "runs", help="metrics of two or more runs (metrics.json, cv_summary.json) side by side, with differences",
        description=RUNS_DESCRIPTION, epilog=RUNS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("runs", nargs="+", metavar="RUN",
                      help="run directories (runs/<experiment>/<version>, with metrics.json) or cv directories "
                      "(with cv_summary.json); the first is the baseline A of every difference")
    runs.add_argument("--names", nargs="+", default=None, metavar="NAME",
                      help="one name per run, in order (default: the run directory's name, <experiment>/<version> "
                      "where those repeat)")
    runs.add_argument("--stage", default=None, metavar="PREFIX",
                      help="show every metric under PREFIX/: test (default), val, train, or all")
    runs.add_argument("--metrics", default=None, metavar="LIST",
                      help="show these metrics, in this order, comma-separated (e.g. test/accuracy,test/f1_macro); "
                      "instead of --stage")
    runs.add_argument("--out", default=None, metavar="DIR",
                      help="also write DIR/runs.md (the table), DIR/runs.csv (full precision) and DIR/runs.json")
    runs.add_argument("--json", action="store_true",
                      help="print one JSON object (baseline, runs, metrics: [{metric, rate, values, std, diff, "
                      "rel_pct}]) instead of the table")
    return parser


def main(argv: list[str]) -> None:
    """``tuneloop compare generate|judge|summarize|alerts|runs ...``; a wrong input stops with a one-line error."""
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
        elif args.step == "runs":
            run_runs(args)
        else:
            run_alerts(args)
    except (CompareError, RecordError, JudgeError, LocalModelError, FileNotFoundError) as e:
        raise SystemExit(f"tuneloop compare {args.step}: {e}") from None
