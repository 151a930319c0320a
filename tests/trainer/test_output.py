"""What a run prints: by default no Lightning tip, no ``datasets`` progress bar, no model table with FLOPs 0 and one
final table in which the best checkpoint's validation metrics stand beside the test metrics (Lightning's own
test table is not printed); ``-v`` brings the libraries' output back. Plus the table's layout and the choice of
the validation pass that the best checkpoint holds."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from trainer.__main__ import main
from trainer.summary import best_validation, print_summary

FIT = ["fit", "-c", "configs/encoder/waam-multilabel.yaml", "-c", "configs/debug.yaml", "--trainer.max_epochs=2",
       "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
       "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def _fit(tmp_path, capfd, caplog, monkeypatch, *flags) -> tuple[str, dict]:
    """Console output of a fit in this process: stdout, stderr and the records of library loggers (under pytest
    Lightning's logger hands them to the root logger's capture instead of stderr)."""
    from trainer import logs

    caplog.clear()
    monkeypatch.setattr("sys.argv", ["tuneloop"])  # the command line is the args given here
    try:
        # a cache of its own: the data is tokenized (with its progress bar) in each run
        main([*flags, *FIT, f"--run.root={tmp_path}", "--run.version=v", f"--data.init_args.cache_dir={tmp_path}/c"])
    finally:
        logs.setup_logging("normal")
        logs.quiet_libraries()  # the next test starts from the default again
    captured = capfd.readouterr()
    metrics = json.loads((tmp_path / "waam-multilabel" / "v" / "metrics.json").read_text())
    return captured.out + captured.err + caplog.text, metrics


@pytest.mark.slow
def test_default_output_is_quiet_and_has_one_final_table(tmp_path, capfd, caplog, monkeypatch):
    out, metrics = _fit(tmp_path / "normal", capfd, caplog, monkeypatch)
    for noise in ("💡 Tip", "litlogger", "tokenize train", "examples/s", "FLOPs", "Test metric", "DataLoader 0",
                  "Seed set to", "GPU available", "LeafSpec"):
        assert noise not in out, noise
    assert out.count("final metrics") == 1 and out.count("test: best checkpoint") == 1
    best = metrics["fit"]["best_val"]
    assert best["weights"] == "best" and best["metrics"]["val/partial_score"] == metrics["fit"]["best_score"]
    assert f"val: best (step {best['step']})" in out
    # the test row sits beside the best checkpoint's validation value in one table
    row = next(line for line in out.splitlines() if line.startswith(" partial_score "))
    cells = [c.strip() for c in row.split("│")]
    assert cells[1] == f"{best['metrics']['val/partial_score']:.4f}"
    assert cells[3] == f"{metrics['test']['metrics']['test/partial_score']:.4f}"
    assert "tuneloop: model: " in out and " trainable (" in out

    out, _ = _fit(tmp_path / "verbose", capfd, caplog, monkeypatch, "-v")
    for restored in ("💡 Tip", "tokenize train", "Test metric", "Total params"):
        assert restored in out, restored


def test_best_validation_is_the_first_pass_at_the_best_score():
    history = [{"step": s, "epoch": s // 10, "metrics": {"val/f1": f}} for s, f in ((10, 0.5), (20, 0.7), (30, 0.7))]
    ckpt = SimpleNamespace(monitor="val/f1", best_model_score=0.7 + 1e-9)
    assert best_validation(history, ckpt) == {**history[1], "weights": "best"}  # a tie is not a new best
    assert best_validation(history, SimpleNamespace(monitor=None, best_model_score=None))["step"] == 30
    assert best_validation(history, SimpleNamespace(monitor="val/loss", best_model_score=0.1)) is None
    assert best_validation([], ckpt) is None


def test_summary_table_puts_stages_side_by_side(capsys, tmp_path):
    values = {"val/f1": 0.5, "val/baseline_f1": 0.25, "test/f1": 0.4, "test/loss": 1.25, "val/loss": math.nan,
              "perf/mfu": 0.1}
    print_summary("fit", {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()},
                  tmp_path, extra=[("perf/mfu", "10 %")], headers={"val": "val: best (step 4)"}, note=["a note"])
    lines = capsys.readouterr().out.splitlines()
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")] for line in lines if "│" in line)}
    assert rows["metric"] == ["val: best (step 4)", "label-frequency baseline (val)", "test"]
    assert rows["f1"] == ["0.5000", "0.2500", "0.4000"] and rows["loss"] == ["nan", "", "1.2500"]
    assert len(lines) == 1 + 2 + 2 + 3  # title, header and rule, two rows; perf, note, run directory
    assert lines[-3:] == ["perf/mfu 10 %", "a note", f"run directory: {tmp_path}"]
