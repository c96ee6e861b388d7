"""The memory projections: memories, their full-text and vector rows, facts and scope grants.

Like the agent projections (:mod:`habitus.storage._projections`), these are
changed only by ops committed in the same transaction as the events they
come from, so the ledger and memory never disagree. A memory's key (``rid``)
is the seq of its ``memory.remembered`` event, known once the transaction's
seqs are. Facts get a key of their own, because superseding a fact may add a
truncated copy of it (the old value, valid until the new one's start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FactDelete",
    "FactPut",
    "FactRow",
    "FactSupersede",
    "MemoryDelete",
    "MemoryOp",
    "MemoryPut",
    "MemoryRow",
    "MemoryStore",
    "MemoryTouch",
    "VectorPut",
    "label",
]


def label(speaker: str | None, text: str) -> str:
    """How a memory reads in the full-text rows and to the embedder: ``"Speaker: text"``."""
    return f"{speaker}: {text}" if speaker else text


@dataclass(frozen=True, slots=True)
class MemoryPut:
    """Store a memory (its ``memory.remembered`` event is ``event``), its text and its vector.

    ``trust`` is ``"untrusted"`` for content from an untrusted source, ``None`` otherwise.
    """

    event: bytes
    agent: str
    scope: str
    kind: str
    text: str
    speaker: str | None
    at: int | None
    tags: str
    attrs: str
    importance: float
    expires: int | None
    thread: str | None
    sources: bytes | None
    embedder: str | None
    vector: bytes | None
    trust: str | None = None  # "untrusted", or None: trusted


@dataclass(frozen=True, slots=True)
class MemoryDelete:
    """Remove a memory with its text and vector (it was forgotten)."""

    rid: int
    scope: str


@dataclass(frozen=True, slots=True)
class MemoryTouch:
    """Record that memories were returned by a recall at ``ts`` (feeds decay)."""

    rids: tuple[int, ...]
    ts: int


@dataclass(frozen=True, slots=True)
class VectorPut:
    """Replace a memory's vector (re-embedding with another model)."""

    rid: int
    scope: str
    embedder: str | None
    vector: bytes | None


@dataclass(frozen=True, slots=True)
class FactPut:
    """Store a fact (its ``fact.asserted`` event is ``event``; ``copy_of`` for a truncated copy)."""

    event: bytes
    agent: str
    scope: str
    subject: str
    predicate: str
    value: str
    valid_from: int | None
    valid_to: int | None
    copy_of: int | None = None
    trust: str | None = None  # "untrusted", or None: trusted


@dataclass(frozen=True, slots=True)
class FactSupersede:
    """Mark a fact as no longer believed from ``at`` (system time), replaced by ``by``."""

    fid: int
    at: int
    by: bytes


@dataclass(frozen=True, slots=True)
class FactDelete:
    """Remove a fact (it was forgotten)."""

    fid: int


MemoryOp = MemoryPut | MemoryDelete | MemoryTouch | VectorPut | FactPut | FactSupersede | FactDelete
"""Every memory projection change a transaction can carry."""

MEMORY_OPS = (
    MemoryPut,
    MemoryDelete,
    MemoryTouch,
    VectorPut,
    FactPut,
    FactSupersede,
    FactDelete,
)


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """A stored memory (``id`` is its ``memory.remembered`` event's id, ``rid`` that event's seq)."""

    rid: int
    id: bytes
    agent: str
    scope: str
    kind: str
    text: str
    speaker: str | None
    at: int | None
    recorded: int
    tags: str
    attrs: str
    importance: float
    expires: int | None
    thread: str | None
    tid: int | None
    sources: bytes | None
    embedder: str | None
    recalled: int | None
    recalls: int
    trust: str | None  # "untrusted", or None: trusted


@dataclass(frozen=True, slots=True)
class FactRow:
    """A stored fact, current or superseded (``seq``/``id``: the ``fact.asserted`` event that made it)."""

    fid: int
    seq: int
    id: bytes
    agent: str
    scope: str
    subject: str
    predicate: str
    value: str
    valid_from: int | None
    valid_to: int | None
    recorded: int
    superseded: int | None
    superseded_by: bytes | None
    copy_of: int | None
    trust: str | None  # "untrusted", or None: trusted


class MemoryStore(Protocol):
    """Reads of the memory projections (writes go through ``WriteBatch.ops``)."""

    def memories(self, rids: Sequence[int]) -> list[MemoryRow]:
        """The memories with these keys that still exist, in no particular order."""
        ...

    def memory_by_id(self, id_: bytes) -> MemoryRow | None:
        """One memory by its event id."""
        ...

    def memory_search(self, match: str, scopes: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """Full-text search of memories in their thread context: ``(rid, bm25 score)`` best first
        (higher is better) within ``scopes``."""
        ...

    def memory_thread_search(self, match: str, scopes: Sequence[str], limit: int) -> list[tuple[int, float, int]]:
        """Full-text search of whole threads: ``(tid, bm25 score, memories in the thread)`` best first."""
        ...

    def memory_scope_stats(self, scopes: Sequence[str]) -> tuple[int, list[str]]:
        """How many memories ``scopes`` hold together, and the speakers they record."""
        ...

    def memory_window(self, scopes: Sequence[str], start: int | None, end: int | None, limit: int) -> list[int]:
        """Up to ``limit`` keys of memories whose world time is in ``[start, end)``."""
        ...

    def memory_vectors_of(self, rids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """``rid -> (embedder, vector)`` for those of ``rids`` that have a vector."""
        ...

    def memory_vector_sample(self, scope: str, limit: int) -> list[bytes]:
        """Up to ``limit`` vectors of a scope, spread over it (for score statistics)."""
        ...

    def memory_vectors(self, scope: str, *, after: int = 0) -> tuple[list[int], list[bytes], list[str | None]]:
        """``(rids, vectors, embedders)`` of a scope's memories with a vector, rid > ``after``, in rid order."""
        ...

    def memory_list(
        self,
        scopes: Sequence[str] | None,
        *,
        after: int = 0,
        limit: int = 100,
        kinds: Sequence[str] | None = None,
        trust: str | None = None,
    ) -> list[MemoryRow]:
        """Memories of ``scopes`` (``None``: all) in rid order after ``after``; ``kinds`` and
        ``trust`` (``"trusted"`` or ``"untrusted"``) filter them."""
        ...

    def memory_count(self, scope: str) -> int:
        """How many memories a scope holds."""
        ...

    def memory_expired(self, now: int, limit: int) -> list[MemoryRow]:
        """Memories whose TTL has passed."""
        ...

    def memory_candidates_to_drop(self, scope: str, count: int, now: int) -> list[MemoryRow]:
        """The ``count`` least valuable memories of a scope by importance and recency."""
        ...

    def memory_below_value(self, value: float, now: int, limit: int) -> list[MemoryRow]:
        """Memories whose decayed value (importance over 1 + days unused / 30) is below ``value``."""
        ...

    def memory_embedders(self) -> dict[str | None, int]:
        """How many memories each embedder's vectors cover (``None``: no vector)."""
        ...

    def facts(
        self,
        scopes: Sequence[str],
        *,
        subject: str | None = None,
        predicate: str | None = None,
        include_superseded: bool = True,
    ) -> list[FactRow]:
        """Facts of ``scopes``, optionally for one subject and predicate, oldest first."""
        ...

    def fact_by_id(self, id_: bytes) -> list[FactRow]:
        """A fact by its event id, with the truncated copies made of it."""
        ...

    def memory_scope_names(self) -> list[str]:
        """Every scope that holds memories."""
        ...
