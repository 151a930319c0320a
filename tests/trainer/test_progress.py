"""Console output in logs: plain progress lines when stdout is not a terminal, logging on rank zero only,
--quiet and -v."""

from __future__ import annotations

import io
import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from trainer.logs import pop_verbosity, setup_logging
from trainer.progress import PlainProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_terminal_gets_the_rich_bar_and_a_log_file_plain_lines():
    assert isinstance(progress_bar(_Tty()), RichProgressBar)
    assert isinstance(progress_bar(io.StringIO()), PlainProgress)


def test_plain_progress_prints_step_loss_rate_and_eta_every_n_steps(tmp_path):
    data = TensorDataset(torch.randn(24, 2), torch.randn(24, 1))
    out = io.StringIO()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[PlainProgress(every_n_steps=5, stream=out)], default_root_dir=str(tmp_path),
                         num_sanity_val_steps=0)
    trainer.fit(Tiny(), DataLoader(data, batch_size=2), DataLoader(data, batch_size=8))
    lines = out.getvalue().splitlines()
    steps = [l for l in lines if " step " in l and "it/s" in l]
    # 12 steps an epoch, 24 in all: a line at 5, 10, 15, 20 and at the last step.
    assert [l.split(" step ")[1].split("/")[0] for l in steps] == ["5", "10", "15", "20", "24"], lines
    assert steps[0].startswith("epoch 1/2 step 5/24 (21%) train/loss=") and "ETA" in steps[0]
    assert steps[-1].startswith("epoch 2/2 step 24/24 (100%)")
    vals = [l for l in lines if l.startswith("validation done at step")]
    assert [l.split()[4].rstrip(":") for l in vals] == ["12", "24"] and "val/loss=" in vals[0]


def test_logging_reaches_stdout_on_rank_zero_only_and_follows_verbosity(capsys, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    log = logging.getLogger("datamodules.anything")
    try:
        setup_logging("normal")
        log.info("kept %d", 1)
        log.debug("hidden")
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        log.warning("from rank 1")
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        setup_logging("quiet")
        log.info("quiet drops info")
        log.warning("quiet keeps warnings")
        setup_logging("verbose")
        log.debug("verbose shows debug")
        assert capsys.readouterr().out.splitlines() == [
            "tuneloop: kept 1", "tuneloop: quiet keeps warnings", "tuneloop: verbose shows debug"]
    finally:
        setup_logging("normal")
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.INFO)


def test_verbosity_flags_are_taken_out_of_the_command_line():
    assert pop_verbosity(["fit", "-c", "x.yaml", "--quiet"]) == ("quiet", ["fit", "-c", "x.yaml"])
    assert pop_verbosity(["-v", "plan", "-c", "x.yaml"]) == ("verbose", ["plan", "-c", "x.yaml"])
    assert pop_verbosity(["fit"]) == ("normal", ["fit"])
    with pytest.raises(SystemExit, match="one of --quiet"):
        pop_verbosity(["fit", "--quiet", "-v"])


class _Masked(torch.utils.data.Dataset):
    """8 records of 3 real tokens (of 5) each."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.randn(2), "y": torch.randn(1), "attention_mask": torch.tensor([1, 1, 1, 0, 0])}


class TinyDict(Tiny):
    def training_step(self, batch, batch_idx):
        return super().training_step((batch["x"], batch["y"]), batch_idx)


def test_plain_progress_shows_real_tokens_per_second_since_the_previous_line(tmp_path, monkeypatch):
    from trainer.perf import Throughput

    clock = iter(range(1000))  # the throughput clock: one second per reading (one reading per optimizer step)
    monkeypatch.setattr("trainer.perf.time.perf_counter", lambda: float(next(clock)))
    out = io.StringIO()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[Throughput(peak_tflops=1.0), PlainProgress(every_n_steps=2, stream=out)],
                         default_root_dir=str(tmp_path))
    trainer.fit(TinyDict(), DataLoader(_Masked(), batch_size=2))
    steps = [l for l in out.getvalue().splitlines() if " step " in l]
    # 4 steps of 2 records x 3 real tokens, one second each: 6 tok/s, padding not counted.
    assert len(steps) == 2 and all("| 6 tok/s |" in l for l in steps), steps
    assert steps[0].index("it/s") < steps[0].index("tok/s") < steps[0].index("ETA")
