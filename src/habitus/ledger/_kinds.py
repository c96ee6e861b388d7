"""The closed registry of event kinds.

Every event's ``kind`` is a dotted name (``family.verb``) registered here with
a Pydantic model for its ``meta`` and a rule for its content. Appending an
event of an unregistered kind is refused. The registry is extended only by
Habitus's own subsystems, each declaring its family in one module (see
:mod:`habitus.ledger._core_kinds`); ``docs/kinds.md`` lists every kind and a
test keeps that page and this registry in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from habitus.errors import InvalidMetaError, UnknownKindError

__all__ = ["KindSpec", "MetaModel", "all_kinds", "get_kind", "register_kinds"]

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

ContentRule = Literal["required", "optional", "none"]


class MetaModel(BaseModel):
    """Base of every kind's meta model: unknown fields are refused, values are JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoMeta(MetaModel):
    """Meta of a kind that carries no structured fields."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One registered event kind.

    Attributes:
        name: Dotted kind name, e.g. ``message.sent``.
        summary: One line saying when the event is appended.
        meta: Model that validates the event's meta.
        content: Whether content is required, optional or forbidden.
    """

    name: str
    summary: str
    meta: type[MetaModel] = NoMeta
    content: ContentRule = "optional"

    def validate_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Validate ``meta`` against this kind's model and return it in canonical form."""
        try:
            model = self.meta.model_validate(meta)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(meta)'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidMetaError(f"meta for kind {self.name!r} is invalid: {problems}") from None
        return model.model_dump(mode="json", exclude_defaults=True)


_REGISTRY: dict[str, KindSpec] = {}


def register_kinds(*specs: KindSpec) -> None:
    """Add kinds to the registry. For Habitus's own subsystems; names must be new."""
    for spec in specs:
        if not _KIND_RE.match(spec.name):
            raise ValueError(f"kind name {spec.name!r} is not a dotted lower-case name like 'message.sent'")
        if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
            raise ValueError(f"kind {spec.name!r} is already registered")
        _REGISTRY[spec.name] = spec


def get_kind(name: str) -> KindSpec:
    """Return the spec of a registered kind, or raise :class:`UnknownKindError`."""
    spec = _REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownKindError(f"event kind {name!r} is not registered; known kinds: {known}")
    return spec


def all_kinds() -> Iterator[KindSpec]:
    """Every registered kind, sorted by name."""
    for name in sorted(_REGISTRY):
        yield _REGISTRY[name]
