"""``tuneloop compare runs``: metrics of finished runs side by side from hand-written ``metrics.json`` files laid
out as ``fit``/``test`` write them (and a ``cv_summary.json`` as ``tuneloop cv`` writes it): values, differences
and relative changes, blanks, selection, names, the --out files read back, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from trainer.compare import main
from trainer.compare.runs import is_rate


def metrics_json(run_dir, test: dict, val: dict | None = None, exports: bool = False):
    """A run directory with the metrics.json layout of trainer/callbacks.py (non-metric keys included)."""
    run_dir.mkdir(parents=True)
    data = {"test": {"metrics": test, "checkpoint": f"{run_dir}/checkpoints/best.ckpt"}}
    if val is not None:
        data = {"fit": {"metrics": {"train/loss": 0.9, **val}, "global_step": 60, "epochs": 5, "world_size": 1,
                        "accumulate_grad_batches": 2, "train_loss": [[1, 2.5], [2, 1.5]],
                        "best_checkpoint": "x.ckpt", "monitor": "val/f1_macro", "best_score": 0.5}, **data}
    if exports:
        data["exports"] = {"adapter": {"checkpoint": "x.ckpt", "global_step": 60, "epoch": 4}}
    (run_dir / "metrics.json").write_text(json.dumps(data, indent=2))
    return str(run_dir)


@pytest.fixture
def intent_runs(tmp_path):
    """The intent team's base (F1 40%) and tuned (F1 58%) runs; the base was only tested (no fit section)."""
    exp = tmp_path / "runs" / "intent-exaone-lora"
    base = metrics_json(exp / "base", {"test/f1_macro": 0.40, "test/accuracy": 0.45, "test/loss": 2.0,
                                       "test/unknown_rate": 0.25})
    tuned = metrics_json(exp / "tuned", {"test/f1_macro": 0.58, "test/accuracy": 0.60, "test/loss": 1.5,
                                         "test/unknown_rate": 0.0, "test/bertscore_f1": 0.8},
                         val={"val/f1_macro": 0.61, "val/loss": 1.4}, exports=True)
    return base, tuned


def run_json(capsys, *argv):
    main(["runs", *argv, "--json"])
    return json.loads(capsys.readouterr().out)


def test_differences_and_relative_change_of_rates(intent_runs, capsys):
    report = run_json(capsys, *intent_runs)
    assert report["baseline"] == "base" and [r["name"] for r in report["runs"]] == ["base", "tuned"]
    rows = {r["metric"]: r for r in report["metrics"]}
    assert list(rows) == ["test/accuracy", "test/bertscore_f1", "test/f1_macro", "test/loss", "test/unknown_rate"]
    f1 = rows["test/f1_macro"]
    assert f1["values"] == {"base": 0.40, "tuned": 0.58} and f1["rate"]
    assert f1["diff"]["tuned"] == pytest.approx(0.18) and f1["rel_pct"]["tuned"] == pytest.approx(45.0)
    assert rows["test/accuracy"]["rel_pct"]["tuned"] == pytest.approx(0.15 / 0.45 * 100)
    loss = rows["test/loss"]  # not a rate: a difference, no relative change
    assert not loss["rate"] and loss["diff"]["tuned"] == pytest.approx(-0.5) and loss["rel_pct"] == {}
    unknown = rows["test/unknown_rate"]
    assert unknown["diff"]["tuned"] == pytest.approx(-0.25) and unknown["rel_pct"]["tuned"] == pytest.approx(-100)
    only_tuned = rows["test/bertscore_f1"]  # present in one run: blank value, no difference
    assert only_tuned["values"] == {"base": None, "tuned": 0.8} and only_tuned["diff"]["tuned"] is None


def test_printed_table(intent_runs, capsys):
    main(["runs", *intent_runs, "--metrics", "test/f1_macro,test/loss"])
    out = capsys.readouterr().out
    assert "differences from base" in out
    f1_line = next(line for line in out.splitlines() if "test/f1_macro" in line)
    assert all(cell in f1_line for cell in ("0.4000", "0.5800", "+0.1800", "+45.0%"))
    loss_line = next(line for line in out.splitlines() if "test/loss" in line)
    assert "-0.5000" in loss_line and "%" not in loss_line
    assert "test/accuracy" not in out


