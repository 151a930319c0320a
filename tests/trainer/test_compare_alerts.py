"""``tuneloop compare alerts``: predictions files of several models -> a side-by-side table, JSON and Markdown
whose numbers match scikit-learn computed here; errors name file:line: field; ``--help`` from the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from tests.conftest import ROOT, write_jsonl
from trainer.compare import main

N = 40


def _expected(gold: list[bool], pred: list[bool | None]) -> dict:
    """Independent figures: scikit-learn with unparseable as a third class."""
    names = {True: "alert", False: "no_alert", None: "unparseable"}
    y, p = [names[g] for g in gold], [names[v] for v in pred]
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=["alert"], average=None, zero_division=0)
    return {"n": len(y), "accuracy": accuracy_score(y, p), "precision": float(precision[0]),
            "recall": float(recall[0]), "f1": float(f1[0]),
            "false_positives": sum(g is False and v is True for g, v in zip(gold, pred)),
            "false_negatives": sum(g is True and v is False for g, v in zip(gold, pred)),
            "unparseable": sum(v is None for v in pred)}


def _text(decision: bool | None) -> str:
    """A generated answer carrying the decision (or none)."""
    if decision is None:
        return "Worker 2 stands behind a pillar; the vest is not visible."
    return f"Worker 2 wears {'an orange T-shirt' if decision else 'a vest'}.\nAlert: {decision}"


@pytest.fixture
def two_models(tmp_path):
    """runs/ppe-base/predictions.jsonl with pred_alert written by the model; runs/ppe-tuned/predictions.jsonl
    with only the generated text (parsed by the command) and the gold as 'alert'."""
    rng = random.Random(3)
    gold = [rng.random() < 0.5 for _ in range(N)]
    base = [None if rng.random() < 0.15 else (g if rng.random() < 0.6 else not g) for g in gold]
    tuned = [None if rng.random() < 0.05 else (g if rng.random() < 0.9 else not g) for g in gold]
    ids = [f"img{i:03d}" for i in range(N)]
    (tmp_path / "runs" / "ppe-base").mkdir(parents=True)
    (tmp_path / "runs" / "ppe-tuned").mkdir(parents=True)
    base_path = write_jsonl(tmp_path / "runs" / "ppe-base" / "predictions.jsonl", [
        {"id": i, "generation": _text(p), "pred_alert": p, "target_alert": g} for i, g, p in zip(ids, gold, base)])
    tuned_rows = [{"id": i, "generation": _text(p), "alert": g} for i, g, p in zip(ids, gold, tuned)]
    tuned_path = write_jsonl(tmp_path / "runs" / "ppe-tuned" / "predictions.jsonl", list(reversed(tuned_rows)))
    return {"paths": [str(base_path), str(tuned_path)], "gold": gold, "base": base, "tuned": tuned, "ids": ids}


def _fmt(key: str, value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def test_table_json_and_markdown(two_models, tmp_path, capsys):
    out_dir = tmp_path / "report"
    main(["alerts", "--predictions", *two_models["paths"], "--names", "base", "tuned", "--out", str(out_dir)])
    printed = capsys.readouterr().out
    expected = {"base": _expected(two_models["gold"], two_models["base"]),
                "tuned": _expected(two_models["gold"], two_models["tuned"])}
    assert expected["base"] != expected["tuned"] and expected["base"]["unparseable"] > 0
    assert f"{N} cases x 2 models" in printed
    lines = printed.splitlines()
    header = next(line for line in lines if "base" in line and "tuned" in line)
    assert header.index("base") < header.index("tuned")
    for label, key in (("n", "n"), ("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                       ("F1", "f1"), ("false positives", "false_positives"),
                       ("false negatives", "false_negatives"), ("unparseable", "unparseable")):
        row = next(line for line in lines if line.strip("│ ").startswith(label + " "))
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells == [label, _fmt(key, expected["base"][key]), _fmt(key, expected["tuned"][key])], row

    report = json.loads((out_dir / "alerts.json").read_text(encoding="utf-8"))
    assert report["cases"] == N and report["dropped"] is None and list(report["models"]) == ["base", "tuned"]
    for name in ("base", "tuned"):
        got = report["models"][name]
        assert got.pop("file") == two_models["paths"][0 if name == "base" else 1]
        assert got == pytest.approx(expected[name], abs=1e-12)

    markdown = (out_dir / "alerts.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0] == "| metric | base | tuned |" and markdown[1] == "| --- | ---: | ---: |"
    assert f"| F1 | {expected['base']['f1']:.4f} | {expected['tuned']['f1']:.4f} |" in markdown
    assert f"| unparseable | {expected['base']['unparseable']} | {expected['tuned']['unparseable']} |" in markdown


def test_json_to_stdout_and_default_names(two_models, capsys):
    main(["alerts", "--predictions", *two_models["paths"], "--json"])
    report = json.loads(capsys.readouterr().out)
    # predictions.jsonl is a generic name: the run directory names the model
    assert list(report["models"]) == ["ppe-base", "ppe-tuned"]
    assert report["models"]["ppe-tuned"]["accuracy"] == pytest.approx(
        _expected(two_models["gold"], two_models["tuned"])["accuracy"])


def test_single_file_and_stem_name(tmp_path, capsys):
    path = write_jsonl(tmp_path / "qwen-vl.jsonl", [
        {"id": 1, "answer": "경보: 예", "target_alert": True},
        {"id": 2, "answer": "경보를 발령할 필요가 없습니다.", "target_alert": False},
        {"id": 3, "answer": "알 수 없음", "target_alert": False}])
    main(["alerts", "--predictions", str(path), "--json"])
    got = json.loads(capsys.readouterr().out)["models"]["qwen-vl"]
    assert got["accuracy"] == pytest.approx(2 / 3) and got["unparseable"] == 1 and got["precision"] == 1.0


def test_intersect_compares_common_ids(two_models, tmp_path, capsys):
    rows = [json.loads(line) for line in open(two_models["paths"][1], encoding="utf-8")]
    short = write_jsonl(tmp_path / "short.jsonl", rows[:-5] + [{**rows[0], "id": "extra"}])
    with pytest.raises(SystemExit) as e:
        main(["alerts", "--predictions", two_models["paths"][0], str(short), "--names", "a", "b"])
    message = e.value.code
    assert message.startswith("tuneloop compare alerts: ") and "cover different ids" in message
    assert "5 id(s) only in" in message and "1 id(s) only in" in message and "'extra'" in message
    assert "--intersect" in message
    main(["alerts", "--predictions", two_models["paths"][0], str(short), "--names", "a", "b", "--intersect",
          "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == N - 5 and report["dropped"] == {"a": 5, "b": 1}


def _error(tmp_path, rows_a: list[dict], rows_b: list[dict] | None = None, extra: tuple = ()) -> str:
    paths = [str(write_jsonl(tmp_path / "a.jsonl", rows_a))]
    if rows_b is not None:
        paths.append(str(write_jsonl(tmp_path / "b.jsonl", rows_b)))
    with pytest.raises(SystemExit) as e:
        main(["alerts", "--predictions", *paths, *extra])
    assert isinstance(e.value.code, str) and e.value.code.startswith("tuneloop compare alerts: ")
    return e.value.code


GOOD = {"id": 1, "generation": "Alert: True", "pred_alert": True, "target_alert": True}


@pytest.mark.parametrize("second,where", [
    ({"id": 2, "generation": "Alert: True", "pred_alert": True}, "a.jsonl:2: field 'target_alert': missing or null"),
    ({"id": 2, "generation": "Alert: True", "target_alert": None}, "a.jsonl:2: field 'target_alert': missing or null"),
    ({"id": 2, "generation": "x", "alert": None}, "a.jsonl:2: field 'alert': missing or null"),
    ({"id": 2, "generation": "x", "target_alert": "yes"}, "a.jsonl:2: field 'target_alert': expected true or false"),
    ({"id": 2, "pred_alert": 1, "target_alert": True}, "a.jsonl:2: field 'pred_alert': expected true, false or null"),
    ({"id": 2, "target_alert": True}, "a.jsonl:2: field 'pred_alert': missing: give 'pred_alert'"),
    ({"id": 2, "generation": None, "target_alert": True}, "a.jsonl:2: field 'generation': expected text"),
    ({"id": 1, "pred_alert": True, "target_alert": True}, "a.jsonl:2: field 'id': duplicate id 1 (first at"),
    ({"pred_alert": True, "target_alert": True}, "a.jsonl:2: field 'id': missing or null"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, second, where):
    assert where in _error(tmp_path, [GOOD, second], extra=("--names", "m"))


def test_bad_json_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["alerts", "--predictions", str(path)])
    assert "a.jsonl:3: invalid JSON" in e.value.code


def test_name_checks(tmp_path):
    assert "--names: 'm' names both" in _error(tmp_path, [GOOD], [GOOD], ("--names", "m", "m"))
    assert "--names gives 1 name(s) for 2 --predictions file(s)" in _error(tmp_path, [GOOD], [GOOD], ("--names", "m"))
    assert "must be letters, digits" in _error(tmp_path, [GOOD], [GOOD], ("--names", "m", "a b"))
    # the same file twice: the default names collide
    with pytest.raises(SystemExit) as e:
        path = str(write_jsonl(tmp_path / "a.jsonl", [GOOD]))
        main(["alerts", "--predictions", path, path])
    assert "default name" in e.value.code and "'a' names both" in e.value.code and "set --names" in e.value.code


def test_gold_disagreement_and_missing_files(tmp_path):
    other = {**GOOD, "target_alert": False}
    assert "disagree on the gold decision of 1 id(s) (e.g. 1)" in _error(tmp_path, [GOOD], [other],
                                                                       ("--names", "a", "b"))
    with pytest.raises(SystemExit) as e:
        main(["alerts", "--predictions", str(tmp_path / "missing.jsonl")])
    assert "not found" in e.value.code
    with pytest.raises(SystemExit) as e:
        main(["alerts", "--predictions", str(tmp_path / "p.json")])
    assert "expected a .jsonl file" in e.value.code


def test_help_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "trainer", "compare", "alerts", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for text in ("--predictions", "--names", "--out", "--intersect", "--json", "example:",
                 "tuneloop compare alerts --predictions"):
        assert text in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "trainer", "compare", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert "alerts" in proc.stdout and "tuneloop compare alerts" in proc.stdout


def test_error_from_the_command_line_is_one_line(tmp_path):
    path = str(write_jsonl(tmp_path / "a.jsonl", [GOOD]))
    proc = subprocess.run([sys.executable, "-m", "trainer", "compare", "alerts", "--predictions", path,
                           "--names", "a", "b"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "tuneloop compare alerts: --names gives 2 name(s) for 1 --predictions file(s); " \
                                  "give one name per file, in the same order"
