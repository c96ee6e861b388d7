"""Budgets: at most so many model tokens, tool calls or messages per period, per agent and per owner.

Usage is a projection (``budget_usage``) charged in the same transaction as
the work it pays for, so a crash never counts work that did not happen nor
forgets work that did. Work that would go over a limit is refused before it
is staged: a ``budget.exceeded`` event and a
:class:`~habitus.errors.BudgetExceededError`, and the caller's transaction
(a handler's, for instance) is rolled back whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from habitus.control._config import period_seconds
from habitus.control._rules import check_principal
from habitus.errors import BudgetExceededError, InvalidRequestError, PolicyDeniedError
from habitus.storage._projections import UsageAdd

if TYPE_CHECKING:
    from habitus.agents._registry import Agents
    from habitus.ledger._ledger import Ledger
    from habitus.ledger._transaction import Transaction
    from habitus.storage._projections import Op
    from habitus.storage._sqlite import SQLiteStore

__all__ = ["Budget", "Meter"]

Meter = Literal["tokens", "tool_calls", "messages"]
_METERS = ("tokens", "tool_calls", "messages")


class Budget(BaseModel):
    """A limit and what has been used of it in the current period.

    Attributes:
        subject: The agent, or the owner (whose agents all count against it).
        meter: ``tokens``, ``tool_calls`` or ``messages``.
        limit: Most allowed per period.
        period: Length of a period in seconds (periods start at multiples of it, UTC).
        used: Used in the current period.
    """

    model_config = ConfigDict(frozen=True)

    subject: str
    meter: Meter
    limit: int
    period: int
    used: int


class _Budgets:
    """The budgets of :class:`~habitus.control.Control`."""

    _ledger: Ledger
    _store: SQLiteStore
    _agents: Agents

    _loaded: bool

    if TYPE_CHECKING:

        def _load(self) -> None: ...
        def _writable(self) -> None: ...

    def _init_budgets(self) -> None:
        self._budget_rules: dict[tuple[str, str], tuple[int, int]] = {}  # (subject, meter) -> (limit, period)
        self._usage: dict[tuple[str, str, int], int] = {}  # committed usage per (subject, meter, window)

    async def set_budget(
        self, subject: str, meter: Meter, limit: int | None, *, period: int | str = "day", by: str = "system"
    ) -> None:
        """Allow ``subject`` at most ``limit`` of ``meter`` per ``period`` (``None`` removes the limit).

        ``subject`` is an agent (``agent:<id>``) or an owner (``human:…``,
        ``service:…``), whose agents then share the one budget. The habitat, or
        the owner of the agent, may set it.

        Raises:
            InvalidRequestError: A bad meter, limit or period.
            PolicyDeniedError: ``by`` may not set this budget.
        """
        check_principal(subject, what="subject")
        if meter not in _METERS:
            raise InvalidRequestError(f"meter must be one of {', '.join(_METERS)}, not {meter!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidRequestError(f"limit must be a whole number of at least 0, or None, not {limit!r}")
        try:
            seconds = period_seconds(period)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        self._writable()
        owns = subject.startswith("agent:") and self._agents.owner(subject[6:]) == by
        if by != "system" and not owns:
            raise PolicyDeniedError(
                f"{by} may not set the budget of {subject}: only the habitat or the agent's owner may",
                principal=by,
                action="budget:set",
                resource=subject,
            )
        meta = {"subject": subject, "meter": meter, "limit": limit, "period": seconds}
        await self._ledger.append("budget.set", actor=by, meta=meta)
        self._load()

    def budgets(self, subject: str | None = None) -> list[Budget]:
        """Budgets in force, with their current usage; with ``subject``, those that bind that principal."""
        self._load()
        binding = None if subject is None else set(self._budget_subjects(subject))
        now = time.time()
        found = []
        for (who, meter), (limit, period) in sorted(self._budget_rules.items()):
            if binding is None or who in binding:
                used = self._used(who, meter, int(now // period))
                found.append(Budget(subject=who, meter=meter, limit=limit, period=period, used=used))
        return found

    def _budget_subjects(self, principal: str) -> list[str]:
        subjects = [principal]
        if principal.startswith("agent:"):
            owner = self._agents.owner(principal[6:])
            if owner is not None and owner != "system":
                subjects.append(owner)
        return subjects

    def _used(self, subject: str, meter: str, window: int) -> int:
        key = (subject, meter, window)
        used = self._usage.get(key)
        if used is None:
            used = self._store.budget_used(subject, meter, window)
            if len(self._usage) > 10_000:
                self._usage.clear()
            self._usage[key] = used
        return used

    async def charge(
        self, tx: Transaction, principal: str, meter: Meter, amount: int = 1, *, spent: bool = False
    ) -> None:
        """Count ``amount`` of ``meter`` against ``principal``'s budgets, in ``tx``; refuse if over.

        With ``spent``, the work was already done (a model call's tokens): it is
        counted even past the limit, and the next check refuses instead.

        Raises:
            BudgetExceededError: It would exceed the principal's or its owner's
                limit; recorded as ``budget.exceeded``, nothing staged.
        """
        if not self.has_budgets():
            return
        if amount < 0:
            raise InvalidRequestError(f"amount must not be negative, not {amount!r}")
        staged = await self._room(principal, meter, amount, tx.ops, refuse=not spent)
        for op in staged:
            tx.project(op)

    async def check_budget(self, principal: str, meter: Meter, amount: int) -> None:
        """Refuse, before doing it, work of ``amount`` ``meter`` that ``principal``'s budgets have no room for.

        Nothing is counted: the work is charged with :meth:`charge` once done.

        Raises:
            BudgetExceededError: It would exceed the principal's or its owner's
                limit; recorded as ``budget.exceeded``.
        """
        if self.has_budgets():
            await self._room(principal, meter, max(amount, 0), (), refuse=True)

    def has_budgets(self) -> bool:
        """True if any budget is configured (else :meth:`charge` has nothing to count: callers may skip it)."""
        if not self._budget_rules:
            if self._loaded and not self._store.read_only:
                return False  # no budgets at all (the usual case): nothing to count
            self._load()
        return bool(self._budget_rules)

    async def _room(
        self, principal: str, meter: Meter, amount: int, ops: Sequence[Op], *, refuse: bool
    ) -> list[UsageAdd]:
        """The usage to stage for ``amount`` more; with ``refuse``, raise where a limit has no room."""
        now = time.time()
        staged: list[UsageAdd] = []
        for subject in self._budget_subjects(principal):
            rule = self._budget_rules.get((subject, meter))
            if rule is None:
                continue
            limit, period = rule
            window = int(now // period)
            used = self._used(subject, meter, window) + sum(
                op.amount
                for op in ops
                if isinstance(op, UsageAdd) and (op.subject, op.meter, op.window) == (subject, meter, window)
            )
            if refuse and used + amount > limit:
                meta = {
                    "principal": principal, "subject": subject, "meter": meter, "limit": limit,
                    "used": used, "amount": amount, "period": period,
                }  # fmt: skip
                if not self._store.read_only:
                    await self._ledger.append("budget.exceeded", actor="system", meta=meta)
                whose = "its" if subject == principal else f"its owner {subject}'s"
                raise BudgetExceededError(
                    f"{principal} may not use {amount} more {meter}: {whose} budget is {limit} per "
                    f"{period} s and {used} are used; it renews at the next period",
                    principal=principal,
                    action=f"budget:{meter}",
                    resource=subject,
                )
            staged.append(UsageAdd(subject, meter, window, amount))
        return staged

    def _apply_budget(self, meta: dict[str, object]) -> None:
        key = (str(meta["subject"]), str(meta["meter"]))
        limit = meta.get("limit")
        if limit is None:
            self._budget_rules.pop(key, None)
        else:
            self._budget_rules[key] = (int(limit), int(meta["period"]))  # type: ignore[call-overload]

    def _budgets_committed(self, ops: Sequence[Op]) -> None:
        usage = self._usage
        for op in ops:
            if isinstance(op, UsageAdd):
                key = (op.subject, op.meter, op.window)
                if key in usage:
                    usage[key] += op.amount
