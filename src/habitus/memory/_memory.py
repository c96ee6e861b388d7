"""Agents' memory: remember, recall, forget, facts, scopes — every change an event.

A memory is a ``memory.remembered`` event (its text the content, its sources
the causes, its world time ``at``) plus rows in the memory projections: the
full-text index, the vector, the attributes that filters and forgetting use.
Both commit in one transaction. Forgetting erases the text through the
ledger's erasure and deletes the rows in the same transaction, so the text is
gone from the ledger, the full-text index and the vectors at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from habitus.errors import (
    InvalidRequestError,
    MemoryNotFoundError,
)
from habitus.ledger._models import Draft
from habitus.ledger._rows import EventRef, as_uuid
from habitus.memory import _kinds  # noqa: F401  (registers the memory kinds)
from habitus.memory._models import Fact, Forgotten, MemoryRecord
from habitus.storage._memory import (
    FactDelete,
    MemoryRow,
)
from habitus.storage._projections import Op

if TYPE_CHECKING:
    pass
from habitus.memory._beliefs import _Believing
from habitus.memory._recall import _Recalling
from habitus.memory._service import MemoryService, Reranker, Summarizer
from habitus.memory._shared import _check_trust, _record_from_row

__all__ = ["AgentMemory", "MemoryService", "Reranker", "Summarizer"]


class AgentMemory(_Recalling, _Believing):
    """One agent's memory: what it remembers, recalls, believes and forgets.

    Every method acts as the agent (``agent:<id>``) and is recorded in the
    ledger. By default memories are private to the agent; ``scope`` puts them
    in a group (``group:<name>``) or ``public``, and recall searches every
    scope the agent may read unless told otherwise.
    """

    async def grant(self, scope: str, to: str, *, write: bool = False) -> None:
        """Let agent ``to`` read (``write``: and write) a scope this agent may write, e.g. its own."""
        resolved = await self._scope_for(scope, write=True)
        await self._svc.grant(resolved, to, write=write, by=self.principal)

    async def revoke(self, scope: str, agent: str) -> None:
        """Take back a grant this agent could have made."""
        resolved = await self._scope_for(scope, write=True)
        await self._svc.revoke(resolved, agent, by=self.principal)

    # -- reading and forgetting -------------------------------------------------------------

    async def get(self, memory: EventRef | MemoryRecord) -> MemoryRecord:
        """One memory by id (within the scopes this agent may read).

        Raises:
            MemoryNotFoundError: No such memory, or it was forgotten.
            ScopeDeniedError: It lives in a scope this agent may not read.
        """
        row = await self._row(memory)
        await self._check("memory:read", row.scope)
        return _record_from_row(row)

    async def _row(self, memory: EventRef | MemoryRecord) -> MemoryRow:
        mid = memory.id if isinstance(memory, MemoryRecord) else as_uuid(memory)
        row: MemoryRow | None = await asyncio.to_thread(self._svc._store.memory_by_id, mid.bytes)
        if row is None:
            raise MemoryNotFoundError(f"no memory {str(mid)!r}: it was never stored, or it was forgotten")
        return row

    async def memories(
        self,
        *,
        scope: str | None = None,
        after: int = 0,
        limit: int = 100,
        kinds: Iterable[str] | None = None,
        trust: Literal["trusted", "untrusted"] | None = None,
    ) -> list[MemoryRecord]:
        """Memories in the order they were stored (default: this agent's private scope), of ``kinds``
        and only ``trusted`` or ``untrusted`` ones when ``trust`` is given."""
        trust = _check_trust(trust)
        resolved = await self._scope_for(scope, write=False)
        kind_list = list(kinds or []) or None
        rows = await asyncio.to_thread(
            lambda: self._svc._store.memory_list([resolved], after=after, limit=limit, kinds=kind_list, trust=trust)
        )
        return [_record_from_row(r) for r in rows]

    async def forget(self, memory: EventRef | MemoryRecord | Fact, *, reason: str) -> Forgotten:
        """Forget a memory (or a fact) for good: its text is erased from the ledger, the full-text
        index, the vectors and every file of the habitat; ``memory.forgotten`` records who and why.

        Raises:
            MemoryNotFoundError: No such memory or fact.
            ScopeDeniedError: It lives in a scope the principal may not erase in.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequestError("forget needs a reason (a non-empty string)")
        mid = memory.id if isinstance(memory, MemoryRecord | Fact) else as_uuid(memory)
        svc = self._svc
        row = await asyncio.to_thread(svc._store.memory_by_id, mid.bytes)
        if row is not None:
            await self._scope_for(row.scope, erase=True)
            if self._tx is not None:
                raise InvalidRequestError("forget erases at once and cannot run inside a handler's transaction")
            (done,) = await svc._forget_rows([row], reason=reason, cause="explicit", by=self.principal)
            return done
        facts = await asyncio.to_thread(svc._store.fact_by_id, mid.bytes)
        if not facts:
            raise MemoryNotFoundError(f"no memory or fact {str(mid)!r}: it was never stored, or it was forgotten")
        await self._scope_for(facts[0].scope, erase=True)
        target = await svc._ledger.get(mid)
        draft = Draft(
            kind="memory.forgotten",
            actor=self.principal,
            meta={"agent": facts[0].agent, "memory": str(mid), "reason": reason, "cause": "explicit"},
            causes=(mid,),
        )
        ops: list[Op] = [FactDelete(f.fid) for f in facts if f.copy_of is None]
        events, scrubbed = await svc._ledger._erase_events(
            [target], reason=reason, by=self.principal, drafts=[draft], ops=ops
        )
        return Forgotten(memory=mid, event=events[1].id, erasure=events[0].id, scrubbed=scrubbed)
