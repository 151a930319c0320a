"""``trainer.chat_client``: the one retry policy of the judge and the teachers, against a real HTTP server on
127.0.0.1 (:class:`tests.trainer.fake_chat.FakeChat`, no internet). ``time.sleep`` is replaced by a recorder:
the waits are checked, never slept."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from tests.trainer.fake_chat import chat  # noqa: F401 (the fixture)
from trainer.chat_client import (
    ChatClient,
    EndpointUnavailable,
    InvalidResponse,
    RequestRejected,
    RetryPolicy,
    parse_retry_after,
    reply_json,
)
from trainer.judges import HttpJudge, JudgeError

VALID_JUDGMENT = '{"closer": "A", "score_a": 5, "score_b": 1, "reason": "A is the reference."}'


@pytest.fixture
def waits(monkeypatch):
    """Every ``time.sleep`` the client asks for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


def ask(client: ChatClient) -> str:
    return client.complete([{"role": "user", "content": "hi"}])


def test_429_with_retry_after_waits_then_succeeds(chat, waits):
    server = chat([(429, '{"error": "rate limited"}', {"Retry-After": "1"}), (200, "hello")])
    assert ask(ChatClient(server.url, "m", backoff=8.0)) == "hello"
    assert waits == [1.0]  # the server's wait, not the client's 8 s backoff
    assert len(server.requests) == 2


def test_5xx_backs_off_exponentially(chat, waits):
    server = chat([(500, "boom"), (502, "bad gateway"), (503, "busy"), (200, "ok")])
    assert ask(ChatClient(server.url, "m", retries=3, backoff=0.5)) == "ok"
    assert waits == [0.5, 1.0, 2.0]
    assert len(server.requests) == 4


def test_5xx_gives_up_after_the_retries(chat, waits):
    server = chat([(500, '{"error": "model overloaded"}')])
    with pytest.raises(EndpointUnavailable) as e:
        ask(ChatClient(server.url, "m", retries=2, backoff=1.0))
    assert (e.value.attempts, e.value.url) == (3, f"{server.url}/chat/completions")
    assert e.value.problem.startswith("HTTP 500 Internal Server Error: ") and "model overloaded" in e.value.problem
    assert str(e.value).endswith("(after 3 attempts)")
    assert waits == [1.0, 2.0] and len(server.requests) == 3


def test_retry_after_is_capped_and_only_read_on_429_and_503(chat, waits):
    server = chat([(503, "maintenance", {"Retry-After": "3600"}), (500, "x", {"Retry-After": "30"}), (200, "ok")])
    assert ask(ChatClient(server.url, "m", backoff=0.25, max_wait=5.0)) == "ok"
    assert waits == [5.0, 0.5]  # an hour capped at max_wait; a 500's Retry-After ignored: backoff 0.25 x 2


def test_retry_after_as_an_http_date(chat, waits):
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    server = chat([(429, "slow down", {"Retry-After": format_datetime(later, usegmt=True)}), (200, "ok")])
    assert ask(ChatClient(server.url, "m", backoff=0.0)) == "ok"
    (wait,) = waits
    assert 25 <= wait <= 30


def test_parse_retry_after():
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0  # in the past: no wait
    for unreadable in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(unreadable, now) is None


def test_retry_policy_waits():
    policy = RetryPolicy(retries=4, backoff=2.0, max_wait=10.0)
    assert [policy.wait(k) for k in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]
    assert policy.wait(1, retry_after=7.0) == 7.0 and policy.wait(3, retry_after=0.0) == 0.0
    with pytest.raises(ValueError, match="retries must be >= 0"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="backoff and max_wait must be >= 0"):
        RetryPolicy(backoff=-1.0)


def test_400_rejects_and_401_stops_without_retrying(chat, waits):
    server = chat([(400, '{"error": "prompt too long"}')])
    with pytest.raises(RequestRejected, match=r"^HTTP 400 Bad Request: .*prompt too long"):
        ask(ChatClient(server.url, "m"))
    server = chat([(401, "no key")])
    with pytest.raises(EndpointUnavailable, match=r"HTTP 401 Unauthorized: no key \(check the URL, model and API key"):
        ask(ChatClient(server.url, "m"))
    assert waits == [] and len(server.requests) == 1


def test_connection_refused_is_retried(waits):
    with socket.socket() as s:  # a port that nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointUnavailable) as e:
        ask(ChatClient(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=1.0))
    assert e.value.attempts == 3 and e.value.problem.startswith("no response (")
    assert waits == [1.0, 2.0]


def test_a_reply_that_is_no_chat_completion(chat, waits):
    server = chat([(201, '{"id": "not a completion"}')])  # a success status, but no choices
    with pytest.raises(InvalidResponse, match=r"not a chat completion") as e:
        ask(ChatClient(server.url, "m"))
    assert e.value.payload == '{"id": "not a completion"}'


def test_http_judge_uses_the_same_policy(chat, waits):
    server = chat([(500, "boom"), (429, "later", {"Retry-After": "5"}), (503, "busy"),
                    (200, VALID_JUDGMENT)])
    judge = HttpJudge(server.url, "judge", retries=3, backoff=1.0, timeout=5)
    assert judge.judge("q", "r", "a", "b").closer == "A"
    assert waits == [1.0, 5.0, 4.0]  # --backoff is the first wait, doubled; the 429's Retry-After wins
    server = chat([(429, "later", {"Retry-After": "3"})])
    with pytest.raises(JudgeError, match=r"failed 2 time\(s\); last: HTTP 429 Too Many Requests: later"):
        HttpJudge(server.url, "judge", retries=1, backoff=0.0, timeout=5).judge("q", "r", "a", "b")
    assert waits[-1] == 3.0


def test_http_judge_does_not_retry_a_rejected_request(chat, waits):
    server = chat([(422, "unprocessable")])
    with pytest.raises(JudgeError, match=r"rejected the request: HTTP 422"):
        HttpJudge(server.url, "judge", retries=3, backoff=1.0, timeout=5).judge("q", "r", "a", "b")
    assert len(server.requests) == 1 and waits == []


@pytest.mark.parametrize("reply,value", [
    ('{"a": 1}', {"a": 1}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('  ```\n[1, 2]\n```  ', [1, 2]),
    ('```JSON {"a": 1}```', {"a": 1}),
])
def test_reply_json_reads_the_reply_or_its_one_fence(reply, value):
    assert reply_json(reply) == value


@pytest.mark.parametrize("reply,problem", [
    ("", "empty reply"),
    ("```json\n\n```", "empty reply"),
    ('Sure! {"a": 1}', "not valid JSON (Expecting value at line 1 column 1)"),
    ('```json\n{"a": 1}\n```\nHope this helps', "not exactly one ```json ... ``` block"),
])
def test_reply_json_names_the_problem_with_the_callers_error(reply, problem):
    class Mine(InvalidResponse):
        pass

    with pytest.raises(Mine) as e:
        reply_json(reply, Mine)
    assert problem in str(e.value)
