"""Progress that reads well where the run is watched: Rich's bar in a terminal, plain lines in a log file.

A SLURM job's log, CI output or ``tuneloop fit ... > run.log`` is not a terminal: a redrawing bar writes
nothing there until the end. :class:`PlainProgress` prints one line every ``every_n_steps`` optimizer steps
(and at the last one) with the step, the progress-bar metrics (loss), the rate, the real tokens per second since
the previous line (all processes; from :class:`trainer.perf.Throughput`, when the run has it) and the time left,
and one line per validation and test pass. Global rank zero only.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def progress_bar(stream=None) -> ProgressBar:
    """Rich's bar when ``stream`` (default stdout) is a terminal, plain lines otherwise."""
    stream = sys.stdout if stream is None else stream
    return RichProgressBar() if stream.isatty() else PlainProgress()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class PlainProgress(ProgressBar):
    """One line per ``every_n_steps`` optimizer steps: ``epoch 1/3 step 40/120 (33%) loss=1.234 | 2.10 it/s |
    1,843 tok/s | elapsed 00:19 | ETA 00:38``; ``it/s`` counts optimizer steps (since training started),
    ``tok/s`` real tokens over the steps since the previous line."""

    def __init__(self, every_n_steps: int = 10, stream=None) -> None:
        super().__init__()
        self.every_n_steps = max(1, int(every_n_steps))
        self.stream = stream
        self._enabled = True
        self._start: float | None = None
        self._start_step = 0
        self._last_printed = -1
        self._last_totals = (0.0, 0.0)  # Throughput's (tokens, seconds) at the previous line

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        print(*args, **kwargs, file=self.stream or sys.stdout, flush=True)

    def _metrics(self, trainer, pl_module) -> str:
        items = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        return " ".join(f"{k}={_value(v)}" for k, v in items.items())

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._last_printed = -1
        self._last_totals = (0.0, 0.0)

    def _tokens_per_sec(self, trainer) -> float | None:
        """Real tokens per second over the optimizer steps since the previous line, or ``None`` without a
        :class:`trainer.perf.Throughput` callback (or tokens)."""
        from trainer.perf import Throughput

        perf = next((cb for cb in trainer.callbacks if isinstance(cb, Throughput)), None)
        if perf is None:
            return None
        (tokens, seconds), (last_tokens, last_seconds) = perf.totals(), self._last_totals
        self._last_totals = (tokens, seconds)
        return (tokens - last_tokens) / (seconds - last_seconds) if seconds > last_seconds and tokens else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or step == 0 or step == self._last_printed or self._start is None:
            return
        total = trainer.estimated_stepping_batches
        last = total != float("inf") and step >= total
        if step % self.every_n_steps and not last:
            return
        self._last_printed = step
        elapsed = time.monotonic() - self._start
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if trainer.max_epochs not in (None, -1)
                 else f"epoch {trainer.current_epoch + 1}"]
        if total != float("inf"):
            parts.append(f"step {step}/{int(total)} ({100 * step / max(total, 1):.0f}%)")
        else:
            parts.append(f"step {step}")
        line = " ".join(parts)
        metrics = self._metrics(trainer, pl_module)
        line += f" {metrics}" if metrics else ""
        line += f" | {rate:.2f} it/s"
        tokens_per_sec = self._tokens_per_sec(trainer)
        line += f" | {tokens_per_sec:,.0f} tok/s" if tokens_per_sec is not None else ""
        line += f" | elapsed {_duration(elapsed)}"
        if total != float("inf") and rate > 0:
            line += f" | ETA {_duration((total - step) / rate)}"
        self.print(line)

    def _eval_end(self, trainer, name: str) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        shown = ""
        if name == "validation":  # test metrics are the final table's; a validation pass has no table of its own
            values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        self.print(f"{name} done at step {trainer.global_step}" + (f": {shown}" if shown else ""))

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "validation")

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "test")

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._enabled:
            self.print(f"predict done: {int(sum(trainer.num_predict_batches))} batches")
