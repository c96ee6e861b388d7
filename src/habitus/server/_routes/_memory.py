"""Memory: remember, list, get, forget, recall, and facts, in an agent's memory as the caller.

Each route opens the agent's memory as the request's principal, so reading needs
``memory:read`` on the scope, writing ``memory:write`` and forgetting ``memory:erase``
(an agent in its own memory, an owner in its agents', anyone granted them); a refusal is
a 403 and a ``policy.denied`` event. Times must carry a timezone.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from habitus.memory._models import Fact, Forgotten, MemoryRecord, Recall
from habitus.server._app import Actor
from habitus.server._routes._agents import error_responses  # (and registers the {agent:agent_id} convertor)

__all__ = ["router"]

router = APIRouter(tags=["memory"], responses=error_responses(400, 401, 403, 404, 422, 503))

_MAX_TTL = 100 * 366 * 86_400.0  # a century, in seconds


def _representable(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC (years 1 to 9999)") from None
    return value


When = Annotated[AwareDatetime, AfterValidator(_representable)]
"""A timezone-aware time that is still a time in UTC."""

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Short = Annotated[str, Field(min_length=1, max_length=64)]
_Part = Annotated[str, Field(min_length=1, max_length=1000)]
_Scope = Annotated[str, Field(min_length=1, max_length=300, description="private, public, group:<name> or agent:<id>.")]
_Trust = Literal["trusted", "untrusted"]
_Sources = Annotated[list[uuid.UUID], Field(max_length=1000, description="Ids of the events it came from.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RememberRequest(_Body):
    """A memory to store (the arguments of ``AgentMemory.remember``)."""

    text: Annotated[str, Field(min_length=1, max_length=100_000)]
    at: When | None = None
    kind: _Short = "note"
    tags: Annotated[list[_Name], Field(max_length=32)] = Field(default_factory=list)
    meta: dict[str, JsonValue] | None = None
    source: _Sources = Field(default_factory=list)
    scope: _Scope | None = None
    importance: Annotated[float, Field(ge=0, le=1)] = 0.5
    ttl: Annotated[float, Field(gt=0, le=_MAX_TTL, description="Seconds until it is forgotten on its own.")] | None = (
        None
    )
    thread: _Name | None = None
    trust: _Trust | None = None


class RecallRequest(_Body):
    """What to recall (the arguments of ``AgentMemory.recall``)."""

    query: Annotated[str, Field(min_length=1, max_length=10_000)]
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    since: When | None = None
    until: When | None = None
    kinds: Annotated[list[_Short], Field(max_length=100)] | None = None
    tags: Annotated[list[_Name], Field(max_length=32)] | None = None
    as_of: When | None = None
    scope: _Scope | Annotated[list[_Scope], Field(min_length=1, max_length=64)] | None = None
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    trust: _Trust | None = None


class AssertRequest(_Body):
    """A fact to assert: ``subject predicate value``, holding from ``valid_from`` to ``valid_to``."""

    subject: _Part
    predicate: _Part
    value: JsonValue
    valid_from: When | None = None
    valid_to: When | None = None
    source: _Sources = Field(default_factory=list)
    scope: _Scope | None = None
    trust: _Trust | None = None


@router.post(
    "/agents/{agent:agent_id}/memories",
    response_model=MemoryRecord,
    status_code=201,
    responses=error_responses(413),
    summary="Remember something",
)
async def remember(who: Actor, agent: str, memory: RememberRequest) -> MemoryRecord:
    """Store a memory in the agent's memory (needs ``memory:write`` on its scope)."""
    mem = await who.agent_memory(agent)
    return await mem.remember(
        memory.text,
        at=memory.at,
        kind=memory.kind,
        tags=memory.tags,
        meta=memory.meta,
        source=memory.source,
        scope=memory.scope,
        importance=memory.importance,
        ttl=memory.ttl,
        thread=memory.thread,
        trust=memory.trust,
    )


@router.get("/agents/{agent:agent_id}/memories", response_model=list[MemoryRecord], summary="List memories")
async def list_memories(
    who: Actor,
    agent: str,
    scope: Annotated[str | None, Query(min_length=1, max_length=300, description="Default: its private scope.")] = None,
    after: Annotated[int, Query(ge=0, le=2**62, description="The seq of the last memory seen.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kinds: Annotated[list[str] | None, Query(max_length=100)] = None,
    trust: _Trust | None = None,
) -> list[MemoryRecord]:
    """Memories in the order they were stored, a page at a time (needs ``memory:read``)."""
    mem = await who.agent_memory(agent)
    return await mem.memories(scope=scope, after=after, limit=limit, kinds=kinds, trust=trust)


@router.get("/agents/{agent:agent_id}/memories/{memory_id}", response_model=MemoryRecord, summary="One memory")
async def get_memory(who: Actor, agent: str, memory_id: uuid.UUID) -> MemoryRecord:
    """One memory by id (needs ``memory:read`` on its scope; 404 once forgotten)."""
    mem = await who.agent_memory(agent)
    return await mem.get(memory_id)


@router.delete(
    "/agents/{agent:agent_id}/memories/{memory_id}", response_model=Forgotten, summary="Forget a memory or fact"
)
async def forget(
    who: Actor,
    agent: str,
    memory_id: uuid.UUID,
    reason: Annotated[str, Query(min_length=1, max_length=1000, description="Why it is forgotten (recorded).")],
) -> Forgotten:
    """Forget a memory (or fact) for good: its text is erased everywhere (needs ``memory:erase``)."""
    mem = await who.agent_memory(agent)
    return await mem.forget(memory_id, reason=reason)


@router.post("/agents/{agent:agent_id}/recall", response_model=Recall, summary="Recall memories")
async def recall(who: Actor, agent: str, query: RecallRequest) -> Recall:
    """The memories that best answer the query, best first, with scores and provenance (needs ``memory:read``)."""
    mem = await who.agent_memory(agent)
    return await mem.recall(
        query.query,
        k=query.k,
        since=query.since,
        until=query.until,
        kinds=query.kinds,
        tags=query.tags,
        as_of=query.as_of,
        scope=query.scope,
        mode=query.mode,
        trust=query.trust,
    )


@router.post(
    "/agents/{agent:agent_id}/facts",
    response_model=Fact,
    status_code=201,
    responses=error_responses(413),
    summary="Assert a fact",
)
async def assert_fact(who: Actor, agent: str, fact: AssertRequest) -> Fact:
    """Assert a belief; one it contradicts is superseded (needs ``memory:write``)."""
    mem = await who.agent_memory(agent)
    return await mem.assert_fact(
        fact.subject,
        fact.predicate,
        fact.value,
        valid_from=fact.valid_from,
        valid_to=fact.valid_to,
        source=fact.source,
        scope=fact.scope,
        trust=fact.trust,
    )


@router.get("/agents/{agent:agent_id}/facts", response_model=list[Fact], summary="What an agent believes")
async def facts(
    who: Actor,
    agent: str,
    subject: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
    predicate: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
    as_of: Annotated[When | None, Query(description="System time: what was believed then.")] = None,
    valid_at: Annotated[When | None, Query(description="World time: only facts that hold then.")] = None,
    history: Annotated[bool, Query(description="Every version, superseded ones included.")] = False,
    scope: Annotated[str | None, Query(min_length=1, max_length=300)] = None,
    trust: _Trust | None = None,
) -> list[Fact]:
    """Facts, oldest first (needs ``memory:read``)."""
    mem = await who.agent_memory(agent)
    return await mem.facts(
        subject, predicate=predicate, as_of=as_of, valid_at=valid_at, history=history, scope=scope, trust=trust
    )
