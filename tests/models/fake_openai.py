"""A fake OpenAI-compatible server on 127.0.0.1, for tests of anything that calls models over HTTP.

It speaks ``POST /v1/chat/completions`` (plain and streamed as server-sent
events) and ``POST /v1/embeddings``, answers from a script, can be slow or
fail on purpose, and records what it was sent. Use the ``fake_openai`` fixture
(re-exported by ``tests/models/conftest.py``; import it into another test
package's conftest to use it there) or ``with FakeOpenAI() as fake:``::

    fake.reply(Reply(text="It is 21 °C."))
    fake.reply(Reply(tool_calls=[("weather", {"city": "Oslo"})]))
    fake.fail(2)                                  # the next two requests get HTTP 500
    fake.fail(1, status=429, retry_after="0")     # then one 429 with Retry-After
    fake.delay = 0.2                              # every answer waits this long
    ...
    fake.chat_requests[0].body["messages"]        # what the client sent
    fake.max_concurrency                          # most requests in flight at once
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

__all__ = ["FakeOpenAI", "Reply", "Seen", "fake_openai", "fake_vector"]


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        text: The assistant's text (streamed word by word when asked to stream).
        tool_calls: ``(name, arguments)`` pairs; arguments given as a string are sent as they are
            (to test arguments that are not valid JSON), a dict is JSON-encoded.
        finish_reason: Default ``tool_calls`` when there are tool calls, else ``stop``.
        prompt_tokens: Reported prompt tokens.
        completion_tokens: Reported completion tokens.
        include_usage: Report usage at all (in the body, or in the final streamed chunk).
        status: An HTTP status other than 200 makes this an error answer.
        error: The error message of an error answer.
        headers: Extra response headers (``Retry-After``...).
        delay: Seconds to wait before answering.
    """

    text: str = ""
    tool_calls: Sequence[tuple[str, Mapping[str, Any] | str]] = ()
    finish_reason: str | None = None
    prompt_tokens: int = 7
    completion_tokens: int = 3
    include_usage: bool = True
    status: int = 200
    error: str = "the fake server failed on purpose"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    """A request the server received: its path, JSON body and headers (names in lower case)."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """The unit vector the fake server returns for ``text`` (deterministic)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [digest[i] - 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


class FakeOpenAI:
    """The server; start it with ``with`` (or :meth:`start`), stop it with :meth:`stop`."""

    def __init__(self, *, model: str = "fake-model", dimensions: int = 8) -> None:
        self.model = model
        self.dimensions = dimensions
        self.default = Reply(text="Hello from the fake model.")
        """Answers chat requests when no scripted reply is left."""
        self.delay = 0.0
        """Seconds every request waits before being answered (added to a reply's own delay)."""
        self.always: Reply | None = None
        """When set, every request (chat or embeddings) gets this answer."""
        self.requests: list[Seen] = []
        self.max_concurrency = 0
        self._replies: deque[Reply] = deque()
        self._failures: deque[Reply] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------

    def reply(self, *replies: Reply | str) -> None:
        """Queue answers to the next chat requests (a string is a plain text answer)."""
        self._replies.extend(Reply(text=r) if isinstance(r, str) else r for r in replies)

    def fail(
        self, times: int = 1, *, status: int = 500, retry_after: str | None = None, error: str | None = None
    ) -> None:
        """Answer the next ``times`` requests (of any kind) with HTTP ``status``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        failure = Reply(status=status, headers=headers, error=error or f"the fake server failed with {status}")
        self._failures.extend([failure] * times)

    def fail_always(self, status: int = 500) -> None:
        """Answer every request from now on with HTTP ``status``."""
        self.always = Reply(status=status, error=f"the fake server always fails with {status}")

    @property
    def chat_requests(self) -> list[Seen]:
        """The chat-completions requests received, in order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def embedding_requests(self) -> list[Seen]:
        """The embeddings requests received, in order."""
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    @property
    def url(self) -> str:
        """The base URL to configure a client with (ends in ``/v1``)."""
        if self._server is None:
            raise RuntimeError("the fake server is not running; use it in a with block")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    # -- running -----------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Listen on a free loopback port, answering in a background thread."""
        fake = self

        class Handler(_Handler):
            server_fake = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering (requests still waiting are released) and close the port."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- answering (called from the server's threads) ----------------------------------------

    def _next(self, path: str) -> Reply | None:
        with self._lock:
            if self.always is not None:
                return self.always
            if self._failures:
                return self._failures.popleft()
            if path.endswith("/chat/completions"):
                return self._replies.popleft() if self._replies else self.default
            return None

    def _enter(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Keep test output quiet."""

    def do_POST(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        seen = Seen(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        fake._enter(seen)
        try:
            reply = fake._next(self.path)
            fake._wait(fake.delay + (reply.delay if reply else 0.0))
            if fake._stopping.is_set():
                return
            if reply is not None and reply.status != 200:
                self._json(reply.status, {"error": {"message": reply.error, "type": "fake_error"}}, reply.headers)
            elif self.path.endswith("/embeddings"):
                self._embeddings(body)
            elif self.path.endswith("/chat/completions") and reply is not None:
                if body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._completion(body, reply)
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer
        finally:
            fake._leave()

    def _json(self, status: int, document: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _usage(self, reply: Reply) -> dict[str, int]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }

    def _completion(self, body: dict[str, Any], reply: Reply) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": _arguments(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)
            ]
        document: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body.get("model", self.server_fake.model),
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        }
        if reply.include_usage:
            document["usage"] = self._usage(reply)
        self._json(200, document)

    def _stream(self, body: dict[str, Any], reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model = body.get("model", self.server_fake.model)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> None:
            document = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": choices}
            self._chunk(f"data: {json.dumps({**document, **extra})}\n\n")

        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in _pieces(reply.text):
            chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        for i, (name, args) in enumerate(reply.tool_calls):
            first = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
            chunk([{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}])
            text = _arguments(args)
            third = max(len(text) // 3, 1)
            for start in range(0, len(text), third):
                part = {"index": i, "function": {"arguments": text[start : start + third]}}
                chunk([{"index": 0, "delta": {"tool_calls": [part]}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {}, "finish_reason": _finish(reply)}])
        if reply.include_usage and (body.get("stream_options") or {}).get("include_usage"):
            chunk([], usage=self._usage(reply))
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, text: str) -> None:
        data = text.encode("utf-8")
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _embeddings(self, body: dict[str, Any]) -> None:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            self._json(400, {"error": {"message": "input must be a string or a list of strings"}})
            return
        dimensions = self.server_fake.dimensions
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(str(t), dimensions)}
            for i, t in enumerate(texts)
        ]
        data.reverse()  # clients must order by index, not by position
        tokens = sum(len(str(t).split()) for t in texts)
        self._json(
            200,
            {"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": tokens}},
        )


def _arguments(args: Mapping[str, Any] | str) -> str:
    return args if isinstance(args, str) else json.dumps(dict(args))


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [p for p in [w + " " for w in words[:-1]] + [words[-1]] if p]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running fake OpenAI-compatible server, stopped after the test."""
    with FakeOpenAI() as fake:
        yield fake
