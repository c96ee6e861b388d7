"""Transactions: events staged one by one and committed together, all or nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from habitus._ids import new_id
from habitus.errors import InvalidRequestError
from habitus.ledger._models import Event, uuid_from_bytes
from habitus.ledger._prepare import Preparer
from habitus.ledger._rows import EventRef, draft_of
from habitus.storage._projections import Op

__all__ = ["Transaction"]


class Transaction:
    """Events staged to be committed together (see :meth:`habitus.Ledger.transaction`).

    Each :meth:`append` checks its event at once (a bad event raises where it
    is written) and returns the id the event will have, so later events of the
    same transaction can cite it as a cause. Nothing is written until the
    transaction commits; then every staged event is, in order, in one commit.
    """

    def __init__(self, prep: Preparer) -> None:
        self._prep = prep
        self._checked: list[tuple[Any, ...]] = []
        self._ids: list[bytes] = []
        self._ops: list[Op] = []
        self._events: Sequence[Event] | None = None

    def append(
        self,
        kind: str,
        *,
        actor: str,
        content: Any = None,
        meta: dict[str, Any] | None = None,
        causes: Iterable[EventRef] = (),
        thread: str | None = None,
        at: datetime | None = None,
    ) -> uuid.UUID:
        """Stage one event (same arguments as :meth:`habitus.Ledger.append`); return its future id.

        Raises:
            InvalidRequestError: The event is malformed, or the transaction has
                already committed. Nothing is staged.
        """
        if self._events is not None:
            raise InvalidRequestError("this transaction has committed; start a new one to append more")
        draft = draft_of(kind, actor, content, meta, causes, thread, at)
        checked = self._prep.check(len(self._checked), draft)
        id_ = new_id()
        self._checked.append(checked)
        self._ids.append(id_)
        return uuid_from_bytes(id_)

    def last_id_bytes(self) -> bytes:
        """The raw 16 bytes of the id :meth:`append` last returned (for projections that store it)."""
        return self._ids[-1]

    def project(self, op: Op) -> None:
        """Add a projection change to commit with the staged events (for Habitus's subsystems)."""
        if self._events is not None:
            raise InvalidRequestError("this transaction has committed; start a new one")
        self._ops.append(op)

    @property
    def ops(self) -> Sequence[Op]:
        """Projection changes added so far."""
        return self._ops

    @property
    def staged(self) -> int:
        """Number of events staged so far."""
        return len(self._checked)

    @property
    def events(self) -> Sequence[Event]:
        """The committed events, in order (only after the transaction committed)."""
        if self._events is None:
            raise InvalidRequestError("the transaction has not committed yet")
        return self._events

    def _parts(self) -> tuple[list[tuple[Any, ...]], list[bytes], list[Op]]:
        return self._checked, self._ids, self._ops

    def _done(self, events: Sequence[Event]) -> None:
        self._events = events
