"""The agent projections in SQLite: schema, applying ops, and reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from habitus.errors import IntegrityError
from habitus.storage._memory import MEMORY_OPS, MemoryDelete, MemoryPut
from habitus.storage._projections import (
    AgentPut,
    AgentRow,
    AgentStatus,
    MailboxAck,
    MailboxDead,
    MailboxPut,
    MailboxRetry,
    MailboxRow,
    Op,
    StateDelete,
    StatePut,
    TimerDelete,
    TimerPut,
    TimerRow,
    UsageAdd,
)
from habitus.storage._sqlite_batch import delete_keys, insert_rows
from habitus.storage._sqlite_memory import apply_memory_op, put_memories

__all__ = ["SCHEMA", "apply_ops", "read_agent", "read_agents", "read_mailbox", "read_state", "read_timers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, labels TEXT NOT NULL,
    behaviour TEXT NOT NULL, topics TEXT NOT NULL, status TEXT NOT NULL,
    spawned_seq INTEGER NOT NULL, updated_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agent_state (
    agent TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (agent, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox (
    agent TEXT NOT NULL, msg INTEGER NOT NULL, sender TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, not_before INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0, error TEXT,
    PRIMARY KEY (agent, msg)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timers (
    timer TEXT PRIMARY KEY, agent TEXT NOT NULL, due INTEGER NOT NULL, set_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_due ON timers (due);
CREATE TABLE IF NOT EXISTS budget_usage (
    subject TEXT NOT NULL, meter TEXT NOT NULL, window INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (subject, meter, window)
) WITHOUT ROWID;
"""

_AGENT_COLUMNS = "agent, name, owner, labels, behaviour, topics, status, spawned_seq, updated_seq"
_MAIL_COLUMNS = "agent, msg, sender, attempts, not_before, dead, error"


def _seq(seq_of: dict[bytes, int], event: bytes) -> int:
    seq = seq_of.get(event)
    if seq is None:
        raise IntegrityError("a projection change names an event that is not in its transaction")
    return seq


_INSERT_MAIL = "INSERT INTO mailbox (agent, msg, sender) VALUES "
_ADD_USAGE = "INSERT INTO budget_usage (subject, meter, window, used) VALUES "
_ADD_USAGE_TAIL = " ON CONFLICT (subject, meter, window) DO UPDATE SET used = used + excluded.used"


class _Mail:
    """Mailbox inserts and deletes held back to be written as few statements.

    Changes to different messages commute, so they may be written in any
    order; a change to a message already held back writes what is held first.
    """

    __slots__ = ("acks", "keys", "puts")

    def __init__(self) -> None:
        self.puts: list[tuple[str, int, str]] = []
        self.acks: list[tuple[str, int]] = []
        self.keys: set[tuple[str, int]] = set()

    def hold(self, conn: sqlite3.Connection, key: tuple[str, int]) -> None:
        """Note a change to message ``key`` about to be held back (writing what is held first if it changes it too)."""
        if key in self.keys:
            self.write(conn)
        self.keys.add(key)

    def touches(self, key: tuple[str, int]) -> bool:
        return key in self.keys

    def write(self, conn: sqlite3.Connection) -> None:
        if self.puts:
            insert_rows(conn, _INSERT_MAIL, self.puts, 3)
            self.puts = []
        if self.acks:
            delete_keys(conn, "mailbox", ("agent", "msg"), self.acks)
            self.acks = []
        self.keys = set()


