#!/usr/bin/env python
"""Generate the PPE-safety sample data of the vision-language task (MISSION §3): drawn scenes, a labelled test
set, operator feedback on hard cases and validation QA records.

A PPE monitor asks a vision-language model "Raise an alert if any worker is missing a helmet or a safety
vest." This script draws small construction-site scenes with PIL only (no model, no downloads), so that
everything about an image is known exactly:

* a background: sky (clouds, distant buildings, a crane) or a concrete / brick wall (panels, windows), and a
  ground of dirt, concrete or asphalt with a few props (traffic cones, barrels, crates);
* one to five workers standing side by side, numbered from left to right, each a simple figure (head circle,
  torso trapezoid, arms, legs, boots) with, independently:

  - ``helmet``: a hard hat (dome and brim) in yellow, white, orange, red or blue; without one the head shows
    hair;
  - ``torso``: ``vest`` (fluorescent yellow or fluorescent orange high-visibility vest with two horizontal
    reflective silver stripes, worn over a long-sleeved shirt), ``lookalike`` (an orange or yellow T-shirt
    WITHOUT reflective stripes, short sleeves: the classic false positive) or ``plain`` (a dull blue, grey,
    brown or green long-sleeved shirt).

A worker complies iff ``helmet and torso == "vest"``; a scene is compliant iff every worker complies;
``alert = not compliant``. Each split is balanced: half the scenes compliant, half not (a non-compliant
scene has one or more violators, each missing the helmet, the vest or both).

Files written to ``--out`` (default ``data/samples/ppe``); every ``image`` is a path RELATIVE TO THE JSONL
FILE'S DIRECTORY (``images/ppe-0001.png``); all files are JSON Lines, one object per line:

``images/ppe-NNNN.png``
    the scenes, RGB PNG, 160x128 to 224x168 pixels.
``scenes.jsonl``
    ground truth of every image: ``{"id", "image", "split": "train"|"val"|"test", "width", "height",
    "workers": [{"helmet": bool, "helmet_color": str|null, "torso": "vest"|"lookalike"|"plain",
    "torso_color": str, "box": [x0, y0, x1, y1], "head_box": [...], "torso_box": [...]}], "compliant": bool,
    "alert": bool}``. Boxes are pixel bounds with exclusive ends (``Image.crop(box)`` gives the region):
    ``box`` the whole figure, ``head_box`` the head with its hat or hair, ``torso_box`` a rectangle covered
    entirely by the torso garment (vest colour and stripes, or the shirt colour).
``test.jsonl``
    the labelled test set (test split, balanced): ``{"id", "image", "scenario", "question", "answer",
    "alert"}``. ``question`` is the monitoring prompt (the scenario plus the instruction to end with
    "Alert: True" or "Alert: False"), ``answer`` a reference answer written from the ground truth (every
    worker's helmet and torso, the violations, the ``Alert:`` line).
``feedback.jsonl``
    operator feedback on hard cases of the train split, half ``false_positive`` (alert raised though everyone
    complies: a real vest taken for a T-shirt, a helmet missed), half ``false_negative`` (no alert though
    someone does not comply: a look-alike or plain shirt taken for a vest, a bare head missed, or the
    model's own reasoning naming the violation while its Alert line says False)::

        {"id": <scene id>, "image", "scenario", "failure": "false_positive"|"false_negative",
         "feedback": <what is really in the image, in an operator's words>,
         "model_output": <the simulated wrong answer of the monitor, ending with a wrong "Alert:" line>}

    ``scripts/build_feedback_instructions.py`` turns it into QA instructions (``train_a.jsonl``,
    ``train_ad.jsonl`` next to it).
``val.jsonl``
    validation QA records of the val split (type A, ground-truth answers), in the shape of the instruction
    records of build_feedback_instructions.py: ``{"id": "<scene id>-A", "image", "scenario", "type": "A",
    "question", "answer", "alert", "source_id", "review": "accepted", "mode": "template"}``.

Fully determined by ``--seed`` (``random.Random`` only; the same seed gives byte-identical files). The sample
data in the repository is the default run followed by the template builds (the builder appends to its output
and skips ids already there, so remove the old ``train_a.jsonl`` / ``train_ad.jsonl`` first)::

    rm -f data/samples/ppe/train_a.jsonl data/samples/ppe/train_ad.jsonl
    python scripts/make_ppe_data.py                       # 72/8/40 scenes, 24 feedback cases -> data/samples/ppe
    python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl \\
        --out data/samples/ppe/train_a.jsonl --types A --no-progress
    python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl \\
        --out data/samples/ppe/train_ad.jsonl --types A,B,C,D --no-progress
    python scripts/make_ppe_data.py --seed 1 --train 400 --test 1000 --feedback 152 --out /tmp/ppe
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
SCENARIO = "Raise an alert if any worker is missing a helmet or a safety vest."
# The monitoring prompt: the same text in test.jsonl, val.jsonl and the type-A records of
# build_feedback_instructions.py (which keeps its own copy; a test checks that they agree).
QUESTION_SUFFIX = (
    "Look at every worker's head and torso. Describe each worker's helmet and torso clothing, then end your "
    'answer with a last line "Alert: True" (someone is missing a helmet or a safety vest) or "Alert: False" '
    "(everyone complies)."
)

# ----- colours (RGB; all distinct, so that a pixel's colour tells what it belongs to) ---------------------
HELMET_COLORS = {
    "yellow": (250, 204, 21),
    "white": (246, 246, 242),
    "orange": (255, 140, 0),
    "red": (214, 40, 40),
    "blue": (30, 90, 200),
}
VEST_COLORS = {"fluorescent yellow": (206, 255, 36), "fluorescent orange": (255, 102, 16)}
LOOKALIKE_COLORS = {"orange": (240, 120, 36), "yellow": (242, 214, 48)}
PLAIN_COLORS = {"blue": (52, 84, 140), "grey": (120, 122, 126), "brown": (120, 82, 52), "green": (70, 110, 60)}
TORSO_COLORS = {"vest": VEST_COLORS, "lookalike": LOOKALIKE_COLORS, "plain": PLAIN_COLORS}
STRIPE = (214, 219, 226)  # reflective silver; nothing else in a scene has this colour
HAIR_COLORS = {"black": (18, 18, 22), "dark brown": (62, 40, 24), "brown": (96, 64, 36), "dark": (36, 28, 22)}
SKIN = [(241, 194, 158), (224, 172, 130), (198, 134, 92), (141, 85, 54), (92, 58, 40)]
UNDERSHIRT = [(40, 52, 90), (70, 70, 74), (24, 24, 28), (92, 96, 84)]  # sleeves under a vest
TROUSERS = [(44, 56, 92), (60, 60, 64), (150, 130, 95), (30, 30, 34)]
BOOTS = [(50, 36, 24), (28, 28, 28), (84, 60, 30)]
EYES = (12, 12, 12)

SKY_TOP = [(96, 150, 210), (150, 162, 176), (120, 170, 220), (170, 150, 190)]
SKY_BOTTOM = [(186, 214, 236), (196, 202, 210), (200, 222, 238), (226, 196, 180)]
CLOUD = (236, 240, 244)
WALLS = {"concrete": (158, 158, 152), "brick": (150, 74, 56)}
GROUNDS = [(150, 120, 85), (168, 166, 160), (82, 82, 88), (128, 110, 80)]
CONE, CONE_BAND = (232, 92, 28), (240, 240, 236)
BARREL = (40, 80, 150)
WOOD = (160, 120, 70)
STEEL = (110, 116, 124)
CRANE = (200, 166, 40)
WINDOW = (54, 66, 80)

SIZES = [(192, 144), (176, 144), (208, 156), (160, 128), (224, 168), (192, 160)]
WORKER_COUNTS = (1, 2, 3, 4, 5)
WORKER_WEIGHTS = (2, 3, 3, 2, 2)
# Violation of one non-compliant worker: (has helmet, torso).
VIOLATIONS = [(True, "lookalike"), (False, "vest"), (True, "plain"), (False, "lookalike"), (False, "plain")]
VIOLATION_WEIGHTS = (7, 6, 3, 2, 2)

DEFAULTS = {"train": 72, "val": 8, "test": 40, "feedback": 24}


# ----- scene content ---------------------------------------------------------------------------------------
def _worker(rng: random.Random, helmet: bool, torso: str) -> dict:
    return {
        "helmet": helmet,
        "helmet_color": rng.choice(list(HELMET_COLORS)) if helmet else None,
        "torso": torso,
        "torso_color": rng.choice(list(TORSO_COLORS[torso])),
        # Drawing only (not written to scenes.jsonl, except through the text of feedback):
        "hair": rng.choice(list(HAIR_COLORS)),
        "skin": rng.choice(SKIN),
        "undershirt": rng.choice(UNDERSHIRT),
        "trousers": rng.choice(TROUSERS),
        "boots": rng.choice(BOOTS),
    }


def sample_workers(rng: random.Random, compliant: bool) -> list[dict]:
    """Workers of one scene: all compliant, or one or more violators (the rest compliant)."""
    n = rng.choices(WORKER_COUNTS, WORKER_WEIGHTS)[0]
    violators: set[int] = set()
    if not compliant:
        k = 1 if n == 1 else rng.choices(range(1, n + 1), [6] + [2] + [1] * (n - 2))[0]
        violators = set(rng.sample(range(n), k))
    workers = []
    for i in range(n):
        helmet, torso = rng.choices(VIOLATIONS, VIOLATION_WEIGHTS)[0] if i in violators else (True, "vest")
        workers.append(_worker(rng, helmet, torso))
    return workers


def complies(worker: dict) -> bool:
    return bool(worker["helmet"]) and worker["torso"] == "vest"


# ----- drawing ---------------------------------------------------------------------------------------------
def _lerp(a: tuple, b: tuple, t: float) -> tuple:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def draw_background(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int) -> int:
    """Sky or wall above a ground with props; returns the horizon row."""
    horizon = round(h * rng.uniform(0.42, 0.58))
    kind = rng.choice(["sky", "sky", "concrete", "brick"])
    if kind == "sky":
        i = rng.randrange(len(SKY_TOP))
        for y in range(horizon):
            draw.line([(0, y), (w - 1, y)], fill=_lerp(SKY_TOP[i], SKY_BOTTOM[i], y / max(1, horizon - 1)))
        for _ in range(rng.randint(0, 3)):
            cx, cy = rng.randrange(w), rng.randrange(4, max(5, horizon // 2))
            rx, ry = rng.randint(8, 22), rng.randint(3, 7)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=CLOUD)
        for _ in range(rng.randint(0, 3)):  # distant buildings
            bw, bh = rng.randint(14, 40), rng.randint(8, max(9, horizon // 2))
            x = rng.randrange(-10, w)
            shade = rng.randint(120, 150)
            draw.rectangle([x, horizon - bh, x + bw, horizon - 1], fill=(shade, shade + 4, shade + 10))
        if rng.random() < 0.4:  # a crane
            x = rng.randrange(w // 6, w - w // 6)
            top = rng.randint(4, max(5, horizon // 3))
            draw.line([(x, horizon - 1), (x, top)], fill=CRANE, width=2)
            draw.line([(x - rng.randint(10, 30), top), (x + rng.randint(20, 50), top)], fill=CRANE, width=2)
    else:
        base = WALLS[kind]
        draw.rectangle([0, 0, w - 1, horizon - 1], fill=base)
        line = tuple(max(0, c - 28) for c in base)
        step = 6 if kind == "brick" else rng.randint(18, 30)
        for y in range(step, horizon, step):
            draw.line([(0, y), (w - 1, y)], fill=line)
        if kind == "brick":
            for row, y in enumerate(range(0, horizon, step)):
                for x in range(((row % 2) * 7), w, 14):
                    draw.line([(x, y), (x, min(horizon - 1, y + step))], fill=line)
        else:
            for x in range(rng.randint(10, 30), w, rng.randint(30, 50)):
                draw.line([(x, 0), (x, horizon - 1)], fill=line)
        for _ in range(rng.randint(0, 2)):
            wx, wy = rng.randrange(0, w - 16), rng.randrange(2, max(3, horizon - 16))
            draw.rectangle([wx, wy, wx + rng.randint(10, 20), wy + rng.randint(8, 14)], fill=WINDOW)
    ground = rng.choice(GROUNDS)
    draw.rectangle([0, horizon, w - 1, h - 1], fill=ground)
    for _ in range(rng.randint(20, 60)):  # gravel and stains
        x, y = rng.randrange(w), rng.randrange(horizon, h)
        d = rng.choice([-18, -10, 10, 16])
        draw.point((x, y), fill=tuple(min(255, max(0, c + d)) for c in ground))
    for _ in range(rng.randint(0, 3)):  # props at the back of the ground
        x = rng.randrange(4, w - 16)
        y = horizon + rng.randint(2, max(3, (h - horizon) // 3))
        prop = rng.choice(["cone", "barrel", "crate", "scaffold"])
        if prop == "cone":
            draw.polygon([(x + 5, y - 12), (x, y), (x + 10, y)], fill=CONE)
            draw.line([(x + 3, y - 5), (x + 7, y - 5)], fill=CONE_BAND, width=2)
        elif prop == "barrel":
            draw.rectangle([x, y - 12, x + 8, y], fill=BARREL)
            draw.line([(x, y - 6), (x + 8, y - 6)], fill=STEEL)
        elif prop == "crate":
            draw.rectangle([x, y - 9, x + 12, y], fill=WOOD, outline=tuple(c - 40 for c in WOOD))
        else:
            top = max(0, y - rng.randint(24, 40))
            draw.line([(x, y), (x, top)], fill=STEEL, width=1)
            draw.line([(x + 12, y), (x + 12, top)], fill=STEEL, width=1)
            for yy in range(y - 8, top, -8):
                draw.line([(x, yy), (x + 12, yy)], fill=STEEL, width=1)
    return horizon


def figure_geometry(cx: int, foot: int, fh: int) -> dict:
    """Pixel geometry of a figure of height ``fh`` standing at ``(cx, foot)``."""
    r = max(4, round(fh * 0.085))
    top = foot - fh  # top of the head circle
    ts = top + 2 * r + 1  # torso start
    te = ts + round(fh * 0.36)  # torso end
    sw, ww = round(fh * 0.17), round(fh * 0.14)  # shoulder, waist half widths
    aw = max(3, round(fh * 0.06))  # arm width
    return {
        "r": r, "top": top, "ts": ts, "te": te, "sw": sw, "ww": ww, "aw": aw, "cx": cx, "foot": foot,
        "arm_end": ts + round(fh * 0.34), "boot": max(2, round(fh * 0.04)),
        "stripe": max(2, round(fh * 0.035)),
        "box": [cx - sw - aw, top - 2, cx + sw + aw + 1, foot + 1],
        "head_box": [cx - r - 3, top - 2, cx + r + 4, top + 2 * r + 1],
        "torso_box": [cx - ww, ts + 1, cx + ww + 1, te + 1],  # below the neck
    }


def draw_worker(draw: ImageDraw.ImageDraw, worker: dict, g: dict) -> None:
    cx, r, top, ts, te, sw, ww, aw, foot = (g[k] for k in ("cx", "r", "top", "ts", "te", "sw", "ww", "aw", "foot"))
    shirt = TORSO_COLORS[worker["torso"]][worker["torso_color"]]
    skin = worker["skin"]
    # legs and boots
    bt = g["boot"]
    draw.rectangle([cx - ww + 1, te + 1, cx - 1, foot - bt], fill=worker["trousers"])
    draw.rectangle([cx + 1, te + 1, cx + ww - 1, foot - bt], fill=worker["trousers"])
    draw.rectangle([cx - ww, foot - bt + 1, cx - 1, foot], fill=worker["boots"])
    draw.rectangle([cx + 1, foot - bt + 1, cx + ww, foot], fill=worker["boots"])
    # arms: long sleeves under a vest or with a plain shirt, short sleeves with a T-shirt; hands
    arm_end = g["arm_end"]
    if worker["torso"] == "vest":
        sleeve, sleeve_end = worker["undershirt"], arm_end - 3
    elif worker["torso"] == "plain":
        sleeve, sleeve_end = shirt, arm_end - 3
    else:
        sleeve, sleeve_end = shirt, ts + max(3, round((arm_end - ts) * 0.35))
    for x0, x1 in ((cx - sw - aw, cx - sw - 1), (cx + sw + 1, cx + sw + aw)):
        draw.rectangle([x0, ts + 1, x1, arm_end], fill=skin)
        draw.rectangle([x0, ts + 1, x1, sleeve_end], fill=sleeve)
    # torso: a trapezoid, shoulders wider than the waist
    draw.polygon([(cx - sw, ts), (cx + sw, ts), (cx + ww, te), (cx - ww, te)], fill=shirt)
    if worker["torso"] == "vest":  # two horizontal reflective stripes across the whole torso
        st = g["stripe"]
        for frac in (0.33, 0.68):
            y0 = ts + round((te - ts) * frac)
            half = round(sw + (ww - sw) * (y0 + st - 1 - ts) / max(1, te - ts))  # width at the stripe's lower row
            draw.rectangle([cx - half, y0, cx + half, y0 + st - 1], fill=STRIPE)
    # neck, head, face
    draw.rectangle([cx - 1, ts - 1, cx + 1, ts], fill=skin)
    draw.ellipse([cx - r, top, cx + r, top + 2 * r], fill=skin)
    eye_y = top + r + max(1, r // 3)
    draw.point([(cx - max(1, r // 2), eye_y), (cx + max(1, r // 2), eye_y)], fill=EYES)
    if worker["helmet"]:  # hard hat: a dome over the top of the head and a brim
        color = HELMET_COLORS[worker["helmet_color"]]
        draw.chord([cx - r - 1, top - 2, cx + r + 1, top + 2 * r], 180, 360, fill=color)
        draw.rectangle([cx - r - 3, top + r - 2, cx + r + 3, top + r - 1], fill=color)
    else:  # hair on the top half of the head
        draw.chord([cx - r, top, cx + r, top + 2 * r], 180, 360, fill=HAIR_COLORS[worker["hair"]])


def draw_scene(rng: random.Random, workers: list[dict]) -> tuple[Image.Image, list[dict]]:
    """The image and each worker's geometry (left to right)."""
    w, h = rng.choice(SIZES)
    image = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw_background(draw, rng, w, h)
    n = len(workers)
    slot = w / n
    foot_base = h - rng.randint(5, 12)
    fh_base = min(h * rng.uniform(0.5, 0.6), (slot - 4) / 0.5, foot_base - 8)
    geoms = []
    for i, worker in enumerate(workers):
        fh = round(fh_base * rng.uniform(0.9, 1.04))
        foot = min(h - 2, foot_base + rng.randint(-3, 3))
        half_width = round(fh * 0.17) + max(3, round(fh * 0.06))
        lo, hi = round(i * slot) + half_width + 2, round((i + 1) * slot) - half_width - 3
        cx = rng.randint(lo, hi) if hi > lo else round((i + 0.5) * slot)
        g = figure_geometry(cx, foot, fh)
        draw_worker(draw, worker, g)
        geoms.append(g)
    return image, geoms


