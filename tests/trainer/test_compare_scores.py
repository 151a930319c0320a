"""``tuneloop compare summarize`` on score files of both shapes: the judge's long JSONL and the same scores as a
long CSV without ``closer``, a wide CSV and a wide ``.xlsx`` sheet (the R&D team's spreadsheet) give the same
statistics; without a closer column there is no closer table; a wrong cell names file, row and column."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import ROOT
from trainer.compare import STAT_KEYS, main

SAMPLES = ROOT / "data" / "samples" / "compare"
JUDGMENTS = [json.loads(line) for line in open(SAMPLES / "judgments.jsonl", encoding="utf-8")]
QUESTIONS = {q["id"]: q["question"] for q in map(json.loads, open(SAMPLES / "questions.jsonl", encoding="utf-8"))}
IDS = list(dict.fromkeys(j["id"] for j in JUDGMENTS))
SCORE = {(j["id"], j["model"]): j["score"] for j in JUDGMENTS}
CLOSER = {j["id"]: j["closer"] for j in JUDGMENTS}


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8-sig", newline="") as f:  # as a spreadsheet saves "CSV UTF-8"
        csv.writer(f).writerows([header, *rows])
    return path


def write_xlsx(path, sheet, header, rows):
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "notes"
    book.active.append(["this sheet is not the scores"])
    ws = book.create_sheet(sheet)
    for row in [header, *rows]:
        ws.append(row)
    book.save(path)
    return path


def summarize_json(capsys, path, a="base", b="tuned"):
    main(["summarize", "--judgments", str(path), "--a", a, "--b", b, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def sample_stats():
    """The statistics of the sample judgments JSONL (long shape, with closer)."""
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        main(["summarize", "--judgments", str(SAMPLES / "judgments.jsonl"), "--a", "base", "--b", "tuned", "--json"])
    out = json.loads(buffer.getvalue())
    assert out["closer"] == {"base": 1, "tuned": 7, "Nothing": 2}
    return {k: out[k] for k in STAT_KEYS}


def test_long_csv_without_closer_gives_the_same_statistics_and_no_closer_table(tmp_path, capsys, sample_stats):
    path = write_csv(tmp_path / "scores.csv", ["id", "model", "score"], [[j["id"], j["model"], j["score"]]
                                                                          for j in JUDGMENTS])
    out = summarize_json(capsys, path)
    assert {k: out[k] for k in STAT_KEYS} == sample_stats and out["closer"] is None
    main(["summarize", "--judgments", str(path), "--a", "base", "--b", "tuned", "--out", str(tmp_path / "t")])
    printed = capsys.readouterr().out
    assert "t-Test: Paired Two Sample for Means" in printed and "-2.86199" in printed
    assert "Closer" not in printed
    assert "Closer" not in (tmp_path / "t" / "statistics.md").read_text(encoding="utf-8")
    stats_csv = (tmp_path / "t" / "statistics.csv").read_text(encoding="utf-8-sig")
    assert "Closer" not in stats_csv and "t Stat,-2.861994276017172," in stats_csv
    assert json.loads((tmp_path / "t" / "statistics.json").read_text())["closer"] is None
    with open(tmp_path / "t" / "per_question.csv", encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "base score", "tuned score", "reason"] and table[1] == ["q01", "2", "4", ""]


def test_wide_csv_with_question_column(tmp_path, capsys, sample_stats):
    rows = [[q, QUESTIONS[q], SCORE[q, "base"], SCORE[q, "tuned"], f"note {q}"] for q in IDS]
    path = write_csv(tmp_path / "wide.csv", ["id", "question", "base score", "tuned score", "reason"], rows)
    out = summarize_json(capsys, path)
    assert {k: out[k] for k in STAT_KEYS} == sample_stats and out["closer"] is None
    main(["summarize", "--judgments", str(path), "--a", "base", "--b", "tuned", "--out", str(tmp_path / "t")])
    md = (tmp_path / "t" / "per_question.md").read_text(encoding="utf-8")
    assert "| id | question | base score | tuned score | reason |" in md
    assert f"| q01 | {QUESTIONS['q01']} | 2 | 4 | note q01 |" in md  # the question text from the file itself


def test_wide_xlsx_sheet_with_closer_and_spreadsheet_headers(tmp_path, capsys, sample_stats):
    # Column headers as the team typed them (no id column: questions are numbered), scores as floats, one
    # model's column named after the model itself.
    rows = [[SCORE[q, "base"] * 1.0, SCORE[q, "tuned"], CLOSER[q].replace("base", "기본 모델")] for q in IDS]
    path = write_xlsx(tmp_path / "rnd.xlsx", "평가", ["기본 모델", "tuned_score", "closer"], rows)
    out = summarize_json(capsys, f"{path}#평가", a="기본 모델", b="tuned")
    assert {k: out[k] for k in STAT_KEYS} == sample_stats
    assert out["closer"] == {"기본 모델": 1, "tuned": 7, "Nothing": 2}
    main(["summarize", "--judgments", f"{path}#평가", "--a", "기본 모델", "--b", "tuned"])
    printed = capsys.readouterr().out
    assert "Closer to the reference" in printed
    main(["summarize", "--judgments", f"{path}#평가", "--a", "기본 모델", "--b", "tuned", "--out", str(tmp_path / "t")])
    with open(tmp_path / "t" / "per_question.csv", encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "기본 모델 score", "tuned score", "closer", "reason"]
    assert [r[0] for r in table[1:]] == [str(i) for i in range(1, 11)] and table[1][1:4] == ["2", "4", "tuned"]


@pytest.mark.parametrize("header,rows,problem", [
    (["id", "base", "tuned"], [["q1", 2, 4], ["q2", 3, "high"]],
     "wide.xlsx#s:3: field 'tuned': expected a number, got 'high'"),
    (["id", "base", "tuned"], [["q1", 2, 4], ["q2", 3, None]], "wide.xlsx#s:3: field 'tuned': missing or null"),
    (["id", "base", "tuned", "closer"], [["q1", 2, 4, "tuned"], ["q2", 3, 4, "B"]],
     "wide.xlsx#s:3: field 'closer': expected 'base', 'tuned' or 'Nothing', got 'B'"),
    (["id", "base", "tuned"], [["q1", 2, 4], ["q1", 3, 4]], "wide.xlsx#s:3: field 'id': duplicate id 'q1' (first at "),
    (["id", "base", "fine-tuned"], [["q1", 2, 4], ["q2", 3, 4]],
     "no score column 'tuned' (or 'tuned score') (wide: one row per question); the file has columns "
     "['id', 'base', 'fine-tuned']"),
])
def test_wrong_cells_name_file_row_and_column(tmp_path, header, rows, problem):
    path = write_xlsx(tmp_path / "wide.xlsx", "s", header, rows)
    with pytest.raises(SystemExit) as e:
        main(["summarize", "--judgments", f"{path}#s", "--a", "base", "--b", "tuned"])
    assert problem in e.value.code and "\n" not in e.value.code


def test_long_csv_errors_name_the_line(tmp_path):
    path = write_csv(tmp_path / "long.csv", ["id", "model", "score", "closer"],
                     [["q1", "base", 2, "tuned"], ["q1", "tuned", 4, "base"]])
    with pytest.raises(SystemExit) as e:
        main(["summarize", "--judgments", str(path), "--a", "base", "--b", "tuned"])
    assert "long.csv:3: field 'closer': 'base' disagrees with 'tuned' at " in e.value.code


def test_help_shows_the_accepted_shapes(capsys):
    with pytest.raises(SystemExit):
        main(["summarize", "--help"])
    out = capsys.readouterr().out
    for text in ("id | model | score | closer* | reason*", "id* | question* | base score | tuned score | closer*",
                 ".xlsx", "CSV", "without a closer column there is no closer table"):
        assert text in out
