"""Agent commands: ``spawn``, ``agents``, ``send``, ``run``, ``suspend``, ``resume``, ``retire``.

Like the rest of the CLI they only parse, call the async API (:class:`habitus.Habitat`)
and render; errors are :class:`~habitus.errors.HabitatError` and reach ``main()``,
which prints one line and exits with the code from the error table.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import importlib.util
import json
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import click

from habitus._cli import _render
from habitus._cli._main import _Context, cli
from habitus._habitat import Habitat
from habitus._settings import Settings
from habitus.agents._behaviour import App
from habitus.agents._models import AgentInfo
from habitus.errors import InvalidRequestError
from habitus.ledger._models import Event

__all__ = ["agents", "resume", "retire", "run_app", "send", "spawn", "suspend"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_DEAD_SHOWN = 20  # dead letters listed by 'habitus agents ID' (the latest ones)


def json_argument(text: str, name: str, otherwise: str) -> Any:
    """``text`` parsed as JSON, or an error naming the argument and how to pass plain text instead."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"{name} is not valid JSON ({exc}); leave out --json {otherwise}") from None


def _me() -> str:
    """``human:<user name>``, the default principal of a person at the terminal."""
    try:
        return f"human:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "human:unknown"


def _with_habitat(obj: _Context, *, read_only: bool, work: Callable[[Habitat], Awaitable[T]]) -> T:
    """Open the habitat, run ``work`` on it, and close it, on a fresh event loop."""
    settings = obj.settings()

    async def go() -> T:
        hab = await Habitat.open(settings=settings, read_only=read_only)
        try:
            return await work(hab)
        finally:
            await hab.close()

    return asyncio.run(go())


# -- spawn ----------------------------------------------------------------------------------


def _parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"--label {value!r} must look like KEY=VALUE")
        if key in labels:
            raise InvalidRequestError(f"--label {key!r} is given twice")
        labels[key] = text
    return labels


@cli.command()
@click.argument("agent_id", metavar="ID")
@click.option("--behaviour", required=True, help="Name of the behaviour the app runs it with.")
@click.option("--owner", metavar="PRINCIPAL", help="Who answers for it (default: human:<your user name>).")
@click.option("--name", help="A human-readable name (default: the id).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label; repeat for more.")
@click.option("--topic", "topics", multiple=True, metavar="PATTERN", help="A topic pattern to subscribe to; repeat.")
@click.pass_obj
def spawn(
    obj: _Context,
    agent_id: str,
    behaviour: str,
    owner: str | None,
    name: str | None,
    labels: tuple[str, ...],
    topics: tuple[str, ...],
) -> None:
    """Register a new agent; it wakes when an app with its behaviour runs and a message arrives."""
    parsed = _parse_labels(labels)

    async def work(hab: Habitat) -> AgentInfo:
        return await hab.agents.spawn(
            agent_id, behaviour=behaviour, owner=owner or _me(), name=name, labels=parsed, topics=topics
        )

    info = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"spawned agent {info.id!r} with behaviour {info.behaviour!r}, owner {info.owner} (#{info.spawned_seq})")


# -- agents ---------------------------------------------------------------------------------


@cli.command()
@click.argument("agent_id", metavar="[ID]", required=False)
@click.option("--limit", "-n", default=100, show_default=True, help="Agents per page when listing.")
@click.option("--after", metavar="ID", help="List the agents after this id (the next page).")
@click.option("--events", default=10, show_default=True, help="How many of the agent's recent events to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON: one agent per line, or the one agent in full.")
@click.pass_obj
def agents(obj: _Context, agent_id: str | None, limit: int, after: str | None, events: int, as_json: bool) -> None:
    """List the agents, or show one: status, owner, state, mailbox, dead letters, recent events."""
    if agent_id is None:
        _list_agents(obj, limit=limit, after=after, as_json=as_json)
        return
    if after is not None:
        raise InvalidRequestError("--after pages the list of agents; leave it out to show one agent")
    if not 0 <= events <= 10_000:
        raise InvalidRequestError(f"--events must be between 0 and 10000, not {events!r}")
    _show_agent(obj, agent_id, events=events, as_json=as_json)


