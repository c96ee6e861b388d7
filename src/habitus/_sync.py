"""The sync facade: the async API driven from a private event loop thread.

Every sync method is the async method itself, bridged by :func:`_bridge`, so
signatures and docstrings cannot drift apart. Use it from scripts, notebooks
and the CLI; use :class:`habitus.Habitat` from async code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from habitus._acting import Acting
from habitus._habitat import Habitat
from habitus._settings import Settings
from habitus.control._control import Control
from habitus.ledger._ledger import Ledger
from habitus.ledger._models import Event
from habitus.ledger._transaction import Transaction
from habitus.memory._memory import AgentMemory, MemoryService

__all__ = ["SyncActing", "SyncAgentMemory", "SyncControl", "SyncHabitat", "SyncLedger", "SyncMemories"]

P = ParamSpec("P")
T = TypeVar("T")


class _Portal:
    """An event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="habitus-sync", daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(_await(coro), self.loop)
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _bridge(fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]) -> Callable[Concatenate[Any, P], T]:
    @functools.wraps(fn)
    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._portal.call(fn(self._target, *args, **kwargs))  # type: ignore[no-any-return]

    return method


def _forward(fn: Callable[Concatenate[Any, P], T]) -> Callable[Concatenate[Any, P], T]:
    """A synchronous method of the target, called as it is (it does no I/O on the loop)."""

    @functools.wraps(fn)
    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(self._target, *args, **kwargs)

    return method


