"""The runtime: activates agents that have work, delivers their messages, fires their timers.

Agents are virtual actors. Registered agents are rows; an agent becomes an
*activation* (an instance of its behaviour and an asyncio task) only when its
mailbox has a message, and is passivated again after ``idle_seconds``
without one. An activation handles one message at a time, in mailbox order
(the order messages were committed), so per-sender order holds.

Each delivery runs the handler inside a ledger transaction and inside
``caused_by(message)``: everything the handler does is staged, and commits
together with the acknowledgement of the message (its mailbox row is
deleted), or not at all. After a crash, unacknowledged messages are simply
still in their mailboxes and are delivered again; the ledger never shows one
delivery's effects twice. A handler that raises commits nothing; the failure
is recorded (``message.failed``) and the message retried after a backoff, up
to ``max_attempts``, then dead-lettered (``message.dead_lettered``). The
mailbox's head waits while it backs off, which keeps the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from habitus.agents._behaviour import App, Behaviour
from habitus.agents._context import AgentContext
from habitus.agents._models import Message, message_from_row
from habitus.agents._registry import Agents, SpawnSpec, info_from_row, principal_of
from habitus.errors import HabitatError, InvalidRequestError, UnknownAgentError
from habitus.ledger._context import caused_by
from habitus.ledger._ledger import Ledger
from habitus.ledger._rows import event_from_row
from habitus.messaging._messenger import Messenger

if TYPE_CHECKING:
    from collections.abc import Callable

    from habitus.memory._memory import MemoryService
    from habitus.models._gateway import ModelGateway
    from habitus.tools._registry import ToolRegistry
from habitus.storage._abstract import HabitatStore, Row
from habitus.storage._projections import (
    MailboxAck,
    MailboxDead,
    MailboxPut,
    MailboxRetry,
    MailboxRow,
    Op,
    TimerDelete,
)

__all__ = ["Runtime", "RuntimeOptions"]

_INBOX_EVERY = 0.5  # seconds between looks at the habitat's inbox

log = logging.getLogger("habitus.runtime")


@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime schedules work.

    Attributes:
        max_attempts: Deliveries of a message before it is dead-lettered.
        retry_base: First retry delay in seconds; doubles each attempt (capped at 60 s).
        idle_seconds: An activation with no work for this long is passivated.
        max_active: Most activations in memory at once; others wait their turn.
        batch: Messages read from a mailbox at a time.
        timer_poll: Longest sleep of the timer loop, in seconds.
        gc_threshold: The young-generation threshold of Python's cyclic garbage
            collector while the runtime runs (Python's default is 700); ``None``
            leaves the collector alone. Every message in flight keeps a few dozen
            objects alive until its commit, so at the default the collector runs
            every few deliveries, promotes them all, and soon scans the whole heap
            (15% of one-way messaging time, see ``benchmarks/RESULTS.md``). Set only
            while the process still has Python's default thresholds (an application
            that tuned them keeps its own), and put back when the last runtime stops.
    """

    max_attempts: int = 5
    retry_base: float = 0.1
    idle_seconds: float = 60.0
    max_active: int = 10_000
    batch: int = 32
    timer_poll: float = 0.25
    gc_threshold: int | None = 10_000

    def __post_init__(self) -> None:
        if self.gc_threshold is not None and (type(self.gc_threshold) is not int or self.gc_threshold < 1):
            raise InvalidRequestError(f"gc_threshold must be a positive integer or None, not {self.gc_threshold!r}")


_PYTHON_GC = (700, 10, 10)  # CPython's default thresholds
_gc_holders: list[object] = []  # the runtimes that set the threshold; the last one to stop puts it back


def _hold_gc(holder: object, threshold: int | None) -> None:
    if threshold is None:
        return
    if not _gc_holders:
        current = gc.get_threshold()
        if current != _PYTHON_GC:
            return  # the application chose its own
        gc.set_threshold(threshold, current[1], current[2])
    _gc_holders.append(holder)


def _release_gc(holder: object) -> None:
    if holder in _gc_holders:
        _gc_holders.remove(holder)
        if not _gc_holders:
            gc.set_threshold(*_PYTHON_GC)


