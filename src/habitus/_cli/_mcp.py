"""``habitus mcp``: the habitat's MCP server over stdio, for an assistant or agent on this machine.

It parses, builds the server (:func:`habitus.server._mcp.create_mcp_server`) and runs
it; errors before the server starts reach ``main()`` like any other command's. Once
it runs, stdout belongs to the MCP protocol: nothing else is printed there.
"""

from __future__ import annotations

import asyncio

import click

from habitus._cli._agents import _me, load_app
from habitus._cli._main import _Context, cli
from habitus._habitat import Habitat
from habitus._settings import Settings
from habitus.agents._behaviour import App

__all__ = ["mcp"]


@cli.command()
@click.option("--principal", metavar="PRINCIPAL", help="Who every call acts as (default: human:<your user name>).")
@click.option("--app", "app_ref", metavar="APP", help="Also run this app's agents, so 'request' gets replies.")
@click.pass_obj
def mcp(obj: _Context, principal: str | None, app_ref: str | None) -> None:
    """Serve the habitat over MCP on stdin/stdout (tools: remember, recall, send, why, log...)."""
    settings = obj.settings()
    app = load_app(app_ref) if app_ref else None
    asyncio.run(_serve(settings, principal=principal or _me(), app=app))


async def _serve(settings: Settings, *, principal: str, app: App | None) -> None:
    try:
        from habitus.server._mcp import create_mcp_server
    except ImportError as exc:  # the server extra is not installed
        raise click.ClickException(
            f"habitus mcp needs the server extra: pip install 'habitus[server]' ({exc})"
        ) from exc

    hab = await Habitat.open(settings=settings, read_only=False)
    try:
        server = create_mcp_server(hab, principal=principal)
        if app is not None:
            await hab.start(app)
        # stdout carries the protocol; a line on stderr shows in the client's server log.
        click.echo(f"habitus: serving habitat {hab.name!r} at {hab.path} over MCP (stdio) as {principal}", err=True)
        await server.run_stdio_async()
    finally:
        await hab.close()
