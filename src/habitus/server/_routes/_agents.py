"""Routes of the HTTP API (being written: see the server issue)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