@dataclass
class _Activation:
    agent: str
    behaviour: Behaviour
    context: AgentContext
    instance: Any
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    timed_out: bool = False
    task: asyncio.Task[None] | None = None
    # (seq, event row, mailbox row or None for messages handed over at commit, control epoch at which
    # the send was allowed or -1; see MailboxPut)
    inbox: deque[tuple[int, Row, MailboxRow | None, int]] = field(default_factory=deque)
    rescan: bool = True  # read the mailbox table before trusting the inbox
    backlog: bool = False  # the table holds more than the inbox: hand-overs would jump the queue
    last_acked: int = 0
    idle_since: float | None = None  # loop time the activation began waiting for work, None while it works
    idle_timer: asyncio.TimerHandle | None = None


def _check_idle(activation: _Activation, idle_seconds: float) -> None:
    """Time the activation out if it has waited ``idle_seconds`` for work; else look again later.

    One timer per activation checks when it became idle, rather than one timer set and
    cancelled around every wait: an active agent waits briefly between most deliveries.
    """
    activation.idle_timer = None
    if activation.idle_since is None:
        return  # working: its next wait sets a new timer
    loop = asyncio.get_running_loop()
    left = activation.idle_since + idle_seconds - loop.time()
    if left > 0:
        activation.idle_timer = loop.call_later(left, _check_idle, activation, idle_seconds)
        return
    activation.timed_out = True
    activation.wake.set()


