"""The ``[control]`` section of ``habitus.toml``: grants, approval rules, budgets and trust labels."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["PERIODS", "BudgetRule", "ControlConfig", "GrantRule", "RuleRef", "period_seconds"]

PERIODS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 604_800, "month": 2_592_000}
"""Named budget periods, in seconds (a month is 30 days)."""

Meter = Literal["tokens", "tool_calls", "messages"]


def period_seconds(period: int | float | str) -> int:
    """Seconds in ``period``: a name from :data:`PERIODS` or a positive number of seconds."""
    if isinstance(period, str):
        if period in PERIODS:
            return PERIODS[period]
        raise ValueError(f"period must be one of {', '.join(PERIODS)} or a number of seconds, not {period!r}")
    if isinstance(period, bool) or period < 1:
        raise ValueError(f"period must be at least 1 second, not {period!r}")
    return int(period)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrantRule(_Rule):
    """``subject`` may ``action`` on ``resource`` (``approval``: each use waits for a human)."""

    subject: Annotated[str, Field(min_length=1)]
    action: Annotated[str, Field(min_length=1)]
    resource: Annotated[str, Field(min_length=1)]
    approval: bool = False


class RuleRef(_Rule):
    """An action on a resource pattern that always waits for a human's approval."""

    action: Annotated[str, Field(min_length=1)]
    resource: Annotated[str, Field(min_length=1)] = "*"


class BudgetRule(_Rule):
    """At most ``limit`` of ``meter`` per ``period`` for ``subject`` (an agent, or an owner and all its agents)."""

    subject: Annotated[str, Field(min_length=1)]
    meter: Meter
    limit: Annotated[int, Field(ge=0)]
    period: int | str = "day"

    @field_validator("period")
    @classmethod
    def _period(cls, value: int | str) -> int | str:
        period_seconds(value)
        return value


class ControlConfig(_Rule):
    """Policy loaded from ``habitus.toml`` when a habitat opens for writing (recorded as events once)."""

    grants: list[GrantRule] = Field(default_factory=list)
    approvals: list[RuleRef] = Field(default_factory=list)
    budgets: list[BudgetRule] = Field(default_factory=list)
    trust: dict[str, Literal["trusted", "untrusted"]] = Field(default_factory=dict)
