"""Memory commands: ``remember``, ``recall``, ``facts``, ``assert``, ``forget``, ``memories``, ``reindex``.

Each acts as the agent named (its memory, its scopes) and is recorded in the ledger.
"""

from __future__ import annotations

import json
from typing import Any

import click

from habitus._cli._agents import _with_habitat, json_argument
from habitus._cli._main import _Context, _parse_time, cli
from habitus._habitat import Habitat
from habitus.memory._models import Fact, MemoryRecord, Recall

__all__ = ["assert_fact", "facts", "forget", "memories", "recall", "reindex", "remember"]


def _record_line(r: MemoryRecord) -> str:
    when = r.at.strftime("%Y-%m-%d %H:%M") if r.at else "-"
    text = r.text if len(r.text) <= 100 else r.text[:97] + "..."
    return f"{r.id}  {when}  {r.kind:<11} {r.scope:<16} {r.trust:<9} {text}"


def _record_json(r: MemoryRecord) -> dict[str, Any]:
    out: dict[str, Any] = r.model_dump(mode="json")
    return out


@cli.command()
@click.argument("agent")
@click.argument("text")
@click.option("--at", "at", metavar="TIME", help="World time of what it describes (ISO 8601).")
@click.option("--kind", default="note", show_default=True, help="note, observation, message, summary...")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--scope", help="private (default), public or group:NAME.")
@click.option("--source", "sources", multiple=True, metavar="EVENT", help="An event it came from (repeatable).")
@click.option("--importance", type=float, default=0.5, show_default=True, help="0 to 1.")
@click.option("--ttl", type=float, help="Forget it on its own after this many seconds.")
@click.option("--untrusted", is_flag=True, help="Label it untrusted (content from outside).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored memory as JSON.")
@click.pass_obj
def remember(
    obj: _Context,
    agent: str,
    text: str,
    at: str | None,
    kind: str,
    tags: tuple[str, ...],
    scope: str | None,
    sources: tuple[str, ...],
    importance: float,
    ttl: float | None,
    untrusted: bool,
    as_json: bool,
) -> None:
    """Make AGENT remember TEXT."""

    async def work(hab: Habitat) -> MemoryRecord:
        return await hab.memory(agent).remember(
            text,
            at=_parse_time(at, "--at"),
            kind=kind,
            tags=tags,
            scope=scope,
            source=sources,
            importance=importance,
            ttl=ttl,
            trust="untrusted" if untrusted else None,
        )

    record = _with_habitat(obj, read_only=False, work=work)
    untrusted_note = " (untrusted)" if record.trust == "untrusted" else ""
    click.echo(json.dumps(_record_json(record)) if as_json else f"remembered #{record.seq} {record.id}{untrusted_note}")


@cli.command()
@click.argument("agent")
@click.argument("query")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many memories.")
@click.option("--since", metavar="TIME", help="Only memories of world time at or after TIME.")
@click.option("--until", metavar="TIME", help="Only memories of world time before TIME.")
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only memories with this tag (repeatable).")
@click.option("--scope", "scopes", multiple=True, help="Search only this scope (repeatable).")
@click.option("--now", metavar="TIME", help="'Now' for expressions like 'last week' (default: the clock).")
@click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True, help="Signals."
)
@click.option("--trust", type=click.Choice(["trusted", "untrusted"]), help="Only trusted or only untrusted memories.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON (scores, why, provenance).")
@click.pass_obj
def recall(
    obj: _Context,
    agent: str,
    query: str,
    k: int,
    since: str | None,
    until: str | None,
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    scopes: tuple[str, ...],
    now: str | None,
    mode: str,
    trust: str | None,
    as_json: bool,
) -> None:
    """Recall what AGENT remembers about QUERY, best first (recorded as memory.recalled)."""

    async def work(hab: Habitat) -> Recall:
        return await hab.memory(agent).recall(
            query,
            k=k,
            since=_parse_time(since, "--since"),
            until=_parse_time(until, "--until"),
            kinds=kinds or None,
            tags=tags or None,
            scope=list(scopes) or None,
            now=_parse_time(now, "--now"),
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
            trust=trust,  # type: ignore[arg-type]  # click.Choice checked it
        )

    result = _with_habitat(obj, read_only=False, work=work)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json")))
        return
    if result.time_filter:
        click.echo(f"time: {result.time_filter!r}")
    if not result.hits:
        click.echo("nothing recalled")
    for i, hit in enumerate(result.hits, 1):
        signals = ", ".join(sorted(hit.why))
        click.echo(f"{i:>2}. {hit.score:.4f}  {_record_line(hit.record)}  [{signals}]")
    if result.event:
        click.echo(f"recorded as memory.recalled {result.event}")


