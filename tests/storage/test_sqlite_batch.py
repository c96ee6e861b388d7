"""Projection changes written as multi-row statements end as if each had been applied in order."""

from __future__ import annotations

import random
import sqlite3

import pytest

from habitus.storage._projections import MailboxAck, MailboxDead, MailboxPut, MailboxRetry, Op, UsageAdd
from habitus.storage._sqlite_batch import CHUNKS, bind_bytes_and_none_directly, delete_keys, insert_rows
from habitus.storage._sqlite_projections import SCHEMA, apply_ops


def _conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


def _tables(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    mailbox = conn.execute("SELECT * FROM mailbox ORDER BY agent, msg").fetchall()
    usage = conn.execute("SELECT * FROM budget_usage ORDER BY subject, meter, window").fetchall()
    return mailbox, usage


def _random_ops(rng: random.Random, count: int) -> tuple[list[Op], dict[bytes, int]]:
    """Puts, acks, retries, dead letters and usage over a few agents, often touching one message twice."""
    ops: list[Op] = []
    seq_of: dict[bytes, int] = {}
    queued: list[tuple[str, int]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35 or not queued:
            seq = len(seq_of) + 1
            event = seq.to_bytes(8, "big")
            seq_of[event] = seq
            agent = f"a{rng.randrange(4)}"
            ops.append(MailboxPut(agent, event, f"s{rng.randrange(3)}"))
            queued.append((agent, seq))
        elif roll < 0.6:
            agent, msg = queued.pop(rng.randrange(len(queued)))
            ops.append(MailboxAck(agent, msg))
        elif roll < 0.7:
            agent, msg = rng.choice(queued)
            ops.append(MailboxRetry(agent, msg, rng.randrange(1, 5), rng.randrange(10**6), f"e{rng.randrange(9)}"))
        elif roll < 0.75:
            agent, msg = rng.choice(queued)
            ops.append(MailboxDead(agent, msg, 5, "gave up"))
        else:
            ops.append(
                UsageAdd(f"agent:a{rng.randrange(3)}", rng.choice(["messages", "tokens"]), 7, rng.randrange(1, 9))
            )
    return ops, seq_of


@pytest.mark.parametrize("seed", range(12))
def test_batched_ops_end_as_ops_applied_one_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    ops, seq_of = _random_ops(rng, rng.choice([5, 40, 300, 700]))
    batched, one_by_one = _conn(), _conn()
    apply_ops(batched, ops, seq_of, {})
    for op in ops:
        apply_ops(one_by_one, [op], seq_of, {})
    assert _tables(batched) == _tables(one_by_one)
    assert _tables(batched)[0] or _tables(batched)[1]


def test_changes_to_one_message_in_one_batch_keep_their_order() -> None:
    conn = _conn()
    one, two = b"\x01", b"\x02"
    seq_of = {one: 1, two: 2}
    apply_ops(conn, [MailboxPut("a", one, "s"), MailboxAck("a", 1), MailboxPut("a", two, "s")], seq_of, {})
    assert conn.execute("SELECT agent, msg FROM mailbox").fetchall() == [("a", 2)]
    # The same message queued again after its acknowledgement, in one batch, is queued.
    apply_ops(conn, [MailboxAck("a", 2), MailboxPut("a", two, "s2"), MailboxRetry("a", 2, 1, 5, "e")], seq_of, {})
    assert conn.execute("SELECT agent, msg, sender, attempts FROM mailbox").fetchall() == [("a", 2, "s2", 1)]


@pytest.mark.parametrize("count", [0, 1, 3, 255, 256, 257, 700])
def test_rows_and_keys_of_any_count_are_written_and_deleted_exactly(count: int) -> None:
    conn = _conn()
    rows = [(f"a{i % 7}", i, "s") for i in range(count)] + [("keep", 1, "s")]
    insert_rows(conn, "INSERT INTO mailbox (agent, msg, sender) VALUES ", rows, 3)
    assert conn.execute("SELECT count(*) FROM mailbox").fetchone()[0] == count + 1
    delete_keys(conn, "mailbox", ("agent", "msg"), [(agent, msg) for agent, msg, _ in rows[:-1]])
    assert conn.execute("SELECT agent, msg FROM mailbox").fetchall() == [("keep", 1)]


def test_a_bad_row_fails_its_statement_and_the_transaction_keeps_nothing() -> None:
    conn = _conn()
    rows = [("a", i, "s") for i in range(CHUNKS[0] + 3)] + [("a", 0, "duplicate")]
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO mailbox (agent, msg, sender) VALUES ", rows, 3)
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM mailbox").fetchone()[0] == 0


def test_blobs_and_nulls_bind_as_they_did_and_an_adapter_registered_first_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = sqlite3.connect(":memory:")
    row = conn.execute("SELECT ?, typeof(?), ?, typeof(?)", (b"\x00\xff", b"\x00\xff", None, None)).fetchone()
    assert row == (b"\x00\xff", "blob", None, "null")
    adapters: dict[tuple[type, type], object] = getattr(sqlite3, "adapters")  # noqa: B009 - not in the stubs
    monkeypatch.delitem(adapters, (type(None), sqlite3.PrepareProtocol), raising=False)
    monkeypatch.setitem(adapters, (bytes, sqlite3.PrepareProtocol), bytes.hex)  # an application's own
    bind_bytes_and_none_directly()
    assert adapters[(bytes, sqlite3.PrepareProtocol)] is bytes.hex
    assert conn.execute("SELECT ?, ?", (b"\x01", None)).fetchone() == ("01", None)
