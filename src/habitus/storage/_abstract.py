"""The store interface the ledger's logic is written against.

A store persists rows and answers narrow reads; it holds no ledger logic
(no validation, hashing, Merkle arithmetic or graph walking). Methods are
synchronous: the ledger calls writes from its single writer thread and reads
from worker threads, so a backend may block.

Rows are plain tuples in the column order of :data:`ROW_FIELDS`, because the
write path handles hundreds of thousands of them a second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from habitus.storage._memory import MemoryStore
from habitus.storage._projections import Op, ProjectionStore

__all__ = [
    "ROW_FIELDS",
    "CheckpointRow",
    "EventQuery",
    "HabitatStore",
    "LedgerStore",
    "ProcessWritable",
    "Row",
    "WriteBatch",
]

ROW_FIELDS = (
    "seq",
    "id",
    "ts",
    "at",
    "actor",
    "kind",
    "thread",
    "meta",
    "causes",
    "ctype",
    "digest",
    "leaf",
    "salt",
    "body",
)
"""Column order of an event row. ``ts``/``at`` are UTC microseconds, ``meta`` is
canonical JSON, ``causes`` the concatenated 16-byte cause ids, ``ctype`` 1 text /
2 json / 3 bytes, ``digest`` SHA-256(salt, ctype, body), ``leaf`` the Merkle leaf hash."""

Row = tuple[
    int,  # seq
    bytes,  # id
    int,  # ts
    int | None,  # at
    str,  # actor
    str,  # kind
    str | None,  # thread
    str,  # meta
    bytes | None,  # causes
    int | None,  # ctype
    bytes | None,  # digest
    bytes,  # leaf
    bytes | None,  # salt
    bytes | None,  # body
]

CheckpointRow = tuple[int, bytes, int, bytes]
"""``(tree_size, root, ts, signature)``."""


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Everything one group commit writes, in one transaction.

    Attributes:
        rows: New event rows in seq order.
        edges: ``(cause_seq, effect_seq)`` pairs for the new rows.
        nodes: Completed Merkle nodes ``(level, index, hash)``.
        checkpoint: A signed checkpoint to store, if one was made.
        erase: Seqs whose content and salt are deleted.
        ops: Projection changes (agents, state, mailboxes, timers), applied
            after the rows; ops may name the rows' events by id.
    """

    rows: Sequence[Row]
    edges: Sequence[tuple[int, int]]
    nodes: Sequence[tuple[int, int, bytes]]
    checkpoint: CheckpointRow | None = None
    erase: Sequence[int] = ()
    ops: Sequence[Op] = ()


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of a ledger query; ``None`` means no filter.

    ``kinds`` matches any of the given kinds. ``min_seq``/``max_seq`` bound
    the seq range (both inclusive).
    """

    actor: str | None = None
    kinds: tuple[str, ...] | None = None
    thread: str | None = None
    min_seq: int = 1
    max_seq: int | None = None
    limit: int = 100
    order: Literal["asc", "desc"] = "asc"


class LedgerStore(Protocol):
    """Persistence for the ledger. See the module docstring for the contract."""

    @property
    def read_only(self) -> bool:
        """True if this store refuses writes."""
        ...

    def close(self) -> None:
        """Release connections and locks. Idempotent."""
        ...

    # writes (called from the single writer thread)
    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically and durably, or raise and apply nothing."""
        ...

    def scrub(self) -> bool:
        """Rewrite files so deleted content has no copy left on disk; True if complete."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a habitat-level setting (id, name, public key)."""
        ...

    # reads (any thread)
    def get_meta(self, key: str) -> str | None:
        """Read a habitat-level setting."""
        ...

    def size(self) -> int:
        """Number of events (the last seq)."""
        ...

    def rows_by_seq(self, seqs: Sequence[int]) -> list[Row]:
        """Rows with the given seqs, in seq order; missing seqs are skipped."""
        ...

    def rows_by_id(self, ids: Sequence[bytes]) -> list[Row]:
        """Rows with the given ids, in seq order; missing ids are skipped."""
        ...

    def seqs_of_ids(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        """Map the ids that exist to their seqs."""
        ...

    def query(self, query: EventQuery) -> list[Row]:
        """Rows matching ``query``, ordered by seq."""
        ...

    def effects_of(self, seqs: Sequence[int]) -> list[tuple[int, int]]:
        """``(cause_seq, effect_seq)`` edges leaving the given seqs."""
        ...

    def first_seq_at_or_after(self, ts: int) -> int:
        """Smallest seq with ``ts`` at or after the given time (size + 1 if none)."""
        ...

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes of leaf indexes ``[start, end)`` (seq = index + 1)."""
        ...

    def node(self, level: int, index: int) -> bytes | None:
        """A stored Merkle node, or ``None``."""
        ...

    def iter_rows(self, start_seq: int = 1) -> Iterator[Row]:
        """Every row from ``start_seq`` on, in seq order, streamed."""
        ...

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]:
        """Every stored Merkle node ``(level, index, hash)``, in no particular order."""
        ...

    def checkpoints(self) -> list[CheckpointRow]:
        """Every stored checkpoint, by tree size."""
        ...


@runtime_checkable
class ProcessWritable(Protocol):
    """A store whose writes a child process can take over (see ``habitus.ledger._committer``)."""

    def child_writer_args(self) -> list[str]:
        """Arguments after the file descriptor for ``python -m habitus.storage._sqlite_child``."""
        ...

    def take_fulltext_dirty(self) -> bool:
        """Whether deletes await a scrub here; cleared, because the child's scrub now covers them."""
        ...

    def hand_over_writes(self) -> None:
        """The child writes from now on: release what only this process's writing needed."""
        ...

    def adopt_writes(self, *, fulltext_dirty: bool) -> None:
        """Writing comes back from the child: forget cached write-side state."""
        ...


class HabitatStore(LedgerStore, ProjectionStore, MemoryStore, Protocol):
    """Everything a habitat needs from its storage: the ledger, the agent and the memory projections.

    The agents, messaging and runtime layers are written against this, not
    against SQLite, so another backend (PostgreSQL, DESIGN §8) can serve them.
    """
