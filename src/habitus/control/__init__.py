"""Control: principals, capabilities, budgets, approvals and trust labels — checked in one place.

Every send, delivery, state read, memory read, write and erasure, tool call and
model use asks :class:`Control` first; a refusal is a ``policy.denied`` event
and a :class:`~habitus.errors.PolicyDeniedError`. ``hab.acting_as(principal)``
gives the habitat as one principal sees it.
"""

from habitus.control._approvals import Approval, ApprovalStatus
from habitus.control._budgets import Budget, Meter
from habitus.control._config import BudgetRule, ControlConfig, GrantRule, RuleRef
from habitus.control._control import Control, PolicyHook, PolicyRequest, TrustLabel
from habitus.control._rules import ACTIONS, RESERVED_KINDS, Capability, Decision
from habitus.control._tokens import TokenInfo, Tokens

__all__ = [
    "ACTIONS",
    "RESERVED_KINDS",
    "Approval",
    "ApprovalStatus",
    "Budget",
    "BudgetRule",
    "Capability",
    "Control",
    "ControlConfig",
    "Decision",
    "GrantRule",
    "Meter",
    "PolicyHook",
    "PolicyRequest",
    "RuleRef",
    "TokenInfo",
    "Tokens",
    "TrustLabel",
]