class Runtime:
    """Runs an :class:`App` in a habitat until stopped (see :meth:`habitus.Habitat.run`)."""

    def __init__(
        self,
        app: App,
        *,
        ledger: Ledger,
        store: HabitatStore,
        agents: Agents,
        messenger: Messenger,
        options: RuntimeOptions,
        memories: MemoryService | None = None,
        models: Callable[[], ModelGateway] | None = None,
        tools: Callable[[], ToolRegistry] | None = None,
    ) -> None:
        self._app = app
        self._ledger = ledger
        self._store = store
        self._agents = agents
        self._messenger = messenger
        self._control = messenger.control
        self._memories = memories
        self._models = models  # getters: the gateway and registry are built on first use only
        self._tools = tools
        self._options = options
        self._active: dict[str, _Activation] = {}
        self._waiting: dict[str, None] = {}  # agents with work but no free activation slot, in order
        self._timers_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.delivered = 0

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the app's declared agents (first run only), then start delivering."""
        missing = []
        for spec in self._app.agents:
            try:
                await self._agents.get(spec["id"])
            except UnknownAgentError:
                behaviour = self._app.get(spec["behaviour"])
                topics = spec["topics"] if spec["topics"] is not None else behaviour.topics
                missing.append(
                    SpawnSpec(
                        spec["id"],
                        behaviour=spec["behaviour"],
                        owner=spec["owner"],
                        name=spec["name"],
                        labels=spec["labels"],
                        topics=topics,
                    )
                )
        if missing:
            await self._agents.spawn_many(missing)
        self._ledger.on_commit(self._committed)
        self._agents.listen(self._on_lifecycle)
        self._spawn_task(self._timer_loop())
        self._on_mail(set(await asyncio.to_thread(self._store.agents_with_mail)))
        self._messenger.answering = True
        _hold_gc(self, self._options.gc_threshold)

    async def stop(self) -> None:
        """Finish the deliveries in progress and stop."""
        self._messenger.answering = False
        self._stopping = True
        self._timers_wake.set()
        for activation in list(self._active.values()):
            activation.wake.set()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _release_gc(self)

    def _spawn_task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def active(self) -> int:
        """Agents activated right now."""
        return len(self._active)

    # -- scheduling -------------------------------------------------------------------------

    def _committed(self, ops: Sequence[Op], rows: Sequence[Row]) -> None:
        """After every commit: hand new messages to active agents, activate the others."""
        if self._stopping:
            return
        by_id: dict[bytes, Row] | None = None
        woken: set[str] = set()
        for op in ops:
            if not isinstance(op, MailboxPut):
                continue
            activation = self._active.get(op.agent)
            if activation is None:
                woken.add(op.agent)
                continue
            if not activation.backlog and not activation.rescan:
                if by_id is None:
                    by_id = {row[1]: row for row in rows}
                stored = by_id.get(op.event)
                if stored is not None:
                    activation.inbox.append((stored[0], stored, None, op.allowed_at))
            if activation.idle_since is not None:  # waiting for work; a busy one looks at its inbox next
                activation.wake.set()
        if woken:
            self._on_mail(woken)

    def _on_mail(self, agents: set[str]) -> None:
        if self._stopping:
            return
        for agent in sorted(agents):
            activation = self._active.get(agent)
            if activation is not None:
                activation.wake.set()
            elif len(self._active) < self._options.max_active:
                self._activate(agent)
            else:
                self._waiting[agent] = None

    def _on_lifecycle(self, agent: str, status: str) -> None:
        if status == "active":  # resumed: its mailbox may hold work
            self._on_mail({agent})
        elif status in ("suspended", "retired"):
            activation = self._active.get(agent)
            if activation is not None:
                activation.wake.set()

    def _activate(self, agent: str) -> None:
        row = self._store.agent(agent)
        if row is None or row.status in ("suspended", "retired"):
            return
        try:
            behaviour = self._app.get(row.behaviour)
        except HabitatError:
            log.warning("agent %s has behaviour %r, which this app does not have", agent, row.behaviour)
            return
        info_state = {k: json.loads(v) for k, v in self._store.state(agent).items()}
        context = AgentContext(
            info_from_row(row),
            info_state,
            ledger=self._ledger,
            agents=self._agents,
            messenger=self._messenger,
            memories=self._memories,
            remember_messages=behaviour.remember_messages,
            models=self._models,
            tools=self._tools,
        )
        activation = _Activation(agent, behaviour, context, behaviour.factory(context))
        self._active[agent] = activation
        activation.task = self._spawn_task(self._run_activation(activation))

    def _passivate(self, activation: _Activation) -> None:
        if self._active.get(activation.agent) is activation:
            del self._active[activation.agent]
        if activation.wake.is_set() and not self._stopping:
            # Woken while leaving (new mail, or resumed): start over rather than strand the mail.
            self._waiting[activation.agent] = None
        while self._waiting and len(self._active) < self._options.max_active and not self._stopping:
            agent = next(iter(self._waiting))
            del self._waiting[agent]
            if agent not in self._active:
                self._activate(agent)

    async def _run_activation(self, activation: _Activation) -> None:
        """Deliver an agent's messages in order until it has none for ``idle_seconds``.

        Messages committed by this process while the agent is active are handed
        over from memory (see :meth:`_committed`); the mailbox table is read when
        the activation starts, after a failure, and while it holds more than one
        batch (``backlog``), so the order is always the mailbox's.
        """
        agent = activation.agent
        inbox = activation.inbox
        try:
            while not self._stopping:
                if self._agents.status(agent) not in ("spawned", "active"):
                    return
                if activation.rescan and not inbox:
                    rows = self._store.mailbox(agent, after=0, limit=self._options.batch)
                    events = {r[0]: r for r in self._store.rows_by_seq([m.msg for m in rows])} if rows else {}
                    inbox.extend((m.msg, events[m.msg], m, -1) for m in rows if m.msg in events)
                    activation.backlog = len(rows) == self._options.batch
                    activation.rescan = activation.backlog
                if not inbox:
                    if self._waiting:
                        return  # others wait for a slot: give this one up now rather than after idling
                    if not await self._idle(activation):
                        return
                    continue
                seq, stored, mail, allowed_at = inbox.popleft()
                if seq <= activation.last_acked:
                    continue  # handed over twice (read from the table and from a commit)
                if mail is not None and mail.not_before > time.time_ns() // 1000:
                    inbox.clear()
                    activation.rescan = True
                    activation.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(activation.wake.wait(), (mail.not_before - time.time_ns() // 1000) / 1e6)
                    continue
                attempts = mail.attempts if mail is not None else 0
                message = message_from_row(stored, attempt=attempts + 1)
                if await self._deliver(activation, seq, attempts, message, allowed_at):
                    activation.last_acked = seq
                else:
                    inbox.clear()
                    activation.rescan = True
        finally:
            if activation.idle_timer is not None:
                activation.idle_timer.cancel()
                activation.idle_timer = None
            self._passivate(activation)

    async def _idle(self, activation: _Activation) -> bool:
        """Wait for work; False when ``idle_seconds`` pass without any (time to passivate)."""
        activation.wake.clear()
        if activation.inbox or activation.rescan:
            return True
        activation.timed_out = False
        loop = asyncio.get_running_loop()
        activation.idle_since = loop.time()
        if activation.idle_timer is None:
            activation.idle_timer = loop.call_later(
                self._options.idle_seconds, _check_idle, activation, self._options.idle_seconds
            )
        try:
            await activation.wake.wait()
        finally:
            activation.idle_since = None
        return not activation.timed_out or bool(activation.inbox) or activation.rescan

    # -- delivering -------------------------------------------------------------------------

    async def _deliver(
        self, activation: _Activation, seq: int, attempts: int, message: Message, allowed_at: int = -1
    ) -> bool:
        """Handle the message at ``seq``, tried ``attempts`` times before; True if acknowledged (or dead-lettered)."""
        agent = activation.agent
        # Sent from this process at control epoch ``allowed_at`` and nothing a decision depends on has
        # changed since: the send's check still holds (see MailboxPut), and no second one is made.
        if allowed_at < 0 or not self._control.unchanged_since(allowed_at):
            refusal = await self._messenger.check_delivery(message, principal_of(agent))
            if refusal is not None:
                await self._give_up(agent, seq, attempts, message, f"refused by policy: {refusal}")
                return True
        context = activation.context
        first = self._agents.status(agent) == "spawned"
        try:
            async with self._ledger.transaction() as tx:
                with caused_by(message.id, thread=message.thread):
                    context._begin(tx, message)
                    if first:
                        self._agents.mark_active(tx, agent)
                    if context.remember_messages:
                        await context._remember_message(message, received=True)
                    await activation.behaviour.handle(activation.instance, message)
                tx.project(MailboxAck(agent, seq))
        except Exception as exc:  # noqa: BLE001 - a handler's failure is data: recorded, retried
            context._end(committed=False)
            await self._failed(agent, seq, attempts, message, exc)
            return False
        context._end(committed=True)
        if first:
            self._agents.cache_status(agent, "active")
        if context.timers_set:
            self._timers_wake.set()
        self.delivered += 1
        return True

    async def _failed(self, agent: str, seq: int, attempts: int, message: Message, exc: BaseException) -> None:
        attempt = attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if attempt >= self._options.max_attempts:
            await self._give_up(agent, seq, attempts, message, error)
            return
        delay = min(self._options.retry_base * 2 ** (attempt - 1), 60.0)
        not_before = time.time_ns() // 1000 + int(delay * 1_000_000)
        async with self._ledger.transaction() as tx:
            tx.append(
                "message.failed",
                actor="system",
                meta={"agent": agent, "message_seq": seq, "attempt": attempt, "error": error},
                causes=[message.id],
            )
            tx.project(MailboxRetry(agent, seq, attempt, not_before, error))

    async def _give_up(self, agent: str, seq: int, attempts: int, message: Message, error: str) -> None:
        async with self._ledger.transaction() as tx:
            tx.append(
                "message.dead_lettered",
                actor="system",
                meta={"agent": agent, "message_seq": seq, "attempt": attempts + 1, "error": error[:2000]},
                causes=[message.id],
            )
            tx.project(MailboxDead(agent, seq, attempts + 1, error[:2000]))

    # -- timers -----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        inbox_due = 0.0
        while not self._stopping:
            self._timers_wake.clear()
            if time.monotonic() >= inbox_due:  # decisions other processes left for this one (habitus approvals)
                inbox_due = time.monotonic() + _INBOX_EVERY
                await self._messenger.control.process_inbox()
            now = time.time_ns() // 1000
            timers = self._store.timers(until=now, limit=256, runnable=True)
            fired = 0
            next_due = self._store.next_timer_due()
            for timer in timers:
                status = self._agents.status(timer.agent)
                if status in ("suspended", None):
                    continue
                await self._fire(timer.timer, timer.agent, timer.due, timer.set_seq, retired=status == "retired")
                fired += 1
            if fired == len(timers) and fired:
                continue
            wait = self._options.timer_poll
            if next_due is not None and next_due > now:
                wait = min(wait, max(0.0, (next_due - time.time_ns() // 1000) / 1_000_000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timers_wake.wait(), wait)

    async def _fire(self, timer: str, agent: str, due: int, set_seq: int, *, retired: bool) -> None:
        rows = self._store.rows_by_seq([set_seq])
        async with self._ledger.transaction() as tx:
            if not retired and rows:
                set_event = event_from_row(rows[0])
                name = timer.split("/", 1)[1] if "/" in timer else timer
                fired = tx.append(
                    "timer.fired",
                    actor="system",
                    meta={"agent": agent, "timer": name, "due": due},
                    content=set_event.content,
                    causes=[set_event.id],
                    thread=set_event.thread,
                )
                tx.project(MailboxPut(agent, fired.bytes, "system"))
            tx.project(TimerDelete(timer))
