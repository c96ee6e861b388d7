"""Granting and revoking capabilities, delegation, and the rules that want a human (approval rules)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from habitus.control._approvals import _Approvals
from habitus.control._rules import (
    Capability,
    check_action,
    check_principal,
    covers,
    expand_self,
    matches,
    normalise_resource,
)
from habitus.errors import InvalidRequestError
from habitus.ledger._codec import to_micros
from habitus.ledger._rows import as_uuid

__all__ = ["_Grants"]


class _Grants(_Approvals):
    """The capabilities and approval rules of :class:`~habitus.control.Control`: granted and revoked as events,
    kept current by its replay of ``capability.*`` and ``approval.required``/``waived``. (A grant a rule wants
    a human for waits in the approval queue it builds on.)"""

    _caps: dict[str, Capability]
    _rules: dict[tuple[str, str], str]

    if TYPE_CHECKING:

        def _writable_by_system(self, by: str) -> None: ...
        def _ruled(self, action: str, resource: str) -> bool: ...
        def _holds(self, principal: str, action: str, resource: str) -> tuple[str | None, bool]: ...
        def _candidates(self, principal: str) -> list[Capability]: ...

    async def grant(
        self,
        subject: str,
        action: str,
        resource: str,
        *,
        by: str = "system",
        approval: bool = False,
        until: datetime | None = None,
    ) -> Capability:
        """Grant ``subject`` the right to ``action`` on resources matching ``resource``.

        ``by`` must hold what it grants (attenuation) and may not grant to itself.
        ``tool:call shell`` means ``tool:shell``; ``memory:read team-a`` means
        ``scope:group:team-a``; ``scope:self`` is the subject's own memory.

        Raises:
            InvalidRequestError: A malformed subject, action or resource.
            PolicyDeniedError: ``by`` does not hold it, or grants to itself.
        """
        check_principal(subject, what="subject", pattern=True)
        check_principal(by, what="by")
        check_action(action)
        resource = normalise_resource(action, resource)
        if until is not None and (until.tzinfo is None or until <= datetime.now(UTC)):
            raise InvalidRequestError(f"until must be a future, timezone-aware time, not {until!r}")
        self._writable()
        if by != "system":
            if matches(subject, by):
                await self.deny(by, "capability:grant", subject, "nobody widens their own capabilities")
            held = self._covering(by, action, resource if "*" in subject else expand_self(resource, subject))
            if held is None:
                await self.deny(by, "capability:grant", subject, f"{by} does not hold {action} {resource} itself")
            if self._ruled("capability:grant", subject):  # holding it is the right; a rule may want a human too
                detail = {"action": action, "resource": resource}
                await self.await_approval(by, "capability:grant", subject, detail=detail)
        meta: dict[str, Any] = {"subject": subject, "action": action, "resource": resource}
        if approval:
            meta["approval"] = True
        if until is not None:
            meta["until"] = to_micros(until)
        event = await self._ledger.append("capability.granted", actor=by, meta=meta)
        self._load()
        return self._caps[str(event.id)]

    def _covering(self, by: str, action: str, resource: str) -> str | None:
        """Why ``by`` holds every (action, resource) the pattern pair names, or None."""
        if "*" not in action and "*" not in resource:
            return self._holds(by, action, resource)[0] if self.decide(by, action, resource).allowed else None
        for cap in self._caps.values():
            if (
                matches(cap.subject, by)
                and covers(cap.action, action)
                and covers(expand_self(cap.resource, by), resource)
            ):
                return str(cap.id)
        return None

    async def revoke(self, capability: str | uuid.UUID, *, by: str = "system") -> Capability:
        """Take back a capability; only the habitat or whoever granted it may.

        Raises:
            InvalidRequestError: No such capability (or it was already revoked).
            PolicyDeniedError: ``by`` did not grant it.
        """
        self._load()
        cap = self._caps.get(str(as_uuid(capability)))
        if cap is None:
            raise InvalidRequestError(
                f"no capability {str(capability)!r}; list them with capabilities() or 'habitus capabilities'"
            )
        self._writable()
        if by not in ("system", cap.granted_by):
            await self.deny(by, "capability:revoke", cap.subject, f"it was granted by {cap.granted_by}, not {by}")
        meta = {"capability": str(cap.id), "subject": cap.subject, "action": cap.action, "resource": cap.resource}
        await self._ledger.append("capability.revoked", actor=by, meta=meta, causes=[cap.id])
        return cap

    async def delegate(self, to: str, on_behalf_of: str, *, by: str | None = None) -> Capability:
        """Let ``to`` act on behalf of ``on_behalf_of`` (who grants it, unless ``by`` is the habitat).

        Acting for someone never adds rights: it needs both its own and theirs.
        """
        check_principal(on_behalf_of, what="on_behalf_of")
        return await self.grant(to, "principal:act", on_behalf_of, by=by or on_behalf_of)

    def capabilities(self, subject: str | None = None) -> list[Capability]:
        """Capabilities in force, oldest first; with ``subject``, those that apply to that principal."""
        self._load()
        if subject is None:
            return sorted(self._caps.values(), key=lambda c: c.seq)
        return sorted((c for c in self._candidates(subject) if matches(c.subject, subject)), key=lambda c: c.seq)

    async def require_approval(self, action: str, resource: str = "*", *, by: str = "system") -> None:
        """Make ``action`` on resources matching ``resource`` wait for a human, for everyone but the habitat."""
        check_action(action)
        resource = normalise_resource(action, resource)
        self._writable_by_system(by)
        await self._ledger.append("approval.required", actor=by, meta={"action": action, "resource": resource})

    async def waive_approval(self, action: str, resource: str = "*", *, by: str = "system") -> None:
        """Remove an approval rule added by :meth:`require_approval`."""
        resource = normalise_resource(action, resource)
        self._load()
        if (action, resource) not in self._rules:
            raise InvalidRequestError(f"no approval rule for {action} {resource}")
        self._writable_by_system(by)
        await self._ledger.append("approval.waived", actor=by, meta={"action": action, "resource": resource})

    def approval_rules(self) -> list[tuple[str, str]]:
        """The (action, resource pattern) pairs that wait for a human."""
        self._load()
        return sorted(self._rules)
