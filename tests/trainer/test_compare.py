"""``tuneloop compare``: the Alpaca prompt, question/answer/judgment file checks with file:line: field errors,
the toolpak statistics against independent numpy/scipy values and pinned numbers, and ``generate`` end to end
with a tiny random Llama and a LoRA adapter built in the test."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from tests.conftest import ROOT, save_tiny_llama_with_adapter, write_jsonl
from trainer.compare import (
    DEFAULT_SYSTEM,
    STAT_KEYS,
    CompareError,
    ModelSpec,
    Question,
    alpaca_prompt,
    build_parser,
    load_questions,
    main,
    paired_statistics,
)

SAMPLES = ROOT / "data" / "samples" / "compare"
# The scores of data/samples/compare/judgments.jsonl (base, tuned), q01..q10.
BASE = [2, 3, 2, 4, 1, 3, 2, 3, 2, 4]
TUNED = [4, 4, 3, 4, 3, 5, 3, 4, 2, 3]

# ----------------------------------------------------------------------------------------------- prompts


def test_alpaca_prompt_is_the_mission_template():
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n"
        "You are a national R&D planning expert and you will answer questions related to R&D planning "
        "inquiries.\n\n"
        "### Input:\n"
        "기술성숙도란?\n\n"
        "### Response:\n"
    )
    assert alpaca_prompt(DEFAULT_SYSTEM, "기술성숙도란?") == expected
    assert alpaca_prompt("Say hi.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_question_prompts_for_both_templates():
    q = Question("q1", "ref", question="What is TRL?")
    assert q.prompt("alpaca", "SYS").endswith("### Instruction:\nSYS\n\n### Input:\nWhat is TRL?\n\n### Response:\n")
    assert q.prompt("none", "SYS") == "What is TRL?"
    inst = Question(2, "ref", instruction="Translate.", input="안녕")
    assert inst.prompt("alpaca", "SYS") == alpaca_prompt("Translate.", "안녕")
    assert inst.text == "Translate.\n\n안녕" == inst.prompt("none", "SYS")


# ------------------------------------------------------------------------------------------ file checks


def test_sample_questions_load():
    questions = load_questions(str(SAMPLES / "questions.jsonl"))
    assert len(questions) == 10 and questions[0].id == "q01" and questions[0].reference


@pytest.mark.parametrize("rows,where", [
    ([{"id": "a", "question": "q", "reference": "r"}, {"id": "b", "question": "q", "reference": ""}],
     "questions.jsonl:2: field 'reference': empty text"),
    ([{"id": "a", "question": "q", "reference": "r"}, {"id": "b", "question": "q"}],
     "questions.jsonl:2: field 'reference': missing or null"),
    ([{"id": "a", "question": "q", "reference": "r"}, {"id": "a", "question": "q2", "reference": "r"}],
     "questions.jsonl:2: field 'id': duplicate id 'a' (first at"),
    ([{"id": "a", "question": "q", "reference": "r"},
      {"id": "b", "instruction": "i", "question": "q", "reference": "r"}],
     "questions.jsonl:2: field 'question': give either 'question' or 'instruction'"),
    ([{"id": "a", "question": "q", "reference": "r"}, {"id": "b", "instruction": "i", "reference": "r"},
      {"id": "c", "reference": "r"}], "questions.jsonl:3: field 'question': missing"),
    ([{"id": "a", "prompt": "q", "reference": "r"}], "questions.jsonl:1: field 'question': missing"),
    ([{"id": 1.5, "question": "q", "reference": "r"}], "questions.jsonl:1: field 'id': expected text or an integer"),
])
def test_bad_questions_name_file_line_and_field(tmp_path, rows, where):
    path = write_jsonl(tmp_path / "questions.jsonl", rows)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--questions", str(path), "--model", f"m={tmp_path}", "--out", str(tmp_path / "o.jsonl")])
    assert e.value.code.startswith("tuneloop compare generate: ")  # one line, no traceback
    # the model directory is checked first; make it pass so that the questions are reached
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--questions", str(path), "--model", f"m={tmp_path}", "--out", str(tmp_path / "o.jsonl")])
    assert where in str(e.value.code)


def test_model_spec_parsing(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "ad").mkdir()
    assert ModelSpec.parse(f"b={tmp_path}/base") == ModelSpec("b", f"{tmp_path}/base", None)
    for text, problem in (
        ("nobase", "expected NAME=BASE"),
        (f"Nothing={tmp_path}/base", "and not 'Nothing'"),
        (f"a b={tmp_path}/base", "must be letters"),
        (f"b={tmp_path}/missing", "does not exist"),
        (f"b={tmp_path}/ad", "has no config.json"),
        (f"t={tmp_path}/base+{tmp_path}/ad", "has no adapter_config.json"),
        (f"t={tmp_path}/base+", "nothing after '+'"),
    ):
        with pytest.raises(ValueError, match=re.escape(problem)):
            ModelSpec.parse(text)
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    spec = ModelSpec.parse(f"t={tmp_path}/base+{tmp_path}/ad")
    assert spec.adapter == f"{tmp_path}/ad" and spec.tokenizer_dir == f"{tmp_path}/base"
    (tmp_path / "ad" / "tokenizer.json").write_text("{}")
    assert spec.tokenizer_dir == f"{tmp_path}/base"  # a stray file is not a tokenizer: save_pretrained's config is
    (tmp_path / "ad" / "tokenizer_config.json").write_text("{}")
    assert spec.tokenizer_dir == f"{tmp_path}/ad"  # an adapter that ships a tokenizer uses it


# ----------------------------------------------------------------------------------------------- summarize


def independent(a, b, alpha=0.05):
    """The toolpak figures from the textbook formulas (numpy) and scipy's own tests."""
    x, y = np.array(a, float), np.array(b, float)
    n = len(x)
    d = x - y
    ssx, ssy = ((x - x.mean()) ** 2).sum(), ((y - y.mean()) ** 2).sum()  # sums of squared deviations
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    f = x.var(ddof=1) / y.var(ddof=1)
    return {
        "n": n, "mean_a": x.sum() / n, "mean_b": y.sum() / n,
        "var_a": ssx / (n - 1), "var_b": ssy / (n - 1),
        "sd_a": math.sqrt(ssx / (n - 1)), "sd_b": math.sqrt(ssy / (n - 1)),
        "sem_a": x.std(ddof=1) / math.sqrt(n), "sem_b": y.std(ddof=1) / math.sqrt(n),
        "pearson_r": ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(ssx * ssy),
        "t_stat": t, "df": n - 1,
        "p_one_tail": stats.ttest_rel(x, y).pvalue / 2, "p_two_tail": stats.ttest_rel(x, y).pvalue,
        "t_crit_one_tail": stats.t.ppf(1 - alpha, n - 1), "t_crit_two_tail": stats.t.ppf(1 - alpha / 2, n - 1),
        "f_stat": f,
        "p_f_one_tail": stats.f.sf(f, n - 1, n - 1) if f > 1 else stats.f.cdf(f, n - 1, n - 1),
        "f_crit_one_tail": stats.f.ppf(1 - alpha, n - 1, n - 1) if f > 1 else stats.f.ppf(alpha, n - 1, n - 1),
    }


