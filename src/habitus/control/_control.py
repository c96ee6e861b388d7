"""The one place that says who may do what: capabilities, defaults, delegation, denials.

Every subsystem asks :meth:`Control.require` (or :meth:`Control.authorize`,
which also waits for approvals) before it acts for a principal: sending,
delivering, reading state, remembering, recalling, erasing, calling tools and
models. A refusal is a ``policy.denied`` event and a
:class:`~habitus.errors.PolicyDeniedError` naming the principal, the action
and the resource. The policy itself lives in the ledger as events
(``capability.granted``, ``approval.required``, ``budget.set``,
``trust.labelled``), replayed when the habitat opens and kept current by the
commit listener, so its whole history is auditable.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from habitus.control import _kinds  # noqa: F401  (registers the control kinds)
from habitus.control._budgets import _Budgets
from habitus.control._config import ControlConfig, period_seconds
from habitus.control._grants import _Grants
from habitus.control._rules import (
    RESERVED_KINDS,
    Capability,
    Decision,
    check_action,
    check_principal,
    matches,
    normalise_resource,
)
from habitus.control._tokens import Tokens
from habitus.control._trust import TrustLabel, _Trust
from habitus.errors import PolicyDeniedError, ReadOnlyHabitatError
from habitus.ledger._codec import from_micros
from habitus.storage._abstract import EventQuery, Row

if TYPE_CHECKING:
    from habitus.agents._registry import Agents
    from habitus.ledger._ledger import Ledger
    from habitus.storage._projections import Op
    from habitus.storage._sqlite import SQLiteStore

__all__ = ["Control", "PolicyHook", "PolicyRequest", "TrustLabel"]


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """What a policy hook is asked: may ``principal`` do ``action`` on ``resource``?"""

    principal: str
    action: str
    resource: str


PolicyHook = Callable[[PolicyRequest], str | None]
"""An extra rule of the app's own: returns ``None`` to allow, or the reason for refusing."""

_MEMO_MAX = 100_000
_OWNER_ACTIONS = ("message:send", "state:read", "state:write", "agent:manage", "ledger:erase", "approval:decide")

_POLICY_KINDS = ("capability.granted", "capability.revoked", "approval.required", "approval.waived",
                 "budget.set", "trust.labelled", "approval.requested", "approval.decided")  # fmt: skip


