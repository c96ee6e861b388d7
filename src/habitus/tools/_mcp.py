"""A session with an external MCP server (stdio or streamable HTTP), held open by a task of its own.

The SDK's client lives in anyio task groups, which must be entered and left
by the same task; :class:`McpConnection` therefore runs the client in one
background task for the whole session, and calls reach the server through it
from any task. The SDK (``mcp``, in the ``server`` extra) is imported only here,
and only when a server is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from habitus.errors import HabitatUnavailableError
from habitus.tools._kinds import FailureType
from habitus.tools._schema import ArgumentsError, check_arguments
from habitus.tools._tool import Tool, ToolFailed, ToolFailure, to_json

if TYPE_CHECKING:
    from mcp import Client
    from mcp_types import CallToolResult
    from mcp_types import Tool as RemoteTool

__all__ = ["McpConnection", "flatten_errors", "mcp_tool"]

log = logging.getLogger("habitus.tools")

_CLOSE_TIMEOUT = 5.0
_PAGES = 100  # most pages of tools/list followed


def flatten_errors(exc: BaseException) -> str:
    """The messages inside ``exc`` (exception groups opened up), for an error that names the cause."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(flatten_errors(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _client(command: Sequence[str] | None, url: str | None, env: Mapping[str, str] | None) -> Client:
    try:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters
    except ImportError as exc:
        raise HabitatUnavailableError(
            f"tools from MCP servers need the MCP SDK, which is not installed ({exc}); "
            "install it with: pip install 'habitus[server]'"
        ) from None
    if command is not None:
        params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(env) if env else None)
        return Client(params, cache=None)
    assert url is not None
    return Client(url, cache=None)


class McpConnection:
    """One MCP server's session, opened by :meth:`start` and closed by :meth:`aclose`."""

    def __init__(self, name: str, *, command: Sequence[str] | None, url: str | None, env: Mapping[str, str] | None):
        self.name = name
        self.target = " ".join(command) if command is not None else str(url)
        self._factory = (command, url, env)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> list[RemoteTool]:
        """Connect, list the server's tools, and keep the session open in the background.

        Raises:
            HabitatUnavailableError: The SDK is missing, or the server could not be started or reached.
        """
        client = _client(*self._factory)
        ready: asyncio.Future[list[RemoteTool]] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(client, ready), name=f"habitus-mcp-{self.name}")
        try:
            return await ready
        except Exception as exc:  # noqa: BLE001 - whatever the transport raised, said plainly
            await self.aclose()
            raise HabitatUnavailableError(
                f"could not connect to MCP server {self.name!r} ({self.target}): {flatten_errors(exc)}"
            ) from None

    async def _hold(self, client: Client, ready: asyncio.Future[list[RemoteTool]]) -> None:
        try:
            async with client:
                tools: list[RemoteTool] = []
                cursor: str | None = None
                for _ in range(_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                self._client = client
                ready.set_result(tools)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError(flatten_errors(exc)))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("the session with MCP server %r ended: %s", self.name, flatten_errors(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._client = None

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float | None) -> CallToolResult:
        """Call ``tool`` on the server.

        Raises:
            ConnectionError: The session is closed.
            Exception: Whatever the SDK raises (protocol errors, timeouts, a closed stream).
        """
        client = self._client
        if client is None:
            raise ConnectionError(f"the session with MCP server {self.name!r} is closed")
        return await client.call_tool(tool, arguments, read_timeout_seconds=timeout)

    async def aclose(self) -> None:
        """End the session (and, for stdio, the server's process)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def mcp_tool(
    connection: McpConnection, remote: RemoteTool, local: str, *, dangerous: bool, timeout_s: float | None
) -> Tool:
    """The tool named ``local`` that calls ``remote`` through ``connection``."""
    schema = dict(remote.input_schema or {"type": "object", "properties": {}})
    remote_name = remote.name
    destructive = bool(remote.annotations is not None and remote.annotations.destructive_hint)

    async def invoke(arguments: dict[str, Any]) -> Any:
        try:
            check_arguments(schema, arguments)
        except ArgumentsError as exc:
            raise ToolFailed(ToolFailure(type="invalid_arguments", message=str(exc))) from None
        try:
            result = await connection.call(remote_name, arguments, timeout_s)
        except ConnectionError as exc:
            raise ToolFailed(ToolFailure(type="unavailable", message=str(exc))) from None
        except TimeoutError:
            raise ToolFailed(
                ToolFailure(type="timeout", message=f"MCP server {connection.name!r} did not answer in time")
            ) from None
        except Exception as exc:  # noqa: BLE001 - an external server: whatever it did is the call's failure
            raise ToolFailed(
                ToolFailure(type=_failure_type(exc), message=f"MCP server {connection.name!r}: {flatten_errors(exc)}")
            ) from None
        return _mcp_value(result)

    return Tool(
        name=local,
        description=remote.description or "",
        parameters=schema,
        source="mcp",
        dangerous=dangerous or destructive,
        timeout_s=timeout_s,
        _invoke=invoke,
    )


def _failure_type(exc: Exception) -> FailureType:
    """``timeout`` for a request that timed out, ``unavailable`` for a session that broke, else ``remote_error``."""
    import anyio
    from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

    code = getattr(exc, "code", None)
    if code == REQUEST_TIMEOUT:
        return "timeout"
    broken = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
    if code == CONNECTION_CLOSED or isinstance(exc, broken):
        return "unavailable"
    return "remote_error"


def _mcp_value(result: CallToolResult) -> Any:
    """An MCP result as the value: its structured content, else its text, else its content blocks."""
    texts = [getattr(block, "text", None) for block in result.content]
    if result.is_error:
        message = "; ".join(t for t in texts if t) or "the MCP tool reported an error"
        raise ToolFailed(ToolFailure(type="remote_error", message=message))
    if result.structured_content is not None:
        return to_json(result.structured_content)
    if texts and all(t is not None for t in texts):
        return texts[0] if len(texts) == 1 else texts
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
