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

One file per step: :mod:`~trainer.compare.records` (the files above, read and checked),
:mod:`~trainer.compare.generate`, :mod:`~trainer.compare.judge`, :mod:`~trainer.compare.stats` (summarize),
:mod:`~trainer.compare.alerts`, and :mod:`~trainer.compare.cli` (the parser and :func:`main`).
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
    load_judgments,
    load_questions,
)
from trainer.compare.stats import STAT_KEYS, paired_statistics, print_summary, run_summarize

__all__ = [
    "ALERT_ROWS", "DEFAULT_SYSTEM", "EPILOG", "NOTHING", "STAT_KEYS", "Answer", "CompareError", "ModelSpec",
    "Question", "alert_model_names", "alerts_markdown", "alpaca_prompt", "build_parser", "common_alert_ids",
    "load_alert_predictions", "load_answers", "load_judgments", "load_questions", "main", "make_judge",
    "paired_statistics", "print_summary", "read_api_key", "run_alerts", "run_generate", "run_judge",
    "run_summarize",
]
