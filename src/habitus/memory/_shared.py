"""Helpers the memory modules share: time and JSON, scope names, and building records and facts from rows."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from habitus.agents._registry import agent_id
from habitus.errors import (
    InvalidRequestError,
)
from habitus.ledger._codec import from_micros, to_micros
from habitus.memory._models import Fact, MemoryRecord
from habitus.storage._memory import (
    FactRow,
    MemoryRow,
)

if TYPE_CHECKING:
    pass


__all__: list[str] = []

log = logging.getLogger("habitus.memory")

_GROUP_RE = re.compile(r"^group:[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")
_MAX_TEXT = 100_000
_MAX_K = 1000
_EMBED_BATCH = 256


def _now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidRequestError(f"{what} must be a datetime, not {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _check_scope(scope: str) -> str:
    if scope == "public" or _GROUP_RE.match(scope):
        return scope
    if isinstance(scope, str) and scope.startswith("agent:"):
        return f"agent:{agent_id(scope)}"
    raise InvalidRequestError(
        f"memory scope {scope!r} is not one of 'private', 'public', 'group:<name>' or 'agent:<id>'"
    )


def _overlaps(a_from: int | None, a_to: int | None, b_from: int | None, b_to: int | None) -> bool:
    lo = max(a_from if a_from is not None else -(1 << 62), b_from if b_from is not None else -(1 << 62))
    hi = min(a_to if a_to is not None else 1 << 62, b_to if b_to is not None else 1 << 62)
    return lo < hi


def _check_trust(trust: object) -> Literal["trusted", "untrusted"] | None:
    """A trust filter: ``trusted``, ``untrusted`` or ``None`` (no filter)."""
    if trust is None or trust == "trusted" or trust == "untrusted":
        return trust
    raise InvalidRequestError(f"trust must be 'trusted', 'untrusted' or None, not {trust!r}")


def _passes(
    row: MemoryRow,
    since: datetime | None,
    until: datetime | None,
    kinds: set[str] | None,
    tags: set[str] | None,
    as_of: datetime | None,
    trust: str | None = None,
) -> bool:
    if trust is not None and (row.trust or "trusted") != trust:
        return False
    if since is not None and (row.at is None or row.at < to_micros(since)):
        return False
    if until is not None and (row.at is None or row.at >= to_micros(until)):
        return False
    if kinds is not None and row.kind not in kinds:
        return False
    if tags and not tags <= set(json.loads(row.tags)):
        return False
    return not (as_of is not None and row.recorded > to_micros(as_of))


def _record_from_row(row: MemoryRow) -> MemoryRecord:
    src = row.sources or b""
    sources = [uuid.UUID(bytes=src[i : i + 16]) for i in range(0, len(src), 16)]
    return MemoryRecord(
        id=uuid.UUID(bytes=row.id),
        seq=row.rid,
        agent=row.agent,
        scope=row.scope,
        kind=row.kind,
        text=row.text,
        at=from_micros(row.at) if row.at is not None else None,
        recorded_at=from_micros(row.recorded),
        tags=json.loads(row.tags),
        attrs=json.loads(row.attrs),
        sources=sources,
        importance=row.importance,
        expires_at=from_micros(row.expires) if row.expires is not None else None,
        thread=row.thread,
        embedder=row.embedder,
        trust="untrusted" if row.trust == "untrusted" else "trusted",
    )


def _record_from_draft(
    agent: str, d: Mapping[str, Any], id_: uuid.UUID, embedder: str | None, seq: int, ts: int
) -> MemoryRecord:
    # built from checked input: no second validation on the write path
    return MemoryRecord.model_construct(
        id=id_,
        seq=seq,
        agent=agent,
        scope=d["scope"],
        kind=d["kind"],
        text=d["text"],
        at=d["at"],
        recorded_at=from_micros(ts),
        tags=d["tags"],
        attrs=d["meta"],
        sources=d["sources"],
        importance=d["importance"],
        expires_at=from_micros(d["expires"]) if d["expires"] is not None else None,
        thread=d["thread"],
        embedder=embedder,
        trust=d["trust"],
    )


def _fact_from_rows(row: FactRow, sources: Sequence[uuid.UUID]) -> Fact:
    return Fact(
        id=uuid.UUID(bytes=row.id),
        agent=row.agent,
        scope=row.scope,
        subject=row.subject,
        predicate=row.predicate,
        value=json.loads(row.value),
        valid_from=from_micros(row.valid_from) if row.valid_from is not None else None,
        valid_to=from_micros(row.valid_to) if row.valid_to is not None else None,
        recorded_at=from_micros(row.recorded),
        superseded_at=from_micros(row.superseded) if row.superseded is not None else None,
        superseded_by=uuid.UUID(bytes=row.superseded_by) if row.superseded_by is not None else None,
        sources=list(sources),
        trust="untrusted" if row.trust == "untrusted" else "trusted",
    )