class SyncLedger:
    """Blocking twin of :class:`habitus.ledger.Ledger`; see it for each method's documentation."""

    def __init__(self, target: Ledger, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    append = _bridge(Ledger.append)
    append_many = _bridge(Ledger.append_many)
    get = _bridge(Ledger.get)
    get_seq = _bridge(Ledger.get_seq)
    count = _bridge(Ledger.count)
    query = _bridge(Ledger.query)
    why = _bridge(Ledger.why)
    effects = _bridge(Ledger.effects)
    erase = _bridge(Ledger.erase)
    checkpoint = _bridge(Ledger.checkpoint)
    checkpoints = _bridge(Ledger.checkpoints)
    root = _bridge(Ledger.root)
    inclusion_proof = _bridge(Ledger.inclusion_proof)
    consistency_proof = _bridge(Ledger.consistency_proof)
    verify = _bridge(Ledger.verify)

    @property
    def public_key(self) -> str:
        """Hex Ed25519 public key that signs this ledger's checkpoints."""
        return self._target.public_key

    @property
    def writer_pid(self) -> int | None:
        """The pid of the writer process while commits go to it (see ``commit_process``), else None."""
        return self._target.writer_pid

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Blocking twin of :meth:`Ledger.transaction`: commits when the block ends without error."""
        manager = self._target.transaction()
        tx = self._portal.call(manager.__aenter__())
        try:
            yield tx
        except BaseException as exc:
            self._portal.call(manager.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self._portal.call(manager.__aexit__(None, None, None))

    def tail(self, *, after: int | None = None, poll_interval: float = 0.25) -> Iterator[Event]:
        """Blocking iterator over events as they commit (see :meth:`Ledger.tail`)."""
        agen: AsyncIterator[Event] = self._target.tail(after=after, poll_interval=poll_interval)
        try:
            while True:
                yield self._portal.call(agen.__anext__())
        except StopAsyncIteration:
            return
        finally:
            self._portal.call(agen.aclose())  # type: ignore[attr-defined]


class SyncAgentMemory:
    """Blocking twin of :class:`habitus.AgentMemory`; see it for each method's documentation."""

    def __init__(self, target: AgentMemory, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    remember = _bridge(AgentMemory.remember)
    remember_many = _bridge(AgentMemory.remember_many)
    recall = _bridge(AgentMemory.recall)
    get = _bridge(AgentMemory.get)
    memories = _bridge(AgentMemory.memories)
    forget = _bridge(AgentMemory.forget)
    assert_fact = _bridge(AgentMemory.assert_fact)
    facts = _bridge(AgentMemory.facts)
    scopes = _bridge(AgentMemory.scopes)
    grant = _bridge(AgentMemory.grant)
    revoke = _bridge(AgentMemory.revoke)
    consolidate = _bridge(AgentMemory.consolidate)


class SyncMemories:
    """Blocking twin of :class:`habitus.memory.MemoryService`."""

    def __init__(self, target: MemoryService, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    grant = _bridge(MemoryService.grant)
    revoke = _bridge(MemoryService.revoke)
    reindex = _bridge(MemoryService.reindex)
    sweep = _bridge(MemoryService.sweep)


class SyncControl:
    """Blocking twin of :class:`habitus.control.Control`; see it for each method's documentation."""

    def __init__(self, target: Control, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    decide = _forward(Control.decide)
    require = _bridge(Control.require)
    authorize = _bridge(Control.authorize)
    deny = _bridge(Control.deny)
    add_hook = _forward(Control.add_hook)
    grant = _bridge(Control.grant)
    delegate = _bridge(Control.delegate)
    revoke = _bridge(Control.revoke)
    capabilities = _forward(Control.capabilities)
    require_approval = _bridge(Control.require_approval)
    waive_approval = _bridge(Control.waive_approval)
    approval_rules = _forward(Control.approval_rules)
    await_approval = _bridge(Control.await_approval)
    approve = _bridge(Control.approve)
    reject = _bridge(Control.reject)
    approvals = _forward(Control.approvals)
    approval = _forward(Control.approval)
    post_decision = _forward(Control.post_decision)
    process_inbox = _bridge(Control.process_inbox)
    set_budget = _bridge(Control.set_budget)
    budgets = _forward(Control.budgets)
    label = _bridge(Control.label)
    trust_of = _forward(Control.trust_of)
    load_config = _bridge(Control.load_config)


class SyncActing:
    """Blocking twin of :class:`habitus.Acting`: the habitat as one principal sees it."""

    def __init__(self, target: Acting, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    @property
    def principal(self) -> str:
        """The principal every call acts as."""
        return self._target.principal

    @property
    def on_behalf_of(self) -> str | None:
        """The principal it acts for, if not itself."""
        return self._target.on_behalf_of

    send = _bridge(Acting.send)
    publish = _bridge(Acting.publish)
    request = _bridge(Acting.request)
    spawn = _bridge(Acting.spawn)
    state = _bridge(Acting.state)
    suspend = _bridge(Acting.suspend)
    resume = _bridge(Acting.resume)
    retire = _bridge(Acting.retire)
    append = _bridge(Acting.append)
    authorize = _bridge(Acting.authorize)
    grant = _bridge(Acting.grant)
    revoke = _bridge(Acting.revoke)
    approve = _bridge(Acting.approve)
    reject = _bridge(Acting.reject)

    def memory(self, agent: str | None = None) -> SyncAgentMemory:
        """An agent's memory used as this principal (see :meth:`Acting.memory`)."""
        return SyncAgentMemory(self._target.memory(agent), self._portal)


class SyncHabitat:
    """Blocking twin of :class:`habitus.Habitat`.

    Example:
        >>> with SyncHabitat.open("habitat", create=True) as hab:  # doctest: +SKIP
        ...     hab.ledger.append("note.recorded", actor="human:ada", content="hello")
    """

    def __init__(self, habitat: Habitat, portal: _Portal) -> None:
        self._habitat = habitat
        self._portal = portal
        self.ledger = SyncLedger(habitat.ledger, portal)
        self.memories = SyncMemories(habitat.memories, portal)
        self.control = SyncControl(habitat.control, portal)

    def acting_as(self, principal: str, *, on_behalf_of: str | None = None) -> SyncActing:
        """The habitat as ``principal`` sees it (see :meth:`Habitat.acting_as`)."""
        return SyncActing(self._habitat.acting_as(principal, on_behalf_of=on_behalf_of), self._portal)

    def memory(self, agent: str) -> SyncAgentMemory:
        """One agent's memory (see :meth:`Habitat.memory`)."""
        return SyncAgentMemory(self._habitat.memory(agent), self._portal)

    def spawn(self, agent: str, *, behaviour: str = "agent", **kwargs: Any) -> Any:
        """Register an agent (see :meth:`habitus.agents.Agents.spawn`)."""
        return self._portal.call(self._habitat.agents.spawn(agent, behaviour=behaviour, **kwargs))

    @classmethod
    def init(
        cls, path: str | Path | None = None, *, name: str | None = None, settings: Settings | None = None
    ) -> SyncHabitat:
        """Create a new habitat and open it (see :meth:`Habitat.init`)."""
        portal = _Portal()
        try:
            return cls(portal.call(Habitat.init(path, name=name, settings=settings)), portal)
        except BaseException:
            portal.stop()
            raise

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        create: bool = False,
        read_only: bool = False,
        settings: Settings | None = None,
    ) -> SyncHabitat:
        """Open a habitat (see :meth:`Habitat.open`)."""
        portal = _Portal()
        try:
            return cls(portal.call(Habitat.open(path, create=create, read_only=read_only, settings=settings)), portal)
        except BaseException:
            portal.stop()
            raise

    @property
    def path(self) -> Path:
        """The habitat directory."""
        return self._habitat.path

    @property
    def name(self) -> str:
        """The habitat's name."""
        return self._habitat.name

    @property
    def id(self) -> str:
        """The habitat's unique id."""
        return self._habitat.id

    def close(self) -> None:
        """Close the habitat and stop its loop thread. Idempotent."""
        if self._portal.loop.is_closed():
            return
        try:
            self._portal.call(self._habitat.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> SyncHabitat:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