def test_out_files_read_back(intent_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    main(["runs", *intent_runs, "--names", "base", "lora", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["base", "lora"]
    with open(out / "runs.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["metric", "base", "lora", "lora - base", "lora - base %"]
    by_metric = {r["metric"]: r for r in rows}
    for row in report["metrics"]:  # the CSV holds the JSON's numbers in full precision, blanks where missing
        got = by_metric[row["metric"]]
        for name in ("base", "lora"):
            want = row["values"][name]
            assert (got[name] == "") if want is None else float(got[name]) == want
        diff = row["diff"]["lora"]
        assert (got["lora - base"] == "") if diff is None else float(got["lora - base"]) == diff
    assert float(by_metric["test/f1_macro"]["lora - base %"]) == pytest.approx(45.0)
    assert by_metric["test/loss"]["lora - base %"] == ""
    md = (out / "runs.md").read_text()
    assert "| test/f1_macro | 0.4000 | 0.5800 | +0.1800 | +45.0% |" in md
    assert "| test/bertscore_f1 |  | 0.8000 |  |  |" in md
    assert str(out / "runs.csv") in printed


def test_stage_and_three_runs_with_a_cv_directory(intent_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # five difference columns: no wrapped cells
    cv = tmp_path / "runs" / "intent-exaone-lora" / "cv-0101"
    cv.mkdir()
    (cv / "cv_summary.json").write_text(json.dumps({"folds": 3, "metrics": {
        "val/f1_macro": {"folds": [0.5, 0.6, 0.7], "mean": 0.6, "std": 0.1},
        "val/loss": {"folds": [1.0, None, 1.2], "mean": 1.1, "std": 0.1414}}}))
    report = run_json(capsys, *intent_runs, str(cv), "--stage", "val")
    rows = {r["metric"]: r for r in report["metrics"]}
    assert list(rows) == ["val/f1_macro", "val/loss"]
    assert rows["val/f1_macro"]["values"] == {"base": None, "tuned": 0.61, "cv-0101": 0.6}
    assert rows["val/f1_macro"]["std"] == {"cv-0101": 0.1}
    assert rows["val/f1_macro"]["diff"] == {"tuned": None, "cv-0101": None}  # nothing to subtract from
    assert report["runs"][2]["folds"] == 3
    main(["runs", str(cv), *intent_runs, "--stage", "val"])
    out = capsys.readouterr().out
    assert "0.6000 ± 0.1000" in out and "+0.0100" in out  # tuned - cv mean
    assert "cv-0101: mean ± std over 3 folds" in out and "base: none of these metrics" in out
    assert {r["metric"] for r in run_json(capsys, *intent_runs, "--stage", "all")["metrics"]} >= {
        "train/loss", "val/loss", "test/loss"}


def test_default_names_fall_back_to_experiment_and_version(tmp_path, capsys):
    a = metrics_json(tmp_path / "bert" / "v1", {"test/f1": 0.5})
    b = metrics_json(tmp_path / "roberta" / "v1", {"test/f1": 0.6})
    assert [r["name"] for r in run_json(capsys, a, b)["runs"]] == ["bert/v1", "roberta/v1"]
    # a path to the file itself works too
    assert run_json(capsys, f"{a}/metrics.json", b)["runs"][0]["source"].endswith("bert/v1/metrics.json")


@pytest.mark.parametrize("metric,rate", [
    ("test/f1_macro", True), ("val/baseline_exact_match", True), ("test/bertscore_f1", True),
    ("test/unknown_rate", True), ("test/precision", True), ("val/partial_score", True),
    ("test/loss", False), ("test/mse", False), ("test/r2", False), ("test/false_positives", False),
    ("test/perplexity", False),
])
def test_which_metrics_are_rates(metric, rate):
    assert is_rate(metric) is rate


def errors(*argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(["runs", *argv])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code  # one line, no traceback
    return e.value.code


def test_one_line_errors_name_the_run(intent_runs, tmp_path):
    base, tuned = intent_runs
    empty = tmp_path / "crashed-run"
    empty.mkdir()
    assert errors(base, str(empty)) == (f"tuneloop compare runs: {empty}: no metrics.json (nor cv_summary.json) in "
                                        "this directory; fit and test write it when they end")
    exp = str(tmp_path / "runs" / "intent-exaone-lora")
    assert "it holds run directories (base, tuned): pass those" in errors(base, exp)
    assert f"{tmp_path}/missing: no such run directory" in errors(base, str(tmp_path / "missing"))
    (empty / "metrics.json").write_text('{"test": {"metrics": {"test/f1": 0.5,}}}')
    assert f"{empty}/metrics.json:1: not valid JSON" in errors(base, str(empty))
    (empty / "metrics.json").write_text('{"test": {"metrics": {"test/f1": "high"}}}')
    assert "section 'test' metric 'test/f1': expected a number, got str 'high'" in errors(base, str(empty))
    assert "give at least two runs" in errors(base)
    assert "no run has 'test/f2'; the runs have: test/accuracy" in errors(base, tuned, "--metrics", "test/f2")
    assert "no run has a metric under train/ (--stage); the runs have: test/; choose" in errors(
        base, base, "--stage", "train", "--names", "x", "y")
    assert "--names gives 1 name(s) for 2 run(s)" in errors(base, tuned, "--names", "x")
    assert "run name 'x' names both" in errors(base, tuned, "--names", "x", "x")
    assert "give --stage or --metrics, not both" in errors(base, tuned, "--stage", "val", "--metrics", "val/loss")


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["runs", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("RUN", "--names", "--stage", "--metrics", "--out", "--json", "cv_summary.json", "relative"):
        assert option in out
