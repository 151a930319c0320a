"""``tuneloop compare``: a base model against its fine-tuned version on questions with reference answers, the
evaluation of MISSION §2. Three steps, each reading the JSONL the previous one wrote:

- ``generate``  questions -> answers: every model answers every question (greedy decoding).
- ``judge``     answers -> judgments: a judge (an LLM over HTTP, ROUGE-L or BERTScore) picks the answer
  closer to the reference (or "Nothing"), scores both 1-5 and says why.
- ``summarize`` judgments -> statistics: the two score columns compared like a spreadsheet's analysis
  toolpak (descriptive statistics, paired two-sample t-test for means, F-test for variances).

``summarize --out DIR`` also writes the figures and the per-question judgments as Markdown, CSV and JSON
(:mod:`~trainer.compare.tables`). And two steps of their own:

- ``alerts``    predictions of several models on the same test cases -> accuracy, precision, recall, F1,
  false positives/negatives and unparseable outputs of their alert decisions, side by side (MISSION §3;
  definitions and parsing rules in :mod:`modules.alerts`).
- ``runs``      the ``metrics.json`` (or ``cv_summary.json``) of two or more runs -> their metrics side by side
  with each run's difference from the first, e.g. base vs tuned intent F1 (MISSION §1).

File formats (one JSON object per line):

- questions: ``id`` (text or integer, unique), ``question`` (or ``instruction`` + optional ``input``),
  ``reference``.
- answers: ``id, model, question, reference, answer`` (one line per question and model).
- judgments: ``id, model, score`` (1-5), ``reason``, ``closer`` (a model name or ``"Nothing"``, the same on
  both lines of a question). ``summarize`` also reads them without ``closer``, as CSV or ``.xlsx``, and in the
  wide shape of a spreadsheet (one row per question, a score column per model): :mod:`~trainer.compare.scores`.
- predictions (``alerts``, one file per model, as ``tuneloop test``/``predict`` write them): ``id``,
  ``target_alert`` (or ``alert``) true/false, and ``pred_alert`` true/false/null (null = unparseable) or,
  without that key, ``generation`` (or ``answer``) to parse with :func:`modules.alerts.parse_alert`.

One file per step: :mod:`~trainer.compare.records` (the files above, read and checked),
:mod:`~trainer.compare.generate`, :mod:`~trainer.compare.judge`, :mod:`~trainer.compare.scores` (the score files
summarize reads), :mod:`~trainer.compare.stats` (summarize),
:mod:`~trainer.compare.tables` (summarize's files, Markdown/CSV writers), :mod:`~trainer.compare.alerts`,
:mod:`~trainer.compare.runs`, and :mod:`~trainer.compare.cli` (the parser and :func:`main`).
"""

from trainer.compare.alerts import (
    ALERT_ROWS,
    alert_model_names,
    alerts_markdown,
    common_alert_ids,
    load_alert_predictions,
    run_alerts,
)
from trainer.compare.cli import EPILOG, build_parser, main
from trainer.compare.generate import DEFAULT_SYSTEM, ModelSpec, run_generate
from trainer.compare.judge import make_judge, read_api_key, run_judge
from trainer.compare.records import (
    NOTHING,
    Answer,
    CompareError,
    Question,
    alpaca_prompt,
    load_answers,
    load_question_texts,
    load_questions,
)
from trainer.compare.scores import SHAPES_HELP, JudgedQuestion, ScoreFile, load_scores
from trainer.compare.runs import compare_runs, is_rate, load_run, run_runs
from trainer.compare.stats import STAT_KEYS, paired_statistics, print_summary, run_summarize, toolpak_sections
from trainer.compare.tables import write_summary

__all__ = [
    "ALERT_ROWS", "DEFAULT_SYSTEM", "EPILOG", "NOTHING", "SHAPES_HELP", "STAT_KEYS", "Answer", "CompareError",
    "JudgedQuestion", "ModelSpec", "Question", "ScoreFile", "alert_model_names", "alerts_markdown", "alpaca_prompt",
    "build_parser", "common_alert_ids", "compare_runs", "is_rate", "load_alert_predictions", "load_answers",
    "load_question_texts", "load_questions", "load_run", "load_scores", "main", "make_judge", "paired_statistics",
    "print_summary", "read_api_key", "run_alerts", "run_generate", "run_judge", "run_runs", "run_summarize",
    "toolpak_sections", "write_summary",
]
