"""Agents and messages: list, spawn, inspect and manage agents, read mailboxes, send and request.

Every route acts as the request's principal through :class:`~habitus._acting.Acting`, so
what it may see and do is what the control layer says, and each refusal is a 403 and a
``policy.denied`` event.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.convertors import Convertor, register_url_convertor

from habitus._acting_manage import DeadLetters, MailboxEntry
from habitus.agents._models import AgentInfo, Message
from habitus.ledger._models import Event
from habitus.server._app import Actor
from habitus.server._routes._events import ApiError

__all__ = ["AgentIdConvertor", "error_responses", "router"]

# An agent id may hold '/' (team-a/scout), so an {agent} in a path matches slashes too, but no
# segment that names a sub-route: /agents/team-a/scout/state is scout's state, never an agent "scout/state".
_SUBROUTES = ("state", "mailbox", "dead-letters", "suspend", "resume", "retire", "memories", "recall", "facts")


class AgentIdConvertor(Convertor[str]):
    """``{agent:agent_id}`` in a route path: an agent id, slashes included, but no segment named like a
    sub-route (such an id is not reachable over HTTP). The OpenAPI path still reads ``{agent}``."""

    regex = r"[^/]+(?:/(?!(?:" + "|".join(map(re.escape, _SUBROUTES)) + r")(?:/|$))[^/]+)*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Starlette's documented way to add a path convertor; the routes below are compiled with it.
register_url_convertor("agent_id", AgentIdConvertor())

_WHY: dict[int, str] = {
    400: "Input the library refused (the message says what was wrong, with the offending value).",
    401: "No token, or an unknown, revoked or expired one.",
    403: "Policy refused it; a policy.denied event names the principal, the action and the resource.",
    404: "No such agent, memory or approval request (or, for an agent or a request, one the caller may not see).",
    409: "It exists already; or, for a request, no app runs in the server to answer it (nothing was sent).",
    410: "The agent is retired and takes no more messages.",
    413: "The content is larger than the habitat allows.",
    422: "A parameter or a body field is invalid (the message says where and why).",
    429: "The agent's mailbox is full, or a budget is spent: retry later.",
    503: "The habitat cannot serve it now (it is closing, or the embedder failed).",
    504: "No reply came within the timeout.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses, each an :class:`ApiError` body."""
    return {status: {"model": ApiError, "description": _WHY[status]} for status in statuses}


