"""The one client for OpenAI-compatible ``POST /chat/completions`` endpoints (vLLM, TGI, llama.cpp server,
OpenAI), standard library only (``urllib``). The LLM judge of ``tuneloop compare judge`` and the teachers of
the instruction builders (``scripts/build_*instructions.py``) all send through :class:`ChatClient`.

One retry policy (:class:`RetryPolicy`) for every caller:

- retried: connection errors (refused, reset, cut off), timeouts, HTTP 429 and 5xx;
- waits: ``backoff`` seconds before the first retry, doubled before each next one; on a 429 or 503 that
  carries ``Retry-After`` (seconds or an HTTP date) the server's wait is used instead; any wait is capped at
  ``max_wait`` (60 s by default);
- HTTP 400, 413, 422 raise :class:`RequestRejected` at once (this request is refused: prompt too long, ...);
  any other status (401, 403, 404, ...) raises :class:`EndpointUnavailable` at once, as do retryable
  failures once the retries are spent.

Settings (URL, key, model) are passed in by the caller; nothing here reads the environment.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: Statuses that refuse this one request; retrying it unchanged cannot help.
REJECTED_STATUSES = (400, 413, 422)
#: Statuses whose ``Retry-After`` header is honoured (rate limited, temporarily unavailable).
RETRY_AFTER_STATUSES = (429, 503)
#: Failures other than an HTTP status that are retried: refused, reset, timed out (``URLError`` and
#: ``TimeoutError`` are ``OSError``s), cut off mid-response (``HTTPException``).
TRANSIENT_ERRORS = (OSError, http.client.HTTPException)


class InvalidResponse(ValueError):
    """The endpoint answered, but not with a chat completion (or not with usable content). ``payload`` is the
    text it answered with."""

    def __init__(self, message: str, payload: str = ""):
        super().__init__(message)
        self.payload = payload


class RequestRejected(RuntimeError):
    """The endpoint refuses this request (HTTP 400, 413, 422: prompt too long, ...): retrying will not help."""


class EndpointUnavailable(RuntimeError):
    """The endpoint cannot be reached or is misconfigured (after the retries): the caller should stop.

    ``url``, ``problem`` (the last failure, e.g. ``HTTP 503 Service Unavailable: busy``) and ``attempts`` (requests
    sent) let a caller word its own message."""

    def __init__(self, url: str, problem: str, attempts: int):
        self.url, self.problem, self.attempts = url, problem, attempts
        super().__init__(f"{url}: {problem}" + (f" (after {attempts} attempts)" if attempts > 1 else ""))


def chat_completions_url(url: str) -> str:
    """``url`` as given if it ends with ``/chat/completions``, else ``url`` + ``/chat/completions``
    (so both ``http://host:8000/v1`` and the full endpoint work)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def post_json(url: str, data: bytes, api_key: str | None, timeout: float) -> bytes:
    """POST the JSON ``data`` (``Authorization: Bearer`` when ``api_key``); the raw response body. Raises
    ``urllib.error.HTTPError``, ``URLError``, ``OSError`` or ``http.client.HTTPException`` on failure."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def message_content(payload: bytes | str) -> str:
    """``choices[0].message.content`` of a chat-completions response ("" when null); :class:`InvalidResponse`
    when the payload is not one."""
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidResponse(f"the response is not a chat completion (no choices[0].message.content): "
                              f"{text[:200]!r}", text) from None
    if content is not None and not isinstance(content, str):
        raise InvalidResponse(f"choices[0].message.content is {type(content).__name__}, not text", text)
    return content or ""


# A reply may be one fenced block (```json ... ```) and nothing outside it.
_FENCE = re.compile(r"\A```[A-Za-z]*[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.S)


def reply_json(text: str, error: type[InvalidResponse] = InvalidResponse):
    """The JSON value of a model's reply: the whole text, or the inside of one ```json fence around all of it.
    Raises ``error`` (the caller's :class:`InvalidResponse`) saying what is wrong: an empty reply, a fence with
    text outside it, or not JSON."""
    body = (text or "").strip()
    if body.startswith("```"):
        match = _FENCE.match(body)
        if match is None:
            raise error("the reply opens a ``` fence but is not exactly one ```json ... ``` block")
        body = match.group(1).strip()
    if not body:
        raise error("empty reply")
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise error(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds (``"120"``) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, never negative); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a failed request again.

    Args:
        retries: Extra attempts after a retryable failure (0: one attempt only).
        backoff: Seconds before the first retry; doubled before each next one.
        max_wait: Upper bound of any one wait, a server's ``Retry-After`` included.
    """

    retries: int = 3
    backoff: float = 2.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_wait < 0:
            raise ValueError(f"backoff and max_wait must be >= 0 seconds, got {self.backoff}, {self.max_wait}")

    def wait(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): the server's ``retry_after`` when it gave
        one, else ``backoff * 2 ** (retry - 1)``; at most ``max_wait``."""
        seconds = retry_after if retry_after is not None else self.backoff * 2 ** (retry - 1)
        return min(seconds, self.max_wait)


def _http_detail(error: urllib.error.HTTPError, limit: int = 300) -> str:
    """``HTTP <code> <reason>: <start of the body>``."""
    body = error.read().decode("utf-8", errors="replace") if error.fp is not None else ""
    if len(body) > limit:
        body = body[:limit] + f"... [{len(body) - limit} more characters]"
    return f"HTTP {error.code} {error.reason}" + (f": {body}" if body else "")


class ChatClient:
    """An OpenAI-compatible chat-completions endpoint, sent to under :class:`RetryPolicy`.

    Args:
        url: Endpoint or base URL (``/chat/completions`` is appended when missing).
        model: Model name sent in the request.
        api_key: Bearer token (None: no Authorization header, as local servers expect).
        timeout: Seconds to wait for one reply.
        retries: Extra attempts after a connection error, timeout, HTTP 429 or 5xx; then
            :class:`EndpointUnavailable`.
        backoff: Seconds before the first extra attempt, doubled each time (``Retry-After`` wins on 429/503).
        temperature: Sampling temperature (0: greedy, reproducible where the server allows).
        max_tokens: Upper bound on reply tokens (None: not sent, the server's default).
        max_wait: Longest single wait between attempts, in seconds.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 2.0,
        temperature: float = 0.0,
        max_tokens: int | None = 512,
        max_wait: float = 60.0,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.url = chat_completions_url(url)
        self.model, self.api_key = model, api_key
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.policy = RetryPolicy(retries, backoff, max_wait)

    def request_body(self, messages: list[dict]) -> dict:
        """The JSON body of the request for ``messages``."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def complete(self, messages: list[dict]) -> str:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}, ...]``). Raises
        :class:`RequestRejected`, :class:`EndpointUnavailable` or :class:`InvalidResponse`."""
        return message_content(self.post(self.request_body(messages)))

    def post(self, body: dict) -> bytes:
        """POST ``body`` under the retry policy; the raw response of the first success."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempts = self.policy.retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                return post_json(self.url, data, self.api_key, self.timeout)
            except urllib.error.HTTPError as e:
                problem = _http_detail(e)
                if e.code in REJECTED_STATUSES:
                    raise RequestRejected(problem) from None
                if e.code != 429 and e.code < 500:
                    hint = " (check the URL, model and API key)" if e.code in (401, 403, 404) else ""
                    raise EndpointUnavailable(self.url, problem + hint, attempt) from None
                if e.code in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after((e.headers or {}).get("Retry-After"))
            except TRANSIENT_ERRORS as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                if isinstance(reason, BaseException):
                    reason = f"{type(reason).__name__}: {reason}"
                problem = f"no response ({reason})"
            if attempt < attempts:
                time.sleep(self.policy.wait(attempt, retry_after))
        raise EndpointUnavailable(self.url, problem, attempts)
