"""Entry point of ``tuneloop`` (= ``python -m trainer``).

Lightning subcommands (fit, validate, test, predict) go to the Lightning CLI; tuneloop's own commands
(cv, ...) to their modules. Heavy libraries load only inside the branch that needs them, so the top-level
``--help`` is instant. A user's mistake (see ``trainer/errors.py``) ends every command the same way: one
block on stderr, exit code 2, the traceback only with ``--debug`` or ``TUNELOOP_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

LIGHTNING_COMMANDS = {
    "fit": "Train a model (stack configs with -c; add --print_config to see the resolved config).",
    "validate": "Evaluate on the validation split.",
    "test": "Evaluate on the test split: metrics.json, predictions.jsonl and plots in the run dir (a re-test: evaluations/<name>/).",
    "predict": "Predict the data's predict file (default: test file); writes predictions.predict.jsonl.",
}
TUNELOOP_COMMANDS = {
    "cv": "K-fold cross-validation of a recipe: one fit per fold, then a per-fold/mean ± std table.",
    "merge": "Merge a LoRA adapter into its base model (merge_and_unload) and save safetensors.",
    "generate": "Answer prompts (a file, or stdin one per line) with a run's adapter on its base or a merged model, "
                "streamed to the terminal; greedy as the run decodes; --out writes JSONL.",
    "compare": "Base vs tuned: generate answers, judge them 1-5, summarize with paired statistics; alerts: "
               "alert-decision metrics of prediction files side by side; runs: metrics of finished runs side by "
               "side, with differences.",
    "plan": "Parameters (exactly, on the meta device) and per-GPU memory of a recipe for every strategy.",
}
# tuneloop's own commands: module with a main(argv) each.
_COMMAND_MODULES = {"cv": "trainer.cv", "merge": "trainer.merge", "generate": "trainer.generate",
                    "compare": "trainer.compare", "plan": "trainer.plan"}

USAGE = """usage: tuneloop <command> [options]      (same as: python -m trainer <command> ...)

One scaling-aware fine-tuning loop on PyTorch Lightning.

commands:
{commands}

options for every command: --quiet (warnings and errors only), -v/--verbose (debug messages, and the
  libraries' own output: Lightning's tips, info lines and model table, datasets' progress bars, transformers'
  load reports, W&B's banner), --debug (a mistake in the data or config prints its traceback too; also
  TUNELOOP_DEBUG=1).
Run `tuneloop <command> --help` for the options of a command. Example:
  tuneloop fit -c configs/encoder/waam-multilabel.yaml -c configs/debug.yaml
"""


def main(argv: list[str] | None = None) -> None:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    from trainer.errors import global_rank, pop_debug, report

    debug, argv = pop_debug(argv, dict(os.environ))
    command = next((a for a in argv if not a.startswith("-")), "")  # flags such as --quiet may come first
    try:
        _run(argv, from_sys_argv)
    except BaseException as error:  # noqa: BLE001 - user errors become one block; everything else re-raises
        code = report(error, command, debug, global_rank(dict(os.environ)))
        if code is None:
            raise
        raise SystemExit(code) from None


def _run(argv: list[str], from_sys_argv: bool) -> None:
    from trainer.logs import pop_verbosity, setup_logging

    verbosity, argv = pop_verbosity(argv)
    setup_logging(verbosity)
    # Settings read at the edge: quiet fork warnings from tokenizers, never reach for the hub in W&B.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:<9} {text}" for name, text in {**LIGHTNING_COMMANDS, **TUNELOOP_COMMANDS}.items()]
        print(USAGE.format(commands="\n".join(lines)))
        return
    command = argv[0]
    if command in _COMMAND_MODULES:
        import importlib

        importlib.import_module(_COMMAND_MODULES[command]).main(argv[1:])
        return
    if command not in LIGHTNING_COMMANDS:
        print(f"tuneloop: unknown command {command!r}\n", file=sys.stderr)
        _run(["--help"], from_sys_argv)
        raise SystemExit(2)
    from trainer.cli import run_cli

    # Lightning's CLI reads sys.argv itself; pass args only when called from Python.
    if from_sys_argv:
        sys.argv = [sys.argv[0], *argv]
    run_cli(argv if not from_sys_argv else None)


if __name__ == "__main__":
    main()
