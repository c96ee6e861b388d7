"""The API's routes, one module per part of the public API; each route calls it through ``Acting``."""

from __future__ import annotations

from fastapi import FastAPI

from habitus.server._routes import _agents, _append, _approvals, _events, _memory, _system

__all__ = ["include"]


def include(app: FastAPI) -> None:
    """Add every router to ``app`` (all under ``/v1``)."""
    for module in (_system, _events, _append, _agents, _memory, _approvals):
        app.include_router(module.router, prefix="/v1")
