"""Commits made by a writer process (``commit_process``): same results, and nothing lost when it dies.

Most tests open the habitat with ``commit_process="always"`` and wait until commits
go to the process, then check what a user relies on: appends, transactions and
erasure behave as on the writer thread; a failed commit keeps nothing, and nothing
prepared before the failure lands after it; a killed writer process costs only the
appends it had not committed, and the habitat goes on writing on its thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import fields
from itertools import pairwise
from pathlib import Path
from typing import Any, get_args

import pytest

from habitus import Event, Habitat, Settings
from habitus.errors import StorageError
from habitus.storage._abstract import WriteBatch
from habitus.storage._projections import Op
from habitus.storage._wire import decode, encode
from tests.ledger import test_concurrency, test_ledger
from tests.ledger._procs import WRITER_MODULE, alive, cmdline, writer_children


async def _until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _in_process(hab: Habitat) -> int:
    """Append until commits go to the writer process (it starts in the background); its pid."""
    deadline = asyncio.get_running_loop().time() + 60
    while hab.ledger.writer_pid is None:
        assert asyncio.get_running_loop().time() < deadline, "commits never moved to the writer process"
        await hab.ledger.append("note.recorded", actor="human:warmup", content="warming up")
        await asyncio.sleep(0.01)
    return hab.ledger.writer_pid


@pytest.fixture
async def in_process(settings: Settings) -> AsyncIterator[Habitat]:
    """A new habitat whose commits already go to its writer process."""
    hab = await Habitat.init(settings.path, settings=settings.model_copy(update={"commit_process": "always"}))
    try:
        await _in_process(hab)
        yield hab
    finally:
        await hab.close()


def _sample(annotation: str, i: int) -> Any:
    """A value of a field's annotated type (the ops' annotations are strings)."""
    if annotation.endswith("| None"):
        return None if i % 2 else _sample(annotation.split("|")[0].strip(), i)
    return {"str": f"s{i}", "bytes": bytes([i]) * 16, "int": 10**12 + i, "float": i + 0.25}.get(annotation, (i, i + 1))


def test_every_projection_op_crosses_to_the_writer_process_unchanged() -> None:
    ops: list[Any] = []
    for n, cls in enumerate(get_args(Op)):
        ops.append(cls(*(_sample(str(f.type), n + k) for k, f in enumerate(fields(cls)))))
    row = (7, b"i" * 16, 1, None, "agent:a", "note.recorded", "t", "{}", b"c" * 16, 1, b"d" * 32, b"l" * 32, None, b"x")
    batch = WriteBatch([row], [(3, 7)], [(0, 6, b"h" * 32)], (7, b"r" * 32, 9, b"s" * 64), [5], ops)
    framed = encode(batch, generation=3, scrub=True, fulltext_dirty=True)
    assert int.from_bytes(framed[:4], "little") == len(framed) - 4
    generation, scrub, dirty, back = decode(framed[4:])
    assert (generation, scrub, dirty) == (3, True, True)
    assert back == WriteBatch([row], [(3, 7)], [(0, 6, b"h" * 32)], (7, b"r" * 32, 9, b"s" * 64), [5], ops)
    assert len(ops) == len(get_args(Op)) >= 18


async def test_commits_go_to_a_process_that_ends_with_the_habitat(settings: Settings) -> None:
    hab = await Habitat.init(settings.path, settings=settings.model_copy(update={"commit_process": "always"}))
    try:
        pid = await _in_process(hab)
        assert pid != os.getpid()
        assert WRITER_MODULE in cmdline(pid)
        events = await asyncio.gather(
            *(hab.ledger.append("note.recorded", actor=f"agent:a{i % 7}", content=f"n{i}") for i in range(1500))
        )
        seqs = sorted(e.seq for e in events)
        assert all(b == a + 1 for a, b in pairwise(seqs))
        assert (await hab.ledger.get(events[-1].id)).content == "n1499"
        count = await hab.ledger.count()
    finally:
        await hab.close()
    assert not alive(pid), "the writer process outlived the habitat"
    async with await Habitat.open(settings.path, settings=settings) as again:
        assert await again.ledger.count() == count
        assert (await again.ledger.verify()).ok
        assert again.ledger.writer_pid is None  # auto: a quiet habitat keeps its commits on the thread


async def test_auto_moves_commits_only_under_sustained_load(settings: Settings) -> None:
    async with await Habitat.init(settings.path, settings=settings) as hab:
        assert settings.commit_process == "auto"
        for i in range(300):
            await hab.ledger.append("note.recorded", actor="human:a", content=f"one at a time {i}")
        await asyncio.sleep(1.0)
        assert not writer_children(), "a writer process started for a light load"
        pid = None
        for rounds in range(400):
            await asyncio.gather(
                *(hab.ledger.append("note.recorded", actor=f"agent:l{i % 9}", content=f"r{rounds}") for i in range(600))
            )
            pid = hab.ledger.writer_pid
            if pid is not None:
                break
        assert pid is not None, "sustained load never moved the commits to a writer process"
        assert WRITER_MODULE in cmdline(pid)
        assert (await hab.ledger.verify()).ok


async def test_many_tasks_appending_at_once(in_process: Habitat) -> None:
    await test_concurrency.test_many_tasks_appending_at_once(in_process)
    assert in_process.ledger.writer_pid is not None


async def test_commit_listeners_see_commits_in_order(in_process: Habitat) -> None:
    await test_concurrency.test_commit_listeners_see_commits_in_order_while_small_and_large_appends_mix(in_process)


async def test_transactions_committing_together_each_keep_their_own_events(in_process: Habitat) -> None:
    await test_ledger.test_transactions_committing_together_each_keep_their_own_events(in_process)


async def test_erasure_scrubs_every_file(in_process: Habitat) -> None:
    await test_ledger.test_erasure_removes_the_text_from_every_file_and_the_ledger_still_verifies(in_process)


def _fail_inserts_by(path: Path, actor: str) -> None:
    """Make SQLite itself refuse any event by ``actor`` (a real failed write, in whichever process writes)."""
    conn = sqlite3.connect(path / "ledger.db", timeout=30)
    try:
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.actor = '{actor}' "
            "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        )
        conn.commit()
    finally:
        conn.close()


async def test_a_failed_commit_keeps_nothing_and_what_was_sent_after_it_is_refused(in_process: Habitat) -> None:
    ledger = in_process.ledger
    before = await ledger.count()
    _fail_inserts_by(in_process.path, "human:doomed")

    async def transaction(actor: str, n: int) -> list[Event]:
        async with ledger.transaction() as tx:
            for i in range(n):
                tx.append("note.recorded", actor=actor, content=f"{actor} {i}")
        return list(tx.events)

    # One iteration's group, cut into pieces: the first fails in the writer process, and the
    # pieces behind it were prepared with the seqs it would have used.
    results = await asyncio.gather(
        transaction("human:doomed", 200), *(transaction(f"agent:t{k}", 40) for k in range(8)), return_exceptions=True
    )
    assert isinstance(results[0], StorageError) and "simulated failure" in str(results[0])
    assert all(isinstance(r, StorageError) for r in results[1:]), results[1:]
    assert await ledger.count() == before, "a refused commit left events behind"

    again = await asyncio.gather(*(transaction(f"agent:t{k}", 40) for k in range(8)))
    seqs = sorted(e.seq for events in again for e in events)
    assert seqs == list(range(before + 1, before + 321))
    assert ledger.writer_pid is not None, "a failed commit is not a reason to leave the writer process"
    assert (await ledger.verify()).ok


async def test_a_killed_writer_process_costs_only_the_appends_it_had_not_committed(in_process: Habitat) -> None:
    ledger = in_process.ledger
    pid = ledger.writer_pid
    assert pid is not None
    before = await ledger.count()

    async def appender(k: int) -> list[Event | BaseException]:
        out: list[Event | BaseException] = []
        for i in range(400):
            try:
                out.append(await ledger.append("note.recorded", actor=f"agent:k{k}", content=f"{k}/{i}"))
            except StorageError as exc:
                out.append(exc)
        return out

    tasks = [asyncio.create_task(appender(k)) for k in range(20)]
    await _until(lambda: ledger.writer_pid is not None, "the writer process")
    await asyncio.sleep(0.05)  # mid-stream: commits in flight
    os.kill(pid, signal.SIGKILL)
    outcomes = [o for t in tasks for o in await t]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    kept = [o for o in outcomes if isinstance(o, Event)]
    assert all("writer process was lost" in str(e) or "earlier write failed" in str(e) for e in failed), failed[:3]
    assert ledger.writer_pid is None, "commits still go to a dead process"

    after = await ledger.append("note.recorded", actor="human:a", content="after the loss")
    count = await ledger.count()
    assert after.seq == count
    stored = {e.id for e in await test_concurrency._all_events(in_process)}
    assert all(e.id in stored for e in kept), "an append that returned is missing"
    assert count - before == len(kept) + 1, "events that no append returned are in the ledger"
    assert (await ledger.verify()).ok


async def test_appends_queued_when_the_process_becomes_ready_are_sent_to_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's READY can be handled while a lone append waits for its inline commit."""
    from habitus.ledger._writer import Writer
    from habitus.storage._wire import READY

    held: list[tuple[Writer, Any]] = []
    handle = Writer._on_reply

    def hold_ready(self: Writer, reply: Any) -> None:
        if reply[0] == READY and not held:
            held.append((self, reply))  # handled by the test, at the moment it chooses
            return
        handle(self, reply)

    monkeypatch.setattr(Writer, "_on_reply", hold_ready)
    async with await Habitat.init(
        settings.path, settings=settings.model_copy(update={"commit_process": "always"})
    ) as hab:
        await _until(lambda: bool(held), "the writer process to be ready")
        task = asyncio.create_task(hab.ledger.append("note.recorded", actor="human:a", content="queued"))
        await asyncio.sleep(0)  # the append ran up to its commit: queued for a commit at the end of this iteration
        writer, ready = held[0]
        assert not task.done() and writer._queue, "the append must be waiting for its inline commit"
        handle(writer, ready)  # the process takes over now, before that commit runs
        event = await asyncio.wait_for(task, 10)
        assert hab.ledger.writer_pid is not None
        assert (await hab.ledger.get(event.id)).content == "queued"
