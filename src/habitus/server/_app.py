"""The HTTP application: authentication, errors, and the routers, over one open habitat.

Every request acts as one principal: the one its bearer token is bound to, or,
only when the operator turned it on (``habitus serve --dev-principal``, which
also binds to loopback), a fixed development principal. Each handler calls the
public API through :class:`~habitus._acting.Acting`, so the control layer
checks an HTTP request exactly as it checks a library call.

Errors: every :class:`~habitus.errors.HabitatError` becomes the HTTP status of
:data:`~habitus.errors.ERROR_TABLE` with a JSON body ``{"error": class name,
"message": what was wrong}``; malformed requests are 422 with the same shape; a
500 means a bug in Habitus, never a client's mistake.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from habitus._acting import Acting
from habitus._habitat import Habitat
from habitus._version import __version__
from habitus.errors import HabitatError, PolicyDeniedError, error_code

__all__ = ["ErrorBody", "actor", "create_app", "habitat_of"]

log = logging.getLogger("habitus.server")

_bearer = HTTPBearer(auto_error=False, description="A token from `habitus token create --principal ...`.")


def ErrorBody(error: str, message: str, **extra: Any) -> dict[str, Any]:  # noqa: N802 - reads as a type
    """The JSON body of every error response."""
    return {"error": error, "message": message, **extra}


def habitat_of(request: Request) -> Habitat:
    """The habitat the app serves."""
    hab: Habitat = request.app.state.habitat
    return hab


async def actor(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Acting:
    """The principal this request acts as (its token's), as an :class:`Acting` handle.

    Raises:
        _Unauthorized: No token, or an unknown, revoked or expired one (401).
    """
    hab = habitat_of(request)
    if credentials is not None:
        principal = hab.control.tokens.verify(credentials.credentials)
        if principal is None:
            raise _Unauthorized("the token is unknown, revoked or expired; create one with 'habitus token create'")
        return hab.acting_as(principal)
    dev = request.app.state.dev_principal
    if dev is not None:
        return hab.acting_as(dev)
    raise _Unauthorized("this request needs a token: send 'Authorization: Bearer <token>'")


Actor = Annotated[Acting, Depends(actor)]
"""A route parameter: the principal the request acts as."""


class _Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def create_app(habitat: Habitat, *, dev_principal: str | None = None, title: str | None = None) -> FastAPI:
    """The HTTP API (and, mounted on it, MCP and the dashboard) over an open habitat.

    Args:
        habitat: An open habitat; the app does not close it.
        dev_principal: Act as this principal when a request has no token (development
            only: ``habitus serve`` allows it on loopback alone).
        title: The OpenAPI title (default: ``Habitus: <habitat name>``).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title=title or f"Habitus: {habitat.name}",
        version=__version__,
        description="The HTTP API of a Habitus habitat. Every request acts as its token's principal.",
        lifespan=lifespan,
        responses={400: {"description": "The request is malformed (a body that is not JSON, say)."}},
    )
    app.state.habitat = habitat
    app.state.dev_principal = dev_principal

    @app.exception_handler(HabitatError)
    async def _habitat_error(request: Request, exc: HabitatError) -> JSONResponse:
        status = error_code(exc).http_status
        if status >= 500:
            log.error("request %s %s failed: %s", request.method, request.url.path, exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, PolicyDeniedError):  # who was refused what, on which resource, as fields too
            extra = {k: v for k in ("principal", "action", "resource") if (v := getattr(exc, k)) is not None}
        return JSONResponse(ErrorBody(type(exc).__name__, str(exc), **extra), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "malformed"}
        message = f"{first['where']}: {first['problem']}"
        return JSONResponse(ErrorBody("InvalidRequestError", message, problems=problems), status_code=422)

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            ErrorBody("Unauthorized", exc.message), status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        return JSONResponse(
            ErrorBody(names.get(exc.status_code, "HTTPError"), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    from habitus.server import _dashboard, _mcp, _routes

    _routes.include(app)
    _mcp.mount(app)  # MCP over streamable HTTP at /mcp
    _dashboard.mount(app)  # the dashboard at /, last: it serves what the API does not
    return app
