#!/usr/bin/env python
"""Generate the synthetic wire-arc additive manufacturing (WAAM) process data set.

Each record is one deposited layer: GMAW/CMT process settings, an operator note, the record serialized
as one English sentence (``text``, the encoder input) and the targets of the four encoder tasks:

* ``anomaly``          binary      "normal" | "abnormal"
* ``defects``          multi-label subset of DEFECTS (canonical order)
* ``primary_defect``   multi-class first defect in canonical order, or "none"
* ``heat_input_j_mm``  regression  0.8 * U * I / v            (arc efficiency 0.8, J/mm)
* ``energy_j``         regression  heat_input_j_mm * layer_length_mm

Defects follow physically motivated rules on the process values (shielding gas, heat input, travel
speed, interlayer temperature, arc length vs wire feed), then each label is flipped with a small
probability. The operator note mentions a visible symptom of a present defect with probability ~0.7,
so the text carries some signal beyond the numbers.

The output is fully determined by --seed and --n (numpy ``default_rng`` only)::

    python scripts/make_waam_data.py                    # 2000/200/200 into data/samples/waam
    python scripts/make_waam_data.py --n 240 --out /tmp/waam
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEFECTS = ["porosity", "lack_of_fusion", "humping", "cracking", "spatter", "undercut"]
SPLITS = ("train", "val", "test")
ARC_EFFICIENCY = 0.8
LABEL_FLIP_PROB = 0.03
SYMPTOM_PROB = 0.7

# Several paraphrases of a visible symptom per defect.
SYMPTOMS = {
    "porosity": [
        "small pores on the bead",
        "gas pockets at the layer start",
        "pinholes in the bead",
        "blowholes in the last pass",
        "porous bead surface",
    ],
    "lack_of_fusion": [
        "cold lap at the bead toe",
        "bead not wetting the wall",
        "unfused gap below the bead",
        "bead looks cold and ropy",
    ],
    "humping": [
        "wavy bead with humps",
        "humps along the bead",
        "uneven bead height",
        "bead breaks into humps",
    ],
    "cracking": [
        "hairline crack after cooling",
        "centerline crack in the bead",
        "cracks at the end crater",
        "crack at the layer boundary",
    ],
    "spatter": [
        "lots of spatter on the plate",
        "spatter on the nozzle",
        "crackling arc, spatter",
        "heavy spatter",
    ],
    "undercut": [
        "groove along the bead edge",
        "undercut at the bead toe",
        "notched wall edges",
        "bead edges eaten away",
    ],
}

NEUTRAL_NOTES = [
    "stable arc, nothing unusual",
    "layer deposited as planned",
    "no remarks",
    "smooth bead",
    "all good",
    "arc sounded normal",
    "new wire spool",
    "visual check ok",
    "bead looks fine",
    "no issues",
    "torch angle checked",
    "no interruption",
]


def _clip_round(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round(np.clip(x, lo, hi), 1)


def defect_rules(
    current: np.ndarray,
    voltage: np.ndarray,
    travel: np.ndarray,
    wire_feed: np.ndarray,
    interlayer: np.ndarray,
    gas: np.ndarray,
    heat_input: np.ndarray,
) -> dict[str, np.ndarray]:
    """Noise-free defect indicators from the process values (boolean arrays keyed by defect)."""
    # Arc length proxy: the voltage that suits this wire feed speed for a short/CMT arc.
    suitable_voltage = 12.5 + 1.45 * wire_feed
    arc_mismatch = np.abs(voltage - suitable_voltage)
    return {
        # Too little shielding gas lets air into the arc.
        "porosity": gas < 9.5,
        # Too little energy per unit length, worse on a cold part.
        "lack_of_fusion": (heat_input < 160.0) | ((heat_input < 200.0) & (interlayer < 100.0)),
        # Fast travel with a high current: the weld pool cannot follow.
        "humping": (travel > 12.0) & (current > 195.0),
        # Hot part between layers: solidification/liquation cracking.
        "cracking": interlayer > 320.0,
        # Arc too short or too long for the wire feed.
        "spatter": arc_mismatch > 3.6,
        # High voltage (wide arc) and fast travel melt the toe without filling it.
        "undercut": (voltage > 25.0) & (travel > 11.0),
    }


def generate_records(n: int, seed: int) -> list[dict]:
    """Generate ``n`` records, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    # Wire feed is what the operator sets; the current follows it (synergic line) with scatter.
    wire_feed = _clip_round(rng.uniform(3.0, 12.0, n), 3.0, 12.0)
    current = _clip_round(90.0 + (wire_feed - 3.0) * (170.0 / 9.0) + rng.normal(0.0, 14.0, n), 90.0, 260.0)
    voltage = _clip_round(12.5 + 1.45 * wire_feed + rng.normal(0.0, 2.2, n), 14.0, 30.0)
    travel = _clip_round(rng.uniform(3.0, 15.0, n), 3.0, 15.0)
    interlayer = _clip_round(rng.uniform(60.0, 350.0, n), 60.0, 350.0)
    # Mostly a sensible gas flow, sometimes set too low.
    gas_low = rng.random(n) < 0.10
    gas = _clip_round(np.where(gas_low, rng.uniform(6.0, 10.5, n), rng.uniform(10.0, 25.0, n)), 6.0, 25.0)
    length = _clip_round(rng.uniform(100.0, 300.0, n), 100.0, 300.0)

    heat_input = np.array(
        [round(ARC_EFFICIENCY * float(u) * float(i) / float(v), 2) for u, i, v in zip(voltage, current, travel)]
    )
    rules = defect_rules(current, voltage, travel, wire_feed, interlayer, gas, heat_input)
    truth = np.stack([rules[d] for d in DEFECTS], axis=1)
    flips = rng.random((n, len(DEFECTS))) < LABEL_FLIP_PROB
    labels = truth ^ flips

    mention = rng.random((n, len(DEFECTS))) < SYMPTOM_PROB
    symptom_pick = rng.integers(0, 1_000_000, (n, len(DEFECTS)))
    neutral_pick = rng.integers(0, len(NEUTRAL_NOTES), n)

    records = []
    for k in range(n):
        defects = [d for j, d in enumerate(DEFECTS) if labels[k, j]]
        phrases = [
            SYMPTOMS[d][symptom_pick[k, j] % len(SYMPTOMS[d])]
            for j, d in enumerate(DEFECTS)
            if labels[k, j] and mention[k, j]
        ]
        note = "; ".join(phrases) if phrases else NEUTRAL_NOTES[neutral_pick[k]]
        hi = float(heat_input[k])
        rec = {
            "id": f"waam-{k + 1:05d}",
            "current_a": float(current[k]),
            "voltage_v": float(voltage[k]),
            "travel_speed_mm_s": float(travel[k]),
            "wire_feed_m_min": float(wire_feed[k]),
            "interlayer_temp_c": float(interlayer[k]),
            "gas_flow_l_min": float(gas[k]),
            "layer_length_mm": float(length[k]),
            "note": note,
        }
        rec["text"] = (
            f"current {rec['current_a']:.1f} A, voltage {rec['voltage_v']:.1f} V, "
            f"travel speed {rec['travel_speed_mm_s']:.1f} mm/s, wire feed {rec['wire_feed_m_min']:.1f} m/min, "
            f"interlayer temperature {rec['interlayer_temp_c']:.1f} C, shielding gas {rec['gas_flow_l_min']:.1f} L/min, "
            f"layer length {rec['layer_length_mm']:.1f} mm. note: {note}."
        )
        rec["heat_input_j_mm"] = hi
        rec["energy_j"] = round(hi * rec["layer_length_mm"], 1)
        rec["defects"] = defects
        rec["anomaly"] = "abnormal" if defects else "normal"
        rec["primary_defect"] = defects[0] if defects else "none"
        records.append(rec)
    return records


