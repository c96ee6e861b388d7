"""Server commands: ``serve``, ``up`` (the main job) and ``token`` (create, list, revoke).

They parse, call the API (:func:`habitus.server._serve.serve`, ``hab.control.tokens``) and
render; errors reach ``main()``, which prints one line and exits with the table's code.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import click

from habitus._cli._agents import _me, _with_habitat, load_app
from habitus._cli._main import _Context, _parse_time, cli
from habitus._habitat import Habitat
from habitus._settings import Settings
from habitus.agents._behaviour import App
from habitus.control._tokens import TokenInfo

__all__ = ["serve", "token", "up"]


def _server_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--port", type=int, help="Port (default: the server_port setting, 7077; 0 for any free one).")(fn)
    fn = click.option("--host", help="Address to listen on (default: the server_host setting, 127.0.0.1).")(fn)
    fn = click.option("--app", "app_ref", metavar="APP", help="Also run this app's agents (as 'habitus run' does).")(fn)
    return fn


async def _run(
    settings: Settings,
    *,
    host: str,
    port: int,
    dev_principal: str | None,
    app: App | None,
    dashboard_for: str | None,
    society: bool,
) -> None:
    from habitus import _society
    from habitus.server._serve import serve

    hab = await Habitat.open(settings=settings, create=True)
    token_id: str | None = None
    try:
        if society:
            first = await _society.setup_society(hab)
            await hab.start(_society.build_society())
            if first:
                await _society.start_sensors(hab)
            model = hab.models.default
            click.echo(
                f"the greenhouse society runs in {hab.path}/: {len(_society.SOCIETY_AGENTS)} agents, "
                f"thinking with the {model!r} model" + (" (scripted, offline)" if model == "scripted" else "")
            )
        elif app is not None:
            await hab.start(app)
        secret: str | None = None
        if dashboard_for is not None:
            info, secret = await hab.control.tokens.create(dashboard_for, name="dashboard (habitus up)")
            token_id = info.id

        def ready(url: str) -> None:
            click.echo(f"Habitus is up: habitat {hab.name!r} at {hab.path}")
            if secret is not None:
                click.echo(f"  dashboard  {url}/?token={secret}")
                click.echo(f"             (acting as {dashboard_for}; the token is revoked when this stops)")
            else:
                click.echo(f"  dashboard  {url}/")
            click.echo(f"  API        {url}/v1  (OpenAPI: {url}/openapi.json, docs: {url}/docs)")
            click.echo(f"  MCP        {url}/mcp")
            if dev_principal is not None:
                click.echo(f"  requests without a token act as {dev_principal} (development mode)")
            click.echo("Ctrl-C stops")

        await serve(hab, host=host, port=port, dev_principal=dev_principal, on_ready=ready)
    finally:
        try:
            if token_id is not None:
                await hab.control.tokens.revoke(token_id)
        finally:
            await hab.close()
    click.echo("stopped; the habitat is closed")


@cli.command()
@_server_options
@click.option(
    "--dev-principal",
    metavar="PRINCIPAL",
    help="Development only: requests without a token act as PRINCIPAL (refused unless on loopback).",
)
@click.pass_obj
def serve(obj: _Context, host: str | None, port: int | None, app_ref: str | None, dev_principal: str | None) -> None:
    """Serve the HTTP API, MCP at /mcp and the dashboard at / until Ctrl-C."""
    settings = obj.settings()
    app = load_app(app_ref) if app_ref else None
    asyncio.run(
        _run(
            settings,
            host=host or settings.server_host,
            port=settings.server_port if port is None else port,
            dev_principal=dev_principal,
            app=app,
            dashboard_for=None,
            society=False,
        )
    )


@cli.command()
@_server_options
@click.option(
    "--as",
    "principal",
    metavar="PRINCIPAL",
    help="Who the dashboard acts as (default: the society's owner, human:operator; without it human:<you>).",
)
@click.option("--empty", is_flag=True, help="Do not run the greenhouse society (a new habitat stays empty).")
@click.pass_obj
def up(
    obj: _Context, host: str | None, port: int | None, app_ref: str | None, principal: str | None, empty: bool
) -> None:
    """The main job: run the greenhouse society in the habitat, serve it, and print the dashboard's address.

    A new habitat (or one made by 'up' before) runs the demo society; a habitat of
    your own is served as it is, with --app to run your agents.
    """
    from habitus import _society

    settings = obj.settings()
    app = load_app(app_ref) if app_ref else None
    society = not empty and app is None and _society.is_society(settings.path)
    asyncio.run(
        _run(
            settings,
            host=host or settings.server_host,
            port=settings.server_port if port is None else port,
            dev_principal=None,
            app=app,
            dashboard_for=principal or (_society.OPERATOR if society else _me()),
            society=society,
        )
    )


@cli.group()
def token() -> None:
    """Tokens bound to principals, for the HTTP API, MCP over HTTP and the dashboard."""


def _show(info: TokenInfo) -> str:
    expires = info.expires.isoformat() if info.expires else "never"
    created = f"created {info.created.isoformat()} by {info.created_by}"
    return f"{info.id}  {info.principal}  {info.name or '-'}  {created}  expires {expires}"


@token.command("create")
@click.option("--principal", required=True, metavar="PRINCIPAL", help="Who requests with the token act as.")
@click.option("--name", help="What the token is for.")
@click.option("--expires", metavar="TIME", help="When it stops working (ISO 8601; UTC when no zone is given).")
@click.pass_obj
def token_create(obj: _Context, principal: str, name: str | None, expires: str | None) -> None:
    """Create a token and print its secret (shown once; only its digest is kept)."""
    until: datetime | None = _parse_time(expires, "expires")

    async def work(hab: Habitat) -> tuple[TokenInfo, str]:
        return await hab.control.tokens.create(principal, name=name, expires=until, by=_me())

    info, secret = _with_habitat(obj, read_only=False, work=work)
    click.echo(secret)
    click.echo(f"token {info.id} acts as {info.principal}; keep the secret above, it is not stored", err=True)


@token.command("list")
@click.pass_obj
def token_list(obj: _Context) -> None:
    """List the tokens in force (never their secrets)."""

    async def work(hab: Habitat) -> list[TokenInfo]:
        return hab.control.tokens.list()

    for info in _with_habitat(obj, read_only=True, work=work):
        click.echo(_show(info))


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_obj
def token_revoke(obj: _Context, token_id: str) -> None:
    """Revoke a token: requests presenting it are refused from now on."""

    async def work(hab: Habitat) -> TokenInfo:
        return await hab.control.tokens.revoke(token_id, by=_me())

    info = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"revoked token {info.id} of {info.principal}")
