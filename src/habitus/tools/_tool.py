"""A tool, and what a call to one gives back: :class:`Tool`, :class:`ToolResult`, :class:`ToolFailure`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError, to_jsonable_python

from habitus.models._types import ToolSpec
from habitus.tools._kinds import FailureType, ToolSource
from habitus.tools._sandbox import Limit, SandboxLimits

__all__ = ["Tool", "ToolFailure", "ToolResult"]


class ToolFailure(BaseModel):
    """Why a tool call failed, for the agent (and its model) to read and act on.

    Attributes:
        type: ``invalid_arguments`` (they did not fit the schema), ``exception``
            (the function raised), ``timeout`` (it ran past its ``timeout_s``),
            ``limit`` (a sandbox limit stopped the program), ``exit_status`` (the
            program exited non-zero), ``remote_error`` (the MCP server reported an
            error), ``unavailable`` (the MCP server or program could not be
            reached or started), ``cancelled`` (the caller was cancelled).
        message: What went wrong, in a sentence.
        exception: The exception's class name, for ``exception``.
        limit: Which limit, for ``limit``.
        exit_code: The program's exit status, for programs.
        stderr: The end of the program's stderr, for programs.
    """

    model_config = ConfigDict(frozen=True)

    type: FailureType
    message: str
    exception: str | None = None
    limit: Limit | None = None
    exit_code: int | None = None
    stderr: str = ""


class ToolResult(BaseModel):
    """The outcome of :meth:`ToolRegistry.call`: a value, or a failure; either way, two events.

    Attributes:
        tool: The tool's name.
        ok: True if it returned a value.
        value: What it returned (JSON), when ``ok``.
        error: What went wrong, when not ``ok``.
        called: The id of the ``tool.called`` event.
        result: The id of the ``tool.returned`` or ``tool.failed`` event.
        duration_ms: How long it ran.
        call_id: The model's id for the call, if one was given.
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    ok: bool
    value: Any = None
    error: ToolFailure | None = None
    called: uuid.UUID
    result: uuid.UUID
    duration_ms: int
    call_id: str | None = None

    @property
    def text(self) -> str:
        """The outcome as text for a model's ``tool`` message: the value (JSON unless a string), or the error."""
        if self.error is not None:
            return f"error ({self.error.type}): {self.error.message}"
        if isinstance(self.value, str):
            return self.value
        return json.dumps(self.value, ensure_ascii=False)


class ToolFailed(Exception):
    """Raised inside the registry by a tool's runner: the call failed in a way the agent should hear about."""

    def __init__(self, failure: ToolFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


Invoke = Callable[[dict[str, Any]], Awaitable[Any]]
"""Runs a tool with its arguments; returns its JSON value or raises :class:`ToolFailed`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    """A registered tool: what a model sees of it, and how it runs.

    Attributes:
        name: Its name (letters, digits, ``_``, ``.``, ``-``; at most 64).
        description: What it does, for the model.
        parameters: JSON schema of its arguments (an object).
        source: ``python``, ``program`` or ``mcp``.
        dangerous: Every call waits for a human's approval.
        timeout_s: Longest a Python or MCP tool may run (programs use ``limits.wall_seconds``).
        limits: A program's sandbox limits.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    source: ToolSource
    dangerous: bool = False
    timeout_s: float | None = None
    limits: SandboxLimits | None = None
    _invoke: Invoke = field(repr=False, compare=False)  # only through ToolRegistry.call, which checks and records

    @property
    def spec(self) -> ToolSpec:
        """The tool as a model sees it."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


def to_json(value: Any) -> Any:
    """``value`` as JSON data (models, dataclasses, enums, dates... converted), or :class:`ToolFailed`."""
    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise ToolFailed(
            ToolFailure(type="exception", message=f"the tool returned a value that is not JSON: {exc}")
        ) from None