def test_paired_statistics_match_independent_formulas():
    got = paired_statistics(BASE, TUNED)
    assert set(got) == set(STAT_KEYS)
    want = independent(BASE, TUNED)
    for key in STAT_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(BASE, TUNED).statistic, rel=1e-12)
    assert isinstance(got["n"], int) and isinstance(got["df"], int)


def test_paired_statistics_pinned_values():
    # Differences base - tuned = [-2,-1,-1,0,-2,-2,-1,-1,0,1]: mean -0.9, sum of squared deviations 8.9, so
    # t = -0.9 / sqrt(8.9 / 9 / 10); F = (8.4 / 9) / (6.5 / 9) = 84/65. The literals below were evaluated
    # once with mpmath at 30 digits from these closed forms (p = I_{df/(df+t^2)}(df/2, 1/2) two-tailed,
    # P(F_dist > F) = I_{9/(9+9F)}(4.5, 4.5)), not with the scipy code under test.
    s = paired_statistics(BASE, TUNED)
    assert s["n"] == 10 and s["df"] == 9
    assert s["mean_a"] == pytest.approx(2.6) and s["mean_b"] == pytest.approx(3.5)
    assert s["var_a"] == pytest.approx(8.4 / 9) and s["var_b"] == pytest.approx(6.5 / 9)
    assert s["t_stat"] == pytest.approx(-2.861994276017172, rel=1e-12)
    assert s["p_two_tail"] == pytest.approx(0.01871942334987565, rel=1e-10)
    assert s["p_one_tail"] == pytest.approx(0.01871942334987565 / 2, rel=1e-10)
    assert s["f_stat"] == pytest.approx(84 / 65, rel=1e-12) == pytest.approx(1.2923076923076923)
    assert s["p_f_one_tail"] == pytest.approx(0.3543390247395989, rel=1e-10)
    # Critical values = Excel's T.INV(0.95, 9), T.INV.2T(0.05, 9), F.INV.RT(0.05, 9, 9): 1.833, 2.262 and 3.179 in
    # printed t and F tables; the 6-decimal figures were taken from mpmath quantiles once.
    assert s["t_crit_one_tail"] == pytest.approx(1.833113, abs=1e-6)
    assert s["t_crit_two_tail"] == pytest.approx(2.262157, abs=1e-6)
    assert s["f_crit_one_tail"] == pytest.approx(3.178893, abs=1e-6)


