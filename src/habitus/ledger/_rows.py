"""Between stored rows and public models: event references, rows to events."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, overload

from habitus.errors import InvalidRequestError
from habitus.ledger._codec import CTYPE_NAMES, decode_content, from_micros, loads_json
from habitus.ledger._models import Event, fast_event, uuid_from_bytes
from habitus.storage._abstract import Row

__all__ = [
    "CommittedEvents",
    "EventRef",
    "RawDraft",
    "as_uuid",
    "draft_of",
    "event_fields",
    "event_from_row",
    "loads_meta",
]

EventRef = uuid.UUID | str | Event
"""An event named by its id (UUID or string) or the event itself."""


def as_uuid(ref: EventRef) -> uuid.UUID:
    """Normalise an event reference to its UUID, or raise :class:`InvalidRequestError`."""
    if isinstance(ref, Event):
        return ref.id
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(ref)
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequestError(f"{ref!r} is not an event id (expected a UUID such as an event's 'id')") from None


def event_from_row(row: Row) -> Event:
    """Build the public model from a stored row."""
    return fast_event(event_fields(row))


def event_fields(row: Row) -> dict[str, Any]:
    """Every field of the :class:`Event` a stored row holds, by name."""
    seq, id_, ts, at, actor, kind, thread, meta, causes, ctype, digest, _leaf, salt, body = row
    if not causes:
        cause_ids: tuple[uuid.UUID, ...] = ()
    elif len(causes) == 16:  # most events have one cause (a delivered message's effects: the message)
        cause_ids = (uuid_from_bytes(causes),)
    else:
        cause_ids = tuple([uuid_from_bytes(causes[i : i + 16]) for i in range(0, len(causes), 16)])
    return {
        "id": uuid_from_bytes(id_),
        "seq": seq,
        "ts": from_micros(ts),
        "at": None if at is None else from_micros(at),
        "actor": actor,
        "kind": kind,
        "causes": cause_ids,
        "thread": thread,
        "meta": loads_meta(meta),
        "content": decode_content(ctype, body) if ctype is not None and body is not None else None,
        "content_type": CTYPE_NAMES.get(ctype) if ctype is not None else None,
        "digest": digest.hex() if digest is not None else None,
        "erased": ctype is not None and salt is None,
    }


class RawDraft:
    """``append``'s arguments as a draft, unvalidated: the preparer checks every field itself.

    Cheaper than building a :class:`Draft` model for every append (and every
    message a handler sends); it has the same attributes.
    """

    __slots__ = ("actor", "at", "causes", "content", "kind", "meta", "thread")

    def __init__(
        self,
        kind: str,
        actor: str,
        content: Any,
        meta: dict[str, Any],
        causes: tuple[uuid.UUID, ...],
        thread: str | None,
        at: datetime | None,
    ) -> None:
        self.kind = kind
        self.actor = actor
        self.content = content
        self.meta = meta
        self.causes = causes
        self.thread = thread
        self.at = at


def draft_of(
    kind: str,
    actor: str,
    content: Any,
    meta: dict[str, Any] | None,
    causes: Iterable[EventRef],
    thread: str | None,
    at: datetime | None,
) -> RawDraft:
    """A draft from ``append``'s arguments."""
    return RawDraft(kind, actor, content, meta or {}, tuple(as_uuid(c) for c in causes) if causes else (), thread, at)


def loads_meta(meta: str) -> dict[str, Any]:
    """Parse stored canonical meta JSON (the empty object without the parser)."""
    if meta == "{}":
        return {}
    value: dict[str, Any] = loads_json(meta)
    return value


class CommittedEvents(Sequence[Event]):
    """The events of one append, built from their rows on first access."""

    __slots__ = ("_built", "_rows")

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows
        self._built: list[Event | None] = [None] * len(rows)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._rows)))]
        event = self._built[index]
        if event is None:
            event = self._built[index] = event_from_row(self._rows[index])
        return event

    def __repr__(self) -> str:
        return f"CommittedEvents({len(self._rows)} events)"

    def seqs_and_times(self) -> list[tuple[int, int]]:
        """``(seq, ts in UTC µs)`` of each event, without building the events."""
        return [(r[0], r[2]) for r in self._rows]
