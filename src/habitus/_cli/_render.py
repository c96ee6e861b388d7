"""Turning models into text for a terminal: tables, causal trees, reports."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from habitus.agents._models import AgentInfo
from habitus.ledger._models import Checkpoint, Event, Subgraph, VerifyReport

__all__ = [
    "DeadLetter",
    "agent_json",
    "agent_text",
    "agents_table",
    "event_json",
    "event_line",
    "summary",
    "table",
    "tree",
    "verify_text",
]


def _short_time(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def summary(event: Event, width: int = 60) -> str:
    """A one-line description of an event's content and meta."""
    if event.erased:
        text = "[content erased]"
    elif event.content is None:
        text = " ".join(f"{k}={v}" for k, v in event.meta.items())
    elif isinstance(event.content, str):
        text = event.content
    elif isinstance(event.content, bytes):
        text = f"<{len(event.content)} bytes>"
    else:
        text = json.dumps(event.content, ensure_ascii=False, separators=(",", ":"))
    if event.kind == "message.sent" and "to" in event.meta:
        text = f"→ {event.meta['to']}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def event_line(event: Event) -> str:
    """``#seq kind actor "summary"`` for trees and lists."""
    return f"#{event.seq} {event.kind}  {event.actor}  {summary(event)}"


def table(events: Sequence[Event]) -> str:
    """A readable table of events."""
    headers = ("SEQ", "TIME (UTC)", "ACTOR", "KIND", "THREAD", "SUMMARY")
    rows = [(str(e.seq), _short_time(e.ts), e.actor, e.kind, e.thread or "", summary(e, 50)) for e in events]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def tree(graph: Subgraph) -> str:
    """The subgraph drawn as a tree from its root; shared nodes are drawn once, then referenced."""
    by_id = {n.id: n for n in graph.nodes}
    children: dict[uuid.UUID, list[uuid.UUID]] = {n.id: [] for n in graph.nodes}
    for edge in graph.edges:
        parent, child = (edge.effect, edge.cause) if graph.direction == "causes" else (edge.cause, edge.effect)
        children[parent].append(child)
    for ids in children.values():
        ids.sort(key=lambda i: by_id[i].seq, reverse=graph.direction == "causes")
    lines: list[str] = []
    drawn: set[uuid.UUID] = set()

    def draw(node: uuid.UUID, prefix: str, connector: str, child_prefix: str) -> None:
        event = by_id[node]
        if node in drawn:
            lines.append(f"{prefix}{connector}#{event.seq} (shown above)")
            return
        drawn.add(node)
        lines.append(f"{prefix}{connector}{event_line(event)}")
        kids = children[node]
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            draw(kid, prefix + child_prefix, "└── " if last else "├── ", "    " if last else "│   ")

    draw(graph.root, "", "", "")
    if graph.truncated:
        lines.append("… (stopped at the depth or node limit; raise --depth or --limit to see more)")
    return "\n".join(lines)


def verify_text(report: VerifyReport) -> str:
    """A verification report in words."""
    if report.ok:
        return (
            f"OK: {report.events} events and {report.checkpoints} signed checkpoints verified "
            f"in {report.seconds:.2f}s; root {report.root[:16]}…"
        )
    lines = [f"FAILED: first bad seq is {report.first_bad_seq}"]
    lines += [f"  seq {p.seq} [{p.where}]: {p.reason}" for p in report.problems]
    return "\n".join(lines)


def checkpoint_text(checkpoint: Checkpoint) -> str:
    """A checkpoint in words."""
    return (
        f"checkpoint: {checkpoint.tree_size} events, root {checkpoint.root}\n"
        f"  signed {checkpoint.ts.isoformat()} by key {checkpoint.public_key}"
    )


def event_json(event: Event) -> str:
    """One event as a JSON line (bytes content as base64 by pydantic's rules)."""
    return event.model_dump_json(exclude_none=False)


# -- agents -------------------------------------------------------------------------------


class DeadLetter(NamedTuple):
    """A message an agent gave up on: the message event, the deliveries tried, and the last error."""

    message: Event
    attempts: int
    error: str


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def agents_table(agents: Sequence[AgentInfo], depths: Mapping[str, int]) -> str:
    """A table of agents with their status and waiting messages."""
    headers = ("ID", "STATUS", "BEHAVIOUR", "OWNER", "MAILBOX", "LABELS")
    rows = [(a.id, a.status, a.behaviour, a.owner, str(depths.get(a.id, 0)), _labels(a.labels) or "-") for a in agents]
    return _grid(headers, rows)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def agent_text(
    agent: AgentInfo,
    *,
    state: Mapping[str, Any],
    depth: int,
    dead: Sequence[DeadLetter],
    dead_total: int,
    events: Sequence[Event],
) -> str:
    """One agent in full: identity, status, state, mailbox, dead letters and its recent events."""
    fields = [
        ("agent", f"{agent.id} ({agent.principal})"),
        ("name", agent.name),
        ("status", agent.status),
        ("owner", agent.owner),
        ("behaviour", agent.behaviour),
        ("labels", _labels(agent.labels) or "none"),
        ("topics", ", ".join(agent.topics) or "none"),
        ("spawned", f"#{agent.spawned_seq}, last changed #{agent.updated_seq}"),
    ]
    lines = [f"{key:>12}: {value}" for key, value in fields]
    if not state:
        lines.append(f"{'state':>12}: empty")
    for i, (key, value) in enumerate(sorted(state.items())):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        lines.append(f"{'state' if i == 0 else '':>12}{':' if i == 0 else ' '} {key} = {text}")
    lines.append(f"{'mailbox':>12}: {_plural(depth, 'message')} waiting")
    lines.append(f"{'dead letters':>12}: {dead_total or 'none'}")
    if dead_total > len(dead):
        lines.append(f"{'':>12}  (the latest {len(dead)} shown)")
    for letter in dead:
        msg = letter.message
        kind = f", type {msg.meta['type']}" if isinstance(msg.meta.get("type"), str) else ""
        tried = _plural(letter.attempts, "attempt") if letter.attempts else "never delivered"
        lines.append(f"  #{msg.seq} from {msg.actor}{kind}, {tried}: {letter.error}")
        lines.append(f"      {summary(msg)}")
    if events:
        lines.append(f"\nrecent events by {agent.principal}:")
        lines.append(table(events))
    else:
        lines.append(f"\nno events by {agent.principal} yet")
    return "\n".join(lines)


def agent_json(
    agent: AgentInfo,
    *,
    state: Mapping[str, Any],
    depth: int,
    dead: Sequence[DeadLetter],
    dead_total: int,
    events: Sequence[Event],
) -> str:
    """One agent in full as a JSON document."""
    document = {
        "agent": agent.model_dump(mode="json"),
        "state": dict(state),
        "mailbox": depth,
        "dead_letter_count": dead_total,
        "dead_letters": [
            {
                "seq": d.message.seq,
                "id": str(d.message.id),
                "sender": d.message.actor,
                "type": d.message.meta.get("type"),
                "attempts": d.attempts,
                "error": d.error,
            }
            for d in dead
        ],
        "events": [e.model_dump(mode="json") for e in events],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
