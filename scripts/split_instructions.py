#!/usr/bin/env python
"""Split built instruction records into train/val/test, and sample evaluation questions (MISSION §2).

Input: a JSONL of instruction records, as ``scripts/build_instructions.py`` writes them (Alpaca: ``id,
source_id, instruction, input, output``) or as ``scripts/build_feedback_instructions.py`` writes them (``id,
image, question, answer, alert, source_id, ...``); any JSONL of objects works.

Split (``--val``, ``--test``, optional ``--train``: each a fraction like ``0.1`` or a count like ``50``; train
takes the rest unless given):

* by group: rows that share ``--group-field`` (default ``source_id``: the pairs a teacher made from one raw
  record) always land in the same split, so no project is asked about in training and tested again. Sizes
  count groups (with ``--group-field ''``, or when no row has the field, every row is its own group);
* stratified with ``--stratify FIELD`` (e.g. ``alert``, ``type``, ``label``): every split gets each value of
  the field in proportion, within one group of the exact share. The field must be the same on every row of a
  group;
* seeded (``--seed``): the same input, options and seed give byte-identical files. Rows keep their input
  order inside each split. An ``image`` path relative to the input file is rewritten relative to the output
  folder, so vision records still find their images.

``--eval-sample N`` also writes ``eval_questions.jsonl``: N rows of the test split (``--eval-from``) as the
questions file of ``tuneloop compare generate`` (``id``, ``question``, ``reference``; an Alpaca row whose
instruction is not the R&D instruction keeps it: ``id, instruction, input, reference``). One question per
group first (a seeded draw), so the sample spreads over source records; a second question of a record only
when N exceeds the groups.

Outputs go to ``--out-dir`` (``train.jsonl``, ``val.jsonl``, ``test.jsonl``, ``eval_questions.jsonl``); a
split with no rows is not written. Existing outputs stop the run before anything is written, unless
``--overwrite`` (which also deletes outputs of an earlier run that this one does not write). ::

    python scripts/split_instructions.py pairs.jsonl --out-dir data/rd --val 0.1 --test 0.1 --eval-sample 10
    python scripts/split_instructions.py pairs.jsonl --out-dir data/rd --train 266 --val 50 --test 40 --seed 3
    python scripts/split_instructions.py data/samples/ppe/train_ad.jsonl --out-dir /tmp/ppe-split \\
        --val 0.2 --test 0 --stratify alert
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.records import RecordError, json_objects, write_jsonl
from trainer.jsonl_out import refuse_existing

SPLITS = ("train", "val", "test")
EVAL_FILE = "eval_questions.jsonl"
# The R&D instruction of MISSION §2, which `tuneloop compare generate` puts in its prompt by default: rows with
# it become plain `question` records, as in data/samples/instructions/questions.jsonl.
RD_INSTRUCTION = (
    "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
)


def parse_size(text: str) -> float | int:
    """``0.1`` -> a fraction (0 <= f < 1), ``50`` -> a count (>= 0)."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction (0.1) or a count (50), got {text!r}") from None
    if value < 0 or (isinstance(value, float) and value >= 1):
        raise argparse.ArgumentTypeError(f"a fraction must be in [0, 1) and a count >= 0, got {text!r}")
    return value


@dataclass
class Row:
    lineno: int
    obj: dict
    group: str  # JSON text of the group value (or of the line number)
    stratum: str | None


@dataclass
class Summary:
    input: str
    seed: int
    rows: int = 0
    groups: int = 0
    group_field: str | None = None
    stratify: str | None = None
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (rows, groups)
    strata: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> stratum value -> groups
    unused: tuple[int, int] = (0, 0)  # (rows, groups) left out by --train
    eval_questions: int = 0
    eval_from: str = "test"
    written: dict[str, str] = field(default_factory=dict)  # split or "eval" -> path
    removed: list[str] = field(default_factory=list)

    def format(self) -> str:
        by = f"by {self.group_field!r}" if self.group_field else "one row each"
        lines = [f"split_instructions: {self.rows} rows in {self.groups} groups ({by}) from {self.input}, "
                 f"seed {self.seed}"]
        for split in SPLITS:
            rows, groups = self.counts.get(split, (0, 0))
            where = f"-> {self.written[split]}" if split in self.written else "(not written)"
            lines.append(f"  {split + ':':6} {rows:6d} rows {groups:6d} groups {where}")
            if self.stratify and groups:
                shares = ", ".join(f"{k} {n}" for k, n in sorted(self.strata[split].items()))
                lines.append(f"         {self.stratify}: {shares} (groups)")
        if self.unused[0]:
            lines.append(f"  left out by --train: {self.unused[0]} rows in {self.unused[1]} groups")
        if self.eval_questions:
            lines.append(f"  eval questions: {self.eval_questions} from {self.eval_from} -> {self.written['eval']} "
                         f"(tuneloop compare generate --questions {self.written['eval']} ...)")
        if self.removed:
            lines.append(f"  --overwrite: removed outputs of an earlier run: {', '.join(self.removed)}")
        return "\n".join(lines)


