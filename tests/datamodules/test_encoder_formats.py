"""Encoder data from spreadsheet-like sources: delimited multi-label columns (CSV, Parquet, .xlsx), numeric columns
as text fields, and .xlsx workbooks, each error naming file:line (the spreadsheet row, header = row 1) and field."""

import pytest

from datamodules.encoder import EncoderDataModule
from datamodules.records import RecordError, load_record_file

LABELS = ["porosity", "spatter", "crack"]


def _dm(tmp_path, tokenizer, path, task="multilabel", text_fields=("notes",), **kw):
    dm = EncoderDataModule(task=task, text_fields=list(text_fields), label_fields=["defects"],
                           labels=LABELS if task != "regression" else None, train_file=str(path), val_file=str(path),
                           cache_dir=str(tmp_path / "cache"), **kw)
    dm.tokenizer = tokenizer
    return dm


def _targets(dm):
    dm.setup("fit")
    return sorted((r["id"], tuple(r["labels"])) for r in dm.splits["train"])  # val_file: the same file, no split


def _xlsx(path, rows, sheet=None, first_sheet_rows=None):
    """Write ``rows`` (lists, the first the header) as a workbook; with ``sheet``, as a second sheet of that name."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "first"
    for row in first_sheet_rows or ([] if sheet else rows):
        book.active.append(row)
    if sheet:
        other = book.create_sheet(sheet)
        for row in rows:
            other.append(row)
    book.save(path)
    return path


# ----- delimited multi-label column ----------------------------------------------------------------------------
CSV = ("id,notes,defects\n"
       + "".join(f"r{i},bead {i},{d}\n" for i, d in enumerate(
           ["porosity|spatter", "", "crack", " spatter | crack", "porosity", "", "spatter", "crack|porosity", "", "crack"])))
EXPECTED = {"r0": (1, 1, 0), "r1": (0, 0, 0), "r2": (0, 0, 1), "r3": (0, 1, 1), "r4": (1, 0, 0), "r5": (0, 0, 0),
            "r6": (0, 1, 0), "r7": (1, 0, 1), "r8": (0, 0, 0), "r9": (0, 0, 1)}


def test_csv_label_column_is_split_by_the_delimiter(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    got = _targets(_dm(tmp_path, tokenizer, path))
    assert got == sorted((k, tuple(float(x) for x in v)) for k, v in EXPECTED.items())


def test_other_delimiter_and_parquet(tmp_path, tokenizer):
    import pandas as pd

    path = tmp_path / "train.parquet"
    pd.DataFrame({"id": [f"r{i}" for i in range(6)], "notes": [f"bead {i}" for i in range(6)],
                  "defects": ["porosity;crack", "", "spatter", "crack", "porosity", "spatter;porosity"]}
                 ).to_parquet(path)
    dm = _dm(tmp_path, tokenizer, path, label_delimiter=";")
    assert dict(_targets(dm))["r0"] == (1.0, 0.0, 1.0)


@pytest.mark.parametrize("cell, message", [
    ("porosity|slag", "label 'slag' is not in the declared labels"),
    ("porosity||crack", "empty label in 'porosity||crack'"),
])
def test_bad_delimited_labels_name_file_line_and_label(tmp_path, tokenizer, cell, message):
    path = tmp_path / "train.csv"
    path.write_text(CSV.replace("r3,bead 3, spatter | crack", f"r3,bead 3,{cell}"))  # line 5
    with pytest.raises(RecordError) as e:
        _dm(tmp_path, tokenizer, path).setup("fit")
    assert str(e.value).startswith(f"{path}:5: field 'defects': ") and message in str(e.value)


def test_delimiter_null_takes_lists_only(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text(CSV.replace(",\n", ",crack\n"))  # no empty cells: those would be missing values here
    with pytest.raises(RecordError, match=r"train.csv:2: field 'defects': expected a list of labels, got str "
                                          r"'porosity\|spatter'"):
        _dm(tmp_path, tokenizer, path, label_delimiter=None).setup("fit")


# ----- numeric columns as text fields --------------------------------------------------------------------------
def test_a_numeric_text_field_is_written_with_its_name(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text("id,current,voltage,defects\n" + "".join(f"r{i},{180 + i / 2},{20 + i},crack\n" for i in range(10)))
    dm = _dm(tmp_path, tokenizer, path, text_fields=["current"])
    dm.setup("fit")
    row = next(r for r in dm.splits["train"] if r["id"] == "r5")
    assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == "current: 182.5"
    both = _dm(tmp_path, tokenizer, path, text_fields=["current", "voltage"])
    both.setup("fit")
    row = next(r for r in both.splits["train"] if r["id"] == "r5")
    assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == "current: 182.5\nvoltage: 25"


def test_empty_or_nan_numeric_text_field_names_file_line(tmp_path, tokenizer):
    import pandas as pd

    path = tmp_path / "train.csv"
    path.write_text("id,current,defects\nr0,180.5,crack\nr1,,crack\nr2,181,crack\n")
    with pytest.raises(RecordError, match=r"train.csv:3: field 'current': missing or null"):
        _dm(tmp_path, tokenizer, path, text_fields=["current"]).setup("fit")
    path = tmp_path / "train.parquet"
    pd.DataFrame({"id": ["r0", "r1", "r2"], "current": [180.5, float("nan"), 181.0],
                  "defects": ["crack"] * 3}).to_parquet(path)
    with pytest.raises(RecordError, match=r"train.parquet row 2: field 'current': "):
        _dm(tmp_path, tokenizer, path, text_fields=["current"]).setup("fit")


# ----- .xlsx ---------------------------------------------------------------------------------------------------
ROWS = [["id", "notes", "current", "defects"]] + [[f"r{i}", f"bead {i}", 180 + i, d] for i, d in enumerate(
    ["porosity|spatter", None, "crack", "spatter|crack", "porosity", None, "spatter", "crack|porosity", None, "crack"])]


def test_xlsx_first_sheet_and_named_sheet(tmp_path, tokenizer):
    path = _xlsx(tmp_path / "train.xlsx", ROWS[:3] + [[None] * 4] + ROWS[3:])  # an empty row 4 is skipped
    rf = load_record_file(path)
    assert len(rf.dataset) == 10 and rf.locate(2) == f"{path}:5"
    assert rf.dataset["current"][:2] == [180, 181]
    got = _targets(_dm(tmp_path, tokenizer, path))
    assert dict(got)["r0"] == (1.0, 1.0, 0.0) and dict(got)["r1"] == (0.0, 0.0, 0.0)
    book = _xlsx(tmp_path / "book.xlsx", ROWS, sheet="runs", first_sheet_rows=[["other"], ["x"]])
    rf = load_record_file(f"{book}#runs")
    assert rf.dataset.column_names == ROWS[0] and rf.locate(0) == f"{book}#runs:2"
    with pytest.raises(RecordError, match=r"book.xlsx: no sheet 'nope'; the workbook has sheets \['first', 'runs'\]"):
        load_record_file(f"{book}#nope")


def test_xlsx_errors_name_the_spreadsheet_row(tmp_path, tokenizer):
    rows = [list(r) for r in ROWS]
    rows[4][3] = "crack|slag"  # row 5 of the sheet (row 1 is the header)
    path = _xlsx(tmp_path / "train.xlsx", rows)
    with pytest.raises(RecordError, match=r"train.xlsx:5: field 'defects': label 'slag' is not in"):
        _dm(tmp_path, tokenizer, path).setup("fit")
    rows = [list(r) for r in ROWS]
    rows[7][1] = None  # an empty text cell at row 8
    path = _xlsx(tmp_path / "text.xlsx", rows)
    with pytest.raises(RecordError, match=r"text.xlsx:8: field 'notes': missing or null"):
        _dm(tmp_path, tokenizer, path).setup("fit")
    rows = [list(r) for r in ROWS]
    rows[3][2] = "high"  # a number column with one text cell: read as text, so regression names it
    path = _xlsx(tmp_path / "reg.xlsx", rows)
    reg = EncoderDataModule(task="regression", text_fields=["notes"], label_fields=["current"], train_file=str(path),
                            val_file=str(path), cache_dir=str(tmp_path / "cache"))
    reg.tokenizer = tokenizer
    with pytest.raises(RecordError, match=r"reg.xlsx:4: field 'current': expected a number, got 'high'"):
        reg.setup("fit")
    path = _xlsx(tmp_path / "head.xlsx", [["id", None, "defects"], ["r0", "x", "crack"]])
    with pytest.raises(RecordError, match=r"head.xlsx:1: column 2 has no name in the header row"):
        load_record_file(path)
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    with pytest.raises(RecordError, match=r"broken.xlsx: cannot be read as xlsx"):
        load_record_file(tmp_path / "broken.xlsx")
