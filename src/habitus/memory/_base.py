"""The core of :class:`~habitus.memory.AgentMemory`: the agent it acts as, its scopes, and remembering."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from habitus.errors import (
    InvalidRequestError,
    ScopeDeniedError,
)
from habitus.ledger._codec import to_micros
from habitus.ledger._models import Event
from habitus.ledger._rows import CommittedEvents, EventRef, as_uuid
from habitus.ledger._transaction import Transaction
from habitus.memory._models import MemoryRecord
from habitus.memory._shared import _EMBED_BATCH, _MAX_TEXT, _aware, _check_scope, _json, _now, _record_from_draft
from habitus.storage._memory import (
    MemoryPut,
    label,
)

if TYPE_CHECKING:
    from habitus.memory._service import MemoryService


__all__ = ["_MemoryView"]


class _MemoryView:
    """The core of an agent's view of memory: who it acts as, its scopes, and remembering.

    Every method acts as the agent (``agent:<id>``) and is recorded in the
    ledger. By default memories are private to the agent; ``scope`` puts them
    in a group (``group:<name>``) or ``public``, and recall searches every
    scope the agent may read unless told otherwise.
    """

    def __init__(
        self,
        service: MemoryService,
        agent: str,
        tx: Transaction | None = None,
        *,
        principal: str | None = None,
        on_behalf_of: str | None = None,
        tainted: bool = False,
    ) -> None:
        self._svc = service
        self.agent = agent
        self._tx = tx
        self._principal = principal or f"agent:{agent}"
        self._on_behalf_of = on_behalf_of
        self._tainted = tainted  # handling untrusted content: what it remembers is untrusted too

    @property
    def principal(self) -> str:
        """Who acts: ``agent:<id>`` for an agent's own memory, or the principal it was opened for."""
        return self._principal

    @property
    def private(self) -> str:
        """This agent's private scope, ``agent:<id>``."""
        return f"agent:{self.agent}"

    # -- scopes -----------------------------------------------------------------------------

    async def scopes(self) -> dict[str, bool]:
        """Every scope the principal may read here, with whether it may also write there.

        Its own private scope and ``public`` when allowed, every scope named by a
        capability it holds, and the stored scopes a pattern capability matches.
        """
        await self._svc._agents.get(self.agent)
        control = self._svc._control
        candidates = {self.private, "public"}
        patterns = False
        for cap in control.capabilities(self.principal):
            if cap.action.startswith(("memory:", "*")) and cap.resource.startswith("scope:"):
                if "*" in cap.resource:
                    patterns = True
                else:
                    candidates.add(self.private if cap.resource == "scope:self" else cap.resource[6:])
        if patterns:
            candidates.update(await asyncio.to_thread(self._svc._store.memory_scope_names))
        found: dict[str, bool] = {}
        for scope in sorted(candidates):
            if control.decide(self.principal, "memory:read", "scope:" + scope, on_behalf_of=self._on_behalf_of).allowed:
                write = control.decide(
                    self.principal, "memory:write", "scope:" + scope, on_behalf_of=self._on_behalf_of
                )
                found[scope] = write.allowed
        return found

    async def _scope_for(self, scope: str | None, *, write: bool = False, erase: bool = False) -> str:
        """Resolve ``scope`` (default: the private one) and check the principal may use it so."""
        resolved = self.private if scope in (None, "private", "self") else _check_scope(str(scope))
        await self._check(("memory:erase" if erase else "memory:write") if write or erase else "memory:read", resolved)
        return resolved

    async def _check(self, action: str, scope: str) -> None:
        control = self._svc._control
        resource = "scope:" + scope
        decision = control.decide(self.principal, action, resource, on_behalf_of=self._on_behalf_of)
        if not decision.allowed:
            await self._deny(action, scope, decision.reason)
        if decision.approval:  # an approval rule covers it (erasing memories, say): ask a human and wait
            await control.approved(
                self.principal, action, resource, on_behalf_of=self._on_behalf_of, error=ScopeDeniedError
            )

    async def _deny(self, action: str, scope: str, reason: str | None = None) -> None:
        why = reason or f"no capability lets {self.principal} {action} scope:{scope}"
        await self._svc._control.deny(self.principal, action, "scope:" + scope, why, error=ScopeDeniedError)

    # -- trust ------------------------------------------------------------------------------

    def _acting_untrusted(self) -> bool:
        """True if whatever this view writes is untrusted: it handles untrusted content, or acts
        as (or for) a principal the control layer labels untrusted."""
        trust_of = self._svc._control.trust_of
        return (
            self._tainted
            or trust_of(self.principal) == "untrusted"
            or (self._on_behalf_of is not None and trust_of(self._on_behalf_of) == "untrusted")
        )

    async def _untrusted_sources(self, sources: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``sources`` that carry untrusted content, read in one batch.

        An event is untrusted when its meta says so (a message from outside, or sent while
        handling one; a memory or fact labelled untrusted), or when its actor, or the
        principal it acted for, is labelled untrusted. Events staged in the handler's own
        transaction are not stored yet and so not found here; they are this agent's own,
        made while handling the message this view is tainted by, if it is untrusted.
        """
        wanted = list({s.bytes for s in sources})
        if not wanted:
            return set()
        rows = await asyncio.to_thread(self._svc._store.rows_by_id, wanted)
        trust_of = self._svc._control.trust_of
        found: set[uuid.UUID] = set()
        for row in rows:
            actor, meta_text = row[4], row[7]
            meta: dict[str, Any] = json.loads(meta_text) if meta_text else {}
            behalf = meta.get("on_behalf_of")
            if (
                meta.get("trust") == "untrusted"
                or trust_of(actor) == "untrusted"
                or (isinstance(behalf, str) and trust_of(behalf) == "untrusted")
            ):
                found.add(uuid.UUID(bytes=row[1]))
        return found

    async def _trust_label(
        self, requested: str | None, sources: Sequence[uuid.UUID]
    ) -> Literal["trusted", "untrusted"]:
        """The trust label of content written here with ``sources``; ``requested`` may lower it, never raise it."""
        if requested == "untrusted" or self._acting_untrusted():
            return "untrusted"
        return "untrusted" if await self._untrusted_sources(sources) else "trusted"

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
        trust: Literal["trusted", "untrusted"] | None = None,
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
            trust: ``untrusted`` labels it untrusted. It is untrusted anyway when the agent acts
                as (or for) an untrusted principal, handles an untrusted message, or any of its
                ``source`` events is untrusted; ``trusted`` cannot lift that label (it is kept,
                silently), so content from outside never launders into trusted memory.

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
                    "trust": trust,
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
        checked: set[str] = set()
        for d in drafts:
            scope = self.private if d["scope"] in (None, "private", "self") else _check_scope(str(d["scope"]))
            if scope not in checked:
                await self._check("memory:write", scope)
                checked.add(scope)
            d["scope"] = scope
        await self._label_drafts(drafts)
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

    async def _label_drafts(self, drafts: Sequence[dict[str, Any]]) -> None:
        """Set each draft's ``trust``, reading the sources of all of them in one batch."""
        acting = self._acting_untrusted()
        for d in drafts:
            d["trust"] = "untrusted" if acting or d["trust"] == "untrusted" else "trusted"
        pending = [s for d in drafts if d["trust"] == "trusted" for s in d["sources"]]
        if pending:
            untrusted = await self._untrusted_sources(pending)
            for d in drafts:
                if untrusted.intersection(d["sources"]):
                    d["trust"] = "untrusted"

    def _draft(self, item: Mapping[str, Any], index: int) -> dict[str, Any]:
        where = f"memory {index}" if index else "the memory"
        unknown = set(item) - {
            "text", "at", "kind", "tags", "meta", "source", "scope", "importance", "ttl", "thread", "trust",
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
        trust = item.get("trust")
        if trust not in (None, "trusted", "untrusted"):
            raise InvalidRequestError(f"{where}: trust must be 'trusted' or 'untrusted', not {trust!r}")
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
            "trust": trust,
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
            untrusted = d["trust"] == "untrusted"
            if untrusted:
                meta["trust"] = "untrusted"
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
                    trust="untrusted" if untrusted else None,
                )
            )
            ids.append(event)
        return ids
