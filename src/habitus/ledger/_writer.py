"""The single writer: a thread that group-commits prepared batches.

Appenders prepare their rows on the event loop (ids, seqs, digests, leaf
hashes, the Merkle nodes they complete and any checkpoint due) and queue them
here. The writer takes what is queued, up to :data:`GROUP_EVENTS` events, and
writes it in one transaction, so many concurrent appenders share one commit
while the loop prepares the next batches. Futures resolve only after the
commit returns: an append is durable when it returns.

If a write fails, nothing of it is kept. Every batch prepared against the lost
seqs fails with :class:`~habitus.errors.StorageError`, and the sequencer is
reset (a new *generation*) so that seqs and the Merkle frontier are handed out
again from the last committed event.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from habitus.errors import HabitatClosedError, StorageError
from habitus.ledger._merkle import Frontier
from habitus.storage._abstract import CheckpointRow, LedgerStore, Row, WriteBatch
from habitus.storage._projections import Op

__all__ = ["GROUP_EVENTS", "INLINE_EVENTS", "INLINE_GROUP", "Batch", "Sequencer", "Writer"]

GROUP_EVENTS = 2048
"""Most events one group commit takes (a single larger batch is still one commit)."""

INLINE_EVENTS = 16
"""Largest batch that may be committed on the event loop instead of the writer thread."""

INLINE_GROUP = 256
"""Most events committed at once on the event loop; a larger group goes to the writer thread."""


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
        self._thread = threading.Thread(target=self._run, name="habitus-writer", daemon=True)
        self._thread.start()

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
        """
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

    def _commit(self, group: list[Batch], *, inline: bool = False) -> None:
        with self._seq.lock:
            generation = self._seq.generation
        stale = [b for b in group if b.generation != generation]
        live = [b for b in group if b.generation == generation]
        if stale:
            self._fail(
                stale, StorageError("an earlier write failed, so this append was not kept; retry it"), inline=inline
            )
        if not live:
            return
        rows: list[Row] = []
        edges: list[tuple[int, int]] = []
        nodes: list[tuple[int, int, bytes]] = []
        erase: list[int] = []
        ops: list[Op] = []
        checkpoint: CheckpointRow | None = None
        for batch in live:
            ops.extend(batch.ops)
            rows.extend(batch.rows)
            edges.extend(batch.edges)
            nodes.extend(batch.nodes)
            erase.extend(batch.erase)
            checkpoint = batch.checkpoint or checkpoint
        try:
            self._store.write(WriteBatch(rows, edges, nodes, checkpoint, erase, ops))
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any failure
            with self._seq.lock:
                self._seq.generation += 1
                self._seq.next_seq = self._seq.committed + 1
                self._seq.frontier = None  # rebuilt from the store before the next append
            error = exc if isinstance(exc, StorageError) else StorageError(f"writing the ledger failed: {exc!r}")
            self._fail(live, error, inline=inline)
            return
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
