"""Scale: many agents talking at once, and a million registered agents of which only a few wake up.

Agents are virtual actors: a registered agent is a row until a message arrives for it, and an
activation (memory, a task) only while it has work. These tests check what that promises a user:
ten thousand agents passing messages around in one process all get their messages, with no more
than ``max_active`` of them in memory at a time; and a million registered agents cost little
memory, while messaging a few of them wakes only those few.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest

from habitus import Agent, App, Event, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions, SpawnSpec

# -- ten thousand agents passing messages on -----------------------------------------------

AGENTS = 10_000
HOPS = 3  # each chain of messages visits HOPS + 1 agents
STRIDE = 7_919  # a chain moves this many agents on at each hop (prime, so chains spread over everyone)
MAX_ACTIVE = 2_000
EXCHANGE_TIMEOUT = 120.0


def _agent(n: int) -> str:
    return f"a{n}"


def relay_app() -> App:
    app = App("relay")

    @app.behaviour
    class Relay(Agent):
        @handles("relay")
        async def relay(self, msg: Message) -> None:
            chain, hops, at = msg.body["chain"], msg.body["hops"], msg.body["at"]
            self.ctx.state.set("relayed", self.ctx.state.get("relayed", 0) + 1)
            if hops:
                nxt = (at + STRIDE) % AGENTS
                await self.ctx.send(_agent(nxt), {"chain": chain, "hops": hops - 1, "at": nxt}, type="relay")
            else:
                self.ctx.emit("note.recorded", content={"chain": chain, "end": self.ctx.agent.id})

    return app


async def _all(hab: Habitat, kind: str) -> list[Event]:
    events: list[Event] = []
    cursor: int | None = None
    while True:
        page = await hab.ledger.query(kind=kind, limit=10_000, cursor=cursor)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


@pytest.mark.slow
async def test_ten_thousand_agents_exchange_messages_in_one_process(habitat: Habitat) -> None:
    for start in range(0, AGENTS, 2_000):
        specs = [SpawnSpec(_agent(n), behaviour="Relay", owner="human:ada") for n in range(start, start + 2_000)]
        await habitat.agents.spawn_many(specs)
    assert await habitat.agents.count() == AGENTS
    for chain in range(AGENTS):  # one chain starts at every agent; they wait in the mailboxes
        await habitat.messages.send(
            _agent(chain), {"chain": chain, "hops": HOPS, "at": chain}, sender="human:ada", type="relay"
        )

    runtime = await habitat.start(
        relay_app(), options=RuntimeOptions(max_active=MAX_ACTIVE, idle_seconds=0.05, retry_base=0.01)
    )
    deliveries = AGENTS * (HOPS + 1)
    most_active = 0
    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    while runtime.delivered < deliveries and time.monotonic() < deadline:
        most_active = max(most_active, runtime.active)
        await asyncio.sleep(0.01)
    assert runtime.delivered == deliveries, f"{runtime.delivered} of {deliveries} messages delivered in time"
    assert 0 < most_active <= MAX_ACTIVE, f"{most_active} agents were in memory at once"

    # Every chain ran to its end exactly once, at the agent its hops lead to.
    ends = await _all(habitat, "note.recorded")
    chains = Counter(e.content["chain"] for e in ends if isinstance(e.content, dict))
    assert len(ends) == AGENTS and chains == dict.fromkeys(range(AGENTS), 1)
    for end in ends:
        assert isinstance(end.content, dict)
        expected = _agent((int(str(end.content["chain"])) + HOPS * STRIDE) % AGENTS)
        assert end.actor == f"agent:{expected}" and end.content["end"] == expected
    assert len(await _all(habitat, "message.sent")) == deliveries
    assert not (await habitat.ledger.query(kind="message.dead_lettered")).events
    assert not (await habitat.ledger.query(kind="message.failed")).events
    # Each agent took part in HOPS + 1 chains (one at each position), and its durable state says so.
    for n in range(0, AGENTS, 997):
        assert await habitat.agents.state(_agent(n)) == {"relayed": HOPS + 1}
        assert habitat.messages.depth(_agent(n)) == 0
    report = await habitat.ledger.verify()
    assert report.ok, report.problems


# -- a million registered agents, a few of them awake ----------------------------------------

REGISTERED = 1_000_000  # spawned 20,000 a transaction (~1.3 s each): ~55 s for the whole test on 2 cores
CHUNK = 20_000
AWAKE = (_agent(0), _agent(250_001), _agent(500_002), _agent(750_003), _agent(REGISTERED - 1))
MAX_BYTES_PER_AGENT = 2_048


def echo_app() -> App:
    app = App("echo")

    @app.behaviour
    class Echo(Agent):
        @handles("ping")
        async def ping(self, msg: Message) -> None:
            seen = self.ctx.state.get("pings", 0) + 1
            self.ctx.state.set("pings", seen)
            await self.ctx.reply({"from": self.ctx.agent.id, "pings": seen})

    return app


def _rss() -> int:
    """Resident memory of this process, in bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_a_million_registered_agents_cost_little_memory_and_only_messaged_ones_wake(settings: Settings) -> None:
    async with await Habitat.init(settings.path, settings=settings) as hab:
        before = _rss()
        for start in range(0, REGISTERED, CHUNK):
            end = min(start + CHUNK, REGISTERED)
            await hab.agents.spawn_many(
                [SpawnSpec(_agent(n), behaviour="Echo", owner="human:ada") for n in range(start, end)]
            )
        assert await hab.agents.count() == REGISTERED

        runtime = await hab.start(echo_app(), options=RuntimeOptions(retry_base=0.01))
        assert runtime.active == 0  # registered agents with no mail stay rows
        replies = await asyncio.gather(
            *(hab.messages.request(a, "ping", sender="human:ada", type="ping", timeout=30) for a in AWAKE)
        )
        assert [r.body for r in replies] == [{"from": a, "pings": 1} for a in AWAKE]
        assert [r.sender for r in replies] == [f"agent:{a}" for a in AWAKE]
        assert runtime.active <= len(AWAKE), f"{runtime.active} agents woke for {len(AWAKE)} messages"
        grown = _rss() - before

        for agent in AWAKE:
            assert (await hab.agents.get(agent)).status == "active"
        for agent in (_agent(1), _agent(250_000), _agent(999_998)):
            assert (await hab.agents.get(agent)).status == "spawned"
            assert await hab.agents.state(agent) == {}
        per_agent = grown / REGISTERED
        assert per_agent < MAX_BYTES_PER_AGENT, f"memory grew {per_agent:.0f} bytes per registered agent"
