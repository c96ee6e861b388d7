"""The agent registry: identity, lifecycle and durable state, as events plus projections."""

from __future__ import annotations

import asyncio
import builtins
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from habitus.agents import _kinds  # noqa: F401  (registers the agent kinds)
from habitus.agents._models import AgentInfo, AgentStatusName
from habitus.errors import (
    AgentExistsError,
    AgentRetiredError,
    InvalidRequestError,
    UnknownAgentError,
)
from habitus.ledger._ledger import Ledger
from habitus.ledger._transaction import Transaction
from habitus.messaging._topics import check_topic
from habitus.storage._abstract import HabitatStore
from habitus.storage._projections import (
    AgentPut,
    AgentRow,
    AgentStatus,
    MailboxDead,
    MailboxRow,
    StateDelete,
    StatePut,
)

__all__ = ["Agents", "SpawnSpec", "agent_id", "info_from_row", "principal_of"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")
_CACHE_MAX = 200_000
_VALID_IDS: set[str] = set()  # ids already checked (bounded): sends check ids on every hop


def agent_id(ref: str) -> str:
    """The agent id in ``ref`` (``scout`` or ``agent:scout``), checked."""
    if not isinstance(ref, str):
        raise InvalidRequestError(f"an agent is named by a string id, not {ref!r}")
    value = ref[6:] if ref.startswith("agent:") else ref
    if value in _VALID_IDS:
        return value
    if not _ID_RE.match(value):
        raise InvalidRequestError(
            f"agent id {ref!r} must start with a letter or digit and use only letters, digits and . _ : @ / + -"
        )
    if len(_VALID_IDS) < _CACHE_MAX:
        _VALID_IDS.add(value)
    return value


def principal_of(agent: str) -> str:
    """``agent:<id>``."""
    return f"agent:{agent}"


def info_from_row(row: AgentRow) -> AgentInfo:
    """The public model of an agent's row."""
    return AgentInfo(
        id=row.agent,
        name=row.name,
        owner=row.owner,
        labels=json.loads(row.labels),
        behaviour=row.behaviour,
        topics=json.loads(row.topics),
        status=row.status,
        spawned_seq=row.spawned_seq,
        updated_seq=row.updated_seq,
    )


class SpawnSpec:
    """What :meth:`Agents.spawn_many` needs to register one agent."""

    __slots__ = ("behaviour", "id", "labels", "name", "owner", "topics")

    def __init__(
        self,
        id: str,  # noqa: A002 - the agent's id is its natural name
        *,
        behaviour: str,
        owner: str = "system",
        name: str | None = None,
        labels: dict[str, str] | None = None,
        topics: Iterable[str] = (),
    ) -> None:
        self.id = agent_id(id)
        self.behaviour = behaviour
        self.owner = owner
        self.name = name or self.id
        self.labels = dict(labels or {})
        self.topics = [check_topic(t, pattern=True) for t in topics]


class Agents:
    """The habitat's agents: register, look up, suspend, resume, retire, read state.

    Obtain it as :attr:`habitus.Habitat.agents`. Lifecycle changes are events
    (``agent.spawned``, ``agent.suspended``…) committed with the projection they
    change, so the registry and the ledger never disagree.
    """

    def __init__(self, ledger: Ledger, store: HabitatStore) -> None:
        self._ledger = ledger
        self._store = store
        self._status: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    # -- registering ------------------------------------------------------------------------

    async def spawn(
        self,
        id: str,  # noqa: A002
        *,
        behaviour: str,
        owner: str = "system",
        name: str | None = None,
        labels: dict[str, str] | None = None,
        topics: Iterable[str] = (),
    ) -> AgentInfo:
        """Register a new agent; it stays a row until a message or timer wakes it.

        Args:
            id: Its id (its principal is ``agent:<id>``).
            behaviour: Name of the behaviour the app runs it with.
            owner: The principal who answers for it; also the actor of ``agent.spawned``.
            name: A human-readable name (default: the id).
            labels: Free-form string labels.
            topics: Topic patterns it subscribes to (``sensors.*``, ``alerts.#``).

        Raises:
            AgentExistsError: The id is taken.
        """
        spec = SpawnSpec(id, behaviour=behaviour, owner=owner, name=name, labels=labels, topics=topics)
        (info,) = await self.spawn_many([spec])
        return info

    async def spawn_many(self, specs: Sequence[SpawnSpec]) -> list[AgentInfo]:
        """Register many agents in one transaction (all or none)."""
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise AgentExistsError("the same agent id appears twice in one spawn")
        taken = await asyncio.to_thread(self._store.existing_agents, ids)
        if taken:
            raise AgentExistsError(f"agent {taken[0]!r} already exists; choose another id")
        async with self._ledger.transaction() as tx:
            for spec in specs:
                meta = {
                    "agent": spec.id,
                    "name": spec.name,
                    "owner": spec.owner,
                    "behaviour": spec.behaviour,
                    "labels": spec.labels,
                    "topics": spec.topics,
                }
                event = tx.append("agent.spawned", actor=spec.owner, meta=meta)
                tx.project(
                    AgentPut(
                        spec.id,
                        spec.name,
                        spec.owner,
                        json.dumps(spec.labels, sort_keys=True),
                        spec.behaviour,
                        json.dumps(spec.topics),
                        "spawned",
                        event.bytes,
                    )
                )
        for spec in specs:
            self._remember(spec.id, "spawned")
            if spec.topics:
                self._notify(spec.id, "subscribed")
        seqs = [e.seq for e in tx.events]
        return [
            AgentInfo(
                id=s.id,
                name=s.name,
                owner=s.owner,
                labels=s.labels,
                behaviour=s.behaviour,
                topics=s.topics,
                status="spawned",
                spawned_seq=seq,
                updated_seq=seq,
            )
            for s, seq in zip(specs, seqs, strict=True)
        ]

    # -- reading ----------------------------------------------------------------------------

    async def get(self, agent: str) -> AgentInfo:
        """One agent.

        Raises:
            UnknownAgentError: No such agent.
        """
        aid = agent_id(agent)
        row = await asyncio.to_thread(self._store.agent, aid)
        if row is None:
            raise UnknownAgentError(f"no agent {aid!r} in this habitat; spawn it first")
        self._remember(aid, row.status)
        return info_from_row(row)

    async def list(self, *, after: str | None = None, limit: int = 100) -> list[AgentInfo]:
        """Agents in id order, a page at a time (pass the last id as ``after``)."""
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError(f"limit must be between 1 and 10000, not {limit!r}")
        rows = await asyncio.to_thread(lambda: self._store.agents(after=after, limit=limit))
        return [info_from_row(r) for r in rows]

    async def count(self) -> int:
        """How many agents are registered (retired ones included)."""
        return await asyncio.to_thread(self._store.agent_count)

    async def state(self, agent: str) -> dict[str, Any]:
        """An agent's durable state, as its current values."""
        aid = agent_id(agent)
        await self.get(aid)
        raw = await asyncio.to_thread(self._store.state, aid)
        return {k: json.loads(v) for k, v in raw.items()}

    async def dead_letters(self, agent: str, *, limit: int = 100) -> tuple[builtins.list[MailboxRow], int]:
        """The latest ``limit`` dead letters of an agent (oldest first) and how many it has in all."""
        aid = agent_id(agent)
        await self.get(aid)

        def read() -> tuple[builtins.list[MailboxRow], int]:
            latest: builtins.list[MailboxRow] = []
            total, after = 0, 0
            while rows := self._store.mailbox(aid, after=after, limit=10_000, dead=True):
                total += len(rows)
                latest = (latest + rows)[-limit:]
                after = rows[-1].msg
            return latest, total

        return await asyncio.to_thread(read)

    def status(self, agent: str) -> str | None:
        """The agent's status, from the cache or the store (``None`` if unknown). Blocking read on a miss."""
        status = self._status.get(agent)
        if status is None:
            row = self._store.agent(agent)
            if row is None:
                return None
            status = row.status
            self._remember(agent, status)
        return status

    def owner(self, agent: str) -> str | None:
        """The agent's owner, from the cache or the store (``None`` if unknown). Blocking read on a miss."""
        owner = self._owners.get(agent)
        if owner is None:
            row = self._store.agent(agent)
            if row is None:
                return None
            owner = row.owner
            if len(self._owners) >= _CACHE_MAX:
                self._owners.clear()
            self._owners[agent] = owner
        return owner

    def require_reachable(self, agent: str) -> None:
        """Raise unless the agent exists and is not retired."""
        status = self.status(agent)
        if status is None:
            raise UnknownAgentError(f"no agent {agent!r} in this habitat; spawn it first")
        if status == "retired":
            raise AgentRetiredError(f"agent {agent!r} is retired and takes no more messages")

    # -- lifecycle --------------------------------------------------------------------------

    async def suspend(self, agent: str, *, by: str = "system", reason: str | None = None) -> AgentInfo:
        """Stop deliveries and timers to an agent at once; its mailbox is kept."""
        return await self._transition(agent, "suspended", "agent.suspended", by, reason, ("spawned", "active"))

    async def resume(self, agent: str, *, by: str = "system", reason: str | None = None) -> AgentInfo:
        """Let a suspended agent receive its messages again."""
        return await self._transition(agent, "active", "agent.resumed", by, reason, ("suspended",))

    async def retire(self, agent: str, *, by: str = "system", reason: str | None = None) -> AgentInfo:
        """Retire an agent for good; its queued messages become dead letters."""
        return await self._transition(agent, "retired", "agent.retired", by, reason, ("spawned", "active", "suspended"))

    async def _transition(
        self,
        agent: str,
        status: AgentStatusName,
        kind: str,
        by: str,
        reason: str | None,
        allowed: tuple[str, ...],
    ) -> AgentInfo:
        info = await self.get(agent)
        if info.status not in allowed:
            raise InvalidRequestError(
                f"agent {info.id!r} is {info.status}; it cannot be {status.replace('active', 'resumed')}"
            )
        pending: list[tuple[int, int, Any]] = []  # (seq, attempts, message id)
        if status == "retired":
            rows = await asyncio.to_thread(lambda: self._store.mailbox(info.id, after=0, limit=1_000_000))
            ids = {r[0]: r[1] for r in await asyncio.to_thread(self._store.rows_by_seq, [m.msg for m in rows])}
            pending = [(m.msg, m.attempts, uuid.UUID(bytes=ids[m.msg])) for m in rows if m.msg in ids]
        async with self._ledger.transaction() as tx:
            meta: dict[str, Any] = {"agent": info.id}
            if reason:
                meta["reason"] = reason
            event = tx.append(kind, actor=by, meta=meta)
            tx.project(AgentStatus(info.id, status, event.bytes))
            for seq, attempts, message_id in pending:
                tx.append(
                    "message.dead_lettered",
                    actor="system",
                    meta={"agent": info.id, "message_seq": seq, "attempt": attempts, "error": "agent retired"},
                    causes=[event, message_id],
                )
                tx.project(MailboxDead(info.id, seq, attempts, "agent retired"))
        self._remember(info.id, status)
        self._notify(info.id, status)
        return await self.get(info.id)

    def stage_state(self, tx: Transaction, agent: str, key: str, value: Any, *, actor: str) -> None:
        """Stage setting one key of an agent's state to a JSON value."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        event = tx.append("agent.state_set", actor=actor, meta={"agent": agent, "key": key}, content={"value": value})
        tx.project(StatePut(agent, key, text, event.bytes))

    def stage_delete(self, tx: Transaction, agent: str, key: str, *, actor: str) -> None:
        """Stage deleting one state key."""
        event = tx.append("agent.state_deleted", actor=actor, meta={"agent": agent, "key": key})
        tx.project(StateDelete(agent, key, event.bytes))

    def mark_active(self, tx: Transaction, agent: str) -> None:
        """Stage the spawned → active transition (done with an agent's first delivery)."""
        event = tx.append("agent.activated", actor="system", meta={"agent": agent})
        tx.project(AgentStatus(agent, "active", event.bytes))

    # -- in-process listeners (the runtime) -------------------------------------------------

    def cache_status(self, agent: str, status: str) -> None:
        """Record a status this process just committed (the runtime's spawned → active)."""
        self._remember(agent, status)

    def _remember(self, agent: str, status: str) -> None:
        if len(self._status) >= _CACHE_MAX:
            self._status.clear()
        self._status[agent] = status

    def listen(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(agent, status)`` after every lifecycle change made in this process."""
        self._listeners.append(callback)

    def _notify(self, agent: str, status: str) -> None:
        for callback in self._listeners:
            callback(agent, status)
