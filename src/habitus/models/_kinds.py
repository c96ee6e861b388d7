"""The ``model`` kind family: every call to a model, what it cost, and every failure."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["MODEL_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Count = Annotated[int, Field(ge=0)]
_Ms = Annotated[float, Field(ge=0.0)]


class CalledMeta(MetaModel):
    """Meta of ``model.called``: which model answered, what it used and cost, and what informed it.

    The prompt and the answer are the content (erasable); the memories, facts and
    messages put into the prompt are the event's causes, counted here.
    """

    provider: _Name
    model: _Name
    prompt_tokens: _Count
    completion_tokens: _Count
    latency_ms: _Ms
    cost: Annotated[float, Field(ge=0.0)] = 0.0
    finish_reason: _Name
    tool_calls: Annotated[list[_Name], Field(default_factory=list, max_length=32)]
    streamed: bool = False
    memories: _Count = 0
    facts: _Count = 0
    messages: _Count = 0
    context_tokens: _Count = 0
    truncated: bool = False
    on_behalf_of: _Name | None = None
    trust: Literal["untrusted"] | None = None


class FailedMeta(MetaModel):
    """Meta of ``model.failed``: the call that failed, why, and after how many attempts; nothing was charged."""

    provider: _Name
    model: _Name
    operation: Literal["chat", "embed"] = "chat"
    error: _Name
    message: Annotated[str, Field(max_length=1000)]
    attempts: Annotated[int, Field(ge=1)]
    latency_ms: _Ms
    memories: _Count = 0
    facts: _Count = 0
    messages: _Count = 0
    on_behalf_of: _Name | None = None
    trust: Literal["untrusted"] | None = None


class EmbeddedMeta(MetaModel):
    """Meta of ``model.embedded``: how many texts were embedded, their tokens and the time it took (not the texts)."""

    provider: _Name
    model: _Name
    texts: _Count
    tokens: _Count
    dimensions: _Count
    latency_ms: _Ms


MODEL_KINDS = (
    KindSpec("model.called", "A principal called a model and got a completion.", CalledMeta, "optional"),
    KindSpec("model.failed", "A model call failed after its retries; nothing was charged.", FailedMeta, "none"),
    KindSpec("model.embedded", "A principal embedded texts with a model.", EmbeddedMeta, "none"),
)

register_kinds(*MODEL_KINDS)
