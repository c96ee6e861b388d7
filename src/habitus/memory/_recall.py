"""Recall: gathering each signal's evidence, ranking, reranking, and recording what was returned."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from habitus.errors import (
    EmbedderError,
    InvalidRequestError,
)
from habitus.ledger._codec import from_micros
from habitus.memory._models import Hit, Recall
from habitus.memory._retrieval import (
    Evidence,
    QueryInfo,
    Scored,
    analyse,
    fts_expression,
    named_speaker,
    rank,
    window_micros,
)
from habitus.memory._timeparse import TimeFilter
from habitus.storage._memory import (
    MemoryRow,
    MemoryTouch,
    label,
)

if TYPE_CHECKING:
    pass
from habitus.memory._base import _MemoryView
from habitus.memory._shared import _MAX_K, _aware, _check_trust, _now, _passes, _record_from_row

if TYPE_CHECKING:
    from habitus.memory._service import Reranker


__all__ = ["_Recalling"]

_FOCUSED_CANDIDATES = 50
"""Candidates of a dense recall that has only the cosine to rank by (see ``_Recalling._gather``)."""


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve a future's outcome that nobody awaits (so asyncio does not log it as lost)."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _Gathered:
    """What a recall gathered before its query's vector was known (see ``_Recalling._gather``)."""

    evidence: Evidence
    scopes: Sequence[str]
    n: int  # candidates each signal contributes
    exact: bool  # few enough memories that the vector index scores every one
    prunable: bool = False  # window candidates are read only if their cosine may reach the top
    vectors: dict[int, np.ndarray[Any, Any]] = field(default_factory=dict)  # early candidates' stored vectors


