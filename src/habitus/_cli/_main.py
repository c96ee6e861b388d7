"""The ``habitus`` command: a thin translation of the Python API.

Commands parse arguments, call :class:`habitus.SyncHabitat`, and render. Any
:class:`~habitus.errors.HabitatError` becomes one line on stderr and the exit
code from :data:`habitus.errors.ERROR_TABLE`; nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from habitus._cli import _render
from habitus._settings import Settings
from habitus._sync import SyncHabitat
from habitus._version import __version__
from habitus.errors import HabitatError, InvalidRequestError, error_code

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

_INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in Habitus, not in the request


class _Context:
    def __init__(self, habitat: str | None, config: str | None) -> None:
        self.habitat = habitat
        self.config = config

    def settings(self) -> Settings:
        return Settings.resolve(
            config_file=Path(self.config) if self.config else None,
            path=Path(self.habitat) if self.habitat else None,
        )

    def open(self, *, read_only: bool) -> SyncHabitat:
        return SyncHabitat.open(read_only=read_only, settings=self.settings())


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"--{name} {value!r} is not an ISO 8601 time such as 2026-05-01T12:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="habitus")
@click.option(
    "--habitat",
    "-H",
    metavar="PATH",
    help="Habitat directory (default: 'path' in habitus.toml, $HABITUS_PATH, or ./habitat).",
)
@click.option("--config", metavar="FILE", help="Settings file (default: ./habitus.toml when present).")
@click.pass_context
def cli(ctx: click.Context, habitat: str | None, config: str | None) -> None:
    """Habitus: a habitat for AI agents, with one causal, tamper-evident ledger."""
    ctx.obj = _Context(habitat, config)


@cli.command()
@click.argument("path", required=False)
@click.option("--name", help="A name for the habitat (default: the directory's name).")
@click.pass_obj
def init(obj: _Context, path: str | None, name: str | None) -> None:
    """Create a new habitat in PATH (default: the configured habitat path)."""
    settings = obj.settings()
    with SyncHabitat.init(path, name=name, settings=settings) as hab:
        click.echo(f"created habitat {hab.name!r} at {hab.path}")
        click.echo(f"checkpoint key: {hab.ledger.public_key}")


@cli.command()
@click.option("--actor", help="Only events by this principal, e.g. agent:scout.")
@click.option("--kind", help="Only this kind, or a family such as 'message.*'.")
@click.option("--thread", help="Only events in this thread.")
@click.option("--since", help="Committed at or after this ISO time (UTC if no zone).")
@click.option("--until", help="Committed before this ISO time.")
@click.option("--limit", "-n", default=50, show_default=True, help="Events per page.")
@click.option("--cursor", type=int, help="Continue from a previous page's cursor.")
@click.option("--newest-first/--oldest-first", default=False, help="Order of events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for machines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they commit (Ctrl-C stops).")
@click.pass_obj
def log(
    obj: _Context,
    actor: str | None,
    kind: str | None,
    thread: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    cursor: int | None,
    newest_first: bool,
    as_json: bool,
    follow: bool,
) -> None:
    """List events, filtered by actor, kind, thread and time."""
    with obj.open(read_only=True) as hab:
        page = hab.ledger.query(
            actor=actor,
            kind=kind,
            thread=thread,
            since=_parse_time(since, "since"),
            until=_parse_time(until, "until"),
            cursor=cursor,
            limit=limit,
            order="desc" if newest_first else "asc",
        )
        if as_json:
            for event in page.events:
                click.echo(_render.event_json(event))
        else:
            click.echo(_render.table(page.events) if page.events else "no events match")
            if page.next_cursor is not None:
                click.echo(f"more: habitus log --cursor {page.next_cursor} (same filters)", err=True)
        if follow:
            last = max((e.seq for e in page.events), default=None)
            start = last if last is not None and not newest_first else hab.ledger.count()
            try:
                for event in hab.ledger.tail(after=start):
                    if (actor and event.actor != actor) or (thread and event.thread != thread):
                        continue
                    if kind and not (event.kind == kind or (kind.endswith(".*") and event.kind.startswith(kind[:-1]))):
                        continue
                    click.echo(_render.event_json(event) if as_json else _render.event_line(event))
            except KeyboardInterrupt:
                return


@cli.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print the event as JSON.")
@click.pass_obj
def show(obj: _Context, event_id: str, as_json: bool) -> None:
    """Show one event in full."""
    with obj.open(read_only=True) as hab:
        event = hab.ledger.get(event_id)
        if as_json:
            click.echo(event.model_dump_json(indent=2))
            return
        for key, value in event.model_dump(mode="json").items():
            click.echo(f"{key:>12}: {json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}")


def _walk_command(direction: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn = click.option("--json", "as_json", is_flag=True, help="Print the subgraph as JSON.")(fn)
        fn = click.option("--limit", default=1000, show_default=True, help="Most events to show.")(fn)
        fn = click.option("--depth", default=50, show_default=True, help=f"Most {direction} hops to follow.")(fn)
        return fn

    return decorate


@cli.command()
@click.argument("event_id")
@_walk_command("cause")
@click.pass_obj
def why(obj: _Context, event_id: str, depth: int, limit: int, as_json: bool) -> None:
    """Walk an event's causes back to their origins, drawn as a tree."""
    with obj.open(read_only=True) as hab:
        graph = hab.ledger.why(event_id, depth=depth, limit=limit)
    click.echo(graph.model_dump_json(indent=2) if as_json else _render.tree(graph))


