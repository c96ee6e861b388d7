"""Tampering with any stored byte is caught by verify, at the first seq it affects."""

from __future__ import annotations

import random
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from habitus import Settings, SyncHabitat, VerifyReport
from habitus.storage import ROW_FIELDS

EVENTS = 300


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed habitat with every kind of content, causes, threads, world times and an erasure."""
    root = tmp_path_factory.mktemp("pristine")
    path = root / "habitat"
    settings = Settings.resolve(config_file=None, environ={}, path=path, checkpoint_every=64)
    with SyncHabitat.init(path, settings=settings) as hab:
        ledger = hab.ledger
        previous = None
        for i in range(EVENTS - 2):
            content: object = [f"text {i}", {"n": i, "tags": ["x"]}, b"\x00\xffbytes%d" % i][i % 3]
            previous = ledger.append(
                "observation.recorded" if i % 2 else "note.recorded",
                actor=f"agent:a{i % 7}",
                content=content,
                meta={"tags": ["t"]} if i % 5 == 0 else {},
                thread=f"thread-{i % 4}" if i % 3 == 0 else None,
                at=datetime(2024, 5, 1 + i % 28, tzinfo=UTC) if i % 4 == 0 else None,
                causes=[previous] if previous is not None and i % 2 else [],
            )
        target = ledger.get_seq(40)
        ledger.erase(target.id, reason="test erasure", by="human:ada")
    return path


def _copy(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(pristine, target)
    return target


def _verify(path: Path) -> VerifyReport:
    settings = Settings.resolve(config_file=None, environ={}, path=path)
    with SyncHabitat.open(path, read_only=True, settings=settings) as hab:
        return hab.ledger.verify()


def _flip(value: object, rng: random.Random) -> object:
    """The same value with one byte changed, keeping SQLite's storage class."""
    if isinstance(value, int):
        raw = bytearray(value.to_bytes(8, "big", signed=True))
        raw[rng.randrange(8)] ^= 1 << rng.randrange(8)
        return int.from_bytes(raw, "big", signed=True)
    assert isinstance(value, str | bytes), value
    raw = bytearray(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def _tamper(db: Path, table: str, column: str, key: str, rng: random.Random) -> int:
    """Flip one byte of one non-null value; return the row's key value."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.text_factory = bytes
    try:
        rows = conn.execute(
            f"SELECT {key}, {column}, typeof({column}) FROM {table} WHERE {column} IS NOT NULL"
        ).fetchall()
        rows = [r for r in rows if r[2] != b"text" or len(r[1]) > 0]
        ident, value, storage = rows[rng.randrange(len(rows))]
        flipped = _flip(value, rng)
        cast = "CAST(? AS TEXT)" if storage == b"text" else "?"
        conn.execute(f"UPDATE {table} SET {column} = {cast} WHERE {key} = ?", (flipped, ident))
        return int(ident)
    finally:
        conn.close()


EVENT_COLUMNS = [name for name in ROW_FIELDS if name != "seq"]  # seq has its own test below


@pytest.mark.parametrize("column", EVENT_COLUMNS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flipping_a_byte_of_an_event_is_caught_at_its_seq(
    pristine: Path, tmp_path: Path, column: str, seed: int
) -> None:
    assert _verify(pristine).ok
    path = _copy(pristine, tmp_path)
    seq = _tamper(path / "ledger.db", "events", column, "seq", random.Random(seed * 1000 + len(column)))
    report = _verify(path)
    assert not report.ok, f"flipping {column} of seq {seq} went unnoticed"
    assert report.first_bad_seq == seq, report.problems


def test_flipping_a_seq_is_caught(pristine: Path, tmp_path: Path) -> None:
    path = _copy(pristine, tmp_path)
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (EVENTS + 1000, 123))
    conn.close()
    report = _verify(path)
    assert not report.ok
    assert report.first_bad_seq == 123


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_flipping_a_byte_of_a_stored_merkle_node_is_caught(pristine: Path, tmp_path: Path, seed: int) -> None:
    path = _copy(pristine, tmp_path)
    rng = random.Random(seed)
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    nodes = conn.execute("SELECT level, idx, hash FROM nodes").fetchall()
    assert nodes, "the fixture should be large enough to store Merkle nodes"
    level, idx, node = nodes[rng.randrange(len(nodes))]
    conn.execute("UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?", (_flip(node, rng), level, idx))
    conn.close()
    report = _verify(path)
    assert not report.ok
    assert report.first_bad_seq == (idx << level) + 1
    assert report.problems[0].where == "node"


@pytest.mark.parametrize("column", ["tree_size", "root", "ts", "signature"])
def test_flipping_a_byte_of_a_checkpoint_is_caught(pristine: Path, tmp_path: Path, column: str) -> None:
    path = _copy(pristine, tmp_path)
    rng = random.Random(column)
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    sizes = [r[0] for r in conn.execute("SELECT tree_size FROM checkpoints")]
    size = sizes[len(sizes) // 2]
    (value,) = conn.execute(f"SELECT {column} FROM checkpoints WHERE tree_size = ?", (size,)).fetchone()
    flipped = _flip(value, rng)
    conn.execute(f"UPDATE checkpoints SET {column} = ? WHERE tree_size = ?", (flipped, size))
    conn.close()
    report = _verify(path)
    assert not report.ok
    bad = report.problems[0]
    assert bad.where == "checkpoint"
    expected = max(flipped, 1) if isinstance(flipped, int) and column == "tree_size" else size
    assert bad.seq == expected, report.problems


def test_a_consistent_rewrite_is_caught_by_the_signed_checkpoint(pristine: Path, tmp_path: Path) -> None:
    """An attacker who rewrites an event *and* its leaf and nodes still cannot fix the signed roots."""
    from habitus.ledger._codec import leaf_hash

    path = _copy(pristine, tmp_path)
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    row = conn.execute(
        "SELECT id, ts, at, actor, kind, thread, meta, causes, ctype, digest FROM events WHERE seq = 10"
    ).fetchone()
    forged = list(row)
    forged[3] = "agent:mallory"
    conn.execute("UPDATE events SET actor = ?, leaf = ? WHERE seq = 10", ("agent:mallory", leaf_hash(*forged)))
    conn.execute("DELETE FROM nodes")  # hide the evidence the stored nodes would give
    conn.close()
    report = _verify(path)
    assert not report.ok
    assert any(p.where == "checkpoint" and p.seq <= 10 for p in report.problems), report.problems


def test_removing_the_newest_events_is_caught(pristine: Path, tmp_path: Path) -> None:
    path = _copy(pristine, tmp_path)
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    conn.execute("DELETE FROM events WHERE seq > 200")
    conn.close()
    report = _verify(path)
    assert not report.ok
    assert any("removed" in p.reason for p in report.problems)


def test_verifying_with_a_foreign_key_fails_every_checkpoint(pristine: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=pristine)
    with SyncHabitat.open(pristine, read_only=True, settings=settings) as hab:
        report = hab.ledger.verify(public_key="00" * 32)
    assert not report.ok
    assert {p.where for p in report.problems} == {"checkpoint"}