def apply_ops(conn: sqlite3.Connection, ops: Sequence[Op], seq_of: dict[bytes, int], ts_of: dict[int, int]) -> bool:
    """Apply projection ops inside the caller's transaction, with the effect of applying them in order.

    Returns True if a memory was deleted (its words stay in the full-text
    index until it is purged).

    Mailbox puts and acks, and budget usage, are written in a few multi-row
    statements (see ``_sqlite_batch``): usage adds up in any order, and
    mailbox changes to different messages commute. The rest is written as it
    comes; each table is touched only by its own kind of op.
    """
    mail = _Mail()
    usage: dict[tuple[str, str, int], int] = {}
    memories: list[MemoryPut] = []
    deleted = False
    for op in ops:
        if type(op) is MailboxPut:  # the ops are final dataclasses: no subclasses to miss
            seq = _seq(seq_of, op.event)
            mail.hold(conn, (op.agent, seq))
            mail.puts.append((op.agent, seq, op.sender))
            continue
        if type(op) is MailboxAck:
            key = (op.agent, op.msg)
            mail.hold(conn, key)
            mail.acks.append(key)
            continue
        if isinstance(op, UsageAdd):
            key3 = (op.subject, op.meter, op.window)
            usage[key3] = usage.get(key3, 0) + op.amount
            continue
        if isinstance(op, MemoryPut):
            memories.append(op)
            continue
        if memories:
            _put_memories(conn, memories, seq_of, ts_of)
            memories = []
        if isinstance(op, MEMORY_OPS):
            deleted = deleted or isinstance(op, MemoryDelete)
            try:
                apply_memory_op(conn, op, seq_of, ts_of)
            except KeyError:
                raise IntegrityError("a memory change names an event that is not in its transaction") from None
        elif isinstance(op, StatePut):
            conn.execute(
                "INSERT OR REPLACE INTO agent_state (agent, key, value, seq) VALUES (?, ?, ?, ?)",
                (op.agent, op.key, op.value, _seq(seq_of, op.event)),
            )
        elif isinstance(op, StateDelete):
            conn.execute("DELETE FROM agent_state WHERE agent = ? AND key = ?", (op.agent, op.key))
        elif isinstance(op, AgentPut):
            seq = _seq(seq_of, op.event)
            conn.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (op.agent, op.name, op.owner, op.labels, op.behaviour, op.topics, op.status, seq, seq),
            )
        elif isinstance(op, AgentStatus):
            conn.execute(
                "UPDATE agents SET status = ?, updated_seq = ? WHERE agent = ?",
                (op.status, _seq(seq_of, op.event), op.agent),
            )
        elif isinstance(op, MailboxRetry):
            if mail.touches((op.agent, op.msg)):
                mail.write(conn)
            conn.execute(
                "UPDATE mailbox SET attempts = ?, not_before = ?, error = ? WHERE agent = ? AND msg = ?",
                (op.attempts, op.not_before, op.error, op.agent, op.msg),
            )
        elif isinstance(op, MailboxDead):
            if mail.touches((op.agent, op.msg)):
                mail.write(conn)
            conn.execute(
                "UPDATE mailbox SET attempts = ?, dead = 1, error = ? WHERE agent = ? AND msg = ?",
                (op.attempts, op.error, op.agent, op.msg),
            )
        elif isinstance(op, TimerPut):
            conn.execute(
                "INSERT OR REPLACE INTO timers (timer, agent, due, set_seq) VALUES (?, ?, ?, ?)",
                (op.timer, op.agent, op.due, _seq(seq_of, op.event)),
            )
        else:
            assert isinstance(op, TimerDelete)
            conn.execute("DELETE FROM timers WHERE timer = ?", (op.timer,))
    if memories:
        _put_memories(conn, memories, seq_of, ts_of)
    mail.write(conn)
    if usage:
        insert_rows(conn, _ADD_USAGE, [(*key, amount) for key, amount in usage.items()], 4, tail=_ADD_USAGE_TAIL)
    return deleted


def _put_memories(
    conn: sqlite3.Connection, ops: Sequence[MemoryPut], seq_of: dict[bytes, int], ts_of: dict[int, int]
) -> None:
    try:
        put_memories(conn, ops, seq_of, ts_of)
    except KeyError:
        raise IntegrityError("a memory change names an event that is not in its transaction") from None


def read_agent(conn: sqlite3.Connection, agent: str) -> AgentRow | None:
    """One agent's row."""
    row = conn.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent = ?", (agent,)).fetchone()
    return AgentRow(*row) if row else None


def read_agents(conn: sqlite3.Connection, after: str | None, limit: int) -> list[AgentRow]:
    """Agents in id order after ``after``."""
    rows = conn.execute(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent > ? ORDER BY agent LIMIT ?", (after or "", limit)
    ).fetchall()
    return [AgentRow(*r) for r in rows]


def read_state(conn: sqlite3.Connection, agent: str) -> dict[str, str]:
    """An agent's state, key to JSON text."""
    return dict(conn.execute("SELECT key, value FROM agent_state WHERE agent = ?", (agent,)).fetchall())


def read_mailbox(conn: sqlite3.Connection, agent: str, after: int, limit: int, dead: bool) -> list[MailboxRow]:
    """Queued or dead messages of one agent, in seq order."""
    rows = conn.execute(
        f"SELECT {_MAIL_COLUMNS} FROM mailbox WHERE agent = ? AND msg > ? AND dead = ? ORDER BY msg LIMIT ?",
        (agent, after, int(dead), limit),
    ).fetchall()
    return [MailboxRow(a, m, s, att, nb, bool(d), e) for a, m, s, att, nb, d, e in rows]


def read_timers(conn: sqlite3.Connection, until: int | None, limit: int, *, runnable: bool) -> list[TimerRow]:
    """Pending timers due at or before ``until`` (all if None), earliest first.

    With ``runnable``, timers of suspended agents are left out: they wait for the
    agent to be resumed and must not hide the timers behind them.
    """
    if runnable:
        sql = (
            "SELECT t.timer, t.agent, t.due, t.set_seq FROM timers t JOIN agents a ON a.agent = t.agent "
            "WHERE t.due <= ? AND a.status != 'suspended' ORDER BY t.due LIMIT ?"
        )
    else:
        sql = "SELECT timer, agent, due, set_seq FROM timers WHERE due <= ? ORDER BY due LIMIT ?"
    rows = conn.execute(sql, (until if until is not None else 1 << 62, limit))
    return [TimerRow(*r) for r in rows]
