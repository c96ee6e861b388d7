"""Queries through the two tiers of postings agree with a brute-force filter of every event."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import pytest

from habitus import Draft, Event, Habitat, Settings
from habitus.storage import _sqlite

KINDS = ["note.recorded", "observation.recorded", "message.sent"]


async def _fill(hab: Habitat, rng: random.Random, total: int) -> list[Event]:
    events: list[Event] = []
    while len(events) < total:
        size = rng.choice([1, 1, 3, 17, 64, 150])
        drafts = []
        for _ in range(size):
            kind = rng.choice(KINDS)
            drafts.append(
                Draft(
                    kind=kind,
                    actor=f"agent:a{rng.randrange(6)}",
                    content="x",
                    meta={"to": "agent:z"} if kind == "message.sent" else {},
                    thread=rng.choice([None, None, "t1", "t2", f"t{rng.randrange(40)}"]),
                )
            )
        events.extend(await hab.ledger.append_many(drafts))
    return events


async def _all_pages(hab: Habitat, order: Literal["asc", "desc"], limit: int, **filters: str | None) -> list[int]:
    seqs: list[int] = []
    cursor = None
    while True:
        page = await hab.ledger.query(order=order, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        seqs += [e.seq for e in page.events]
        if page.next_cursor is None:
            return seqs
        cursor = page.next_cursor


@pytest.mark.parametrize("seed", [1, 2])
async def test_queries_match_brute_force_across_merges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(_sqlite, "MERGE_EVENTS", 100)  # merge often, so queries cross both tiers
    rng = random.Random(seed)
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    hab = await Habitat.init(settings.path, settings=settings)
    events = await _fill(hab, rng, 700)
    await hab.close()  # reopening must find where the recent tier starts
    hab = await Habitat.open(settings.path, settings=settings)
    events += await _fill(hab, rng, 400)
    try:
        every = [await hab.ledger.get_seq(1), *events]
        for _ in range(12):
            filters: dict[str, str | None] = {
                "actor": rng.choice([None, f"agent:a{rng.randrange(6)}"]),
                "kind": rng.choice([None, rng.choice(KINDS), "message.*"]),
                "thread": rng.choice([None, "t1", f"t{rng.randrange(40)}"]),
            }
            expected = [
                e.seq
                for e in every
                if (filters["actor"] is None or e.actor == filters["actor"])
                and (filters["kind"] in (None, "message.*") or e.kind == filters["kind"])
                and (filters["kind"] != "message.*" or e.kind.startswith("message."))
                and (filters["thread"] is None or e.thread == filters["thread"])
            ]
            limit = rng.choice([1, 7, 50, 1000])
            assert await _all_pages(hab, "asc", limit, **filters) == expected, filters
            assert await _all_pages(hab, "desc", limit, **filters) == expected[::-1], filters
        merged = hab._store._all_rows("SELECT count(*) FROM postings")[0][0]
        assert merged > 0, "the test should have exercised merged postings"
    finally:
        await hab.close()


async def test_effects_and_why_cross_merged_and_recent_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "MERGE_EVENTS", 50)
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        root = await hab.ledger.append("note.recorded", actor="human:a", content="root")
        chain = [root]
        fan: list[Event] = []
        for i in range(120):
            fan.append(await hab.ledger.append("note.recorded", actor="agent:b", content=str(i), causes=[root]))
            if i % 3 == 0:
                chain.append(
                    await hab.ledger.append("note.recorded", actor="agent:c", content="link", causes=[chain[-1]])
                )
        effects = await hab.ledger.effects(root, depth=1, limit=10_000)
        assert {n.id for n in effects.nodes} == {root.id, chain[1].id, *(e.id for e in fan)}
        why = await hab.ledger.why(chain[-1], depth=100)
        assert [n.id for n in why.nodes] == [e.id for e in chain]
        deep = await hab.ledger.effects(root, depth=100, limit=10_000)
        assert {n.id for n in deep.nodes} >= {e.id for e in chain}
        merged = hab._store._all_rows("SELECT count(*) FROM edges")[0][0]
        assert merged > 0
