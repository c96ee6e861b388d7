"""Block postings: the actor, kind and thread indexes of the SQLite store.

A B-tree index per field costs one index insert per event per field, and, worse,
a commit rewrites every index page it touched: with a thousand active threads a
batch of 1,000 events dirtied hundreds of scattered pages, and the ledger slowed
as it grew. Postings fix both, in two tiers, like a small LSM tree:

* Each group commit appends one row per distinct key in the group to
  ``postings_recent``, a table with no index, so appends write only new pages
  at its end: ``(key, first, last, offsets)``, ``offsets`` being the seqs of
  that key in the group relative to ``first``, packed little-endian ``uint32``.
* Once the recent rows cover :data:`MERGE_EVENTS` events, the writer moves
  them, in the same transaction as a commit and sorted by key, into
  ``postings`` (keyed by ``(key, first)``) and empties ``postings_recent``.
  The scattered page writes are paid once per merge instead of once per commit.

Postings of one key never overlap and every merged posting is older than every
recent one (merges take all recent rows), so a query reads merged postings
then recent ones (or the reverse, newest first) and gets seqs in order.

Keys are ``"a:" + actor``, ``"k:" + kind`` and ``"t:" + thread``.
"""

from __future__ import annotations

import heapq
import sqlite3
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Literal

__all__ = ["MERGE_EVENTS", "SCHEMA", "build_postings", "iter_seqs", "merge_recent", "recent_start"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS postings (
    key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, offsets BLOB NOT NULL,
    PRIMARY KEY (key, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS postings_recent (
    key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, offsets BLOB NOT NULL
);
"""

MERGE_EVENTS = 32_768
"""Recent postings are merged once they cover this many events."""

_PAGE = 64
_LITTLE = sys.byteorder == "little"


def _pack(offsets: array[int]) -> bytes:
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        offsets.byteswap()
    return offsets.tobytes()


def _unpack(blob: bytes) -> array[int]:
    offsets = array("I")
    offsets.frombytes(blob)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        offsets.byteswap()
    return offsets


def build_postings(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int, int, bytes]]:
    """Postings for a group of rows in seq order (row[0] seq, row[4] actor, row[5] kind, row[6] thread)."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        seq = row[0]
        thread = row[6]
        for key in ("a:" + row[4], "k:" + row[5]) if thread is None else ("a:" + row[4], "k:" + row[5], "t:" + thread):
            bucket = groups.get(key)
            if bucket is None:
                groups[key] = [seq]
            else:
                bucket.append(seq)
    out: list[tuple[str, int, int, bytes]] = []
    for key, seqs in groups.items():
        first = seqs[0]
        out.append((key, first, seqs[-1], _pack(array("I", [s - first for s in seqs]))))
    return out


def recent_start(conn: sqlite3.Connection) -> int | None:
    """The first seq the recent postings cover, or ``None`` when there are none."""
    value = conn.execute("SELECT min(first) FROM postings_recent").fetchone()[0]
    return int(value) if value is not None else None


def merge_recent(conn: sqlite3.Connection) -> None:
    """Move every recent posting into the keyed table, in key order; inside the caller's transaction.

    The rows are copied as they are (one per key per group commit), sorted, in one
    statement that SQLite runs without the GIL; what is saved is the scattered page
    writes, now paid once per merge rather than once per commit.
    """
    conn.execute("INSERT INTO postings SELECT key, first, last, offsets FROM postings_recent ORDER BY key, first")
    conn.execute("DELETE FROM postings_recent")


def _decode(first: int, blob: bytes) -> list[int]:
    return [first + o for o in _unpack(blob)]


def _iter_merged(conn: sqlite3.Connection, key: str, lo: int, hi: int, order: Literal["asc", "desc"]) -> Iterator[int]:
    """Seqs of ``key`` within ``[lo, hi]`` from the merged postings, a page of postings at a time."""
    if order == "asc":
        # The posting holding ``lo`` (if any) starts at the greatest ``first`` <= lo.
        start = conn.execute("SELECT max(first) FROM postings WHERE key = ? AND first <= ?", (key, lo)).fetchone()[0]
        cursor = start if start is not None else lo
        while True:
            rows = conn.execute(
                "SELECT first, offsets FROM postings WHERE key = ? AND first >= ? AND first <= ? "
                "ORDER BY first LIMIT ?",
                (key, cursor, hi, _PAGE),
            ).fetchall()
            for first, blob in rows:
                for seq in _decode(first, blob):
                    if seq > hi:
                        return
                    if seq >= lo:
                        yield seq
            if len(rows) < _PAGE:
                return
            cursor = rows[-1][0] + 1
    else:
        cursor = hi
        while True:
            rows = conn.execute(
                "SELECT first, offsets, last FROM postings WHERE key = ? AND first <= ? ORDER BY first DESC LIMIT ?",
                (key, cursor, _PAGE),
            ).fetchall()
            for first, blob, last in rows:
                if last < lo:
                    return
                for seq in reversed(_decode(first, blob)):
                    if seq < lo:
                        return
                    if seq <= hi:
                        yield seq
            if len(rows) < _PAGE:
                return
            cursor = rows[-1][0] - 1


def _iter_recent(conn: sqlite3.Connection, key: str, lo: int, hi: int, order: Literal["asc", "desc"]) -> Iterator[int]:
    """Seqs of ``key`` within ``[lo, hi]`` from the recent postings (a bounded scan)."""
    direction = "ASC" if order == "asc" else "DESC"
    rows = conn.execute(
        "SELECT first, offsets FROM postings_recent WHERE key = ? AND last >= ? AND first <= ? "
        f"ORDER BY first {direction}",
        (key, lo, hi),
    ).fetchall()
    for first, blob in rows:
        seqs = _decode(first, blob)
        for seq in seqs if order == "asc" else reversed(seqs):
            if lo <= seq <= hi:
                yield seq


def _iter_key(conn: sqlite3.Connection, key: str, lo: int, hi: int, order: Literal["asc", "desc"]) -> Iterator[int]:
    # Recent postings are all newer than merged ones; read the two tiers in the query's order.
    if order == "asc":
        yield from _iter_merged(conn, key, lo, hi, order)
        yield from _iter_recent(conn, key, lo, hi, order)
    else:
        yield from _iter_recent(conn, key, lo, hi, order)
        yield from _iter_merged(conn, key, lo, hi, order)


def _merge_sorted(streams: list[Iterator[int]], order: Literal["asc", "desc"]) -> Iterator[int]:
    """Merge sorted seq streams (each in ``order``) into one, without duplicates."""
    if len(streams) == 1:
        yield from streams[0]
        return
    sign = 1 if order == "asc" else -1
    last = None
    for value in heapq.merge(*[(sign * s for s in stream) for stream in streams]):
        if value != last:
            yield sign * value
            last = value


def iter_seqs(
    conn: sqlite3.Connection, keys: list[str], lo: int, hi: int, order: Literal["asc", "desc"]
) -> Iterator[int]:
    """Seqs listed under any of ``keys`` within ``[lo, hi]``, in ``order``."""
    return _merge_sorted([_iter_key(conn, key, lo, hi, order) for key in keys], order)
