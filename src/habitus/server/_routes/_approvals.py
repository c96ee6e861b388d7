"""Approvals: the requests waiting for a human, and deciding them.

A caller sees the requests it made, those made for it, and those it may decide; deciding
one it may not (or its own) is a 403 and a ``policy.denied`` event.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from habitus.control._approvals import Approval
from habitus.server._app import Actor
from habitus.server._routes._agents import error_responses

__all__ = ["router"]

router = APIRouter(tags=["approvals"], responses=error_responses(400, 401, 403, 404, 422, 503))


class Decision(BaseModel):
    """The reason given with a decision (optional, recorded in its event)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=1000)] | None = None


@router.get("/approvals", response_model=list[Approval], summary="Approval requests the caller may see")
async def list_approvals(
    who: Actor,
    status: Annotated[
        Literal["pending", "approved", "rejected", "all"], Query(description="Which requests (default: pending).")
    ] = "pending",
) -> list[Approval]:
    """Requests the caller made, was the subject of, or may decide, oldest first."""
    return await who.approvals(status=None if status == "all" else status)


@router.get("/approvals/{approval}", response_model=Approval, summary="One approval request")
async def get_approval(who: Actor, approval: uuid.UUID) -> Approval:
    """One request (404 for one the caller may not see, as for one that does not exist)."""
    return await who.approval(approval)


@router.post("/approvals/{approval}/approve", response_model=Approval, summary="Approve a request")
async def approve(who: Actor, approval: uuid.UUID, decision: Decision | None = None) -> Approval:
    """Approve a pending request the caller may decide; the waiting principal goes ahead."""
    return await who.approve(approval, reason=decision.reason if decision else None)


@router.post("/approvals/{approval}/reject", response_model=Approval, summary="Reject a request")
async def reject(who: Actor, approval: uuid.UUID, decision: Decision | None = None) -> Approval:
    """Reject a pending request the caller may decide; the waiting principal gets ApprovalRejectedError."""
    return await who.reject(approval, reason=decision.reason if decision else None)
