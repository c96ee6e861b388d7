"""Agents and messaging as a user of the Python API meets them."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions
from habitus.control import PolicyRequest
from habitus.errors import (
    AgentExistsError,
    AgentRetiredError,
    InvalidRequestError,
    MailboxFullError,
    PolicyDeniedError,
    RequestTimeoutError,
    UnknownAgentError,
)

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)


def build_app() -> App:
    app = App("test")

    @app.behaviour
    class Recorder(Agent):
        topics = ("sensors.*.temp",)

        @handles("ping")
        async def ping(self, msg: Message) -> None:
            seen = self.ctx.state.get("pings", 0) + 1
            self.ctx.state.set("pings", seen)
            await self.ctx.reply({"pong": msg.body, "pings": seen})

        @handles("forward")
        async def forward(self, msg: Message) -> None:
            target, rest = msg.body["to"], msg.body["rest"]
            if rest:
                await self.ctx.send(target[0], {"to": target[1:], "rest": rest - 1}, type="forward")
            else:
                self.ctx.emit("decision.made", meta={"action": "done"}, content="end of the chain")

        @handles("flaky")
        async def flaky(self, msg: Message) -> None:
            if msg.attempt < msg.body:
                self.ctx.emit("note.recorded", content=f"attempt {msg.attempt} (never committed)")
                raise RuntimeError(f"failing attempt {msg.attempt}")
            self.ctx.emit("note.recorded", content=f"succeeded on attempt {msg.attempt}")

        @handles("slow")
        async def slow(self, msg: Message) -> None:
            await asyncio.sleep(0.05)

        @handles("wake me")
        async def wake_me(self, msg: Message) -> None:
            self.ctx.set_timer("alarm", after=msg.body, payload={"why": "asked"})

        @handles(topic="sensors.#")
        async def sensor(self, msg: Message) -> None:
            self.ctx.emit("observation.recorded", content={"topic": msg.topic, "reading": msg.body})

        async def on_message(self, msg: Message) -> None:
            log = self.ctx.state.get("log", [])
            self.ctx.state.set("log", [*log, msg.body])

        async def on_timer(self, msg: Message) -> None:
            self.ctx.emit("note.recorded", content={"timer": msg.body})

    for name in ("a", "b", "c"):
        app.agent(name, "Recorder", owner="human:ada")
    return app


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Habitat]:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", mailbox_capacity=50)
    hab = await Habitat.init(settings.path, settings=settings)
    await hab.start(build_app(), options=FAST)
    try:
        yield hab
    finally:
        await hab.close()


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (the runtime works in the background), failing after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_request_reply_and_durable_state(running: Habitat) -> None:
    first = await running.messages.request("a", "hello", sender="human:ada", type="ping", timeout=5)
    second = await running.messages.request("agent:a", "again", sender="human:ada", type="ping", timeout=5)
    assert first.body == {"pong": "hello", "pings": 1}
    assert second.body == {"pong": "again", "pings": 2}
    assert first.sender == "agent:a"
    reply_event = await running.ledger.get(first.id)
    assert reply_event.meta["in_reply_to"] == str(first.in_reply_to)
    assert await running.agents.state("a") == {"pings": 2}
    assert (await running.agents.get("a")).status == "active"


async def test_messages_from_one_sender_are_handled_in_order(running: Habitat) -> None:
    for i in range(40):
        await running.messages.send("b", i, sender="human:ada")
    await eventually(lambda: _state_len(running, "b", 40))
    assert (await running.agents.state("b"))["log"] == list(range(40))


async def _state_len(hab: Habitat, agent: str, n: int) -> bool:
    return len((await hab.agents.state(agent)).get("log", [])) == n


async def test_a_causal_chain_across_three_agents_reaches_the_first_message(running: Habitat) -> None:
    start = await running.messages.send(
        "a", {"to": ["b", "c"], "rest": 2}, sender="human:ada", type="forward", thread="relay"
    )

    async def decided() -> bool:
        return bool((await running.ledger.query(kind="decision.made")).events)

    await eventually(decided)
    (decision,) = (await running.ledger.query(kind="decision.made")).events
    assert decision.actor == "agent:c"
    trail = await running.ledger.why(decision)
    assert [o.id for o in trail.origins()] == [start.id]
    actors = {n.actor for n in trail.nodes}
    assert {"human:ada", "agent:a", "agent:b", "agent:c"} <= actors
    assert decision.thread == "relay"


async def test_topics_with_wildcards_reach_every_subscriber(running: Habitat) -> None:
    with pytest.raises(PolicyDeniedError, match=r"source:s1 may not message:publish topic:sensors\.north\.temp"):
        await running.messages.publish("sensors.north.temp", 31.4, sender="source:s1")
    await running.control.grant("source:s1", "message:publish", "topic:*")
    published = await running.messages.publish("sensors.north.temp", 31.4, sender="source:s1")
    assert published.meta["recipients"] == 3

    async def observed() -> bool:
        return len((await running.ledger.query(kind="observation.recorded")).events) == 3

    await eventually(observed)
    nobody = await running.messages.publish("weather.today", "sunny", sender="source:s1")
    assert nobody.meta["recipients"] == 0
    with pytest.raises(InvalidRequestError, match="topic"):
        await running.messages.publish("bad topic!", 1, sender="source:s1")


async def test_a_failing_handler_is_retried_and_its_failed_attempts_leave_no_effects(running: Habitat) -> None:
    await running.messages.send("a", 3, sender="human:ada", type="flaky")

    async def done() -> bool:
        notes = (await running.ledger.query(kind="note.recorded")).events
        return any("succeeded" in str(n.content) for n in notes)

    await eventually(done)
    notes = [str(n.content) for n in (await running.ledger.query(kind="note.recorded")).events]
    assert notes == ["succeeded on attempt 3"]
    failures = (await running.ledger.query(kind="message.failed")).events
    assert [f.meta["attempt"] for f in failures] == [1, 2]


async def test_a_handler_that_keeps_failing_ends_in_the_dead_letters(running: Habitat) -> None:
    message = await running.messages.send("b", 99, sender="human:ada", type="flaky")

    async def dead() -> bool:
        return bool((await running.ledger.query(kind="message.dead_lettered")).events)

    await eventually(dead)
    (letter,) = (await running.ledger.query(kind="message.dead_lettered")).events
    assert letter.causes == (message.id,)
    assert "failing attempt 5" in str(letter.meta["error"])
    await running.messages.send("b", "after", sender="human:ada")  # the mailbox moves on
    await eventually(lambda: _state_len(running, "b", 1))


async def test_timers_fire_and_cite_the_request(running: Habitat) -> None:
    asked = await running.messages.send("c", 0.1, sender="human:ada", type="wake me")

    async def fired() -> bool:
        notes = (await running.ledger.query(kind="note.recorded")).events
        return any(isinstance(n.content, dict) and "timer" in n.content for n in notes)

    await eventually(fired)
    note = next(n for n in (await running.ledger.query(kind="note.recorded")).events)
    assert note.content == {"timer": {"payload": {"why": "asked"}}}
    assert [o.id for o in (await running.ledger.why(note)).origins()] == [asked.id]


async def test_requests_time_out_naming_the_recipient(running: Habitat) -> None:
    await running.agents.suspend("a", by="human:ada")
    with pytest.raises(RequestTimeoutError, match="'a'"):
        await running.messages.request("a", "x", sender="human:ada", type="ping", timeout=0.2)
    await running.agents.resume("a", by="human:ada")
    # the request was kept in the mailbox and is answered after resuming
    await eventually(lambda: _state_pings(running, "a", 1))


async def _state_pings(hab: Habitat, agent: str, n: int) -> bool:
    return (await hab.agents.state(agent)).get("pings") == n


async def test_unknown_retired_and_full_mailboxes_are_clear_errors(running: Habitat) -> None:
    with pytest.raises(UnknownAgentError, match="'nobody'"):
        await running.messages.send("nobody", "x", sender="human:ada")
    with pytest.raises(AgentExistsError):
        await running.agents.spawn("a", behaviour="Recorder")
    await running.agents.suspend("c")
    for i in range(50):
        await running.messages.send("c", i, sender="human:ada")
    with pytest.raises(MailboxFullError, match="'c'"):
        await running.messages.send("c", "one too many", sender="human:ada")
    retired = await running.agents.retire("c", by="human:ada", reason="done")
    assert retired.status == "retired"
    assert len((await running.ledger.query(kind="message.dead_lettered", limit=100)).events) == 50
    with pytest.raises(AgentRetiredError):
        await running.messages.send("c", "x", sender="human:ada")


async def test_an_app_policy_hook_can_refuse_what_capabilities_allow_and_the_denial_is_recorded(
    running: Habitat,
) -> None:
    def policy(request: PolicyRequest) -> str | None:
        if request.action == "message:send" and request.resource == "agent:a":
            return "agent a takes no messages today"
        return None

    running.control.add_hook(policy)
    await running.messages.send("b", "hi", sender="human:ada")  # ada owns b: allowed by default and by the hook
    with pytest.raises(PolicyDeniedError, match="no messages today"):
        await running.messages.send("a", "hi", sender="human:ada")
    (denial,) = (await running.ledger.query(kind="policy.denied")).events
    assert denial.meta["principal"] == "human:ada" and denial.meta["action"] == "message:send"


async def test_messages_wait_in_the_mailbox_until_an_app_runs(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.agents.spawn("a", behaviour="Recorder", owner="human:ada")
        for i in range(5):
            await hab.messages.send("a", i, sender="human:ada")
    async with await Habitat.open(settings.path, settings=settings) as hab:
        await hab.start(build_app(), options=FAST)
        await eventually(lambda: _state_len(hab, "a", 5))
        assert (await hab.agents.count()) == 3  # the two declared agents the first run had not spawned


async def test_mailbox_depths_stay_exact_while_agents_work(running: Habitat) -> None:
    async def burst(agent: str) -> None:
        for i in range(40):
            await running.messages.send(agent, i, sender="human:ada")

    await asyncio.gather(burst("a"), burst("b"))
    await eventually(lambda: _state_len(running, "a", 40))
    await eventually(lambda: _state_len(running, "b", 40))
    for agent in ("a", "b", "c"):
        assert running.messages.depth(agent) == 0
    # a depth that drifted upwards would refuse this before capacity (50) is really reached
    await running.agents.suspend("a")
    for i in range(50):
        await running.messages.send("a", i, sender="human:ada")
    assert running.messages.depth("a") == 50
    with pytest.raises(MailboxFullError):
        await running.messages.send("a", "over", sender="human:ada")


async def test_agents_waiting_for_a_slot_do_not_wait_for_others_to_idle(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.start(build_app(), options=RuntimeOptions(max_active=1, idle_seconds=60))
        for agent in ("a", "b", "c"):
            for i in range(3):
                await hab.messages.send(agent, i, sender="human:ada")
        for agent in ("a", "b", "c"):
            await eventually(lambda agent=agent: _state_len(hab, agent, 3), timeout=5)  # type: ignore[misc]


async def test_due_timers_of_suspended_agents_do_not_hold_back_the_others(running: Habitat) -> None:
    from habitus.storage._projections import TimerPut

    await running.agents.suspend("c")
    async with running.ledger.transaction() as tx:  # more due timers than one pass of the timer loop reads
        for i in range(300):
            event = tx.append("timer.set", actor="agent:c", meta={"agent": "c", "timer": f"t{i}", "due": 1})
            tx.project(TimerPut(f"c/t{i}", "c", 1, event.bytes))
    await running.messages.send("a", 0.05, sender="human:ada", type="wake me")

    async def fired() -> bool:
        return any(e.meta["agent"] == "a" for e in (await running.ledger.query(kind="timer.fired")).events)

    await eventually(fired)
    assert not any(e.meta["agent"] == "c" for e in (await running.ledger.query(kind="timer.fired")).events)


async def test_the_runtime_raises_the_collectors_threshold_while_it_runs_unless_the_app_chose_its_own(
    tmp_path: Path,
) -> None:
    saved = gc.get_threshold()
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    try:
        gc.set_threshold(700, 10, 10)  # Python's default
        async with await Habitat.init(settings.path, settings=settings) as hab:
            await hab.start(build_app(), options=FAST)
            assert gc.get_threshold() == (10_000, 10, 10)
        assert gc.get_threshold() == (700, 10, 10)  # put back when the runtime stopped
        gc.set_threshold(2_000, 5, 5)  # the application's own choice is kept
        async with await Habitat.open(settings.path, settings=settings) as hab:
            await hab.start(build_app(), options=FAST)
            assert gc.get_threshold() == (2_000, 5, 5)
        assert gc.get_threshold() == (2_000, 5, 5)
        gc.set_threshold(700, 10, 10)
        untouched = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", gc_threshold=0)
        async with await Habitat.open(settings.path, settings=untouched) as hab:
            await hab.start(build_app(), options=None)
            assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)
    with pytest.raises(InvalidRequestError, match="gc_threshold"):
        RuntimeOptions(gc_threshold=0)