# ----- text --------------------------------------------------------------------------------------------------
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def torso_phrase(torso: str, color: str) -> str:
    if torso == "vest":
        return f"{article(color)} {color} safety vest with reflective stripes"
    if torso == "lookalike":
        return f"{article(color)} {color} T-shirt without reflective stripes, not a safety vest"
    return f"a plain {color} shirt, not a safety vest"


def describe(worker: dict, label: str) -> str:
    """One sentence on a worker's helmet and torso, ``label`` being e.g. "Worker 2"."""
    torso = torso_phrase(worker["torso"], worker["torso_color"])
    if worker["helmet"]:
        return f"{label} wears {article(worker['helmet_color'])} {worker['helmet_color']} helmet and {torso}."
    joiner = "but wears" if worker["torso"] == "vest" else "and wears"
    return f"{label} has no helmet (bare head) {joiner} {torso}."


def missing(worker: dict) -> str:
    parts = ([] if worker["helmet"] else ["a helmet"]) + ([] if worker["torso"] == "vest" else ["a safety vest"])
    return " and ".join(parts)


def reference_answer(workers: list[dict]) -> str:
    """The ground-truth answer: count, every worker, the violations, the Alert line."""
    n = len(workers)
    lines = ["There is 1 worker." if n == 1 else f"There are {n} workers (numbered from left to right)."]
    labels = ["The worker"] if n == 1 else [f"Worker {i + 1}" for i in range(n)]
    lines += [describe(w, lab) for w, lab in zip(workers, labels)]
    bad = [(lab, w) for lab, w in zip(labels, workers) if not complies(w)]
    if not bad:
        lines.append(("The worker wears" if n == 1 else "Every worker wears")
                     + " a helmet and a safety vest, so no alert is needed.")
    else:
        lines.append("; ".join(f"{lab} is missing {missing(w)}" for lab, w in bad) + ", so an alert is needed.")
    return " ".join(lines) + f"\nAlert: {bool(bad)}"


