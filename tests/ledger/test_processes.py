"""Two processes on one habitat: one writer at a time, readers alongside it, and the lock dies with its holder.

A child process opens the habitat for writing and takes orders on stdin; it answers
on stdout once each order is done, so the test never guesses when something happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest

from habitus import Draft, Event, Habitat, Page, Settings, SyncHabitat
from habitus.errors import HabitatLockedError, ReadOnlyHabitatError

SEED = 20_240_611
LINE_TIMEOUT = 60.0

CHILD_CODE = r"""
import random
import sys
import threading
from pathlib import Path

from habitus import Draft, Settings, SyncHabitat

PATH, MODE = sys.argv[1], sys.argv[2]


def say(*words):
    print(*words, flush=True)


hab = SyncHabitat.open(PATH, create=True, settings=Settings(path=Path(PATH), checkpoint_every=1000))
ledger = hab.ledger
ledger.append_many([Draft(kind="note.recorded", actor="agent:holder", content=f"seed {i}") for i in range(10)])
say("ready", ledger.count())

if MODE == "hold":
    # Hold the habitat open for writing, appending one event whenever asked.
    for line in sys.stdin:
        if line.strip() == "append":
            event = ledger.append("note.recorded", actor="agent:holder", content="one more")
            say("appended", event.seq, event.id)
        elif line.strip() == "quit":
            break
else:
    # Write continuously from three threads until told to stop.
    stop = threading.Event()
    first = threading.Event()

    def worker(w):
        rng = random.Random(w)
        n = 0
        while not stop.is_set():
            n += 1
            if rng.random() < 0.5:
                ledger.append("observation.recorded", actor=f"agent:w{w}", content=f"{w}/{n}")
            else:
                size = rng.randint(1, 200)
                ledger.append_many(
                    [Draft(kind="note.recorded", actor=f"agent:w{w}", content={"n": n, "i": i}) for i in range(size)]
                )
            first.set()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    first.wait()
    say("writing")
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()
    for t in threads:
        t.join()

count = ledger.count()
hab.close()
say("closed", count)
"""


class _Child:
    """A child process holding the habitat for writing, driven through its stdin and stdout."""

    def __init__(self, tmp_path: Path, habitat: Path, mode: str) -> None:
        script = tmp_path / "writer_child.py"
        script.write_text(CHILD_CODE, encoding="utf-8")
        self._stderr_path = tmp_path / f"child-{mode}-{time.monotonic_ns()}.stderr"
        self._stderr: IO[str] = self._stderr_path.open("w", encoding="utf-8")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(habitat), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=tmp_path,
        )
        self._reader = threading.Thread(target=self._read, name="writer-child-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        finally:
            self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def errors(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text(encoding="utf-8")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str) -> list[str]:
        """Wait for the child's next line, which must start with ``word``; return the rest of it."""
        try:
            line = self._lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            line = f"<nothing for {LINE_TIMEOUT}s>"
        assert line is not None, (
            f"the child exited (rc {self.proc.poll()}) instead of saying {word!r}:\n{self.errors()}"
        )
        first, *rest = line.split()
        assert first == word, f"the child said {line!r}, expected {word!r}:\n{self.errors()}"
        return rest

    def finish(self, command: str) -> int:
        """Tell the child to close the habitat and exit; return the count it had when it closed."""
        self.send(command)
        count = int(self.expect("closed")[0])
        assert self.proc.wait(timeout=LINE_TIMEOUT) == 0, self.errors()
        return count

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=LINE_TIMEOUT)

    def __enter__(self) -> _Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=LINE_TIMEOUT)
            self._reader.join(timeout=LINE_TIMEOUT)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()


