"""Many rows in few SQLite statements, from a small set of statement texts.

The writer thread commits while the event loop thread is busy. sqlite3 releases
the GIL around every step of a statement and has to take it back afterwards;
while the loop is running Python, each retake can wait a whole switch interval
(5 ms by default). ``executemany`` steps once per row, so a group commit of
hundreds of rows written that way waits hundreds of times. A multi-row
statement steps once.

Statements are cut into chunks of fixed sizes (:data:`CHUNKS`), so a handful of
statement texts serve every batch size: sqlite3 caches prepared statements by
text, and preparing one with thousands of parameters costs over a millisecond.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from itertools import chain

__all__ = ["CHUNKS", "bind_bytes_and_none_directly", "delete_keys", "insert_rows"]

CHUNKS = (256, 64, 16, 4, 1)
"""Rows per statement: a batch is written as the fewest chunks of these sizes, largest first."""

MAX_PARAMS = 30_000
"""Most parameters in one statement (below SQLITE_MAX_VARIABLE_NUMBER, 32,766 since SQLite 3.32)."""


_NO_KEYS: dict[object, None] = {}


def bind_bytes_and_none_directly() -> None:
    """Let sqlite3 bind ``bytes`` and ``None`` without first searching for an adapter.

    sqlite3 binds ints, floats, strs and bytearrays at once, but for any other
    value it first looks for an adapter, which for ``bytes`` and ``None`` means
    two failed attribute lookups and their exceptions: 280 and 200 ns a value
    against 16 for an int. An event row binds six blobs and often two NULLs.
    Registered identity adapters, both C callables (``bytes(b)`` is ``b``, and
    an empty dict's ``get`` returns None), cut that to 170 and 70 ns. Values
    bind exactly as before; an adapter someone registered first is kept.
    """
    adapters: dict[tuple[type, type], object] = getattr(sqlite3, "adapters", {})
    if (bytes, sqlite3.PrepareProtocol) not in adapters:
        sqlite3.register_adapter(bytes, bytes)
    if (type(None), sqlite3.PrepareProtocol) not in adapters:
        sqlite3.register_adapter(type(None), _NO_KEYS.get)


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]], width: int, *, tail: str = ""
) -> None:
    """Run ``head`` (``INSERT ... VALUES``), a ``(?, ...)`` tuple for each of ``rows``, then ``tail``.

    Rows go in in the order given, so ``INSERT OR REPLACE`` and upserts
    (``tail`` = ``ON CONFLICT ...``) see them one after the other, as
    ``executemany`` would.
    """
    one = "(" + ",".join("?" * width) + ")"
    _run(conn, head, one, ",", tail, rows, width)


def delete_keys(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], keys: Sequence[tuple[object, ...]]
) -> None:
    """Delete the rows of ``table`` whose ``columns`` equal one of ``keys``.

    Written as ``(a = ? AND b = ?) OR ...``, which SQLite answers with one
    primary-key search per key; a row-value ``IN (VALUES ...)`` would scan.
    """
    one = "(" + " AND ".join(f"{column} = ?" for column in columns) + ")"
    _run(conn, f"DELETE FROM {table} WHERE ", one, " OR ", "", keys, len(columns))


def _run(
    conn: sqlite3.Connection,
    head: str,
    one: str,
    sep: str,
    tail: str,
    rows: Sequence[tuple[object, ...]],
    width: int,
) -> None:
    start = 0
    total = len(rows)
    for size in CHUNKS:
        size = min(size, MAX_PARAMS // width) or 1
        while total - start >= size:
            chunk = rows[start : start + size]
            conn.execute(_statement(head, one, sep, tail, size), list(chain.from_iterable(chunk)))
            start += size


@functools.lru_cache(maxsize=256)
def _statement(head: str, one: str, sep: str, tail: str, count: int) -> str:
    # The same str object each time lets sqlite3's statement cache find it without building it again.
    return head + sep.join([one] * count) + tail
