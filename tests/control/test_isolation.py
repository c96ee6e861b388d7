"""The isolation matrix: every role against every action on one agent, each denial checked for its event.

The target is ``scout``, owned by ``human:alice``. The roles:

- ``owner``: alice herself;
- ``other owner``: bob, who owns other agents;
- ``own agent``: scout acting on itself;
- ``sibling``: ``buddy``, another of alice's agents;
- ``foreign agent``: ``rival``, one of bob's agents;
- ``granted agent``: ``friend``, one of bob's agents, granted by alice what she may grant
  on scout (send, state, memory read and write, not erase) and by the habitat a tool and a model;
- ``suspended agent``: ``sleeper``, one of alice's agents, suspended (the kill switch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus._acting import Acting
from habitus.agents import RuntimeOptions
from habitus.errors import PolicyDeniedError, ScopeDeniedError
from habitus.memory import HashEmbedder

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)

ROLES = {
    "owner": "human:alice",
    "other owner": "human:bob",
    "own agent": "agent:scout",
    "sibling": "agent:buddy",
    "foreign agent": "agent:rival",
    "granted agent": "agent:friend",
    "suspended agent": "agent:sleeper",
}


def build_app() -> App:
    app = App("isolation")

    @app.behaviour
    class Worker(Agent):
        @handles("ping")
        async def ping(self, msg: Message) -> None:
            await self.ctx.reply("pong")

        async def on_message(self, msg: Message) -> None:
            self.ctx.state.set("last", msg.body)

    for agent, owner in [
        ("scout", "human:alice"),
        ("buddy", "human:alice"),
        ("sleeper", "human:alice"),
        ("rival", "human:bob"),
        ("friend", "human:bob"),
    ]:
        app.agent(agent, "Worker", owner=owner)
    return app


async def prepare(h: Habitat) -> None:
    """The matrix's habitat: friend granted what alice may grant on scout (and a tool and a model by the
    habitat), sleeper suspended, and a memory and a fact in scout's memory (shared with the HTTP matrix)."""
    alice = h.acting_as("human:alice")
    for action, resource in [
        ("message:send", "agent:scout"),
        ("state:read", "agent:scout"),
        ("memory:read", "scope:agent:scout"),
        ("memory:write", "scope:agent:scout"),
    ]:
        await alice.grant("agent:friend", action, resource)
    await h.control.grant("agent:friend", "tool:call", "shell")
    await h.control.grant("agent:friend", "model:use", "local/*")
    await h.agents.suspend("sleeper", by="human:alice", reason="kill switch")
    scout = h.memory("scout")
    await scout.remember("the north gate is locked at night")
    await scout.assert_fact("north gate", "state", "locked")


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=64))
    await h.start(build_app(), options=FAST)
    await prepare(h)
    try:
        yield h
    finally:
        await h.close()


async def _forget(hab: Habitat, who: Acting) -> object:
    record = await hab.memory("scout").remember("a note to be erased")
    return await who.memory("scout").forget(record.id, reason="matrix")


ACTIONS: dict[str, tuple[str, Callable[[Habitat, Acting], Awaitable[object]]]] = {
    "send": ("message:send", lambda h, a: a.send("scout", "hello")),
    "request": ("message:send", lambda h, a: a.request("scout", "hello", type="ping", timeout=10)),
    "read state": ("state:read", lambda h, a: a.state("scout")),
    "remember": ("memory:write", lambda h, a: a.memory("scout").remember("planted")),
    "recall": ("memory:read", lambda h, a: a.memory("scout").recall("north gate")),
    "read facts": ("memory:read", lambda h, a: a.memory("scout").facts("north gate")),
    "erase": ("memory:erase", _forget),
    "call tool": ("tool:call", lambda h, a: a.authorize("tool:call", "shell")),
    "use model": ("model:use", lambda h, a: a.authorize("model:use", "local/tiny")),
}

Y, N = True, False
EXPECTED = {  # send, request, read state, remember, recall, read facts, erase, call tool, use model
    "owner": (Y, Y, Y, Y, Y, Y, Y, N, N),
    "other owner": (N, N, N, N, N, N, N, N, N),
    "own agent": (Y, Y, Y, Y, Y, Y, Y, N, N),
    "sibling": (Y, Y, N, N, N, N, N, N, N),
    "foreign agent": (N, N, N, N, N, N, N, N, N),
    "granted agent": (Y, Y, Y, Y, Y, Y, N, Y, Y),
    "suspended agent": (N, N, N, N, N, N, N, N, N),
}

CASES = [
    pytest.param(role, action, allowed, id=f"{role}-{action}-{'allow' if allowed else 'deny'}")
    for role, row in EXPECTED.items()
    for action, allowed in zip(ACTIONS, row, strict=True)
]


@pytest.mark.parametrize(("role", "action", "allowed"), CASES)
async def test_isolation_matrix(hab: Habitat, role: str, action: str, allowed: bool) -> None:
    principal = ROLES[role]
    checked_action, attempt = ACTIONS[action]
    before = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
    who = hab.acting_as(principal)
    if allowed:
        result = await attempt(hab, who)
        assert result is not None
        after = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
        assert after == before, f"{principal} was allowed to {action} but a denial was recorded"
        return
    expected_error = ScopeDeniedError if checked_action.startswith("memory:") else PolicyDeniedError
    with pytest.raises(expected_error) as raised:
        await attempt(hab, who)
    error = raised.value
    assert error.principal == principal and error.action == checked_action
    assert principal in str(error) and checked_action in str(error)
    after = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
    assert len(after) == len(before) + 1, "a denial must append exactly one policy.denied event"
    denial = after[-1]
    assert denial.meta["principal"] == principal
    assert denial.meta["action"] == checked_action
    assert denial.meta["resource"] == error.resource
    assert denial.meta["reason"]


async def test_the_matrix_holds_for_what_the_allowed_actions_actually_did(hab: Habitat) -> None:
    """Allowed is not just 'no error': the granted agent's memory write landed in scout's memory, as itself."""
    friend = hab.acting_as("agent:friend")
    planted = await friend.memory("scout").remember("friend was here")
    event = await hab.ledger.get(planted.id)
    assert event.actor == "agent:friend" and event.meta["agent"] == "scout" and event.meta["scope"] == "agent:scout"
    hits = await hab.memory("scout").recall("who was here")
    assert any(h.record.id == planted.id for h in hits)
    sent = await friend.send("scout", "from a friend")
    assert sent.actor == "agent:friend" and sent.meta["to"] == "agent:scout"
