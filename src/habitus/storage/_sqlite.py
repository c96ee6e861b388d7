"""The embedded SQLite store: one file in WAL mode, one writer, readers in parallel.

Durability: every write is one transaction. With ``durability="normal"``
(``synchronous=NORMAL``) a commit survives the process being killed at any
moment; with ``"full"`` it also survives power loss, at the cost of an fsync
per commit. ``secure_delete`` is on, so deleted content is overwritten with
zeros in the database file, and :meth:`SQLiteStore.scrub` checkpoints and
truncates the WAL so no older copy of a page survives there either.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

from habitus.errors import ReadOnlyHabitatError, StorageError
from habitus.storage._abstract import CheckpointRow, EventQuery, Row, WriteBatch
from habitus.storage._postings import MERGE_EVENTS, build_postings, iter_seqs, merge_recent, recent_start
from habitus.storage._postings import SCHEMA as POSTINGS_SCHEMA
from habitus.storage._projections import AgentRow, MailboxRow, TimerRow
from habitus.storage._sqlite_batch import bind_bytes_and_none_directly, insert_rows
from habitus.storage._sqlite_memory import SCHEMA as MEMORY_SCHEMA
from habitus.storage._sqlite_memory import (
    enable_secure_delete,
    migrate_memory_tables,
    purge_fulltext,
)
from habitus.storage._sqlite_memory_reads import SQLiteMemoryReads
from habitus.storage._sqlite_projections import SCHEMA as PROJECTIONS_SCHEMA
from habitus.storage._sqlite_projections import (
    apply_ops,
    read_agent,
    read_agents,
    read_mailbox,
    read_state,
    read_timers,
)

__all__ = ["SQLiteStore"]

bind_bytes_and_none_directly()

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    ts INTEGER NOT NULL,
    at INTEGER,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    thread TEXT,
    meta TEXT NOT NULL,
    causes BLOB,
    ctype INTEGER,
    digest BLOB,
    leaf BLOB NOT NULL,
    salt BLOB,
    body BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (id);
CREATE TABLE IF NOT EXISTS edges (
    cause INTEGER NOT NULL, effect INTEGER NOT NULL, PRIMARY KEY (cause, effect)
) WITHOUT ROWID;
-- New edges land here, a table small enough that a commit dirties few pages of it,
-- and move to edges when the recent postings are merged (see _postings).
CREATE TABLE IF NOT EXISTS edges_recent (
    cause INTEGER NOT NULL, effect INTEGER NOT NULL, PRIMARY KEY (cause, effect)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    tree_size INTEGER PRIMARY KEY, root BLOB NOT NULL, ts INTEGER NOT NULL, signature BLOB NOT NULL
);
"""

_COLUMNS = "seq, id, ts, at, actor, kind, thread, meta, causes, ctype, digest, leaf, salt, body"
_INSERT_EVENTS = f"INSERT INTO events ({_COLUMNS}) VALUES "
_INSERT_EDGES = "INSERT OR IGNORE INTO edges_recent (cause, effect) VALUES "
_INSERT_NODES = "INSERT INTO nodes (level, idx, hash) VALUES "
_INSERT_POSTINGS = "INSERT INTO postings_recent (key, first, last, offsets) VALUES "
_UNKNOWN = -1
_WAL_PAGES = 8000  # fewer, larger WAL checkpoints: pages rewritten by many commits are copied once
_CHUNK = 500  # SQLite's default limit on host parameters is far above this