def position(i: int, n: int) -> str:
    """Where worker ``i`` of ``n`` stands, as an operator says it."""
    if n == 1:
        return "the worker"
    if n % 2 and i == n // 2:
        return "the worker in the middle"
    if i == 0:
        return "the worker on the left" if n == 2 else "the worker on the far left"
    if i == n - 1:
        return "the worker on the right" if n == 2 else "the worker on the far right"
    ordinal = ["first", "second", "third", "fourth"]
    return f"the {ordinal[i]} worker from the left" if i < n / 2 else f"the {ordinal[n - 1 - i]} worker from the right"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


_NUMBERS = ["zero", "one", "two", "three", "four", "five"]


def _others(n_ok: int) -> str:
    if n_ok == 1:
        return "The other worker wears a helmet and a proper vest."
    return f"The other {_NUMBERS[n_ok]} workers wear helmets and proper vests."


def _everyone(n: int) -> str:
    if n == 1:
        return "The worker has a helmet and a vest with reflective stripes."
    if n == 2:
        return "Both workers have helmets and vests with reflective stripes."
    return f"All {_NUMBERS[n]} workers have helmets and vests with reflective stripes."


def _shirt_words(worker: dict) -> str:
    if worker["torso"] == "lookalike":
        return f"{article(worker['torso_color'])} {worker['torso_color']} T-shirt"
    return f"a plain {worker['torso_color']} shirt"


