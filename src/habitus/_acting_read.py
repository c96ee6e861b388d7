"""Reading the ledger as one principal: which events it may see (a mixin of :class:`~habitus._acting.Acting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from habitus._habitat import Habitat

__all__ = ["_Reading"]


class _Reading:
    """Ledger reads filtered to what the principal may see."""

    _hab: Habitat
    principal: str
    on_behalf_of: str | None