def split_sizes(n: int) -> dict[str, int]:
    """train/val/test sizes in the proportion 2000/200/200."""
    n_val = n // 12
    n_test = n // 12
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def summarize(splits: dict[str, list[dict]]) -> str:
    lines = ["WAAM sample data"]
    lines.append("  counts: " + ", ".join(f"{s}={len(r)}" for s, r in splits.items()))
    for s, recs in splits.items():
        n = max(len(recs), 1)
        freqs = ", ".join(f"{d} {sum(d in r['defects'] for r in recs) / n:.3f}" for d in DEFECTS)
        clean = sum(not r["defects"] for r in recs) / n
        prim = {}
        for r in recs:
            prim[r["primary_defect"]] = prim.get(r["primary_defect"], 0) + 1
        lines.append(f"  [{s}] label frequency: {freqs}")
        lines.append(f"  [{s}] no defect {clean:.3f}; primary_defect counts: {dict(sorted(prim.items()))}")
        lines.append(
            f"  [{s}] mean heat_input_j_mm {np.mean([r['heat_input_j_mm'] for r in recs]):.2f}, "
            f"mean energy_j {np.mean([r['energy_j'] for r in recs]):.1f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Generate the synthetic WAAM process data (train/val/test JSONL, split 2000/200/200 in "
            "proportion). Deterministic in --seed and --n."
        )
    )
    p.add_argument("--seed", type=int, default=0, help="seed of numpy's default_rng (default: 0)")
    p.add_argument("--n", type=int, default=2400, help="total number of records (default: 2400)")
    p.add_argument(
        "--out", type=Path, default=Path("data/samples/waam"), help="output directory (default: data/samples/waam)"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = build_parser().parse_args(argv)
    if args.n < 12:
        raise SystemExit("--n must be at least 12")
    records = generate_records(args.n, args.seed)
    sizes = split_sizes(args.n)
    splits, start = {}, 0
    for s in SPLITS:
        splits[s] = records[start : start + sizes[s]]
        start += sizes[s]
        write_jsonl(args.out / f"{s}.jsonl", splits[s])
    print(summarize(splits))
    print(f"  written to {args.out}")
    return splits


if __name__ == "__main__":
    main()