class Control(_Grants, _Budgets, _Trust):
    """Principals, capabilities, budgets, approvals and trust labels: the habitat's policy.

    Obtain it as :attr:`habitus.Habitat.control`. Defaults are safe and
    unsurprising: an agent reads and writes its own memory and state, messages
    agents of the same owner, reads ``public`` memory and appends its own
    (non-reserved) events; a human or service does the same for the agents it
    owns. Everything else needs a capability, granted by a principal who holds
    it (attenuation: nobody grants more than they have).
    """

    def __init__(self, ledger: Ledger, store: SQLiteStore, agents: Agents) -> None:
        self._ledger = ledger
        self._store = store
        self._agents = agents
        self._hooks: list[PolicyHook] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._memo: dict[tuple[str, str, str], Decision] = {}
        self._owners_memo: dict[str, Decision] = {}
        self._memoable = not store.read_only
        self._epoch = 0  # counts the changes that may change a decision (see unchanged_since)
        self._lapsing = False
        self._index: dict[str, list[Capability]] | None = None
        self._caps: dict[str, Capability] = {}
        self._rules: dict[tuple[str, str], str] = {}  # (action, resource) -> id of its approval.required
        self._trust: dict[str, str] = {}
        self._loaded = False
        self._seen_seq = 0
        self._init_approvals()
        self._init_budgets()
        ledger.on_commit(self._committed)
        agents.listen(self._forget_decisions)
        self.tokens = Tokens(ledger, store)
        """Tokens bound to principals, for the server and MCP over HTTP."""

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, principal: str, action: str, resource: str, *, on_behalf_of: str | None = None) -> Decision:
        """What the policy says about ``principal`` doing ``action`` on ``resource`` (no event, no wait)."""
        if on_behalf_of is None:
            known = self._memo.get((principal, action, resource))
            if known is not None:
                return known
            if action == "message:send" and self._memoable and not self._hooks and not self._rules:
                same = self._same_owner(principal, resource)  # the commonest question, answered by two owners
                if same is not None:
                    return same
        self._load()
        decision = self._evaluate(principal, action, normalise_resource(action, resource), on_behalf_of)
        # Every send and delivery asks: remember what was allowed until the policy or an agent's status
        # changes (both clear it). Refusals are not kept (an agent spawned later changes them), nor
        # answers a hook or a lapsing grant gave, nor a read-only handle's (another process writes).
        if decision.allowed and on_behalf_of is None and self._memoable and not self._hooks:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[(principal, action, resource)] = decision
        return decision

    def _same_owner(self, principal: str, resource: str) -> Decision | None:
        """For an agent messaging an agent: the default's answer, memoised by the pair of owners (the
        exact pair of agents rarely repeats); None when the default does not settle it."""
        if not (principal.startswith("agent:") and resource.startswith("agent:")) or not self._loaded:
            return None
        agents = self._agents
        sender, recipient = principal[6:], resource[6:]
        if agents.status(sender) not in ("spawned", "active"):
            return None
        owner = agents.owner(sender)
        if owner is None or owner != agents.owner(recipient):
            return None
        decision = self._owners_memo.get(owner)
        if decision is None:
            decision = self._owners_memo[owner] = Decision(True, f"agents of the same owner ({owner})")
        return decision

    @property
    def epoch(self) -> int:
        """Changes so far to what decisions depend on; pair with :meth:`unchanged_since`."""
        return self._epoch

    def unchanged_since(self, epoch: int) -> bool:
        """True if every decision taken at ``epoch`` would be taken again now, unasked.

        Nothing a decision depends on (capabilities, rules, trust labels, agents'
        statuses and owners, the app's hooks) has changed, no grant lapses with
        time, and no hook (which could answer differently each time) is set.
        """
        return epoch == self._epoch and self._memoable and not self._hooks

    def _forget_decisions(self, *_: object) -> None:
        self._epoch += 1
        self._memo.clear()
        self._owners_memo.clear()
        self._lapsing = any(c.until for c in self._caps.values())
        self._memoable = not self._store.read_only and not self._lapsing
        self._index = None

    def _candidates(self, principal: str) -> list[Capability]:
        """The capabilities whose subject may match ``principal``: its own, and those granted to patterns."""
        index = self._index
        if index is None:
            index = {}
            for cap in self._caps.values():
                index.setdefault("*" if "*" in cap.subject else cap.subject, []).append(cap)
            self._index = index
        return index.get(principal, []) + index.get("*", [])

    def _evaluate(self, principal: str, action: str, resource: str, on_behalf_of: str | None) -> Decision:
        if principal == "system":
            return Decision(True, "the habitat itself")
        if principal.startswith("agent:"):
            status = self._agents.status(principal[6:])
            if status is None:
                return Decision(False, f"there is no agent {principal[6:]!r}")
            if status in ("suspended", "retired"):
                return Decision(False, f"{principal} is {status}")
        reason, approval = self._holds(principal, action, resource)
        if reason is None:
            return Decision(False, f"no capability lets {principal} {action} {resource}")
        if on_behalf_of is not None and on_behalf_of != principal:
            if self._holds(principal, "principal:act", on_behalf_of)[0] is None:
                return Decision(False, f"{on_behalf_of} has not delegated to {principal}")
            theirs = self._evaluate(on_behalf_of, action, resource, None)
            if not theirs.allowed:
                return Decision(False, f"acting for {on_behalf_of}, who may not: {theirs.reason}")
            approval = approval or theirs.approval
        for hook in self._hooks:
            refusal = hook(PolicyRequest(principal, action, resource))
            if refusal is not None:
                return Decision(False, refusal)
        return Decision(True, reason, approval or self._ruled(action, resource))

    def _ruled(self, action: str, resource: str) -> bool:
        """True if an approval rule makes ``action`` on ``resource`` wait for a human."""
        if not self._rules:
            return False
        return any(matches(a, action) and matches(r, resource) for a, r in self._rules)

    def _holds(self, principal: str, action: str, resource: str) -> tuple[str | None, bool]:
        """Why ``principal`` holds (action, resource) by default or by grant (None if not), and if it needs approval."""
        reason = self._default(principal, action, resource)
        if reason is not None:
            return reason, False
        now = datetime.now(UTC) if self._lapsing else None
        best: Capability | None = None
        for cap in self._candidates(principal):
            if cap.applies(principal, action, resource, now) and (best is None or best.approval > cap.approval):
                best = cap
        if best is None:
            return None, False
        return f"capability {best.id} granted by {best.granted_by}", best.approval

    def _default(self, principal: str, action: str, resource: str) -> str | None:
        family, _, pid = principal.partition(":")
        if resource == principal and action in ("principal:act", "ledger:erase"):
            return "itself" if action == "principal:act" else "its own events"
        if action == "ledger:append" and resource.startswith("kind:"):
            kind = resource[5:]
            return None if kind.startswith(RESERVED_KINDS) or "*" in kind else "its own events"
        if action == "memory:read" and resource == "scope:public":
            return "public memory"
        if family == "agent":
            if resource == "scope:" + principal and action in ("memory:read", "memory:write", "memory:erase"):
                return "its own memory"
            if resource == principal and action in ("state:read", "state:write"):
                return "its own state"
            if action == "message:send" and resource.startswith("agent:"):
                owner = self._agents.owner(pid)
                if owner is not None and owner == self._agents.owner(resource[6:]):
                    return f"agents of the same owner ({owner})"
            return None
        if family in ("human", "service"):
            target = None
            if resource.startswith("agent:") and action in _OWNER_ACTIONS:
                target = resource[6:]
            elif resource.startswith("scope:agent:") and action in ("memory:read", "memory:write", "memory:erase"):
                target = resource[12:]
            if target is not None and "*" not in target and self._agents.owner(target) == principal:
                return f"{principal} owns agent {target!r}"
        return None

    async def require(
        self,
        principal: str,
        action: str,
        resource: str,
        *,
        on_behalf_of: str | None = None,
        error: type[PolicyDeniedError] = PolicyDeniedError,
    ) -> Decision:
        """Allow, or record a ``policy.denied`` event and raise; where a human must approve, ask and wait.

        Raises:
            PolicyDeniedError: (or ``error``) naming the principal, the action, the resource and why.
            ApprovalRejectedError: A human rejected it.
        """
        decision = self.decide(principal, action, resource, on_behalf_of=on_behalf_of)
        if not decision.allowed:
            await self.deny(principal, action, resource, decision.reason, error=error)
        if decision.approval:
            await self.approved(principal, action, resource, on_behalf_of=on_behalf_of, error=error)
        return decision

    async def approved(
        self,
        principal: str,
        action: str,
        resource: str,
        *,
        on_behalf_of: str | None = None,
        detail: Any = None,
        timeout: float | None = None,
        error: type[PolicyDeniedError] = PolicyDeniedError,
    ) -> None:
        """Wait for a human's approval of an allowed action, then check again (the wait may be long:
        a principal suspended, or a grant revoked, meanwhile is refused)."""
        normalised = normalise_resource(action, resource)
        await self.await_approval(
            principal, action, normalised, on_behalf_of=on_behalf_of, detail=detail, timeout=timeout
        )
        again = self.decide(principal, action, normalised, on_behalf_of=on_behalf_of)
        if not again.allowed:
            await self.deny(principal, action, normalised, again.reason, error=error)

    async def authorize(
        self,
        principal: str,
        action: str,
        resource: str,
        *,
        on_behalf_of: str | None = None,
        detail: Any = None,
        timeout: float | None = None,
    ) -> Decision:
        """Like :meth:`require`, and when the action needs a human, ask and wait for the decision.

        The request is keyed by principal, action, resource, ``detail`` and the
        message being handled, so a handler run again after a restart finds its
        request (and its decision) instead of asking twice.

        Raises:
            PolicyDeniedError: Refused by policy.
            ApprovalRejectedError: A human rejected it.
            ApprovalPendingError: ``timeout`` passed with no decision (the request stays queued).
        """
        resource = normalise_resource(action, resource)
        decision = self.decide(principal, action, resource, on_behalf_of=on_behalf_of)
        if not decision.allowed:
            await self.deny(principal, action, resource, decision.reason)
        if decision.approval:
            await self.approved(principal, action, resource, on_behalf_of=on_behalf_of, detail=detail, timeout=timeout)
        return decision

    async def deny(
        self,
        principal: str,
        action: str,
        resource: str,
        reason: str,
        *,
        error: type[PolicyDeniedError] = PolicyDeniedError,
    ) -> None:
        """Record a ``policy.denied`` event (unless read-only) and raise ``error``."""
        if not self._store.read_only:
            await self._ledger.append(
                "policy.denied",
                actor="system",
                meta={"principal": principal, "action": action, "resource": resource[:256], "reason": reason[:1000]},
            )
        raise error(
            f"{principal} may not {action} {resource}: {reason}", principal=principal, action=action, resource=resource
        )

    def refuse_soon(self, principal: str, action: str, resource: str, reason: str) -> PolicyDeniedError:
        """For synchronous callers: the error to raise now, with its ``policy.denied`` appended just after."""
        if not self._store.read_only:
            meta = {"principal": principal, "action": action, "resource": resource[:256], "reason": reason[:1000]}
            task = asyncio.get_running_loop().create_task(
                self._ledger.append("policy.denied", actor="system", meta=meta)
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return PolicyDeniedError(
            f"{principal} may not {action} {resource}: {reason}", principal=principal, action=action, resource=resource
        )

    def add_hook(self, hook: PolicyHook) -> None:
        """Add a rule of the app's own, asked after the capabilities allow (it can only refuse)."""
        self._hooks.append(hook)
        self._forget_decisions()

    # -- configuration ----------------------------------------------------------------------

    async def load_config(self, config: ControlConfig, *, source: str = "habitus.toml") -> int:
        """Record the grants, approval rules, budgets and labels of ``config`` that are not in force yet.

        Run when a habitat opens for writing; what is already in force is left as
        it is, so loading the same file twice records nothing. Returns how many
        events were recorded.
        """
        self._load()
        made = 0
        for g in config.grants:
            action = check_action(g.action)
            resource = normalise_resource(action, g.resource)
            check_principal(g.subject, what="subject", pattern=True)
            have = any(
                (c.subject, c.action, c.resource, c.approval) == (g.subject, action, resource, g.approval)
                for c in self._caps.values()
            )
            if not have:
                meta: dict[str, Any] = {"subject": g.subject, "action": action, "resource": resource, "source": source}
                if g.approval:
                    meta["approval"] = True
                await self._ledger.append("capability.granted", actor="system", meta=meta)
                made += 1
        for r in config.approvals:
            key = (check_action(r.action), normalise_resource(r.action, r.resource))
            if key not in self._rules:
                await self._ledger.append(
                    "approval.required", actor="system", meta={"action": key[0], "resource": key[1], "source": source}
                )
                made += 1
        for b in config.budgets:
            period = period_seconds(b.period)
            if self._budget_rules.get((b.subject, b.meter)) != (b.limit, period):
                meta = {"subject": b.subject, "meter": b.meter, "limit": b.limit, "period": period, "source": source}
                await self._ledger.append("budget.set", actor="system", meta=meta)
                made += 1
        for principal, label in config.trust.items():
            if self._trust.get(principal) != label:
                check_principal(principal, what="trust principal", pattern=True)
                meta = {"principal": principal, "label": label, "source": source}
                await self._ledger.append("trust.labelled", actor="system", meta=meta)
                made += 1
        self._load()
        return made

    # -- keeping current --------------------------------------------------------------------

    def _writable(self) -> None:
        if self._store.read_only:
            raise ReadOnlyHabitatError("a read-only habitat cannot change its policy; open it for writing")

    def _writable_by_system(self, by: str) -> None:
        self._writable()
        if by != "system":
            raise PolicyDeniedError(
                f"{by} may not change approval rules or trust labels: only the habitat's operator may",
                principal=by,
                action="capability:grant",
                resource="policy",
            )

    def _load(self) -> None:
        """Replay the policy events this process has not seen yet (all of them, the first time).

        A writer then follows its own commits; a read-only handle, where another
        process writes, looks for new policy events each time it is asked.
        """
        if self._loaded and not self._store.read_only:
            return
        while True:
            rows = self._store.query(EventQuery(kinds=_POLICY_KINDS, min_seq=self._seen_seq + 1, limit=10_000))
            for row in rows:
                self._apply(row)
            if rows:
                self._seen_seq = rows[-1][0]
            if len(rows) < 10_000:
                break
        self._loaded = True

    def _committed(self, ops: Sequence[Op], rows: Sequence[Row]) -> None:
        # Applying is idempotent, so a commit the first load already read may be seen again harmlessly.
        if self._loaded:
            for row in rows:
                if row[0] > self._seen_seq and row[5] in _POLICY_KINDS:
                    self._apply(row)
        self._budgets_committed(ops)

    def _apply(self, row: Row) -> None:
        self._apply_event(row)
        if row[5] not in ("approval.requested", "approval.decided"):
            self._forget_decisions()

    def _apply_event(self, row: Row) -> None:
        seq, id_, _ts, _at, actor, kind, _thread, meta_text = row[:8]
        meta: dict[str, Any] = json.loads(meta_text) if meta_text else {}
        event_id = str(uuid.UUID(bytes=id_))
        if kind == "capability.granted":
            until = meta.get("until")
            self._caps[event_id] = Capability(
                id=uuid.UUID(event_id),
                subject=meta["subject"],
                action=meta["action"],
                resource=meta["resource"],
                granted_by=actor,
                approval=bool(meta.get("approval", False)),
                until=from_micros(until) if until is not None else None,
                seq=seq,
            )
        elif kind == "capability.revoked":
            self._caps.pop(meta["capability"], None)
        elif kind == "approval.required":
            self._rules[(meta["action"], meta["resource"])] = event_id
        elif kind == "approval.waived":
            self._rules.pop((meta["action"], meta["resource"]), None)
        elif kind == "trust.labelled":
            self._trust[meta["principal"]] = meta["label"]
        elif kind == "budget.set":
            self._apply_budget(meta)
        else:
            self._apply_approval(kind, event_id, seq, actor, meta)
