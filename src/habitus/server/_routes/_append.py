"""Appending events as the caller: ``POST /v1/events``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from habitus.ledger._models import Event
from habitus.server._app import Actor

__all__ = ["router"]

router = APIRouter(tags=["events"])


class AppendRequest(BaseModel):
    """An event to append as the caller (its actor is always the caller's principal).

    Kinds only Habitus appends (``message.*``, ``memory.*``, ``capability.*``...) are
    refused with 403: use their routes, so their checks run.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=128, examples=["note.recorded"])
    content: JsonValue = None
    meta: dict[str, Any] = Field(default_factory=dict)
    causes: list[uuid.UUID] = Field(default_factory=list, max_length=256)
    thread: str | None = Field(default=None, min_length=1, max_length=256)
    at: datetime | None = None


@router.post("/events", response_model=Event, status_code=201, summary="Append an event as the caller")
async def append(body: AppendRequest, who: Actor) -> Event:
    return await who.append(
        body.kind, content=body.content, meta=body.meta, causes=body.causes, thread=body.thread, at=body.at
    )
