"""The dashboard at ``/`` (being written: see the server issue)."""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    """Serve the dashboard on ``app`` at ``/``."""
