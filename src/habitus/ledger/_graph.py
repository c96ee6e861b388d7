"""Walking the causal graph: breadth-first over causes (``why``) or effects."""

from __future__ import annotations

import uuid
from typing import Literal

from habitus.ledger._models import Edge, Subgraph
from habitus.ledger._rows import event_from_row
from habitus.storage._abstract import LedgerStore, Row

__all__ = ["walk"]


def _cause_ids(row: Row) -> list[bytes]:
    causes = row[8]
    return [causes[i : i + 16] for i in range(0, len(causes), 16)] if causes else []


def walk(
    store: LedgerStore, root: bytes, direction: Literal["causes", "effects"], depth: int, limit: int
) -> Subgraph | None:
    """Breadth-first walk from ``root``; ``None`` if the root does not exist.

    Each level is one read, so a walk costs ``depth`` queries however wide the
    ledger is. The walk stops at ``depth`` hops or ``limit`` nodes, and says so
    with ``truncated``.
    """
    found = store.rows_by_id([root])
    if not found:
        return None
    nodes: dict[int, Row] = {found[0][0]: found[0]}
    level_of: dict[int, int] = {found[0][0]: 0}
    edges: set[tuple[int, int]] = set()
    frontier = [found[0]]
    truncated = False
    for hop in range(1, depth + 2):
        if not frontier:
            break
        pairs: list[tuple[int, int]] = []  # (cause seq, effect seq)
        if direction == "causes":
            wanted = {c for row in frontier for c in _cause_ids(row)}
            by_id = {r[1]: r for r in store.rows_by_id(sorted(wanted))} if wanted else {}
            for row in frontier:
                for cause in _cause_ids(row):
                    hit = by_id.get(cause)
                    if hit is not None:
                        pairs.append((hit[0], row[0]))
            candidates = {r[0]: r for r in by_id.values()}
            neighbour = [p[0] for p in pairs]
        else:
            pairs = store.effects_of([row[0] for row in frontier])
            neighbour = [p[1] for p in pairs]
            new_seqs = sorted({s for s in neighbour if s not in nodes})
            candidates = {r[0]: r for r in store.rows_by_seq(new_seqs)} if new_seqs else {}
        if hop > depth:
            truncated = any(s not in nodes for s in neighbour)
            break
        next_frontier: list[Row] = []
        for seq in sorted(set(neighbour)):
            if seq in nodes:
                continue
            if len(nodes) >= limit:
                truncated = True
                break
            nodes[seq] = candidates[seq]
            level_of[seq] = hop
            next_frontier.append(candidates[seq])
        for cause_seq, effect_seq in pairs:
            if cause_seq in nodes and effect_seq in nodes:
                edges.add((cause_seq, effect_seq))
        frontier = next_frontier
        if truncated:
            break
    ids = {seq: uuid.UUID(bytes=row[1]) for seq, row in nodes.items()}
    return Subgraph(
        root=uuid.UUID(bytes=root),
        direction=direction,
        nodes=[event_from_row(nodes[s]) for s in sorted(nodes)],
        edges=[Edge(cause=ids[c], effect=ids[e]) for c, e in sorted(edges)],
        depth={str(ids[s]): d for s, d in level_of.items()},
        truncated=truncated,
    )
