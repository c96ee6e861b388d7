"""Consolidating episodes into summaries, and bi-temporal facts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from habitus.errors import (
    InvalidRequestError,
)
from habitus.ledger._codec import from_micros, to_micros
from habitus.ledger._rows import EventRef, as_uuid
from habitus.memory._models import Fact, MemoryRecord
from habitus.memory._retrieval import analyse
from habitus.storage._memory import (
    FactPut,
    FactSupersede,
    MemoryRow,
    label,
)

if TYPE_CHECKING:
    pass
from habitus.memory._base import _MemoryView
from habitus.memory._shared import _aware, _check_trust, _fact_from_rows, _json, _now, _overlaps, _record_from_row

if TYPE_CHECKING:
    from habitus.memory._service import Summarizer


__all__ = ["_Believing"]


class _Believing(_MemoryView):
    """Consolidation and facts for :class:`~habitus.memory.AgentMemory`."""

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
        Running it again consolidates only what is new. A note made from any untrusted
        episode is untrusted too (its sources carry the label).
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
        trust: Literal["trusted", "untrusted"] | None = None,
    ) -> Fact:
        """Assert that ``subject predicate value`` holds from ``valid_from`` to ``valid_to`` (world time).

        A current fact with the same subject and predicate, another value and an
        overlapping validity is superseded: it stays on record, no longer
        believed from now on; where it held before ``valid_from`` (or after
        ``valid_to``) a truncated copy keeps that part believed. Asserting what
        is already believed changes nothing and returns the existing fact.

        Its ``trust`` label follows the rules of :meth:`remember`: untrusted when the agent
        acts as (or for) an untrusted principal, handles an untrusted message, or a source
        is untrusted, or when ``trust="untrusted"``; ``trusted`` cannot lift it.

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
        if trust not in (None, "trusted", "untrusted"):
            raise InvalidRequestError(f"trust must be 'trusted' or 'untrusted', not {trust!r}")
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
        labelled = await self._trust_label(trust, sources)
        own_trust = "untrusted" if labelled == "untrusted" else None
        meta: dict[str, Any] = {"agent": self.agent, "scope": resolved}
        if own_trust is not None:
            meta["trust"] = own_trust
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
            tx.project(FactPut(ev, self.agent, resolved, subject, predicate, value_json, f_us, t_us, trust=own_trust))
            now_us = time.time_ns() // 1000
            for r in overlapping:
                tx.project(FactSupersede(r.fid, now_us, ev))
                if f_us is not None and (r.valid_from is None or r.valid_from < f_us):
                    tx.project(
                        FactPut(
                            ev, r.agent, r.scope, r.subject, r.predicate, r.value, r.valid_from, f_us, r.fid, r.trust
                        )
                    )
                if t_us is not None and (r.valid_to is None or r.valid_to > t_us):
                    tx.project(
                        FactPut(ev, r.agent, r.scope, r.subject, r.predicate, r.value, t_us, r.valid_to, r.fid, r.trust)
                    )
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
        trust: Literal["trusted", "untrusted"] | None = None,
    ) -> list[Fact]:
        """What this agent believes (about ``subject``), oldest first.

        Args:
            as_of: System time: what was believed then (default: now). Superseded
                facts count if they were still believed at ``as_of``.
            valid_at: World time: only facts that hold at that moment.
            history: Every version ever recorded, superseded ones included.
            scope: Where to look (default: every scope this agent may read).
            trust: Only ``trusted`` or only ``untrusted`` facts (default: both).
        """
        trust = _check_trust(trust)
        if scope is None:
            allowed = await self.scopes()
            if self.private not in allowed:
                await self._check("memory:read", self.private)
            scopes = sorted(allowed)
        else:
            scopes = [await self._scope_for(scope)]
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
            if trust is not None and (r.trust or "trusted") != trust:
                continue
            out.append(_fact_from_rows(r, []))
        return out