def _files(where: Path) -> dict[str, str]:
    """Every file in the habitat directory, by name, with a digest of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(where.iterdir()) if p.is_file()}


def _check_page(page: Page, after: int, limit: int) -> None:
    """A page read while another process writes is whole: seqs after+1, after+2, ... with no gap."""
    seqs = [e.seq for e in page.events]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), f"page after seq {after} has a gap: {seqs}"
    if page.next_cursor is not None:
        assert len(seqs) == limit, f"a page after seq {after} says there is more but holds {len(seqs)} of {limit}"
        assert page.next_cursor == seqs[-1]


def _all_events(habitat: SyncHabitat) -> list[Event]:
    events: list[Event] = []
    cursor: int | None = None
    while True:
        page = habitat.ledger.query(limit=5000, cursor=cursor)
        _check_page(page, cursor or 0, 5000)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


def test_second_writer_is_refused_while_another_process_writes(tmp_path: Path, settings: Settings) -> None:
    where = settings.path
    with _Child(tmp_path, where, "hold") as child:
        ready = int(child.expect("ready")[0])
        before = _files(where)

        with pytest.raises(HabitatLockedError) as refused:
            SyncHabitat.open(where, settings=settings)
        message = str(refused.value)
        assert str(where) in message, f"the error does not name the habitat: {message}"
        assert str(child.pid) in message, f"the error does not name the process holding it: {message}"
        with pytest.raises(HabitatLockedError):
            SyncHabitat.open(where, create=True, settings=settings)
        with pytest.raises(HabitatLockedError):
            asyncio.run(Habitat.open(where, settings=settings))

        assert _files(where) == before, "a refused open changed the habitat's files"
        # The holder is unaffected: it still writes, and still holds the lock.
        child.send("append")
        seq, id_ = child.expect("appended")
        assert int(seq) == ready + 1
        with pytest.raises(HabitatLockedError):
            SyncHabitat.open(where, settings=settings)
        closed = child.finish("quit")

    with SyncHabitat.open(where, read_only=True, settings=settings) as hab:
        assert hab.ledger.count() == closed == ready + 1
        assert hab.ledger.get(id_).seq == ready + 1
        assert hab.ledger.verify().ok
    # Once the holder has exited, this process may write.
    with SyncHabitat.open(where, settings=settings) as hab:
        assert hab.ledger.append("note.recorded", actor="human:ada", content="mine now").seq == closed + 1


def test_reader_sees_a_growing_gap_free_ledger_while_another_process_writes(tmp_path: Path, settings: Settings) -> None:
    rng = random.Random(SEED)
    where = settings.path
    seen: dict[int, uuid.UUID] = {}  # every event any page showed, by seq
    counts: list[int] = [0]
    walks = 0
    with _Child(tmp_path, where, "write") as child:
        child.expect("ready")
        child.expect("writing")
        with SyncHabitat.open(where, read_only=True, settings=settings) as reader:
            deadline = time.monotonic() + LINE_TIMEOUT
            # Keep reading until the reader has watched the ledger grow many times under it.
            while len(set(counts)) < 40 or walks < 40:
                assert time.monotonic() < deadline, f"seed {SEED}: the reader saw only counts {sorted(set(counts))}"
                count = reader.ledger.count()
                assert count >= counts[-1], f"seed {SEED}: count() went back from {counts[-1]} to {count}"
                counts.append(count)
                # Page through part of the ledger: from the start, or from a random point, a few pages.
                cursor = 0 if walks % 3 == 0 else rng.randrange(count)
                limit = rng.choice([1, 7, 100, 500])
                for _ in range(5):
                    page = reader.ledger.query(limit=limit, cursor=cursor or None)
                    _check_page(page, cursor, limit)
                    after = reader.ledger.count()
                    assert after >= counts[-1], f"seed {SEED}: count() went back from {counts[-1]} to {after}"
                    counts.append(after)
                    if page.events:
                        assert page.events[-1].seq <= after, f"seed {SEED}: a page showed an uncommitted event"
                    seen.update((e.seq, e.id) for e in page.events)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                walks += 1

            final = child.finish("stop")
            # The writer is gone; the reader, still open, sees everything it committed.
            assert reader.ledger.count() == final
            assert final > counts[-1] > counts[0]
            everything = _all_events(reader)
            assert [e.seq for e in everything] == list(range(1, final + 1))
            changed = [seq for seq, id_ in seen.items() if everything[seq - 1].id != id_]
            assert not changed, f"seed {SEED}: events the reader saw were later different, at seqs {changed[:10]}"
            report = reader.ledger.verify()
            assert report.ok, report.problems
            assert report.events == final


def test_read_only_habitat_refuses_appends(tmp_path: Path, settings: Settings) -> None:
    where = settings.path
    with _Child(tmp_path, where, "hold") as child:
        ready = int(child.expect("ready")[0])
        with SyncHabitat.open(where, read_only=True, settings=settings) as hab:
            with pytest.raises(ReadOnlyHabitatError, match="read-only"):
                hab.ledger.append("note.recorded", actor="human:ada", content="not allowed")
            with pytest.raises(ReadOnlyHabitatError, match="read-only"):
                hab.ledger.append_many([Draft(kind="note.recorded", actor="human:ada", content="nor this")])

            async def async_twin() -> None:
                async with await Habitat.open(where, read_only=True, settings=settings) as ahab:
                    with pytest.raises(ReadOnlyHabitatError):
                        await ahab.ledger.append("observation.recorded", actor="human:ada", content="nor async")
                    assert await ahab.ledger.count() == ready

            asyncio.run(async_twin())
            assert hab.ledger.count() == ready
            # The writer's appends are unaffected, and the reader sees them.
            child.send("append")
            seq = int(child.expect("appended")[0])
            assert hab.ledger.count() == seq == ready + 1
            with pytest.raises(ReadOnlyHabitatError):
                hab.ledger.append("note.recorded", actor="human:ada", content="still not allowed")
        assert child.finish("quit") == ready + 1


def test_killed_writer_releases_the_lock_at_once(tmp_path: Path, settings: Settings) -> None:
    where = settings.path
    with _Child(tmp_path, where, "hold") as child:
        child.expect("ready")
        child.send("append")
        seq, id_ = child.expect("appended")
        with pytest.raises(HabitatLockedError):
            SyncHabitat.open(where, settings=settings)
        child.sigkill()
        assert child.proc.returncode == -signal.SIGKILL

    # No retry and no wait: the kernel dropped the dead process's lock.
    with SyncHabitat.open(where, settings=settings) as hab:
        assert hab.ledger.get(id_).seq == int(seq)
        event = hab.ledger.append("note.recorded", actor="human:ada", content="after the crash")
        assert event.seq == int(seq) + 1
        assert hab.ledger.verify().ok

    # A new writer process can take over as well.
    with _Child(tmp_path, where, "hold") as second:
        assert int(second.expect("ready")[0]) == event.seq + 10
        assert second.finish("quit") == event.seq + 10
    with SyncHabitat.open(where, read_only=True, settings=settings) as hab:
        assert hab.ledger.get(event.id).content == "after the crash"
        assert hab.ledger.verify().ok
