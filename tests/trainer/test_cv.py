"""tuneloop cv: K fits, a summary with K values per metric, mean and std."""

import json

import pytest

from trainer.cv import run_cv, summarize, to_markdown


def test_summarize_mean_and_sample_std():
    s = summarize([{"val/f1": 0.5}, {"val/f1": 0.7}, {"val/f1": 0.9}])
    assert s["val/f1"]["folds"] == [0.5, 0.7, 0.9]
    assert s["val/f1"]["mean"] == pytest.approx(0.7)
    assert s["val/f1"]["std"] == pytest.approx(0.2)  # sample std (ddof=1)
    md = to_markdown(s, 3)
    assert "| val/f1 | 0.5000 | 0.7000 | 0.9000 | 0.7000 ± 0.2000 |" in md


@pytest.mark.slow
def test_cv_runs_k_folds_and_writes_the_summary(tmp_path):
    k = 3
    summary = run_cv(
        ["configs/encoder/waam-multilabel.yaml", "configs/debug.yaml"], k,
        [f"--run.root={tmp_path}", "--trainer.logger=false", "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"],
        version="cvtest",
    )
    out = tmp_path / "waam-multilabel" / "cvtest"
    data = json.loads((out / "cv_summary.json").read_text())
    assert data["folds"] == k
    for key in ("val/loss", "val/partial_score", "val/f1_macro", "val/f1_micro", "val/exact_match",
                "val/label_accuracy"):
        assert len(data["metrics"][key]["folds"]) == k
        assert all(v is not None for v in data["metrics"][key]["folds"])
    assert summary["val/loss"]["folds"] == data["metrics"]["val/loss"]["folds"]
    # Folds differ (different validation records), so their losses are not all identical.
    assert len(set(data["metrics"]["val/loss"]["folds"])) > 1
    md = (out / "cv_summary.md").read_text().splitlines()
    assert md[0].startswith("| metric | fold 0 | fold 1 | fold 2 | mean ± std |")
    assert [(out / f"fold-{i}" / "checkpoints").is_dir() for i in range(k)] == [True] * k


def test_cv_rejects_one_fold(tmp_path):
    with pytest.raises(SystemExit, match="--folds must be >= 2"):
        run_cv(["configs/encoder/waam-multilabel.yaml"], 1, [])