def _model_output(workers: list[dict], seen: list[dict], alert: bool, conclusion: str | None = None) -> str:
    """A simulated monitor answer: ``seen`` is what the model believed about each worker."""
    n = len(seen)
    lines = ["There is 1 worker." if n == 1 else f"There are {n} workers."]
    labels = ["The worker"] if n == 1 else [f"Worker {i + 1}" for i in range(n)]
    lines += [describe(w, lab) for w, lab in zip(seen, labels)]
    if conclusion is None:
        bad = [lab for lab, w in zip(labels, seen) if not complies(w)]
        conclusion = (f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not compliant, so an alert is needed."
                      if bad else "Everyone is wearing the required PPE, so no alert is needed.")
    lines.append(conclusion)
    return " ".join(lines) + f"\nAlert: {alert}"


def make_feedback(scene: dict, kind: str, rng: random.Random) -> dict:
    """One operator feedback record of ``kind`` for ``scene`` (its ground truth drives every sentence)."""
    workers = scene["_workers"]
    n = len(workers)
    bad = [i for i, w in enumerate(workers) if not complies(w)]
    sentences: list[str] = []
    seen = [dict(w) for w in workers]
    conclusion = None
    if kind == "vest_as_shirt":  # false positive: a real vest taken for a T-shirt
        orange = [i for i, w in enumerate(workers) if w["torso_color"] == "fluorescent orange"]
        i = rng.choice(orange or list(range(n)))
        w = workers[i]
        color = w["torso_color"].replace("fluorescent ", "")
        seen[i] = {**w, "torso": "lookalike", "torso_color": color}
        sentences.append(rng.choice(["False alarm.", "Wrong alert.", "This alert was not needed."]))
        sentences.append(_cap(rng.choice([
            f"{position(i, n)} wears {article(w['torso_color'])} {w['torso_color']} safety vest with two reflective "
            f"stripes, not a T-shirt.",
            f"{position(i, n)} has a proper {w['torso_color']} vest on, you can see both reflective stripes. "
            f"It is not a T-shirt.",
        ])))
        sentences.append(_everyone(n))
        failure = "false_positive"
    elif kind == "missed_helmet":  # false positive: a helmet not seen
        pref = [i for i, w in enumerate(workers) if w["helmet_color"] == "white"]
        pref = pref or [i for i, w in enumerate(workers) if w["helmet_color"] == "yellow"]
        i = rng.choice(pref or list(range(n)))
        w = workers[i]
        seen[i] = {**w, "helmet": False, "helmet_color": None}
        sentences.append(rng.choice(["False alarm.", "No violation here, the alert is wrong."]))
        sentences.append(_cap(rng.choice([
            f"{position(i, n)} does wear a helmet, a {w['helmet_color']} hard hat.",
            f"{position(i, n)} is wearing {article(w['helmet_color'])} {w['helmet_color']} helmet, "
            f"it is not a bare head.",
        ])))
        sentences.append(_everyone(n))
        failure = "false_positive"
    elif kind in ("shirt_as_vest", "missed_bare_head"):  # false negative: the violation not seen
        for i in bad:
            w = workers[i]
            if kind == "shirt_as_vest":
                vest = "fluorescent orange" if "orange" in w["torso_color"] else "fluorescent yellow"
                seen[i] = {**w, "torso": "vest", "torso_color": vest}
                sentences.append(_cap(rng.choice([
                    f"{position(i, n)} wears {_shirt_words(w)} without reflective stripes, not a vest.",
                    f"{position(i, n)} is in {_shirt_words(w)}, no reflective stripes, so it is not a safety vest.",
                ])))
            else:
                seen[i] = {**w, "helmet": True, "helmet_color": rng.choice(["yellow", "orange"])}
                sentences.append(_cap(rng.choice([
                    f"{position(i, n)} has no helmet, you can see {w['hair']} hair.",
                    f"{position(i, n)} is not wearing a hard hat, bare head with {w['hair']} hair.",
                ])))
        if len(bad) < n:
            sentences.append(_others(n - len(bad)))
        sentences.append(rng.choice(["Alert should have been raised.", "This should have been an alert.",
                                     "Should have alerted."]))
        failure = "false_negative"
    elif kind == "inconsistent":  # false negative: the reasoning names the violation, the Alert line does not
        for i in bad:
            w = workers[i]
            if w["torso"] == "vest":
                sentences.append(_cap(f"{position(i, n)} has no helmet."))
            elif w["helmet"]:
                sentences.append(_cap(f"{position(i, n)} wears {_shirt_words(w)}, no vest."))
            else:
                sentences.append(_cap(f"{position(i, n)} has no helmet and wears {_shirt_words(w)}, no vest."))
        if len(bad) < n:
            sentences.append(_others(n - len(bad)))
        sentences.append(rng.choice([
            "The answer even says so but still ends with Alert: False. The alert must be True.",
            "The model wrote that itself and then answered Alert: False. Alert should have been raised.",
        ]))
        labels = ["the worker"] if n == 1 else [f"worker {i + 1}" for i in range(n)]
        no_vest = [labels[i] for i in bad if workers[i]["torso"] != "vest"]
        if no_vest:
            conclusion = rng.choice([
                f"Although {no_vest[0]} is not wearing a proper safety vest, the site looks safe overall.",
                f"{_cap(no_vest[0])} lacks a safety vest, but the work is routine, so this is fine.",
            ])
        else:
            conclusion = f"Although {labels[bad[0]]} has no helmet, the site looks safe overall."

        failure = "false_negative"
    else:
        raise ValueError(f"unknown feedback kind {kind!r}")
    wrong_alert = failure == "false_positive"
    if kind != "inconsistent":
        seen_ok = all(complies(w) for w in seen)
        assert seen_ok != wrong_alert, (scene["id"], kind)
    return {
        "id": scene["id"],
        "image": scene["image"],
        "scenario": SCENARIO,
        "failure": failure,
        "feedback": " ".join(sentences),
        "model_output": _model_output(workers, seen, wrong_alert, conclusion),
    }


