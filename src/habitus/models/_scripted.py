"""A deterministic, offline model: scripted answers for tests, demos and habitats with no model configured.

Example::

    model = ScriptedModel([
        "Hello!",                                                    # plain text
        Completion(model="scripted", tool_calls=(ToolCall(id="c1", name="weather",
                                                          arguments={"city": "Oslo"}),)),
        lambda request: f"You said {request.messages[-1].content}",  # worked out from the request
    ])

Once the script is spent, ``responder`` (if given) answers every further
request; without one, a short default answer quotes the last user message and
says how much context came with it. Text is streamed word by word.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

from habitus.errors import InvalidRequestError
from habitus.models._estimate import completion_chars, estimate_tokens, request_chars
from habitus.models._types import ChatRequest, Completion, OnText, Usage

__all__ = ["Responder", "ScriptItem", "ScriptedModel"]

Responder = Callable[[ChatRequest], "Completion | str | Awaitable[Completion | str]"]
"""Works out an answer from a request: a :class:`Completion`, or just its text (may be async)."""

ScriptItem = str | Completion | Responder
"""One scripted answer: its text, a whole :class:`Completion`, or a function of the request."""

_PIECE = re.compile(r"\s*\S+\s*|\s+")
_WORD = re.compile(r"\w+")
_QUOTE = 160


class ScriptedModel:
    """A model that answers from a script: deterministic, offline, free.

    Args:
        script: Answers given in order, one per request: text, a :class:`Completion`,
            or a function of the :class:`ChatRequest` returning either (sync or async).
        responder: Answers every request after the script is spent (default: a short
            answer quoting the last user message).
        name: The provider's name in the gateway.
        dimensions: Size of the vectors :meth:`embed` returns.
    """

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        responder: Responder | None = None,
        name: str = "scripted",
        dimensions: int = 64,
    ) -> None:
        if dimensions < 1:
            raise InvalidRequestError(f"dimensions must be at least 1, not {dimensions!r}")
        self.name = name
        self.chat_model = "scripted"
        self.embedding_model = "scripted-embed"
        self.dimensions = dimensions
        self.requests: list[ChatRequest] = []
        """Every request received, in order (for tests that check what the model was shown)."""
        self._script: deque[ScriptItem] = deque(script)
        self._responder = responder

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, remaining={len(self._script)})"

    @property
    def remaining(self) -> int:
        """Scripted answers not given yet."""
        return len(self._script)

    def add(self, *items: ScriptItem) -> None:
        """Append answers to the end of the script."""
        self._script.extend(items)

    async def complete(self, request: ChatRequest, *, on_text: OnText | None = None) -> Completion:
        """Give the next scripted answer (or the responder's, or the default one); stream it word by word."""
        self.requests.append(request)
        item: ScriptItem | None = self._script.popleft() if self._script else None
        if item is None:
            item = self._responder if self._responder is not None else default_answer
        answer: Completion | str | Awaitable[Completion | str]
        answer = item(request) if callable(item) else item
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, str):
            completion = Completion(model=request.model, text=answer)
        elif isinstance(answer, Completion):
            completion = answer
        else:
            raise InvalidRequestError(
                f"scripted model {self.name!r}: a script item or responder returned {type(answer).__name__}, "
                "not a Completion or a str"
            )
        if completion.tool_calls and completion.finish_reason == "stop":
            completion = completion.model_copy(update={"finish_reason": "tool_calls"})
        if completion.usage.total_tokens == 0:
            usage = Usage(
                prompt_tokens=estimate_tokens(request_chars(request)),
                completion_tokens=estimate_tokens(completion_chars(completion.text, completion.tool_calls)),
            )
            completion = completion.model_copy(update={"usage": usage})
        if on_text is not None:
            for piece in _PIECE.findall(completion.text):
                result = on_text(piece)
                if inspect.isawaitable(result):
                    await result
                await asyncio.sleep(0)  # let other tasks run between pieces, as a real stream would
        return completion

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Deterministic unit vectors: hashed words, so texts sharing words point the same way."""
        if isinstance(texts, str):
            raise InvalidRequestError("embed takes a sequence of texts, not one string")
        return [hashed_vector(text, self.dimensions) for text in texts]

    async def aclose(self) -> None:
        """Nothing to release."""


def default_answer(request: ChatRequest) -> str:
    """The answer of a scripted model with no script left and no responder.

    It quotes the last user message (or reports the last tool result) and says
    how many lines of context (system messages) came with it, so a demo shows
    what the model was given.
    """
    last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
    context = sum(
        1 for m in request.messages if m.role == "system" for line in (m.content or "").splitlines() if line.strip()
    )
    lines = f"{context} line{'s' if context != 1 else ''} of context"
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool":
        return f"The tool answered: {_quote(last.content or '')}. (scripted model; {lines})"
    if last_user is None:
        return f"I have nothing to answer. (scripted model; {lines})"
    return f'You said: "{_quote(last_user.content or "")}". (scripted model; {lines})'


def hashed_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` made by hashing ``text``'s words into signed buckets."""
    vector = [0.0] * dimensions
    words = _WORD.findall(text.lower()) or [text]
    for word in words:
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # the words cancelled out: fall back to the whole text's bucket
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % dimensions] = 1.0
        return vector
    return [x / norm for x in vector]


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE else flat[: _QUOTE - 3] + "..."
