"""What every model provider speaks: chat messages, tool calls, completions and usage.

These types are shared by the gateway (:mod:`habitus.models`), the tool registry
(:mod:`habitus.tools`, which describes tools as :class:`ToolSpec`) and thinking
agents (:mod:`habitus.thinking`, whose context assembly yields a :class:`ContextRecord`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ContextRecord",
    "ModelProvider",
    "OnText",
    "ToolCall",
    "ToolSpec",
    "Usage",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Frozen):
    """A model asking for a tool: the provider's call id, the tool's name and its parsed arguments."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(_Frozen):
    """One message of a conversation with a model (OpenAI chat roles).

    ``tool_calls`` only on ``assistant`` messages; ``tool_call_id`` only on
    ``tool`` messages (the result of the call it names).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class ToolSpec(_Frozen):
    """A tool as a model sees it: name, description and a JSON schema of its arguments."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Usage(_Frozen):
    """Tokens a call used, as the provider counted them (or estimated, for providers that do not say)."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together (what budgets count)."""
        return self.prompt_tokens + self.completion_tokens


class ChatRequest(_Frozen):
    """What is sent to a provider: the model, the conversation, the tools it may call."""

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


class Completion(_Frozen):
    """A provider's answer: text and/or tool calls, why it stopped, and the tokens used."""

    model: str
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = Field(default_factory=Usage)


class ContextRecord(_Frozen):
    """Exactly what went into a prompt, by event id: recorded with the model call it informed.

    ``memories`` are ``memory.remembered`` events, ``facts`` are ``fact.asserted``
    events and ``messages`` are ``message.sent`` events; each becomes a cause of
    the ``model.called`` event, so ``why`` on the call lists them. ``untrusted``: some
    of it is labelled untrusted (content from outside), so the call is labelled too.
    """

    memories: tuple[uuid.UUID, ...] = ()
    facts: tuple[uuid.UUID, ...] = ()
    messages: tuple[uuid.UUID, ...] = ()
    tokens: int = Field(default=0, ge=0)
    budget_tokens: int | None = None
    untrusted: bool = False


OnText = Callable[[str], Awaitable[None] | None]
"""Called with each piece of streamed text, as it arrives."""


@runtime_checkable
class ModelProvider(Protocol):
    """A source of completions and embeddings (an OpenAI-compatible endpoint, a scripted model...)."""

    name: str

    async def complete(self, request: ChatRequest, *, on_text: OnText | None = None) -> Completion:
        """Answer ``request``; with ``on_text``, stream and call it with each piece of text.

        Raises:
            ModelUnavailableError: The provider could not be reached or failed.
            ModelTimeoutError: It did not answer in time.
        """
        ...

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Embed ``texts`` (one vector each, in order)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
