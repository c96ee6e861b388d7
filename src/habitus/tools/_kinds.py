"""The ``tool.*`` kinds: every tool call, and how it ended, as events.

A call is ``tool.called`` (the arguments are its content), then exactly one of
``tool.returned`` (the value) or ``tool.failed`` (what went wrong), caused by it.
Only the tool registry appends them (``tool.`` is a reserved family).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["TOOL_KINDS", "FailureType", "ToolSource"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Ms = Annotated[int, Field(ge=0)]

ToolSource = Literal["python", "program", "mcp"]
"""Where a tool's code runs: a Python function in the habitat's process, a sandboxed program, an MCP server."""

FailureType = Literal[
    "invalid_arguments", "exception", "timeout", "limit", "exit_status", "remote_error", "unavailable", "cancelled"
]
"""Why a tool call failed: see :class:`habitus.tools.ToolFailure`."""


class CalledMeta(MetaModel):
    """Meta of ``tool.called``: which tool, for whom, and how it runs; the arguments are the content."""

    tool: _Name
    source: ToolSource
    call_id: _Name | None = None
    dangerous: bool = False
    sandboxed: bool = False
    on_behalf_of: _Name | None = None
    trust: Literal["untrusted"] | None = None


class ReturnedMeta(MetaModel):
    """Meta of ``tool.returned``: the call (a cause) returned; ``{"value": ...}`` is the content."""

    tool: _Name
    call_id: _Name | None = None
    duration_ms: _Ms


class FailedMeta(MetaModel):
    """Meta of ``tool.failed``: why the call failed; ``{"message", "stderr"}`` is the content."""

    tool: _Name
    call_id: _Name | None = None
    error: FailureType
    limit: Literal["cpu", "memory", "wall", "file_size", "output"] | None = None
    exception: _Name | None = None
    exit_code: int | None = None
    duration_ms: _Ms


TOOL_KINDS = (
    KindSpec("tool.called", "A principal called a tool (the arguments are the content).", CalledMeta, "required"),
    KindSpec("tool.returned", "A tool call returned a value (the content).", ReturnedMeta, "required"),
    KindSpec(
        "tool.failed",
        "A tool call failed: bad arguments, an exception, a limit, a nonzero exit or a server error.",
        FailedMeta,
        "required",
    ),
)

register_kinds(*TOOL_KINDS)
