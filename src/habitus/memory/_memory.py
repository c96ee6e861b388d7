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
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from habitus.agents._registry import Agents, agent_id
from habitus.errors import (
    EmbedderError,
    InvalidRequestError,
    MemoryNotFoundError,
    ScopeDeniedError,
)
from habitus.ledger._codec import from_micros, to_micros
from habitus.ledger._ledger import Ledger
from habitus.ledger._models import Draft, Event
from habitus.ledger._rows import CommittedEvents, EventRef, as_uuid
from habitus.ledger._transaction import Transaction
from habitus.memory import _kinds  # noqa: F401  (registers the memory kinds)
from habitus.memory._embedders import Embedder, resolve_embedder
from habitus.memory._models import Fact, Forgotten, Hit, MemoryRecord, Recall
from habitus.memory._retrieval import Evidence, QueryInfo, Scored, Tuning, analyse, fts_expression, rank, window_micros
from habitus.memory._timeparse import TimeFilter
from habitus.memory._vectors import VectorSpace
from habitus.storage._abstract import HabitatStore
from habitus.storage._memory import (
    FactDelete,
    FactPut,
    FactRow,
    FactSupersede,
    GrantDelete,
    GrantPut,
    MemoryDelete,
    MemoryPut,
    MemoryRow,
    MemoryTouch,
    VectorPut,
    label,
)
from habitus.storage._projections import Op

if TYPE_CHECKING:
    from habitus._settings import Settings

__all__ = ["AgentMemory", "MemoryService", "Reranker", "Summarizer"]


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

log = logging.getLogger("habitus.memory")

_GROUP_RE = re.compile(r"^group:[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")
_MAX_TEXT = 100_000
_MAX_K = 1000
_EMBED_BATCH = 256


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidRequestError(f"{what} must be a datetime, not {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
        *,
        embedder: Embedder | None = None,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._agents = agents
        self._settings = settings
        self._embedder = embedder
        self._space: VectorSpace | None = None
        self._samples: dict[str, np.ndarray[Any, Any]] = {}  # per scope: vectors for score statistics
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
        """Mean and standard deviation of the query's cosine over ``scopes``, from a sample of each."""
        parts: list[np.ndarray[Any, Any]] = []
        for scope in scopes:
            sample = self._samples.get(scope)
            if sample is None:
                blobs = self._store.memory_vector_sample(scope, 1024)
                dim = self.embedder.dim
                sample = (
                    np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, dim)
                    if blobs
                    else np.zeros((0, dim), dtype=np.float32)
                )
                self._samples[scope] = sample
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

    def of(self, agent: str) -> AgentMemory:
        """One agent's memory (``hab.memory(agent)``)."""
        return AgentMemory(self, agent_id(agent))

    async def grant(self, scope: str, agent: str, *, write: bool = False, by: str = "system") -> None:
        """Let ``agent`` read (``write``: and write) ``scope`` — an administrative grant, recorded as an event."""
        aid = agent_id(agent)
        await self._agents.get(aid)
        scope = _check_scope(scope)
        async with self._ledger.transaction() as tx:
            event = tx.append("memory.granted", actor=by, meta={"scope": scope, "agent": aid, "write": write})
            tx.project(GrantPut(scope, aid, write, event.bytes))

    async def revoke(self, scope: str, agent: str, *, by: str = "system") -> None:
        """Take back ``agent``'s grant on ``scope``."""
        aid = agent_id(agent)
        scope = _check_scope(scope)
        async with self._ledger.transaction() as tx:
            tx.append("memory.revoked", actor=by, meta={"scope": scope, "agent": aid})
            tx.project(GrantDelete(scope, aid))

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


def _check_scope(scope: str) -> str:
    if scope == "public" or _GROUP_RE.match(scope):
        return scope
    if isinstance(scope, str) and scope.startswith("agent:"):
        return f"agent:{agent_id(scope)}"
    raise InvalidRequestError(
        f"memory scope {scope!r} is not one of 'private', 'public', 'group:<name>' or 'agent:<id>'"
    )


