"""The memory projections in SQLite: schema, applying ops, and reads.

Full text lives in an FTS5 table (Porter stemming, diacritics folded) whose
``scope`` column holds one opaque token per scope, so a search is restricted
to the scopes a recall may see inside the full-text index itself. Vectors are
float32 BLOBs beside it. With ``secure_delete`` on, deleting a memory zeroes
its text, its FTS row and its vector in the file; see :func:`purge_fulltext`
for the words left in the FTS index's segments.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from habitus.storage._memory import (
    FactDelete,
    FactPut,
    FactRow,
    FactSupersede,
    MemoryDelete,
    MemoryOp,
    MemoryPut,
    MemoryRow,
    MemoryTouch,
    VectorPut,
    label,
)

__all__ = [
    "SCHEMA",
    "apply_memory_op",
    "migrate_memory_tables",
    "purge_fulltext",
    "put_memories",
    "read_facts",
    "read_memories",
    "scope_token",
    "search_fulltext",
]

CONTEXT_PREVIOUS = 2
"""How many earlier records of its thread a record's full-text row also holds."""

THREAD_LIMIT = 1000
"""A thread's full-text row holds at most its latest this many records."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    rid INTEGER PRIMARY KEY, id BLOB NOT NULL, agent TEXT NOT NULL, scope TEXT NOT NULL,
    kind TEXT NOT NULL, text TEXT NOT NULL, speaker TEXT, at INTEGER, recorded INTEGER NOT NULL,
    tags TEXT NOT NULL, attrs TEXT NOT NULL, importance REAL NOT NULL, expires INTEGER,
    thread TEXT, tid INTEGER, sources BLOB, embedder TEXT, recalled INTEGER, recalls INTEGER NOT NULL DEFAULT 0,
    trust TEXT  -- 'untrusted', or NULL: trusted
);
CREATE UNIQUE INDEX IF NOT EXISTS memories_id ON memories (id);
CREATE INDEX IF NOT EXISTS memories_scope ON memories (scope, rid);
CREATE INDEX IF NOT EXISTS memories_at ON memories (scope, at) WHERE at IS NOT NULL;
CREATE INDEX IF NOT EXISTS memories_thread ON memories (tid, rid) WHERE tid IS NOT NULL;
CREATE INDEX IF NOT EXISTS memories_expires ON memories (expires) WHERE expires IS NOT NULL;
-- one row per memory (rowid = rid): the memory and the CONTEXT_PREVIOUS before it in its thread
CREATE VIRTUAL TABLE IF NOT EXISTS memory_text USING fts5(
    body, scope, tokenize = 'porter unicode61 remove_diacritics 2'
);
-- one row per thread (rowid = tid): its latest THREAD_LIMIT memories
CREATE VIRTUAL TABLE IF NOT EXISTS memory_threads USING fts5(
    body, scope, tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS memory_thread_ids (
    tid INTEGER PRIMARY KEY, scope TEXT NOT NULL, thread TEXT NOT NULL, count INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS memory_thread_key ON memory_thread_ids (scope, thread);
CREATE TABLE IF NOT EXISTS memory_scopes (scope TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memory_speakers (
    scope TEXT NOT NULL, speaker TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (scope, speaker)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memory_vectors (
    rid INTEGER PRIMARY KEY, scope TEXT NOT NULL, embedder TEXT NOT NULL, vec BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_vectors_scope ON memory_vectors (scope, rid);
CREATE TABLE IF NOT EXISTS facts (
    fid INTEGER PRIMARY KEY, seq INTEGER NOT NULL, id BLOB NOT NULL, agent TEXT NOT NULL, scope TEXT NOT NULL,
    subject TEXT NOT NULL, predicate TEXT NOT NULL, value TEXT NOT NULL,
    valid_from INTEGER, valid_to INTEGER, recorded INTEGER NOT NULL,
    superseded INTEGER, superseded_by BLOB, copy_of INTEGER,
    trust TEXT  -- 'untrusted', or NULL: trusted
);
CREATE INDEX IF NOT EXISTS facts_subject ON facts (scope, subject, predicate);
CREATE INDEX IF NOT EXISTS facts_id ON facts (id);
"""

_MEMORY_COLUMNS = (
    "rid, id, agent, scope, kind, text, speaker, at, recorded, tags, attrs, importance, expires, "
    "thread, tid, sources, embedder, recalled, recalls, trust"
)
_FACT_COLUMNS = (
    "fid, seq, id, agent, scope, subject, predicate, value, valid_from, valid_to, recorded, superseded, "
    "superseded_by, copy_of, trust"
)
# Columns added after the first release: (table, column, declaration). Older files get them on open.
_ADDED_COLUMNS = (
    ("memories", "trust", "TEXT"),
    ("facts", "trust", "TEXT"),
)


