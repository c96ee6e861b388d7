"""Memory inside running agents, consolidation, decay, and the memory commands of the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus._cli import cli
from habitus.agents import RuntimeOptions
from habitus.errors import InvalidRequestError
from habitus.memory import HashEmbedder, MemoryRecord
from tests.test_cli import run as run_main

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)


def build_app() -> App:
    app = App("memory-test")

    @app.behaviour
    class Librarian(Agent):
        remember_messages = True

        @handles("ask")
        async def ask(self, msg: Message) -> None:
            result = await self.ctx.memory.recall(str(msg.body), k=1)
            answer = result[0].record.text if result.hits else "nothing"
            await self.ctx.send("scribe", f"I recall: {answer}", type="note")

        @handles("fail")
        async def fail(self, msg: Message) -> None:
            await self.ctx.memory.remember("this should never be stored")
            raise RuntimeError("handler failed after remembering")

    @app.behaviour
    class Scribe(Agent):
        @handles("note")
        async def note(self, msg: Message) -> None:
            self.ctx.emit("note.recorded", content=str(msg.body))

    return app


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=128))
    try:
        yield h
    finally:
        await h.close()


async def _wait(predicate: object, timeout: float = 10.0) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def test_agents_remember_their_messages_and_recall_in_handlers(hab: Habitat) -> None:
    await hab.agents.spawn("lib", behaviour="Librarian", owner="human:ada")
    await hab.agents.spawn("scribe", behaviour="Scribe", owner="human:ada")
    runtime = await hab.start(build_app(), options=FAST)
    try:
        told = await hab.messages.send("lib", "the lighthouse keeper is named Orla", sender="human:ada", type="ask")

        async def noted() -> bool:
            return bool((await hab.ledger.query(kind="note.recorded")).events)

        await _wait(noted)
        mine = await hab.memory("lib").memories()
        received = [m for m in mine if m.attrs.get("direction") == "received"]
        sent = [m for m in mine if m.attrs.get("direction") == "sent"]
        assert [m.text for m in received] == ["the lighthouse keeper is named Orla"]
        assert received[0].sources == [told.id] and received[0].attrs["speaker"] == "human:ada"
        assert sent and sent[0].text.startswith("I recall: ") and sent[0].kind == "message"
        # the recall inside the handler is an event caused by the message being handled
        recalls = (await hab.ledger.query(kind="memory.recalled")).events
        assert len(recalls) == 1 and told.id in recalls[0].causes
        # and the scribe's note traces back through the reply to the original message
        note = (await hab.ledger.query(kind="note.recorded")).events[0]
        why = await hab.ledger.why(note.id)
        assert told.id in {e.id for e in why.nodes}
    finally:
        await runtime.stop()


async def test_a_failed_handler_remembers_nothing(hab: Habitat) -> None:
    await hab.agents.spawn("lib", behaviour="Librarian", owner="human:ada")
    runtime = await hab.start(build_app(), options=RuntimeOptions(retry_base=0.01, max_attempts=2, timer_poll=0.05))
    try:
        await hab.messages.send("lib", "boom", sender="human:ada", type="fail")

        async def dead() -> bool:
            return bool(await hab.agents.dead_letters("lib"))

        await _wait(dead)
        assert await hab.memory("lib").memories() == []
        assert (await hab.ledger.query(kind="memory.remembered")).events == []
    finally:
        await runtime.stop()


def _day(d: int) -> datetime:
    return datetime(2025, 3, d, 9, tzinfo=UTC)


async def test_consolidation_summarises_episodes_with_their_sources(hab: Habitat) -> None:
    await hab.agents.spawn("ada", behaviour="noop")
    mem = hab.memory("ada")
    trip = [
        "We drove to the coast for the sailing course",
        "The sailing instructor taught us to tie knots",
        "On the second day we sailed to the island",
        "Dinner was grilled fish by the harbour",
    ]
    episodes = await mem.remember_many(
        {"text": t, "kind": "message", "thread": "trip", "at": _day(i + 1), "meta": {"speaker": "Ada"}}
        for i, t in enumerate(trip)
    )
    await mem.remember("A lone note on another day", at=_day(20))
    notes = await mem.consolidate(min_records=3, sentences=2)
    assert len(notes) == 1
    note = notes[0]
    assert note.kind == "summary" and note.text.startswith("Summary of 4 memories")
    assert set(note.sources) == {e.id for e in episodes}
    assert note.at == _day(4)
    assert sum(t in note.text for t in trip) == 2
    why = await hab.ledger.why(note.id)
    assert {e.id for e in episodes} <= {e.id for e in why.nodes}
    # nothing new to consolidate the second time
    assert await mem.consolidate(min_records=3) == []

    async def model(records: list[MemoryRecord]) -> str:
        return f"a trip of {len(records)} moments"

    more = await mem.remember_many(
        {"text": f"harbour day {i}", "kind": "message", "thread": "harbour", "at": _day(10)} for i in range(3)
    )
    (summary,) = await mem.consolidate(summarize=model)
    assert summary.text == "a trip of 3 moments" and set(summary.sources) == {m.id for m in more}
    with pytest.raises(InvalidRequestError):
        await mem.consolidate(min_records=0)


async def test_decay_forgets_unimportant_unused_memories(hab: Habitat) -> None:
    await hab.agents.spawn("ada", behaviour="noop")
    mem = hab.memory("ada")
    vital = await mem.remember("the well is poisoned", importance=1.0)
    trivia = await mem.remember("the cat sneezed", importance=0.1)
    # 90 days on: trivia's value is 0.1 / 4 = 0.025; the vital one 0.25
    later = datetime.now(UTC) + timedelta(days=90)
    assert await hab.memories.sweep(now=later, decay_below=0.05) == 1
    left = {m.id for m in await mem.memories()}
    assert left == {vital.id} and trivia.id not in left
    event = (await hab.ledger.query(kind="memory.forgotten")).events[0]
    assert event.meta["cause"] == "decay"
    with pytest.raises(InvalidRequestError):
        await hab.memories.sweep(decay_below=2.0)


def test_memory_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HABITUS_PATH": str(tmp_path / "h"), "HABITUS_EMBEDDER": "hash"}

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    run("spawn", "ada", "--behaviour", "noop")
    out = run(
        "remember", "ada", "The blue door sticks in winter", "--at", "2024-01-05T10:00:00+00:00", "--tag", "house"
    )
    assert out.startswith("remembered #")
    record = json.loads(run("remember", "ada", "Buy flour on Monday", "--json"))
    recalled = run("recall", "ada", "which door sticks?", "-k", "1")
    assert "The blue door sticks in winter" in recalled and "memory.recalled" in recalled
    hits = json.loads(run("recall", "ada", "flour", "--json"))["hits"]
    assert hits[0]["record"]["id"] == record["id"] and hits[0]["provenance"][0] == record["id"]
    assert "Buy flour" in run("memories", "ada")
    run("assert", "ada", "door", "colour", "blue")
    run("assert", "ada", "door", "colour", "green")
    facts = run("facts", "ada", "door", "--history")
    assert "superseded" in facts and '"green"' in facts
    assert '"blue"' not in run("facts", "ada", "door")
    out = run("forget", "ada", record["id"], "--reason", "bought it")
    assert "forgot" in out
    assert "Buy flour" not in run("memories", "ada")
    denied = run_main("recall", "ada", "x", "--scope", "group:secret", env=env)
    assert denied.exit_code == 8 and "may not memory:read scope:group:secret" in denied.output
    missing = run_main("forget", "ada", record["id"], "--reason", "again", env=env)
    assert missing.exit_code == 3 and "no memory or fact" in missing.output
    env["HABITUS_EMBEDDER"] = "hash:32"
    assert "re-embedded 1 memory with hash:32" in run("reindex")
