"""What memories, recall hits and facts look like to users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

__all__ = ["Fact", "Forgotten", "Hit", "MemoryRecord", "Recall"]


class MemoryRecord(BaseModel):
    """One memory.

    Attributes:
        id: The id of its ``memory.remembered`` event (cite it as a cause).
        seq: That event's seq.
        agent: The agent whose memory it is (who remembered it).
        scope: Where it lives: ``agent:<id>`` (private), ``group:<name>`` or ``public``.
        kind: ``message``, ``observation``, ``note``, ``summary``... (free-form).
        text: What is remembered.
        at: World time: when what it describes happened (``None`` if unknown).
        recorded_at: System time: when it was remembered.
        tags: Free-form tags.
        attrs: Free-form JSON attributes (e.g. ``speaker``).
        sources: The events it came from (its provenance); empty for a first-hand note.
        importance: 0..1; decay and capacity drop the least important first.
        expires_at: When it is forgotten on its own (its TTL), if ever.
        thread: The conversation or episode it belongs to, if any.
        embedder: The model its vector came from (``None``: lexical only).
        trust: ``untrusted`` when it came from an untrusted source (a ``source:`` principal,
            a message or memory labelled untrusted, or an agent handling one), else ``trusted``.
            A label once ``untrusted`` is kept by everything derived from it.
    """

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    seq: int
    agent: str
    scope: str
    kind: str
    text: str
    at: datetime | None
    recorded_at: datetime
    tags: list[str]
    attrs: dict[str, JsonValue]
    sources: list[uuid.UUID]
    importance: float
    expires_at: datetime | None
    thread: str | None
    embedder: str | None
    trust: Literal["trusted", "untrusted"] = "trusted"


class Hit(BaseModel):
    """One recalled memory, its score, and why it matched.

    Attributes:
        record: The memory.
        score: Its fused score (higher is better; comparable within one recall only).
        why: The evidence behind the score: ranks and scores per signal (``lexical``,
            ``dense``, ``time``, ``entities``, ``recency``, ``context``), each present only
            when that signal contributed.
        provenance: The event that stored it, then the events it came from.
    """

    model_config = ConfigDict(frozen=True)

    record: MemoryRecord
    score: float
    why: dict[str, Any]
    provenance: list[uuid.UUID]


class Recall(BaseModel):
    """The result of one recall: the hits, best first, and the ``memory.recalled`` event that lists them."""

    model_config = ConfigDict(frozen=True)

    hits: list[Hit]
    event: uuid.UUID | None
    query: str
    time_filter: str | None = None

    def __iter__(self) -> Any:  # iterate the hits
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]


class Fact(BaseModel):
    """A belief: ``subject predicate value``, with when it holds and when it was believed.

    Attributes:
        id: The ``fact.asserted`` event that asserted it.
        agent: Whose belief it is.
        scope: Where it lives.
        subject, predicate, value: What is believed.
        valid_from, valid_to: World time in which it holds (``None``: unbounded).
        recorded_at: System time it was recorded (believed from).
        superseded_at: System time it stopped being believed (``None``: still believed).
        superseded_by: The assertion that replaced it.
        sources: The events it came from.
        trust: ``untrusted`` when it was asserted from untrusted content (as for memories).
        current: Believed now (not superseded).
    """

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    agent: str
    scope: str
    subject: str
    predicate: str
    value: JsonValue
    valid_from: datetime | None
    valid_to: datetime | None
    recorded_at: datetime
    superseded_at: datetime | None
    superseded_by: uuid.UUID | None
    sources: list[uuid.UUID]
    trust: Literal["trusted", "untrusted"] = "trusted"

    @property
    def current(self) -> bool:
        """Still believed (not superseded)."""
        return self.superseded_at is None


class Forgotten(BaseModel):
    """What :meth:`AgentMemory.forget` did: the memory (or fact) erased and the events recording it."""

    model_config = ConfigDict(frozen=True)

    memory: uuid.UUID
    event: uuid.UUID
    erasure: uuid.UUID
    scrubbed: bool