class SQLiteStore(SQLiteMemoryReads):
    """A :class:`~habitus.storage.LedgerStore` on one SQLite file.

    Args:
        path: The database file.
        read_only: Refuse writes (readers in other processes use this).
        durability: ``"normal"`` survives a killed process, ``"full"`` a power loss.
    """

    def __init__(
        self, path: Path, *, read_only: bool = False, durability: Literal["normal", "full"] = "normal"
    ) -> None:
        self._path = path
        self._read_only = read_only
        self._sync = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._writer: sqlite3.Connection | None = None
        self._recent_start: int | None = _UNKNOWN
        self._fulltext_dirty = False
        if not read_only:
            self._writer = self._connect(writer=True)
            self._writer.executescript(_SCHEMA + POSTINGS_SCHEMA + PROJECTIONS_SCHEMA + MEMORY_SCHEMA)
            migrate_memory_tables(self._writer)
            enable_secure_delete(self._writer)

    # -- connections -------------------------------------------------------------------

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        try:
            # The writer's multi-row statements come in a few fixed sizes per table (see _sqlite_batch).
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=256
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            if writer:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self._sync}")
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA cache_size = -65536")
                conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
                conn.execute("PRAGMA journal_size_limit = 67108864")
            else:
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA cache_size = -32768")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the ledger database {str(self._path)!r}: {exc}") from exc
        with self._lock:
            self._all.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StorageError("the store is closed")
            conn = self._connect(writer=False)
            self._local.conn = conn
        return conn

    def _write_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise ReadOnlyHabitatError(f"the habitat database {str(self._path)!r} is open read-only")
        return self._writer

    @property
    def read_only(self) -> bool:
        """True if this store refuses writes."""
        return self._read_only

    def close(self) -> None:
        """Close every connection this store opened. Idempotent."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- writes ------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """Apply one group commit atomically."""
        conn = self._write_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                insert_rows(conn, _INSERT_EVENTS, batch.rows, 14)
                insert_rows(conn, _INSERT_EDGES, batch.edges, 2)
                insert_rows(conn, _INSERT_NODES, batch.nodes, 3)
                if batch.rows:
                    insert_rows(conn, _INSERT_POSTINGS, build_postings(batch.rows), 4)
                    self._merge_postings(conn, batch.rows[0][0], batch.rows[-1][0])
                if batch.checkpoint is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO checkpoints (tree_size, root, ts, signature) VALUES (?, ?, ?, ?)",
                        batch.checkpoint,
                    )
                deleted = bool(batch.ops) and apply_ops(
                    conn, batch.ops, {row[1]: row[0] for row in batch.rows}, {row[0]: row[2] for row in batch.rows}
                )
                for seq in batch.erase:
                    conn.execute("UPDATE events SET salt = NULL, body = NULL WHERE seq = ?", (seq,))
                conn.execute("COMMIT")
                if deleted:
                    self._fulltext_dirty = True
            except BaseException:
                self._recent_start = _UNKNOWN
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"writing to {str(self._path)!r} failed, nothing was kept: {exc}") from exc

    def _merge_postings(self, conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
        """Merge the recent postings and edges once they cover MERGE_EVENTS events (see _postings)."""
        if self._recent_start == _UNKNOWN:
            self._recent_start = recent_start(conn)  # this group's rows are already in
        if self._recent_start is None:
            self._recent_start = first_seq
        start = self._recent_start
        if last_seq - start + 1 >= MERGE_EVENTS:
            merge_recent(conn)
            conn.execute("INSERT OR IGNORE INTO edges SELECT cause, effect FROM edges_recent ORDER BY cause, effect")
            conn.execute("DELETE FROM edges_recent")
            self._recent_start = None

    # -- a writer in a child process (see habitus.ledger._committer) --------------------

    def child_writer_args(self) -> list[str]:
        """What ``python -m habitus.storage._sqlite_child`` needs to open this file as its writer."""
        return [str(self._path), "full" if self._sync == "FULL" else "normal"]

    @property
    def fulltext_dirty(self) -> bool:
        """Whether memories were deleted since the last scrub (their words are still in the full-text index)."""
        return self._fulltext_dirty

    def take_fulltext_dirty(self) -> bool:
        """Whether memories were deleted since the last scrub; the caller's scrub now answers for them."""
        dirty, self._fulltext_dirty = self._fulltext_dirty, False
        return dirty

    def hand_over_writes(self) -> None:
        """A child process writes from now on: free this process's writer page cache (up to 64 MiB)."""
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA shrink_memory")

    def adopt_writes(self, *, fulltext_dirty: bool) -> None:
        """Another writer wrote this file: forget what was cached about it (and carry its unscrubbed deletes)."""
        self._recent_start = _UNKNOWN
        self._fulltext_dirty = self._fulltext_dirty or fulltext_dirty

    def scrub(self) -> bool:
        """Copy the WAL into the database and truncate it, so no stale page copy remains.

        If memories were deleted since the last scrub, the full-text index is
        first merged so their words leave it too (see ``purge_fulltext``).
        """
        conn = self._write_conn()
        try:
            if self._fulltext_dirty:
                purge_fulltext(conn)
                self._fulltext_dirty = False
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"scrubbing {str(self._path)!r} failed: {exc}") from exc
        return int(busy) == 0

    def set_meta(self, key: str, value: str) -> None:
        """Store a habitat-level setting."""
        conn = self._write_conn()
        try:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise StorageError(f"writing setting {key!r} failed: {exc}") from exc

    # -- reads -------------------------------------------------------------------------

    def _all_rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"reading {str(self._path)!r} failed: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        """Read a habitat-level setting."""
        rows = self._all_rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def size(self) -> int:
        """The last seq (0 when empty)."""
        rows = self._all_rows("SELECT max(seq) FROM events")
        value = rows[0][0]
        return int(value) if isinstance(value, int) else 0

    def _rows_in(self, column: str, values: Sequence[object]) -> list[Row]:
        out: list[Row] = []
        for i in range(0, len(values), _CHUNK):
            chunk = values[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            out.extend(self._all_rows(f"SELECT {_COLUMNS} FROM events WHERE {column} IN ({marks})", chunk))
        out.sort(key=lambda r: r[0])
        return out

    def rows_by_seq(self, seqs: Sequence[int]) -> list[Row]:
        """Rows with the given seqs, in seq order."""
        return self._rows_in("seq", seqs)

    def rows_by_id(self, ids: Sequence[bytes]) -> list[Row]:
        """Rows with the given ids, in seq order."""
        return self._rows_in("id", ids)

    def seqs_of_ids(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        """Map existing ids to their seqs."""
        out: dict[bytes, int] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for id_, seq in self._all_rows(f"SELECT id, seq FROM events WHERE id IN ({marks})", chunk):
                out[id_] = seq
        return out

    def query(self, query: EventQuery) -> list[Row]:
        """Rows matching the filters, in the requested order.

        Without actor, kind or thread filters this is a range scan on seq.
        Otherwise the most selective filter's postings (thread, then actor,
        then kind) drive the scan, and the other filters are checked on the
        rows fetched, a chunk at a time, until the page is full.
        """
        lo = max(query.min_seq, 1)
        hi = query.max_seq if query.max_seq is not None else (1 << 62)
        order = "DESC" if query.order == "desc" else "ASC"
        if query.kinds is not None and not query.kinds:
            return []
        if query.actor is None and query.kinds is None and query.thread is None:
            sql = f"SELECT {_COLUMNS} FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq {order} LIMIT ?"
            return self._all_rows(sql, (lo, hi, query.limit))
        if query.thread is not None:
            keys = ["t:" + query.thread]
        elif query.actor is not None:
            keys = ["a:" + query.actor]
        else:
            keys = ["k:" + k for k in query.kinds or ()]
        where = []
        params: list[object] = []
        if query.actor is not None:
            where.append("actor = ?")
            params.append(query.actor)
        if query.kinds is not None:
            where.append(f"kind IN ({','.join('?' * len(query.kinds))})")
            params.extend(query.kinds)
        extra = "".join(" AND " + w for w in where)
        out: list[Row] = []
        try:
            conn = self._reader()
            seqs = iter_seqs(conn, keys, lo, hi, query.order)
            chunk_size = max(64, min(query.limit * 2, _CHUNK))
            while len(out) < query.limit:
                chunk = list(islice(seqs, chunk_size))
                if not chunk:
                    break
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM events WHERE seq IN ({marks}){extra} ORDER BY seq {order}"
                out.extend(conn.execute(sql, [*chunk, *params]).fetchall())
        except sqlite3.Error as exc:
            raise StorageError(f"reading {str(self._path)!r} failed: {exc}") from exc
        return out[: query.limit]

    def effects_of(self, seqs: Sequence[int]) -> list[tuple[int, int]]:
        """Edges leaving the given seqs."""
        out: list[tuple[int, int]] = []
        for i in range(0, len(seqs), _CHUNK):
            chunk = seqs[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            out.extend(
                self._all_rows(
                    f"SELECT cause, effect FROM edges WHERE cause IN ({marks}) "
                    f"UNION ALL SELECT cause, effect FROM edges_recent WHERE cause IN ({marks})",
                    [*chunk, *chunk],
                )
            )
        return out

    def first_seq_at_or_after(self, ts: int) -> int:
        """Binary search over seq: ``ts`` never decreases with seq, so no index is needed."""
        lo, hi = 1, self.size() + 1
        while lo < hi:
            mid = (lo + hi) // 2
            rows = self._all_rows("SELECT ts FROM events WHERE seq = ?", (mid,))
            if rows and int(rows[0][0]) < ts:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes for leaf indexes ``[start, end)``."""
        rows = self._all_rows("SELECT leaf FROM events WHERE seq > ? AND seq <= ? ORDER BY seq", (start, end))
        return [bytes(r[0]) for r in rows]

    def node(self, level: int, index: int) -> bytes | None:
        """A stored Merkle node."""
        rows = self._all_rows("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index))
        return bytes(rows[0][0]) if rows else None

    def iter_rows(self, start_seq: int = 1) -> Iterator[Row]:
        """Stream rows in seq order with a dedicated connection (safe alongside other reads)."""
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA query_only = ON")
            # A verifier must be able to read rows whose text was tampered into invalid UTF-8.
            conn.text_factory = _lenient_text
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE seq >= ? ORDER BY seq", (start_seq,))
            cursor.arraysize = 4096
            while True:
                chunk = cursor.fetchmany()
                if not chunk:
                    break
                yield from chunk
        except sqlite3.Error as exc:
            raise StorageError(f"reading {str(self._path)!r} failed: {exc}") from exc
        finally:
            conn.close()

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]:
        """Every stored Merkle node."""
        for level, idx, node in self._all_rows("SELECT level, idx, hash FROM nodes"):
            yield int(level), int(idx), bytes(node)

    def checkpoints(self) -> list[CheckpointRow]:
        """Every checkpoint, by tree size."""
        rows = self._all_rows("SELECT tree_size, root, ts, signature FROM checkpoints ORDER BY tree_size")
        return [(int(a), bytes(b), int(c), bytes(d)) for a, b, c, d in rows]

    # -- projections (see _projections.py) --------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._reader())
        except sqlite3.Error as exc:
            raise StorageError(f"reading {str(self._path)!r} failed: {exc}") from exc

    def agent(self, agent: str) -> AgentRow | None:
        """One agent's row."""
        return self._read(lambda c: read_agent(c, agent))

    def agents(self, *, after: str | None, limit: int) -> list[AgentRow]:
        """Agents in id order, starting after ``after``."""
        return self._read(lambda c: read_agents(c, after, limit))

    def existing_agents(self, agents: Sequence[str]) -> list[str]:
        """Those of ``agents`` that are registered, in the order given (one query per 500 ids)."""
        found: set[str] = set()
        for i in range(0, len(agents), _CHUNK):
            chunk = agents[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._all_rows(f"SELECT agent FROM agents WHERE agent IN ({marks})", chunk))
        return [a for a in agents if a in found]

    def agent_count(self) -> int:
        """How many agents are registered."""
        return int(self._all_rows("SELECT count(*) FROM agents")[0][0])

    def subscriptions(self) -> list[tuple[str, str]]:
        """``(agent, topics JSON)`` of agents subscribed to topics."""
        return [(a, t) for a, t in self._all_rows("SELECT agent, topics FROM agents WHERE topics != '[]'")]

    def budget_used(self, subject: str, meter: str, window: int) -> int:
        """How much of ``meter`` ``subject`` used in budget period ``window``."""
        rows = self._all_rows(
            "SELECT used FROM budget_usage WHERE subject = ? AND meter = ? AND window = ?", (subject, meter, window)
        )
        return int(rows[0][0]) if rows else 0

    def state(self, agent: str) -> dict[str, str]:
        """An agent's durable state."""
        return self._read(lambda c: read_state(c, agent))

    def mailbox(self, agent: str, *, after: int, limit: int, dead: bool = False) -> list[MailboxRow]:
        """Queued (or dead) messages of an agent."""
        return self._read(lambda c: read_mailbox(c, agent, after, limit, dead))

    def mailbox_depth(self, agent: str) -> int:
        """Queued messages of an agent, dead letters excluded."""
        return int(self._all_rows("SELECT count(*) FROM mailbox WHERE agent = ? AND dead = 0", (agent,))[0][0])

    def mailbox_depths(self) -> tuple[int, dict[str, int]]:
        """``(last seq, queued messages per agent)`` from one snapshot, for every agent that has any."""

        def read(conn: sqlite3.Connection) -> tuple[int, dict[str, int]]:
            conn.execute("BEGIN")
            try:
                size = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
                rows = conn.execute("SELECT agent, count(*) FROM mailbox WHERE dead = 0 GROUP BY agent").fetchall()
            finally:
                conn.execute("COMMIT")
            return int(size), {a: int(n) for a, n in rows}

        return self._read(read)

    def agents_with_mail(self) -> list[str]:
        """Agents with at least one queued message."""
        return [r[0] for r in self._all_rows("SELECT DISTINCT agent FROM mailbox WHERE dead = 0")]

    def timers(self, *, until: int | None = None, limit: int = 1_000_000, runnable: bool = False) -> list[TimerRow]:
        """Pending timers due at or before ``until`` (UTC µs; all when None), earliest first.

        ``runnable`` leaves out the timers of suspended agents.
        """
        return self._read(lambda c: read_timers(c, until, limit, runnable=runnable))

    def next_timer_due(self) -> int | None:
        """When the earliest pending timer is due, if any."""
        value = self._all_rows("SELECT min(due) FROM timers")[0][0]
        return int(value) if value is not None else None


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
