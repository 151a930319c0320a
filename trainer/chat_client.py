"""A minimal client for OpenAI-compatible ``POST /chat/completions`` endpoints (vLLM, TGI, llama.cpp server,
OpenAI), standard library only (``urllib``).

:class:`ChatClient` sends one list of chat messages and returns the assistant's text, retrying connection
errors, timeouts, HTTP 429 and 5xx with exponential backoff. What an HTTP error status means (retry, reject
the request, stop) is :meth:`ChatClient.http_problem`; :class:`StrictChatClient` retries only 429 and 5xx.

Settings (URL, key, model) are passed in by the caller; nothing here reads the environment.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request


class InvalidResponse(ValueError):
    """The endpoint answered, but not with a chat completion (or not with usable content)."""


class RequestRejected(RuntimeError):
    """The endpoint refuses this request (HTTP 400, 413, 422: prompt too long, ...): retrying will not help."""


class EndpointUnavailable(RuntimeError):
    """The endpoint cannot be reached or is misconfigured (after the retries): the caller should stop."""


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
    try:
        return json.loads(payload)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidResponse(f"not a chat-completions response: {payload[:200]!r}") from None


class ChatClient:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
        url: Endpoint or base URL (``/chat/completions`` is appended when missing).
        model: Model name sent in the request.
        api_key: Bearer token (None: no Authorization header, as local servers expect).
        timeout: Seconds to wait for one reply.
        connect_retries: Extra attempts after a connection error, timeout or retryable HTTP status; then
            :class:`EndpointUnavailable`.
        backoff: Seconds before the first extra attempt, doubled each time.
        temperature: Sampling temperature (0: greedy, reproducible where the server allows).
        max_tokens: Upper bound on reply tokens.
    """

    #: Errors other than an HTTP status that are retried (refused, reset, timed out, cut off, ...).
    transient_errors: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_retries: int = 3,
        backoff: float = 2.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ):
        self.url = chat_completions_url(url)
        self.model, self.api_key = model, api_key
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.connect_retries, self.backoff = connect_retries, backoff

    def http_problem(self, code: int, detail: str) -> str:
        """What HTTP status ``code`` (with the start of the response body) means: raise
        :class:`RequestRejected` (400, 413, 422) or :class:`EndpointUnavailable` (401, 403, 404), or return
        the problem text of a retryable failure (429, 5xx, anything else)."""
        if code in (400, 413, 422):
            raise RequestRejected(f"HTTP {code}: {detail}")
        if code in (401, 403, 404):
            raise EndpointUnavailable(f"{self.url}: HTTP {code} {detail} (check the URL, model and API key)")
        return f"HTTP {code} {detail}"

    def complete(self, messages: list[dict]) -> str:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        ).encode("utf-8")
        problem = ""
        for attempt in range(self.connect_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                payload = post_json(self.url, body, self.api_key, self.timeout)
            except urllib.error.HTTPError as e:
                problem = self.http_problem(e.code, e.read()[:300].decode("utf-8", "replace"))
                continue
            except self.transient_errors as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            return message_content(payload)
        raise EndpointUnavailable(f"{self.url}: {problem} (after {self.connect_retries + 1} attempts)")


class StrictChatClient(ChatClient):
    """A :class:`ChatClient` that retries only HTTP 429 and 5xx (and connection errors, timeouts); 400, 413,
    422 raise :class:`RequestRejected`, any other status :class:`EndpointUnavailable` at once."""

    transient_errors = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)

    def http_problem(self, code: int, detail: str) -> str:
        if code == 429 or code >= 500:
            return f"HTTP {code}: {detail}"
        if code in (400, 413, 422):
            raise RequestRejected(f"HTTP {code}: {detail}")
        raise EndpointUnavailable(f"{self.url}: HTTP {code}: {detail}")
