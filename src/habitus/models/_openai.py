"""An OpenAI-compatible ``/v1`` endpoint as a model provider: vLLM, Ollama, llama.cpp's server, hosted APIs.

Chat completions are sent to ``POST {base_url}/chat/completions`` (streamed as
server-sent events when the caller wants the text as it comes), embeddings to
``POST {base_url}/embeddings``. Connection errors, timeouts, 408, 409, 429 and
5xx answers are retried with exponential backoff and jitter, honouring
``Retry-After``; other answers fail at once. Every failure is a
:class:`~habitus.errors.ModelUnavailableError` (or its subclass
:class:`~habitus.errors.ModelTimeoutError`) naming the provider, the URL, the
HTTP status and an excerpt of what the server said.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from habitus._version import __version__
from habitus.errors import InvalidRequestError, ModelTimeoutError, ModelUnavailableError
from habitus.models._config import ProviderConfig
from habitus.models._estimate import completion_chars, estimate_tokens, request_chars
from habitus.models._types import ChatMessage, ChatRequest, Completion, OnText, ToolCall, ToolSpec, Usage

if TYPE_CHECKING:
    import httpx  # imported when first used: ``import habitus`` stays light

__all__ = ["OpenAIProvider"]

logger = logging.getLogger("habitus.models")

_RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_MAX_BACKOFF_S = 8.0
_MAX_RETRY_AFTER_S = 60.0
_EXCERPT = 300

T = TypeVar("T")


class _Failure(ModelUnavailableError):
    """A failed request, with how many attempts were made (read by the gateway for ``model.failed``)."""

    def __init__(self, message: str, *, attempts: int, status: int | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class _TimeoutFailure(_Failure, ModelTimeoutError):
    """A request that timed out on its last attempt."""


class _Retryable(Exception):
    """One attempt failed in a way worth trying again (internal to the retry loop)."""

    def __init__(self, problem: str, *, status: int | None = None, retry_after: float | None = None,
                 timed_out: bool = False) -> None:  # fmt: skip
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out


class _Fatal(Exception):
    """One attempt failed in a way that trying again will not fix (internal to the retry loop)."""

    def __init__(self, problem: str, *, status: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIProvider:
    """A provider speaking the OpenAI chat-completions and embeddings API.

    Args:
        name: The provider's name in the gateway (it appears in errors and events).
        base_url: The API root, ending in ``/v1``, e.g. ``"http://localhost:11434/v1"``.
        api_key: Sent as a bearer token when given.
        chat_model: Model for chat completions when a request names none.
        embedding_model: Model for embeddings when a call names none.
        timeout_s: Seconds one attempt may take (for a streamed answer: to start,
            and between two pieces).
        max_retries: Attempts after the first, on connection errors, timeouts, 408,
            409, 429 and 5xx.
        retry_backoff_s: Seconds before the first retry, doubled for each further
            one (capped at 8 s), with jitter; a ``Retry-After`` answer waits at least that long.
        transport: An ``httpx`` transport to send requests through (default: the network).

    Raises:
        InvalidRequestError: A malformed URL or an out-of-range parameter.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        chat_model: str | None = None,
        embedding_model: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not re.match(r"https?://[^/\s]+", base_url):
            raise InvalidRequestError(
                f"model provider {name!r}: base_url must be an http(s) URL such as "
                f"'http://localhost:11434/v1', not {base_url!r}"
            )
        if timeout_s <= 0 or max_retries < 0 or retry_backoff_s < 0:
            raise InvalidRequestError(
                f"model provider {name!r}: need timeout_s > 0, max_retries >= 0 and retry_backoff_s >= 0; "
                f"got {timeout_s!r}, {max_retries!r} and {retry_backoff_s!r}"
            )
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.chat_model = chat_model
        self.embedding_model = embedding_model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._api_key = api_key
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, name: str, config: ProviderConfig, **options: Any) -> OpenAIProvider:
        """The provider a ``[models.providers.NAME]`` table describes (``options`` as for the constructor).

        Raises:
            InvalidRequestError: The table has no ``base_url``.
        """
        if not config.base_url:
            raise InvalidRequestError(
                f"model provider {name!r} needs a base_url, such as 'http://localhost:11434/v1' "
                f"(set [models.providers.{name}] base_url in habitus.toml)"
            )
        return cls(
            name,
            config.base_url,
            api_key=config.api_key,
            chat_model=config.chat_model,
            embedding_model=config.embedding_model,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            **options,
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, base_url={self.base_url!r}, chat_model={self.chat_model!r})"

    # -- chat -------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, on_text: OnText | None = None) -> Completion:
        """Answer ``request``; with ``on_text``, stream the answer and call it with each piece of text.

        A streamed answer is retried only while no text has been passed on.

        Raises:
            ModelUnavailableError: The endpoint failed, refused or answered nonsense, after its retries.
            ModelTimeoutError: It did not answer in time, after its retries.
        """
        url = f"{self.base_url}/chat/completions"
        payload = self.chat_payload(request, stream=on_text is not None)
        if on_text is None:

            async def once(url: str, payload: dict[str, Any]) -> Completion:
                return self._parse_completion(url, request, await self._post_json(url, payload))

            return await self._with_retries(url, payload, once)
        delivered = [False]

        async def attempt(url: str, payload: dict[str, Any]) -> Completion:
            return await self._stream(url, request, payload, on_text, delivered)

        return await self._with_retries(url, payload, attempt, delivered=delivered)

    def chat_payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body sent for ``request`` (OpenAI's chat-completions form)."""
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [_message_json(m) for m in request.messages],
        }
        if request.tools:
            payload["tools"] = [_tool_json(t) for t in request.tools]
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _parse_completion(self, url: str, request: ChatRequest, document: Any) -> Completion:
        def malformed(why: str) -> _Failure:
            return _Failure(self._describe(url, f"answered a malformed completion: {why}"), attempts=1, status=200)

        choices = document.get("choices") if isinstance(document, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed(f"no 'choices' in {_excerpt(json.dumps(document))!r}")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise malformed(f"no 'message' in the first choice: {_excerpt(json.dumps(choices[0]))!r}")
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise malformed(f"'content' is not text: {_excerpt(json.dumps(text))!r}")
        calls = []
        raw_calls = message.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise malformed(f"'tool_calls' is not a list: {_excerpt(json.dumps(raw_calls))!r}")
        for index, raw in enumerate(raw_calls):
            function = raw.get("function") if isinstance(raw, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise malformed(f"tool call {index} has no function name: {_excerpt(json.dumps(raw))!r}")
            call_id = raw.get("id") or f"call_{index}"
            calls.append(self._tool_call(url, str(call_id), function["name"], function.get("arguments")))
        finish = choices[0].get("finish_reason") or ("tool_calls" if calls else "stop")
        usage = self._usage(document.get("usage"), request, text, calls)
        model = document.get("model") if isinstance(document.get("model"), str) else request.model
        return Completion(model=model, text=text, tool_calls=tuple(calls), finish_reason=str(finish), usage=usage)

    def _tool_call(self, url: str, call_id: str, name: str, arguments: Any) -> ToolCall:
        """A tool call with its arguments parsed; arguments that are not a JSON object are an error."""
        if isinstance(arguments, dict):
            return ToolCall(id=call_id, name=name, arguments=arguments)
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            return ToolCall(id=call_id, name=name, arguments={})
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError as exc:
            raise _Failure(
                self._describe(
                    url,
                    f"asked for tool {name!r} with arguments that are not valid JSON ({exc}): "
                    f"{_excerpt(str(arguments))!r}",
                ),
                attempts=1,
                status=200,
            ) from None
        if not isinstance(parsed, dict):
            raise _Failure(
                self._describe(
                    url,
                    f"asked for tool {name!r} with arguments that are not a JSON object: {_excerpt(str(arguments))!r}",
                ),
                attempts=1,
                status=200,
            )
        return ToolCall(id=call_id, name=name, arguments=parsed)

    @staticmethod
    def _usage(raw: Any, request: ChatRequest, text: str, calls: Sequence[ToolCall]) -> Usage:
        if isinstance(raw, dict):
            prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
                return Usage(prompt_tokens=prompt, completion_tokens=completion)
        return Usage(
            prompt_tokens=estimate_tokens(request_chars(request)),
            completion_tokens=estimate_tokens(completion_chars(text, calls)),
        )

    async def _stream(
        self,
        url: str,
        request: ChatRequest,
        payload: dict[str, Any],
        on_text: OnText,
        delivered: list[bool],
    ) -> Completion:
        client = self._http()
        pieces: list[str] = []
        partial: dict[int, _PartialCall] = {}
        finish: str | None = None
        usage_raw: Any = None
        model = request.model
        async with client.stream("POST", url, json=payload, headers=self._headers()) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for_status(response)
            if "application/json" in response.headers.get("content-type", ""):
                # A server that ignores "stream": the whole answer at once, passed on as one piece.
                await response.aread()
                try:
                    document = response.json()
                except ValueError:
                    raise _Fatal(f"answered something that is not JSON: {_excerpt(response.text)!r}") from None
                completion = self._parse_completion(url, request, document)
                if completion.text:
                    delivered[0] = True
                    result = on_text(completion.text)
                    if inspect.isawaitable(result):
                        await result
                return completion
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise _Fatal(f"streamed a chunk that is not JSON: {_excerpt(data)!r}", status=200) from None
                if not isinstance(chunk, dict):
                    raise _Fatal(f"streamed a chunk that is not an object: {_excerpt(data)!r}", status=200)
                if "error" in chunk:
                    raise _Fatal(f"streamed an error: {_excerpt(json.dumps(chunk['error']))}", status=200)
                if isinstance(chunk.get("model"), str):
                    model = chunk["model"]
                if chunk.get("usage"):
                    usage_raw = chunk["usage"]
                choices = chunk.get("choices") or []
                if not choices or not isinstance(choices[0], dict):
                    continue
                choice = choices[0]
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                content = delta.get("content")
                if isinstance(content, str) and content:
                    pieces.append(content)
                    delivered[0] = True
                    result = on_text(content)
                    if inspect.isawaitable(result):
                        await result
                for raw in delta.get("tool_calls") or ():
                    _accumulate(partial, raw)
        text = "".join(pieces)
        calls = [
            self._tool_call(url, p.id or f"call_{i}", p.name, "".join(p.arguments)) for i, p in sorted(partial.items())
        ]
        usage = self._usage(usage_raw, request, text, calls)
        finish_reason = finish or ("tool_calls" if calls else "stop")
        return Completion(model=model, text=text, tool_calls=tuple(calls), finish_reason=finish_reason, usage=usage)

    # -- embeddings -------------------------------------------------------------------------

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Embed ``texts`` in one request (the gateway splits large calls into batches).

        Raises:
            InvalidRequestError: No model named and no ``embedding_model`` configured.
            ModelUnavailableError: The endpoint failed or answered nonsense, after its retries.
            ModelTimeoutError: It did not answer in time, after its retries.
        """
        if isinstance(texts, str):
            raise InvalidRequestError("embed takes a sequence of texts, not one string")
        name = model or self.embedding_model
        if not name:
            raise InvalidRequestError(
                f"model provider {self.name!r} has no embedding_model; pass model= or set "
                f"[models.providers.{self.name}] embedding_model in habitus.toml"
            )
        if not texts:
            return []
        url = f"{self.base_url}/embeddings"
        count = len(texts)

        async def once(url: str, payload: dict[str, Any]) -> list[list[float]]:
            return self._parse_embeddings(url, await self._post_json(url, payload), count)

        return await self._with_retries(url, {"model": name, "input": list(texts)}, once)

    def _parse_embeddings(self, url: str, document: Any, count: int) -> list[list[float]]:
        def malformed(why: str) -> _Failure:
            return _Failure(self._describe(url, f"answered malformed embeddings: {why}"), attempts=1, status=200)

        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise malformed(f"no 'data' list in {_excerpt(json.dumps(document))!r}")
        if len(data) != count:
            raise malformed(f"{len(data)} embeddings for {count} texts")
        rows: list[list[float] | None] = [None] * count
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
                raise malformed(f"a bad or repeated index {index!r}")
            vector = item.get("embedding") if isinstance(item, dict) else None
            if (
                not isinstance(vector, list)
                or not vector
                or not all(isinstance(x, int | float) and math.isfinite(x) for x in vector)
            ):
                raise malformed(f"embedding {index} is not a list of finite numbers")
            rows[index] = [float(x) for x in vector]
        if len({len(r) for r in rows if r is not None}) != 1:
            raise malformed("embeddings of different sizes")
        return [r for r in rows if r is not None]

    # -- transport --------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            timeout = httpx.Timeout(self.timeout_s)
            self._client = httpx.AsyncClient(timeout=timeout, transport=self._transport)
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"habitus/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _post_json(self, url: str, payload: dict[str, Any]) -> Any:
        async with asyncio.timeout(self.timeout_s):
            response = await self._http().post(url, json=payload, headers=self._headers())
        if response.status_code >= 400:
            _raise_for_status(response)
        try:
            return response.json()
        except ValueError:
            raise _Fatal(f"answered something that is not JSON: {_excerpt(response.text)!r}", status=200) from None

    async def _with_retries(
        self,
        url: str,
        payload: dict[str, Any],
        attempt: Callable[[str, dict[str, Any]], Awaitable[T]],
        *,
        delivered: list[bool] | None = None,
    ) -> T:
        """Run ``attempt(url, payload)``, retrying what is worth retrying, and turn failures into errors."""
        import httpx

        tries = 0
        while True:
            tries += 1
            try:
                try:
                    return await attempt(url, payload)
                except httpx.TimeoutException:
                    raise _Retryable(f"timed out after {self.timeout_s:g} s", timed_out=True) from None
                except TimeoutError:
                    raise _Retryable(f"timed out after {self.timeout_s:g} s", timed_out=True) from None
                except httpx.TransportError as exc:
                    raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
            except _Fatal as exc:
                raise _Failure(self._describe(url, exc.problem, tries), attempts=tries, status=exc.status) from None
            except _Failure as exc:
                exc.attempts = tries
                raise
            except _Retryable as exc:
                if tries > self.max_retries or (delivered is not None and delivered[0]):
                    cls = _TimeoutFailure if exc.timed_out else _Failure
                    raise cls(self._describe(url, exc.problem, tries), attempts=tries, status=exc.status) from None
                delay = min(self.retry_backoff_s * 2 ** (tries - 1), _MAX_BACKOFF_S) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                logger.warning(
                    "model provider %r (%s): %s; retrying in %.2f s (attempt %d of %d)",
                    self.name, url, exc.problem, delay, tries + 1, self.max_retries + 1,
                )  # fmt: skip
                await asyncio.sleep(delay)

    def _describe(self, url: str, problem: str, tries: int = 1) -> str:
        after = f" after {tries} attempts" if tries > 1 else ""
        return f"model provider {self.name!r} ({url}) failed{after}: {problem}"

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    detail = _error_detail(response)
    problem = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in _RETRY_STATUSES:
        raise _Retryable(problem, status=status, retry_after=_retry_after(response.headers.get("Retry-After")))
    raise _Fatal(problem, status=status)


def _error_detail(response: httpx.Response) -> str:
    import httpx

    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    try:
        error = json.loads(text)["error"]
        text = str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        pass
    return _excerpt(" ".join(text.split()))


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None  # an HTTP date: our own backoff will do


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def _accumulate(partial: dict[int, _PartialCall], raw: Any) -> None:
    """Add one streamed piece of a tool call (pieces of the same call share an index)."""
    if not isinstance(raw, dict):
        return
    index = raw.get("index", len(partial))
    entry = partial.setdefault(index if isinstance(index, int) else len(partial), _PartialCall())
    if isinstance(raw.get("id"), str) and raw["id"]:
        entry.id = raw["id"]
    function = raw.get("function") or {}
    name = function.get("name")
    if isinstance(name, str) and name and name != entry.name:
        entry.name += name
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        entry.arguments.append(arguments)
    elif isinstance(arguments, dict):  # some servers send the whole object at once
        entry.arguments.append(json.dumps(arguments))


def _message_json(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or ""
        out["content"] = message.content or ""
        return out
    if message.role == "assistant" and message.tool_calls:
        out["content"] = message.content
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in message.tool_calls
        ]
    else:
        out["content"] = message.content or ""
    if message.name:
        out["name"] = message.name
    return out


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }
