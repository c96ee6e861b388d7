"""Reading the ledger as one principal: which events it may see (a mixin of :class:`~habitus._acting.Acting`).

The rule (also in ``docs/server.md``, "Events"). A principal sees an event when

- it is the event's actor;
- the event is about it: ``meta.to``, ``meta.agent``, ``meta.principal``, ``meta.subject``
  or ``meta.on_behalf_of`` names it, or names an agent it owns;
- the actor is an agent it owns;
- it is ``system``; or
- control grants it ``ledger:read`` on the event's actor (``ledger:read agent:*``,
  ``ledger:read *`` for an auditor).

Memory events (``memory.*``, ``fact.asserted``) also need ``memory:read`` on each scope
they name (``meta.scope``, ``meta.scopes``), unless the principal is their actor. A
suspended or retired agent sees nothing.

An event a principal may not see does not exist for it: reading it by id raises
:class:`~habitus.errors.EventNotFoundError`, exactly as for an id that is in no ledger.
In a causal walk it appears *redacted* (:func:`redacted`), so the shape of the graph
survives and nothing private leaks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from habitus.errors import EventNotFoundError, InvalidRequestError
from habitus.ledger._models import Checkpoint, Event, InclusionProof, Page, Subgraph, VerifyReport
from habitus.ledger._rows import as_uuid

if TYPE_CHECKING:
    from habitus._habitat import Habitat
    from habitus.ledger._rows import EventRef

__all__ = ["HIDDEN", "_Reading", "redacted"]

HIDDEN = "hidden"
"""The actor of a redacted event: not a principal, so it never names a real one."""

_ABOUT = ("to", "agent", "principal", "subject", "on_behalf_of")
"""Meta fields that name the principal (or agent) an event is about."""

_PRINCIPAL_PREFIXES = ("agent:", "human:", "service:", "source:")
_SCAN_MAX = 50_000
"""Events one ``events()`` call reads at most while looking for visible ones (then it returns a cursor)."""


def redacted(event: Event, keep: set[uuid.UUID] | frozenset[uuid.UUID] = frozenset()) -> Event:
    """``event`` as one who may not see it sees it in a causal graph.

    Kept: ``id``, ``seq``, ``ts``, ``kind``, and the causes that are in ``keep`` (the
    graph's own nodes, so its edges still read the same). Blanked: ``actor`` (set to
    ``"hidden"``), ``meta``, ``content``, ``thread``, ``at``, ``digest``, ``erased``.
    """
    return Event(
        id=event.id,
        seq=event.seq,
        ts=event.ts,
        actor=HIDDEN,
        kind=event.kind,
        causes=tuple(c for c in event.causes if c in keep),
    )


def _not_found(ref: uuid.UUID) -> EventNotFoundError:
    # Word for word what the ledger says of an id it does not hold: an invisible event cannot be probed.
    return EventNotFoundError(f"no event with id {str(ref)!r} in this ledger")


class _Sight:
    """Which events one principal may see; remembers what it worked out, so make one per call."""

    __slots__ = ("_grants", "_hab", "_owners", "_scopes", "blind", "principal")

    def __init__(self, hab: Habitat, principal: str) -> None:
        self._hab = hab
        self.principal = principal
        self._owners: dict[str, str | None] = {}
        self._grants: dict[str, bool] = {}
        self._scopes: dict[str, bool] = {}
        self.blind: str | None = None
        """Why this principal sees nothing (a suspended, retired or unknown agent), else None."""
        if principal.startswith("agent:"):
            status = hab.agents.status(principal[6:])
            if status is None:
                self.blind = f"there is no agent {principal[6:]!r}"
            elif status in ("suspended", "retired"):
                self.blind = f"{principal} is {status}"

    def _owner(self, agent: str) -> str | None:
        if agent not in self._owners:
            self._owners[agent] = self._hab.agents.owner(agent)
        return self._owners[agent]

    def _names_me(self, principal: str) -> bool:
        return principal == self.principal or (
            principal.startswith("agent:") and self._owner(principal[6:]) == self.principal
        )

    def _granted(self, actor: str) -> bool:
        known = self._grants.get(actor)
        if known is None:
            try:
                known = self._hab.control.decide(self.principal, "ledger:read", actor).allowed
            except InvalidRequestError:  # an actor control cannot name as a resource
                known = False
            self._grants[actor] = known
        return known

    def _reads_scope(self, scope: str) -> bool:
        known = self._scopes.get(scope)
        if known is None:
            try:
                known = self._hab.control.decide(self.principal, "memory:read", "scope:" + scope).allowed
            except InvalidRequestError:
                known = False
            self._scopes[scope] = known
        return known

    def sees(self, event: Event) -> bool:
        """True if the principal may see ``event``."""
        if self.principal == "system":
            return True
        if self.blind is not None:
            return False
        actor = event.actor
        if actor == self.principal:
            return True
        if not (self._about_me(event) or self._names_me(actor) or self._granted(actor)):
            return False
        return self._reads_scopes(event)

    def _about_me(self, event: Event) -> bool:
        meta = event.meta
        for field in _ABOUT:
            value = meta.get(field)
            if not isinstance(value, str):
                continue
            if field == "agent" and not value.startswith(_PRINCIPAL_PREFIXES):
                value = "agent:" + value  # memory and agent events name the agent by its bare id
            if self._names_me(value):
                return True
        return False

    def _reads_scopes(self, event: Event) -> bool:
        if not (event.kind.startswith("memory.") or event.kind == "fact.asserted"):
            return True
        scope = event.meta.get("scope")
        scopes = event.meta.get("scopes")
        named = [scope] if isinstance(scope, str) else []
        if isinstance(scopes, list):
            named += [s for s in scopes if isinstance(s, str)]
        return all(self._reads_scope(s) for s in named)


class _Reading:
    """Ledger reads filtered to what the principal may see."""

    _hab: Habitat
    principal: str
    on_behalf_of: str | None

    # -- who sees what ------------------------------------------------------------------------

    def _sights(self) -> list[_Sight]:
        # Acting for someone never widens the view: both must see an event.
        sights = [_Sight(self._hab, self.principal)]
        if self.on_behalf_of is not None:
            sights.append(_Sight(self._hab, self.on_behalf_of))
        return sights

    async def _reader(self) -> list[_Sight]:
        """The sights of this call, after checking the delegation and that the principal may read at all.

        Raises:
            PolicyDeniedError: A suspended, retired or unknown agent, or a delegation not given.
        """
        control = self._hab.control
        if self.on_behalf_of is not None:
            await control.require(self.principal, "principal:act", self.on_behalf_of)
        sights = self._sights()
        for sight in sights:
            if sight.blind is not None:
                await control.deny(sight.principal, "ledger:read", sight.principal, sight.blind)
        return sights

    async def require_reading(self) -> None:
        """Refuse now if this principal may read no events at all, before a stream starts.

        Raises:
            PolicyDeniedError: A suspended, retired or unknown agent, or a delegation not given.
        """
        await self._reader()

    def can_see(self, event: Event) -> bool:
        """True if this principal (and whoever it acts for) may see ``event``; records nothing."""
        return all(s.sees(event) for s in self._sights())

    async def _visible(self, ref: EventRef) -> Event:
        sights = await self._reader()
        event = await self._hab.ledger.get(ref)
        if not all(s.sees(event) for s in sights):
            raise _not_found(event.id)
        return event

    # -- reading ------------------------------------------------------------------------------

    async def event(self, ref: EventRef) -> Event:
        """The event with this id, if this principal may see it.

        Raises:
            EventNotFoundError: No such event, or one this principal may not see (the two
                are told apart by nobody: ids cannot be probed). Nothing is recorded.
        """
        return await self._visible(ref)

    async def events(
        self,
        *,
        actor: str | None = None,
        kind: str | None = None,
        thread: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: int | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> Page:
        """The events this principal may see that match every filter, one page at a time.

        Filters as :meth:`habitus.ledger.Ledger.query`. A page holds ``limit`` events
        unless the matching events ran out (then ``next_cursor`` is ``None``) or one call
        read 50,000 events without filling it (then it holds fewer, perhaps none, and
        ``next_cursor`` goes on from where the reading stopped): follow ``next_cursor``
        until it is ``None``, and every visible event comes exactly once.
        """
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidRequestError(f"limit must be between 1 and 10000, not {limit!r}")
        sights = await self._reader()
        ledger = self._hab.ledger

        async def query(after: int | None, size: int) -> Page:
            return await ledger.query(
                actor=actor, kind=kind, thread=thread, since=since, until=until, cursor=after, limit=size, order=order
            )

        if all(s.principal == "system" for s in sights):
            return await query(cursor, limit)
        batch = min(10_000, max(200, 2 * (limit + 1)))
        found: list[Event] = []
        scanned = 0
        while True:
            page = await query(cursor, batch)
            for event in page.events:
                if all(s.sees(event) for s in sights):
                    if len(found) == limit:  # one more visible event: there is a next page
                        return Page(events=found, next_cursor=found[-1].seq)
                    found.append(event)
            if page.next_cursor is None:
                return Page(events=found, next_cursor=None)
            cursor = page.next_cursor
            scanned += len(page.events)
            if scanned >= _SCAN_MAX:
                return Page(events=found, next_cursor=cursor)

    async def why(self, ref: EventRef, *, depth: int = 50, limit: int = 1000) -> Subgraph:
        """Walk causes back from a visible event; causes this principal may not see are redacted.

        Raises:
            EventNotFoundError: No such event, or one this principal may not see.
        """
        return await self._walk(ref, "causes", depth, limit)

    async def effects(self, ref: EventRef, *, depth: int = 50, limit: int = 1000) -> Subgraph:
        """Walk forward from a visible event to what it led to; effects it may not see are redacted.

        Raises:
            EventNotFoundError: No such event, or one this principal may not see.
        """
        return await self._walk(ref, "effects", depth, limit)

    async def _walk(self, ref: EventRef, direction: Literal["causes", "effects"], depth: int, limit: int) -> Subgraph:
        target = as_uuid(ref)
        sights = await self._reader()
        ledger = self._hab.ledger
        graph = await (ledger.why if direction == "causes" else ledger.effects)(target, depth=depth, limit=limit)
        seen = [all(s.sees(n) for s in sights) for n in graph.nodes]
        if not next(ok for n, ok in zip(graph.nodes, seen, strict=True) if n.id == graph.root):
            raise _not_found(target)
        if all(seen):
            return graph
        keep = frozenset(n.id for n in graph.nodes)
        nodes = [n if ok else redacted(n, keep) for n, ok in zip(graph.nodes, seen, strict=True)]
        return graph.model_copy(update={"nodes": nodes})

    async def proof(self, ref: EventRef, *, tree_size: int | None = None) -> InclusionProof:
        """An inclusion proof for a visible event (in the current tree, or the first ``tree_size`` leaves).

        Raises:
            EventNotFoundError: No such event, or one this principal may not see.
        """
        event = await self._visible(ref)
        return await self._hab.ledger.inclusion_proof(event.id, tree_size=tree_size)

    async def verify(self, *, public_key: str | None = None) -> VerifyReport:
        """Verify the whole ledger (anyone may: the report holds digests and counts, no content)."""
        await self._reader()
        return await self._hab.ledger.verify(public_key=public_key)

    async def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, oldest first (anyone may read them: sizes, roots and signatures)."""
        await self._reader()
        return await self._hab.ledger.checkpoints()

    async def tail(self, *, after: int | None = None) -> AsyncIterator[Event]:
        """Yield the events this principal may see as they commit (cancel the consumer to stop).

        Args:
            after: Start after this seq; default: only events committed from now on.

        Policy is read afresh for each event, so a grant revoked (or the principal
        suspended) mid-stream hides what follows.
        """
        await self._reader()
        async for event in self._hab.ledger.tail(after=after):
            if self.can_see(event):
                yield event
