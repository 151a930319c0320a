"""The sample-data generators are deterministic and the shipped JSONL files are what they produce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_script as _load_script

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples"
SPLITS = ("train", "val", "test")
DEFECTS = ["porosity", "lack_of_fusion", "humping", "cracking", "spatter", "undercut"]




@pytest.fixture(scope="module")
def waam_script():
    return _load_script("make_waam_data")


@pytest.fixture(scope="module")
def sklearn_script():
    return _load_script("make_sklearn_data")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def waam() -> dict[str, list[dict]]:
    return {s: _read_jsonl(SAMPLES / "waam" / f"{s}.jsonl") for s in SPLITS}


def _same_bytes(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between {a} and {b}"


# --- WAAM ------------------------------------------------------------------------------------------


def test_waam_generator_is_deterministic(waam_script, tmp_path):
    waam_script.main(["--n", "120", "--seed", "3", "--out", str(tmp_path / "a")])
    waam_script.main(["--n", "120", "--seed", "3", "--out", str(tmp_path / "b")])
    _same_bytes(tmp_path / "a", tmp_path / "b", [f"{s}.jsonl" for s in SPLITS])
    sizes = [len(_read_jsonl(tmp_path / "a" / f"{s}.jsonl")) for s in SPLITS]
    assert sizes == [100, 10, 10]
    waam_script.main(["--n", "120", "--seed", "4", "--out", str(tmp_path / "c")])
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_waam_shipped_files_match_default_generation(waam_script, tmp_path):
    waam_script.main(["--out", str(tmp_path)])
    _same_bytes(tmp_path, SAMPLES / "waam", [f"{s}.jsonl" for s in SPLITS])


def test_waam_split_sizes_ids_and_file_size(waam):
    assert [len(waam[s]) for s in SPLITS] == [2000, 200, 200]
    ids = [r["id"] for s in SPLITS for r in waam[s]]
    assert len(ids) == len(set(ids)) == 2400
    for s in SPLITS:
        assert (SAMPLES / "waam" / f"{s}.jsonl").stat().st_size < 1024 * 1024


def test_waam_record_schema_and_ranges(waam):
    ranges = {
        "current_a": (90, 260),
        "voltage_v": (14, 30),
        "travel_speed_mm_s": (3, 15),
        "wire_feed_m_min": (3, 12),
        "interlayer_temp_c": (60, 350),
        "gas_flow_l_min": (6, 25),
        "layer_length_mm": (100, 300),
    }
    for r in (r for s in SPLITS for r in waam[s]):
        for key, (lo, hi) in ranges.items():
            assert lo <= r[key] <= hi, (r["id"], key, r[key])
            assert round(r[key], 1) == r[key]
        assert isinstance(r["note"], str) and r["note"]
        assert r["text"].startswith(f"current {r['current_a']:.1f} A, voltage {r['voltage_v']:.1f} V, ")
        assert r["text"].endswith(f"note: {r['note']}.")


def test_waam_targets_are_consistent(waam):
    for r in (r for s in SPLITS for r in waam[s]):
        heat = round(0.8 * r["voltage_v"] * r["current_a"] / r["travel_speed_mm_s"], 2)
        assert r["heat_input_j_mm"] == heat, r["id"]
        assert r["energy_j"] == round(r["heat_input_j_mm"] * r["layer_length_mm"], 1), r["id"]
        assert r["defects"] == [d for d in DEFECTS if d in r["defects"]], "unknown label or wrong order"
        assert r["anomaly"] == ("abnormal" if r["defects"] else "normal")
        assert r["primary_defect"] == (r["defects"][0] if r["defects"] else "none")


def test_waam_label_balance(waam):
    train = waam["train"]
    n = len(train)
    for d in DEFECTS:
        freq = sum(d in r["defects"] for r in train) / n
        assert 0.05 <= freq <= 0.50, (d, freq)
    clean = sum(not r["defects"] for r in train) / n
    assert 0.35 <= clean <= 0.65, clean
    primaries = {r["primary_defect"] for r in train}
    assert primaries == {"none", *DEFECTS}


def test_waam_notes_are_partially_informative(waam_script, waam):
    neutral = set(waam_script.NEUTRAL_NOTES)
    train = waam["train"]
    defective = [r for r in train if r["defects"]]
    clean = [r for r in train if not r["defects"]]
    assert all(r["note"] in neutral for r in clean)
    mentions = sum(r["note"] not in neutral for r in defective) / len(defective)
    assert 0.6 <= mentions <= 0.95, mentions
    assert any(r["note"] in neutral for r in defective), "neutral notes must also occur with defects"


# --- scikit-learn tabular data ---------------------------------------------------------------------


def test_sklearn_generator_is_deterministic_and_matches_shipped(sklearn_script, tmp_path):
    sklearn_script.main(["--out", str(tmp_path / "a")])
    sklearn_script.main(["--out", str(tmp_path / "b")])
    names = [f"{s}.jsonl" for s in SPLITS]
    for ds in ("diabetes", "breast_cancer"):
        _same_bytes(tmp_path / "a" / ds, tmp_path / "b" / ds, names)
        _same_bytes(tmp_path / "a" / ds, SAMPLES / ds, names)


@pytest.mark.parametrize(
    "dataset,total,target,sizes",
    [
        ("diabetes", 442, "progression", [309, 66, 67]),
        ("breast_cancer", 569, "diagnosis", [398, 85, 86]),
    ],
)
def test_sklearn_splits(dataset, total, target, sizes):
    splits = {s: _read_jsonl(SAMPLES / dataset / f"{s}.jsonl") for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == sizes
    assert sum(sizes) == total
    id_sets = [{r["id"] for r in splits[s]} for s in SPLITS]
    assert sum(len(x) for x in id_sets) == total == len(set().union(*id_sets)), "ids overlap between splits"
    for r in (r for s in SPLITS for r in splits[s]):
        assert set(r) == {"id", "text", target}
        assert isinstance(r["text"], str) and "e-" not in r["text"]
    if target == "diagnosis":
        assert {r[target] for r in splits["train"]} == {"malignant", "benign"}
        assert all(r["text"].startswith("mean radius ") and r["text"].count(", ") == 29 for r in splits["train"])
    else:
        assert all(isinstance(r[target], float) for r in splits["train"])
        assert all(r["text"].startswith("age ") and "blood sugar " in r["text"] for r in splits["train"])


def test_sklearn_text_values_match_source(sklearn_script):
    from sklearn.datasets import load_breast_cancer, load_diabetes

    rec = {r["id"]: r for s in SPLITS for r in _read_jsonl(SAMPLES / "diabetes" / f"{s}.jsonl")}["diabetes-000"]
    assert rec["text"] == (
        "age 59, sex 2, bmi 32.1, blood pressure 101.0, total cholesterol 157, ldl 93.2, hdl 38.0, "
        "cholesterol ratio 4.0, log triglycerides 4.86, blood sugar 87"
    )
    assert rec["progression"] == float(load_diabetes(scaled=False).target[0])
    bc = {r["id"]: r for s in SPLITS for r in _read_jsonl(SAMPLES / "breast_cancer" / f"{s}.jsonl")}
    ds = load_breast_cancer()
    first = bc["breast_cancer-000"]
    assert first["text"].startswith("mean radius 17.99, mean texture 10.38, mean perimeter 122.8, mean area 1001,")
    assert first["diagnosis"] == str(ds.target_names[ds.target[0]]) == "malignant"
    for i in range(0, 569, 37):
        r = bc[f"breast_cancer-{i:03d}"]
        values = [float(part.rsplit(" ", 1)[1]) for part in r["text"].split(", ")]
        assert values == pytest.approx(list(ds.data[i]), rel=1e-3, abs=1e-9)
