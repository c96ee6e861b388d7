"""MCP over streamable HTTP at ``/mcp`` (being written: see the server issue)."""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    """Mount the MCP server on ``app`` at ``/mcp``."""
