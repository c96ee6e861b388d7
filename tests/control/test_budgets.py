"""Budgets stop work at the limit, per agent and per owner, and never leave an agent half-done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions
from habitus.errors import BudgetExceededError, InvalidRequestError, PolicyDeniedError

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05, max_attempts=2)


def build_app() -> App:
    app = App("budgets")

    @app.behaviour
    class Chatty(Agent):
        @handles("fan out")
        async def fan_out(self, msg: Message) -> None:
            for target in msg.body:
                await self.ctx.send(target, f"hello {target}")

        async def on_message(self, msg: Message) -> None:
            self.ctx.emit("note.recorded", content=f"got {msg.body}")

    for agent in ("scout", "buddy", "scribe"):
        app.agent(agent, "Chatty", owner="human:alice")
    return app


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    for agent in ("scout", "buddy", "scribe"):
        await h.agents.spawn(agent, behaviour="Chatty", owner="human:alice")
    try:
        yield h
    finally:
        await h.close()


async def test_an_agents_message_budget_stops_it_at_the_limit(hab: Habitat) -> None:
    await hab.control.set_budget("agent:buddy", "messages", 3, period="day")
    buddy = hab.acting_as("agent:buddy")
    for i in range(3):
        await buddy.send("scout", f"message {i}")
    with pytest.raises(BudgetExceededError, match=r"agent:buddy may not use 1 more messages: its budget is 3"):
        await buddy.send("scout", "one too many")
    (exceeded,) = (await hab.ledger.query(kind="budget.exceeded")).events
    assert exceeded.meta == {
        "principal": "agent:buddy", "subject": "agent:buddy", "meter": "messages",
        "limit": 3, "used": 3, "amount": 1, "period": 86_400,
    }  # fmt: skip
    assert hab.messages.depth("scout") == 3  # the refused message was not queued
    (budget,) = hab.control.budgets("agent:buddy")
    assert (budget.limit, budget.used) == (3, 3)
    await hab.acting_as("agent:scout").send("buddy", "others are not affected")


async def test_an_owners_budget_is_shared_by_all_its_agents(hab: Habitat) -> None:
    await hab.control.set_budget("human:alice", "messages", 4)
    await hab.acting_as("agent:buddy").send("scout", "1")
    await hab.acting_as("agent:buddy").send("scout", "2")
    await hab.acting_as("agent:scribe").send("scout", "3")
    await hab.acting_as("human:alice").send("scout", "4")  # the owner's own messages count too
    with pytest.raises(BudgetExceededError, match="its owner human:alice's budget is 4"):
        await hab.acting_as("agent:scout").send("buddy", "5")
    assert [b.used for b in hab.control.budgets("agent:scout")] == [4]


async def test_a_handler_over_budget_commits_nothing(hab: Habitat) -> None:
    await hab.control.set_budget("agent:scout", "messages", 1)
    await hab.messages.send("scout", ["buddy", "scribe"], sender="human:alice", type="fan out")
    runtime = await hab.start(build_app(), options=FAST)
    try:
        for _ in range(500):
            if (await hab.ledger.query(kind="message.dead_lettered")).events:
                break
            await asyncio.sleep(0.02)
        (dead,) = (await hab.ledger.query(kind="message.dead_lettered")).events
        assert "BudgetExceededError" in str(dead.meta["error"])
        sent_by_scout = (await hab.ledger.query(kind="message.sent", actor="agent:scout")).events
        assert sent_by_scout == []  # the first send was within budget, but its handler did not finish
        assert [b.used for b in hab.control.budgets("agent:scout")] == [0]
        assert len((await hab.ledger.query(kind="budget.exceeded")).events) == 2  # once per attempt
    finally:
        await runtime.stop()


async def test_usage_survives_a_restart(settings: Settings) -> None:
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.agents.spawn("scout", behaviour="Chatty", owner="human:alice")
        await hab.agents.spawn("buddy", behaviour="Chatty", owner="human:alice")
        await hab.control.set_budget("agent:buddy", "messages", 2, period="hour")
        await hab.acting_as("agent:buddy").send("scout", "1")
        await hab.acting_as("agent:buddy").send("scout", "2")
    async with await Habitat.open(settings.path, settings=settings) as hab:
        assert hab.control.budgets("agent:buddy")[0].used == 2
        with pytest.raises(BudgetExceededError):
            await hab.acting_as("agent:buddy").send("scout", "3")


async def test_a_new_period_starts_afresh(hab: Habitat) -> None:
    await hab.control.set_budget("agent:buddy", "messages", 1, period=1)
    buddy = hab.acting_as("agent:buddy")
    for _ in range(5):  # two sends a few ms apart fall in one 1-second period, unless a boundary fell between
        await buddy.send("scout", "first")
        try:
            await buddy.send("scout", "second")
        except BudgetExceededError:
            break
    else:
        raise AssertionError("the second message of a period was never refused")
    await asyncio.sleep(1.05)
    await buddy.send("scout", "in the next period")


async def test_tool_calls_and_tokens_are_charged_with_the_work_they_pay_for(hab: Habitat) -> None:
    await hab.control.set_budget("agent:scout", "tool_calls", 2)
    await hab.control.set_budget("human:alice", "tokens", 1000)
    for _ in range(2):
        async with hab.ledger.transaction() as tx:
            await hab.control.charge(tx, "agent:scout", "tool_calls")
            await hab.control.charge(tx, "agent:scout", "tokens", 400)
            tx.append("note.recorded", actor="agent:scout", content="called a tool")
    with pytest.raises(BudgetExceededError, match="tool_calls"):
        async with hab.ledger.transaction() as tx:
            await hab.control.charge(tx, "agent:scout", "tool_calls")
    with pytest.raises(BudgetExceededError, match="tokens"):
        async with hab.ledger.transaction() as tx:
            await hab.control.charge(tx, "agent:buddy", "tokens", 201)  # alice's 1000 hold 200 more
    used = {(b.subject, b.meter): b.used for b in hab.control.budgets()}
    assert used == {("agent:scout", "tool_calls"): 2, ("human:alice", "tokens"): 800}


async def test_who_may_set_a_budget_and_bad_budgets(hab: Habitat) -> None:
    await hab.control.set_budget("agent:scout", "messages", 10, by="human:alice")  # the owner may
    with pytest.raises(PolicyDeniedError, match="human:bob may not set the budget of agent:scout"):
        await hab.control.set_budget("agent:scout", "messages", 1000, by="human:bob")
    with pytest.raises(PolicyDeniedError):
        await hab.control.set_budget("agent:scout", "messages", 1000, by="agent:scout")  # nor the agent itself
    with pytest.raises(InvalidRequestError, match="meter"):
        await hab.control.set_budget("agent:scout", "coins", 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="limit"):
        await hab.control.set_budget("agent:scout", "messages", -1)
    with pytest.raises(InvalidRequestError, match="period"):
        await hab.control.set_budget("agent:scout", "messages", 1, period="fortnight")
    await hab.control.set_budget("agent:scout", "messages", None)  # removed
    assert hab.control.budgets("agent:scout") == []
