"""Reads of the memory projections for :class:`~habitus.storage._sqlite.SQLiteStore` (a mixin).

The schema and the writes are in :mod:`habitus.storage._sqlite_memory`; these answer the
narrow questions memory asks (see :class:`~habitus.storage._memory.MemoryStore`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from habitus.storage._memory import FactRow, MemoryRow
from habitus.storage._sqlite_memory import read_facts, read_memories, search_fulltext

__all__ = ["SQLiteMemoryReads"]

T = TypeVar("T")

_CHUNK = 500  # ids per IN (...) list
# A memory's value: its importance, decaying with the time since last used (recalled, else
# stored): halved after 30 days, a third after 60... (plain arithmetic: no SQL math functions).
_VALUE = "(importance / (1.0 + (? - coalesce(recalled, recorded)) / 2592000000000.0))"


class SQLiteMemoryReads:
    """The memory reads of the SQLite store; it supplies ``_read`` and ``_all_rows``."""

    if TYPE_CHECKING:

        def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _all_rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]: ...

    def memories(self, rids: Sequence[int]) -> list[MemoryRow]:
        """The memories with these keys that still exist."""

        def read(conn: sqlite3.Connection) -> list[MemoryRow]:
            out: list[MemoryRow] = []
            for i in range(0, len(rids), _CHUNK):
                chunk = list(rids[i : i + _CHUNK])
                out.extend(read_memories(conn, f"rid IN ({','.join('?' * len(chunk))})", chunk))
            return out

        return self._read(read)

    def memory_by_id(self, id_: bytes) -> MemoryRow | None:
        """One memory by its event id."""
        rows = self._read(lambda c: read_memories(c, "id = ?", (id_,)))
        return rows[0] if rows else None

    def memory_search(self, match: str, scopes: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """Full-text search of memories in context within ``scopes``: ``(rid, score)`` best first."""
        if not scopes:
            return []
        return self._read(lambda c: search_fulltext(c, "memory_text", match, scopes, limit))

    def memory_thread_search(self, match: str, scopes: Sequence[str], limit: int) -> list[tuple[int, float, int]]:
        """Full-text search of whole threads: ``(tid, score, size)`` best first."""
        if not scopes:
            return []

        def read(conn: sqlite3.Connection) -> list[tuple[int, float, int]]:
            found = search_fulltext(conn, "memory_threads", match, scopes, limit)
            if not found:
                return []
            marks = ",".join("?" * len(found))
            sizes = dict(
                conn.execute(f"SELECT tid, count FROM memory_thread_ids WHERE tid IN ({marks})", [t for t, _ in found])
            )
            return [(t, score, int(sizes.get(t, 0))) for t, score in found]

        return self._read(read)

    def memory_scope_stats(self, scopes: Sequence[str]) -> tuple[int, list[str]]:
        """How many memories ``scopes`` hold, and their speakers."""
        if not scopes:
            return 0, []
        marks = ",".join("?" * len(scopes))
        count = self._all_rows(f"SELECT coalesce(sum(count), 0) FROM memory_scopes WHERE scope IN ({marks})", scopes)
        speakers = self._all_rows(f"SELECT DISTINCT speaker FROM memory_speakers WHERE scope IN ({marks})", scopes)
        return int(count[0][0]), [r[0] for r in speakers]

    def memory_window(self, scopes: Sequence[str], start: int | None, end: int | None, limit: int) -> list[int]:
        """Keys of memories whose world time is in ``[start, end)``."""
        if not scopes:
            return []
        marks = ",".join("?" * len(scopes))
        rows = self._all_rows(
            f"SELECT rid FROM memories WHERE scope IN ({marks}) AND at >= ? AND at < ? LIMIT ?",
            [*scopes, start if start is not None else -(1 << 62), end if end is not None else 1 << 62, limit],
        )
        return [r[0] for r in rows]

    def memory_vectors_of(self, rids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """``rid -> (embedder, vector)`` for those of ``rids`` that have one."""
        out: dict[int, tuple[str, bytes]] = {}
        for i in range(0, len(rids), _CHUNK):
            chunk = list(rids[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for rid, embedder, vec in self._all_rows(
                f"SELECT rid, embedder, vec FROM memory_vectors WHERE rid IN ({marks})", chunk
            ):
                out[rid] = (embedder, vec)
        return out

    def memory_vector_sample(self, scope: str, limit: int) -> list[bytes]:
        """Up to ``limit`` vectors spread evenly over a scope's keys."""
        row = self._all_rows("SELECT min(rid), max(rid), count(*) FROM memory_vectors WHERE scope = ?", (scope,))[0]
        low, high, count = row
        if not count:
            return []
        if count <= limit:
            return [r[0] for r in self._all_rows("SELECT vec FROM memory_vectors WHERE scope = ?", (scope,))]
        step = max(1, (high - low) // limit)
        out: list[bytes] = []
        for i in range(limit):
            found = self._all_rows(
                "SELECT vec FROM memory_vectors WHERE scope = ? AND rid >= ? ORDER BY rid LIMIT 1",
                (scope, low + i * step),
            )
            if found:
                out.append(found[0][0])
        return out

    def memory_vectors(self, scope: str, *, after: int = 0) -> tuple[list[int], list[bytes], list[str | None]]:
        """A scope's vectors with rid > ``after``, in rid order."""
        rows = self._all_rows(
            "SELECT rid, vec, embedder FROM memory_vectors WHERE scope = ? AND rid > ? ORDER BY rid", (scope, after)
        )
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def memory_list(
        self,
        scopes: Sequence[str] | None,
        *,
        after: int = 0,
        limit: int = 100,
        kinds: Sequence[str] | None = None,
        trust: str | None = None,
    ) -> list[MemoryRow]:
        """Memories of ``scopes`` (``None``: all) in rid order after ``after``, of ``kinds`` and
        ``trust`` (``"trusted"`` or ``"untrusted"``) when given."""
        params: list[object]
        if scopes is None:
            where, params = "rid > ?", [after]
        elif not scopes:
            return []
        else:
            where = f"scope IN ({','.join('?' * len(scopes))}) AND rid > ?"
            params = [*scopes, after]
        if kinds:
            where += f" AND kind IN ({','.join('?' * len(kinds))})"
            params.extend(kinds)
        if trust is not None:
            where += " AND trust IS NULL" if trust == "trusted" else " AND trust = 'untrusted'"
        return self._read(lambda c: read_memories(c, where + " ORDER BY rid LIMIT ?", [*params, limit]))

    def memory_count(self, scope: str) -> int:
        """How many memories a scope holds."""
        rows = self._all_rows("SELECT count FROM memory_scopes WHERE scope = ?", (scope,))
        return int(rows[0][0]) if rows else 0

    def memory_expired(self, now: int, limit: int) -> list[MemoryRow]:
        """Memories whose TTL has passed, soonest first."""
        return self._read(
            lambda c: read_memories(c, "expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?", (now, limit))
        )

    def memory_candidates_to_drop(self, scope: str, count: int, now: int) -> list[MemoryRow]:
        """The ``count`` least valuable memories of a scope: low importance, long unused."""
        return self._read(lambda c: read_memories(c, f"scope = ? ORDER BY {_VALUE}, rid LIMIT ?", (scope, now, count)))

    def memory_below_value(self, value: float, now: int, limit: int) -> list[MemoryRow]:
        """Memories whose decayed value is below ``value``, least valuable first."""
        where = f"{_VALUE} < ? ORDER BY {_VALUE}, rid LIMIT ?"
        return self._read(lambda c: read_memories(c, where, (now, value, now, limit)))

    def memory_embedders(self) -> dict[str | None, int]:
        """How many memories each embedder's vectors cover."""
        return {e: int(n) for e, n in self._all_rows("SELECT embedder, count(*) FROM memories GROUP BY embedder")}

    def facts(
        self,
        scopes: Sequence[str],
        *,
        subject: str | None = None,
        predicate: str | None = None,
        include_superseded: bool = True,
    ) -> list[FactRow]:
        """Facts of ``scopes``, optionally for one subject and predicate, oldest first."""
        if not scopes:
            return []
        where = f"scope IN ({','.join('?' * len(scopes))})"
        params: list[object] = list(scopes)
        if subject is not None:
            where += " AND subject = ?"
            params.append(subject)
        if predicate is not None:
            where += " AND predicate = ?"
            params.append(predicate)
        if not include_superseded:
            where += " AND superseded IS NULL"
        return self._read(lambda c: read_facts(c, where, params))

    def fact_by_id(self, id_: bytes) -> list[FactRow]:
        """A fact by its event id, with the truncated copies made of it."""
        return self._read(
            lambda c: read_facts(c, "id = ? OR copy_of IN (SELECT fid FROM facts WHERE id = ?)", (id_, id_))
        )

    def memory_scope_names(self) -> list[str]:
        """Every scope that holds memories."""
        return [s for (s,) in self._all_rows("SELECT scope FROM memory_scopes WHERE count > 0")]
