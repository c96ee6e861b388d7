"""The ledger's public data models: what goes in, what comes out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

__all__ = [
    "Checkpoint",
    "ConsistencyProof",
    "ContentType",
    "Draft",
    "Edge",
    "Erasure",
    "Event",
    "InclusionProof",
    "Page",
    "Problem",
    "Subgraph",
    "VerifyReport",
]

ContentType = Literal["text", "json", "bytes"]
"""``text`` is a ``str``, ``json`` a dict, list, number or boolean, ``bytes`` raw bytes."""

Content = str | bytes | dict[str, JsonValue] | list[JsonValue] | bool | int | float


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")


class Draft(_Frozen):
    """An event to append, before the ledger gives it an id, seq, time and leaf.

    Attributes:
        kind: Registered kind name, e.g. ``message.sent``.
        actor: Principal that caused it: ``agent:<id>``, ``human:<id>``,
            ``source:<id>``, ``service:<id>`` or ``system``.
        content: Text, a JSON object or array, or bytes; the ledger commits to
            its salted digest.
        meta: Small structured fields, validated against the kind's model.
        causes: Ids (or events) that led to this one. The causes of the
            current causal context are added automatically.
        thread: Conversation or trace id.
        at: World time, when the thing happened (the commit time is ``ts``).
    """

    kind: str
    actor: str
    content: Content | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    causes: tuple[uuid.UUID, ...] = ()
    thread: str | None = None
    at: datetime | None = None

    @field_validator("causes", mode="before")
    @classmethod
    def _cause_ids(cls, value: Any) -> Any:
        """Accept events themselves as causes, as ``append`` does."""
        if isinstance(value, list | tuple):
            return tuple(getattr(v, "id", v) for v in value)
        return value


class Event(_Frozen):
    """One committed event.

    Attributes:
        id: UUIDv7, unique and time-ordered.
        seq: Position in this ledger (1-based, gap-free); also its Merkle leaf index + 1.
        ts: UTC time of the commit.
        at: World time, if the producer gave one.
        actor: The principal that caused the event.
        kind: Registered kind name.
        causes: Ids of the events that led to this one.
        thread: Conversation or trace id.
        meta: Structured fields, validated for the kind.
        content: The payload, or ``None`` when there is none or it was erased.
        content_type: How ``content`` is encoded, ``None`` when there is no content.
        digest: Hex SHA-256 of salt and content, the value the leaf commits to.
        erased: True once the content has been erased.
    """

    id: uuid.UUID
    seq: int
    ts: datetime
    at: datetime | None = None
    actor: str
    kind: str
    causes: tuple[uuid.UUID, ...] = ()
    thread: str | None = None
    meta: dict[str, JsonValue] = Field(default_factory=dict)
    content: Content | None = None
    content_type: ContentType | None = None
    digest: str | None = None
    erased: bool = False


class Page(_Frozen):
    """One page of a query, newest or oldest first; pass ``next_cursor`` to get the next."""

    events: list[Event]
    next_cursor: int | None = None


class Edge(_Frozen):
    """A "why" edge: ``cause`` led to ``effect``."""

    cause: uuid.UUID
    effect: uuid.UUID


class Subgraph(_Frozen):
    """Events reached from ``root`` by walking causes (``why``) or effects.

    Attributes:
        root: The event the walk started from.
        direction: ``causes`` for why, ``effects`` for effects.
        nodes: Every event reached, the root included, ordered by seq.
        edges: Edges between reached nodes.
        depth: Depth of each node from the root, by id string.
        truncated: True if ``depth`` or ``limit`` stopped the walk early.
    """

    root: uuid.UUID
    direction: Literal["causes", "effects"]
    nodes: list[Event]
    edges: list[Edge]
    depth: dict[str, int]
    truncated: bool = False

    def origins(self) -> list[Event]:
        """Nodes with no causes inside the subgraph: the origins of a ``why`` walk."""
        has_cause = {e.effect for e in self.edges}
        return [n for n in self.nodes if n.id not in has_cause]


class Checkpoint(_Frozen):
    """A signed statement of the tree: "the first ``tree_size`` events have this root".

    The signature is Ed25519 over :meth:`signed_bytes`, with the habitat's key.
    """

    tree_size: int
    root: str
    ts: datetime
    signature: str
    public_key: str

    def signed_bytes(self) -> bytes:
        """The exact bytes that were signed."""
        return checkpoint_message(self.tree_size, bytes.fromhex(self.root), self.ts)


def checkpoint_message(tree_size: int, root: bytes, ts: datetime) -> bytes:
    """Bytes an Ed25519 checkpoint signature covers."""
    micros = int(ts.timestamp() * 1_000_000) if ts.tzinfo else 0
    return b"habitus checkpoint v1\n%d\n%s\n%d\n" % (tree_size, root.hex().encode(), micros)


class InclusionProof(_Frozen):
    """Proof that the event at ``seq`` is leaf ``seq - 1`` of the tree of ``tree_size`` leaves."""

    seq: int
    tree_size: int
    leaf: str
    root: str
    path: list[str]


class ConsistencyProof(_Frozen):
    """Proof that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    path: list[str]


