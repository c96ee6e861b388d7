"""The MCP server: a habitat's memory, messages and ledger as MCP tools and resources.

:func:`create_mcp_server` builds it over an open habitat with the official ``mcp``
SDK; ``habitus mcp`` runs it over stdio as one principal, and :func:`mount` serves
it at ``/mcp`` over streamable HTTP, where each HTTP request acts as its bearer
token's principal. Either way every tool call goes through
:class:`~habitus._acting.Acting`, so the control layer checks it exactly as it
checks a library call (a refusal is a ``policy.denied`` event) and what it
records carries the caller as its actor. Tool input schemas are derived by the
SDK from the typed signatures below; outputs are the library's own models.

A :class:`~habitus.errors.HabitatError` comes back as a tool error (``isError``)
whose text is ``"<ErrorClass>: <message>"``; a resource read that fails is a
JSON-RPC error with the same text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field, JsonValue
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from habitus._acting import Acting
from habitus._habitat import Habitat
from habitus._version import __version__
from habitus.agents._models import Message
from habitus.errors import HabitatError, InvalidRequestError, error_code
from habitus.ledger._models import Event, Page, Subgraph
from habitus.memory._models import Fact, Forgotten, MemoryRecord, Recall
from habitus.server._app import ErrorBody

__all__ = ["create_mcp_server", "mount"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_INSTRUCTIONS = (
    "A Habitus habitat: agents with durable memory, messages between them, and one causal, "
    "tamper-evident ledger of everything that happens. Every call acts as your principal and "
    "is checked by the habitat's policy. Memory tools take the agent whose memory to use "
    "(default: yours, when you are an agent). Event ids returned by one tool (a message, a "
    "memory) can be passed to 'why' to trace what led to them."
)
_THREAD_EVENTS = 1000  # events a thread resource shows (the oldest ones)
_INBOX_PAGES = 20  # pages of 500 visible messages 'inbox' reads back through for a person's replies

AgentArg = Annotated[
    str | None,
    Field(description="The agent whose memory to use, e.g. 'scout' (default: yours, if you are an agent)."),
]


def _principal_of(ctx: Context[Any, Any]) -> str | None:
    """The principal the HTTP request carrying this call authenticated as (``None`` off HTTP)."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    if isinstance(user, AuthenticatedUser):
        return user.access_token.subject
    return None


