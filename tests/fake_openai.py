"""A local OpenAI-compatible chat endpoint that fails as scripted, then answers.

It sits one step further out than ``ScriptedLM``: bae talks to it through a real
``dspy.LM("openai/...")`` and LiteLLM over HTTP, so the tests see the exceptions, status
codes and ``Retry-After`` headers a hosted model really produces.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fail:
    """An HTTP error response, with headers such as ``Retry-After``."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""  # the error's text (default: ``HTTP <status>``)


@dataclass(frozen=True)
class Say:
    """A 200 response whose assistant message is ``text`` verbatim (empty, garbage...); ``finish_reason``
    ``length`` is an answer the server cut at ``max_tokens``."""

    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Stall:
    """Answer only after ``seconds``: longer than the client's timeout, it is a timeout."""

    seconds: float


Step = Fail | Say | Stall


@dataclass
class FakeOpenAI:
    """The endpoint's state: the scripted steps still to play, and every request received."""

    answer: Callable[[dict[str, Any]], str]
    script: list[Step]
    logprobs: Callable[[str], dict[str, Any]] | None = None  # an answer's logprobs, when a request asks
    refuse_logprobs: bool = False  # a request asking for logprobs is a 400, as some providers answer
    requests: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self, body: dict[str, Any]) -> Step:
        with self.lock:
            self.requests.append(time.monotonic())
            self.bodies.append(body)
            return self.script.pop(0) if self.script else Say(self.answer(body))


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            step = fake.next_step(body)
            asked = bool(body.get("logprobs"))
            if fake.refuse_logprobs and asked:
                step = Fail(400, message="logprobs is not supported with this model")
            if isinstance(step, Stall):
                time.sleep(step.seconds)
                step = Say(fake.answer(body))
            if isinstance(step, Fail):
                status, headers = step.status, step.headers
                message = step.message or f"HTTP {status}"
                payload: dict[str, Any] = {"error": {"message": message, "type": "server_error"}}
            else:
                status, headers = 200, {}
                payload = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": step.text},
                            "finish_reason": step.finish_reason,
                            **({"logprobs": fake.logprobs(step.text)} if asked and fake.logprobs else {}),
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                for name, value in {**headers, "content-type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): fine
                pass

    return Handler


@contextmanager
def fake_openai(
    answer: Callable[[dict[str, Any]], str],
    script: list[Step] | None = None,
    logprobs: Callable[[str], dict[str, Any]] | None = None,
    refuse_logprobs: bool = False,
) -> Iterator[FakeOpenAI]:
    """Serve on a free local port for the duration of the block; ``answer`` makes each 200 reply, ``logprobs``
    its logprobs where a request asks for them (``refuse_logprobs``: such a request is a 400)."""
    fake = FakeOpenAI(answer, list(script or []), logprobs=logprobs, refuse_logprobs=refuse_logprobs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
