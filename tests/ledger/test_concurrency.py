"""Many appenders at once in one process: nothing lost, nothing duplicated, each appender's order kept.

The async test runs hundreds of tasks on one event loop; the thread test drives one
:class:`~habitus.SyncHabitat` from several threads. Both then read the ledger back
the way a user would (``count``, ``query`` pages, ``get``, ``verify``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

from habitus import Draft, Event, Habitat, SyncHabitat

SINGLE_TASKS = 200
SINGLES_PER_TASK = 25
BATCH_TASKS = 20
BATCHES_PER_TASK = 10
BATCH_SIZE = 50

THREADS = 8
THREAD_ROUNDS = 30
THREAD_SINGLES_PER_ROUND = 5
THREAD_BATCH_SIZE = 20

PAGE = 1000


async def _all_events(habitat: Habitat) -> list[Event]:
    """Every event, oldest first, read one ``query`` page at a time."""
    events: list[Event] = []
    cursor: int | None = None
    while True:
        page = await habitat.ledger.query(limit=PAGE, cursor=cursor)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


def _all_events_sync(habitat: SyncHabitat) -> list[Event]:
    events: list[Event] = []
    cursor: int | None = None
    while True:
        page = habitat.ledger.query(limit=PAGE, cursor=cursor)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


def _check_ledger(
    stored: Sequence[Event], count: int, returned: dict[str, list[Event]], preexisting: int, expected_new: int
) -> None:
    """The checks shared by the async and the thread test.

    ``returned`` maps each appender (its actor) to the events its appends returned, in the
    order it appended them; their content is ``{"i": position in that appender's sequence}``.
    """
    assert count == preexisting + expected_new, f"count() is {count}, expected {preexisting} + {expected_new}"
    seqs = [e.seq for e in stored]
    assert seqs == list(range(1, count + 1)), "seqs read back through query() are not exactly 1..count()"
    ids = [e.id for e in stored]
    assert len(set(ids)) == len(ids), "two stored events share an id"

    by_seq = {e.seq: e for e in stored}
    total = 0
    for actor, events in returned.items():
        total += len(events)
        mine = [e.seq for e in events]
        assert all(a < b for a, b in pairwise(mine)), f"{actor}: appends returned seqs out of the order made in"
        for position, event in enumerate(events):
            assert event.content == {"i": position}, f"{actor}: append #{position} returned {event.content!r}"
            kept = by_seq[event.seq]
            assert kept.id == event.id, f"{actor}: seq {event.seq} holds another event than the append returned"
            assert kept.actor == actor
            assert kept.content == event.content
            assert kept.causes == event.causes
        # Read back from the ledger alone: this appender's events, in seq order, are its appends in order.
        stored_mine = [e for e in stored if e.actor == actor]
        assert [e.content for e in stored_mine] == [{"i": i} for i in range(len(events))], (
            f"{actor}: its events are stored in another order than it appended them"
        )
    assert total == expected_new, f"appenders got {total} events back, expected {expected_new}"
    spans = sorted((events[0].seq, events[-1].seq) for events in returned.values())
    assert any(b[0] < a[1] for a, b in pairwise(spans)), "the appenders never overlapped: nothing was concurrent"


async def test_many_tasks_appending_at_once(habitat: Habitat) -> None:
    ledger = habitat.ledger
    preexisting = await ledger.count()

    async def singles(task: int) -> tuple[str, list[Event]]:
        actor = f"agent:single-{task}"
        out: list[Event] = []
        for i in range(SINGLES_PER_TASK):
            causes = [out[-1].id] if out and i % 3 == 0 else []
            out.append(await ledger.append("note.recorded", actor=actor, content={"i": i}, causes=causes))
        return actor, out

    async def batches(task: int) -> tuple[str, list[Event]]:
        actor = f"agent:batch-{task}"
        out: list[Event] = []
        for b in range(BATCHES_PER_TASK):
            causes = (out[-1].id,) if out else ()
            drafts = [
                Draft(kind="observation.recorded", actor=actor, content={"i": b * BATCH_SIZE + j}, causes=causes)
                for j in range(BATCH_SIZE)
            ]
            got = await ledger.append_many(drafts)
            assert len(got) == BATCH_SIZE
            seqs = [e.seq for e in got]
            assert seqs == list(range(seqs[0], seqs[0] + BATCH_SIZE)), f"{actor}: a batch was not given adjacent seqs"
            out.extend(got)
        return actor, out

    # gather() schedules every task before any of them runs, so all 220 append at once.
    results = await asyncio.gather(
        *(singles(t) for t in range(SINGLE_TASKS)), *(batches(t) for t in range(BATCH_TASKS))
    )

    expected_new = SINGLE_TASKS * SINGLES_PER_TASK + BATCH_TASKS * BATCHES_PER_TASK * BATCH_SIZE
    count = await ledger.count()
    stored = await _all_events(habitat)
    _check_ledger(stored, count, dict(results), preexisting, expected_new)

    # The causes given to concurrent appends name the right events, and get() finds them.
    for actor, events in results:
        for k, event in enumerate(events):
            if event.kind == "note.recorded" and k % 3 == 0 and k:
                assert event.causes == (events[k - 1].id,), f"{actor}: event #{k} lost or mixed up its cause"
        for event in events[::7]:
            assert await ledger.get(event.id) == await ledger.get_seq(event.seq)
    report = await ledger.verify()
    assert report.ok, report.problems
    assert report.events == count


def test_threads_sharing_one_sync_habitat(sync_habitat: SyncHabitat) -> None:
    ledger = sync_habitat.ledger
    preexisting = ledger.count()
    barrier = threading.Barrier(THREADS)

    def appender(index: int) -> tuple[str, list[Event]]:
        actor = f"agent:thread-{index}"
        out: list[Event] = []
        barrier.wait(timeout=30)
        for _ in range(THREAD_ROUNDS):
            for _ in range(THREAD_SINGLES_PER_ROUND):
                causes = [out[-1].id] if out else []
                content = {"i": len(out)}
                out.append(ledger.append("note.recorded", actor=actor, content=content, causes=causes))
            drafts = [
                Draft(kind="observation.recorded", actor=actor, content={"i": len(out) + j})
                for j in range(THREAD_BATCH_SIZE)
            ]
            got = ledger.append_many(drafts)
            seqs = [e.seq for e in got]
            assert seqs == list(range(seqs[0], seqs[0] + THREAD_BATCH_SIZE)), f"{actor}: batch seqs not adjacent"
            out.extend(got)
        return actor, out

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(appender, i) for i in range(THREADS)]
        results = [f.result(timeout=120) for f in futures]

    expected_new = THREADS * THREAD_ROUNDS * (THREAD_SINGLES_PER_ROUND + THREAD_BATCH_SIZE)
    count = ledger.count()
    stored = _all_events_sync(sync_habitat)
    _check_ledger(stored, count, dict(results), preexisting, expected_new)

    # Every single after a thread's first event names that thread's previous event as its cause.
    for actor, events in results:
        for k, event in enumerate(events[1:], start=1):
            if event.kind == "note.recorded":
                assert event.causes == (events[k - 1].id,), f"{actor}: event #{k} lost or mixed up its cause"
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.events == count


async def test_commit_listeners_see_commits_in_order_while_small_and_large_appends_mix(habitat: Habitat) -> None:
    # Small appends commit on the event loop and large ones on the writer thread; the runtime's
    # hand-over of messages relies on hearing of commits in the order they were made (it skips a
    # message whose seq is below one it already acknowledged, so one heard late is never delivered).
    ledger = habitat.ledger
    heard: list[int] = []
    ledger.on_commit(lambda _ops, rows: heard.extend(row[0] for row in rows))

    async def singles(task: int) -> None:
        for i in range(20):
            await ledger.append("note.recorded", actor=f"agent:single-{task}", content={"i": i})

    async def batches(task: int) -> None:
        for _ in range(10):
            drafts = [
                Draft(kind="observation.recorded", actor=f"agent:batch-{task}", content={"i": j}) for j in range(40)
            ]
            await ledger.append_many(drafts)

    for _ in range(3):
        await asyncio.gather(*(singles(t) for t in range(100)), *(batches(t) for t in range(10)))
    assert len(heard) == 3 * (100 * 20 + 10 * 10 * 40)
    late = [(a, b) for a, b in pairwise(heard) if b <= a]
    assert not late, f"{len(late)} commits were announced after a later one, e.g. seq {late[0][1]} after {late[0][0]}"
