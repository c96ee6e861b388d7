"""The ``memory`` and ``fact`` kind families: what was remembered, recalled, forgotten, asserted."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["MEMORY_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Id = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")]


class RememberedMeta(MetaModel):
    """Meta of ``memory.remembered``: whose memory, where it lives, and how it is kept.

    The text is the content; the sources are the event's causes; world time is its ``at``.
    ``trust`` is ``untrusted`` when it came from an untrusted source (absent: trusted).
    """

    agent: _Name
    scope: _Name
    kind: _Name
    speaker: _Name | None = None
    tags: Annotated[list[_Name], Field(default_factory=list, max_length=32)]
    attrs: dict[str, Any] = Field(default_factory=dict)
    importance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    expires: int | None = None
    embedder: _Name | None = None
    trust: Literal["untrusted"] | None = None


class RecalledMeta(MetaModel):
    """Meta of ``memory.recalled``: who asked, where it looked, and what came back, best first.

    The query is the content; the memories returned are also the event's causes.
    """

    agent: _Name
    scopes: Annotated[list[_Name], Field(max_length=64)]
    k: Annotated[int, Field(ge=1, le=1000)]
    returned: Annotated[list[_Id], Field(max_length=1000)]
    scores: Annotated[list[float], Field(max_length=1000)]


class ForgottenMeta(MetaModel):
    """Meta of ``memory.forgotten``: which memory or fact, and why (the ``content.erased`` beside it erased it)."""

    agent: _Name
    memory: _Id
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    cause: Annotated[str, Field(pattern=r"^(explicit|ttl|capacity|decay)$")] = "explicit"


class ReindexedMeta(MetaModel):
    """Meta of ``memory.reindexed``: the embedder the vectors now come from, and how many were redone."""

    embedder: _Name
    previous: Annotated[list[_Name], Field(max_length=64)]
    count: int


class FactAssertedMeta(MetaModel):
    """Meta of ``fact.asserted``: whose belief, its world-time validity, and what it supersedes.

    ``{"subject", "predicate", "value"}`` is the content; sources and superseded facts are causes.
    ``trust`` is ``untrusted`` when it was asserted from untrusted content (absent: trusted).
    """

    agent: _Name
    scope: _Name
    valid_from: int | None = None
    valid_to: int | None = None
    supersedes: Annotated[list[_Id], Field(default_factory=list, max_length=256)]
    trust: Literal["untrusted"] | None = None


MEMORY_KINDS = (
    KindSpec("memory.remembered", "An agent stored a memory (its text is the content).", RememberedMeta, "required"),
    KindSpec(
        "memory.recalled",
        "An agent recalled memories; the ones returned are listed and cited.",
        RecalledMeta,
        "required",
    ),
    KindSpec("memory.forgotten", "A memory or fact was forgotten; its text was erased.", ForgottenMeta, "none"),
    KindSpec("memory.reindexed", "Memories were embedded again with another model.", ReindexedMeta, "none"),
    KindSpec(
        "fact.asserted",
        "An agent asserted a fact (subject, predicate, value) with its validity; it may supersede others.",
        FactAssertedMeta,
        "required",
    ),
)

register_kinds(*MEMORY_KINDS)
