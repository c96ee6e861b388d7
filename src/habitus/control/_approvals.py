"""Approvals: actions that wait for a human, a queue of requests, and the decisions as events.

A request is an ``approval.requested`` event, committed on its own (so it is
in the queue even while the handler that asked is still open) and caused by
the message being handled. Its key is derived from the principal, the action,
the resource, the detail and that message, so a handler run again after a
restart finds its request, and its decision, instead of asking twice.

A writing command from another process (``habitus approvals approve`` while
``habitus run`` holds the habitat) cannot append; it drops the decision in the
habitat's ``inbox/`` folder, and the running process records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from habitus.control._rules import check_principal
from habitus.errors import (
    ApprovalPendingError,
    ApprovalRejectedError,
    EventNotFoundError,
    InvalidRequestError,
    PolicyDeniedError,
)
from habitus.ledger._context import current_context
from habitus.ledger._rows import as_uuid

if TYPE_CHECKING:
    from habitus.agents._registry import Agents
    from habitus.control._rules import Capability, Decision
    from habitus.ledger._ledger import Ledger
    from habitus.storage._sqlite import SQLiteStore

__all__ = ["Approval", "ApprovalStatus"]

ApprovalStatus = Literal["pending", "approved", "rejected"]

_POLL = 0.25  # seconds between looks at the inbox while someone waits


class Approval(BaseModel):
    """One request for a human's approval, and its decision once made.

    Attributes:
        id: The id of its ``approval.requested`` event.
        seq: That event's seq.
        principal: Who asked.
        action: What it wants to do.
        resource: On what.
        on_behalf_of: For whom it acts, if not itself.
        status: ``pending``, ``approved`` or ``rejected``.
        decided_by: Who decided, once decided.
        reason: The reason given with the decision, if any.
        key: What identifies the request across a restart.
    """

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    seq: int
    principal: str
    action: str
    resource: str
    on_behalf_of: str | None = None
    status: ApprovalStatus = "pending"
    decided_by: str | None = None
    reason: str | None = None
    key: str


class _Approvals:
    """The approval queue of :class:`~habitus.control.Control`."""

    _ledger: Ledger
    _store: SQLiteStore
    _agents: Agents
    inbox: Path | None

    if TYPE_CHECKING:

        def _load(self) -> None: ...
        def capabilities(self, subject: str | None = None) -> list[Capability]: ...
        def _writable(self) -> None: ...
        def decide(
            self, principal: str, action: str, resource: str, *, on_behalf_of: str | None = None
        ) -> Decision: ...
        async def deny(
            self, principal: str, action: str, resource: str, reason: str, *, error: type[PolicyDeniedError] = ...
        ) -> None: ...

    def _init_approvals(self) -> None:
        self._approvals: dict[str, Approval] = {}
        self._approval_keys: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self.inbox = None
        # Deciding checks "still pending" and then appends: two deciders at once (the runtime's look at
        # the inbox and a waiting agent's) must not both record the same decision.
        self._deciding = asyncio.Lock()
        self._inboxing = False

    # -- asking -----------------------------------------------------------------------------

    async def await_approval(
        self,
        principal: str,
        action: str,
        resource: str,
        *,
        on_behalf_of: str | None = None,
        detail: Any = None,
        timeout: float | None = None,
    ) -> Approval:
        """Ask a human to approve (or find the request already made) and wait for the decision.

        Raises:
            ApprovalRejectedError: A human rejected it.
            ApprovalPendingError: ``timeout`` seconds passed first; the request stays in the queue.
        """
        self._load()
        causes = current_context().causes
        # Outside a handler there is nothing to recognise a retry by: each call is its own request.
        basis = [principal, action, resource, on_behalf_of or "", *(str(c) for c in causes)]
        if detail is not None:  # approving one tool call's arguments is not approving another's
            basis.append(json.dumps(detail, sort_keys=True, default=str))
        if not causes:
            basis.append(str(uuid.uuid4()))
        key = hashlib.sha256("\x1f".join(basis).encode()).hexdigest()[:32]
        found = self._approval_keys.get(key)
        if found is None:
            self._writable()
            meta: dict[str, Any] = {"principal": principal, "action": action, "resource": resource, "key": key}
            if on_behalf_of is not None:
                meta["on_behalf_of"] = on_behalf_of
            event = await self._ledger.append("approval.requested", actor=principal, meta=meta, content=detail)
            self._load()
            found = str(event.id)
        approval = await self._wait_for(found, timeout)
        if approval.status == "rejected":
            raise ApprovalRejectedError(
                f"{approval.decided_by} rejected {principal} {action} {resource}"
                + (f": {approval.reason}" if approval.reason else "")
                + f" (approval {approval.id})",
                principal=principal,
                action=action,
                resource=resource,
            )
        return approval

    async def _wait_for(self, approval_id: str, timeout: float | None) -> Approval:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            current = self._approvals[approval_id]
            if current.status != "pending":
                return current
            if deadline is not None and loop.time() >= deadline:
                raise ApprovalPendingError(
                    f"approval {approval_id} for {current.principal} {current.action} {current.resource} "
                    f"is still pending; decide it with 'habitus approvals approve {approval_id}'"
                )
            waiter = self._waiters.setdefault(approval_id, asyncio.Event())
            wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), wait)
            await self.process_inbox()

    # -- deciding ---------------------------------------------------------------------------

    async def approve(self, approval: str | uuid.UUID, *, by: str, reason: str | None = None) -> Approval:
        """Approve a pending request; the waiting principal goes ahead.

        Raises:
            InvalidRequestError: No such request, or it was already decided.
            PolicyDeniedError: ``by`` may not decide it (only the habitat, the owner
                of the requesting agent, or a principal granted ``approval:decide``).
        """
        return await self._decide(approval, "approved", by, reason)

    async def reject(self, approval: str | uuid.UUID, *, by: str, reason: str | None = None) -> Approval:
        """Reject a pending request; the waiting principal gets :class:`ApprovalRejectedError`."""
        return await self._decide(approval, "rejected", by, reason)

    async def _decide(
        self, approval: str | uuid.UUID, decision: Literal["approved", "rejected"], by: str, reason: str | None
    ) -> Approval:
        async with self._deciding:
            return await self._decide_now(approval, decision, by, reason)

    async def _decide_now(
        self, approval: str | uuid.UUID, decision: Literal["approved", "rejected"], by: str, reason: str | None
    ) -> Approval:
        check_principal(by, what="by")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise InvalidRequestError("reason must be a string of at most 1000 characters")
        self._load()
        aid = str(as_uuid(str(approval)))
        current = self._approvals.get(aid)
        if current is None:
            raise EventNotFoundError(f"no approval request {aid!r}; list them with 'habitus approvals'")
        if current.status != "pending":
            raise InvalidRequestError(f"approval {aid} was already {current.status} by {current.decided_by}")
        self._writable()
        if by != "system":
            if by == current.principal or (current.on_behalf_of is not None and by == current.on_behalf_of):
                await self.deny(by, "approval:decide", current.principal, "nobody approves their own request")
            if not self._may_decide(by, current):
                verdict = self.decide(by, "approval:decide", current.principal)
                await self.deny(by, "approval:decide", current.principal, verdict.reason)
        meta: dict[str, Any] = {"approval": aid, "decision": decision}
        if reason:
            meta["reason"] = reason
        await self._ledger.append("approval.decided", actor=by, meta=meta, causes=[uuid.UUID(aid)])
        self._load()
        return self._approvals[aid]

    def _may_decide(self, by: str, request: Approval) -> bool:
        """Whether ``by`` may decide ``request``: it may decide for the requester (its owner, or
        granted ``approval:decide``), it owns the agent the request is about, or it granted the
        capability that makes the request wait."""
        if self.decide(by, "approval:decide", request.principal).allowed:
            return True
        resource = request.resource
        target = (
            resource[6:]
            if resource.startswith("agent:")
            else resource[12:]
            if resource.startswith("scope:agent:")
            else None
        )
        if target is not None and self._agents.owner(target) == by:
            return True
        return any(
            cap.approval and cap.granted_by == by and cap.applies(request.principal, request.action, resource)
            for cap in self.capabilities(request.principal)
        )

    def approvals(self, *, status: ApprovalStatus | None = "pending") -> list[Approval]:
        """Requests in the order they were made; ``status=None`` for all of them."""
        self._load()
        return [a for a in sorted(self._approvals.values(), key=lambda a: a.seq) if status in (None, a.status)]

    def approval(self, approval: str | uuid.UUID) -> Approval:
        """One request.

        Raises:
            InvalidRequestError: No such request.
        """
        self._load()
        aid = str(as_uuid(str(approval)))
        found = self._approvals.get(aid)
        if found is None:
            raise EventNotFoundError(f"no approval request {aid!r}; list them with 'habitus approvals'")
        return found

    # -- from other processes ---------------------------------------------------------------

    def post_decision(
        self, approval: str | uuid.UUID, decision: Literal["approved", "rejected"], *, by: str, reason: str | None
    ) -> Path:
        """Leave a decision in the inbox for the process that holds the habitat (from a read-only handle)."""
        if self.inbox is None:
            raise InvalidRequestError("this habitat has no inbox")
        check_principal(by, what="by")
        if decision not in ("approved", "rejected"):
            raise InvalidRequestError(f"decision must be 'approved' or 'rejected', not {decision!r}")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise InvalidRequestError("reason must be a string of at most 1000 characters")
        aid = str(as_uuid(str(approval)))
        self.inbox.mkdir(exist_ok=True)
        body = {"approval": aid, "decision": decision, "by": by, "reason": reason}
        tmp = self.inbox / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(body), encoding="utf-8")
        final = self.inbox / f"{uuid.uuid4().hex}.json"
        os.replace(tmp, final)  # appears whole, or not at all
        return final

    async def process_inbox(self) -> int:
        """Record the decisions other processes left in the inbox; return how many were recorded.

        A decision that cannot be recorded (unknown request, decided already, a
        principal not allowed to decide) is set aside as ``<file>.refused`` with the reason.
        """
        if self.inbox is None or self._store.read_only or not self.inbox.is_dir():
            return 0
        if self._inboxing:
            return 0  # another task is reading it right now
        self._inboxing = True
        try:
            return await self._read_inbox(self.inbox)
        finally:
            self._inboxing = False

    async def _read_inbox(self, inbox: Path) -> int:
        done = 0
        for file in sorted(inbox.glob("*.json")):
            try:
                body = json.loads(file.read_text(encoding="utf-8"))
                decision = body["decision"]
                if decision not in ("approved", "rejected"):
                    raise InvalidRequestError(f"decision must be approved or rejected, not {decision!r}")
                await self._decide(body["approval"], decision, str(body["by"]), body.get("reason"))
                done += 1
                file.unlink(missing_ok=True)
            except (OSError, ValueError, KeyError, TypeError, InvalidRequestError, PolicyDeniedError) as exc:
                with contextlib.suppress(OSError):
                    file.with_suffix(".refused").write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
                    file.unlink(missing_ok=True)
        return done

    # -- keeping current --------------------------------------------------------------------

    def _apply_approval(self, kind: str, event_id: str, seq: int, actor: str, meta: dict[str, Any]) -> None:
        if kind == "approval.requested":
            if event_id not in self._approvals:
                self._approvals[event_id] = Approval(
                    id=uuid.UUID(event_id),
                    seq=seq,
                    principal=meta["principal"],
                    action=meta["action"],
                    resource=meta["resource"],
                    on_behalf_of=meta.get("on_behalf_of"),
                    key=meta["key"],
                )
                self._approval_keys[meta["key"]] = event_id
        elif kind == "approval.decided":
            current = self._approvals.get(meta["approval"])
            if current is not None and current.status == "pending":
                self._approvals[meta["approval"]] = current.model_copy(
                    update={"status": meta["decision"], "decided_by": actor, "reason": meta.get("reason")}
                )
                waiter = self._waiters.pop(meta["approval"], None)
                if waiter is not None:
                    waiter.set()