class AgentMemory:
    """One agent's memory: what it remembers, recalls, believes and forgets.

    Every method acts as the agent (``agent:<id>``) and is recorded in the
    ledger. By default memories are private to the agent; ``scope`` puts them
    in a group (``group:<name>``) or ``public``, and recall searches every
    scope the agent may read unless told otherwise.
    """

    def __init__(self, service: MemoryService, agent: str, tx: Transaction | None = None) -> None:
        self._svc = service
        self.agent = agent
        self._tx = tx

    @property
    def principal(self) -> str:
        """``agent:<id>``."""
        return f"agent:{self.agent}"

    @property
    def private(self) -> str:
        """This agent's private scope, ``agent:<id>``."""
        return f"agent:{self.agent}"

    # -- scopes -----------------------------------------------------------------------------

    async def scopes(self) -> dict[str, bool]:
        """Every scope this agent may read, with whether it may also write there."""
        await self._svc._agents.get(self.agent)
        grants = await asyncio.to_thread(self._svc._store.grants, self.agent)
        return {self.private: True, "public": True, **grants}

    async def _scope_for(self, scope: str | None, *, write: bool) -> str:
        resolved = self.private if scope in (None, "private", "self") else _check_scope(str(scope))
        allowed = await self.scopes()
        if resolved not in allowed or (write and not allowed[resolved]):
            await self._deny("memory:write" if write else "memory:read", resolved)
        return resolved

    async def _deny(self, action: str, resource: str) -> None:
        reason = f"{resource} is not granted to {self.principal}" + (" for writing" if "write" in action else "")
        if not self._svc._store.read_only:  # a read-only handle cannot record it; the error still says why
            await self._svc._ledger.append(
                "policy.denied",
                actor="system",
                meta={"principal": self.principal, "action": action, "resource": resource, "reason": reason},
            )
        raise ScopeDeniedError(f"{self.principal} may not {action.split(':')[1]} {resource}: {reason}")

    async def grant(self, scope: str, to: str, *, write: bool = False) -> None:
        """Let agent ``to`` read (``write``: and write) a scope this agent may write, e.g. its own."""
        resolved = await self._scope_for(scope, write=True)
        await self._svc.grant(resolved, to, write=write, by=self.principal)

    async def revoke(self, scope: str, agent: str) -> None:
        """Take back a grant this agent could have made."""
        resolved = await self._scope_for(scope, write=True)
        await self._svc.revoke(resolved, agent, by=self.principal)

    # -- remembering ------------------------------------------------------------------------

    async def remember(
        self,
        text: str,
        *,
        at: datetime | None = None,
        kind: str = "note",
        tags: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        source: Iterable[EventRef] = (),
        scope: str | None = None,
        importance: float = 0.5,
        ttl: float | timedelta | None = None,
        thread: str | None = None,
    ) -> MemoryRecord:
        """Remember ``text``; return the stored memory.

        Args:
            text: What to remember (1 to 100,000 characters).
            at: World time of what it describes (default: unknown).
            kind: ``note``, ``observation``, ``message``, ``summary``... (free-form).
            tags: Free-form tags recall can filter on.
            meta: JSON attributes kept with it (``speaker`` is used by recall).
            source: The events it came from (its provenance; they become the event's causes).
            scope: ``private`` (default), ``public``, ``group:<name>``.
            importance: 0..1; decay and capacity forget the least important first.
            ttl: Seconds (or a timedelta) after which it is forgotten on its own.
            thread: The conversation or episode it belongs to.

        Raises:
            InvalidRequestError: A malformed argument; nothing is stored.
            ScopeDeniedError: The agent may not write to ``scope`` (recorded as ``policy.denied``).
            EmbedderError: The embedding model failed; nothing is stored.
        """
        records = await self.remember_many(
            [
                {
                    "text": text,
                    "at": at,
                    "kind": kind,
                    "tags": list(tags),
                    "meta": meta,
                    "source": list(source),
                    "scope": scope,
                    "importance": importance,
                    "ttl": ttl,
                    "thread": thread,
                }
            ]
        )
        return records[0]

    async def remember_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[MemoryRecord]:
        """Remember several memories in one transaction (embedded in batches); each item is a text
        or a mapping of :meth:`remember`'s arguments. All or nothing."""
        await self._svc._agents.get(self.agent)
        drafts = [self._draft(item if isinstance(item, Mapping) else {"text": item}, i) for i, item in enumerate(items)]
        if not drafts:
            return []
        allowed = await self.scopes()
        for d in drafts:
            scope = self.private if d["scope"] in (None, "private", "self") else _check_scope(str(d["scope"]))
            if not allowed.get(scope, False):
                await self._deny("memory:write", scope)
            d["scope"] = scope
        svc = self._svc
        embedder = svc.embedder
        texts = [label(d["speaker"], d["text"]) for d in drafts]
        vectors: list[bytes | None] = [None] * len(drafts)
        for start in range(0, len(texts), _EMBED_BATCH):
            out = await svc.embed(texts[start : start + _EMBED_BATCH])
            if out is not None:
                for j, row in enumerate(out):
                    vectors[start + j] = np.ascontiguousarray(row, dtype=np.float32).tobytes()
        ename = embedder.name if embedder.dim else None
        if self._tx is not None:
            ids = self._stage(self._tx, drafts, vectors, ename)
            events: Sequence[Event] | None = None
        else:
            async with svc._ledger.transaction() as tx:
                ids = self._stage(tx, drafts, vectors, ename)
            events = tx.events
        if events is None:  # staged in a handler's transaction: seq and time come when it commits
            placed = [(0, to_micros(_now()))] * len(drafts)
        elif isinstance(events, CommittedEvents):
            placed = events.seqs_and_times()
        else:
            placed = [(e.seq, to_micros(e.ts)) for e in events]
        records = [_record_from_draft(self.agent, d, ids[i], ename, *placed[i]) for i, d in enumerate(drafts)]
        if events is not None:
            capacity = svc._settings.memory_capacity
            if capacity:
                for scope in {d["scope"] for d in drafts}:
                    if scope.startswith("agent:"):
                        await svc._enforce_capacity(scope, capacity, to_micros(_now()))
        return records

    def _draft(self, item: Mapping[str, Any], index: int) -> dict[str, Any]:
        where = f"memory {index}" if index else "the memory"
        unknown = set(item) - {
            "text", "at", "kind", "tags", "meta", "source", "scope", "importance", "ttl", "thread",
        }  # fmt: skip
        if unknown:
            raise InvalidRequestError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(f"{where}: text must be a non-empty string, not {text!r}")
        if len(text) > _MAX_TEXT:
            raise InvalidRequestError(f"{where}: text is {len(text)} characters; the limit is {_MAX_TEXT}")
        kind = item.get("kind") or "note"
        if not isinstance(kind, str) or not 1 <= len(kind) <= 64:
            raise InvalidRequestError(f"{where}: kind must be a short string, not {kind!r}")
        tags = list(item.get("tags") or [])
        if not all(isinstance(t, str) and 1 <= len(t) <= 256 for t in tags) or len(tags) > 32:
            raise InvalidRequestError(f"{where}: tags must be at most 32 strings of 1-256 characters")
        meta = dict(item.get("meta") or {})
        try:
            attrs = _json(meta)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{where}: meta is not JSON: {exc}") from None
        importance = item.get("importance", 0.5)
        if isinstance(importance, bool) or not isinstance(importance, int | float) or not 0 <= importance <= 1:
            raise InvalidRequestError(f"{where}: importance must be a number from 0 to 1, not {importance!r}")
        ttl = item.get("ttl")
        expires: int | None = None
        if ttl is not None:
            seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise InvalidRequestError(f"{where}: ttl must be a positive number of seconds, not {ttl!r}")
            expires = to_micros(_now()) + int(seconds * 1_000_000)
        at = _aware(item.get("at"), f"{where}: at")
        sources = [as_uuid(s) for s in item.get("source") or []]
        thread = item.get("thread")
        if thread is not None and not isinstance(thread, str):
            raise InvalidRequestError(f"{where}: thread must be a string, not {thread!r}")
        speaker = meta.get("speaker")
        if speaker is not None and (not isinstance(speaker, str) or not 1 <= len(speaker) <= 256):
            raise InvalidRequestError(f"{where}: meta['speaker'] must be a name of 1-256 characters, not {speaker!r}")
        return {
            "speaker": speaker,
            "text": text,
            "kind": kind,
            "tags": tags,
            "meta": meta,
            "attrs": attrs,
            "importance": float(importance),
            "expires": expires,
            "at": at,
            "sources": sources,
            "thread": thread,
            "scope": item.get("scope"),
        }

    def _stage(
        self, tx: Transaction, drafts: Sequence[dict[str, Any]], vectors: Sequence[bytes | None], ename: str | None
    ) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []
        for d, vec in zip(drafts, vectors, strict=True):
            meta: dict[str, Any] = {"agent": self.agent, "scope": d["scope"], "kind": d["kind"]}
            if d["tags"]:
                meta["tags"] = d["tags"]
            if d["speaker"] is not None:
                meta["speaker"] = d["speaker"]
            attrs = {k: v for k, v in d["meta"].items() if k != "speaker"} if d["meta"] else None
            if attrs:
                meta["attrs"] = attrs
            if d["importance"] != 0.5:
                meta["importance"] = d["importance"]
            if d["expires"] is not None:
                meta["expires"] = d["expires"]
            if ename is not None:
                meta["embedder"] = ename
            event = tx.append(
                "memory.remembered",
                actor=self.principal,
                content=d["text"],
                meta=meta,
                causes=d["sources"],
                thread=d["thread"],
                at=d["at"],
            )
            tx.project(
                MemoryPut(
                    event=event.bytes,
                    agent=self.agent,
                    scope=d["scope"],
                    kind=d["kind"],
                    text=d["text"],
                    speaker=d["speaker"],
                    at=to_micros(d["at"]) if d["at"] is not None else None,
                    tags=_json(d["tags"]) if d["tags"] else "[]",
                    attrs=d["attrs"],
                    importance=d["importance"],
                    expires=d["expires"],
                    thread=d["thread"],
                    sources=b"".join(u.bytes for u in d["sources"]) or None,
                    embedder=ename if vec is not None else None,
                    vector=vec,
                )
            )
            ids.append(event)
        return ids

    # -- recalling --------------------------------------------------------------------------

    async def recall(
        self,
        query: str,
        *,
        k: int = 10,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        as_of: datetime | None = None,
        scope: str | Iterable[str] | None = None,
        now: datetime | None = None,
        mode: Literal["hybrid", "dense", "lexical"] = "hybrid",
    ) -> Recall:
        """Recall the ``k`` memories that best answer ``query``, best first.

        Hybrid: BM25 over the full text and the embedder's vectors, fused by
        weighted reciprocal rank, then evidence from time expressions in the
        query ("last week", "in May 2023", "before the trip"), names it
        mentions, and recency. A ``memory.recalled`` event lists what was
        returned (and cites it), so later actions trace back to it.

        Args:
            query: What to look for (1 to 10,000 characters).
            k: How many hits (1 to 1000).
            since, until: Only memories whose world time is in ``[since, until)``.
            kinds: Only memories of these kinds.
            tags: Only memories carrying all these tags.
            as_of: Only memories recorded at or before this time.
            scope: A scope or scopes to search (default: every scope this agent may read).
            now: "Now" for relative time expressions (default: the clock).
            mode: ``hybrid`` (every signal), ``dense`` (vectors, speaker and time; no
                full-text search) or ``lexical`` (no vectors).

        Raises:
            InvalidRequestError: A malformed argument.
            ScopeDeniedError: ``scope`` names a scope the agent may not read (recorded).
        """
        if not isinstance(query, str) or not query.strip() or len(query) > 10_000:
            raise InvalidRequestError(
                f"the query must be a non-empty string of at most 10,000 characters, not {query!r}"
            )
        if mode not in ("hybrid", "dense", "lexical"):
            raise InvalidRequestError(f"mode must be 'hybrid', 'dense' or 'lexical', not {mode!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= _MAX_K:
            raise InvalidRequestError(f"k must be an integer from 1 to {_MAX_K}, not {k!r}")
        since, until, as_of = _aware(since, "since"), _aware(until, "until"), _aware(as_of, "as_of")
        now = _aware(now, "now") or _now()
        kind_set = set(kinds) if kinds is not None else None
        tag_set = set(tags) if tags is not None else None
        allowed = await self.scopes()
        if scope is None:
            scopes = sorted(allowed)
        else:
            wanted = [scope] if isinstance(scope, str) else list(scope)
            scopes = []
            for name in wanted:
                resolved = self.private if name in ("private", "self") else _check_scope(name)
                if resolved not in allowed:
                    await self._deny("memory:read", resolved)
                scopes.append(resolved)
        svc = self._svc
        info = analyse(query, now)
        if info.time is not None and info.time.anchor is not None:
            info = await self._resolve_anchor(info, scopes, now)
        qvec = await svc.embed([query]) if mode != "lexical" else None
        evidence = await asyncio.to_thread(self._evidence, info, qvec, scopes, k, mode != "dense")
        ranked = rank(info, evidence, now=now, tuning=svc.tuning)
        kept = [s for s in ranked if _passes(evidence.rows[s.rid], since, until, kind_set, tag_set, as_of)]
        if svc.reranker is not None and kept:
            kept = await self._rerank(svc.reranker, query, kept, evidence, max(k, svc.tuning.rerank_depth))
        hits = [self._hit(evidence.rows[s.rid], s) for s in kept[:k]]
        event = await self._record_recall(query, k, scopes, hits)
        return Recall(hits=hits, event=event, query=query, time_filter=info.time.expression if info.time else None)

    async def _rerank(
        self, reranker: Reranker, query: str, ranked: list[Scored], ev: Evidence, depth: int
    ) -> list[Scored]:
        """Reorder the best ``depth`` candidates by the reranker's scores (the rest keep their order)."""
        head, tail = ranked[:depth], ranked[depth:]
        texts = [label(ev.rows[s.rid].speaker, ev.rows[s.rid].text) for s in head]
        try:
            scores = list(await asyncio.to_thread(reranker.rerank, query, texts))
        except Exception as exc:
            raise EmbedderError(f"the reranker failed: {exc}") from exc
        if len(scores) != len(head):
            raise EmbedderError(f"the reranker returned {len(scores)} scores for {len(head)} texts")
        for s, score in zip(head, scores, strict=True):
            s.why["rerank"] = round(float(score), 4)
        order = sorted(range(len(head)), key=lambda i: (-float(scores[i]), i))
        return [head[i] for i in order] + tail

    def _evidence(
        self,
        info: QueryInfo,
        qvec: np.ndarray[Any, Any] | None,
        scopes: Sequence[str],
        k: int,
        lexical: bool = True,
    ) -> Evidence:
        """Gather each signal's evidence for ``info`` over ``scopes`` (runs in a worker thread)."""
        svc = self._svc
        store = svc._store
        tuning = svc.tuning
        total, speakers = store.memory_scope_stats(scopes)
        ev = Evidence(total=total, speakers=speakers)
        if total == 0:
            return ev
        exact = total <= tuning.exact_below
        n = total if exact else max(tuning.candidates, 3 * k)
        expr = fts_expression(info.terms) if lexical else None
        if expr:
            found_text = store.memory_search(expr, scopes, n)
            ev.lexical = dict(found_text)
            ev.lexical_complete = len(found_text) < n or exact
            ev.threads = {tid: (score, size) for tid, score, size in store.memory_thread_search(expr, scopes, n)}
        space = svc._vectors()
        if qvec is not None and space is not None:
            q = qvec[0]
            found = space.search(scopes, q, n)
            ev.dense = dict(found)
            if exact and len(found) >= total * 0.9:
                values = np.fromiter(ev.dense.values(), dtype=np.float64)
                ev.dense_stats = (float(values.mean()), float(values.std()))
            else:
                ev.dense_stats = svc._dense_stats(scopes, q)
        if info.time is not None and (info.time.start is not None or info.time.end is not None):
            start, end = window_micros(info.time, tuning.time_slack_days)
            ev.window = store.memory_window(scopes, start, end, n)
        wanted = list(dict.fromkeys([*ev.lexical, *(ev.dense if not exact else []), *ev.window]))
        if exact:  # every memory has a dense score: the best by it are candidates too
            best = sorted(ev.dense.items(), key=lambda kv: -kv[1])[: max(tuning.candidates, 3 * k)]
            wanted = list(dict.fromkeys([*wanted, *(rid for rid, _ in best)]))
        ev.rows = {row.rid: row for row in store.memories(wanted)}
        missing = [rid for rid in ev.rows if rid not in ev.dense]
        if qvec is not None and space is not None and missing:
            name = svc.embedder.name
            for rid, (embedder, blob) in store.memory_vectors_of(missing).items():
                if embedder == name:
                    ev.dense[rid] = float(np.frombuffer(blob, dtype=np.float32) @ qvec[0])
        return ev

    async def _resolve_anchor(self, info: QueryInfo, scopes: Sequence[str], now: datetime) -> QueryInfo:
        """Turn "before/after <something>" into a window bounded by when that something happened."""
        window = info.time
        assert window is not None and window.anchor is not None
        anchor_info = analyse(window.anchor, now)
        qvec = await self._svc.embed([window.anchor])
        evidence = await asyncio.to_thread(self._evidence, anchor_info, qvec, scopes, 3)
        ranked = rank(anchor_info, evidence, now=now, tuning=self._svc.tuning)
        dated = [evidence.rows[s.rid] for s in ranked[:3] if evidence.rows[s.rid].at is not None]
        if not dated:
            return QueryInfo(info.text, info.words, info.terms, None)
        when = from_micros(dated[0].at or 0)
        bounded = (
            TimeFilter(start=None, end=when, expression=window.expression, relation="before")
            if window.relation == "before"
            else TimeFilter(start=when, end=None, expression=window.expression, relation="after")
        )
        return QueryInfo(info.text, info.words, info.terms, bounded)

    def _hit(self, row: MemoryRow, s: Scored) -> Hit:
        record = _record_from_row(row)
        return Hit(record=record, score=round(s.score, 6), why=s.why, provenance=[record.id, *record.sources])

    async def _record_recall(self, query: str, k: int, scopes: Sequence[str], hits: Sequence[Hit]) -> uuid.UUID | None:
        meta = {
            "agent": self.agent,
            "scopes": list(scopes)[:64],
            "k": k,
            "returned": [str(h.record.id) for h in hits],
            "scores": [h.score for h in hits],
        }
        causes = [h.record.id for h in hits]
        touch = MemoryTouch(tuple(h.record.seq for h in hits), time.time_ns() // 1000)
        if self._tx is not None:
            event = self._tx.append("memory.recalled", actor=self.principal, content=query, meta=meta, causes=causes)
            if hits:
                self._tx.project(touch)
            return event
        if self._svc._store.read_only:
            return None
        async with self._svc._ledger.transaction() as tx:
            event = tx.append("memory.recalled", actor=self.principal, content=query, meta=meta, causes=causes)
            if hits:
                tx.project(touch)
        return event

    # -- reading and forgetting -------------------------------------------------------------

    async def get(self, memory: EventRef | MemoryRecord) -> MemoryRecord:
        """One memory by id (within the scopes this agent may read).

        Raises:
            MemoryNotFoundError: No such memory, or it was forgotten.
            ScopeDeniedError: It lives in a scope this agent may not read.
        """
        row = await self._row(memory)
        allowed = await self.scopes()
        if row.scope not in allowed:
            await self._deny("memory:read", row.scope)
        return _record_from_row(row)

    async def _row(self, memory: EventRef | MemoryRecord) -> MemoryRow:
        mid = memory.id if isinstance(memory, MemoryRecord) else as_uuid(memory)
        row: MemoryRow | None = await asyncio.to_thread(self._svc._store.memory_by_id, mid.bytes)
        if row is None:
            raise MemoryNotFoundError(f"no memory {str(mid)!r}: it was never stored, or it was forgotten")
        return row

    async def memories(
        self, *, scope: str | None = None, after: int = 0, limit: int = 100, kinds: Iterable[str] | None = None
    ) -> list[MemoryRecord]:
        """Memories in the order they were stored (default: this agent's private scope)."""
        resolved = await self._scope_for(scope, write=False)
        rows = await asyncio.to_thread(
            lambda: self._svc._store.memory_list([resolved], after=after, limit=limit, kinds=list(kinds or []) or None)
        )
        return [_record_from_row(r) for r in rows]

    async def forget(self, memory: EventRef | MemoryRecord | Fact, *, reason: str) -> Forgotten:
        """Forget a memory (or a fact) for good: its text is erased from the ledger, the full-text
        index, the vectors and every file of the habitat; ``memory.forgotten`` records who and why.

        Raises:
            MemoryNotFoundError: No such memory or fact.
            ScopeDeniedError: It lives in a scope this agent may not write.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequestError("forget needs a reason (a non-empty string)")
        mid = memory.id if isinstance(memory, MemoryRecord | Fact) else as_uuid(memory)
        svc = self._svc
        row = await asyncio.to_thread(svc._store.memory_by_id, mid.bytes)
        if row is not None:
            await self._scope_for(row.scope, write=True)
            if self._tx is not None:
                raise InvalidRequestError("forget erases at once and cannot run inside a handler's transaction")
            (done,) = await svc._forget_rows([row], reason=reason, cause="explicit", by=self.principal)
            return done
        facts = await asyncio.to_thread(svc._store.fact_by_id, mid.bytes)
        if not facts:
            raise MemoryNotFoundError(f"no memory or fact {str(mid)!r}: it was never stored, or it was forgotten")
        await self._scope_for(facts[0].scope, write=True)
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

    # -- consolidation ----------------------------------------------------------------------

    async def consolidate(
        self,
        *,
        kinds: Iterable[str] = ("message", "observation", "note"),
        min_records: int = 3,
        sentences: int = 3,
        summarize: Summarizer | None = None,
    ) -> list[MemoryRecord]:
        """Turn episodes into summary notes linked to their sources; return the notes made.

        Memories of ``kinds`` in this agent's private scope that no summary covers yet are
        grouped by thread (or, without a thread, by day of world time); each group of at
        least ``min_records`` becomes one ``summary`` memory whose sources are the
        episodes, so ``why`` on the note reaches them. Without ``summarize`` the note is
        extractive: the ``sentences`` episodes closest to the group's centroid (by their
        vectors, or by shared words when lexical-only), in their original order. With
        ``summarize`` (for example a model from the gateway), its text is used instead.
        Running it again consolidates only what is new.
        """
        if isinstance(min_records, bool) or not isinstance(min_records, int) or min_records < 1:
            raise InvalidRequestError(f"min_records must be a positive integer, not {min_records!r}")
        kind_list = list(kinds)
        store = self._svc._store

        def everything() -> list[MemoryRow]:
            out: list[MemoryRow] = []
            while page := store.memory_list([self.private], after=out[-1].rid if out else 0, limit=5000):
                out.extend(page)
            return out

        rows = await asyncio.to_thread(everything)
        covered: set[bytes] = set()
        for row in rows:
            if row.kind == "summary" and row.sources:
                covered.update(row.sources[i : i + 16] for i in range(0, len(row.sources), 16))
        groups: dict[str, list[MemoryRow]] = {}
        for row in rows:
            if row.kind in kind_list and row.id not in covered:
                key = row.thread or (from_micros(row.at).date().isoformat() if row.at is not None else "undated")
                groups.setdefault(key, []).append(row)
        made: list[MemoryRecord] = []
        for key, members in groups.items():
            if len(members) < min_records:
                continue
            if summarize is not None:
                text = await summarize([_record_from_row(r) for r in members])
            else:
                text = await asyncio.to_thread(self._extract, members, sentences)
            dated = [r.at for r in members if r.at is not None]
            made.append(
                await self.remember(
                    text,
                    kind="summary",
                    source=[uuid.UUID(bytes=r.id) for r in members],
                    at=from_micros(max(dated)) if dated else None,
                    meta={"consolidates": len(members), "group": key},
                    thread=members[0].thread,
                    importance=max(r.importance for r in members),
                )
            )
        return made

    def _extract(self, members: Sequence[MemoryRow], sentences: int) -> str:
        """The ``sentences`` members most central to the group, in their original order."""
        svc = self._svc
        vectors = svc._store.memory_vectors_of([r.rid for r in members])
        name = svc.embedder.name
        usable = [r for r in members if r.rid in vectors and vectors[r.rid][0] == name]
        if len(usable) == len(members):
            matrix = np.stack([np.frombuffer(vectors[r.rid][1], dtype=np.float32) for r in members])
            centrality = matrix @ matrix.mean(axis=0)
        else:  # lexical: how many of the group's frequent words each member shares
            bags = [set(analyse(r.text, _now()).terms) for r in members]
            counts: dict[str, int] = {}
            for bag in bags:
                for word in bag:
                    counts[word] = counts.get(word, 0) + 1
            centrality = np.array([sum(counts[w] - 1 for w in bag) / (1 + len(bag)) ** 0.5 for bag in bags])
        best = sorted(np.argsort(-centrality)[: max(1, sentences)].tolist())
        parts = [label(members[i].speaker, members[i].text) for i in best]
        return f"Summary of {len(members)} memories: " + " … ".join(parts)

    # -- facts ------------------------------------------------------------------------------

    async def assert_fact(
        self,
        subject: str,
        predicate: str,
        value: Any,
        *,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        source: Iterable[EventRef] = (),
        scope: str | None = None,
    ) -> Fact:
        """Assert that ``subject predicate value`` holds from ``valid_from`` to ``valid_to`` (world time).

        A current fact with the same subject and predicate, another value and an
        overlapping validity is superseded: it stays on record, no longer
        believed from now on; where it held before ``valid_from`` (or after
        ``valid_to``) a truncated copy keeps that part believed. Asserting what
        is already believed changes nothing and returns the existing fact.

        Raises:
            InvalidRequestError: A malformed argument (nothing is recorded).
            ScopeDeniedError: The agent may not write to ``scope``.
        """
        for name, part in (("subject", subject), ("predicate", predicate)):
            if not isinstance(part, str) or not 1 <= len(part.strip()) <= 1000:
                raise InvalidRequestError(f"a fact's {name} must be a non-empty string of at most 1000 characters")
        try:
            value_json = _json(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"a fact's value must be JSON: {exc}") from None
        vf, vt = _aware(valid_from, "valid_from"), _aware(valid_to, "valid_to")
        if vf is not None and vt is not None and vt <= vf:
            raise InvalidRequestError(f"valid_to ({vt.isoformat()}) must be after valid_from ({vf.isoformat()})")
        resolved = await self._scope_for(scope, write=True)
        svc = self._svc
        f_us = to_micros(vf) if vf else None
        t_us = to_micros(vt) if vt else None
        current = await asyncio.to_thread(
            lambda: svc._store.facts([resolved], subject=subject, predicate=predicate, include_superseded=False)
        )
        for row in current:
            if row.value == value_json and row.valid_from == f_us and row.valid_to == t_us:
                return _fact_from_rows(row, [])
        overlapping = [r for r in current if r.value != value_json and _overlaps(r.valid_from, r.valid_to, f_us, t_us)]
        sources = [as_uuid(s) for s in source]
        meta: dict[str, Any] = {"agent": self.agent, "scope": resolved}
        if f_us is not None:
            meta["valid_from"] = f_us
        if t_us is not None:
            meta["valid_to"] = t_us
        if overlapping:
            meta["supersedes"] = sorted({str(uuid.UUID(bytes=r.id)) for r in overlapping})
        content = {"subject": subject, "predicate": predicate, "value": json.loads(value_json)}
        causes = [*sources, *(uuid.UUID(bytes=r.id) for r in overlapping)]
        async with svc._ledger.transaction() as tx:
            event = tx.append("fact.asserted", actor=self.principal, content=content, meta=meta, causes=causes)
            ev = event.bytes
            tx.project(FactPut(ev, self.agent, resolved, subject, predicate, value_json, f_us, t_us))
            now_us = time.time_ns() // 1000
            for r in overlapping:
                tx.project(FactSupersede(r.fid, now_us, ev))
                if f_us is not None and (r.valid_from is None or r.valid_from < f_us):
                    tx.project(
                        FactPut(ev, r.agent, r.scope, r.subject, r.predicate, r.value, r.valid_from, f_us, r.fid)
                    )
                if t_us is not None and (r.valid_to is None or r.valid_to > t_us):
                    tx.project(FactPut(ev, r.agent, r.scope, r.subject, r.predicate, r.value, t_us, r.valid_to, r.fid))
        rows = await asyncio.to_thread(svc._store.fact_by_id, event.bytes)
        mine = [r for r in rows if r.copy_of is None]
        return _fact_from_rows(mine[0], sources)

    async def facts(
        self,
        subject: str | None = None,
        *,
        predicate: str | None = None,
        as_of: datetime | None = None,
        valid_at: datetime | None = None,
        scope: str | None = None,
        history: bool = False,
    ) -> list[Fact]:
        """What this agent believes (about ``subject``), oldest first.

        Args:
            as_of: System time: what was believed then (default: now). Superseded
                facts count if they were still believed at ``as_of``.
            valid_at: World time: only facts that hold at that moment.
            history: Every version ever recorded, superseded ones included.
            scope: Where to look (default: every scope this agent may read).
        """
        allowed = await self.scopes()
        scopes = sorted(allowed) if scope is None else [await self._scope_for(scope, write=False)]
        store = self._svc._store
        rows = await asyncio.to_thread(lambda: store.facts(scopes, subject=subject, predicate=predicate))
        as_of_at, valid_at_at = _aware(as_of, "as_of"), _aware(valid_at, "valid_at")
        as_of_us = to_micros(as_of_at) if as_of_at is not None else None
        valid_us = to_micros(valid_at_at) if valid_at_at is not None else None
        out: list[Fact] = []
        for r in rows:
            if not history:
                if as_of_us is None and r.superseded is not None:
                    continue
                if as_of_us is not None and (
                    r.recorded > as_of_us or (r.superseded is not None and r.superseded <= as_of_us)
                ):
                    continue
            if valid_us is not None and not _overlaps(r.valid_from, r.valid_to, valid_us, valid_us + 1):
                continue
            out.append(_fact_from_rows(r, []))
        return out


def _overlaps(a_from: int | None, a_to: int | None, b_from: int | None, b_to: int | None) -> bool:
    lo = max(a_from if a_from is not None else -(1 << 62), b_from if b_from is not None else -(1 << 62))
    hi = min(a_to if a_to is not None else 1 << 62, b_to if b_to is not None else 1 << 62)
    return lo < hi


def _passes(
    row: MemoryRow,
    since: datetime | None,
    until: datetime | None,
    kinds: set[str] | None,
    tags: set[str] | None,
    as_of: datetime | None,
) -> bool:
    if since is not None and (row.at is None or row.at < to_micros(since)):
        return False
    if until is not None and (row.at is None or row.at >= to_micros(until)):
        return False
    if kinds is not None and row.kind not in kinds:
        return False
    if tags and not tags <= set(json.loads(row.tags)):
        return False
    return not (as_of is not None and row.recorded > to_micros(as_of))


def _record_from_row(row: MemoryRow) -> MemoryRecord:
    src = row.sources or b""
    sources = [uuid.UUID(bytes=src[i : i + 16]) for i in range(0, len(src), 16)]
    return MemoryRecord(
        id=uuid.UUID(bytes=row.id),
        seq=row.rid,
        agent=row.agent,
        scope=row.scope,
        kind=row.kind,
        text=row.text,
        at=from_micros(row.at) if row.at is not None else None,
        recorded_at=from_micros(row.recorded),
        tags=json.loads(row.tags),
        attrs=json.loads(row.attrs),
        sources=sources,
        importance=row.importance,
        expires_at=from_micros(row.expires) if row.expires is not None else None,
        thread=row.thread,
        embedder=row.embedder,
    )


def _record_from_draft(
    agent: str, d: Mapping[str, Any], id_: uuid.UUID, embedder: str | None, seq: int, ts: int
) -> MemoryRecord:
    # built from checked input: no second validation on the write path
    return MemoryRecord.model_construct(
        id=id_,
        seq=seq,
        agent=agent,
        scope=d["scope"],
        kind=d["kind"],
        text=d["text"],
        at=d["at"],
        recorded_at=from_micros(ts),
        tags=d["tags"],
        attrs=d["meta"],
        sources=d["sources"],
        importance=d["importance"],
        expires_at=from_micros(d["expires"]) if d["expires"] is not None else None,
        thread=d["thread"],
        embedder=embedder,
    )


def _fact_from_rows(row: FactRow, sources: Sequence[uuid.UUID]) -> Fact:
    return Fact(
        id=uuid.UUID(bytes=row.id),
        agent=row.agent,
        scope=row.scope,
        subject=row.subject,
        predicate=row.predicate,
        value=json.loads(row.value),
        valid_from=from_micros(row.valid_from) if row.valid_from is not None else None,
        valid_to=from_micros(row.valid_to) if row.valid_to is not None else None,
        recorded_at=from_micros(row.recorded),
        superseded_at=from_micros(row.superseded) if row.superseded is not None else None,
        superseded_by=uuid.UUID(bytes=row.superseded_by) if row.superseded_by is not None else None,
        sources=list(sources),
    )
