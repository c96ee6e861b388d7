"""Trust labels on memories: content from untrusted sources stays untrusted, and recall can filter on it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus._cli import cli
from habitus.agents import RuntimeOptions
from habitus.errors import InvalidRequestError
from habitus.memory import HashEmbedder, MemoryRecord

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)


def build_app() -> App:
    app = App("trust-test")

    @app.behaviour
    class Scout(Agent):
        remember_messages = True  # every message it gets becomes a memory citing the message

        @handles("report")
        async def report(self, msg: Message) -> None:
            pass

    @app.behaviour
    class Reader(Agent):
        @handles("page")
        async def page(self, msg: Message) -> None:
            # no sources: only the message being handled can make this untrusted
            await self.ctx.memory.remember(f"I read that {msg.body}", kind="note")

    return app


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=128))
    try:
        yield h
    finally:
        await h.close()


async def _memories_of(hab: Habitat, agent: str, count: int) -> list[MemoryRecord]:
    """Wait until ``agent`` holds ``count`` memories; return them."""
    deadline = asyncio.get_running_loop().time() + 10
    while len(found := await hab.memory(agent).memories()) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{agent} holds {len(found)} memories, not {count}")
        await asyncio.sleep(0.02)
    return found


async def test_a_sensor_message_is_remembered_untrusted_and_recall_filters_on_it(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    await hab.control.grant("source:s1", "message:send", "agent:scout")
    await hab.start(build_app(), options=FAST)
    await hab.messages.send("scout", "the north bridge is open", sender="source:s1", type="report")
    await hab.messages.send("scout", "the north bridge is closed", sender="human:ada", type="report")
    sensor, human = await _memories_of(hab, "scout", 2)
    assert (sensor.text, sensor.trust) == ("the north bridge is open", "untrusted")
    assert (human.text, human.trust) == ("the north bridge is closed", "trusted")

    mem = hab.memory("scout")
    trusted = await mem.recall("is the north bridge open?", trust="trusted")
    assert [h.record.text for h in trusted] == ["the north bridge is closed"]
    untrusted = await mem.recall("is the north bridge open?", trust="untrusted")
    assert [(h.record.text, h.record.trust) for h in untrusted] == [("the north bridge is open", "untrusted")]
    both = await mem.recall("is the north bridge open?")
    assert {h.record.trust for h in both} == {"trusted", "untrusted"}
    assert [r.text for r in await mem.memories(trust="untrusted")] == ["the north bridge is open"]
    event = await hab.ledger.get(sensor.id)
    assert event.meta["trust"] == "untrusted"
    assert "trust" not in (await hab.ledger.get(human.id)).meta


async def test_a_source_that_is_untrusted_keeps_the_label_whatever_the_caller_says(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    await hab.control.grant("source:s1", "message:send", "agent:scout")
    reading = await hab.messages.send("scout", "river level 4.2 m", sender="source:s1")
    note = await hab.messages.send("scout", "check the river", sender="human:ada")
    mem = hab.memory("scout")

    claimed = await mem.remember("The river is at 4.2 m", source=[reading.id], trust="trusted")
    assert claimed.trust == "untrusted"
    assert (await mem.get(claimed.id)).trust == "untrusted"
    # derived from a derived memory: the label follows the chain
    derived = await mem.remember("The river is high", source=[claimed.id])
    assert derived.trust == "untrusted"
    # one batch, labelled item by item
    mixed = await mem.remember_many(
        [
            {"text": "Ada asked about the river", "source": [note.id]},
            {"text": "Both agree the river is high", "source": [note.id, reading.id]},
            {"text": "A rumour about the ford", "trust": "untrusted"},
        ]
    )
    assert [r.trust for r in mixed] == ["trusted", "untrusted", "untrusted"]
    assert (await mem.remember("Ada asked again", source=[note.id])).trust == "trusted"
    with pytest.raises(InvalidRequestError, match="trust must be"):
        await mem.remember("x", trust="maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="trust must be"):
        await mem.recall("river", trust="sure")  # type: ignore[arg-type]


async def test_an_event_whose_actor_is_untrusted_taints_what_cites_it(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    seen = await hab.acting_as("source:cam-3").append("observation.recorded", content="a truck at the gate")
    record = await hab.memory("scout").remember("A truck came to the gate", source=[seen.id])
    assert record.trust == "untrusted"
    # a principal labelled untrusted writing itself
    await hab.control.grant("source:cam-3", "memory:write", "scope:agent:scout")
    direct = await hab.acting_as("source:cam-3").memory("scout").remember("gate opened")
    assert direct.trust == "untrusted"


async def test_what_a_handler_remembers_while_handling_untrusted_content_is_untrusted(hab: Habitat) -> None:
    await hab.agents.spawn("reader", behaviour="Reader", owner="human:ada")
    await hab.control.grant("source:web", "message:send", "agent:reader")
    await hab.start(build_app(), options=FAST)
    await hab.messages.send("reader", "the ford is safe", sender="source:web", type="page")
    await hab.messages.send("reader", "the ferry runs at noon", sender="human:ada", type="page")
    tainted, clean = await _memories_of(hab, "reader", 2)
    assert (tainted.text, tainted.trust) == ("I read that the ford is safe", "untrusted")
    assert tainted.sources == []  # no source said so: the message being handled did
    assert (clean.text, clean.trust) == ("I read that the ferry runs at noon", "trusted")


async def test_a_human_writes_trusted_memory(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    ada = hab.acting_as("human:ada")
    record = await ada.memory("scout").remember("The bridge closes at dusk")
    assert record.trust == "trusted"
    assert (await hab.memory("scout").remember("The bridge opens at dawn")).trust == "trusted"


async def test_labelling_a_sensor_family_trusted_makes_its_content_trusted(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    await hab.control.label("source:lab-*", "trusted")
    await hab.control.grant("source:*", "message:send", "agent:scout")
    await hab.start(build_app(), options=FAST)
    await hab.messages.send("scout", "sample 12 is clean", sender="source:lab-7", type="report")
    await hab.messages.send("scout", "sample 12 is poisoned", sender="source:forum", type="report")
    lab, forum = await _memories_of(hab, "scout", 2)
    assert (lab.text, lab.trust) == ("sample 12 is clean", "trusted")
    assert (forum.text, forum.trust) == ("sample 12 is poisoned", "untrusted")


async def test_the_label_survives_reopening_the_habitat(settings: Settings) -> None:
    hab = await Habitat.init(settings.path, settings=settings)
    hab.use_embedder(HashEmbedder(dim=128))
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    mem = hab.memory("scout")
    rumour = await mem.remember("A rumour about the ford", trust="untrusted")
    await mem.remember("The ferry runs at noon")
    await hab.close()

    for read_only in (True, False):
        hab = await Habitat.open(settings.path, settings=settings, read_only=read_only)
        hab.use_embedder(HashEmbedder(dim=128))
        try:
            mem = hab.memory("scout")
            assert (await mem.get(rumour.id)).trust == "untrusted"
            assert [r.text for r in await mem.memories(trust="trusted")] == ["The ferry runs at noon"]
            if not read_only:
                hits = await mem.recall("ford", trust="untrusted")
                assert [h.record.id for h in hits] == [rumour.id]
        finally:
            await hab.close()


async def test_a_habitat_made_before_trust_labels_opens_and_gains_them(settings: Settings) -> None:
    hab = await Habitat.init(settings.path, settings=settings)
    hab.use_embedder(HashEmbedder(dim=128))
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    old = await hab.memory("scout").remember("Written by an older version")
    await hab.memory("scout").assert_fact("bridge", "state", "open")
    await hab.close()
    db = next(settings.path.glob("*.db"))
    with sqlite3.connect(db) as conn:  # the file as an older version left it: no trust columns
        conn.execute("ALTER TABLE memories DROP COLUMN trust")
        conn.execute("ALTER TABLE facts DROP COLUMN trust")

    reader = await Habitat.open(settings.path, settings=settings, read_only=True)
    try:
        assert [(r.id, r.trust) for r in await reader.memory("scout").memories()] == [(old.id, "trusted")]
        assert [r.trust for r in await reader.memory("scout").memories(trust="untrusted")] == []
        assert [f.trust for f in await reader.memory("scout").facts("bridge")] == ["trusted"]
    finally:
        await reader.close()
    hab = await Habitat.open(settings.path, settings=settings)
    hab.use_embedder(HashEmbedder(dim=128))
    try:
        new = await hab.memory("scout").remember("Written by this one", trust="untrusted")
        found = await hab.memory("scout").memories()
        assert [(r.id, r.trust) for r in found] == [(old.id, "trusted"), (new.id, "untrusted")]
    finally:
        await hab.close()


async def test_consolidating_untrusted_episodes_makes_an_untrusted_summary(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    await hab.control.grant("source:s1", "message:send", "agent:scout")
    mem = hab.memory("scout")
    reading = await hab.messages.send("scout", "river level rising", sender="source:s1")
    await mem.remember("The river rose at dawn", thread="river", source=[reading.id])
    await mem.remember("The river rose at noon", thread="river")
    await mem.remember("The river rose at dusk", thread="river")
    for text in ("Ada fed the horses", "Ada mended the fence", "Ada slept early"):
        await mem.remember(text, thread="farm")
    notes = {n.thread: n for n in await mem.consolidate()}
    assert notes["river"].trust == "untrusted"
    assert notes["farm"].trust == "trusted"
    summaries = await mem.recall("what happened to the river?", kinds=["summary"], trust="trusted")
    assert [h.record.thread for h in summaries] == ["farm"]


async def test_facts_asserted_from_untrusted_content_are_untrusted(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="Scout", owner="human:ada")
    await hab.control.grant("source:s1", "message:send", "agent:scout")
    mem = hab.memory("scout")
    reading = await hab.messages.send("scout", "bridge: open", sender="source:s1")
    claimed = await mem.assert_fact("bridge", "state", "open", source=[reading.id], trust="trusted")
    assert claimed.trust == "untrusted"
    assert (await hab.ledger.get(claimed.id)).meta["trust"] == "untrusted"
    ferry = await mem.assert_fact("ferry", "runs", True)
    assert ferry.trust == "trusted"
    assert [f.subject for f in await mem.facts(trust="untrusted")] == ["bridge"]
    assert [f.subject for f in await mem.facts(trust="trusted")] == ["ferry"]
    # a memory citing the untrusted fact is untrusted too
    assert (await mem.remember("The bridge is open", source=[claimed.id])).trust == "untrusted"


def test_recall_and_memories_commands_show_and_filter_trust(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HABITUS_PATH": str(tmp_path / "h"), "HABITUS_EMBEDDER": "hash"}

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    run("spawn", "ada", "--behaviour", "noop")
    assert run("remember", "ada", "The ford is safe", "--untrusted").rstrip().endswith("(untrusted)")
    run("remember", "ada", "The ford is flooded")
    only_trusted = run("recall", "ada", "is the ford safe?", "--trust", "trusted")
    assert "The ford is flooded" in only_trusted and "The ford is safe" not in only_trusted
    assert "trusted" in only_trusted.splitlines()[0]
    hits = json.loads(run("recall", "ada", "is the ford safe?", "--trust", "untrusted", "--json"))["hits"]
    assert [(h["record"]["text"], h["record"]["trust"]) for h in hits] == [("The ford is safe", "untrusted")]
    listed = run("memories", "ada").splitlines()
    assert [("untrusted" in line.split(), "safe" in line) for line in listed] == [(True, True), (False, False)]
    assert "flooded" not in run("memories", "ada", "--trust", "untrusted")
