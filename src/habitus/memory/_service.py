"""The habitat-wide memory service: the embedder, the vector indexes, grants, reindexing and sweeping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from habitus.agents._registry import Agents, agent_id
from habitus.errors import (
    EmbedderError,
    InvalidRequestError,
)
from habitus.ledger._codec import to_micros
from habitus.ledger._ledger import Ledger
from habitus.ledger._models import Draft
from habitus.memory import _kinds  # noqa: F401  (registers the memory kinds)
from habitus.memory._embedders import Embedder, resolve_embedder
from habitus.memory._models import Forgotten, MemoryRecord
from habitus.memory._retrieval import Tuning
from habitus.memory._space import VectorSpace
from habitus.storage._abstract import HabitatStore
from habitus.storage._memory import (
    MemoryDelete,
    MemoryPut,
    MemoryRow,
    VectorPut,
    label,
)
from habitus.storage._projections import Op

if TYPE_CHECKING:
    from habitus._settings import Settings
    from habitus.control._control import Control
    from habitus.control._rules import Capability
    from habitus.memory._memory import AgentMemory
from habitus.memory._shared import _EMBED_BATCH, _aware, _check_scope, _now

__all__ = ["MemoryService", "Reranker", "Summarizer"]


class Reranker(Protocol):
    """Rescores recall's best candidates (a cross-encoder, say); set ``hab.memories.reranker``.

    Called from a worker thread with the query and the candidates' texts (``Speaker: text``),
    best first; returns one score per text, higher is better. Recall reorders its best
    ``Tuning.rerank_depth`` candidates (or ``k``, if more) by these scores.
    """

    def rerank(self, query: str, texts: Sequence[str]) -> Sequence[float]:
        """One score per text."""
        ...


Summarizer = Callable[[list[MemoryRecord]], Awaitable[str]]
"""Writes a summary of episodes (a model from the gateway, say) for :meth:`AgentMemory.consolidate`."""


class MemoryService:
    """Memory for every agent of a habitat (``hab.memories``); ``hab.memory(agent)`` is one agent's view.

    Holds the embedder (resolved from settings on first use), the in-process
    vector indexes (one per scope, loaded on first search), and the ranking's
    :class:`~habitus.memory.Tuning`.
    """

    def __init__(
        self,
        ledger: Ledger,
        store: HabitatStore,
        agents: Agents,
        settings: Settings,
        control: Control,
        *,
        embedder: Embedder | None = None,
    ) -> None:
        self._control = control
        self._ledger = ledger
        self._store = store
        self._agents = agents
        self._settings = settings
        self._embedder = embedder
        self._space: VectorSpace | None = None
        # per scope: vectors for score statistics, and the scope's size when they were drawn
        self._samples: dict[str, tuple[int, np.ndarray[Any, Any]]] = {}
        self.tuning = Tuning()
        self.reranker: Reranker | None = None
        self.notice: str | None = None
        ledger.on_commit(self._committed)

    # -- the embedder and vectors -----------------------------------------------------------

    def set_embedder(self, embedder: Embedder) -> None:
        """Use ``embedder`` from now on; vectors from another model are ignored until :meth:`reindex`."""
        self._embedder = embedder
        self._space = None
        self._samples.clear()

    @property
    def embedder(self) -> Embedder:
        """The embedder new memories and queries go through (resolved from settings on first use)."""
        if self._embedder is None:
            s = self._settings
            embedder = resolve_embedder(s.embedder, base_url=s.embeddings_url, api_key=s.embeddings_key)
            self.notice = getattr(embedder, "notice", None)  # "lexical only", logged once by the resolver
            self._embedder = embedder
        return self._embedder

    def _vectors(self) -> VectorSpace | None:
        embedder = self.embedder
        if embedder.dim == 0:
            return None
        if self._space is None:
            self._space = VectorSpace(embedder.dim, self._load_scope)
        return self._space

    def _load_scope(self, scope: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        name = self.embedder.name
        rids, blobs, embedders = self._store.memory_vectors(scope)
        keep = [i for i, e in enumerate(embedders) if e == name]
        dim = self.embedder.dim
        keys = np.array([rids[i] for i in keep], dtype=np.int64)
        if not keep:
            return keys, np.zeros((0, dim), dtype=np.float32)
        vectors = np.frombuffer(b"".join(blobs[i] for i in keep), dtype=np.float32).reshape(len(keep), dim)
        return keys, vectors

    def _dense_stats(self, scopes: Sequence[str], query: np.ndarray[Any, Any]) -> tuple[float, float]:
        """Mean and standard deviation of the query's cosine over ``scopes``, from a sample of each
        (drawn again once a scope has doubled or halved since)."""
        parts: list[np.ndarray[Any, Any]] = []
        for scope in scopes:
            size = self._store.memory_count(scope)
            drawn, sample = self._samples.get(scope, (0, None))
            if sample is None or not drawn / 2 <= size <= drawn * 2:
                blobs = self._store.memory_vector_sample(scope, 1024)
                dim = self.embedder.dim
                sample = (
                    np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, dim)
                    if blobs
                    else np.zeros((0, dim), dtype=np.float32)
                )
                self._samples[scope] = (size, sample)
            if len(sample):
                parts.append(sample @ query)
        if not parts:
            return 0.0, 0.0
        values = np.concatenate(parts).astype(np.float64)
        return float(values.mean()), float(values.std())

    async def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any] | None:
        """Embed ``texts`` in a worker thread (``None`` when lexical-only)."""
        embedder = self.embedder
        if not texts:
            return None

        def run() -> np.ndarray[Any, Any] | None:  # dim may ask a remote endpoint once: not on the loop
            return None if embedder.dim == 0 else embedder.embed(list(texts))

        try:
            out = await asyncio.to_thread(run)
        except EmbedderError:
            raise
        except Exception as exc:
            raise EmbedderError(f"embedding with {embedder.name} failed: {exc}") from exc
        return out

    def _committed(self, ops: Sequence[Op], rows: Sequence[Any]) -> None:
        """Keep loaded vector indexes in step with committed memory changes."""
        space = self._space
        if space is None:
            return
        seq_of: dict[bytes, int] | None = None
        name = self.embedder.name
        for op in ops:
            if isinstance(op, MemoryPut) and op.vector is not None and op.embedder == name:
                if seq_of is None:
                    seq_of = {r[1]: r[0] for r in rows}
                vec = np.frombuffer(op.vector, dtype=np.float32).reshape(1, -1)
                space.add(op.scope, np.array([seq_of[op.event]], dtype=np.int64), vec)
            elif isinstance(op, MemoryDelete):
                space.remove(op.scope, [op.rid])
            elif isinstance(op, VectorPut):
                if op.vector is not None and op.embedder == name:
                    vec = np.frombuffer(op.vector, dtype=np.float32).reshape(1, -1)
                    space.add(op.scope, np.array([op.rid], dtype=np.int64), vec)
                else:
                    space.remove(op.scope, [op.rid])

    # -- views ------------------------------------------------------------------------------

    def of(self, agent: str, *, principal: str | None = None, on_behalf_of: str | None = None) -> AgentMemory:
        """One agent's memory (``hab.memory(agent)``), used as the agent or as ``principal``."""
        from habitus.memory._memory import AgentMemory

        return AgentMemory(self, agent_id(agent), principal=principal, on_behalf_of=on_behalf_of)

    async def grant(self, scope: str, agent: str, *, write: bool = False, by: str = "system") -> list[Capability]:
        """Let ``agent`` read (``write``: and write) ``scope``: ``memory:read`` (and ``memory:write``)
        capabilities on ``scope:<scope>``, granted by ``by`` (who must hold them)."""
        aid = agent_id(agent)
        await self._agents.get(aid)
        resource = "scope:" + _check_scope(scope)
        actions = ("memory:read", "memory:write") if write else ("memory:read",)
        return [await self._control.grant(f"agent:{aid}", action, resource, by=by) for action in actions]

    async def revoke(self, scope: str, agent: str, *, by: str = "system") -> int:
        """Take back what :meth:`grant` gave ``agent`` on ``scope``; return how many capabilities were revoked."""
        subject = f"agent:{agent_id(agent)}"
        resource = "scope:" + _check_scope(scope)
        caps = [
            c
            for c in self._control.capabilities(subject)
            if c.subject == subject and c.resource == resource and c.action in ("memory:read", "memory:write")
        ]
        for cap in caps:
            await self._control.revoke(cap.id, by=by)
        return len(caps)

    async def reindex(self, *, batch: int = _EMBED_BATCH) -> int:
        """Embed again every memory whose vector is not from the current embedder; return how many.

        Run after changing the ``embedder`` setting. The texts come from the
        full-text index (the projection), each batch commits on its own, and a
        ``memory.reindexed`` event records the change.
        """
        embedder = self.embedder
        counts = await asyncio.to_thread(self._store.memory_embedders)
        stale = sorted(str(e) for e in counts if e != (embedder.name if embedder.dim else None) and e is not None)
        total = 0
        after = 0
        while True:
            rows = await asyncio.to_thread(self._stale_page, after, batch, embedder)
            if not rows:
                break
            after = rows[-1].rid
            vectors = await self.embed([label(r.speaker, r.text) for r in rows])
            async with self._ledger.transaction() as tx:
                for i, row in enumerate(rows):
                    blob = vectors[i].astype(np.float32).tobytes() if vectors is not None else None
                    tx.project(VectorPut(row.rid, row.scope, embedder.name if blob else None, blob))
            total += len(rows)
        if total or stale:
            await self._ledger.append(
                "memory.reindexed",
                actor="system",
                meta={"embedder": embedder.name, "previous": stale or ["none"], "count": total},
            )
        self._space = None  # reload from the new vectors
        self._samples.clear()
        return total

    def _stale_page(self, after: int, limit: int, embedder: Embedder) -> list[MemoryRow]:
        want = embedder.name if embedder.dim else None
        out: list[MemoryRow] = []
        while len(out) < limit:
            rows = self._store.memory_list(None, after=after, limit=limit)
            if not rows:
                break
            after = rows[-1].rid
            out.extend(r for r in rows if r.embedder != want)
        return out

    async def sweep(self, *, now: datetime | None = None, decay_below: float | None = None) -> int:
        """Forget what has had its time; return how many memories were forgotten.

        * memories past their TTL (cause ``ttl``);
        * with ``decay_below``, memories whose value fell under it (cause ``decay``): a
          memory's value is its importance divided by ``1 + days since last used / 30``
          (used = recalled, else stored), so unimportant, unused memories fade first;
        * the least valuable beyond the ``memory_capacity`` setting (cause ``capacity``).

        Each is erased through the ledger like :meth:`AgentMemory.forget`.
        """
        now_us = to_micros(_aware(now, "now") or _now())
        forgotten = 0
        if decay_below is not None:
            if not 0 < decay_below <= 1:
                raise InvalidRequestError(f"decay_below must be in (0, 1], not {decay_below!r}")
            while True:
                rows = await asyncio.to_thread(self._store.memory_below_value, decay_below, now_us, 500)
                if not rows:
                    break
                await self._forget_rows(
                    rows, reason=f"its value decayed below {decay_below}", cause="decay", by="system"
                )
                forgotten += len(rows)
        while True:
            rows = await asyncio.to_thread(self._store.memory_expired, now_us, 500)
            if not rows:
                break
            await self._forget_rows(rows, reason="its time to live ran out", cause="ttl", by="system")
            forgotten += len(rows)
        capacity = self._settings.memory_capacity
        if capacity:
            for row in await asyncio.to_thread(self._store.agents, after=None, limit=1_000_000):
                forgotten += await self._enforce_capacity(f"agent:{row.agent}", capacity, now_us)
        return forgotten

    async def _enforce_capacity(self, scope: str, capacity: int, now_us: int) -> int:
        count = await asyncio.to_thread(self._store.memory_count, scope)
        excess = count - capacity
        if excess <= 0:
            return 0
        rows = await asyncio.to_thread(self._store.memory_candidates_to_drop, scope, excess, now_us)
        await self._forget_rows(rows, reason=f"over the capacity of {capacity} memories", cause="capacity", by="system")
        return len(rows)

    async def _forget_rows(self, rows: Sequence[MemoryRow], *, reason: str, cause: str, by: str) -> list[Forgotten]:
        if not rows:
            return []
        targets = [await self._ledger.get(uuid.UUID(bytes=r.id)) for r in rows]
        drafts = [
            Draft(
                kind="memory.forgotten",
                actor=by,
                meta={"agent": r.agent, "memory": str(uuid.UUID(bytes=r.id)), "reason": reason, "cause": cause},
                causes=(uuid.UUID(bytes=r.id),),
            )
            for r in rows
        ]
        ops: list[Op] = [MemoryDelete(r.rid, r.scope) for r in rows]
        events, scrubbed = await self._ledger._erase_events(targets, reason=reason, by=by, drafts=drafts, ops=ops)
        n = len(rows)
        return [
            Forgotten(memory=uuid.UUID(bytes=r.id), event=events[n + i].id, erasure=events[i].id, scrubbed=scrubbed)
            for i, r in enumerate(rows)
        ]
