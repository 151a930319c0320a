"""A scripted OpenAI-compatible ``/chat/completions`` server on 127.0.0.1 (free port, in a thread) for the tests
of the chat client and the LLM judge: no internet, real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeChat:
    """Replies follow a script of ``(status, text)`` or ``(status, text, headers)`` (text = the assistant content
    for 200, the response body otherwise; the last entry repeats); every request is recorded (path, headers,
    JSON body)."""

    def __init__(self, script: list[tuple]):
        self.script, self.requests = list(script), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text, *headers = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                if status == 200:
                    text = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
                data = text.encode()
                self.send_response(status)
                for key, value in (headers[0] if headers else {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat():
    """``chat(script)`` starts a :class:`FakeChat`; all are closed after the test. Import it into a test module
    to use it there."""
    servers: list[FakeChat] = []

    def start(script: list[tuple]) -> FakeChat:
        servers.append(FakeChat(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
