"""The causal context: causes and thread that every append inside it inherits.

Set with :func:`caused_by`; it lives in a :mod:`contextvars` variable, so it
follows ``await`` and the tasks started inside it, and never leaks between
concurrent tasks. The agent runtime enters it around each handled message, so
users rarely wire causes by hand.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from habitus.ledger._models import Event

__all__ = ["CausalContext", "caused_by", "current_context"]


@dataclass(frozen=True, slots=True)
class CausalContext:
    """Causes and thread added to every event appended in this context."""

    causes: tuple[uuid.UUID, ...] = ()
    thread: str | None = None


_EMPTY = CausalContext()
_CONTEXT: ContextVar[CausalContext] = ContextVar("habitus_causal_context", default=_EMPTY)


def current_context() -> CausalContext:
    """The causal context in force for the running task."""
    return _CONTEXT.get()


class caused_by(AbstractContextManager[CausalContext]):  # noqa: N801 - used like a function
    """Make ``causes`` (and ``thread``) apply to every event appended inside the block.

    Contexts nest: inner causes are added to the outer ones, and an inner
    thread replaces the outer one. (A class rather than a generator: the
    runtime enters one per delivered message.)

    Example:
        >>> with caused_by(request_event):  # doctest: +SKIP
        ...     await ledger.append("decision.made", actor="agent:planner", meta={"action": "go"})
    """

    __slots__ = ("_context", "_token")

    def __init__(self, *causes: Event | uuid.UUID | str, thread: str | None = None) -> None:
        self._token: Token[CausalContext] | None = None
        outer = _CONTEXT.get()
        ids = outer.causes
        if not ids and len(causes) == 1:  # the runtime's: one message's id
            (only,) = causes
            if type(only) is uuid.UUID:
                self._context = CausalContext((only,), thread if thread is not None else outer.thread)
                return
        for cause in causes:
            value = (
                cause.id if isinstance(cause, Event) else cause if isinstance(cause, uuid.UUID) else uuid.UUID(cause)
            )
            if value not in ids:
                ids = (*ids, value)
        self._context = CausalContext(ids, thread if thread is not None else outer.thread)

    def __enter__(self) -> CausalContext:
        self._token = _CONTEXT.set(self._context)
        return self._context

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _CONTEXT.reset(self._token)
            self._token = None