# ----- reading ---------------------------------------------------------------------------------------------------
def _scalar(obj: dict, name: str, location: str) -> str:
    value = obj.get(name)
    if value is None:
        raise RecordError(location, name, "missing or null")
    if not isinstance(value, (str, int, float, bool)):
        raise RecordError(location, name, f"expected text, a number or true/false, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=False)


def read_rows(path: Path, group_field: str | None, stratify: str | None) -> tuple[list[Row], str | None]:
    """The rows of ``path`` with their group and stratum, and the group field in use (None: one row per group,
    when ``group_field`` is empty or on no row). Errors name ``file:line: field``."""
    if not path.is_file():
        raise FileNotFoundError(f"instruction file not found: {path}")
    objects = list(json_objects(path))
    if not objects:
        raise RecordError(str(path), None, "file has no records")
    if group_field and not any(group_field in obj for _, obj in objects):
        group_field = None  # e.g. hand-written records without source ids: every row is a group
    rows: list[Row] = []
    stratum_of: dict[str, tuple[str, int]] = {}  # group -> (stratum, first line)
    for lineno, obj in objects:
        location = f"{path}:{lineno}"
        group = _scalar(obj, group_field, location) if group_field else f"line {lineno}"
        stratum = _scalar(obj, stratify, location) if stratify else None
        if stratify:
            first = stratum_of.setdefault(group, (stratum, lineno))
            if first[0] != stratum:
                raise RecordError(location, stratify, f"{stratum} differs from {first[0]} on line {first[1]} of the "
                                  f"same group ({group_field} {group}); stratify by a field that is the same within "
                                  f"a group, or split rows alone with --group-field ''")
        rows.append(Row(lineno, obj, group, stratum))
    return rows, group_field


# ----- splitting -------------------------------------------------------------------------------------------------
def group_order(rows: list[Row], seed: int) -> list[str]:
    """Every group once, in the seeded order the splits are cut from (test first, then val, then train).

    Each stratum's groups are shuffled and spread evenly over [0, 1) (rank + a random offset, over the stratum's
    size); all groups are then sorted by that position. Any run of consecutive groups in this order holds each
    stratum in proportion, within one group, whatever the sizes asked for."""
    rng = random.Random(seed)
    strata: dict[str | None, list[str]] = {}
    seen: set[str] = set()
    for row in rows:  # groups in first-appearance order, so the draw depends on the seed and the file only
        if row.group not in seen:
            seen.add(row.group)
            strata.setdefault(row.stratum, []).append(row.group)
    positioned = []
    for index, key in enumerate(sorted(strata, key=lambda k: (k is None, k or ""))):
        groups = strata[key]
        rng.shuffle(groups)
        offset = rng.random()
        positioned += [((rank + offset) / len(groups), index, g) for rank, g in enumerate(groups)]
    return [g for _, _, g in sorted(positioned)]


def sizes(n_groups: int, train, val, test) -> dict[str, int]:
    """Groups per split: fractions rounded, counts as given, train the rest when ``train`` is None."""
    def count(size) -> int:
        return round(size * n_groups) if isinstance(size, float) else size

    n = {"val": count(val), "test": count(test)}
    n["train"] = n_groups - n["val"] - n["test"] if train is None else count(train)
    if n["train"] < 0 or sum(n.values()) > n_groups:
        raise ValueError(f"train {n['train']} + val {n['val']} + test {n['test']} groups asked for, but the file has "
                         f"{n_groups} groups")
    return n


def assign(order: list[str], n: dict[str, int]) -> dict[str, str]:
    """group -> split: the first ``n["test"]`` groups of ``order`` are test, the next val, then train."""
    split_of, start = {}, 0
    for split in ("test", "val", "train"):
        for g in order[start:start + n[split]]:
            split_of[g] = split
        start += n[split]
    return split_of


def _rebased(obj: dict, in_dir: Path, out_dir: Path) -> dict:
    """``obj`` with a relative ``image`` path made relative to ``out_dir`` (it was relative to ``in_dir``)."""
    image = obj.get("image")
    if not isinstance(image, str) or not image or os.path.isabs(image):
        return obj
    target = os.path.relpath(os.path.abspath(in_dir / image), os.path.abspath(out_dir))
    return {**obj, "image": Path(target).as_posix()}


# ----- evaluation questions --------------------------------------------------------------------------------------
def question_record(row: Row, location: str) -> dict:
    """A row as a questions record of ``tuneloop compare generate`` (``trainer.compare.load_questions``)."""
    obj = row.obj
    qid = obj.get("id", f"line-{row.lineno}")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise RecordError(location, "id", f"expected text or an integer, got {qid!r}")

    def text(name: str, allow_empty: bool = False) -> str:
        value = obj.get(name)
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise RecordError(location, name, f"expected non-empty text for an evaluation question, got {value!r}")
        return value

    if "instruction" in obj and "output" in obj:
        instruction, input_ = text("instruction"), text("input", allow_empty=True) if "input" in obj else ""
        if instruction.strip() == RD_INSTRUCTION and input_.strip():
            return {"id": qid, "question": input_, "reference": text("output")}
        return {"id": qid, "instruction": instruction, "input": input_, "reference": text("output")}
    if "question" in obj and "answer" in obj:
        return {"id": qid, "question": text("question"), "reference": text("answer")}
    if isinstance(obj.get("messages"), list):
        turns = [m for m in obj["messages"] if isinstance(m, dict)]
        users = [m.get("content") for m in turns if m.get("role") == "user"]
        answers = [m.get("content") for m in turns if m.get("role") == "assistant"]
        if users and answers and all(isinstance(t, str) and t.strip() for t in (users[-1], answers[-1])):
            return {"id": qid, "question": users[-1], "reference": answers[-1]}
    raise RecordError(location, None, "an evaluation question needs 'instruction' + 'output', 'question' + "
                                      "'answer', or 'messages' with a user and an assistant turn")


def eval_sample(rows: list[Row], n: int, seed: int, path: Path, split: str) -> list[dict]:
    """``n`` rows of ``rows`` (one split) as question records, in input order: the groups in a seeded order,
    one row from each, then a second from each, ... until ``n``."""
    if n > len(rows):
        raise ValueError(f"--eval-sample {n}: the {split} split has only {len(rows)} rows")
    rng = random.Random(f"eval-{seed}")  # its own stream: the sample does not move when other sizes change
    by_group: dict[str, list[Row]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    groups = list(by_group)
    rng.shuffle(groups)
    for members in by_group.values():
        rng.shuffle(members)
    picked: list[Row] = []
    depth = 0
    while len(picked) < n:
        picked += [by_group[g][depth] for g in groups if depth < len(by_group[g])][: n - len(picked)]
        depth += 1
    picked.sort(key=lambda r: r.lineno)
    questions = [question_record(r, f"{path}:{r.lineno}") for r in picked]
    seen: dict = {}
    for q, r in zip(questions, picked):
        if q["id"] in seen:
            raise RecordError(f"{path}:{r.lineno}", "id", f"duplicate id {q['id']!r} (first on line {seen[q['id']]}); "
                                                          "evaluation questions need unique ids")
        seen[q["id"]] = r.lineno
    return questions


# ----- the step --------------------------------------------------------------------------------------------------
def split_file(in_path: str | Path, out_dir: str | Path, val=0.1, test=0.1, train=None, seed: int = 0,
               group_field: str | None = "source_id", stratify: str | None = None, eval_n: int = 0,
               eval_from: str = "test", overwrite: bool = False) -> Summary:
    """Split ``in_path`` into ``out_dir``/{train,val,test}.jsonl (and ``eval_questions.jsonl`` when ``eval_n``);
    sizes are fractions (float) or counts (int) of groups. Returns the summary."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    outputs = {s: out_dir / f"{s}.jsonl" for s in SPLITS} | {"eval": out_dir / EVAL_FILE}
    if any(os.path.abspath(p) == os.path.abspath(in_path) for p in outputs.values()):
        raise ValueError(f"--out-dir {out_dir} would overwrite the input {in_path}; choose another folder")
    refuse_existing(list(outputs.values()), overwrite)  # before any work: a refused run changes nothing

    rows, group_field = read_rows(in_path, group_field or None, stratify)
    order = group_order(rows, seed)
    n = sizes(len(order), train, val, test)
    split_of = assign(order, n)
    by_split = {s: [r for r in rows if split_of.get(r.group) == s] for s in SPLITS}

    summary = Summary(input=str(in_path), seed=seed, rows=len(rows), groups=len(order), group_field=group_field,
                      stratify=stratify, eval_from=eval_from)
    for s in SPLITS:
        groups = {r.group: r.stratum for r in by_split[s]}
        summary.counts[s] = (len(by_split[s]), len(groups))
        summary.strata[s] = {}
        for stratum in groups.values():
            label = json.loads(stratum) if stratum and stratum.startswith('"') else str(stratum)  # "A", true, 3
            summary.strata[s][label] = summary.strata[s].get(label, 0) + 1
    unused = [r for r in rows if r.group not in split_of]
    summary.unused = (len(unused), len({r.group for r in unused}))
    questions = []
    if eval_n:
        source = rows if eval_from == "all" else by_split[eval_from]
        questions = eval_sample(source, eval_n, seed, in_path, eval_from)

    # Everything is checked: write.
    files = {s: [_rebased(r.obj, in_path.parent, out_dir) for r in by_split[s]] for s in SPLITS if by_split[s]}
    if questions:
        files["eval"] = questions
    for key, path in outputs.items():
        if key not in files and path.exists():  # only with --overwrite (refused otherwise): a stale output
            path.unlink()
            summary.removed.append(str(path))
    for key, rows_out in files.items():
        write_jsonl(outputs[key], rows_out)
        summary.written[key] = str(outputs[key])
    summary.eval_questions = len(questions)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="split_instructions.py",
        description=(
            "Split instruction records (the JSONL of build_instructions.py or build_feedback_instructions.py) into "
            "train/val/test by source record, seeded and optionally stratified, and sample evaluation questions "
            "for 'tuneloop compare generate'. Sizes are fractions (0.1) or counts (50) of groups (rows sharing "
            "--group-field); train takes the rest unless --train is given."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/split_instructions.py pairs.jsonl --out-dir data/rd --val 0.1 --test 0.1 "
            "--eval-sample 10\n"
            "  python scripts/split_instructions.py pairs.jsonl --out-dir data/rd --train 266 --val 50 --test 40\n"
            "  python scripts/split_instructions.py train_ad.jsonl --out-dir ppe-split --val 0.2 --test 0 "
            "--stratify alert\n"
            "then: tuneloop compare generate --questions data/rd/eval_questions.jsonl --model base=BASE ..."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="instruction records JSONL (e.g. the --out of build_instructions.py)")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="folder for train.jsonl, val.jsonl, test.jsonl and eval_questions.jsonl")
    p.add_argument("--val", type=parse_size, default=0.1, help="validation size: fraction or count (default: 0.1)")
    p.add_argument("--test", type=parse_size, default=0.1, help="test size: fraction or count (default: 0.1)")
    p.add_argument("--train", type=parse_size, default=None,
                   help="training size: fraction or count (default: every group not in val or test; a smaller "
                        "size leaves the remaining groups out, and the summary counts them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the evaluation sample (default: 0)")
    p.add_argument("--group-field", default="source_id",
                   help="rows with the same value stay in one split; sizes count these groups (default: source_id; "
                        "'' or a field no row has: every row alone)")
    p.add_argument("--stratify", default=None, metavar="FIELD",
                   help="give every split each value of FIELD in proportion, e.g. alert, type or label (default: "
                        "none); it must be the same on all rows of a group")
    p.add_argument("--eval-sample", type=int, default=0, metavar="N",
                   help=f"also write N evaluation questions to {EVAL_FILE} (id, question, reference: the format of "
                        "'tuneloop compare generate --questions'); default: 0, none")
    p.add_argument("--eval-from", choices=(*SPLITS, "all"), default="test",
                   help="the split the evaluation questions are drawn from (default: test, which no model trained on)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs in --out-dir (without it, existing outputs stop the run before "
                        "anything is written)")
    return p


def main(argv: list[str] | None = None) -> Summary:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_sample < 0:
        parser.error("--eval-sample must be >= 0")
    try:
        summary = split_file(args.input, args.out_dir, val=args.val, test=args.test, train=args.train, seed=args.seed,
                             group_field=args.group_field, stratify=args.stratify, eval_n=args.eval_sample,
                             eval_from=args.eval_from, overwrite=args.overwrite)
    except (RecordError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary.format())
    return summary


if __name__ == "__main__":
    main()
