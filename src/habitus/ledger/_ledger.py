"""The causal ledger: append, query, walk causes, prove, verify, erase."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from habitus.errors import (
    EventNotFoundError,
    HabitatClosedError,
    HabitatError,
    InvalidRequestError,
    ReadOnlyHabitatError,
    UnknownKindError,
)
from habitus.ledger import _core_kinds  # noqa: F401  (registers the core kinds)
from habitus.ledger._codec import from_micros, to_micros
from habitus.ledger._graph import walk
from habitus.ledger._kinds import all_kinds, get_kind
from habitus.ledger._merkle import consistency_proof, inclusion_proof
from habitus.ledger._models import (
    Checkpoint,
    ConsistencyProof,
    Draft,
    Erasure,
    Event,
    InclusionProof,
    Page,
    Subgraph,
    VerifyReport,
)
from habitus.ledger._prepare import LedgerLimits, Preparer, load_head
from habitus.ledger._proofs import StoreNodes
from habitus.ledger._rows import CommittedEvents, EventRef, RawDraft, as_uuid, draft_of, event_from_row
from habitus.ledger._signing import Signer
from habitus.ledger._transaction import Transaction
from habitus.ledger._verify import verify_store
from habitus.ledger._writer import Batch, Sequencer, Writer
from habitus.storage._abstract import CheckpointRow, EventQuery, LedgerStore, Row
from habitus.storage._projections import Op

__all__ = ["Ledger"]


class _Group:
    """Transactions that reached their commit in the same loop iteration, sealed and written as one batch.

    Each transaction stays its own unit: its events were checked when staged, and a block that
    raised never joins. Sealing them together saves the fixed cost of a seal, a batch and a round
    of commit listeners per transaction, which is most of a small transaction's cost; they were
    going to share one SQLite commit anyway (see :meth:`Writer.submit`).
    """

    __slots__ = ("checked", "ids", "known", "ops", "rows", "sizes", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []  # one per transaction (see Batch.waiters)
        self.sizes: list[tuple[int, int]] = []  # each transaction's (events, ops), to cut it into pieces
        self.checked: list[tuple[Any, ...]] = []
        self.ids: list[bytes] = []
        self.known: dict[bytes, int] = {}
        self.ops: list[Op] = []
        self.rows: list[Row] = []


class TransactionScope:
    """``async with ledger.transaction() as tx:`` — commits the staged events when the block ends.

    (A class rather than an async generator: the runtime opens one per delivered message.)
    """

    __slots__ = ("_ledger", "_tx")

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._tx = Transaction(ledger._prep)

    async def __aenter__(self) -> Transaction:
        return self._tx

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            return  # the block failed: nothing staged is written
        tx = self._tx
        checked, ids, ops = tx._parts()
        if not checked and not ops:
            tx._done(CommittedEvents([]))
            return
        ledger = self._ledger
        known = ledger._prep.known_causes(checked, ids)
        if known is None:  # a cause this process has not seen lately: look it up in the store
            known = await ledger._prep.check_causes(checked, ids)
        group = ledger._join_group()
        start = len(group.checked)
        group.checked += checked
        group.ids += ids
        group.ops += ops
        group.sizes.append((len(checked), len(ops)))
        if known:
            group.known.update(known)
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group.waiters.append(committed)
        await committed
        tx._done(CommittedEvents(group.rows[start : start + len(checked)]))


def _pieces(sizes: list[tuple[int, int]], events: int) -> list[tuple[int, int, int, int, int, int]]:
    """Cut a group at transaction boundaries into pieces of at least ``events`` events (the last may be smaller).

    Each piece is ``(first tx, end tx, first event, end event, first op, end op)``.
    """
    out = []
    t0 = e0 = o0 = e = o = 0
    for t, (n_events, n_ops) in enumerate(sizes):
        e += n_events
        o += n_ops
        if e - e0 >= events:
            out.append((t0, t + 1, e0, e, o0, o))
            t0, e0, o0 = t + 1, e, o
    if t0 < len(sizes):
        out.append((t0, len(sizes), e0, e, o0, o))
    return out


class Ledger:
    """The habitat's causal, tamper-evident event ledger (async API).

    Obtain one from :attr:`habitus.Habitat.ledger`; it is not constructed directly.
    Every method is safe to call from many tasks at once.
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        signer: Signer | None,
        public_key: str,
        limits: LedgerLimits,
    ) -> None:
        self._store = store
        self._public_key = public_key
        self._limits = limits
        self._prep = Preparer(store, signer=signer, limits=limits)
        self._writer: Writer | None = None
        self._committed: asyncio.Future[None] | None = None
        self._listeners: list[Callable[[Sequence[Op], Sequence[Row]], None]] = []
        self._group: _Group | None = None

    async def _start(self) -> None:
        """Load the tree head and start the writer (read-only ledgers start no writer)."""
        size, last_ts, frontier, last_cp = await asyncio.to_thread(load_head, self._store)
        self._prep.sequencer = sequencer = Sequencer(size, last_ts, frontier, last_cp)
        if not self._store.read_only:
            self._writer = Writer(
                self._store,
                sequencer,
                loop=asyncio.get_running_loop(),
                on_commit=self._on_commit,
                inline=self._limits.inline_commits,
                process=self._limits.commit_process,
            )

    async def _close(self) -> None:
        """Sign a final checkpoint if the tree grew since the last one, then stop the writer."""
        if self._writer is None:
            return
        sequencer = self._prep.sequencer
        with sequencer.lock:
            grew = sequencer.next_seq - 1 > sequencer.last_checkpoint
        if grew:
            with contextlib.suppress(HabitatError):
                await self.checkpoint()
        await self._writer.retire_process()
        writer, self._writer = self._writer, None
        await asyncio.to_thread(writer.stop)

    @property
    def public_key(self) -> str:
        """Hex Ed25519 public key that signs this ledger's checkpoints."""
        return self._public_key

    @property
    def writer_pid(self) -> int | None:
        """The pid of the writer process while commits go to it (see ``commit_process``), else None."""
        writer = self._writer
        return writer.process_pid if writer is not None else None

    # -- appending ------------------------------------------------------------------------

    async def append(
        self,
        kind: str,
        *,
        actor: str,
        content: Any = None,
        meta: dict[str, Any] | None = None,
        causes: Iterable[EventRef] = (),
        thread: str | None = None,
        at: datetime | None = None,
    ) -> Event:
        """Append one event; it is durable when this returns.

        Args:
            kind: A registered kind (see ``docs/kinds.md``).
            actor: The principal that caused it, e.g. ``agent:scout``.
            content: Text, a JSON object or array, or bytes.
            meta: Structured fields, checked against the kind's schema.
            causes: Events that led to this one, added to the causal context's.
            thread: Conversation or trace id (default: the causal context's).
            at: World time, timezone-aware.

        Raises:
            UnknownKindError, InvalidMetaError, InvalidEventError,
            UnknownCauseError, ContentTooLargeError: The event is malformed;
                nothing was written.
        """
        draft = draft_of(kind, actor, content, meta, causes, thread, at)
        return (await self._append([draft]))[0]

    async def append_many(self, drafts: Iterable[Draft]) -> Sequence[Event]:
        """Append several events atomically, in order; durable when this returns.

        Either every draft is valid and all are committed, or an error names
        the first bad draft (by index) and nothing is written. The returned
        sequence builds each :class:`Event` when it is first read, so bulk
        writers that do not look at the results do not pay for them.
        """
        return await self._append(list(drafts))

    async def _append(self, items: list[Draft | RawDraft]) -> Sequence[Event]:
        writer = self._require_writer()
        if not items:
            return CommittedEvents([])
        checked = [self._prep.check(i, d) for i, d in enumerate(items)]
        known = await self._prep.check_causes(checked)
        batch, events = self._prep.seal(checked, known)
        future = batch.future
        writer.submit(batch)
        await future
        return events

    def transaction(self) -> TransactionScope:
        """Stage events and commit them together, all or nothing, when the block ends.

        Example:
            >>> async with ledger.transaction() as tx:  # doctest: +SKIP
            ...     seen = tx.append("observation.recorded", actor="agent:scout", content="31 °C")
            ...     tx.append("decision.made", actor="agent:scout", meta={"action": "vent"}, causes=[seen])
            >>> tx.events[1].causes == (seen,)  # doctest: +SKIP

        If the block raises, or a cause names an event that does not exist,
        nothing is written. Events staged later may cite earlier ones by the id
        :meth:`Transaction.append` returned.
        """
        self._require_writer()
        return TransactionScope(self)

    def _join_group(self) -> _Group:
        """This loop iteration's group of committing transactions (sealed by a callback after it)."""
        group = self._group
        if group is None:
            group = self._group = _Group()
            asyncio.get_running_loop().call_soon(self._seal_group)
        return group

    def _seal_group(self) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        submitted = 0  # transactions whose piece went to the writer: they commit, or fail there
        try:
            writer = self._require_writer()
            piece = writer.piece_events
            if piece is None or len(group.checked) <= piece:
                batch, _ = self._prep.seal(group.checked, group.known, ids=group.ids, ops=group.ops)
                batch.waiters = group.waiters
                group.rows = batch.rows
                writer.submit(batch, group=True)
                return
            # A writer process commits each piece while the loop goes on with the others (see Writer).
            for t0, t1, e0, e1, o0, o1 in _pieces(group.sizes, piece):
                batch, _ = self._prep.seal(
                    group.checked[e0:e1], group.known, ids=group.ids[e0:e1], ops=group.ops[o0:o1]
                )
                batch.waiters = group.waiters[t0:t1]
                group.rows += batch.rows
                writer.submit(batch, group=True)
                submitted = t1
        except BaseException as exc:  # noqa: BLE001 - handed to every transaction not handed over
            for waiter in group.waiters[submitted:]:
                if not waiter.done():
                    waiter.set_exception(exc)

    def _require_writer(self) -> Writer:
        if self._writer is None:
            if self._store.read_only:
                raise ReadOnlyHabitatError("this habitat was opened read-only; open it without read_only to write")
            raise HabitatClosedError("the habitat is closed; open it again to write")
        return self._writer

    def on_commit(self, listener: Callable[[Sequence[Op], Sequence[Row]], None]) -> None:
        """Call ``listener(ops, rows)`` on the event loop after every commit, in commit order.

        For Habitus's own subsystems (mailbox depths, waking agents, replies):
        every projection change is seen exactly once, whoever made it.
        """
        self._listeners.append(listener)

    def _on_commit(self, batches: list[Batch]) -> None:
        remember = self._prep.remember_rows
        for batch in batches:
            remember(batch.rows)
            for listener in self._listeners:
                listener(batch.ops, batch.rows)
        if self._committed is not None and not self._committed.done():
            self._committed.set_result(None)
        self._committed = None

    # -- reading --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of events committed or being committed by this process."""
        return self._prep.sequencer.next_seq - 1

    async def get(self, ref: EventRef) -> Event:
        """Return the event with this id.

        Raises:
            EventNotFoundError: No such event in this ledger.
        """
        target = as_uuid(ref)
        rows = await asyncio.to_thread(self._store.rows_by_id, [target.bytes])
        if not rows:
            raise EventNotFoundError(f"no event with id {str(target)!r} in this ledger")
        return event_from_row(rows[0])

    async def get_seq(self, seq: int) -> Event:
        """Return the event at position ``seq`` (1-based)."""
        rows = await asyncio.to_thread(self._store.rows_by_seq, [seq])
        if not rows:
            raise EventNotFoundError(f"no event at seq {seq!r}; the ledger has {await self.count()} events")
        return event_from_row(rows[0])

    async def count(self) -> int:
        """Number of committed events, read from the store (sees other processes' writes)."""
        return await asyncio.to_thread(self._store.size)

    async def query(
        self,
        *,
        actor: str | None = None,
        kind: str | None = None,
        thread: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: int | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> Page:
        """Events matching every given filter, one page at a time.

        Args:
            actor: Exact principal.
            kind: Exact kind, or a family with a wildcard (``"message.*"``).
            thread: Exact thread id.
            since: Commit time at or after (inclusive).
            until: Commit time before (exclusive).
            cursor: ``next_cursor`` of the previous page.
            limit: Page size, 1 to 10,000.
            order: ``asc`` oldest first, ``desc`` newest first.
        """
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError(f"limit must be between 1 and 10000, not {limit!r}")
        if order not in ("asc", "desc"):
            raise InvalidRequestError(f"order must be 'asc' or 'desc', not {order!r}")
        kinds: tuple[str, ...] | None = None
        if kind is not None and kind.endswith(".*"):
            kinds = tuple(k.name for k in all_kinds() if k.name.startswith(kind[:-1]))
            if not kinds:
                raise UnknownKindError(f"no registered kind matches {kind!r}")
        elif kind is not None:
            kinds = (get_kind(kind).name,)
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise InvalidRequestError(f"{name} {value!r} must be timezone-aware")

        def run() -> Page:
            lo, hi = 1, None
            if since is not None:
                lo = self._store.first_seq_at_or_after(to_micros(since))
            if until is not None:
                hi = self._store.first_seq_at_or_after(to_micros(until)) - 1
            if cursor is not None:
                if order == "asc":
                    lo = max(lo, cursor + 1)
                else:
                    hi = cursor - 1 if hi is None else min(hi, cursor - 1)
            q = EventQuery(actor, kinds, thread, lo, hi, limit + 1, order)
            rows = self._store.query(q)
            more = len(rows) > limit
            events = [event_from_row(r) for r in rows[:limit]]
            return Page(events=events, next_cursor=events[-1].seq if more and events else None)

        return await asyncio.to_thread(run)

    async def why(self, ref: EventRef, *, depth: int = 50, limit: int = 1000) -> Subgraph:
        """Walk causes back from an event towards its origins.

        Args:
            ref: The event to explain.
            depth: Maximum number of cause hops.
            limit: Maximum number of events returned.
        """
        return await self._walk(ref, "causes", depth, limit)

    async def effects(self, ref: EventRef, *, depth: int = 50, limit: int = 1000) -> Subgraph:
        """Walk forward from an event to everything it led to."""
        return await self._walk(ref, "effects", depth, limit)

    async def _walk(self, ref: EventRef, direction: Literal["causes", "effects"], depth: int, limit: int) -> Subgraph:
        if depth < 0 or limit < 1:
            raise InvalidRequestError(f"depth must be >= 0 and limit >= 1 (got depth={depth!r}, limit={limit!r})")
        target = as_uuid(ref)
        result = await asyncio.to_thread(walk, self._store, target.bytes, direction, depth, limit)
        if result is None:
            raise EventNotFoundError(f"no event with id {str(target)!r} in this ledger")
        return result

    async def tail(self, *, after: int | None = None, poll_interval: float = 0.25) -> AsyncIterator[Event]:
        """Yield events as they are committed, forever (cancel the consumer to stop).

        Args:
            after: Start after this seq; default: only events committed from now on.
            poll_interval: Seconds between checks for writes by other processes;
                writes by this process wake the iterator at once.
        """
        last = await self.count() if after is None else after
        while True:
            rows = await asyncio.to_thread(self._store.query, EventQuery(min_seq=last + 1, limit=1000))
            for row in rows:
                last = row[0]
                yield event_from_row(row)
            if len(rows) == 1000:
                continue
            if self._committed is None or self._committed.done():
                self._committed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._committed), poll_interval)

    # -- erasure, checkpoints, proofs, verification ---------------------------------------

    async def erase(self, ref: EventRef, *, reason: str, by: str) -> Erasure:
        """Delete an event's content and salt everywhere; keep its leaf; record who and why.

        The ledger still verifies afterwards: the leaf commits to the content's
        digest, which is kept. A ``content.erased`` event (actor ``by``, caused
        by the target) is appended in the same transaction, and the database
        files are then rewritten so no copy of the content remains on disk.
        """
        target = await self.get(ref)
        events, scrubbed = await self._erase_events([target], reason=reason, by=by)
        return Erasure(target=target.id, event=events[0], scrubbed=scrubbed)

    async def _erase_events(
        self,
        targets: Sequence[Event],
        *,
        reason: str,
        by: str,
        drafts: Sequence[Draft] = (),
        ops: Sequence[Op] = (),
    ) -> tuple[Sequence[Event], bool]:
        """Erase several events' content in one transaction, with more events and projection changes.

        For Habitus's subsystems (forgetting a memory erases its text and removes it
        from memory's indexes at once). Appends one ``content.erased`` per target,
        then ``drafts``; returns those events and whether the files were scrubbed.

        Raises:
            InvalidRequestError: A target has no content, or it is already erased.
        """
        writer = self._require_writer()
        for target in targets:
            if target.content_type is None:
                raise InvalidRequestError(f"event {str(target.id)!r} has no content to erase")
            if target.erased:
                raise InvalidRequestError(f"the content of event {str(target.id)!r} is already erased")
        erased = [
            Draft(
                kind="content.erased",
                actor=by,
                meta={"target": str(t.id), "target_seq": t.seq, "reason": reason},
                causes=(t.id,),
            )
            for t in targets
        ]
        checked = [self._prep.check(i, d) for i, d in enumerate([*erased, *drafts])]
        known = await self._prep.check_causes(checked)
        batch, events = self._prep.seal(checked, known, erase=[t.seq for t in targets], ops=list(ops))
        writer.submit(batch)
        await batch.future
        return events, batch.scrubbed

    async def checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the tree as it stands, and store it."""
        writer = self._require_writer()
        batch, _ = self._prep.seal([], {}, checkpoint=True)
        if batch.checkpoint is None:
            raise InvalidRequestError("the ledger is empty; there is nothing to checkpoint")
        writer.submit(batch)
        await batch.future
        return self._checkpoint_model(batch.checkpoint)

    def _checkpoint_model(self, row: CheckpointRow) -> Checkpoint:
        size, root, ts, signature = row
        return Checkpoint(
            tree_size=size, root=root.hex(), ts=from_micros(ts), signature=signature.hex(), public_key=self._public_key
        )

    async def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, oldest first."""
        rows = await asyncio.to_thread(self._store.checkpoints)
        return [self._checkpoint_model(r) for r in rows]

    async def root(self, tree_size: int | None = None) -> tuple[int, str]:
        """``(tree_size, root hex)`` of the committed tree, or of its first ``tree_size`` leaves."""

        def run() -> tuple[int, str]:
            size = self._store.size()
            n = size if tree_size is None else tree_size
            if not 0 <= n <= size:
                raise InvalidRequestError(f"tree size {tree_size!r} is outside 0..{size}")
            return n, StoreNodes(self._store).root(n).hex()

        return await asyncio.to_thread(run)

    async def inclusion_proof(self, ref: EventRef, *, tree_size: int | None = None) -> InclusionProof:
        """Audit path proving an event is in the tree (default: the current tree)."""
        event = await self.get(ref)

        def run() -> InclusionProof:
            size = self._store.size() if tree_size is None else tree_size
            if not event.seq <= size <= self._store.size():
                raise InvalidRequestError(
                    f"tree size {size!r} does not contain seq {event.seq} (the ledger has {self._store.size()})"
                )
            nodes = StoreNodes(self._store)
            path = inclusion_proof(nodes, event.seq - 1, size)
            leaf = nodes.leaves(event.seq - 1, event.seq)[0]
            return InclusionProof(
                seq=event.seq,
                tree_size=size,
                leaf=leaf.hex(),
                root=nodes.root(size).hex(),
                path=[p.hex() for p in path],
            )

        return await asyncio.to_thread(run)

    async def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the tree at ``old_size`` is a prefix of the tree at ``new_size``."""

        def run() -> ConsistencyProof:
            size = self._store.size()
            new = size if new_size is None else new_size
            if not 0 <= old_size <= new <= size:
                raise InvalidRequestError(f"need 0 <= old_size <= new_size <= {size}, got {old_size!r}, {new!r}")
            nodes = StoreNodes(self._store)
            path = consistency_proof(nodes, old_size, new)
            return ConsistencyProof(
                old_size=old_size,
                new_size=new,
                old_root=nodes.root(old_size).hex(),
                new_root=nodes.root(new).hex(),
                path=[p.hex() for p in path],
            )

        return await asyncio.to_thread(run)

    async def verify(self, *, public_key: str | None = None) -> VerifyReport:
        """Recompute every digest, leaf, node and root from the stored events.

        Trusts no stored hash: content digests are recomputed where content
        remains, leaves from fields, the tree from leaves, and every checkpoint's
        root and signature are checked against the recomputation.

        Args:
            public_key: Hex Ed25519 key to check signatures with; default the
                habitat's own (pass one obtained out of band to trust nothing stored).
        """
        return await asyncio.to_thread(verify_store, self._store, public_key or self._public_key)
