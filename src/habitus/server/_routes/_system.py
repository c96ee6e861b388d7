"""Who am I, and is the server up."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from habitus._version import __version__
from habitus.server._app import Actor, habitat_of

__all__ = ["router"]

router = APIRouter(tags=["system"])


class Health(BaseModel):
    """The server is up, serving this habitat."""

    ok: bool
    habitat: str
    habitat_id: str
    version: str


class WhoAmI(BaseModel):
    """The principal a request acts as."""

    principal: str


@router.get("/health", response_model=Health, summary="The server is up (no token needed)")
async def health(request: Request) -> Health:
    hab = habitat_of(request)
    return Health(ok=True, habitat=hab.name, habitat_id=hab.id, version=__version__)


@router.get("/whoami", response_model=WhoAmI, summary="The principal this request acts as")
async def whoami(who: Actor) -> WhoAmI:
    return WhoAmI(principal=who.principal)
