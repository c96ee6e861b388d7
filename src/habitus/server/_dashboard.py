"""The dashboard at ``/``: three hand-written static files (``static/``) that read the HTTP API.

No build step and nothing fetched from elsewhere: the page, its script and its style ship in
the wheel beside this module. Each file gets its own exact route (not a catch-all mount at
``/``), so no path of the API, of MCP or of anything added later is shadowed, and an unknown
``/v1/...`` path still answers the API's JSON 404 or 405.

The page holds no secret of its own: it acts as the principal of the token the user gives it
(``?token=`` once, then kept in the tab's ``sessionStorage``), sending it as a bearer header
on every request, the live stream included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

__all__ = ["STATIC", "mount"]

STATIC = Path(__file__).resolve().parent / "static"
"""Where the dashboard's files are."""

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# The page runs only its own script and style and talks only to this server; no referrer
# leaves it (the first address may carry ?token=), and no other site may frame it.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI) -> None:
    """Serve the dashboard on ``app``: ``index.html`` at ``/`` and each other file at ``/<name>``."""
    files = sorted(p for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES)
    for path in files:
        route = "/" if path.name == "index.html" else f"/{path.name}"
        app.add_api_route(
            route, _responder(path), methods=["GET", "HEAD"], include_in_schema=False, name=f"dashboard:{path.name}"
        )


def _responder(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    media_type = _TYPES[path.suffix]

    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=_HEADERS)

    serve.__name__ = f"dashboard_{path.stem}"
    return serve