def _list_agents(obj: _Context, *, limit: int, after: str | None, as_json: bool) -> None:
    async def work(hab: Habitat) -> tuple[list[AgentInfo], dict[str, int], bool]:
        page = await hab.agents.list(after=after, limit=limit)
        more = len(page) == limit and bool(await hab.agents.list(after=page[-1].id, limit=1))
        depths = {a.id: await _depth(hab, a.id) for a in page}
        return page, depths, more

    page, depths, more = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        for info in page:
            click.echo(json.dumps({**info.model_dump(mode="json"), "mailbox": depths[info.id]}, ensure_ascii=False))
    else:
        click.echo(_render.agents_table(page, depths) if page else "no agents")
    if more:
        click.echo(f"more: habitus agents --after {page[-1].id}", err=True)


def _show_agent(obj: _Context, agent_id: str, *, events: int, as_json: bool) -> None:
    async def work(hab: Habitat) -> str:
        info = await hab.agents.get(agent_id)
        state = await hab.agents.state(info.id)
        depth = await _depth(hab, info.id)
        rows, total = await hab.agents.dead_letters(info.id, limit=_DEAD_SHOWN)
        dead = [_render.DeadLetter(await hab.ledger.get_seq(r.msg), r.attempts, r.error or "") for r in rows]
        recent: list[Event] = []
        if events:
            page = await hab.ledger.query(actor=info.principal, limit=events, order="desc")
            recent = list(reversed(page.events))
        render = _render.agent_json if as_json else _render.agent_text
        return render(info, state=state, depth=depth, dead=dead, dead_total=total, events=recent)

    click.echo(_with_habitat(obj, read_only=True, work=work))


async def _depth(hab: Habitat, agent: str) -> int:
    """Messages waiting in ``agent``'s mailbox."""
    return await asyncio.to_thread(hab.messages.depth, agent)


# -- send -----------------------------------------------------------------------------------


@cli.command()
@click.argument("agent")
@click.argument("message")
@click.option("--type", "message_type", help="The message's type, which picks the handler.")
@click.option("--from", "sender", metavar="PRINCIPAL", help="Who sends it (default: human:<your user name>).")
@click.option("--json", "as_json", is_flag=True, help="Parse MESSAGE as a JSON value (object, array, number...).")
@click.option("--thread", help="Put the message in this thread.")
@click.pass_obj
def send(
    obj: _Context,
    agent: str,
    message: str,
    message_type: str | None,
    sender: str | None,
    as_json: bool,
    thread: str | None,
) -> None:
    """Send MESSAGE to AGENT's mailbox; a running app delivers it."""
    body: Any = json_argument(message, "MESSAGE", "to send text") if as_json else message

    async def work(hab: Habitat) -> str:
        event = await hab.messages.send(agent, body, sender=sender or _me(), type=message_type, thread=thread)
        depth = await _depth(hab, agent)
        return f"sent #{event.seq} to {event.meta['to']} ({event.id}); {depth} waiting in its mailbox"

    click.echo(_with_habitat(obj, read_only=False, work=work))


# -- lifecycle ------------------------------------------------------------------------------


def _lifecycle_options(fn: F) -> F:
    fn = click.option("--reason", help="Why (recorded in the ledger).")(fn)
    fn = click.option("--by", "by", metavar="PRINCIPAL", help="Who does it (default: human:<your user name>).")(fn)
    fn = click.argument("agent")(fn)
    return fn


@cli.command()
@_lifecycle_options
@click.pass_obj
def suspend(obj: _Context, agent: str, by: str | None, reason: str | None) -> None:
    """Stop deliveries and timers to AGENT; its mailbox is kept until it is resumed."""

    async def work(hab: Habitat) -> AgentInfo:
        return await hab.agents.suspend(agent, by=by or _me(), reason=reason)

    info = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"suspended agent {info.id!r} (#{info.updated_seq} agent.suspended)")


@cli.command()
@_lifecycle_options
@click.pass_obj
def resume(obj: _Context, agent: str, by: str | None, reason: str | None) -> None:
    """Let a suspended AGENT receive its messages again."""

    async def work(hab: Habitat) -> tuple[AgentInfo, int]:
        info = await hab.agents.resume(agent, by=by or _me(), reason=reason)
        return info, await _depth(hab, info.id)

    info, depth = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"resumed agent {info.id!r} (#{info.updated_seq} agent.resumed); {depth} waiting in its mailbox")


@cli.command()
@_lifecycle_options
@click.pass_obj
def retire(obj: _Context, agent: str, by: str | None, reason: str | None) -> None:
    """Retire AGENT for good: it takes no more messages and its queued ones become dead letters."""

    async def work(hab: Habitat) -> tuple[AgentInfo, int]:
        queued = await _depth(hab, agent)
        return await hab.agents.retire(agent, by=by or _me(), reason=reason), queued

    info, queued = _with_habitat(obj, read_only=False, work=work)
    dead = f"; {queued} queued message{'' if queued == 1 else 's'} became dead letters" if queued else ""
    click.echo(f"retired agent {info.id!r} (#{info.updated_seq} agent.retired){dead}")