def _fact_line(f: Fact) -> str:
    valid = f"{f.valid_from.date() if f.valid_from else '…'}..{f.valid_to.date() if f.valid_to else '…'}"
    state = "current" if f.current else f"superseded {f.superseded_at:%Y-%m-%d %H:%M:%S}"
    if f.trust == "untrusted":
        state += "; untrusted"
    return f"{f.subject} {f.predicate} {json.dumps(f.value)}  valid {valid}  ({state}; {f.id})"


@cli.command(name="assert")
@click.argument("agent")
@click.argument("subject")
@click.argument("predicate")
@click.argument("value")
@click.option("--json", "value_json", is_flag=True, help="Parse VALUE as JSON.")
@click.option("--valid-from", metavar="TIME", help="World time from which it holds.")
@click.option("--valid-to", metavar="TIME", help="World time until which it holds.")
@click.option("--scope", help="private (default), public or group:NAME.")
@click.option("--source", "sources", multiple=True, metavar="EVENT", help="An event it came from (repeatable).")
@click.pass_obj
def assert_fact(
    obj: _Context,
    agent: str,
    subject: str,
    predicate: str,
    value: str,
    value_json: bool,
    valid_from: str | None,
    valid_to: str | None,
    scope: str | None,
    sources: tuple[str, ...],
) -> None:
    """Make AGENT believe SUBJECT PREDICATE VALUE; a contradicting current fact is superseded."""
    parsed: Any = json_argument(value, "VALUE", "for text") if value_json else value

    async def work(hab: Habitat) -> Fact:
        return await hab.memory(agent).assert_fact(
            subject,
            predicate,
            parsed,
            valid_from=_parse_time(valid_from, "--valid-from"),
            valid_to=_parse_time(valid_to, "--valid-to"),
            scope=scope,
            source=sources,
        )

    click.echo(_fact_line(_with_habitat(obj, read_only=False, work=work)))


@cli.command()
@click.argument("agent")
@click.argument("subject", required=False)
@click.option("--predicate", help="Only this predicate.")
@click.option("--as-of", metavar="TIME", help="What was believed at this (system) time.")
@click.option("--valid-at", metavar="TIME", help="Only facts holding at this (world) time.")
@click.option("--history", is_flag=True, help="Every version, superseded ones included.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def facts(
    obj: _Context,
    agent: str,
    subject: str | None,
    predicate: str | None,
    as_of: str | None,
    valid_at: str | None,
    history: bool,
    as_json: bool,
) -> None:
    """What AGENT believes (about SUBJECT), now or as of a time."""

    async def work(hab: Habitat) -> list[Fact]:
        return await hab.memory(agent).facts(
            subject,
            predicate=predicate,
            as_of=_parse_time(as_of, "--as-of"),
            valid_at=_parse_time(valid_at, "--valid-at"),
            history=history,
        )

    found = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        click.echo(json.dumps([f.model_dump(mode="json") for f in found]))
    elif not found:
        click.echo("no facts")
    for f in [] if as_json else found:
        click.echo(_fact_line(f))


@cli.command()
@click.argument("agent")
@click.argument("memory")
@click.option("--reason", required=True, help="Why (recorded in the ledger).")
@click.pass_obj
def forget(obj: _Context, agent: str, memory: str, reason: str) -> None:
    """Make AGENT forget MEMORY (a memory or fact id): its text is erased everywhere."""

    async def work(hab: Habitat) -> str:
        done = await hab.memory(agent).forget(memory, reason=reason)
        scrub = "files scrubbed" if done.scrubbed else "files will be scrubbed at the next checkpoint"
        return f"forgot {done.memory} (memory.forgotten {done.event}; {scrub})"

    click.echo(_with_habitat(obj, read_only=False, work=work))


@cli.command()
@click.argument("agent")
@click.option("--scope", help="private (default), public or group:NAME.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--trust", type=click.Choice(["trusted", "untrusted"]), help="Only trusted or only untrusted memories.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def memories(obj: _Context, agent: str, scope: str | None, limit: int, trust: str | None, as_json: bool) -> None:
    """List AGENT's memories in the order they were stored."""

    async def work(hab: Habitat) -> list[MemoryRecord]:
        return await hab.memory(agent).memories(scope=scope, limit=limit, trust=trust)  # type: ignore[arg-type]

    found = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in found]))
        return
    if not found:
        click.echo("no memories")
    for r in found:
        click.echo(_record_line(r))


@cli.command()
@click.pass_obj
def reindex(obj: _Context) -> None:
    """Embed again every memory whose vector came from another model (after changing 'embedder')."""

    async def work(hab: Habitat) -> str:
        count = await hab.memories.reindex()
        noun = "memory" if count == 1 else "memories"
        return f"re-embedded {count} {noun} with {hab.memories.embedder.name}"

    click.echo(_with_habitat(obj, read_only=False, work=work))
