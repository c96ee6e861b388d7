"""The single writer: a thread that group-commits prepared batches.

Appenders prepare their rows on the event loop (ids, seqs, digests, leaf
hashes, the Merkle nodes they complete and any checkpoint due) and queue them
here. The writer takes what is queued, up to :data:`GROUP_EVENTS` events, and
writes it in one transaction, so many concurrent appenders share one commit
while the loop prepares the next batches. Futures resolve only after the
commit returns: an append is durable when it returns.

Under sustained load (or always, if asked) the commits move to a writer
*process* (see :mod:`habitus.ledger._committer`): the loop sends each group
there itself and resolves it when the reply arrives, so commits run beside the
agents on another core instead of taking turns with them for the GIL.

If a write fails, nothing of it is kept. Every batch prepared against the lost
seqs fails with :class:`~habitus.errors.StorageError`, and the sequencer is
reset (a new *generation*) so that seqs and the Merkle frontier are handed out
again from the last committed event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from habitus.errors import HabitatClosedError, StorageError
from habitus.ledger._committer import ChildCommitter
from habitus.ledger._merkle import Frontier
from habitus.storage._abstract import CheckpointRow, LedgerStore, ProcessWritable, Row, WriteBatch
from habitus.storage._projections import Op
from habitus.storage._wire import FAILED, OK, READY, STALE_MESSAGE, Reply, encode

__all__ = [
    "GROUP_EVENTS",
    "INLINE_EVENTS",
    "INLINE_GROUP",
    "PIECE_EVENTS",
    "PROCESS_AFTER",
    "Batch",
    "CommitProcess",
    "Sequencer",
    "Writer",
]

log = logging.getLogger("habitus.ledger")

CommitProcess = Literal["auto", "always", "never"]
"""When commits move to a writer process: under sustained load, from the start, or never."""

GROUP_EVENTS = 2048
"""Most events one group commit takes (a single larger batch is still one commit)."""

INLINE_EVENTS = 16
"""Largest batch that may be committed on the event loop instead of the writer thread."""

INLINE_GROUP = 256
"""Most events committed at once on the event loop; a larger group goes to the writer thread."""

PROCESS_AFTER = 3
"""With ``commit_process="auto"``: thread commits of more than INLINE_GROUP events before a writer process starts."""

PIECE_EVENTS = 128
"""With a writer process, a loop iteration's group is sent in pieces of about this many events.

