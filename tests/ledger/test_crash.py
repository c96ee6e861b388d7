"""Crash safety: a writer killed with SIGKILL at a random moment loses no append it acknowledged.

A child process appends under load (singles and atomic batches of 1-200 events, some
caused by earlier events, from several asyncio tasks or threads at once) and prints the
seq and id of every event as soon as its append returns. The test kills it at a random
moment, reopens the habitat and checks what a user relies on: every acknowledged event
is there at the seq it was given, seqs have no gap, no batch is half-written, and the
ledger verifies. It does this again and again on the same habitat, which grows each time.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import IO

import pytest
from pydantic import JsonValue

from habitus import Event, Settings, SyncHabitat
from tests.ledger._procs import gone

SEED = 20_240_611
KILLS = 22
MIN_KILLS = 20
CHECKPOINT_EVERY = 500  # the child signs checkpoints often, so some kills land on one being written
START_TIMEOUT = 60.0

CHILD_CODE = r'''
import asyncio
import random
import sys
import threading
import time
from pathlib import Path

from habitus import Draft, Habitat, Settings, SyncHabitat

PATH, MODE, SEED, CHECKPOINT_EVERY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
WORKERS = 3
settings = Settings(path=Path(PATH), checkpoint_every=CHECKPOINT_EVERY, commit_process=sys.argv[5])
out = threading.Lock()
known = []  # ids this process may name as causes: a few from earlier lives, then its own


def report(events):
    """Print one line per event of an append that has returned, then flush."""
    text = "".join(f"{e.seq} {e.id}\n" for e in events)
    with out:
        sys.stdout.write(text)
        sys.stdout.flush()
    known.extend(e.id for e in events[-2:])


def plan(rng, w, n):
    def causes():
        if known and rng.random() < 0.3:
            return tuple(rng.choice(known) for _ in range(rng.randint(1, 3)))
        return ()

    kind = rng.choice(["note.recorded", "observation.recorded"])
    if rng.random() < 0.65:
        text = f"w{w} n{n} " + "x" * rng.randint(0, 300)
        return ("one", kind, text.encode() if rng.random() < 0.2 else text, causes())
    size = rng.choice([1, 2, 3, 5, 10, 20, rng.randint(1, 200)])
    tag = f"{w}/{n}"
    drafts = [
        Draft(kind=kind, actor=f"agent:w{w}", content={"b": tag, "i": i, "of": size}, causes=causes())
        for i in range(size)
    ]
    return ("many", drafts)


def say_started(ledger):
    """Say so once commits go where this life is meant to test them (with ``always``, the writer process)."""
    while settings.commit_process == "always" and ledger.writer_pid is None:
        time.sleep(0.01)
    with out:
        print("started", ledger.writer_pid or 0, flush=True)


async def run_tasks():
    hab = await Habitat.open(PATH, create=True, settings=settings)
    known.extend(e.id for e in (await hab.ledger.query(order="desc", limit=20)).events)
    threading.Thread(target=say_started, args=(hab.ledger,), daemon=True).start()

    async def worker(w):
        rng = random.Random(SEED * 100 + w)
        n = 0
        while True:
            n += 1
            p = plan(rng, w, n)
            if p[0] == "one":
                report([await hab.ledger.append(p[1], actor=f"agent:w{w}", content=p[2], causes=p[3])])
            else:
                report(await hab.ledger.append_many(p[1]))

    await asyncio.gather(*(worker(w) for w in range(WORKERS)))


def run_threads():
    hab = SyncHabitat.open(PATH, create=True, settings=settings)
    known.extend(e.id for e in hab.ledger.query(order="desc", limit=20).events)
    threading.Thread(target=say_started, args=(hab.ledger,), daemon=True).start()

    def worker(w):
        rng = random.Random(SEED * 100 + w)
        n = 0
        while True:
            n += 1
            p = plan(rng, w, n)
            if p[0] == "one":
                report([hab.ledger.append(p[1], actor=f"agent:w{w}", content=p[2], causes=p[3])])
            else:
                report(hab.ledger.append_many(p[1]))

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if MODE == "tasks":
    asyncio.run(run_tasks())
else:
    run_threads()
'''


class _Writer:
    """The child writer process, and a thread collecting what it reports on stdout."""

    def __init__(self, script: Path, habitat: Path, mode: str, seed: int, process: str, stderr: IO[str]) -> None:
        self._cond = threading.Condition()
        self.started = False
        self.writer_pid = 0  # the habitat's writer process, if commits went to one
        self.eof = False
        self.reported: list[tuple[int, uuid.UUID]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(habitat), mode, str(seed), str(CHECKPOINT_EVERY), process],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=script.parent,
        )
        self._reader = threading.Thread(target=self._read, name="crash-child-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if not line.endswith("\n"):
                    break  # cut short by the kill: that append was never fully acknowledged
                with self._cond:
                    if line.startswith("started "):
                        self.started = True
                        self.writer_pid = int(line.split()[1])
                    else:
                        seq, id_ = line.split()
                        self.reported.append((int(seq), uuid.UUID(id_)))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def wait_started(self, timeout: float) -> bool:
        """Wait for the child to say it has opened the habitat (False if it died or took too long)."""
        return self._wait_for(lambda: self.started, timeout)

    def wait_appended(self, timeout: float) -> bool:
        """Wait for the child to report its first returned append (False if it died or took too long)."""
        return self._wait_for(lambda: bool(self.reported), timeout)

    def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: predicate() or self.eof, timeout)
            return predicate()

    def kill(self) -> None:
        """SIGKILL the child, reap it, and read what it printed before it died."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _page_through(habitat: SyncHabitat, after: int) -> list[Event]:
    """Events after seq ``after``, oldest first, read one ``query`` page at a time."""
    events: list[Event] = []
    cursor: int | None = after or None
    while True:
        page = habitat.ledger.query(limit=2000, cursor=cursor)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


