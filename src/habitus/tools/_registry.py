"""The tool registry: Python functions, sandboxed programs and MCP servers' tools, each call checked and recorded.

Every call passes the same steps (:meth:`ToolRegistry.call`): the tool must
exist; the control layer must allow ``tool:call`` on ``tool:<name>`` (and a
human must approve it when the tool is dangerous or the grant says so); one
``tool_calls`` is charged to the caller's budget in the transaction that
appends ``tool.called``; the tool runs; ``tool.returned`` or ``tool.failed``
records the outcome, caused by the call. Refusals by policy, budget or a human
raise; anything the tool itself does wrong comes back as
``ToolResult(ok=False)``, so an agent's loop never crashes on a tool.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic_core import PydanticSerializationError, to_jsonable_python

from habitus.control._rules import check_principal
from habitus.errors import (
    ContentTooLargeError,
    InvalidRequestError,
    UnknownToolError,
)
from habitus.ledger._rows import EventRef
from habitus.models._types import ToolSpec
from habitus.tools._mcp import McpConnection, mcp_tool
from habitus.tools._program import program_tool
from habitus.tools._sandbox import SandboxLimits
from habitus.tools._schema import ArgumentsError, function_schema
from habitus.tools._tool import Tool, ToolFailed, ToolFailure, ToolResult, to_json

if TYPE_CHECKING:
    from mcp_types import Tool as RemoteTool

    from habitus.control._control import Control
    from habitus.ledger._ledger import Ledger

__all__ = ["ToolRegistry"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_STDERR_EXCERPT = 2000
_MESSAGE_MAX = 4000


class ToolRegistry:
    """The habitat's tools: register them, describe them to models, call them as a principal.

    Obtain it as :attr:`habitus.Habitat.tools`::

        @hab.tools.register(description="Add two numbers.")
        def add(a: int, b: int) -> int:
            return a + b

        result = await hab.tools.call("agent:scout", "add", {"a": 1, "b": 2})   # needs tool:call add
    """

    def __init__(self, ledger: Ledger, control: Control) -> None:
        self._ledger = ledger
        self._control = control
        self._tools: dict[str, Tool] = {}
        self._servers: dict[str, McpConnection] = {}

    # -- registering --------------------------------------------------------------------------

    @overload
    def register(
        self,
        fn: F,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        dangerous: bool = False,
        timeout_s: float | None = None,
    ) -> F: ...

    @overload
    def register(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        dangerous: bool = False,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]: ...

    def register(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        dangerous: bool = False,
        timeout_s: float | None = None,
    ) -> F | Callable[[F], F]:
        """Register a Python function (sync or async) as a tool; usable as ``@register`` or ``@register(...)``.

        Its arguments' JSON schema comes from its type hints, its description and
        its parameters' from its Google-style docstring. A synchronous function
        runs in a worker thread, so it does not block the habitat.

        Args:
            fn: The function.
            name: The tool's name (default: the function's name).
            description: What it does, for the model (default: its docstring's text before the first section).
            dangerous: Every call waits for a human's approval.
            timeout_s: Longest a call may take; past it the call fails with ``timeout``
                (a synchronous function's thread cannot be stopped and finishes in the background).

        Returns:
            The function itself, unchanged.

        Raises:
            InvalidRequestError: A bad name, a name already registered, or a
                signature that cannot be described as JSON.
        """

        def add(function: F) -> F:
            tool_name = self._check_name(name if name is not None else getattr(function, "__name__", ""))
            _check_timeout(timeout_s)
            schema = function_schema(function, description=description)
            is_async = inspect.iscoroutinefunction(function)

            async def invoke(arguments: dict[str, Any]) -> Any:
                try:
                    args, kwargs = schema.validate(arguments)
                except ArgumentsError as exc:
                    raise ToolFailed(ToolFailure(type="invalid_arguments", message=str(exc))) from None
                try:
                    if is_async:
                        value = await function(*args, **kwargs)
                    else:
                        value = await asyncio.to_thread(function, *args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
                except Exception as exc:
                    message = str(exc) or type(exc).__name__
                    raise ToolFailed(
                        ToolFailure(type="exception", exception=type(exc).__name__, message=message)
                    ) from exc
                return to_json(value)

            self._tools[tool_name] = Tool(
                name=tool_name,
                description=schema.description,
                parameters=schema.parameters,
                source="python",
                dangerous=dangerous,
                timeout_s=timeout_s,
                _invoke=invoke,
            )
            return function

        return add(fn) if fn is not None else add

    def add_program(
        self,
        name: str,
        argv: Sequence[str],
        *,
        description: str,
        parameters: Mapping[str, Any] | None = None,
        limits: SandboxLimits | None = None,
        dangerous: bool = False,
    ) -> Tool:
        """Register a program, run sandboxed for each call, as a tool.

        The call's arguments are given to it as one JSON object on stdin; what it
        writes to stdout is the value (parsed as JSON when it is JSON, else the
        text). A non-zero exit, or a limit that stops it, is a failed call, with
        the end of its stderr. See :func:`habitus.tools.run_sandboxed` for what the
        sandbox isolates on this machine.

        Args:
            name: The tool's name.
            argv: The program (absolute, or found on a standard ``PATH``) and its arguments.
            description: What it does, for the model.
            parameters: JSON schema of its arguments (default: any object).
            limits: Its limits (default :class:`SandboxLimits`).
            dangerous: Every call waits for a human's approval.

        Raises:
            InvalidRequestError: A bad or taken name, an empty ``argv``, a program
                that is not there, or a schema that is not a JSON object schema.
        """
        tool = program_tool(
            self._check_name(name),
            argv,
            description=description,
            parameters=parameters,
            limits=limits,
            dangerous=dangerous,
        )
        self._tools[tool.name] = tool
        return tool

    async def add_mcp_server(
        self,
        name: str,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        dangerous: bool = False,
        timeout_s: float | None = 60.0,
    ) -> list[str]:
        """Connect to an MCP server and register each of its tools as ``{name}.{tool}``.

        The session stays open until :meth:`aclose` (which the habitat calls when
        it closes). A tool the server marks destructive (``destructiveHint``) is
        treated as dangerous.

        Args:
            name: A short name for the server (letters, digits, ``_``, ``-``).
            command: Start the server as this command and speak to it over stdio.
            url: Or speak to a running server over streamable HTTP at this URL.
            env: Extra environment variables for a stdio server (it gets only a few safe ones otherwise).
            dangerous: Every call to its tools waits for a human's approval.
            timeout_s: Longest a call may take.

        Returns:
            The names of the tools registered.

        Raises:
            InvalidRequestError: Neither or both of ``command`` and ``url``, a bad or
                taken name, or a tool name that does not fit.
            HabitatUnavailableError: The MCP SDK is not installed, or the server could not be reached.
        """
        if (command is None) == (url is None):
            raise InvalidRequestError("give an MCP server either command= (stdio) or url= (streamable HTTP), not both")
        if command is not None and (isinstance(command, str) or not command or not all(command)):
            raise InvalidRequestError(f"command must be a non-empty list of strings, not {command!r}")
        if not isinstance(name, str) or not _SERVER_NAME.match(name):
            raise InvalidRequestError(f"an MCP server's name is 1-32 letters, digits, '_' or '-', not {name!r}")
        if name in self._servers:
            raise InvalidRequestError(f"an MCP server named {name!r} was already added")
        _check_timeout(timeout_s)
        connection = McpConnection(name, command=command, url=url, env=env)
        remote = await connection.start()
        try:
            tools = [self._mcp_tool(connection, t, dangerous, timeout_s) for t in remote]
            if len({t.name for t in tools}) != len(tools):
                raise InvalidRequestError(f"MCP server {name!r} lists two tools whose names become the same")
        except BaseException:
            await connection.aclose()
            raise
        self._servers[name] = connection
        for tool in tools:
            self._tools[tool.name] = tool
        return [t.name for t in tools]

    def _mcp_tool(
        self, connection: McpConnection, remote: RemoteTool, dangerous: bool, timeout_s: float | None
    ) -> Tool:
        local = f"{connection.name}.{_UNSAFE.sub('_', remote.name)}"
        if len(local) > 64 or local in self._tools:
            why = "is longer than 64 characters" if len(local) > 64 else "is already registered"
            raise InvalidRequestError(
                f"tool {remote.name!r} of MCP server {connection.name!r} would be named {local!r}, which {why}; "
                "add the server under a shorter or different name"
            )
        return mcp_tool(connection, remote, local, dangerous=dangerous, timeout_s=timeout_s)

    def _check_name(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError(f"a tool's name is 1-64 letters, digits, '_', '.' or '-', not {name!r}")
        if name in self._tools:
            raise InvalidRequestError(f"a tool named {name!r} is already registered; choose another name")
        return name

    # -- describing ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The registered tools' names, sorted."""
        return sorted(self._tools)

    def get(self, name: str) -> Tool:
        """The tool named ``name``.

        Raises:
            UnknownToolError: No such tool (the message lists those there are).
        """
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self.names) or "none"
            raise UnknownToolError(f"no tool named {name!r} is registered; registered tools: {known}")
        return tool

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        """The tools as a model sees them: all (sorted by name), or those named, in that order.

        Raises:
            UnknownToolError: A name that is not registered.
        """
        chosen = self.names if names is None else list(names)
        return [self.get(n).spec for n in chosen]

    # -- calling ------------------------------------------------------------------------------

    async def call(
        self,
        principal: str,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        causes: Iterable[EventRef] = (),
        on_behalf_of: str | None = None,
        call_id: str | None = None,
        approval_timeout: float | None = None,
        tainted: bool = False,
    ) -> ToolResult:
        """Call tool ``name`` as ``principal`` with ``arguments``; record the call and its outcome.

        Args:
            principal: Who calls (``agent:scout``...); needs ``tool:call`` on ``tool:<name>``.
            name: The tool.
            arguments: Its arguments, a JSON object.
            causes: Events that led to the call (a model's answer, a message), besides the causal context's.
            on_behalf_of: Whom ``principal`` acts for, if not itself (both must be allowed).
            call_id: The model's id for this call, recorded with it.
            approval_timeout: Longest to wait for a human's approval, when one is needed.
            tainted: The call is made while handling untrusted content: ``tool.called`` is
                labelled ``trust: untrusted`` (as is every call by a principal labelled untrusted).

        Returns:
            The value, or why the tool failed (bad arguments, an exception, a limit...):
            a tool's failure is a result, not an exception.

        Raises:
            UnknownToolError: No such tool.
            PolicyDeniedError: ``principal`` may not call it (a ``policy.denied`` event records it).
            BudgetExceededError: Its ``tool_calls`` budget is spent (a ``budget.exceeded`` event records it).
            ApprovalRejectedError: A human rejected the call.
            ApprovalPendingError: No human decided within ``approval_timeout`` (the request stays queued).
            InvalidRequestError: A malformed principal or arguments that are not a JSON object.
        """
        tool = self.get(name)
        check_principal(principal)
        if arguments is not None and not isinstance(arguments, Mapping):
            raise InvalidRequestError(f"arguments must be a JSON object (a mapping), not {type(arguments).__name__}")
        if call_id is not None and (not isinstance(call_id, str) or not 1 <= len(call_id) <= 256):
            raise InvalidRequestError(f"call_id must be a string of 1-256 characters, not {call_id!r}")
        try:
            given = to_jsonable_python(dict(arguments or {}))
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise InvalidRequestError(f"arguments must be JSON data: {exc}") from None
        control = self._control
        resource = f"tool:{name}"
        decision = control.decide(principal, "tool:call", resource, on_behalf_of=on_behalf_of)
        if not decision.allowed:
            await control.deny(principal, "tool:call", resource, decision.reason)
        if tool.dangerous or decision.approval:
            await control.approved(
                principal, "tool:call", resource, on_behalf_of=on_behalf_of, detail=given, timeout=approval_timeout
            )
        meta: dict[str, Any] = {"tool": name, "source": tool.source}
        if call_id is not None:
            meta["call_id"] = call_id
        if tool.dangerous:
            meta["dangerous"] = True
        if tool.source == "program":
            meta["sandboxed"] = True
        if on_behalf_of is not None and on_behalf_of != principal:
            meta["on_behalf_of"] = on_behalf_of
        if tainted or control.trust_of(principal) == "untrusted":
            meta["trust"] = "untrusted"
        async with self._ledger.transaction() as tx:
            if principal != "system":
                await control.charge(tx, principal, "tool_calls")
            called = tx.append("tool.called", actor=principal, content=given, meta=meta, causes=causes)
        started = time.monotonic()
        try:
            value, failure = await self._run(tool, given), None
        except ToolFailed as failed:
            value, failure = None, failed.failure
        except asyncio.CancelledError:
            failure = ToolFailure(type="cancelled", message="the call was cancelled before the tool finished")
            await asyncio.shield(self._finish(tool, principal, called, call_id, None, failure, started))
            raise
        return await self._finish(tool, principal, called, call_id, value, failure, started)

    async def _run(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.timeout_s is None or tool.source == "mcp":  # an MCP call carries its own timeout
            return await tool._invoke(arguments)
        try:
            async with asyncio.timeout(tool.timeout_s):
                return await tool._invoke(arguments)
        except TimeoutError:
            raise ToolFailed(
                ToolFailure(type="timeout", message=f"tool {tool.name!r} ran past its {tool.timeout_s} s")
            ) from None

    async def _finish(
        self,
        tool: Tool,
        principal: str,
        called: uuid.UUID,
        call_id: str | None,
        value: Any,
        failure: ToolFailure | None,
        started: float,
    ) -> ToolResult:
        """Append ``tool.returned`` (or ``tool.failed``) caused by the call, and build the result."""
        duration_ms = int((time.monotonic() - started) * 1000)
        base: dict[str, Any] = {"tool": tool.name, "duration_ms": duration_ms}
        if call_id is not None:
            base["call_id"] = call_id
        if failure is None:
            try:
                event = await self._ledger.append(
                    "tool.returned", actor=principal, content={"value": value}, meta=base, causes=[called]
                )
                return ToolResult(
                    tool=tool.name,
                    ok=True,
                    value=value,
                    called=called,
                    result=event.id,
                    duration_ms=duration_ms,
                    call_id=call_id,
                )
            except ContentTooLargeError as exc:
                failure = ToolFailure(type="limit", limit="output", message=f"the tool's value is too large: {exc}")
            except InvalidRequestError as exc:  # e.g. NaN, which JSON cannot carry
                failure = ToolFailure(type="exception", message=f"the tool's value cannot be recorded: {exc}")
        meta = {**base, "error": failure.type}
        for key in ("limit", "exception", "exit_code"):
            if getattr(failure, key) is not None:
                meta[key] = getattr(failure, key)
        content: dict[str, Any] = {"message": failure.message[:_MESSAGE_MAX]}
        if failure.stderr:
            content["stderr"] = failure.stderr[-_STDERR_EXCERPT:]
        event = await self._ledger.append("tool.failed", actor=principal, content=content, meta=meta, causes=[called])
        return ToolResult(
            tool=tool.name,
            ok=False,
            error=failure,
            called=called,
            result=event.id,
            duration_ms=duration_ms,
            call_id=call_id,
        )

    async def aclose(self) -> None:
        """Close the MCP sessions (their tools then fail as ``unavailable``); safe to call twice."""
        servers, self._servers = list(self._servers.values()), {}
        for connection in servers:
            await connection.aclose()


def _check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and (isinstance(timeout_s, bool) or not timeout_s > 0):
        raise InvalidRequestError(f"timeout_s must be a positive number of seconds, or None, not {timeout_s!r}")