router = APIRouter(responses=error_responses(400, 401, 403, 404, 422, 503))

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Ref = Annotated[str, Field(min_length=1, max_length=300, description="An agent id, or agent:<id>.")]
_Reason = Annotated[str, Field(max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpawnRequest(_Body):
    """An agent to register, owned by the caller (a human or a service)."""

    id: Annotated[str, Field(min_length=1, max_length=128, description="Its id; its principal is agent:<id>.")]
    behaviour: _Name
    name: _Name | None = None
    labels: Annotated[dict[_Name, Annotated[str, Field(max_length=1000)]], Field(max_length=64)] = Field(
        default_factory=dict
    )
    topics: Annotated[list[_Name], Field(max_length=64)] = Field(default_factory=list)


class Why(_Body):
    """Why a lifecycle change was made (optional, recorded in its event)."""

    reason: _Reason | None = None


class SendRequest(_Body):
    """A message to an agent."""

    to: _Ref
    body: JsonValue = None
    type: _Name | None = None
    thread: _Name | None = None


class RequestRequest(SendRequest):
    """A request to an agent; the reply is awaited for ``timeout`` seconds."""

    timeout: Annotated[float, Field(gt=0, le=120, description="Seconds to wait for the reply (at most 120).")] = 30.0


# -- agents ----------------------------------------------------------------------------------


@router.get("/agents", response_model=list[AgentInfo], tags=["agents"], summary="The agents the caller may see")
async def list_agents(
    who: Actor,
    after: Annotated[str | None, Query(max_length=300, description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AgentInfo]:
    """Agents in id order, a page at a time: owners see theirs, agents themselves and their siblings,
    anyone granted ``state:read`` on an agent that agent."""
    return await who.agents(after=after, limit=limit)


@router.post(
    "/agents",
    response_model=AgentInfo,
    status_code=201,
    responses=error_responses(409),
    tags=["agents"],
    summary="Spawn an agent the caller owns",
)
async def spawn_agent(who: Actor, spec: SpawnRequest) -> AgentInfo:
    """Register an agent owned by the caller (humans and services own agents; agents do not)."""
    return await who.spawn(spec.id, behaviour=spec.behaviour, name=spec.name, labels=spec.labels, topics=spec.topics)


@router.get(
    "/agents/{agent:agent_id}/state", response_model=dict[str, JsonValue], tags=["agents"], summary="An agent's state"
)
async def agent_state(who: Actor, agent: str) -> dict[str, Any]:
    """Its durable state (needs ``state:read`` on it: its owner and itself by default)."""
    return await who.state(agent)


@router.get(
    "/agents/{agent:agent_id}/mailbox", response_model=list[MailboxEntry], tags=["agents"], summary="An agent's mailbox"
)
async def agent_mailbox(
    who: Actor,
    agent: str,
    dead: Annotated[bool, Query(description="Dead letters instead of waiting messages.")] = False,
    after: Annotated[int, Query(ge=0, le=2**62, description="The message.seq of the last entry seen.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MailboxEntry]:
    """Messages waiting for delivery (or dead letters), oldest first (needs ``state:read``)."""
    return await who.mailbox(agent, dead=dead, after=after, limit=limit)


@router.get(
    "/agents/{agent:agent_id}/dead-letters",
    response_model=DeadLetters,
    tags=["agents"],
    summary="An agent's dead letters",
)
async def agent_dead_letters(who: Actor, agent: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeadLetters:
    """The latest dead letters (oldest first) and how many there are (needs ``state:read``)."""
    return await who.dead_letters(agent, limit=limit)


@router.post("/agents/{agent:agent_id}/suspend", response_model=AgentInfo, tags=["agents"], summary="Suspend an agent")
async def suspend_agent(who: Actor, agent: str, why: Why | None = None) -> AgentInfo:
    """The kill switch: no deliveries, no timers, every check it asks fails (needs ``agent:manage``)."""
    return await who.suspend(agent, reason=why.reason if why else None)


@router.post("/agents/{agent:agent_id}/resume", response_model=AgentInfo, tags=["agents"], summary="Resume an agent")
async def resume_agent(who: Actor, agent: str, why: Why | None = None) -> AgentInfo:
    """Let a suspended agent receive its messages again (needs ``agent:manage``)."""
    return await who.resume(agent, reason=why.reason if why else None)


@router.post("/agents/{agent:agent_id}/retire", response_model=AgentInfo, tags=["agents"], summary="Retire an agent")
async def retire_agent(who: Actor, agent: str, why: Why | None = None) -> AgentInfo:
    """Retire it for good; its queued messages become dead letters (needs ``agent:manage``)."""
    return await who.retire(agent, reason=why.reason if why else None)


@router.get("/agents/{agent:agent_id}", response_model=AgentInfo, tags=["agents"], summary="One agent")
async def get_agent(who: Actor, agent: str) -> AgentInfo:
    """One agent the caller may see (404 for one it may not, as for one that does not exist)."""
    return await who.agent(agent)


# -- messages --------------------------------------------------------------------------------


@router.post(
    "/messages",
    response_model=Event,
    status_code=201,
    responses=error_responses(410, 413, 429),
    tags=["messages"],
    summary="Send a message to an agent",
)
async def send_message(who: Actor, message: SendRequest) -> Event:
    """Queue a message in the agent's mailbox; returns its ``message.sent`` event (needs ``message:send``)."""
    return await who.send(message.to, message.body, type=message.type, thread=message.thread)


@router.post(
    "/requests",
    response_model=Message,
    responses=error_responses(409, 410, 413, 429, 504),
    tags=["messages"],
    summary="Send a request and wait for the reply",
)
async def send_request(who: Actor, request: RequestRequest) -> Message:
    """Send a request and wait for the reply (needs a running app that handles it: 409 when none runs,
    504 when no reply comes in time)."""
    return await who.request(
        request.to, request.body, timeout=request.timeout, type=request.type, thread=request.thread
    )