@pytest.mark.slow
@pytest.mark.parametrize("process", ["auto", "always"])
def test_sigkilled_writer_loses_no_acknowledged_append(tmp_path: Path, settings: Settings, process: str) -> None:
    """With ``always`` the commits are made by a writer process, which must die with the habitat's."""
    rng = random.Random(SEED)  # the kill moments and the children's seeds
    sampler = random.Random(SEED + 1)  # which acknowledged events are fetched with get()
    script = tmp_path / "crash_child.py"
    script.write_text(CHILD_CODE, encoding="utf-8")
    where = settings.path
    acknowledged: dict[int, uuid.UUID] = {}  # seq -> id, of every append a child saw return
    counts = [0]
    last_id: uuid.UUID | None = None  # the event at seq counts[-1]
    kills = 0
    for life in range(KILLS):
        mode = "tasks" if life % 2 == 0 else "threads"
        delay = rng.uniform(0.05, 0.6)
        child_seed = rng.randrange(1 << 30)
        ctx = f"seed {SEED}, kill #{life} ({mode}, child seed {child_seed}, {delay:.3f}s after start)"
        stderr_path = tmp_path / f"child-{life}.stderr"
        with stderr_path.open("w", encoding="utf-8") as stderr:
            child = _Writer(script, where, mode, child_seed, process, stderr)
            try:
                started = child.wait_started(START_TIMEOUT)
                if started:
                    time.sleep(delay)  # not a synchronisation: this is the random moment of the crash
                # A kill before any append returned would check nothing; the first reported line says one did.
                appended = started and child.wait_appended(START_TIMEOUT)
            finally:
                child.kill()
        errors = stderr_path.read_text(encoding="utf-8")
        assert started, f"{ctx}: the child never said it had opened the habitat:\n{errors}"
        assert appended, f"{ctx}: the child reported no returned append:\n{errors}"
        assert child.proc.returncode == -signal.SIGKILL, f"{ctx}: the child died by itself:\n{errors}"
        if process == "always":
            assert child.writer_pid, f"{ctx}: commits never went to a writer process"
            assert gone(child.writer_pid), f"{ctx}: the writer process outlived its habitat"
        kills += 1

        reported = dict(child.reported)
        assert len(reported) == len(child.reported), f"{ctx}: two returned events were given the same seq"
        previous = counts[-1]
        # The lock died with the child, so the habitat opens for writing at once.
        with SyncHabitat.open(where, settings=settings) as hab:
            count = hab.ledger.count()
            assert count > previous, f"{ctx}: the ledger did not grow ({previous} -> {count})"
            assert min(reported) > previous, f"{ctx}: an append was given a seq that an earlier life had used"
            assert max(reported) <= count, f"{ctx}: seq {max(reported)} was acknowledged but the ledger has {count}"

            # Seqs are gap-free: the earlier lives' part was checked before (and verify() rechecks it
            # all below), so walk the part this life added, and check the seam with the earlier part.
            added = _page_through(hab, previous)
            assert [e.seq for e in added] == list(range(previous + 1, count + 1)), f"{ctx}: seqs have a gap"
            if previous:
                assert hab.ledger.get_seq(previous).id == last_id, f"{ctx}: the event at seq {previous} changed"

            # Every acknowledged event is there, at the seq its append returned.
            for seq, id_ in reported.items():
                assert added[seq - previous - 1].id == id_, f"{ctx}: acknowledged event {id_} (seq {seq}) is lost"
            latest = sorted(reported)[-100:]  # the appends closest to the crash are the ones at risk
            for seq in [*latest, *sampler.sample(sorted(reported), min(100, len(reported)))]:
                assert hab.ledger.get(reported[seq]).seq == seq, f"{ctx}: get() does not find seq {seq}"

            # Batches are atomic: a batch the crash interrupted is either all there or not there at all.
            batches: dict[str, list[tuple[int, JsonValue, JsonValue]]] = {}
            for event in added:
                if isinstance(event.content, dict):
                    tag, i, size = event.content["b"], event.content["i"], event.content["of"]
                    batches.setdefault(str(tag), []).append((event.seq, i, size))
            for tag, members in batches.items():
                seqs, positions, sizes = zip(*members, strict=True)
                assert positions == tuple(range(len(members))), f"{ctx}: batch {tag} is out of order: {positions}"
                assert sizes[0] == len(members), f"{ctx}: batch {tag} of {sizes[0]} events kept only {len(members)}"
                assert seqs[-1] - seqs[0] == len(members) - 1, f"{ctx}: batch {tag} is not contiguous"

            report = hab.ledger.verify()
            assert report.ok, f"{ctx}: verify() found {report.problems}"
            assert report.events == count, ctx
            last_id = added[-1].id
        acknowledged.update(reported)
        counts.append(count)

    assert kills >= MIN_KILLS, f"seed {SEED}: only {kills} kills"
    assert all(a < b for a, b in pairwise(counts)), f"seed {SEED}: growth {counts}"

    # Finally, over the whole ledger that survived all those crashes: 1..count with no gap, every
    # acknowledged event at its seq, and no id twice.
    with SyncHabitat.open(where, read_only=True, settings=settings) as hab:
        everything = _page_through(hab, 0)
        assert [e.seq for e in everything] == list(range(1, counts[-1] + 1)), f"seed {SEED}: seqs have a gap"
        assert len({e.id for e in everything}) == len(everything), f"seed {SEED}: an id appears twice"
        lost = [seq for seq, id_ in acknowledged.items() if everything[seq - 1].id != id_]
        assert not lost, f"seed {SEED}: acknowledged events lost at seqs {lost[:10]}"
        assert hab.ledger.verify().ok, f"seed {SEED}"
