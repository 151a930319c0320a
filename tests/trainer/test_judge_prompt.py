"""The LLM judge's prompt (``tuneloop compare judge --prompt FILE --system FILE``): the built-in prompt filled as
before, the placeholders checked on load with one-line errors naming the file, and the custom text arriving in
the request the local OpenAI-compatible server receives."""

from __future__ import annotations

import pytest

from tests.trainer.fake_chat import chat  # noqa: F401 (the fixture)
from tests.trainer.test_judges import VALID, answers_file
from trainer.compare import main
from trainer.judges import JUDGE_PROMPT, JUDGE_SYSTEM, JudgePrompt, fill_template, load_judge_prompt


def test_default_prompt_is_filled_as_before_and_only_once():
    (system, user) = JudgePrompt().messages("Q {answer_a}", "R", "A", "B")
    assert system == {"role": "system", "content": JUDGE_SYSTEM}
    # The built-in text as str.format filled it when its JSON example was written with doubled braces.
    formatted = JUDGE_PROMPT.replace('{"closer"', '{{"closer"').replace('"<text>"}', '"<text>"}}')
    assert user["content"] == formatted.format(question="Q {answer_a}", reference="R", answer_a="A", answer_b="B")
    assert user["content"].startswith("Question:\nQ {answer_a}\n") and '\n{"closer": "A" or "B"' in user["content"]
    assert fill_template('{{question}} {"a": {"b": {question}}}', question="x") == '{question} {"a": {"b": x}}'


TEAM_PROMPT = """질문: {question}
참조 답변: {reference}
모델 A 답변: {answer_a}
모델 B 답변: {answer_b}
Score anchors: 1 = wrong or unrelated, 2 = mostly wrong, 3 = half right, 4 = right but missing a detail, 5 = same as
the reference. Reply as {"closer": "A"|"B"|"Nothing", "score_a": n, "score_b": n, "reason": "..."}"""


def test_judge_command_sends_the_custom_prompt_and_system(chat, tmp_path):
    server = chat([(200, VALID)])
    prompt, system = tmp_path / "prompt.txt", tmp_path / "system.txt"
    prompt.write_text(TEAM_PROMPT + "\n", encoding="utf-8")
    system.write_text("You are the R&D planning team's judge.", encoding="utf-8")
    main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--url", server.url,
          "--judge-model", "m", "--prompt", str(prompt), "--system", str(system), "--out", str(tmp_path / "j.jsonl")])
    assert len(server.requests) == 2
    messages = server.requests[0]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "You are the R&D planning team's judge."}
    want = TEAM_PROMPT
    for key, value in (("question", "question q1"), ("reference", "TRL runs from 1 to 9."), ("answer_a", "dunno"),
                       ("answer_b", "TRL runs from 1 to 9.")):
        want = want.replace("{" + key + "}", value)
    assert messages[1] == {"role": "user", "content": want}  # the file's text, stripped, braces of the JSON kept
    assert "Score anchors: 1 = wrong" in want and "참조 답변: TRL runs from 1 to 9." in want

ALL = "{question} {reference} {answer_a} {answer_b} "
KEYS = "closer score_a score_b reason"


@pytest.mark.parametrize("prompt,system,named,problem", [
    (ALL + "{answer} " + KEYS, None, "prompt", "unknown placeholder(s) {answer}; the placeholders are {question}, "),
    ("{question} {reference} {answer_a} " + KEYS, None, "prompt", "missing placeholder(s) {answer_b}"),
    (ALL + "{ question } " + KEYS, None, "prompt", "write '{ question }' without spaces"),
    (ALL + "closer score_a", None, "prompt", "never names the reply key(s) ['score_b', 'reason']"),
    (ALL, "Reply with closer, score_a, score_b and reason for {question}.", "system",
     "{question} is filled in only in the --prompt"),
    ("  \n", None, "prompt", "the file is empty"),
    (None, None, "prompt", "file not found"),
])
def test_prompt_files_are_checked_before_any_request(tmp_path, prompt, system, named, problem):
    paths = {"prompt": tmp_path / "prompt.txt", "system": tmp_path / "system.txt"}
    for name, text in (("prompt", prompt), ("system", system)):
        if text is not None:
            paths[name].write_text(text, encoding="utf-8")
    argv = ["--prompt", str(paths["prompt"])] + (["--system", str(paths["system"])] if system else [])
    with pytest.raises(SystemExit) as e:  # nobody listens on port 9: no request is made
        main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--url",
              "http://127.0.0.1:9/v1", "--judge-model", "m", *argv, "--out", str(tmp_path / "j.jsonl")])
    msg = e.value.code
    assert msg.startswith(f"tuneloop compare judge: --{named} {paths[named]}: ") and problem in msg
    assert "\n" not in msg


def test_reply_keys_may_be_asked_in_the_system_text(tmp_path):
    (tmp_path / "p.txt").write_text(ALL)
    (tmp_path / "s.txt").write_text("Reply with JSON: closer, score_a, score_b, reason.")
    prompt = load_judge_prompt(str(tmp_path / "p.txt"), str(tmp_path / "s.txt"))
    assert prompt.messages("q", "r", "a", "b")[1]["content"] == "q r a b"
    assert load_judge_prompt() == JudgePrompt(JUDGE_PROMPT, JUDGE_SYSTEM, "the built-in prompt")


def test_prompt_is_an_option_of_the_http_judge(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["judge", "--answers", str(answers_file(tmp_path)), "--a", "base", "--b", "tuned", "--judge", "rouge",
              "--prompt", "p.txt", "--out", str(tmp_path / "j.jsonl")])
    assert "--prompt is an option of --judge http" in e.value.code
