"""Entry point of ``tuneloop`` (= ``python -m trainer``).

Lightning subcommands (fit, validate, test, predict) go to the Lightning CLI; tuneloop's own commands
(cv, ...) to their modules. Heavy libraries load only inside the branch that needs them, so the top-level
``--help`` is instant.
"""

from __future__ import annotations

import os
import sys

LIGHTNING_COMMANDS = {
    "fit": "Train a model (stack configs with -c; add --print_config to see the resolved config).",
    "validate": "Evaluate on the validation split.",
    "test": "Evaluate on the test split; writes metrics.json, predictions.jsonl and plots to the run dir.",
    "predict": "Predict the data's predict file (default: test file); writes predictions.predict.jsonl.",
}
TUNELOOP_COMMANDS = {
    "cv": "K-fold cross-validation of a recipe: one fit per fold, then a per-fold/mean ± std table.",
    "merge": "Merge a LoRA adapter into its base model (merge_and_unload) and save safetensors.",
    "compare": "Base vs tuned: generate answers, judge them 1-5, summarize with paired statistics; alerts: "
               "alert-decision metrics of prediction files side by side.",
    "plan": "Parameters (exactly, on the meta device) and per-GPU memory of a recipe for every strategy.",
}
# tuneloop's own commands: module with a main(argv) each.
_COMMAND_MODULES = {"cv": "trainer.cv", "merge": "trainer.merge", "compare": "trainer.compare", "plan": "trainer.plan"}

USAGE = """usage: tuneloop <command> [options]      (same as: python -m trainer <command> ...)

One scaling-aware fine-tuning loop on PyTorch Lightning.

commands:
{commands}

options for every command: --quiet (warnings and errors only), -v/--verbose (debug messages).
Run `tuneloop <command> --help` for the options of a command. Example:
  tuneloop fit -c configs/encoder/waam-multilabel.yaml -c configs/debug.yaml
"""


def main(argv: list[str] | None = None) -> None:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
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
        main(["--help"])
        raise SystemExit(2)
    from trainer.cli import run_cli

    # Lightning's CLI reads sys.argv itself; pass args only when called from Python.
    if from_sys_argv:
        sys.argv = [sys.argv[0], *argv]
    run_cli(argv if not from_sys_argv else None)


if __name__ == "__main__":
    main()