def migrate_memory_tables(conn: sqlite3.Connection) -> None:
    """Add the columns newer versions keep to memory tables made by an older one (run after :data:`SCHEMA`)."""
    for table, column, declaration in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _select(conn: sqlite3.Connection, columns: str, table: str, where: str, params: Sequence[object]) -> list[Any]:
    """``SELECT columns FROM table WHERE where``, also on a file no writer of this version has migrated.

    A read-only handle cannot add columns; there, the columns added since read as NULL (so
    every memory of such a file reads as trusted, as it was written). The plain query is
    tried first each time, so a file migrated meanwhile by a writer is read as it is.
    """
    try:
        return conn.execute(f"SELECT {columns} FROM {table} WHERE {where}", params).fetchall()
    except sqlite3.OperationalError as exc:
        added = [c for t, c, _ in _ADDED_COLUMNS if t == table]
        if not any(f"no such column: {c}" in str(exc) for c in added):
            raise
    nulls = ", ".join(f"NULL AS {c}" for c in added)
    legacy = f"(SELECT *, {nulls} FROM {table}) AS {table}"
    return conn.execute(f"SELECT {columns} FROM {legacy} WHERE {where}", params).fetchall()


def scope_token(scope: str) -> str:
    """The one FTS token standing for ``scope`` (scopes contain characters the tokenizer splits on)."""
    return "s" + hashlib.sha256(scope.encode()).hexdigest()[:24]