def select_feedback(train: list[dict], n: int, rng: random.Random) -> list[dict]:
    """``n`` hard cases from the train scenes: half false positives, half false negatives."""
    n_fp, n_fn = n // 2, n - n // 2
    compliant = [s for s in train if s["compliant"]]
    violating = [s for s in train if not s["compliant"]]
    if len(compliant) < n_fp or len(violating) < n_fn:
        raise SystemExit(f"error: --feedback {n} needs {n_fp} compliant and {n_fn} non-compliant train scenes; "
                         f"there are {len(compliant)} and {len(violating)} (raise --train)")
    used: set[str] = set()

    def take(pool: list[dict], k: int, key) -> list[dict]:
        pool = sorted((s for s in pool if s["id"] not in used), key=lambda s: (key(s), rng.random()))
        chosen = pool[:k]
        used.update(s["id"] for s in chosen)
        return chosen

    def violators(s):
        return [w for w in s["_workers"] if not complies(w)]

    cases: list[tuple[dict, str]] = []
    # False positives: prefer orange vests (taken for T-shirts) and white helmets (missed).
    n_shirt = n_fp - n_fp * 5 // 12
    cases += [(s, "vest_as_shirt") for s in take(
        compliant, n_shirt, lambda s: -sum(w["torso_color"] == "fluorescent orange" for w in s["_workers"]))]
    cases += [(s, "missed_helmet") for s in take(
        compliant, n_fp - n_shirt, lambda s: -sum(w["helmet_color"] == "white" for w in s["_workers"]))]
    # False negatives: a third reasoning/Alert inconsistencies, then shirts taken for vests, then bare heads.
    n_incons = n_fn // 3
    n_bare = (n_fn - n_incons) * 3 // 8
    shirt_only = [s for s in violating if all(w["helmet"] and w["torso"] != "vest" for w in violators(s))]
    bare_only = [s for s in violating if all(not w["helmet"] and w["torso"] == "vest" for w in violators(s))]
    shirt = take(shirt_only, n_fn - n_incons - n_bare,
                 lambda s: -sum(w["torso"] == "lookalike" for w in violators(s)))
    bare = take(bare_only, n_bare, lambda s: 0)
    cases += [(s, "shirt_as_vest") for s in shirt] + [(s, "missed_bare_head") for s in bare]
    rest = n_fn - len(shirt) - len(bare)  # the inconsistencies, plus any shortfall of the two kinds above
    cases += [(s, "inconsistent") for s in take(
        violating, rest, lambda s: -any(w["torso"] != "vest" for w in violators(s)))]
    cases.sort(key=lambda c: c[0]["id"])
    return [make_feedback(s, kind, random.Random(f"feedback-{s['id']}-{rng.randrange(2**32)}")) for s, kind in cases]


