#!/usr/bin/env python
"""Serialize two real tabular data sets bundled with scikit-learn (no download) as text records.

* diabetes (442 patients, regression): ``progression`` = disease progression one year after baseline;
  text like "age 59, sex 2, bmi 32.1, blood pressure 101.0, total cholesterol 157, ldl 93.2, hdl 38.0,
  cholesterol ratio 4.0, log triglycerides 4.86, blood sugar 87" (raw, unscaled values).
* breast_cancer (569 tumours, binary classification): ``diagnosis`` = "malignant" | "benign"; text like
  "mean radius 17.99, mean texture 10.38, ..." over all 30 features (4 significant digits).

Each record is ``{"id", "text", <target>}``; the rows are shuffled with numpy's ``default_rng(seed)``
and split 70/15/15 into ``<out>/<dataset>/{train,val,test}.jsonl``::

    python scripts/make_sklearn_data.py                # into data/samples/{diabetes,breast_cancer}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes

SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)

# sklearn column -> (name in the text, number of decimals; 0 = integer)
DIABETES_COLUMNS = [
    ("age", "age", 0),
    ("sex", "sex", 0),
    ("bmi", "bmi", 1),
    ("bp", "blood pressure", 2),
    ("s1", "total cholesterol", 0),
    ("s2", "ldl", 1),
    ("s3", "hdl", 1),
    ("s4", "cholesterol ratio", 2),
    ("s5", "log triglycerides", 2),
    ("s6", "blood sugar", 0),
]


def fmt_decimals(x: float, decimals: int) -> str:
    """Round to ``decimals`` places; drop trailing zeros but keep one decimal (101.0, 83.67, 4.86)."""
    if decimals == 0:
        return str(int(round(float(x))))
    s = f"{float(x):.{decimals}f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def fmt_significant(x: float) -> str:
    """Four significant digits, never in exponent notation (17.99, 122.8, 1001, 0.1184, 0.0008948)."""
    s = f"{float(x):.4g}"
    if "e" in s:  # not reached on this data set, kept for safety
        s = np.format_float_positional(float(x), precision=4, unique=False, fractional=False, trim="-")
    return s


def diabetes_records() -> list[dict]:
    ds = load_diabetes(scaled=False)
    names = list(ds.feature_names)
    cols = [names.index(c) for c, _, _ in DIABETES_COLUMNS]
    records = []
    for i, (row, y) in enumerate(zip(ds.data, ds.target)):
        text = ", ".join(f"{label} {fmt_decimals(row[j], nd)}" for j, (_, label, nd) in zip(cols, DIABETES_COLUMNS))
        records.append({"id": f"diabetes-{i:03d}", "text": text, "progression": float(y)})
    return records


def breast_cancer_records() -> list[dict]:
    ds = load_breast_cancer()
    names = [str(n) for n in ds.feature_names]
    classes = [str(c) for c in ds.target_names]  # ['malignant', 'benign']
    records = []
    for i, (row, y) in enumerate(zip(ds.data, ds.target)):
        text = ", ".join(f"{n} {fmt_significant(v)}" for n, v in zip(names, row))
        records.append({"id": f"breast_cancer-{i:03d}", "text": text, "diagnosis": classes[int(y)]})
    return records


def split_sizes(n: int) -> dict[str, int]:
    n_train = int(round(FRACTIONS[0] * n))
    n_val = int(round(FRACTIONS[1] * n))
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def shuffle_split(records: list[dict], seed: int) -> dict[str, list[dict]]:
    order = np.random.default_rng(seed).permutation(len(records))
    shuffled = [records[int(k)] for k in order]
    sizes, out, start = split_sizes(len(records)), {}, 0
    for s in SPLITS:
        out[s] = shuffled[start : start + sizes[s]]
        start += sizes[s]
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def summarize(name: str, splits: dict[str, list[dict]], target: str) -> str:
    lines = [f"{name}: " + ", ".join(f"{s}={len(r)}" for s, r in splits.items())]
    for s, recs in splits.items():
        values = [r[target] for r in recs]
        if isinstance(values[0], str):
            counts = {v: values.count(v) for v in sorted(set(values))}
            desc = ", ".join(f"{k} {c} ({c / len(values):.3f})" for k, c in counts.items())
        else:
            desc = f"mean {np.mean(values):.2f}, std {np.std(values):.2f}"
        lines.append(f"  [{s}] {target}: {desc}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Serialize sklearn's diabetes (regression) and breast cancer (binary) data sets as text JSONL "
            "with a seeded 70/15/15 train/val/test split. Offline, deterministic in --seed."
        )
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default: 0)")
    p.add_argument(
        "--out", type=Path, default=Path("data/samples"), help="parent output directory (default: data/samples)"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[dict]]]:
    args = build_parser().parse_args(argv)
    result = {}
    for name, records, target in (
        ("diabetes", diabetes_records(), "progression"),
        ("breast_cancer", breast_cancer_records(), "diagnosis"),
    ):
        splits = shuffle_split(records, args.seed)
        for s, recs in splits.items():
            write_jsonl(args.out / name / f"{s}.jsonl", recs)
        print(summarize(name, splits, target))
        result[name] = splits
    print(f"  written to {args.out}/{{diabetes,breast_cancer}}")
    return result


if __name__ == "__main__":
    main()