The first piece commits while the loop seals the rest, and its transactions go on
while later pieces commit, so the loop and the writer process work at the same
time instead of in turns.
"""


class Sequencer:
    """The append-side state: next seq, last commit time, the frontier of the tree.

    Shared by the loop (which hands out seqs) and the writer (which resets it
    after a failed write); both hold ``lock`` while touching it.
    """

    def __init__(self, committed: int, last_ts: int, frontier: Frontier, last_checkpoint: int) -> None:
        self.lock = threading.Lock()
        self.next_seq = committed + 1
        self.committed = committed
        self.last_ts = last_ts
        self.frontier: Frontier | None = frontier
        self.last_checkpoint = last_checkpoint
        self.generation = 0


@dataclass(slots=True)
class Batch:
    """What one append prepared, with the future to resolve when it is committed."""

    generation: int
    rows: list[Row]
    edges: list[tuple[int, int]]
    nodes: list[tuple[int, int, bytes]]
    future: asyncio.Future[None]
    checkpoint: CheckpointRow | None = None
    erase: list[int] = field(default_factory=list)
    scrub: bool = False
    scrubbed: bool = False
    ops: list[Op] = field(default_factory=list)
    # Futures of the transactions sealed into this batch, resolved with ``future`` (each has its
    # own: cancelling one waiting transaction must not cancel the others).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Writer:
    """Owns the write side of a store on a dedicated thread."""

    def __init__(
        self,
        store: LedgerStore,
        sequencer: Sequencer,
        *,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[list[Batch]], None],
        inline: bool = True,
        process: CommitProcess = "never",
    ) -> None:
        self._store = store
        self._seq = sequencer
        self._loop = loop
        self._on_commit = on_commit
        self._queue: list[Batch] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._writing = False  # a group is being written (by the thread or inline on the loop)
        self._flush_pending = False
        # Groups the thread committed whose futures and listeners have not run on the loop yet. An
        # inline commit must wait for them, or listeners would hear of commits out of order.
        self._unannounced = 0
        self._flush_deferred = False
        self._inline = inline
        # The writer process, once started; ``_active`` once it takes every commit (see _take_over).
        self._process: CommitProcess = process if isinstance(store, ProcessWritable) else "never"
        self._child: ChildCommitter | None = None
        self._child_ready = False
        self._active = False
        self._outbox: list[Batch] = []
        self._send_scheduled = False
        self._inflight: deque[tuple[list[Batch], int | None]] = deque()
        self._drained: asyncio.Future[None] | None = None
        self._child_dirty = False
        self._big_commits = 0
        self._thread = threading.Thread(target=self._run, name="habitus-writer", daemon=True)
        self._thread.start()
        if self._process == "always":
            self._spawn()

    @property
    def piece_events(self) -> int | None:
        """How many events a sealed group is split into pieces of, or None to send it whole."""
        return PIECE_EVENTS if self._active else None

    @property
    def process_pid(self) -> int | None:
        """The writer process's pid while every commit goes to it, else None."""
        return self._child.pid if self._active and self._child is not None else None

    def submit(self, batch: Batch, *, group: bool = False) -> None:
        """Queue a prepared batch; its future resolves after its commit.

        Small batches are not handed to the writer thread at once: a callback at
        the end of this loop iteration commits everything queued by then, on the
        loop itself, when the writer is idle and the group is small. A lone
        append then skips two thread hops (about 60 of its 125 µs), and appenders
        that run in the same iteration still share one commit. Larger batches go
        straight to the writer thread, which overlaps writing with the loop.

        ``group`` marks the transactions that reached their commit in this loop
        iteration, sealed together at its end (see ``Ledger.transaction``): they
        are flushed at once, inline if they are at most :data:`INLINE_GROUP` events.

        Futures and commit listeners run in commit order: an inline commit waits
        until the groups the thread committed before it have been announced.

        Once a writer process has taken over, every batch goes to it instead: a
        group at once, anything else at the end of this loop iteration.
        """
        if self._active or (self._child_ready and self._take_over()):
            if self._stopping:
                raise HabitatClosedError("the ledger is closed; open the habitat again to write")
            self._outbox.append(batch)
            if group or batch.scrub:
                self._send()
            elif not self._send_scheduled:
                self._send_scheduled = True
                self._loop.call_soon(self._send)
            return
        with self._cond:
            if self._stopping:
                raise HabitatClosedError("the ledger is closed; open the habitat again to write")
            self._queue.append(batch)
            limit = INLINE_GROUP if group else INLINE_EVENTS
            if not (self._inline and not batch.scrub and len(batch.rows) <= limit):
                self._cond.notify()
                return
            if group:
                self._flush_pending = False  # this flush takes whatever a pending one would have
            elif self._flush_pending:
                return
            else:
                self._flush_pending = True
        if group:
            self._flush()
        else:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commit what is queued on the loop thread if the writer is idle and the group small."""
        with self._cond:
            self._flush_pending = False
            if not self._queue:
                return
            if self._unannounced and not self._stopping:
                self._flush_deferred = True  # _announce flushes once the thread's commits are announced
                return
            small = sum(len(b.rows) for b in self._queue) <= INLINE_GROUP and not any(b.scrub for b in self._queue)
            if self._writing or self._stopping or not small:
                self._cond.notify()
                return
            group = self._take()
            self._writing = True
        try:
            self._commit(group, inline=True)
        finally:
            with self._cond:
                self._writing = False
                if self._queue or self._stopping:
                    self._cond.notify()

    def stop(self) -> None:
        """Commit what is queued and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._writing or (not self._queue and not self._stopping):
                    self._cond.wait()
                group = self._take()
                done = self._stopping and not group
                self._writing = bool(group)
            if done:
                return
            try:
                self._commit(group)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _take(self) -> list[Batch]:
        """Take queued batches up to :data:`GROUP_EVENTS` events (at least one batch).

        Capping the group keeps a pipeline: while this group is written, the
        appenders whose batches committed earlier prepare their next ones.
        """
        taken = 0
        count = 0
        for batch in self._queue:
            if count and taken + len(batch.rows) > GROUP_EVENTS:
                break
            taken += len(batch.rows)
            count += 1
        group = self._queue[:count]
        del self._queue[:count]
        return group

    def _fail(self, batches: list[Batch], error: BaseException, *, inline: bool = False) -> None:
        def fail() -> None:
            for batch in batches:
                for future in (batch.future, *batch.waiters):
                    if not future.done():
                        future.set_exception(error)

        if inline:
            fail()
        else:
            self._loop.call_soon_threadsafe(fail)

    def _live(self, batches: list[Batch], *, inline: bool) -> tuple[int, list[Batch]]:
        """The current generation and the batches prepared in it; the others (stale) fail."""
        with self._seq.lock:
            generation = self._seq.generation
        live = [b for b in batches if b.generation == generation]
        if len(live) < len(batches):
            stale = [b for b in batches if b.generation != generation]
            self._fail(stale, StorageError(STALE_MESSAGE), inline=inline)
        return generation, live

    def _commit(self, group: list[Batch], *, inline: bool = False) -> None:
        _, live = self._live(group, inline=inline)
        if not live:
            return
        write = _merge(live)
        rows = write.rows
        try:
            self._store.write(write)
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any failure
            self._restart_seqs()
            error = exc if isinstance(exc, StorageError) else StorageError(f"writing the ledger failed: {exc!r}")
            self._fail(live, error, inline=inline)
            return
        if not inline and len(rows) > INLINE_GROUP and self._process == "auto":
            self._big_commits += 1
            if self._big_commits == PROCESS_AFTER:
                self._loop.call_soon_threadsafe(self._spawn)
        if rows:
            with self._seq.lock:
                self._seq.committed = rows[-1][0]
        for batch in live:
            if batch.scrub:
                try:
                    batch.scrubbed = self._store.scrub()
                except StorageError:
                    batch.scrubbed = False
        if inline:
            self._resolve(live)
        else:
            with self._cond:
                self._unannounced += 1
            self._loop.call_soon_threadsafe(self._announce, live)

    def _restart_seqs(self) -> None:
        """After a failed write: a new generation, seqs handed out again from the last committed event."""
        with self._seq.lock:
            self._seq.generation += 1
            self._seq.next_seq = self._seq.committed + 1
            self._seq.frontier = None  # rebuilt from the store before the next append

    def _announce(self, batches: list[Batch]) -> None:
        """Resolve a group the thread committed (on the loop, in commit order), then any deferred flush."""
        try:
            self._resolve(batches)
        finally:
            with self._cond:
                self._unannounced -= 1
                flush = self._flush_deferred and not self._unannounced
                if flush:
                    self._flush_deferred = False
            if flush:
                self._flush()

    def _resolve(self, batches: list[Batch]) -> None:
        for batch in batches:
            if not batch.future.done():
                batch.future.set_result(None)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._on_commit(batches)

    # -- the writer process ------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start the writer process (on the loop); commits move to it once it is ready and the thread is idle."""
        if self._child is not None or self._stopping or not isinstance(self._store, ProcessWritable):
            return
        child = ChildCommitter(self._store, self._loop, on_reply=self._on_reply, on_lost=self._child_lost)
        try:
            child.start()
        except (OSError, ValueError) as exc:  # ValueError: no pass_fds on this platform
            log.warning("could not start a writer process, commits stay on the writer thread: %s", exc)
            self._process = "never"
            return
        self._child = child

    def _take_over(self) -> bool:
        """Hand every commit to the ready writer process, once the thread has nothing written unannounced."""
        with self._cond:
            if self._writing or self._unannounced or self._stopping:
                return False
            self._outbox.extend(self._queue)  # queued for the thread, not taken yet: they go first
            self._queue.clear()
            self._flush_pending = False
            self._active = True
        if isinstance(self._store, ProcessWritable):
            self._store.hand_over_writes()
        log.debug("commits now go to the writer process")
        if self._outbox and not self._send_scheduled:
            self._send_scheduled = True  # what the thread had not taken yet must not wait for another submit
            self._loop.call_soon(self._send)
        return True

    def _send(self) -> None:
        """Send everything in the outbox to the writer process as one commit."""
        self._send_scheduled = False
        if self._child is None:
            return  # lost: _child_lost moved the outbox to the thread
        batches, self._outbox = self._outbox, []
        if not batches:
            return
        generation, live = self._live(batches, inline=True)
        if not live:
            return
        write = _merge(live)
        scrub = any(b.scrub for b in live)
        dirty = scrub and isinstance(self._store, ProcessWritable) and self._store.take_fulltext_dirty()
        data = encode(write, generation=generation, scrub=scrub, fulltext_dirty=dirty)
        self._inflight.append((live, write.rows[-1][0] if write.rows else None))
        self._child.send(data)

    def _on_reply(self, reply: Reply) -> None:
        code, error, scrubbed, dirty = reply
        if code == READY:
            self._child_ready = True
            self._take_over()  # if the thread is busy now, a later submit takes over
            return
        if not self._inflight:  # it could not open the file; it exits, and _child_lost follows
            log.warning("the writer process failed before it took any commit: %s", error)
            return
        live, last = self._inflight.popleft()
        self._child_dirty = dirty
        if code == OK:
            if last is not None:
                with self._seq.lock:
                    self._seq.committed = last
            for batch in live:
                batch.scrubbed = batch.scrub and scrubbed
            self._resolve(live)
        else:
            if code == FAILED:
                self._restart_seqs()  # the process refuses the rest of this generation itself
            self._fail(live, StorageError(error), inline=True)
        if not self._inflight and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _child_lost(self, reason: str) -> None:
        """The writer process is gone: settle what it was sent by what the file holds, go back to the thread."""
        was_active = self._active
        self._child, self._child_ready, self._active, self._process = None, False, False, "never"
        inflight, self._inflight = list(self._inflight), deque()
        if not was_active and not inflight:
            return  # it never took a commit: the thread simply keeps them
        log.warning("the writer process was lost (%s); commits go back to the writer thread", reason)
        if isinstance(self._store, ProcessWritable):
            self._store.adopt_writes(fulltext_dirty=True)  # it may have deleted memories and not scrubbed
        try:
            size = self._store.size()
        except StorageError as exc:
            size, reason = -1, f"{reason}; reading the ledger back failed too: {exc}"
        landed = max((i for i, (_, last) in enumerate(inflight) if last is not None and last <= size), default=-1)
        if inflight:
            with self._seq.lock:
                self._seq.committed = max(self._seq.committed, size)
        for live, _ in inflight[: landed + 1]:
            self._resolve(live)
        lost = [batch for live, _ in inflight[landed + 1 :] for batch in live]
        if lost:
            self._restart_seqs()
            error = StorageError(f"the writer process was lost, so this append was not kept: {reason}")
            self._fail(lost, error, inline=True)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        # Batches still in the outbox go to the thread; any prepared against lost seqs fail there as stale.
        outbox, self._outbox = self._outbox, []
        if outbox:
            with self._cond:
                self._queue[:0] = outbox
                self._cond.notify()

    async def retire_process(self) -> None:
        """Send what is left to the writer process, wait for its replies and end it (before :meth:`stop`)."""
        child = self._child
        if child is None:
            return
        while (self._inflight or self._outbox) and self._child is child:
            self._send()
            if self._inflight:
                self._drained = self._loop.create_future()
                await self._drained
        self._drained = None
        if self._child is child:  # nothing in flight or waiting: later commits go to the thread
            self._child, self._child_ready, self._active, self._process = None, False, False, "never"
            if isinstance(self._store, ProcessWritable):
                self._store.adopt_writes(fulltext_dirty=self._child_dirty)
            await child.close()


def _merge(batches: list[Batch]) -> WriteBatch:
    """One write of several batches, in order."""
    if len(batches) == 1:
        b = batches[0]
        return WriteBatch(b.rows, b.edges, b.nodes, b.checkpoint, b.erase, b.ops)
    rows: list[Row] = []
    edges: list[tuple[int, int]] = []
    nodes: list[tuple[int, int, bytes]] = []
    erase: list[int] = []
    ops: list[Op] = []
    checkpoint: CheckpointRow | None = None
    for batch in batches:
        ops.extend(batch.ops)
        rows.extend(batch.rows)
        edges.extend(batch.edges)
        nodes.extend(batch.nodes)
        erase.extend(batch.erase)
        checkpoint = batch.checkpoint or checkpoint
    return WriteBatch(rows, edges, nodes, checkpoint, erase, ops)
