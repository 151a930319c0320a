"""``tuneloop cv``: K-fold cross-validation of a recipe.

One ``fit`` per fold (the DataModule's train+val files form the pool; folds are stratified for
single-label classification and by label set for multi-label), each fold's best checkpoint validated,
then a table of every validation metric per fold with mean ± std, written to
``runs/<experiment>/<version>/cv_summary.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

EPILOG = """example:
  tuneloop cv -c configs/encoder/waam-multilabel.yaml -c configs/debug.yaml --folds 5
Extra options are passed to every fold's fit, e.g. --trainer.max_epochs=3."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop cv",
        description="K-fold cross-validation: one fit per fold, then per-fold values and mean ± std of every "
        "validation metric (cv_summary.json / cv_summary.md in the run directory).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", action="append", required=True,
                        help="recipe and overlays, stacked in order (as for fit)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds K (>= 2; default 5)")
    parser.add_argument("--version", default=None,
                        help="run version: folds go to runs/<experiment>/<version>/fold-<k> (default: timestamp)")
    return parser


def summarize(fold_metrics: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric: the per-fold values, their mean and sample standard deviation (0 for one fold)."""
    keys = sorted({k for m in fold_metrics for k in m})
    out = {}
    for key in keys:
        values = [m.get(key) for m in fold_metrics]
        present = [v for v in values if v is not None and math.isfinite(v)]
        out[key] = {
            "folds": values,
            "mean": statistics.fmean(present) if present else None,
            "std": statistics.stdev(present) if len(present) > 1 else 0.0,
        }
    return out


def to_markdown(summary: dict[str, dict], k: int) -> str:
    header = "| metric | " + " | ".join(f"fold {i}" for i in range(k)) + " | mean ± std |"
    lines = [header, "|" + "---|" * (k + 2)]
    for key, s in summary.items():
        cells = ["" if v is None else f"{v:.4f}" for v in s["folds"]]
        mean = "" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def print_table(summary: dict[str, dict], k: int, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tuneloop cv: {k} folds", caption=f"written to {out_dir}/cv_summary.{{json,md}}")
    table.add_column("metric")
    for i in range(k):
        table.add_column(f"fold {i}", justify="right")
    table.add_column("mean ± std", justify="right")
    for key, s in summary.items():
        cells = ["" if v is None else f"{v:.4f}" for v in s["folds"]]
        mean = "" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
        table.add_row(key, *cells, mean)
    Console().print(table)


def run_cv(configs: list[str], folds: int, overrides: list[str], version: str | None = None) -> dict:
    """Run the K folds in this process; returns the summary (also written to disk)."""
    from trainer.cli import TuneloopCLI

    if folds < 2:
        raise SystemExit(f"tuneloop cv: --folds must be >= 2, got {folds}")
    version = version or time.strftime("cv-%Y%m%d-%H%M%S")
    base = ["fit", *[a for c in configs for a in ("-c", c)], *overrides]
    fold_metrics, out_dir = [], None
    for k in range(folds):
        print(f"=== tuneloop cv: fold {k + 1}/{folds} ===", flush=True)
        cli = TuneloopCLI(args=[*base, f"--data.init_args.num_folds={folds}", f"--data.init_args.fold={k}",
                                f"--run.version={version}/fold-{k}", "--run.test_after_fit=false"])
        trainer = cli.trainer
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
        fold_metrics.append({key: float(v) for key, v in results[0].items()
                             if key.startswith("val/") and "/baseline_" not in key})
        out_dir = Path(trainer.default_root_dir).parent
        spec, used_wandb = cli.config.fit.run, any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers)
        for logger in trainer.loggers:  # one W&B run per fold
            if type(logger).__name__ == "WandbLogger":
                logger.experiment.finish()
    summary = summarize(fold_metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cv_summary.json").write_text(json.dumps({"folds": folds, "metrics": summary}, indent=2) + "\n")
    (out_dir / "cv_summary.md").write_text(to_markdown(summary, folds))
    print_table(summary, folds, out_dir)
    if used_wandb:  # the summary as a versioned artifact (run.log_artifacts), in a W&B run of its own
        import os

        from trainer.loggers import wandb_offline
        from trainer.wandb_artifacts import log_cv_summary

        log_cv_summary(spec, out_dir, folds, summary, wandb_offline(dict(os.environ)))
    return summary


def main(argv: list[str]) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    run_cv(args.config, args.folds, overrides, args.version)
