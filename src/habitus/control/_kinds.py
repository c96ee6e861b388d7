"""The ``capability``, ``approval``, ``budget`` and ``trust`` kinds: the policy's history, as events."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["CONTROL_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=512)]
_Id = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


class GrantedMeta(MetaModel):
    """Meta of ``capability.granted``: who may now do what, on which resources."""

    subject: _Name
    action: _Name
    resource: _Name
    approval: bool = False
    until: int | None = None
    source: _Name | None = None


class RevokedMeta(MetaModel):
    """Meta of ``capability.revoked``: the capability taken back (its ``capability.granted`` is a cause)."""

    capability: _Id
    subject: _Name
    action: _Name
    resource: _Name


class ApprovalRuleMeta(MetaModel):
    """Meta of ``approval.required`` and ``approval.waived``: actions that wait for a human."""

    action: _Name
    resource: _Name
    source: _Name | None = None


class RequestedMeta(MetaModel):
    """Meta of ``approval.requested``: who wants to do what; the detail, if any, is the content."""

    principal: _Name
    action: _Name
    resource: _Name
    key: Annotated[str, Field(min_length=8, max_length=64)]
    on_behalf_of: _Name | None = None


class DecidedMeta(MetaModel):
    """Meta of ``approval.decided``: the request (a cause), the decision; the actor is who decided."""

    approval: _Id
    decision: Literal["approved", "rejected"]
    reason: Annotated[str, Field(max_length=1000)] | None = None


class BudgetSetMeta(MetaModel):
    """Meta of ``budget.set``: at most ``limit`` of ``meter`` per ``period`` seconds for ``subject``."""

    subject: _Name
    meter: Literal["tokens", "tool_calls", "messages"]
    limit: Annotated[int, Field(ge=0)] | None
    period: Annotated[int, Field(ge=1)]
    source: _Name | None = None


class BudgetExceededMeta(MetaModel):
    """Meta of ``budget.exceeded``: whose budget stopped what, and how much was used."""

    principal: _Name
    subject: _Name
    meter: Literal["tokens", "tool_calls", "messages"]
    limit: int
    used: int
    amount: int
    period: int


class TrustMeta(MetaModel):
    """Meta of ``trust.labelled``: content from principals matching ``principal`` carries ``label``."""

    principal: _Name
    label: Literal["trusted", "untrusted"]
    source: _Name | None = None


CONTROL_KINDS = (
    KindSpec("capability.granted", "A principal was granted an action on a resource pattern.", GrantedMeta, "none"),
    KindSpec("capability.revoked", "A capability was taken back.", RevokedMeta, "none"),
    KindSpec("approval.required", "An action on a resource pattern now waits for a human.", ApprovalRuleMeta, "none"),
    KindSpec("approval.waived", "An approval rule was removed.", ApprovalRuleMeta, "none"),
    KindSpec("approval.requested", "A principal asked a human to approve an action.", RequestedMeta, "optional"),
    KindSpec("approval.decided", "A human approved or rejected a request.", DecidedMeta, "none"),
    KindSpec("budget.set", "A limit on tokens, tool calls or messages per period was set.", BudgetSetMeta, "none"),
    KindSpec("budget.exceeded", "Work was refused because it would exceed a budget.", BudgetExceededMeta, "none"),
    KindSpec("trust.labelled", "Content from some principals is labelled trusted or untrusted.", TrustMeta, "none"),
)

register_kinds(*CONTROL_KINDS)
