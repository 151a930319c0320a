#!/usr/bin/env python
"""Where ``tuneloop fit`` spends its time before the first optimizer step: a phase timeline, wall and CPU seconds.

    python scripts/bench_startup.py                       # the bench's SFT job (scripts/bench.py --prepare first)
    python scripts/bench_startup.py -c configs/sft/komt-llama2-13b-lora.yaml -c configs/debug.yaml
    python scripts/bench_startup.py --cprofile /tmp/startup.prof   # + cProfile of the whole start-up

Runs the real CLI (``trainer.__main__.main``) in this process for one optimizer step, with timers wrapped around
the steps the start-up goes through: importing the CLI, parsing the configs, building the module, data and
Trainer, the DataModule's ``setup``, ``configure_model``, ``configure_optimizers``, the model summary, the
sanity validation, the first batch and the first optimizer step. CPU seconds (``time.process_time``) beside the
wall ones, because on a shared machine the wall clock mostly measures the neighbours. The phases are nested
(``fit`` contains ``setup`` ...), so their times do not add up.
"""

from __future__ import annotations

import time

T0 = time.time()
C0 = time.process_time()

import argparse  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH_SFT = ["configs/sft/komt-llama2-13b-lora.yaml", "configs/debug.yaml", "configs/bench/sft.yaml"]
EVENTS: list[tuple[str, float, float, float, float]] = []  # (phase, wall start, wall end, cpu start, cpu end)


def timed(owner, name: str, label: str) -> None:
    """Wrap ``owner.name`` so each call is recorded as the phase ``label``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        w, c = time.time(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            EVENTS.append((label, w, time.time(), c, time.process_time()))

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Timers on the start-up's steps (classes patched in place; this process runs one fit and ends)."""
    w, c = time.time(), time.process_time()
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.cli import LightningCLI

    import trainer.cli as cli
    from datamodules.base import TuneloopDataModule
    from modules.base import TuneloopModule

    EVENTS.append(("import trainer.cli (lightning, jsonargparse, tuneloop)", w, time.time(), c, time.process_time()))
    timed(LightningCLI, "setup_parser", "build the parser (class signatures)")
    timed(LightningCLI, "parse_arguments", "parse configs (jsonargparse)")
    timed(cli.TuneloopCLI, "before_instantiate_classes", "run dir, logger, strategy, callbacks")
    timed(cli.TuneloopCLI, "instantiate_classes", "build module, data, Trainer")
    timed(pl.Trainer, "fit", "Trainer.fit (to the end of step 1)")
    timed(pl.Trainer, "_run_sanity_check", "sanity validation")
    timed(ModelSummary, "on_fit_start", "model summary")
    timed(cli.RunConfigSaver, "setup", "save config.yaml (+ log hyperparameters)")
    for cls in {type(None)} | set(_subclasses(TuneloopDataModule)):
        if "setup" in vars(cls):
            timed(cls, "setup", f"{cls.__name__}.setup (load, validate, tokenize)")
    for cls in _subclasses(TuneloopModule):
        if "configure_model" in vars(cls):
            timed(cls, "configure_model", f"{cls.__name__}.configure_model (weights, adapters)")
        if "__init__" in vars(cls):
            timed(cls, "__init__", f"{cls.__name__}.__init__ (tokenizer)")
    timed(TuneloopModule, "configure_optimizers", "configure_optimizers")
    time_callback_hooks()


START_HOOKS = ("setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_sanity_check_start")


def time_callback_hooks(min_seconds: float = 0.01) -> None:
    """Each callback's start-up hooks (``START_HOOKS``) as a phase of its own when it takes ``min_seconds`` or more."""
    from lightning.pytorch.trainer import call

    original = call._call_callback_hooks

    def hooks(trainer, hook_name, *args, **kwargs):
        if hook_name not in START_HOOKS or kwargs.get("monitoring_callbacks") is not None:
            return original(trainer, hook_name, *args, **kwargs)
        pl_module = trainer.lightning_module
        previous = pl_module._current_fx_name if pl_module else None
        if pl_module:
            pl_module._current_fx_name = hook_name
        for callback in trainer.callbacks:
            w, c = time.time(), time.process_time()
            getattr(callback, hook_name)(trainer, pl_module, *args, **kwargs)
            if time.time() - w >= min_seconds:
                EVENTS.append((f"{type(callback).__name__}.{hook_name}", w, time.time(), c, time.process_time()))
        if pl_module:
            pl_module._current_fx_name = previous

    call._call_callback_hooks = hooks


def _subclasses(base: type) -> list[type]:
    import importlib

    for name in ("modules.encoder", "modules.causal_lm", "modules.vision_language", "datamodules.encoder",
                 "datamodules.instruction", "datamodules.vision_instruction"):
        importlib.import_module(name)
    out, todo = [], [base]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return out


class FirstStep:
    """Marks the first training batch and the end of the first optimizer step, then stops the fit."""

    @staticmethod
    def callback():
        import lightning.pytorch as pl

        class _FirstStep(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == 0:
                    self.w, self.c = time.time(), time.process_time()
                    EVENTS.append(("process start -> first training batch", T0, self.w, C0, self.c))

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == 1 and not getattr(self, "done", False):
                    self.done = True
                    EVENTS.append(("first optimizer step", self.w, time.time(), self.c, time.process_time()))
                    EVENTS.append(("process start -> end of step 1", T0, time.time(), C0, time.process_time()))

        return _FirstStep()


def report(events: list[tuple[str, float, float, float, float]]) -> str:
    lines = [f"{'phase':<58} {'starts at s':>11} {'wall s':>8} {'CPU s':>8}"]
    for label, w0, w1, c0, c1 in sorted(events, key=lambda e: (e[1], -(e[2] - e[1]))):
        lines.append(f"{label:<58} {w0 - T0:>11.2f} {w1 - w0:>8.2f} {c1 - c0:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", help="recipe and overlays (default: the bench's SFT job)")
    p.add_argument("--cprofile", type=Path, help="also write a cProfile of the start-up here")
    p.add_argument("overrides", nargs="*", help="extra --key=value arguments for tuneloop fit")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    configs = args.config or BENCH_SFT
    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    instrument()
    import trainer.cli as cli

    first = FirstStep.callback()
    before = cli.TuneloopCLI.before_instantiate_classes

    def with_marker(self):  # the first-step marker joins the callbacks the CLI gives the Trainer
        before(self)
        self.trainer_defaults["callbacks"].append(first)

    cli.TuneloopCLI.before_instantiate_classes = with_marker
    from trainer.__main__ import main as tuneloop

    cli_args = ["fit", *[a for c in configs for a in ("-c", c)], "--trainer.max_steps=1", "--run.test_after_fit=false",
                "--run.root=runs/bench/startup", "--run.overwrite=true", "--run.version=startup", *args.overrides]
    try:
        tuneloop(cli_args)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.cprofile))
    print(report(EVENTS))
    return EVENTS


if __name__ == "__main__":
    main()
