"""Turning drafts into a sealed batch: validation, cause checks, ids, digests, leaves, tree.

Everything here runs on the event loop without awaiting between handing out
seqs and extending the Merkle frontier, so batches are sealed in the order the
writer will commit them (see :mod:`habitus.ledger._writer`).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from habitus._ids import new_ids, random_bytes
from habitus.errors import (
    ContentTooLargeError,
    InvalidEventError,
    InvalidMetaError,
    UnknownCauseError,
)
from habitus.ledger._codec import content_digest, encode_content, encode_meta, from_micros, leaf_hash, to_micros
from habitus.ledger._context import current_context
from habitus.ledger._kinds import get_kind
from habitus.ledger._merkle import Frontier
from habitus.ledger._models import Draft
from habitus.ledger._proofs import rebuild_frontier
from habitus.ledger._rows import CommittedEvents, RawDraft
from habitus.ledger._signing import Signer
from habitus.ledger._writer import Batch, CommitProcess, Sequencer
from habitus.storage._abstract import CheckpointRow, LedgerStore, Row
from habitus.storage._projections import Op

__all__ = ["LedgerLimits", "Preparer", "load_head"]

_ACTOR_RE = re.compile(r"^(system|(agent|human|source|service):[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127})$")
_THREAD_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_RECENT_MAX = 200_000


class LedgerLimits:
    """Limits and write policy applied to every append (from the habitat's settings).

    ``inline_commits`` lets a lone small append commit on the event loop when the
    writer is idle; it is off when every commit waits for an fsync.
    ``commit_process`` says when commits move to a writer process (see ``Writer``).
    """

    __slots__ = ("checkpoint_every", "commit_process", "inline_commits", "max_content_bytes", "max_meta_bytes")

    def __init__(
        self,
        *,
        max_content_bytes: int,
        max_meta_bytes: int,
        checkpoint_every: int,
        inline_commits: bool = True,
        commit_process: CommitProcess = "never",
    ) -> None:
        self.max_content_bytes = max_content_bytes
        self.max_meta_bytes = max_meta_bytes
        self.checkpoint_every = checkpoint_every
        self.inline_commits = inline_commits
        self.commit_process = commit_process


_VALID_ACTORS: set[str] = set()
_VALID_THREADS: set[str] = set()
# Strings already checked (bounded), so hot appenders skip the regex.


def _valid(pattern: re.Pattern[str], text: str, seen: set[str]) -> bool:
    if not pattern.match(text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(seen) < 100_000:
        seen.add(text)
    return True


_ENCODED: dict[Any, Any] = {}
"""Canonical meta text of flat metas already checked: ``{"to": "agent:b", "type": "hop"}`` recurs on
every message, and validating and encoding it again was a tenth of a delivery's cost.

A tree rather than a dict keyed by tuples, so that a hit allocates nothing (building the key
tuple was itself a measurable share of a delivery): kind, then each name and value in order,
then ``None`` holds ``(text, size)``. Values are short strings, filed as themselves, or ints
and bools, filed as ``(type, value)`` since ``True == 1``; any other meta is checked every time."""
_ENCODED_MAX = 65_536
_encoded_count = [0]


def _value_key(value: Any) -> Any:
    kind_of = type(value)  # not isinstance: True and 1 must not share a key
    if kind_of is str:
        return value if len(value) <= 256 else None
    if kind_of is int or kind_of is bool:
        return (kind_of, value)
    return None


def _cached_meta(kind: str, meta: dict[Any, Any]) -> tuple[str, int] | None:
    node = _ENCODED.get(kind)
    for name, value in meta.items():
        if node is None or type(name) is not str:
            return None
        node = node.get(name)
        if node is None:
            return None
        key = value if type(value) is str else _value_key(value)
        node = node.get(key) if key is not None else None
    return node.get(None) if node is not None else None


def _remember_meta(kind: str, meta: dict[Any, Any], encoded: tuple[str, int]) -> None:
    if len(meta) > 8 or _encoded_count[0] >= _ENCODED_MAX:
        return
    path = []
    for name, value in meta.items():
        key = _value_key(value)
        if key is None or type(name) is not str:
            return
        path.append((name, key))
    node = _ENCODED.setdefault(kind, {})
    for name, key in path:
        node = node.setdefault(name, {}).setdefault(key, {})
    node[None] = encoded
    _encoded_count[0] += 1


def load_head(store: LedgerStore) -> tuple[int, int, Frontier, int]:
    """``(size, last ts, frontier, last checkpoint size)`` of a store; a reader gets an empty frontier."""
    size = store.size()
    last_ts = store.rows_by_seq([size])[0][2] if size else 0
    # A reader needs no frontier; only a writer extends the tree.
    frontier = Frontier() if store.read_only else rebuild_frontier(store, size)
    checkpoints = store.checkpoints()
    return size, last_ts, frontier, checkpoints[-1][0] if checkpoints else 0


class Preparer:
    """Validates drafts and seals them into batches for the writer."""

    def __init__(self, store: LedgerStore, *, signer: Signer | None, limits: LedgerLimits) -> None:
        self._store = store
        self._signer = signer
        self._limits = limits
        self._recent: dict[bytes, int] = {}
        self.sequencer = Sequencer(0, 0, Frontier(), 0)

    def check(self, index: int, draft: Draft | RawDraft) -> tuple[Any, ...]:
        where = f"event {index}" if index else "the event"
        spec = get_kind(draft.kind)
        actor = draft.actor
        if not (isinstance(actor, str) and (actor in _VALID_ACTORS or _valid(_ACTOR_RE, actor, _VALID_ACTORS))):
            raise InvalidEventError(
                f"{where}: actor {draft.actor!r} is not a principal; use 'agent:<id>', 'human:<id>', "
                "'source:<id>', 'service:<id>' or 'system'"
            )
        if not isinstance(draft.meta, dict):
            raise InvalidMetaError(f"{where}: meta must be a JSON object (a dict), not {type(draft.meta).__name__}")
        cached = _cached_meta(draft.kind, draft.meta)
        if cached is not None:
            meta, meta_size = cached
        else:
            try:
                meta = encode_meta(spec.validate_meta(draft.meta))
                meta_size = len(meta) if meta.isascii() else len(meta.encode("utf-8"))
            except (TypeError, ValueError) as exc:
                raise InvalidMetaError(f"{where}: meta cannot be stored as JSON: {exc}") from None
            _remember_meta(draft.kind, draft.meta, (meta, meta_size))
        if meta_size > self._limits.max_meta_bytes:
            raise ContentTooLargeError(
                f"{where}: meta is {meta_size} bytes, over the limit of {self._limits.max_meta_bytes}"
            )
        try:
            encoded = encode_content(draft.content)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(f"{where}: {exc}") from None
        if encoded is None and spec.content == "required":
            raise InvalidEventError(f"{where}: kind {draft.kind!r} requires content")
        if encoded is not None and spec.content == "none":
            raise InvalidEventError(f"{where}: kind {draft.kind!r} takes no content")
        if encoded is not None and len(encoded[1]) > self._limits.max_content_bytes:
            raise ContentTooLargeError(
                f"{where}: content is {len(encoded[1])} bytes, over the limit of {self._limits.max_content_bytes} "
                "(set max_content_bytes in habitus.toml to change it)"
            )
        context = current_context()
        thread = draft.thread if draft.thread is not None else context.thread
        if thread is not None and not (
            isinstance(thread, str) and (thread in _VALID_THREADS or _valid(_THREAD_RE, thread, _VALID_THREADS))
        ):
            raise InvalidEventError(f"{where}: thread {thread!r} must be 1-256 printable characters")
        at = None
        if draft.at is not None:
            if not isinstance(draft.at, datetime):
                raise InvalidEventError(f"{where}: world time must be a datetime, not {draft.at!r}")
            if draft.at.tzinfo is None:
                raise InvalidEventError(f"{where}: world time {draft.at!r} must be timezone-aware")
            at = to_micros(draft.at)
        causes = draft.causes
        if not causes:
            causes = context.causes  # caused_by keeps these free of duplicates
        elif context.causes:
            causes = tuple(dict.fromkeys((*context.causes, *causes)))
        elif len(causes) > 1 and len(set(causes)) != len(causes):
            causes = tuple(dict.fromkeys(causes))
        if len(causes) > 1000:
            raise InvalidEventError(f"{where}: {len(causes)} causes is over the limit of 1000")
        return (draft, spec, meta, encoded, thread, at, causes)

    def known_causes(self, checked: list[tuple[Any, ...]], staged: Collection[bytes] = ()) -> dict[bytes, int] | None:
        """Map every cause to its seq from memory, or return None if one must be looked up in the store."""
        known: dict[bytes, int] = {}
        recent = self._recent
        for item in checked:
            for cause in item[6]:
                raw = cause.bytes
                seq = recent.get(raw)
                if seq is not None:
                    known[raw] = seq
                elif raw not in staged:
                    return None
        return known

    async def check_causes(self, checked: list[tuple[Any, ...]], staged: Collection[bytes] = ()) -> dict[bytes, int]:
        """Map every cause to its seq, or raise :class:`UnknownCauseError`.

        ``staged`` are ids of earlier events of the same transaction: they are
        not in the store yet, and :meth:`seal` gives them their seqs.
        """
        wanted = {c.bytes for item in checked for c in item[6]}.difference(staged)
        known = {c: s for c in wanted if (s := self._recent.get(c)) is not None}
        missing = [c for c in wanted if c not in known]
        if missing:
            found = await asyncio.to_thread(self._store.seqs_of_ids, missing)
            for id_, seq in found.items():
                self.remember(id_, seq)
                known[id_] = seq
            absent = [c for c in missing if c not in found]
            if absent:
                names = ", ".join(repr(str(uuid.UUID(bytes=c))) for c in absent[:5])
                raise UnknownCauseError(f"cause {names} is not an event in this ledger; nothing was written")
        return known

    def remember(self, id_: bytes, seq: int) -> None:
        if len(self._recent) >= _RECENT_MAX:
            self._recent.clear()
        self._recent[id_] = seq

    def remember_rows(self, rows: Sequence[Row]) -> None:
        """Remember the seqs of committed rows' ids (``remember`` for each, in one step)."""
        if len(self._recent) + len(rows) > _RECENT_MAX:
            self._recent.clear()
        self._recent.update({row[1]: row[0] for row in rows})

    def seal(
        self,
        checked: list[tuple[Any, ...]],
        known: dict[bytes, int],
        *,
        erase: list[int] | None = None,
        checkpoint: bool = False,
        ids: list[bytes] | None = None,
        ops: list[Op] | None = None,
    ) -> tuple[Batch, CommittedEvents]:
        """Give prepared drafts their ids, seqs, times, leaves and Merkle nodes.

        Runs without awaiting, so batches are sealed in the order they will be
        committed; the sequencer's lock only guards against a concurrent reset
        by the writer after a failed write.
        """
        n = len(checked)
        # Where each id of this batch is, for causes staged in it (a transaction's events may cite earlier
        # ones): built on the first cause not committed already, which most batches never have.
        position: dict[bytes, int] | None = None
        if ids is None:
            ids = new_ids(n)
        salts = random_bytes(16 * n)
        rows: list[Row] = []
        edges: list[tuple[int, int]] = []
        nodes: list[tuple[int, int, bytes]] = []
        signed: CheckpointRow | None = None
        seqr = self.sequencer
        with seqr.lock:
            frontier = seqr.frontier
            if frontier is None:  # a write failed: start again from what is committed (read back, not assumed)
                size, _, frontier, seqr.last_checkpoint = load_head(self._store)
                seqr.frontier = frontier
                seqr.committed, seqr.next_seq = size, size + 1
            first = seqr.next_seq
            seqr.next_seq = first + n
            ts = max(time.time_ns() // 1000, seqr.last_ts)
            seqr.last_ts = ts
            generation = seqr.generation
            append = frontier.append
            for i, (draft, _spec, meta, encoded, thread, at, causes) in enumerate(checked):
                seq = first + i
                id_ = ids[i]
                if causes:
                    raws = [c.bytes for c in causes]  # (a Python property: read once)
                    causes_b = raws[0] if len(raws) == 1 else b"".join(raws)
                    for raw in raws:
                        cause_seq = known.get(raw)
                        if cause_seq is None:
                            if position is None:
                                position = {id_: j for j, id_ in enumerate(ids)}
                            cause_seq = first + position[raw]
                        edges.append((cause_seq, seq))
                else:
                    causes_b = None
                if encoded is None:
                    ctype = digest = salt = body = None
                else:
                    ctype, body = encoded
                    salt = salts[16 * i : 16 * i + 16]
                    digest = content_digest(salt, ctype, body)
                leaf = leaf_hash(id_, ts, at, draft.actor, draft.kind, thread, meta, causes_b, ctype, digest)
                append(leaf, nodes)
                rows.append(
                    (seq, id_, ts, at, draft.actor, draft.kind, thread, meta, causes_b, ctype, digest, leaf, salt, body)
                )
            size = frontier.size
            if size and (checkpoint or size - seqr.last_checkpoint >= self._limits.checkpoint_every):
                assert self._signer is not None
                root = frontier.root()
                signed = (size, root, ts, self._signer.sign(size, root, from_micros(ts)))
                seqr.last_checkpoint = size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Erasures, and checkpoints asked for by name, also rewrite the WAL away (see erase()).
        batch = Batch(
            generation, rows, edges, nodes, future, signed, erase or [], scrub=bool(erase) or checkpoint, ops=ops or []
        )
        return batch, CommittedEvents(rows)
