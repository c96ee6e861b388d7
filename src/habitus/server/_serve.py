"""Running the server: uvicorn in the habitat's own event loop, until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from fastapi import FastAPI

from habitus._habitat import Habitat
from habitus.errors import InvalidRequestError
from habitus.server._app import create_app
from habitus.server._routes._events import stop_streams

__all__ = ["is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    hab: Habitat,
    *,
    host: str,
    port: int,
    dev_principal: str | None = None,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Serve the API, MCP and the dashboard for ``hab`` on ``host:port`` until Ctrl-C or SIGTERM.

    ``on_ready`` is called with the base URL once the socket listens (with the real port
    when ``port`` is 0).

    Raises:
        InvalidRequestError: ``dev_principal`` with a host that is not loopback.
    """
    if dev_principal is not None and not is_loopback(host):
        raise InvalidRequestError(
            f"--dev-principal lets requests without a token act as {dev_principal}; it is only allowed on a "
            f"loopback address, not {host!r}"
        )
    app = create_app(hab, dev_principal=dev_principal)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    server = _Server(config, app)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # stop gracefully on either, so the habitat is closed and its checkpoint signed
        loop.add_signal_handler(sig, server.ask_to_stop)
    try:
        await _serve_until_stopped(server, on_ready, host, port)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class _Server(uvicorn.Server):
    """uvicorn's server, minus its own signal handling: it re-raises a captured SIGTERM after
    shutting down, which would kill the process before the habitat is closed."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def ask_to_stop(self) -> None:
        stop_streams(self.app)  # an open /v1/stream would otherwise keep shutdown waiting forever
        if self.should_exit:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
        self.should_exit = True


async def _serve_until_stopped(
    server: _Server, on_ready: Callable[[str], Awaitable[None] | None] | None, host: str, port: int
) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started and on_ready is not None:
        bound = port
        for s in server.servers:
            for sock in s.sockets:
                bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        result = on_ready(f"http://{shown}:{bound}")
        if result is not None:
            await result
    await task