# ----- generation --------------------------------------------------------------------------------------------
def question() -> str:
    return f"{SCENARIO} {QUESTION_SUFFIX}"


def generate(seed: int, sizes: dict[str, int], n_feedback: int, progress: bool = False):
    """Scenes (with their images) and the records of every file, all from ``seed``."""
    rng = random.Random(seed)
    plan: list[tuple[str, bool]] = []
    for split in SPLITS:
        labels = [True] * (sizes[split] // 2) + [False] * (sizes[split] - sizes[split] // 2)
        rng.shuffle(labels)
        plan += [(split, c) for c in labels]
    scenes, images = [], {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers / datasets
        tqdm = None
    items = enumerate(plan, start=1)
    if progress and tqdm is not None:
        items = tqdm(items, total=len(plan), desc="scenes", unit="img")
    for k, (split, compliant) in items:
        sid = f"ppe-{k:04d}"
        srng = random.Random(f"ppe-{seed}-{sid}")
        workers = sample_workers(srng, compliant)
        image, geoms = draw_scene(srng, workers)
        assert all(complies(w) for w in workers) == compliant
        for w, g in zip(workers, geoms):
            w["box"], w["head_box"], w["torso_box"] = g["box"], g["head_box"], g["torso_box"]
        rel = f"images/{sid}.png"
        images[rel] = image
        scenes.append({"id": sid, "image": rel, "split": split, "width": image.width, "height": image.height,
                       "_workers": workers, "compliant": compliant, "alert": not compliant})
    by_split = {s: [sc for sc in scenes if sc["split"] == s] for s in SPLITS}
    test = [{"id": s["id"], "image": s["image"], "scenario": SCENARIO, "question": question(),
             "answer": reference_answer(s["_workers"]), "alert": s["alert"]} for s in by_split["test"]]
    val = [{"id": f"{s['id']}-A", "image": s["image"], "scenario": SCENARIO, "type": "A", "question": question(),
            "answer": reference_answer(s["_workers"]), "alert": s["alert"], "source_id": s["id"],
            "review": "accepted", "mode": "template"} for s in by_split["val"]]
    feedback = select_feedback(by_split["train"], n_feedback, random.Random(f"feedback-{seed}")) if n_feedback else []
    return scenes, images, test, val, feedback


PUBLIC_WORKER_KEYS = ("helmet", "helmet_color", "torso", "torso_color", "box", "head_box", "torso_box")


def scene_record(scene: dict) -> dict:
    workers = [{k: w[k] for k in PUBLIC_WORKER_KEYS} for w in scene["_workers"]]
    return {"id": scene["id"], "image": scene["image"], "split": scene["split"], "width": scene["width"],
            "height": scene["height"], "workers": workers, "compliant": scene["compliant"], "alert": scene["alert"]}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


_IMAGE_NAME = re.compile(r"^ppe-\d{4,}\.png$")


def write_all(out: Path, scenes, images, test, val, feedback) -> list[str]:
    """Write every file; remove ``images/ppe-*.png`` of an earlier, larger run. Returns the removed names."""
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for rel, image in images.items():
        image.save(out / rel, format="PNG", optimize=False, compress_level=9)
    keep = {Path(rel).name for rel in images}
    stale = sorted(p.name for p in img_dir.iterdir() if _IMAGE_NAME.match(p.name) and p.name not in keep)
    for name in stale:
        (img_dir / name).unlink()
    write_jsonl(out / "scenes.jsonl", [scene_record(s) for s in scenes])
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "val.jsonl", val)
    write_jsonl(out / "feedback.jsonl", feedback)
    return stale


def summarize(scenes, test, val, feedback, out: Path) -> str:
    lines = [f"make_ppe_data: {len(scenes)} scenes written to {out}"]
    for split in SPLITS:
        ss = [s for s in scenes if s["split"] == split]
        lines.append(f"  {split}: {len(ss)} scenes, {sum(s['compliant'] for s in ss)} compliant, "
                     f"{sum(not s['compliant'] for s in ss)} alert")
    workers = [w for s in scenes for w in s["_workers"]]
    torso = {t: sum(w["torso"] == t for w in workers) for t in ("vest", "lookalike", "plain")}
    lines.append(f"  workers: {len(workers)} (vest {torso['vest']}, lookalike {torso['lookalike']}, "
                 f"plain {torso['plain']}; no helmet {sum(not w['helmet'] for w in workers)})")
    fp = sum(f["failure"] == "false_positive" for f in feedback)
    lines.append(f"  test.jsonl: {len(test)} ({sum(not t['alert'] for t in test)} compliant, "
                 f"{sum(t['alert'] for t in test)} alert); val.jsonl: {len(val)}")
    lines.append(f"  feedback.jsonl: {len(feedback)} ({fp} false_positive, {len(feedback) - fp} false_negative)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Draw synthetic PPE-safety scenes (1-5 workers with or without hard hats; high-visibility vests with "
            "reflective stripes, look-alike orange/yellow T-shirts or plain shirts) with PIL and write their ground "
            "truth, a balanced labelled test set, operator feedback on hard train cases (false positives and false "
            "negatives, with the monitor's wrong answer) and validation QA records. Deterministic in --seed."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/make_ppe_data.py                   # the sample data in data/samples/ppe\n"
            "  python scripts/make_ppe_data.py --seed 1 --train 400 --test 1000 --feedback 152 --out /tmp/ppe\n"
            "then: python scripts/build_feedback_instructions.py data/samples/ppe/feedback.jsonl "
            "--out data/samples/ppe/train_ad.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random.Random (default: 0)")
    p.add_argument("--out", type=Path, default=Path("data/samples/ppe"),
                   help="output directory (default: data/samples/ppe)")
    for split in SPLITS:
        p.add_argument(f"--{split}", type=int, default=DEFAULTS[split],
                       help=f"{split} scenes, half compliant (default: {DEFAULTS[split]})")
    p.add_argument("--feedback", type=int, default=DEFAULTS["feedback"],
                   help=f"feedback cases from the train split, half false positives (default: {DEFAULTS['feedback']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = {s: getattr(args, s) for s in SPLITS}
    if any(v < 0 for v in sizes.values()) or args.feedback < 0:
        parser.error("counts must be >= 0")
    start = time.perf_counter()
    scenes, images, test, val, feedback = generate(args.seed, sizes, args.feedback, progress=not args.no_progress)
    stale = write_all(args.out, scenes, images, test, val, feedback)
    print(summarize(scenes, test, val, feedback, args.out))
    if stale:
        more = " ..." if len(stale) > 5 else ""
        print(f"  removed {len(stale)} images of an earlier run: {', '.join(stale[:5])}{more}")
    print(f"  done in {time.perf_counter() - start:.1f} s")
    return scenes, test, val, feedback


if __name__ == "__main__":
    main()
