"""Agents, mailboxes and approvals as one principal sees them (a mixin of :class:`~habitus._acting.Acting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from habitus._habitat import Habitat

__all__ = ["_Managing"]


class _Managing:
    """Listing and inspecting agents, their mailboxes, and approvals, as the principal may."""

    _hab: Habitat
    principal: str
    on_behalf_of: str | None
