"""Storage backends behind one interface: SQLite now, PostgreSQL later (DESIGN §8)."""

from habitus.storage._abstract import ROW_FIELDS, CheckpointRow, EventQuery, HabitatStore, LedgerStore, Row, WriteBatch
from habitus.storage._sqlite import SQLiteStore

__all__ = [
    "ROW_FIELDS",
    "CheckpointRow",
    "EventQuery",
    "HabitatStore",
    "LedgerStore",
    "Row",
    "SQLiteStore",
    "WriteBatch",
]