@cli.command()
@click.argument("event_id")
@_walk_command("effect")
@click.pass_obj
def effects(obj: _Context, event_id: str, depth: int, limit: int, as_json: bool) -> None:
    """Walk forward from an event to everything it led to, drawn as a tree."""
    with obj.open(read_only=True) as hab:
        graph = hab.ledger.effects(event_id, depth=depth, limit=limit)
    click.echo(graph.model_dump_json(indent=2) if as_json else _render.tree(graph))


@cli.command()
@click.option("--public-key", help="Check signatures with this hex Ed25519 key instead of the habitat's own.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(obj: _Context, public_key: str | None, as_json: bool) -> None:
    """Recompute every digest, leaf and root; report the first bad seq and why."""
    with obj.open(read_only=True) as hab:
        report = hab.ledger.verify(public_key=public_key)
    click.echo(report.model_dump_json(indent=2) if as_json else _render.verify_text(report))
    if not report.ok:
        sys.exit(error_code(_verify_error()).exit_code)


def _verify_error() -> HabitatError:
    from habitus.errors import IntegrityError

    return IntegrityError("verification failed")


@cli.command()
@click.option("--export", "export", metavar="FILE", help="Also write the checkpoint as JSON to FILE ('-' for stdout).")
@click.option("--list", "list_all", is_flag=True, help="List the stored checkpoints instead of signing one.")
@click.pass_obj
def checkpoint(obj: _Context, export: str | None, list_all: bool) -> None:
    """Sign a checkpoint of the ledger (tree size, root, time) with the habitat's key."""
    if list_all:
        with obj.open(read_only=True) as hab:
            for cp in hab.ledger.checkpoints():
                click.echo(f"{cp.tree_size:>10}  {cp.ts.isoformat()}  {cp.root}")
        return
    with obj.open(read_only=False) as hab:
        cp = hab.ledger.checkpoint()
    text = cp.model_dump_json(indent=2)
    if export == "-":
        click.echo(text)
        return
    click.echo(_render.checkpoint_text(cp))
    if export:
        Path(export).write_text(text + "\n", encoding="utf-8")
        click.echo(f"exported to {export}")


@cli.command()
@click.argument("event_id")
@click.option("--reason", required=True, help="Why the content is erased (recorded in the ledger).")
@click.option("--by", "by", help="Principal erasing it (default: human:<your user name>).")
@click.pass_obj
def erase(obj: _Context, event_id: str, reason: str, by: str | None) -> None:
    """Erase an event's content everywhere, keeping its leaf so the ledger still verifies."""
    with obj.open(read_only=False) as hab:
        result = hab.ledger.erase(event_id, reason=reason, by=by or f"human:{getpass.getuser()}")
    click.echo(f"erased the content of {result.target}; recorded as #{result.event.seq} content.erased")
    if not result.scrubbed:
        click.echo(
            "warning: another process is reading the habitat, so old copies may remain in its WAL file "
            "until it closes; run 'habitus checkpoint' afterwards to finish",
            err=True,
        )


@cli.command()
@click.argument("event_id")
@click.option("--tree-size", type=int, help="Prove against this tree size (default: the current one).")
@click.pass_obj
def proof(obj: _Context, event_id: str, tree_size: int | None) -> None:
    """Print an inclusion proof (RFC 6962 audit path) for an event, as JSON."""
    with obj.open(read_only=True) as hab:
        click.echo(hab.ledger.inclusion_proof(event_id, tree_size=tree_size).model_dump_json(indent=2))


@cli.command()
@click.option("--path", default="habitus-demo", show_default=True, help="Where to create the demo habitat.")
def demo(path: str) -> None:
    """Play a small scenario and print the causal trail of its last event."""
    from habitus._demo import run_demo

    result = asyncio.run(run_demo(Path(path)))
    click.echo(f"Habitat at {result.path}/ with {result.events} events.\n")
    click.echo("A person asked an agent to mind a greenhouse; a sensor reported heat; the scout warned the")
    click.echo("planner; the planner decided and reported back. Ada then had her phone number erased.\n")
    click.echo(f"Why did the last event happen?  (habitus -H {result.path} why {result.last_event})\n")
    with SyncHabitat.open(result.path, read_only=True) as hab:
        click.echo(_render.tree(hab.ledger.why(result.last_event)))
    click.echo(f"\nErased: content of {result.erasure.target} (its leaf stays; the text is gone from disk).")
    click.echo("Verification: " + _render.verify_text(result.report))
    click.echo(f"\nExplore: habitus -H {result.path} log    |    habitus -H {result.path} verify")


def main() -> None:
    """Entry point of the ``habitus`` console script."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HabitatError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(error_code(exc).exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: never a traceback
        click.echo(f"internal error (a bug in Habitus; please report it): {exc!r}", err=True)
        sys.exit(_INTERNAL_ERROR)