def apply_memory_op(conn: sqlite3.Connection, op: MemoryOp, seq_of: dict[bytes, int], ts_of: dict[int, int]) -> None:
    """Apply one memory op inside the caller's transaction."""
    if isinstance(op, MemoryPut):
        put_memories(conn, [op], seq_of, ts_of)
    elif isinstance(op, MemoryDelete):
        _delete(conn, op.rid)
    elif isinstance(op, MemoryTouch):
        conn.executemany(
            "UPDATE memories SET recalled = ?, recalls = recalls + 1 WHERE rid = ?", [(op.ts, r) for r in op.rids]
        )
    elif isinstance(op, VectorPut):
        conn.execute("UPDATE memories SET embedder = ? WHERE rid = ?", (op.embedder, op.rid))
        if op.vector is None or op.embedder is None:
            conn.execute("DELETE FROM memory_vectors WHERE rid = ?", (op.rid,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO memory_vectors (rid, scope, embedder, vec) VALUES (?, ?, ?, ?)",
                (op.rid, op.scope, op.embedder, op.vector),
            )
    elif isinstance(op, FactPut):
        seq = seq_of[op.event]
        conn.execute(
            f"INSERT INTO facts ({_FACT_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
            (
                seq,
                op.event,
                op.agent,
                op.scope,
                op.subject,
                op.predicate,
                op.value,
                op.valid_from,
                op.valid_to,
                ts_of[seq],
                op.copy_of,
                op.trust,
            ),
        )
    elif isinstance(op, FactSupersede):
        conn.execute(
            "UPDATE facts SET superseded = ?, superseded_by = ? WHERE fid = ? AND superseded IS NULL",
            (op.at, op.by, op.fid),
        )
    else:
        assert isinstance(op, FactDelete)
        conn.execute("DELETE FROM facts WHERE fid = ? OR copy_of = ?", (op.fid, op.fid))


def put_memories(
    conn: sqlite3.Connection, ops: Sequence[MemoryPut], seq_of: dict[bytes, int], ts_of: dict[int, int]
) -> None:
    """Store a run of new memories with as few statements as possible.

    Each memory's full-text row holds it and the :data:`CONTEXT_PREVIOUS` memories before
    it in its thread (earlier ones of the same run included); each thread touched has its
    row written again once, at the end.
    """
    tids: dict[tuple[str, str], int] = {}
    existing: list[int] = []  # threads that had memories before this run (their rows are replaced)
    recent: dict[int, list[str]] = {}
    added: dict[tuple[str, str], int] = {}
    for op in ops:
        if op.thread is not None:
            added[(op.scope, op.thread)] = added.get((op.scope, op.thread), 0) + 1
    for (scope, thread), n in added.items():
        conn.execute(
            "INSERT INTO memory_thread_ids (scope, thread, count) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, thread) DO UPDATE SET count = count + excluded.count",
            (scope, thread, n),
        )
        tid = conn.execute(
            "SELECT tid FROM memory_thread_ids WHERE scope = ? AND thread = ?", (scope, thread)
        ).fetchone()[0]
        tids[(scope, thread)] = tid
        earlier = conn.execute(
            "SELECT speaker, text FROM memories WHERE tid = ? ORDER BY rid DESC LIMIT ?", (tid, CONTEXT_PREVIOUS)
        ).fetchall()
        recent[tid] = [label(sp, t) for sp, t in reversed(earlier)]
        if earlier:
            existing.append(tid)
    rows: list[tuple[object, ...]] = []
    texts: list[tuple[object, ...]] = []
    vectors: list[tuple[object, ...]] = []
    scopes: dict[str, int] = {}
    speakers: dict[tuple[str, str], int] = {}
    for op in ops:
        rid = seq_of[op.event]
        tid = tids[(op.scope, op.thread)] if op.thread is not None else None
        rows.append(
            (
                rid, op.event, op.agent, op.scope, op.kind, op.text, op.speaker, op.at, ts_of[rid], op.tags,
                op.attrs, op.importance, op.expires, op.thread, tid, op.sources, op.embedder, op.trust,
            )
        )  # fmt: skip
        own = label(op.speaker, op.text)
        if tid is None:
            body = own
        else:
            before = recent[tid]
            body = "\n".join([*before, own])
            recent[tid] = [*before, own][-CONTEXT_PREVIOUS:] if CONTEXT_PREVIOUS else []
        texts.append((rid, body, scope_token(op.scope)))
        if op.vector is not None and op.embedder is not None:
            vectors.append((rid, op.scope, op.embedder, op.vector))
        scopes[op.scope] = scopes.get(op.scope, 0) + 1
        if op.speaker is not None:
            speakers[(op.scope, op.speaker)] = speakers.get((op.scope, op.speaker), 0) + 1
    marks = ", ".join("?" * 17)
    conn.executemany(f"INSERT INTO memories ({_MEMORY_COLUMNS}) VALUES ({marks}, NULL, 0, ?)", rows)
    conn.executemany("INSERT INTO memory_text (rowid, body, scope) VALUES (?, ?, ?)", texts)
    if vectors:
        conn.executemany("INSERT INTO memory_vectors (rid, scope, embedder, vec) VALUES (?, ?, ?, ?)", vectors)
    conn.executemany(
        "INSERT INTO memory_scopes (scope, count) VALUES (?, ?) "
        "ON CONFLICT (scope) DO UPDATE SET count = count + excluded.count",
        list(scopes.items()),
    )
    if speakers:
        conn.executemany(
            "INSERT INTO memory_speakers (scope, speaker, count) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, speaker) DO UPDATE SET count = count + excluded.count",
            [(sc, sp, n) for (sc, sp), n in speakers.items()],
        )
    if existing:
        conn.executemany("DELETE FROM memory_threads WHERE rowid = ?", [(t,) for t in existing])
    conn.executemany(
        "INSERT INTO memory_threads (rowid, body, scope) VALUES (?, ?, ?)",
        [(tid, _thread_body(conn, tid), scope_token(scope)) for (scope, _), tid in tids.items()],
    )


def _delete(conn: sqlite3.Connection, rid: int) -> None:
    row = conn.execute("SELECT scope, speaker, tid FROM memories WHERE rid = ?", (rid,)).fetchone()
    if row is None:
        return
    scope, speaker, tid = row
    conn.execute("DELETE FROM memories WHERE rid = ?", (rid,))
    conn.execute("DELETE FROM memory_text WHERE rowid = ?", (rid,))
    conn.execute("DELETE FROM memory_vectors WHERE rid = ?", (rid,))
    conn.execute("UPDATE memory_scopes SET count = count - 1 WHERE scope = ?", (scope,))
    if speaker is not None:
        conn.execute("UPDATE memory_speakers SET count = count - 1 WHERE scope = ? AND speaker = ?", (scope, speaker))
        conn.execute("DELETE FROM memory_speakers WHERE scope = ? AND speaker = ? AND count <= 0", (scope, speaker))
    if tid is None:
        return
    # the next records of the thread held this one in their rows: write them again without it
    later = conn.execute(
        "SELECT rid, speaker, text FROM memories WHERE tid = ? AND rid > ? ORDER BY rid LIMIT ?",
        (tid, rid, CONTEXT_PREVIOUS),
    ).fetchall()
    for next_rid, next_speaker, next_text in later:
        conn.execute("DELETE FROM memory_text WHERE rowid = ?", (next_rid,))
        conn.execute(
            "INSERT INTO memory_text (rowid, body, scope) VALUES (?, ?, ?)",
            (next_rid, _context_body(conn, next_rid, tid, label(next_speaker, next_text)), scope_token(scope)),
        )
    conn.execute("UPDATE memory_thread_ids SET count = count - 1 WHERE tid = ?", (tid,))
    _refresh_thread(conn, tid, scope)


def _context_body(conn: sqlite3.Connection, rid: int, tid: int | None, own: str) -> str:
    if tid is None:
        return own
    earlier = conn.execute(
        "SELECT speaker, text FROM memories WHERE tid = ? AND rid < ? ORDER BY rid DESC LIMIT ?",
        (tid, rid, CONTEXT_PREVIOUS),
    ).fetchall()
    return "\n".join([*(label(s, t) for s, t in reversed(earlier)), own])


def _thread_body(conn: sqlite3.Connection, tid: int) -> str:
    rows = conn.execute(
        "SELECT speaker, text FROM memories WHERE tid = ? ORDER BY rid DESC LIMIT ?", (tid, THREAD_LIMIT)
    ).fetchall()
    return "\n".join(label(s, t) for s, t in reversed(rows))


def _refresh_thread(conn: sqlite3.Connection, tid: int, scope: str) -> None:
    conn.execute("DELETE FROM memory_threads WHERE rowid = ?", (tid,))
    body = _thread_body(conn, tid)
    if not body:
        conn.execute("DELETE FROM memory_thread_ids WHERE tid = ?", (tid,))
        return
    conn.execute("INSERT INTO memory_threads (rowid, body, scope) VALUES (?, ?, ?)", (tid, body, scope_token(scope)))


def purge_fulltext(conn: sqlite3.Connection) -> None:
    """Rewrite the full-text index so deleted memories leave no words in it.

    FTS5 deletes by writing tombstones; the words of a deleted row stay in
    older index segments until they are merged. SQLite 3.44 and newer remove
    them at once (``secure-delete``, set when the table is created); on older
    versions the index is merged into one segment here, which costs time in
    proportion to the index's size.
    """
    if sqlite3.sqlite_version_info >= (3, 44, 0):
        return
    conn.execute("INSERT INTO memory_text (memory_text) VALUES ('optimize')")
    conn.execute("INSERT INTO memory_threads (memory_threads) VALUES ('optimize')")


def enable_secure_delete(conn: sqlite3.Connection) -> None:
    """Ask FTS5 to remove a deleted row's words at once, where SQLite supports it (3.44+)."""
    if sqlite3.sqlite_version_info >= (3, 44, 0):
        conn.execute("INSERT INTO memory_text (memory_text, rank) VALUES ('secure-delete', 1)")
        conn.execute("INSERT INTO memory_threads (memory_threads, rank) VALUES ('secure-delete', 1)")


def read_memories(conn: sqlite3.Connection, where: str, params: Sequence[object]) -> list[MemoryRow]:
    """Memories matching a WHERE clause over the memories table."""
    return [MemoryRow(*r) for r in _select(conn, _MEMORY_COLUMNS, "memories", where, params)]


def search_fulltext(
    conn: sqlite3.Connection, table: str, match: str, scopes: Sequence[str], limit: int
) -> list[tuple[int, float]]:
    """BM25 search of ``match`` (an FTS5 expression) in ``memory_text`` or ``memory_threads`` within
    ``scopes``: ``(rowid, score)`` best first, higher is better."""
    assert table in ("memory_text", "memory_threads")
    tokens = " OR ".join(scope_token(s) for s in scopes)
    expr = f"{{scope}} : ({tokens}) AND {{body}} : ({match})"
    rows = conn.execute(
        f"SELECT rowid, bm25({table}, 1.0, 0.0) AS r FROM {table} WHERE {table} MATCH ? ORDER BY r LIMIT ?",
        (expr, limit),
    ).fetchall()
    return [(int(rowid), -float(score)) for rowid, score in rows]


def read_facts(conn: sqlite3.Connection, where: str, params: Sequence[object]) -> list[FactRow]:
    """Facts matching a WHERE clause, oldest first."""
    return [FactRow(*r) for r in _select(conn, _FACT_COLUMNS, "facts", where + " ORDER BY recorded, fid", params)]
