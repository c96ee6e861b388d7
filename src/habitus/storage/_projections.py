"""Projections written in the same transaction as the events that change them.

Agents, their state, their mailboxes and their timers are projections of the
ledger: tables a subsystem keeps current so it need not replay events. A
subsystem expresses each change as one of the small *ops* below and hands
them to :meth:`habitus.Ledger.transaction` together with its events; the
store applies events and ops in one transaction, so a crash never leaves a
projection disagreeing with the ledger.

Ops that must name the seq of an event of the same transaction (a new
message, an agent's spawn) carry the event's 16-byte id instead; the store
resolves it once the seqs are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from habitus.storage._memory import MemoryOp

__all__ = [
    "AgentPut",
    "AgentRow",
    "AgentStatus",
    "MailboxAck",
    "MailboxDead",
    "MailboxPut",
    "MailboxRetry",
    "MailboxRow",
    "Op",
    "ProjectionStore",
    "StateDelete",
    "StatePut",
    "TimerDelete",
    "TimerPut",
    "TimerRow",
    "UsageAdd",
]


@dataclass(frozen=True, slots=True)
class AgentPut:
    """Create an agent's row (its ``agent.spawned`` event is ``event``)."""

    agent: str
    name: str
    owner: str
    labels: str
    behaviour: str
    topics: str
    status: str
    event: bytes


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Change an agent's lifecycle status (its transition event is ``event``)."""

    agent: str
    status: str
    event: bytes


@dataclass(frozen=True, slots=True)
class UsageAdd:
    """Count ``amount`` of a budget's ``meter`` against ``subject`` in period ``window``."""

    subject: str
    meter: str
    window: int
    amount: int


@dataclass(frozen=True, slots=True)
class StatePut:
    """Set one key of an agent's durable state to a JSON value."""

    agent: str
    key: str
    value: str
    event: bytes


@dataclass(frozen=True, slots=True)
class StateDelete:
    """Delete one key of an agent's durable state."""

    agent: str
    key: str
    event: bytes


@dataclass(frozen=True, slots=True)
class MailboxPut:
    """Queue the message event ``event`` in ``agent``'s mailbox.

    ``allowed_at`` is not stored: the control layer's epoch when the sender was
    allowed to send it (-1 if not asked), so that a delivery in this process
    need not ask again while nothing has changed.
    """

    agent: str
    event: bytes
    sender: str
    allowed_at: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True)
class MailboxAck:
    """Remove a handled message from the mailbox (committed with the handler's effects)."""

    agent: str
    msg: int


@dataclass(frozen=True, slots=True)
class MailboxRetry:
    """Record a failed attempt; the message is tried again at ``not_before`` (UTC µs)."""

    agent: str
    msg: int
    attempts: int
    not_before: int
    error: str


@dataclass(frozen=True, slots=True)
class MailboxDead:
    """Move a message that kept failing to the dead letters."""

    agent: str
    msg: int
    attempts: int
    error: str


@dataclass(frozen=True, slots=True)
class TimerPut:
    """Wake ``agent`` at ``due`` (UTC µs); ``event`` is the ``timer.set`` event."""

    timer: str
    agent: str
    due: int
    event: bytes


@dataclass(frozen=True, slots=True)
class TimerDelete:
    """Forget a timer (it fired, or was cancelled)."""

    timer: str


Op = (
    AgentPut
    | AgentStatus
    | StatePut
    | StateDelete
    | MailboxPut
    | MailboxAck
    | MailboxRetry
    | MailboxDead
    | TimerPut
    | TimerDelete
    | UsageAdd
    | MemoryOp
)
"""Every projection change a transaction can carry."""


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent as the projection holds it."""

    agent: str
    name: str
    owner: str
    labels: str
    behaviour: str
    topics: str
    status: str
    spawned_seq: int
    updated_seq: int


@dataclass(frozen=True, slots=True)
class MailboxRow:
    """One queued (or dead) message of an agent."""

    agent: str
    msg: int
    sender: str
    attempts: int
    not_before: int
    dead: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class TimerRow:
    """One pending timer."""

    timer: str
    agent: str
    due: int
    set_seq: int


class ProjectionStore(Protocol):
    """Reads of the agent projections (writes go through ``WriteBatch.ops``)."""

    def agent(self, agent: str) -> AgentRow | None:
        """One agent's row."""
        ...

    def agents(self, *, after: str | None, limit: int) -> list[AgentRow]:
        """Agents in id order, starting after ``after``."""
        ...

    def agent_count(self) -> int:
        """How many agents are registered."""
        ...

    def existing_agents(self, agents: Sequence[str]) -> list[str]:
        """Those of ``agents`` that are registered, in the order given."""
        ...

    def subscriptions(self) -> list[tuple[str, str]]:
        """``(agent, topics JSON)`` of every agent that subscribes to topics."""
        ...

    def state(self, agent: str) -> dict[str, str]:
        """An agent's durable state, key to JSON text."""
        ...

    def mailbox(self, agent: str, *, after: int, limit: int, dead: bool = False) -> list[MailboxRow]:
        """Queued (or dead) messages of an agent in seq order, after seq ``after``."""
        ...

    def mailbox_depth(self, agent: str) -> int:
        """How many messages wait in an agent's mailbox (dead letters excluded)."""
        ...

    def mailbox_depths(self) -> tuple[int, dict[str, int]]:
        """``(last seq, queued messages per agent)`` from one snapshot."""
        ...

    def agents_with_mail(self) -> list[str]:
        """Agents with at least one queued message."""
        ...

    def timers(self, *, until: int | None = None, limit: int = 1_000_000, runnable: bool = False) -> list[TimerRow]:
        """Pending timers due at or before ``until`` (all when None), earliest first; ``runnable``
        leaves out those of suspended agents."""
        ...

    def next_timer_due(self) -> int | None:
        """When the earliest pending timer is due, if any."""
        ...
