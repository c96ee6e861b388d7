"""Trust labels: content from outside (``source:*`` by default) is untrusted, and keeps that label."""

from __future__ import annotations

from typing import TYPE_CHECKING

from habitus.control._rules import check_principal, matches
from habitus.errors import InvalidRequestError

if TYPE_CHECKING:
    from habitus.ledger._ledger import Ledger
    from habitus.storage._sqlite import SQLiteStore

__all__ = ["TrustLabel", "_Trust"]

TrustLabel = str
"""``trusted`` or ``untrusted``."""


class _Trust:
    """The trust labels of :class:`~habitus.control.Control` (kept current by its replay of ``trust.labelled``)."""

    _ledger: Ledger
    _store: SQLiteStore
    _loaded: bool
    _trust: dict[str, str]

    if TYPE_CHECKING:

        def _load(self) -> None: ...
        def _writable_by_system(self, by: str) -> None: ...

    async def label(self, principal: str, label: TrustLabel, *, by: str = "system") -> None:
        """Label content from principals matching ``principal`` ``trusted`` or ``untrusted``.

        By default ``source:*`` (sensors, web pages, anything from outside) is
        untrusted and every other principal trusted.
        """
        check_principal(principal, what="principal", pattern=True)
        if label not in ("trusted", "untrusted"):
            raise InvalidRequestError(f"label must be 'trusted' or 'untrusted', not {label!r}")
        self._writable_by_system(by)
        await self._ledger.append("trust.labelled", actor=by, meta={"principal": principal, "label": label})

    def trust_of(self, principal: str) -> TrustLabel:
        """The trust label content from ``principal`` carries (the most specific matching label wins)."""
        if self._loaded and not self._trust and not self._store.read_only:  # no labels (the usual case)
            return "untrusted" if principal.startswith("source:") else "trusted"
        self._load()
        found = self._trust.get(principal)
        if found is not None:
            return found
        best: tuple[int, str] | None = None
        for pattern, label in self._trust.items():
            if matches(pattern, principal) and (best is None or len(pattern) > best[0]):
                best = (len(pattern), label)
        if best is not None:
            return best[1]
        return "untrusted" if principal.startswith("source:") else "trusted"