def create_mcp_server(habitat: Habitat, *, principal: str | None = None) -> MCPServer[Any]:
    """An MCP server over ``habitat``: memory, messages and the ledger, as one principal per call.

    Args:
        habitat: An open habitat (for writing, for the tools that write).
        principal: Who every call acts as (``habitus mcp`` over stdio, or in-process).
            ``None``: each call acts as the principal its HTTP request authenticated as
            (the ``/mcp`` mount); a call that has none is refused.

    Tools: ``remember``, ``recall``, ``forget``, ``facts``, ``send``, ``request``,
    ``inbox``, ``why``, ``log``. Resources: ``habitus://agents/{agent}/state`` and
    ``habitus://threads/{thread}``.
    """
    if principal is not None:
        habitat.acting_as(principal)  # fail now on a malformed principal, not on the first call
    server: MCPServer[Any] = MCPServer(
        "habitus",
        title=f"Habitus: {habitat.name}",
        version=__version__,
        instructions=_INSTRUCTIONS,
        log_level="WARNING",
    )

    def acting(ctx: Context[Any, Any]) -> Acting:
        who = principal if principal is not None else _principal_of(ctx)
        if who is None:
            raise InvalidRequestError(
                "this call has no principal: connect with a token ('Authorization: Bearer <token>')"
            )
        return habitat.acting_as(who)

    # -- memory -----------------------------------------------------------------------------

    @server.tool()
    @_as_tool_errors
    async def remember(
        ctx: Context[Any, Any],
        text: Annotated[str, Field(description="What to remember.")],
        agent: AgentArg = None,
        scope: Annotated[str | None, Field(description="'private' (default), 'public' or 'group:<name>'.")] = None,
        kind: Annotated[str, Field(description="'note', 'observation', 'summary'... (free-form).")] = "note",
        tags: Annotated[list[str] | None, Field(description="Tags recall can filter on.")] = None,
        importance: Annotated[
            float, Field(ge=0, le=1, description="0..1; the least important is forgotten first.")
        ] = 0.5,
        source: Annotated[list[str] | None, Field(description="Ids of the events it came from.")] = None,
        thread: Annotated[str | None, Field(description="The conversation it belongs to.")] = None,
    ) -> MemoryRecord:
        """Remember a text in an agent's memory; returns the stored memory (its id is a ledger event)."""
        memory = acting(ctx).memory(agent)
        return await memory.remember(
            text, scope=scope, kind=kind, tags=tags or (), importance=importance, source=source or (), thread=thread
        )

    @server.tool()
    @_as_tool_errors
    async def recall(
        ctx: Context[Any, Any],
        query: Annotated[str, Field(description="What to look for, in plain words.")],
        agent: AgentArg = None,
        k: Annotated[int, Field(ge=1, le=1000, description="How many memories to return.")] = 10,
        scope: Annotated[str | None, Field(description="Only this scope (default: every scope you may read).")] = None,
        kinds: Annotated[list[str] | None, Field(description="Only memories of these kinds.")] = None,
        tags: Annotated[list[str] | None, Field(description="Only memories carrying all these tags.")] = None,
        mode: Literal["hybrid", "dense", "lexical"] = "hybrid",
    ) -> Recall:
        """Recall the memories that best answer a query, best first, with scores and provenance.

        The recall itself is recorded (``memory.recalled``, citing what it returned).
        """
        memory = acting(ctx).memory(agent)
        return await memory.recall(query, k=k, scope=scope, kinds=kinds, tags=tags, mode=mode)

    @server.tool()
    @_as_tool_errors
    async def forget(
        ctx: Context[Any, Any],
        memory: Annotated[str, Field(description="The id of the memory or fact to forget.")],
        reason: Annotated[str, Field(description="Why (recorded in the ledger).")],
        agent: AgentArg = None,
    ) -> Forgotten:
        """Forget a memory or fact for good: its text is erased everywhere; the ledger records who and why."""
        view = acting(ctx).memory(agent)
        return await view.forget(memory, reason=reason)

    @server.tool()
    @_as_tool_errors
    async def facts(
        ctx: Context[Any, Any],
        agent: AgentArg = None,
        subject: Annotated[str | None, Field(description="Only facts about this subject.")] = None,
        predicate: Annotated[str | None, Field(description="Only facts with this predicate.")] = None,
        history: Annotated[bool, Field(description="Every version ever recorded, superseded ones too.")] = False,
    ) -> list[Fact]:
        """What an agent believes (subject, predicate, value, validity), oldest first."""
        memory = acting(ctx).memory(agent)
        return await memory.facts(subject, predicate=predicate, history=history)

    # -- messages ---------------------------------------------------------------------------

    @server.tool()
    @_as_tool_errors
    async def send(
        ctx: Context[Any, Any],
        to: Annotated[str, Field(description="The agent to send to, e.g. 'scout'.")],
        body: Annotated[JsonValue, Field(description="The message: text or any JSON value.")],
        type: Annotated[str | None, Field(description="The message type that selects its handler.")] = None,  # noqa: A002
        thread: Annotated[str | None, Field(description="The conversation it belongs to.")] = None,
    ) -> Event:
        """Send a message to an agent's mailbox; returns the ``message.sent`` event."""
        return await acting(ctx).send(to, body, type=type, thread=thread)

    @server.tool()
    @_as_tool_errors
    async def request(
        ctx: Context[Any, Any],
        to: Annotated[str, Field(description="The agent to ask, e.g. 'scout'.")],
        body: Annotated[JsonValue, Field(description="The request: text or any JSON value.")],
        timeout: Annotated[float, Field(gt=0, le=600, description="Seconds to wait for the reply.")] = 30.0,
        type: Annotated[str | None, Field(description="The message type that selects its handler.")] = None,  # noqa: A002
        thread: Annotated[str | None, Field(description="The conversation it belongs to.")] = None,
    ) -> Message:
        """Send a request to an agent and wait for its reply (an app must be running its behaviour)."""
        return await acting(ctx).request(to, body, timeout=timeout, type=type, thread=thread)

    @server.tool()
    @_as_tool_errors
    async def inbox(
        ctx: Context[Any, Any],
        agent: Annotated[
            str | None, Field(description="Whose mailbox (default: yours if you are an agent, else your replies).")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="Most messages to return.")] = 20,
    ) -> list[Message]:
        """Messages waiting for you: an agent's mailbox, or (for a person or service) the replies sent to you."""
        return await _inbox(acting(ctx), agent, limit)

    # -- the ledger -------------------------------------------------------------------------

    @server.tool()
    @_as_tool_errors
    async def why(
        ctx: Context[Any, Any],
        event: Annotated[str, Field(description="An event id (or seq).")],
        depth: Annotated[int, Field(ge=0, le=1000, description="Most cause hops to follow.")] = 50,
        limit: Annotated[int, Field(ge=1, le=10_000, description="Most events to return.")] = 200,
    ) -> Subgraph:
        """Why an event happened: its causes, back to their origins, as a graph (nodes and cause edges)."""
        return await acting(ctx).why(event, depth=depth, limit=limit)

    @server.tool(name="log")
    @_as_tool_errors
    async def log_(
        ctx: Context[Any, Any],
        kind: Annotated[str | None, Field(description="Only this kind, or a family such as 'message.*'.")] = None,
        actor: Annotated[str | None, Field(description="Only events by this principal, e.g. 'agent:scout'.")] = None,
        thread: Annotated[str | None, Field(description="Only events in this thread.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="Events per page.")] = 20,
        cursor: Annotated[int | None, Field(description="The previous page's next_cursor.")] = None,
        newest_first: bool = True,
    ) -> Page:
        """Recent events you may see, newest first; page on with ``next_cursor``."""
        order: Literal["asc", "desc"] = "desc" if newest_first else "asc"
        return await acting(ctx).events(kind=kind, actor=actor, thread=thread, limit=limit, cursor=cursor, order=order)

    # -- resources --------------------------------------------------------------------------

    @server.resource(
        "habitus://agents/{agent}/state",
        name="agent state",
        description="An agent's durable state (its owner and the agent itself may read it).",
        mime_type="application/json",
    )
    @_as_resource_errors
    async def agent_state(agent: str, ctx: Context[Any, Any]) -> str:
        return json.dumps(await acting(ctx).state(agent), ensure_ascii=False)

    @server.resource(
        "habitus://threads/{thread}",
        name="thread",
        description=f"A thread's events you may see, oldest first (at most {_THREAD_EVENTS}).",
        mime_type="application/json",
    )
    @_as_resource_errors
    async def thread_events(thread: str, ctx: Context[Any, Any]) -> str:
        page = await acting(ctx).events(thread=thread, limit=_THREAD_EVENTS)
        return page.model_dump_json()

    return server


def _text(exc: HabitatError) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_tool_errors(fn: F) -> F:
    """Report a :class:`HabitatError` as a tool error with its message (the SDK hides a crash's)."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HabitatError as exc:
            raise ToolError(_text(exc)) from exc

    return cast(F, call)


def _as_resource_errors(fn: F) -> F:
    """Report a :class:`HabitatError` as a resource error: not found (-32602) when the table says 404, else -32603."""

    @functools.wraps(fn)
    async def read(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HabitatError as exc:
            if error_code(exc).http_status == 404:
                raise ResourceNotFoundError(_text(exc)) from exc
            raise ResourceError(_text(exc)) from exc

    return cast(F, read)


# -- reads, through Acting -----------------------------------------------------------------------


async def _inbox(acting: Acting, agent: str | None, limit: int) -> list[Message]:
    """An agent's mailbox (needs ``state:read`` on it), or the replies sent to a person or service."""
    if agent is None and acting.principal.startswith("agent:"):
        agent = acting.principal
    if agent is not None:
        return [entry.message for entry in await acting.mailbox(agent, limit=limit)]
    # Only replies go to a person or service; the newest are found by reading back through messages.
    found: list[Message] = []
    cursor: int | None = None
    for _ in range(_INBOX_PAGES):
        page = await acting.events(kind="message.sent", cursor=cursor, limit=500, order="desc")
        found += [Message.from_event(e) for e in page.events if e.meta.get("to") == acting.principal]
        if len(found) >= limit or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found[:limit][::-1]


# -- streamable HTTP at /mcp ---------------------------------------------------------------------


def mount(app: FastAPI) -> None:
    """Serve MCP over streamable HTTP at ``/mcp`` on ``app``, each request acting as its token's principal.

    The SDK's session manager runs inside the app's lifespan (uvicorn runs it; an
    in-process test enters ``app.router.lifespan_context(app)``); a request that
    arrives while it is not running is answered 503. A session is bound to the
    principal that opened it: a request for it with another principal's token is
    answered 404, as if the session did not exist.
    """
    endpoint = _Endpoint(app)
    app.router.routes.append(Route("/mcp", endpoint=endpoint, include_in_schema=False))
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with outer(a) as state, endpoint.running():
            yield state

    app.router.lifespan_context = lifespan


class _Endpoint:
    """The ASGI app at ``/mcp``: authenticates each request, then hands it to the SDK's session manager."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._server: MCPServer[Any] | None = None
        self._handler: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # A session manager runs once: each lifespan (each server start) gets a fresh one.
        if self._server is None:
            self._server = create_mcp_server(self._app.state.habitat)
        # Hosts and origins are not restricted here: a request needs a token, which a
        # page in a browser does not have; the token-less development principal
        # checks for loopback itself (see _authenticate).
        self._server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )
        manager: StreamableHTTPSessionManager = self._server.session_manager
        async with manager.run():
            self._handler = AuthContextMiddleware(manager.handle_request)
            try:
                yield
            finally:
                self._handler = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal, refusal = self._authenticate(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        handler = self._handler
        if handler is None:
            message = "MCP is not running: the server's lifespan has not started (or has ended)"
            await _error(503, "HabitatUnavailableError", message)(scope, receive, send)
            return
        token = AccessToken(token="", client_id=principal, scopes=[], subject=principal)
        scope["user"] = AuthenticatedUser(token)
        scope["auth"] = AuthCredentials([])
        await handler(scope, receive, send)

    def _authenticate(self, scope: Scope) -> tuple[str, JSONResponse | None]:
        headers = Headers(scope=scope)
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        hab: Habitat = self._app.state.habitat
        if scheme.lower() == "bearer" and secret.strip():
            principal = hab.control.tokens.verify(secret.strip())
            if principal is None:
                message = "the token is unknown, revoked or expired; create one with 'habitus token create'"
                return "", _unauthorized(message)
            return principal, None
        dev: str | None = self._app.state.dev_principal
        if dev is None:
            return "", _unauthorized("MCP over HTTP needs a token: send 'Authorization: Bearer <token>'")
        # Without a token, only a request addressed to a loopback name acts as the development
        # principal: a web page that rebinds its own DNS name to 127.0.0.1 still sends that name.
        host = _hostname(headers.get("host", ""))
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            return "", _unauthorized(
                f"the development principal answers only requests to a loopback host, not {host!r}"
            )
        return dev, None


def _hostname(host: str) -> str:
    """``host`` of a Host header (``host:port``, ``[v6]:port``), without the port."""
    return host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error, message), status_code=status)


def _unauthorized(message: str) -> JSONResponse:
    response = _error(401, "Unauthorized", message)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response
