"""Agents, mailboxes and approvals as one principal sees them (a mixin of :class:`~habitus._acting.Acting`).

Who sees which agent (its :class:`~habitus.agents.AgentInfo`: identity, owner, status):

- the habitat (``system``) sees every agent;
- a human or service sees the agents it owns;
- an agent sees itself and the other agents of its owner;
- anyone granted ``state:read`` on an agent sees that agent.

Acting for someone (``on_behalf_of``) sees what both may see. A suspended, retired or
unknown agent (acting, or acted for) sees nothing: every read here is a 403 and a
``policy.denied`` event, as for its other reads (the kill switch). An agent one may not see
is reported exactly as one that does not exist, so ids cannot be probed through
:meth:`_Managing.agent`. Seeing an agent is not reading it: its state and mailbox
need ``state:read`` on it at the time (its owner and itself by default), which the
kill switch takes from a suspended agent, and a refusal is a ``policy.denied`` event.

Who sees which approval request: the principal who made it, the one it was made for,
and whoever may decide it (the owner of the requesting agent or of the agent it is
about, whoever granted the capability that makes it wait, a principal granted
``approval:decide`` on the requester); the habitat sees them all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from habitus.agents._models import AgentInfo, Message
from habitus.agents._registry import agent_id, info_from_row
from habitus.control._approvals import Approval, ApprovalStatus
from habitus.control._rules import matches
from habitus.errors import EventNotFoundError, InvalidRequestError, UnknownAgentError
from habitus.ledger._codec import from_micros
from habitus.ledger._rows import as_uuid, event_from_row

if TYPE_CHECKING:
    from habitus._habitat import Habitat
    from habitus.memory._memory import AgentMemory
    from habitus.storage._projections import AgentRow, MailboxRow

__all__ = ["DeadLetters", "MailboxEntry", "_Managing"]

_SCAN = 2_000  # registry rows read at a time while filtering the agents a principal sees
_MAX_LIMIT = 10_000
_MAX_MAIL = 1_000


class MailboxEntry(BaseModel):
    """A message in an agent's mailbox: waiting for delivery, or dead-lettered.

    Attributes:
        message: The message, as its handler receives it.
        attempts: Deliveries tried so far (0 for a message not yet handed to a handler).
        retry_at: When a failed delivery is tried again (``None``: as soon as the agent is free).
        dead: True for a dead letter (failed too often, or its agent was retired).
        error: The last delivery's error, if one failed.
    """

    model_config = ConfigDict(frozen=True)

    message: Message
    attempts: int
    retry_at: datetime | None = None
    dead: bool = False
    error: str | None = None


class DeadLetters(BaseModel):
    """The latest dead letters of an agent (oldest first) and how many it has in all."""

    model_config = ConfigDict(frozen=True)

    agent: str
    total: int
    letters: list[MailboxEntry]


class _Managing:
    """Listing and inspecting agents, their mailboxes, and approvals, as the principal may."""

    _hab: Habitat
    principal: str
    on_behalf_of: str | None

    if TYPE_CHECKING:

        def memory(self, agent: str | None = None) -> AgentMemory: ...
        async def _delegated(self) -> None: ...

    # -- agents -----------------------------------------------------------------------------

    async def agents(self, *, after: str | None = None, limit: int = 100) -> list[AgentInfo]:
        """The agents this principal may see, in id order, a page at a time (pass the last id as ``after``).

        Raises:
            InvalidRequestError: ``limit`` is not 1 to 10,000, or ``after`` is not an agent id.
            PolicyDeniedError: The principal is a suspended, retired or unknown agent (recorded).
        """
        _check_limit(limit, _MAX_LIMIT)
        start = agent_id(after) if after is not None else None
        await self._refuse_blind("state:read", "agent:*")
        sees = self._seer()
        store = self._hab._store

        def scan() -> list[AgentRow]:
            found: list[AgentRow] = []
            cursor = start
            # Filtering reads whole pages, even for a short answer: one query per page, not one per agent.
            page = limit if sees is None else _SCAN
            while len(found) < limit:
                rows = store.agents(after=cursor, limit=page)
                found.extend(rows if sees is None else (r for r in rows if sees(r.agent, r.owner)))
                if len(rows) < page:
                    break
                cursor = rows[-1].agent
            return found[:limit]

        return [info_from_row(row) for row in await asyncio.to_thread(scan)]

    async def agent(self, agent: str) -> AgentInfo:
        """One agent this principal may see.

        Raises:
            UnknownAgentError: No such agent, or none this principal may see (the same error, so
                that ids cannot be probed).
            PolicyDeniedError: The principal is a suspended, retired or unknown agent (recorded).
        """
        aid = agent_id(agent)
        await self._refuse_blind("state:read", f"agent:{aid}")
        missing = UnknownAgentError(f"no agent {aid!r} that {self.principal} may see in this habitat")
        try:
            info = await self._hab.agents.get(aid)
        except UnknownAgentError:
            raise missing from None
        sees = self._seer()
        if sees is not None and not sees(info.id, info.owner):
            raise missing
        return info

    async def agent_memory(self, agent: str) -> AgentMemory:
        """An existing agent's memory, used as this principal (:meth:`memory`, once the agent is known).

        Raises:
            UnknownAgentError: No such agent.
        """
        info = await self._hab.agents.get(agent_id(agent))
        return self.memory(info.id)

    async def mailbox(self, agent: str, *, dead: bool = False, after: int = 0, limit: int = 100) -> list[MailboxEntry]:
        """The messages waiting in an agent's mailbox (``dead``: its dead letters), oldest first.

        Needs ``state:read`` on the agent (its owner and itself by default). Page with
        ``after``: the ``message.seq`` of the last entry seen.

        Raises:
            UnknownAgentError: No such agent.
            PolicyDeniedError: Not this principal's to read (recorded as ``policy.denied``).
        """
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidRequestError(f"after must be a message seq (an integer of 0 or more), not {after!r}")
        _check_limit(limit, _MAX_MAIL)
        aid = await self._readable(agent)
        store = self._hab._store
        rows = await asyncio.to_thread(lambda: store.mailbox(aid, after=after, limit=limit, dead=bool(dead)))
        return await self._entries(rows)

    async def dead_letters(self, agent: str, *, limit: int = 100) -> DeadLetters:
        """An agent's latest ``limit`` dead letters (oldest first) and how many it has (needs ``state:read``)."""
        _check_limit(limit, _MAX_MAIL)
        aid = await self._readable(agent)
        rows, total = await self._hab.agents.dead_letters(aid, limit=limit)
        return DeadLetters(agent=aid, total=total, letters=await self._entries(rows))

    async def _readable(self, agent: str) -> str:
        aid = agent_id(agent)
        await self._hab.agents.get(aid)
        await self._hab.control.require(self.principal, "state:read", f"agent:{aid}", on_behalf_of=self.on_behalf_of)
        return aid

    async def _entries(self, rows: Sequence[MailboxRow]) -> list[MailboxEntry]:
        if not rows:
            return []
        store = self._hab._store
        events = {
            e.seq: e for e in map(event_from_row, await asyncio.to_thread(store.rows_by_seq, [r.msg for r in rows]))
        }
        return [
            MailboxEntry(
                message=Message.from_event(events[r.msg], attempt=max(1, r.attempts)),
                attempts=r.attempts,
                retry_at=from_micros(r.not_before) if r.not_before else None,
                dead=r.dead,
                error=r.error,
            )
            for r in rows
            if r.msg in events
        ]

    async def _refuse_blind(self, action: str, resource: str) -> None:
        """Refuse a suspended, retired or unknown agent (acting or acted for), and a delegation not given."""
        await self._delegated()
        for who in (self.principal, self.on_behalf_of):
            if who is None or not who.startswith("agent:"):
                continue
            status = self._hab.agents.status(who[6:])  # cached; one row read on a miss, as control's check does
            if status is None or status in ("suspended", "retired"):
                reason = f"there is no agent {who[6:]!r}" if status is None else f"{who} is {status}"
                await self._hab.control.deny(self.principal, action, resource, reason)

    def _seer(self) -> Callable[[str, str], bool] | None:
        """A test of ``(agent id, owner)`` for the agents this principal may see; ``None`` when it sees all."""
        tests = [self._sight(p) for p in (self.principal, self.on_behalf_of) if p is not None]
        if all(t is None for t in tests):
            return None
        return lambda agent, owner: all(t is None or t(agent, owner) for t in tests)

    def _sight(self, principal: str) -> Callable[[str, str], bool] | None:
        if principal == "system":
            return None
        own_agent = principal[6:] if principal.startswith("agent:") else None
        owner = self._hab.agents.owner(own_agent) if own_agent is not None else None
        now = datetime.now(UTC)
        grants = [
            c
            for c in self._hab.control.capabilities(principal)
            if matches(c.action, "state:read") and (c.until is None or c.until > now)
        ]

        def sees(agent: str, agent_owner: str) -> bool:
            if agent_owner == principal or agent == own_agent or (owner is not None and agent_owner == owner):
                return True
            return any(c.applies(principal, "state:read", f"agent:{agent}", now) for c in grants)

        return sees

    # -- approvals --------------------------------------------------------------------------

    async def approvals(self, *, status: ApprovalStatus | None = "pending") -> list[Approval]:
        """The approval requests this principal made, was the subject of, or may decide, oldest first.

        Args:
            status: ``pending`` (default), ``approved``, ``rejected``, or ``None`` for all.

        Raises:
            PolicyDeniedError: The principal is a suspended, retired or unknown agent (recorded).
        """
        if status not in (None, "pending", "approved", "rejected"):
            raise InvalidRequestError(f"status must be 'pending', 'approved', 'rejected' or None, not {status!r}")
        await self._refuse_blind("approval:decide", "*")
        return [a for a in self._hab.control.approvals(status=status) if self._sees_request(a)]

    async def approval(self, approval: str | uuid.UUID) -> Approval:
        """One approval request this principal may see.

        Raises:
            InvalidRequestError: ``approval`` is not an id.
            EventNotFoundError: No such request, or none this principal may see (the same error).
            PolicyDeniedError: The principal is a suspended, retired or unknown agent (recorded).
        """
        aid = as_uuid(approval if isinstance(approval, uuid.UUID) else str(approval))
        await self._refuse_blind("approval:decide", "*")
        missing = EventNotFoundError(f"no approval request {str(aid)!r} that {self.principal} may see")
        try:
            found = self._hab.control.approval(aid)
        except InvalidRequestError:
            raise missing from None
        if not self._sees_request(found):
            raise missing
        return found

    def _sees_request(self, request: Approval) -> bool:
        control = self._hab.control
        return all(
            who == "system" or who in (request.principal, request.on_behalf_of) or control._may_decide(who, request)
            for who in (self.principal, self.on_behalf_of)
            if who is not None
        )


def _check_limit(limit: int, most: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidRequestError(f"limit must be an integer from 1 to {most}, not {limit!r}")