class Problem(_Frozen):
    """One thing verification found wrong, at the first sequence number it affects."""

    seq: int
    where: Literal["event", "content", "leaf", "node", "checkpoint", "sequence", "cause", "erasure"]
    reason: str


class VerifyReport(_Frozen):
    """Outcome of :meth:`Ledger.verify`.

    Attributes:
        ok: True when nothing is wrong.
        events: Number of events checked.
        checkpoints: Number of signed checkpoints checked.
        root: Recomputed root over all events.
        problems: What is wrong, first affected ``seq`` first (at most a few).
        seconds: Wall time taken.
    """

    ok: bool
    events: int
    checkpoints: int
    root: str
    problems: list[Problem]
    seconds: float

    @property
    def first_bad_seq(self) -> int | None:
        """The first sequence number affected by a problem, if any."""
        return self.problems[0].seq if self.problems else None


class Erasure(_Frozen):
    """Result of :meth:`Ledger.erase`.

    Attributes:
        target: The event whose content was erased.
        event: The ``content.erased`` event recording it.
        scrubbed: True when the habitat's files were rewritten so that no copy
            of the content remains on disk.
    """

    target: uuid.UUID
    event: Event
    scrubbed: bool


_new_object = object.__new__
_set = object.__setattr__
M = TypeVar("M", bound=BaseModel)


def construct_checked(model: type[M], fields: dict[str, Any], fields_set: set[str]) -> M:
    """Build a pydantic model from values Habitus itself produced and checked, skipping validation.

    The delivery path builds tens of thousands of events and messages a second from data
    the ledger has just validated and encoded; ``model_construct`` costs several times
    more. ``fields`` must hold every field with its final type, and ``fields_set`` (shared,
    never mutated: the models are frozen) name them all (tests check the results equal
    the validated models).
    """
    value = _new_object(model)
    _set(value, "__dict__", fields)
    _set(value, "__pydantic_fields_set__", fields_set)
    _set(value, "__pydantic_extra__", None)
    _set(value, "__pydantic_private__", None)
    return value


_ALL_FIELDS_SET = set(Event.model_fields)


def fast_event(fields: dict[str, Any]) -> Event:
    """An :class:`Event` from every one of its fields, produced by the ledger (see :func:`construct_checked`)."""
    return construct_checked(Event, fields, _ALL_FIELDS_SET)


_UUID_SAFE = uuid.SafeUUID.unknown


def uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` without its argument checks (raw is always 16 stored bytes)."""
    value = _new_object(uuid.UUID)
    _set(value, "int", int.from_bytes(raw, "big"))
    _set(value, "is_safe", _UUID_SAFE)
    return value
