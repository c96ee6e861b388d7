"""Capabilities as data: actions, resource patterns, who holds what by default.

A capability grants a *subject* (a principal, or a pattern of principals) an
*action* (``message:send``) on the resources a *pattern* matches
(``agent:team-a/*``). Patterns use ``*`` for any run of characters, nothing
else. This module is pure: no I/O, no ledger; :mod:`habitus.control._control`
keeps the grants and asks the functions here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from habitus.errors import InvalidRequestError

__all__ = [
    "ACTIONS",
    "RESERVED_KINDS",
    "Capability",
    "Decision",
    "check_principal",
    "covers",
    "matches",
    "normalise_resource",
    "scope_resource",
]

ACTIONS: dict[str, str] = {
    "message:send": "agent",
    "message:publish": "topic",
    "memory:read": "scope",
    "memory:write": "scope",
    "memory:erase": "scope",
    "state:read": "agent",
    "state:write": "agent",
    "agent:manage": "agent",
    "ledger:append": "kind",
    "ledger:erase": "principal",
    "tool:call": "tool",
    "model:use": "model",
    "capability:grant": "capability",
    "principal:act": "principal",
    "approval:decide": "principal",
}
"""The actions Habitus checks, each with the prefix its resources carry.

Other ``family:verb`` actions are accepted too (an app's own), with resources as given.
"""

RESERVED_KINDS = (
    "agent.", "approval.", "budget.", "capability.", "checkpoint.", "content.", "fact.", "habitat.",
    "memory.", "message.", "model.", "policy.", "timer.", "tool.", "trust.",
)  # fmt: skip
"""Kind families only Habitus's subsystems append: nobody forges a grant, a message or a denial."""

_PRINCIPAL = re.compile(r"^(?:system|(?:agent|human|service|source):[^\s:][^\s]{0,255})$")
_ACTION = re.compile(r"^[a-z_*][a-z0-9_*]{0,31}:[a-z_*][a-z0-9_*]{0,31}$")
_PREFIXED = re.compile(r"^[a-z]+:")
_SPACE = re.compile(r"\s")
_PLAIN = {family: family + ":" for family in ("agent", "topic", "tool", "model", "kind")}


def check_principal(principal: str, *, what: str = "principal", pattern: bool = False) -> str:
    """Return ``principal`` if it is ``system`` or ``agent:|human:|service:|source:<id>``, else raise.

    With ``pattern``, ``*`` (everyone) and patterns such as ``agent:team-a/*`` are accepted too.
    """
    if not isinstance(principal, str) or not (_PRINCIPAL.match(principal) or (pattern and principal == "*")):
        raise InvalidRequestError(
            f"{what} must be 'system' or 'agent:', 'human:', 'service:' or 'source:' and an id, not {principal!r}"
        )
    if "*" in principal and not pattern:
        raise InvalidRequestError(f"{what} must name one principal, not the pattern {principal!r}")
    return principal


def check_action(action: str) -> str:
    """Return ``action`` if it looks like ``family:verb`` (``*`` allowed in patterns), else raise."""
    if not isinstance(action, str) or not _ACTION.match(action):
        known = ", ".join(ACTIONS)
        raise InvalidRequestError(f"action must be 'family:verb' such as one of {known}; not {action!r}")
    return action


def scope_resource(scope: str) -> str:
    """The resource a memory scope is checked as: ``scope:agent:<id>``, ``scope:group:<name>``, ``scope:public``."""
    return "scope:" + scope


def normalise_resource(action: str, resource: str) -> str:
    """Give ``resource`` the prefix ``action`` expects, so ``tool:call shell`` means ``tool:shell``.

    ``scope:team-a`` (a bare name) is the group scope ``scope:group:team-a``; ``scope:self``
    and ``agent:self`` stay templates for the subject's own scope and agent.

    Raises:
        InvalidRequestError: An empty or over-long resource.
    """
    if not isinstance(resource, str) or not 1 <= len(resource) <= 512 or _SPACE.search(resource):
        raise InvalidRequestError(f"resource must be 1-512 characters without spaces, not {resource!r}")
    if resource == "*":
        return resource
    family = ACTIONS.get(action)
    if family in _PLAIN and resource.startswith(_PLAIN[family]):
        return resource  # already in the form asked for (every check on the hot paths is)
    if family is None:
        return resource
    if family == "scope":
        if not resource.startswith("scope:"):
            resource = "scope:" + resource
        name = resource[6:]
        if name in ("self", "public", "*") or name.startswith(("agent:", "group:")):
            return resource
        if ":" in name:
            raise InvalidRequestError(
                f"{resource!r} is not a memory scope: use scope:self, scope:public, scope:agent:<id> "
                "or scope:group:<name> (scope:<name> for short)"
            )
        return "scope:group:" + name
    if family == "principal":
        return resource if resource == "system" or _PREFIXED.match(resource) else "human:" + resource
    if family == "capability":
        return resource
    prefix = family + ":"
    return resource if resource.startswith(prefix) else prefix + resource


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.DOTALL)


def matches(pattern: str, value: str) -> bool:
    """True if ``value`` is matched by ``pattern`` (``*`` matches any run of characters)."""
    if "*" not in pattern:
        return pattern == value
    return _compiled(pattern).match(value) is not None


def covers(held: str, wanted: str) -> bool:
    """True if every value the pattern ``wanted`` can match is matched by ``held``.

    Checked conservatively: ``wanted``'s ``*`` are taken literally, so
    ``agent:team-a/*`` covers ``agent:team-a/*`` and ``agent:team-a/x`` but not
    ``agent:*``.
    """
    return matches(held, wanted)


def expand_self(pattern: str, subject: str) -> str:
    """Replace the ``self`` templates in a resource pattern with ``subject``'s own agent and scope."""
    if "self" not in pattern or not subject.startswith("agent:"):
        return pattern
    if pattern == "scope:self":
        return "scope:" + subject
    if pattern == "agent:self":
        return subject
    return pattern


class Capability(BaseModel):
    """One grant: ``subject`` may do ``action`` on resources matching ``resource``.

    Attributes:
        id: The id of the ``capability.granted`` event that made it.
        subject: The principal (or principal pattern, ``*`` for everyone) it is granted to.
        action: ``message:send``, ``memory:read``, ``tool:call``... (``*`` allowed).
        resource: The resource pattern, e.g. ``agent:team-a/*``, ``scope:group:team-a``, ``tool:shell``.
        granted_by: The principal who granted it.
        approval: True when each use also needs a human's approval.
        until: When it lapses, if it does.
        seq: Seq of the granting event.
    """

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    subject: str
    action: str
    resource: str
    granted_by: str
    approval: bool = False
    until: datetime | None = None
    seq: int

    def applies(self, principal: str, action: str, resource: str, now: datetime | None = None) -> bool:
        """True if it lets ``principal`` do ``action`` on ``resource`` (at ``now``, for lapsing grants)."""
        if self.until is not None and now is not None and now >= self.until:
            return False
        return (
            matches(self.subject, principal)
            and matches(self.action, action)
            and matches(expand_self(self.resource, principal), resource)
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one (principal, action, resource).

    Attributes:
        allowed: Whether it may go ahead.
        reason: Why it may (the rule) or may not (what is missing), in words.
        approval: True when it may go ahead only once a human approves.
    """

    allowed: bool
    reason: str
    approval: bool = False