class _Recalling(_MemoryView):
    """Recall for :class:`~habitus.memory.AgentMemory`."""

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
        trust: Literal["trusted", "untrusted"] | None = None,
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
            trust: Only ``trusted`` or only ``untrusted`` memories (default: both; each
                hit's ``record.trust`` says which it is).

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
        trust = _check_trust(trust)
        kind_set = set(kinds) if kinds is not None else None
        tag_set = set(tags) if tags is not None else None
        if scope is None:
            allowed = await self.scopes()
            if self.private not in allowed:
                await self._check("memory:read", self.private)
            scopes = sorted(allowed)
        else:
            wanted = [scope] if isinstance(scope, str) else list(scope)
            scopes = [await self._scope_for(name) for name in wanted]
        svc = self._svc
        info = analyse(query, now)
        if info.time is not None and info.time.anchor is not None:
            info = await self._resolve_anchor(info, scopes, now, mode)
        filtered = any(f is not None for f in (since, until, kind_set, tag_set, as_of, trust))
        # The query is embedded (one thread) while the evidence that needs no vector is gathered.
        embedding = asyncio.ensure_future(svc.embed([query])) if mode != "lexical" else None
        try:
            gathered = await asyncio.to_thread(
                self._gather, info, scopes, k, mode != "dense", filtered, embedding is not None
            )
        except BaseException:
            if embedding is not None:
                embedding.add_done_callback(_drop_outcome)  # the gathering's error is the one to raise
            raise
        qvec = await embedding if embedding is not None else None
        evidence = await asyncio.to_thread(self._dense_evidence, gathered, qvec, k)
        ranked = rank(info, evidence, now=now, tuning=svc.tuning)
        kept = [s for s in ranked if _passes(evidence.rows[s.rid], since, until, kind_set, tag_set, as_of, trust)]
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
        filtered: bool = False,
    ) -> Evidence:
        """Gather each signal's evidence for ``info`` over ``scopes`` (runs in a worker thread)."""
        return self._dense_evidence(self._gather(info, scopes, k, lexical, filtered, qvec is not None), qvec, k)

    def _gather(
        self, info: QueryInfo, scopes: Sequence[str], k: int, lexical: bool, filtered: bool, dense: bool
    ) -> _Gathered:
        """The evidence that needs no query vector (runs in a worker thread, while the query is embedded).

        Scope statistics, both full-text searches, the time window, the rows of those
        candidates and, over many memories, their stored vectors (for their cosine once the
        query's vector is known). When the window's candidates can differ only by their
        cosine, their rows wait: :meth:`_dense_evidence` reads those of the best few.

        Over many memories each signal contributes ``tuning.candidates``; a dense recall with
        nothing else to weigh (no time window, no speaker named, no filter that might drop
        candidates) has only the cosine to rank by, so it takes a few times ``k`` from the vector
        index instead: the same order, for a fraction of the index's work and of the rows read.
        """
        store = self._svc._store
        tuning = self._svc.tuning
        total, speakers = store.memory_scope_stats(scopes)
        ev = Evidence(total=total, speakers=speakers)
        exact = total <= tuning.exact_below
        if total == 0:
            return _Gathered(ev, scopes, 0, exact)
        speaker = named_speaker(info, speakers)
        focused = not (lexical or filtered or info.time is not None) and speaker is None
        n = total if exact else max(_FOCUSED_CANDIDATES if focused else tuning.candidates, 3 * k)
        expr = fts_expression(info.terms) if lexical else None
        if expr:
            ev.lexical = dict(store.memory_search(expr, scopes, n))
            ev.threads = {tid: (score, size) for tid, score, size in store.memory_thread_search(expr, scopes, n)}
        if info.time is not None and (info.time.start is not None or info.time.end is not None):
            start, end = window_micros(info.time, tuning.time_slack_days)
            ev.window = store.memory_window(scopes, start, end, n)
        # Window candidates differ from one another only by their cosine when nothing else
        # distinguishes them (no thread evidence, no speaker named, no recency bonus, no filter
        # that might drop some): then only the best few by cosine can reach the top, and only
        # their rows are read, once the query's vector is known.
        prunable = dense and not ev.threads and not filtered and not tuning.recency_half_life_days and speaker is None
        early = list(ev.lexical) if prunable else list(dict.fromkeys([*ev.lexical, *ev.window]))
        ev.rows = {row.rid: row for row in store.memories(early)} if early else {}
        # Over many memories the vector index returns only its best candidates: the others'
        # cosines come from their stored vectors, read now rather than after the embedding.
        scored = list(dict.fromkeys([*ev.rows, *(ev.window if prunable else ())]))
        vectors = self._stored_vectors(scopes, scored) if dense and not exact and scored else {}
        return _Gathered(ev, scopes, n, exact, prunable, vectors)

    def _stored_vectors(self, scopes: Sequence[str], rids: Sequence[int]) -> dict[int, np.ndarray[Any, Any]]:
        """``rid -> vector`` (of the current embedder) for those of ``rids`` that have one: from the
        vector indexes in memory where they hold them, else from the store."""
        svc = self._svc
        space = svc._vectors()
        found = space.vectors_of(scopes, rids) if space is not None else {}
        rest = [rid for rid in rids if rid not in found]
        if rest:
            name = svc.embedder.name
            for rid, (embedder, blob) in svc._store.memory_vectors_of(rest).items():
                if embedder == name:
                    found[rid] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _dense_evidence(self, got: _Gathered, qvec: np.ndarray[Any, Any] | None, k: int) -> Evidence:
        """Complete ``got`` with the vector index's candidates for ``qvec`` and every candidate's row and cosine."""
        ev, n, exact = got.evidence, got.n, got.exact
        if ev.total == 0:
            return ev
        svc = self._svc
        store = svc._store
        space = svc._vectors()
        if qvec is None or space is None:  # no cosines: every candidate of the other signals counts
            late = [rid for rid in ev.window if rid not in ev.rows]
            if late:
                ev.rows.update((row.rid, row) for row in store.memories(late))
            return ev
        q = qvec[0]
        found = space.search(got.scopes, q, n)
        ev.dense = dict(found)
        if exact and len(found) >= ev.total * 0.9:
            values = np.fromiter(ev.dense.values(), dtype=np.float64)
            ev.dense_stats = (float(values.mean()), float(values.std()))
        else:
            ev.dense_stats = svc._dense_stats(got.scopes, q)
        if exact:  # every memory has a dense score: the best by it are candidates
            best = sorted(ev.dense.items(), key=lambda kv: -kv[1])[: max(svc.tuning.candidates, 3 * k)]
            wanted = [rid for rid, _ in best]
        else:
            wanted = list(ev.dense)
        vectors = got.vectors

        def cosine(rid: int) -> float | None:
            if rid in ev.dense:
                return ev.dense[rid]
            stored = vectors.get(rid)
            if stored is None:
                return None
            value = ev.dense[rid] = float(stored @ q)
            return value

        if got.prunable:
            taken = {*ev.rows, *wanted}
            extra = [rid for rid in ev.window if rid not in taken]
            known = {rid: value for rid in extra if (value := cosine(rid)) is not None}
            keep = max(3 * k, svc.tuning.rerank_depth)
            wanted += sorted(known, key=lambda rid: -known[rid])[:keep]
            wanted += [rid for rid in extra if rid not in known]  # no cosine: cannot be ranked out
        late = list(dict.fromkeys(rid for rid in wanted if rid not in ev.rows))
        if late:
            ev.rows.update((row.rid, row) for row in store.memories(late))
        missing = [rid for rid in ev.rows if rid not in ev.dense and rid not in vectors]
        if missing:
            vectors.update(self._stored_vectors(got.scopes, missing))
        for rid in ev.rows:
            cosine(rid)
        return ev

    async def _resolve_anchor(
        self, info: QueryInfo, scopes: Sequence[str], now: datetime, mode: Literal["hybrid", "dense", "lexical"]
    ) -> QueryInfo:
        """Turn "before/after <something>" into a window bounded by when that something happened
        (found with the signals of ``mode``: a dense recall runs no full-text search, which over a
        million memories costs 50-150 ms, and a lexical one embeds nothing)."""
        window = info.time
        assert window is not None and window.anchor is not None
        anchor_info = analyse(window.anchor, now)
        qvec = await self._svc.embed([window.anchor]) if mode != "lexical" else None
        evidence = await asyncio.to_thread(self._evidence, anchor_info, qvec, scopes, 3, mode != "dense", False)
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