def test_f_test_below_one_uses_the_left_tail_like_excel():
    s = paired_statistics(TUNED, BASE, alpha=0.1)  # F = 65/84 < 1
    assert s["f_stat"] == pytest.approx(65 / 84)
    assert s["p_f_one_tail"] == pytest.approx(stats.f.cdf(65 / 84, 9, 9))
    # P(F_dist < 1/F) = P(F_dist > F) with equal df: the same p as the other orientation.
    assert s["p_f_one_tail"] == pytest.approx(0.3543390247395989, rel=1e-10)
    assert s["f_crit_one_tail"] == pytest.approx(stats.f.ppf(0.1, 9, 9)) and s["f_crit_one_tail"] < 1
    assert s["t_stat"] == pytest.approx(2.861994276017172)


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        paired_statistics([3], [4])
    with pytest.raises(ValueError, match="same length"):
        paired_statistics([3, 4], [4])
    s = paired_statistics([5, 5, 5], [3, 4, 5])  # constant column a: r undefined, F = 0
    assert math.isnan(s["pearson_r"]) and s["f_stat"] == 0 and s["p_f_one_tail"] == 0
    s = paired_statistics([3, 4, 5], [5, 5, 5])  # constant column b: F undefined (#DIV/0!)
    assert math.isnan(s["f_stat"]) and math.isnan(s["p_f_one_tail"]) and math.isnan(s["f_crit_one_tail"])
    s = paired_statistics([2, 3, 4], [3, 4, 5])  # every difference -1: t undefined
    assert math.isnan(s["t_stat"]) and math.isnan(s["p_two_tail"]) and s["pearson_r"] == pytest.approx(1.0)
    assert s["t_crit_two_tail"] == pytest.approx(stats.t.ppf(0.975, 2))


