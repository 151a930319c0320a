"""``tuneloop compare summarize --out``: the statistics files (Tables 5-6 of MISSION §2) and the per-question
table (Table 7) read back and checked against the statistics the command prints (``--json`` and the tables)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import ROOT, write_jsonl
from trainer.compare import STAT_KEYS, main
from trainer.compare.stats import fmt, toolpak_sections

SAMPLES = ROOT / "data" / "samples" / "compare"
JUDGMENTS = str(SAMPLES / "judgments.jsonl")


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:  # written with a BOM for spreadsheets
        return list(csv.reader(f))


def summarize(capsys, *extra) -> dict:
    main(["summarize", "--judgments", JUDGMENTS, "--a", "base", "--b", "tuned", "--json", *extra])
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def written(tmp_path, capsys):
    """The printed --json statistics and the directory written by --out with --questions."""
    printed = summarize(capsys)
    out = tmp_path / "tables"
    main(["summarize", "--judgments", JUDGMENTS, "--a", "base", "--b", "tuned",
          "--questions", str(SAMPLES / "questions.jsonl"), "--out", str(out)])
    assert "per_question.csv" in capsys.readouterr().out
    return printed, out


def test_statistics_json_is_the_printed_json(written):
    printed, out = written
    saved = json.loads((out / "statistics.json").read_text())
    assert {k: saved[k] for k in (*STAT_KEYS, "closer")} == printed
    assert (saved["a"], saved["b"], saved["alpha"], saved["judgments"]) == ("base", "tuned", 0.05, JUDGMENTS)


def test_statistics_csv_holds_every_figure_in_full_precision(written):
    printed, out = written
    rows = read_csv(out / "statistics.csv")
    assert rows[0] == ["section", "statistic", "base", "tuned"]
    cells = {(section, label): (a, b) for section, label, a, b in rows[1:]}
    assert cells["Descriptive statistics", "Mean"] == (repr(printed["mean_a"]), repr(printed["mean_b"]))
    assert cells["Descriptive statistics", "Standard Error"] == (repr(printed["sem_a"]), repr(printed["sem_b"]))
    t_test = "t-Test: Paired Two Sample for Means"
    assert float(cells[t_test, "t Stat"][0]) == printed["t_stat"] == pytest.approx(-2.861994276017172)
    assert float(cells[t_test, "P(T<=t) two-tail"][0]) == printed["p_two_tail"]
    assert float(cells[t_test, "Pearson Correlation"][0]) == printed["pearson_r"]
    assert cells[t_test, "df"] == ("9", "")
    assert float(cells["F-Test Two-Sample for Variances", "F"][0]) == printed["f_stat"]
    closer = "Closer to the reference (questions)"
    assert cells[closer, "closer"] == ("1", "7") and cells[closer, "Nothing"] == ("2", "")
    # every toolpak row is there, in the printed order
    stats = {k: printed[k] for k in STAT_KEYS}
    assert [(s, label) for s, label, *_ in rows[1:-2]] == [(t, r[0]) for t, rs in toolpak_sections(stats) for r in rs]


def test_statistics_markdown_shows_the_printed_figures(written, capsys):
    printed, out = written
    md = (out / "statistics.md").read_text()
    main(["summarize", "--judgments", JUDGMENTS, "--a", "base", "--b", "tuned"])
    console = capsys.readouterr().out
    for label, key in (("t Stat", "t_stat"), ("P(T<=t) two-tail", "p_two_tail"), ("F", "f_stat"),
                       ("Pearson Correlation", "pearson_r"), ("t Critical two-tail", "t_crit_two_tail")):
        assert f"| {label} | {fmt(printed[key])} |  |" in md
        assert fmt(printed[key]) in console
    assert "| Variance | 0.933333 | 0.722222 |" in md and "| Standard Error | 0.305505 | 0.268742 |" in md
    assert "| base | tuned | Nothing |\n| ---: | ---: | ---: |\n| 1 | 7 | 2 |" in md
    for title in ("## Descriptive statistics", "## t-Test: Paired Two Sample for Means",
                  "## F-Test Two-Sample for Variances"):
        assert title in md


def test_per_question_table(written):
    _, out = written
    judgments = [json.loads(line) for line in open(JUDGMENTS, encoding="utf-8")]
    questions = {q["id"]: q["question"] for q in map(json.loads, open(SAMPLES / "questions.jsonl", encoding="utf-8"))}
    rows = read_csv(out / "per_question.csv")
    assert rows[0] == ["id", "question", "base score", "tuned score", "closer", "reason"]
    assert len(rows) == 11
    for qid, question, score_a, score_b, closer, reason in rows[1:]:
        a, b = (next(j for j in judgments if j["id"] == qid and j["model"] == m) for m in ("base", "tuned"))
        assert (question, int(score_a), int(score_b), closer, reason) == (
            questions[qid], a["score"], b["score"], a["closer"], a["reason"])
    md = (out / "per_question.md").read_text()
    assert "| id | question | base score | tuned score | closer | reason |" in md
    assert f"| q01 | {questions['q01']} | 2 | 4 | tuned | " in md  # Korean text kept as is


def test_without_questions_the_column_is_left_out_and_undefined_is_div0(tmp_path, capsys):
    rows = [{"id": i, "model": m, "score": s, "reason": f"r|{i}" if m == "a" else "other\nline", "closer": "Nothing"}
            for i, (a, b) in enumerate([(3, 5), (4, 5), (5, 5)]) for m, s in (("a", a), ("b", b))]
    path = write_jsonl(tmp_path / "j.jsonl", rows)
    out = tmp_path / "t"
    main(["summarize", "--judgments", str(path), "--a", "a", "--b", "b", "--out", str(out)])
    cells = {(s, label): (x, y) for s, label, x, y in read_csv(out / "statistics.csv")[1:]}
    assert cells["F-Test Two-Sample for Variances", "F"] == ("#DIV/0!", "")  # var_b = 0, as Excel shows it
    assert json.loads((out / "statistics.json").read_text())["f_stat"] is None
    table = read_csv(out / "per_question.csv")
    assert table[0] == ["id", "a score", "b score", "closer", "reason"]
    assert table[1] == ["0", "3", "5", "Nothing", "a: r|0; b: other\nline"]  # different reasons: both kept
    assert "| 0 | 3 | 5 | Nothing | a: r\\|0; b: other<br>line |" in (out / "per_question.md").read_text()


def test_questions_from_the_answers_file_and_errors(tmp_path, capsys):
    out = tmp_path / "t"
    main(["summarize", "--judgments", JUDGMENTS, "--a", "base", "--b", "tuned",
          "--questions", str(SAMPLES / "answers.jsonl"), "--out", str(out)])
    assert read_csv(out / "per_question.csv")[1][1].startswith("국가 R&D 과제 기획 단계에서")
    few = write_jsonl(tmp_path / "q.jsonl", [{"id": "q01", "question": "q", "reference": "r"}])
    for extra, problem in (
        (["--questions", str(few), "--out", str(out)], f"--questions {few}: no question for 9 judged id(s): 'q02'"),
        (["--questions", str(few)], "--questions fills the question column of per_question.* under --out DIR"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["summarize", "--judgments", JUDGMENTS, "--a", "base", "--b", "tuned", *extra])
        assert problem in e.value.code and "\n" not in e.value.code
