"""The demo society of ``habitus up``, run in-process with fast sensors and the scripted model.

What it must show (issue 7): cross-agent causal trails, recalls that informed decisions, a
superseded fact and a policy denial, all from the agents' own work.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from habitus import Habitat
from habitus import _society as society
from habitus.ledger import Event
from habitus.memory import HashEmbedder


async def _wait_for(hab: Habitat, kind: str, *, count: int = 1, timeout: float = 60.0) -> list[Event]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = list((await hab.ledger.query(kind=kind, limit=1000)).events)
        if len(events) >= count or loop.time() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_the_society_leaves_trails_recalls_a_superseded_fact_and_a_denial(tmp_path: Path) -> None:
    hab = await Habitat.init(tmp_path / "h")
    hab.use_embedder(HashEmbedder(dim=64))
    try:
        assert await society.setup_society(hab) is True
        await hab.start(society.build_society(tick=0.05))
        await society.start_sensors(hab)
        notes = await _wait_for(hab, "note.recorded")
        assert notes, "the auditor recorded no finding"

        # The decision's trail crosses agents back to a sensor's reading.
        (decision,) = (await hab.ledger.query(kind="decision.made", limit=1)).events
        trail = await hab.ledger.why(decision.id, depth=80, limit=5000)
        actors = {n.actor for n in trail.nodes}
        assert {"agent:coordinator", "agent:analyst", "agent:irrigator-1", "agent:sensor-north"} <= actors
        kinds = {n.kind for n in trail.nodes}
        assert "message.published" in kinds  # a reading
        # ...through model calls informed by remembered readings.
        calls = [n for n in trail.nodes if n.kind == "model.called"]
        assert {c.actor for c in calls} >= {"agent:analyst", "agent:coordinator"}
        analyst_call = next(c for c in calls if c.actor == "agent:analyst")
        cited = {n.id for n in trail.nodes if n.kind == "memory.remembered" and n.actor == "agent:analyst"}
        causes_of_call = set(analyst_call.causes)
        assert cited & causes_of_call, "the analyst's model call cites none of the readings it recalled"
        recalled = (await hab.ledger.query(kind="memory.recalled", actor="agent:analyst", limit=10)).events
        returned = recalled[0].meta["returned"] if recalled else []
        assert isinstance(returned, list) and set(map(str, causes_of_call)) & {str(r) for r in returned}

        # The brief the coordinator decided on quotes what the analyst recalled.
        call = await hab.ledger.get(analyst_call.id)
        assert isinstance(call.content, dict) and "readings I recall" in str(call.content["completion"])

        # The audit note is caused by the decision.
        audit = await hab.ledger.get(notes[0].id)
        assert decision.id in audit.causes or any(
            n.id == decision.id for n in (await hab.ledger.why(audit.id, depth=2)).nodes
        )

        # A superseded belief: the north bed went from moist to dry.
        facts = await _wait_for(hab, "fact.asserted", count=3)
        superseding = [f for f in facts if f.meta.get("supersedes")]
        assert superseding and isinstance(superseding[0].content, dict)
        assert superseding[0].content["value"] == "dry"

        # A policy denial: the irrigator's model asked for a tool no irrigator may call.
        (denied, *_) = await _wait_for(hab, "policy.denied")
        assert denied.meta["principal"] == "agent:irrigator-1"
        assert denied.meta["resource"] == "tool:override_flow_limit"
        tool_results = await _wait_for(hab, "tool.returned")
        assert tool_results and tool_results[0].meta["tool"] == "open_valve"

        report = await hab.ledger.verify()
        assert report.ok
    finally:
        await hab.close()


async def test_the_society_carries_on_after_a_restart_without_granting_twice(tmp_path: Path) -> None:
    path = tmp_path / "h"
    hab = await Habitat.init(path)
    hab.use_embedder(HashEmbedder(dim=64))
    try:
        assert await society.setup_society(hab)
        await hab.start(society.build_society(tick=0.05))
        await society.start_sensors(hab)
        await _wait_for(hab, "message.published", count=4)
    finally:
        await hab.close()
    assert society.is_society(path)
    grants = None
    hab = await Habitat.open(path)
    hab.use_embedder(HashEmbedder(dim=64))
    try:
        before = len((await hab.ledger.query(kind="message.published", limit=10_000)).events)
        grants = len((await hab.ledger.query(kind="capability.granted", limit=100)).events)
        assert await society.setup_society(hab) is False
        await hab.start(society.build_society(tick=0.05))  # no start message: the durable timers go on
        after = await _wait_for(hab, "message.published", count=before + 4)
        assert len(after) >= before + 4
        assert len((await hab.ledger.query(kind="capability.granted", limit=100)).events) == grants
    finally:
        await hab.close()


def test_a_habitat_of_ones_own_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "mine"
    assert society.is_society(path)  # nothing there yet: up may make it the society's
    path.mkdir()
    (path / "habitat.json").write_text("{}", encoding="utf-8")
    assert not society.is_society(path)