def test_summarize_json_on_the_sample(capsys):
    main(["summarize", "--judgments", str(SAMPLES / "judgments.jsonl"), "--a", "base", "--b", "tuned", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [*STAT_KEYS, "closer"]
    assert out["closer"] == {"base": 1, "tuned": 7, "Nothing": 2}
    assert out["t_stat"] == pytest.approx(-2.861994276017172) and out["n"] == 10


def test_summarize_json_writes_null_for_undefined(tmp_path, capsys):
    rows = [{"id": i, "model": m, "score": s, "reason": "r", "closer": "Nothing"}
            for i, (a, b) in enumerate([(3, 5), (4, 5), (5, 5)]) for m, s in (("a", a), ("b", b))]
    path = write_jsonl(tmp_path / "j.jsonl", rows)
    main(["summarize", "--judgments", str(path), "--a", "a", "--b", "b", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["f_stat"] is None and out["pearson_r"] is None and out["closer"] == {"a": 0, "b": 0, "Nothing": 3}


def test_summarize_table(capsys):
    main(["summarize", "--judgments", str(SAMPLES / "judgments.jsonl"), "--a", "base", "--b", "tuned"])
    out = capsys.readouterr().out
    for text in ("t-Test: Paired Two Sample for Means", "F-Test Two-Sample for Variances", "t Stat", "-2.86199",
                 "P(T<=t) two-tail", "0.0187194", "F Critical one-tail", "3.17889", "Pearson Correlation"):
        assert text in out


def test_summarize_names_unpaired_ids_and_bad_verdicts(tmp_path):
    rows = [{"id": "q1", "model": "a", "score": 3, "reason": "r", "closer": "a"},
            {"id": "q1", "model": "b", "score": 2, "reason": "r", "closer": "a"},
            {"id": "q2", "model": "a", "score": 3, "reason": "r", "closer": "a"},
            {"id": "q3", "model": "b", "score": 3, "reason": "r", "closer": "b"}]
    path = write_jsonl(tmp_path / "j.jsonl", rows)
    with pytest.raises(SystemExit) as e:
        main(["summarize", "--judgments", str(path), "--a", "a", "--b", "b"])
    assert "2 question(s) lack a record of one of the two models: 'q2' lacks 'b', 'q3' lacks 'a'" in e.value.code
    rows[1]["closer"] = "b"
    with pytest.raises(SystemExit) as e:
        main(["summarize", "--judgments", str(write_jsonl(tmp_path / "j.jsonl", rows)), "--a", "a", "--b", "b"])
    assert "j.jsonl:2: field 'closer': 'b' disagrees with 'a' at" in e.value.code
    rows[1]["score"] = "high"
    with pytest.raises(SystemExit) as e:
        main(["summarize", "--judgments", str(write_jsonl(tmp_path / "j.jsonl", rows)), "--a", "a", "--b", "b"])
    assert "j.jsonl:2: field 'score': expected a number like line 1, got string 'high'" in e.value.code


# ------------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("step,options", [
    ("generate", ["--questions", "--model", "--out", "--max-new-tokens", "--template", "--system", "--batch-size",
                  "--device", "--dtype"]),
    ("judge", ["--answers", "--a", "--b", "--out", "--judge", "--url", "--judge-model", "--api-key-env",
               "--retries", "--timeout", "--prompt", "--system", "{answer_a}"]),
    ("summarize", ["--judgments", "--a", "--b", "--json", "--alpha", "--out", "--questions", "per_question"]),
    ("runs", ["RUN", "--names", "--stage", "--metrics", "--out", "--json"]),
])
def test_help_of_every_step(capsys, step, options):
    with pytest.raises(SystemExit) as e:
        main([step, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out


def test_top_level_help_lists_the_steps(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "generate" in out and "judge" in out and "summarize" in out and "runs" in out
    assert build_parser().prog == "tuneloop compare"


# ------------------------------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A random 2-layer Llama sized to the local tokenizer, and a LoRA adapter on it whose B matrices are
    perturbed (LoRA starts as a no-op: B = 0) so that the adapted model answers differently."""
    root = tmp_path_factory.mktemp("compare-models")
    save_tiny_llama_with_adapter(root, "base")
    return root


def run_generate(tmp_path, models, out_name, *extra):
    questions = write_jsonl(tmp_path / "questions.jsonl", [
        {"id": "q1", "question": "기술성숙도(TRL)는 무엇인가요?", "reference": "1-9 단계 척도입니다."},
        {"id": "q2", "question": "What is a feasibility study?", "reference": "An ex-ante review."},
        {"id": "q3", "instruction": "Summarize.", "input": "R&D 기획은 수요조사에서 시작합니다.", "reference": "수요조사"},
    ])
    out = tmp_path / out_name
    main(["generate", "--questions", str(questions), *[a for m in models for a in ("--model", m)],
          "--out", str(out), "--max-new-tokens", "5", "--device", "cpu", *extra])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


MODELS = ("base={root}/base", "tuned={root}/base+{root}/adapter")


@pytest.fixture(scope="module")
def first_run(tiny_models, tmp_path_factory):
    """One ``generate`` of both tiny models over the 3 questions (batches of 2: left padding in use)."""
    models = [m.format(root=tiny_models) for m in MODELS]
    return models, run_generate(tmp_path_factory.mktemp("first-run"), models, "answers.jsonl", "--batch-size", "2")


def test_generate_base_and_adapter(first_run):
    _, rows = first_run
    assert len(rows) == 6
    assert [(r["id"], r["model"]) for r in rows] == [(q, m) for q in ("q1", "q2", "q3") for m in ("base", "tuned")]
    assert all(set(r) == {"id", "model", "question", "reference", "answer"} for r in rows)
    assert all(isinstance(r["answer"], str) for r in rows)
    assert rows[0]["reference"] == "1-9 단계 척도입니다."
    assert rows[4]["question"] == "Summarize.\n\nR&D 기획은 수요조사에서 시작합니다."
    answers = {(r["id"], r["model"]): r["answer"] for r in rows}
    assert any(answers[q, "base"] != answers[q, "tuned"] for q in ("q1", "q2", "q3")), "the adapter changed nothing"


def test_generate_is_deterministic_and_padding_invariant(first_run, tmp_path):
    models, rows = first_run
    again = run_generate(tmp_path, models, "again.jsonl", "--batch-size", "2")
    assert again == rows  # greedy decoding: the same answers on a second run
    # Left padding: one prompt at a time (no padding) gives the answers of the padded batches of 2.
    single = run_generate(tmp_path, models[:1], "single.jsonl", "--batch-size", "1")
    assert [r["answer"] for r in single] == [r["answer"] for r in rows if r["model"] == "base"]


def test_generate_template_none_and_option_checks(tiny_models, tmp_path):
    rows = run_generate(tmp_path, [f"base={tiny_models / 'base'}"], "none.jsonl", "--template", "none")
    assert len(rows) == 3
    for extra, problem in ((["--template", "none", "--system", "x"], "--system is the instruction"),
                           (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1")):
        with pytest.raises(SystemExit) as e:
            run_generate(tmp_path, [f"base={tiny_models / 'base'}"], "x.jsonl", *extra)
        assert problem in e.value.code
    with pytest.raises(SystemExit) as e:
        run_generate(tmp_path, [f"m={tiny_models / 'base'}", f"m={tiny_models / 'base'}"], "x.jsonl")
    assert "--model names must differ" in e.value.code


def test_generate_with_a_hub_model_at_a_revision(tiny_models, tmp_path, monkeypatch, first_run):
    """``hf://owner/name@revision`` loads through ``from_pretrained`` (here from a Hugging Face cache laid out as
    the Hub client writes it, offline): the same answers as the local directory; a revision the cache lacks stops
    the command with one line naming the model."""
    import shutil

    import huggingface_hub.constants as hub_constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_models / "base", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert ModelSpec.parse(f"b=hf://acme/tiny@{sha}") == ModelSpec("b", f"hf://acme/tiny@{sha}", None)
    models, rows = first_run
    hub_rows = run_generate(tmp_path, [f"base=hf://acme/tiny@{sha}", f"tuned=hf://acme/tiny+{tiny_models}/adapter"],
                            "hub.jsonl", "--batch-size", "2")
    assert [r["answer"] for r in hub_rows] == [r["answer"] for r in rows]
    with pytest.raises(SystemExit) as e:
        run_generate(tmp_path, ["base=hf://acme/tiny@" + "f" * 40], "missing.jsonl")
    assert e.value.code.startswith("tuneloop compare generate: hf://acme/tiny: cannot load its tokenizer")
    with pytest.raises(CompareError, match="expected hf://owner/name"):
        ModelSpec.parse("b=hf://acme/tiny@")