# -- run ------------------------------------------------------------------------------------


@cli.command(name="run")
@click.argument("app_ref", metavar="APP")
@click.pass_obj
def run_app(obj: _Context, app_ref: str) -> None:
    """Run the habitus.App in APP (a Python file or module, optionally ':attribute') until Ctrl-C."""
    settings = obj.settings()
    app = load_app(app_ref)
    asyncio.run(_serve(settings, app, app_ref))


async def _serve(settings: Settings, app: App, ref: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # from here on, Ctrl-C or a TERM asks for a clean stop, even while starting
        loop.add_signal_handler(sig, stop.set)
    try:
        hab = await Habitat.open(settings=settings)
        try:
            runtime = await hab.start(app)
            count = await hab.agents.count()
            click.echo(
                f"running app {app.name!r} from {ref} in habitat {hab.name!r} at {hab.path} "
                f"({_plural(count, 'agent')}; behaviours: {', '.join(app.behaviours) or 'none'}); Ctrl-C stops"
            )
            await stop.wait()
            delivered = runtime.delivered
        finally:
            await hab.close()
        click.echo(
            f"stopped app {app.name!r} after handling {_plural(delivered, 'message')}; "
            "the habitat is closed and the next run resumes from here"
        )
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def load_app(ref: str) -> App:
    """The :class:`App` that ``ref`` names: ``path/to/file.py`` or ``package.module``, optionally ``:attribute``.

    Without an attribute, the module's ``app`` is used, or else the only App it defines.

    Raises:
        InvalidRequestError: The file or module is missing, fails to import, or holds no single App.
    """
    target, attribute = ref, None
    if ":" in ref:
        target, attribute = ref.rsplit(":", 1)
        if not target or not all(part.isidentifier() for part in attribute.split(".")):
            raise InvalidRequestError(f"APP {ref!r} must be a file or module, optionally followed by ':attribute'")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(Path(target), ref)
    else:
        module = _import_module(target, ref)
    return _find_app(module, attribute, ref, target)


def _import_file(path: Path, ref: str) -> ModuleType:
    if not path.is_file():
        raise InvalidRequestError(f"APP {ref!r}: there is no Python file {str(path)!r}")
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else "__habitus_app__"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidRequestError(f"APP {ref!r}: {str(path)!r} cannot be imported as a Python module")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # so the app can import the modules beside it
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise InvalidRequestError(f"cannot load APP {ref!r}: {_describe(exc)}") from exc
    return module


def _import_module(name: str, ref: str) -> ModuleType:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # 'habitus run mymodule' finds mymodule.py in the working directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise InvalidRequestError(
                f"APP {ref!r}: no module {name!r} in the working directory or the installed packages; "
                "give a path to a .py file instead"
            ) from None
        raise InvalidRequestError(f"cannot load APP {ref!r}: {_describe(exc)}") from exc
    except Exception as exc:
        raise InvalidRequestError(f"cannot load APP {ref!r}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``, the line being the innermost one of the failing import."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError's message already says where
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return " ".join(text.split())


def _find_app(module: ModuleType, attribute: str | None, ref: str, target: str) -> App:
    if attribute is not None:
        found: Any = module
        for part in attribute.split("."):
            if not hasattr(found, part):
                raise InvalidRequestError(f"APP {ref!r}: {target!r} has no attribute {attribute!r}")
            found = getattr(found, part)
        if not isinstance(found, App):
            raise InvalidRequestError(f"APP {ref!r} is a {type(found).__name__}, not a habitus.App")
        return found
    default = getattr(module, "app", None)
    if isinstance(default, App):
        return default
    apps: dict[int, tuple[str, App]] = {}
    for name, value in vars(module).items():
        if isinstance(value, App):
            apps.setdefault(id(value), (name, value))
    if len(apps) == 1:
        return next(iter(apps.values()))[1]
    if not apps:
        raise InvalidRequestError(
            f"APP {ref!r} defines no habitus.App; create one (app = App('name')) or name it with {target}:ATTRIBUTE"
        )
    names = ", ".join(sorted(name for name, _ in apps.values()))
    raise InvalidRequestError(f"APP {ref!r} defines several apps ({names}); choose one with {target}:NAME")
