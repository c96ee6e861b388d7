"""The ``agent`` and ``timer`` kind families: lifecycle, durable state, timers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["AGENT_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]


class AgentSpawnedMeta(MetaModel):
    """Meta of ``agent.spawned``."""

    agent: _Name
    name: _Name
    owner: _Name
    behaviour: _Name
    labels: dict[str, str] = Field(default_factory=dict)
    topics: list[_Name] = Field(default_factory=list, max_length=64)


class AgentTransitionMeta(MetaModel):
    """Meta of ``agent.activated``, ``agent.suspended``, ``agent.resumed`` and ``agent.retired``."""

    agent: _Name
    reason: Annotated[str, Field(max_length=1000)] | None = None


class AgentStateMeta(MetaModel):
    """Meta of ``agent.state_set`` and ``agent.state_deleted``: the key (the value is the content)."""

    agent: _Name
    key: _Name


class TimerMeta(MetaModel):
    """Meta of ``timer.set`` and ``timer.fired``: which timer, for whom, and when it is due (UTC µs)."""

    agent: _Name
    timer: _Name
    due: int


AGENT_KINDS = (
    KindSpec(
        "agent.spawned", "An agent was registered, with its owner, behaviour and labels.", AgentSpawnedMeta, "none"
    ),
    KindSpec(
        "agent.activated", "An agent handled its first message: spawned became active.", AgentTransitionMeta, "none"
    ),
    KindSpec(
        "agent.suspended", "An agent was suspended: no deliveries or timers until resumed.", AgentTransitionMeta, "none"
    ),
    KindSpec("agent.resumed", "A suspended agent was resumed.", AgentTransitionMeta, "none"),
    KindSpec(
        "agent.retired",
        "An agent was retired for good; its queued messages became dead letters.",
        AgentTransitionMeta,
        "none",
    ),
    KindSpec(
        "agent.state_set",
        "An agent set a key of its durable state (the value is the content).",
        AgentStateMeta,
        "required",
    ),
    KindSpec("agent.state_deleted", "An agent deleted a key of its durable state.", AgentStateMeta, "none"),
    KindSpec("timer.set", "An agent asked to be woken at a time (the payload is the content).", TimerMeta, "optional"),
    KindSpec(
        "timer.fired", "A timer came due; the event is delivered to its agent as a message.", TimerMeta, "optional"
    ),
)

register_kinds(*AGENT_KINDS)
