"""Block postings: the actor, kind and thread indexes of the SQLite store.

A B-tree index per field costs one index insert per event per field, which
is most of the cost of a batched append. Instead, each group commit writes one
posting per distinct key in the group: ``(key, first, last, offsets)`` where
``offsets`` are the seqs of that key in the group, relative to ``first``, as
packed little-endian ``uint32``. A batch of 1,000 events from 50 actors writes
about 50 actor postings instead of 1,000 index entries. Postings of one key
never overlap (groups commit in seq order), which is what lets a query seek
straight to the posting that holds a given seq.

Keys are ``"a:" + actor``, ``"k:" + kind`` and ``"t:" + thread``.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Literal

__all__ = ["SCHEMA", "build_postings", "iter_seqs", "merge_sorted", "posting_keys"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS postings (
    key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, offsets BLOB NOT NULL,
    PRIMARY KEY (key, first)
) WITHOUT ROWID;
"""

_PAGE = 64
_LITTLE = sys.byteorder == "little"


def posting_keys(actor: str, kind: str, thread: str | None) -> tuple[str, ...]:
    """The posting keys one event is listed under."""
    if thread is None:
        return ("a:" + actor, "k:" + kind)
    return ("a:" + actor, "k:" + kind, "t:" + thread)


def build_postings(rows: Sequence[tuple[object, ...]]) -> list[tuple[str, int, int, bytes]]:
    """Postings for a group of rows in seq order (row[0] seq, row[4] actor, row[5] kind, row[6] thread)."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        seq = row[0]
        for key in (
            ("a:" + row[4], "k:" + row[5]) if row[6] is None else ("a:" + row[4], "k:" + row[5], "t:" + row[6])  # type: ignore[operator]
        ):
            bucket = groups.get(key)
            if bucket is None:
                groups[key] = [seq]  # type: ignore[list-item]
            else:
                bucket.append(seq)  # type: ignore[arg-type]
    out: list[tuple[str, int, int, bytes]] = []
    for key, seqs in groups.items():
        first = seqs[0]
        offsets = array("I", [s - first for s in seqs])
        if not _LITTLE:  # pragma: no cover - big-endian hosts
            offsets.byteswap()
        out.append((key, first, seqs[-1], offsets.tobytes()))
    return out


def _decode(first: int, blob: bytes) -> list[int]:
    offsets = array("I")
    offsets.frombytes(blob)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        offsets.byteswap()
    return [first + o for o in offsets]


def _iter_key(conn: sqlite3.Connection, key: str, lo: int, hi: int, order: Literal["asc", "desc"]) -> Iterator[int]:
    """Seqs listed under ``key`` within ``[lo, hi]``, in ``order``, read a page of postings at a time."""
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


def merge_sorted(streams: list[Iterator[int]], order: Literal["asc", "desc"]) -> Iterator[int]:
    """Merge sorted seq streams (each in ``order``) into one, without duplicates."""
    import heapq

    if len(streams) == 1:
        yield from streams[0]
        return
    sign = 1 if order == "asc" else -1
    merged = heapq.merge(*[(sign * s for s in stream) for stream in streams])
    last = None
    for value in merged:
        if value != last:
            yield sign * value
            last = value


def iter_seqs(
    conn: sqlite3.Connection, keys: list[str], lo: int, hi: int, order: Literal["asc", "desc"]
) -> Iterator[int]:
    """Seqs listed under any of ``keys`` within ``[lo, hi]``, in ``order``."""
    return merge_sorted([_iter_key(conn, key, lo, hi, order) for key in keys], order)
