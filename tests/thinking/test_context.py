"""build_context: what goes into a prompt, under a budget, and exactly what is recorded."""

from __future__ import annotations

import pytest

from habitus import Habitat
from habitus.errors import InvalidRequestError
from habitus.thinking import BuiltContext, build_context, estimate_tokens

RIVER = [
    f"Report {i}: the river crossing at the north bridge was checked by the patrol; "
    f"water level {i} metres, traffic slow, barrier number {i} in place."
    for i in range(10)
]


def _prompt(built: BuiltContext) -> str:
    return "\n".join(m.content or "" for m in built.messages)


async def _scout(hab: Habitat) -> None:
    await hab.agents.spawn("scout", behaviour="noop", owner="human:ada")
    await hab.agents.spawn("planner", behaviour="noop", owner="human:ada")


async def test_the_budget_holds_and_the_record_names_exactly_what_fits(hab: Habitat) -> None:
    await _scout(hab)
    mem = hab.memory("scout")
    stored = {r.id: r.text for r in [await mem.remember(text) for text in RIVER]}
    task = "Is the river crossing at the north bridge safe?"

    roomy = await build_context(hab, "scout", task, budget_tokens=10_000, recall_k=10)
    assert set(roomy.record.memories) == set(stored)
    assert roomy.left_out == 0

    built = await build_context(hab, "scout", task, budget_tokens=200, recall_k=10)
    prompt = _prompt(built)
    assert built.tokens <= 200 == built.record.budget_tokens
    assert built.tokens == built.record.tokens == sum(estimate_tokens(m.content or "") for m in built.messages)
    assert 0 < len(built.record.memories) < len(stored)
    assert built.left_out == len(stored) - len(built.record.memories)
    assert list(built.record.memories) == [hit.record.id for hit in built.memories]
    for memory_id, text in stored.items():  # in the record if and only if in the prompt
        assert (memory_id in built.record.memories) == (text in prompt)
    assert built.messages[-1].role == "user" and built.messages[-1].content == task
    assert built.recall is not None
    recalled = await hab.ledger.get(built.recall)
    assert recalled.kind == "memory.recalled" and recalled.actor == "agent:scout"


async def test_a_prompt_over_budget_on_its_own_carries_no_context(hab: Habitat) -> None:
    await _scout(hab)
    await hab.memory("scout").remember(RIVER[0])
    built = await build_context(hab, "scout", "x" * 400, budget_tokens=50, system_prompt="Be brief.")
    assert built.record.memories == () and built.left_out == 1
    assert [m.content for m in built.messages] == ["Be brief.", "x" * 400]


async def test_superseded_facts_are_left_out_and_facts_come_first(hab: Habitat) -> None:
    await _scout(hab)
    mem = hab.memory("scout")
    closed = await mem.assert_fact("north bridge", "status", "closed")
    opened = await mem.assert_fact("north bridge", "status", "open")
    other = await mem.assert_fact("ferry", "schedule", "hourly")
    await mem.remember(RIVER[1])

    built = await build_context(hab, "scout", "Can I cross the north bridge?", budget_tokens=10_000)
    assert built.record.facts == (opened.id, other.id)  # sharing words with the task first
    assert closed.id not in built.record.facts
    system = built.messages[0].content or ""
    assert 'north bridge status: "open"' in system and '"closed"' not in system
    assert system.index("Facts you currently believe") < system.index("Memories, most relevant first")

    # a budget with room for the facts and little else keeps the facts and drops the memory
    small = await build_context(hab, "scout", "Can I cross the north bridge?", budget_tokens=built.tokens - 20)
    assert small.record.facts == (opened.id, other.id) and small.record.memories == ()


async def test_only_the_agents_own_messages_of_the_thread_newest_first(hab: Habitat) -> None:
    await _scout(hab)
    await hab.agents.spawn("auditor", behaviour="noop", owner="human:ada")
    sent = []
    for i in range(4):
        event = await hab.messages.send("scout", f"question {i} about the bridge", sender="human:ada", thread="t1")
        sent.append(event.id)
    aside = await hab.messages.send("auditor", "a word between others", sender="agent:planner", thread="t1")
    elsewhere = await hab.messages.send("scout", "another conversation", sender="human:ada", thread="t2")
    mine = await hab.messages.send("planner", "my answer about the bridge", sender="agent:scout", thread="t1")
    sent.append(mine.id)

    built = await build_context(hab, "scout", "What was asked?", thread="t1", recall_k=0, max_facts=0)
    assert list(built.record.messages) == sent  # oldest first, as shown
    system = built.messages[0].content or ""
    assert "a word between others" not in system and "another conversation" not in system
    assert aside.id not in built.record.messages and elsewhere.id not in built.record.messages
    assert system.index("question 0") < system.index("my answer about the bridge")

    # a tight budget keeps an unbroken stretch of the newest
    everything = built.tokens
    tight = await build_context(
        hab, "scout", "What was asked?", thread="t1", recall_k=0, max_facts=0, budget_tokens=everything - 12
    )
    assert list(tight.record.messages) == sent[1:]
    capped = await build_context(hab, "scout", "What was asked?", thread="t1", recall_k=0, max_messages=2)
    assert list(capped.record.messages) == sent[-2:]


async def test_a_custom_token_counter_is_used(hab: Habitat) -> None:
    await _scout(hab)
    for text in RIVER[:5]:
        await hab.memory("scout").remember(text)

    def words(text: str) -> int:
        return len(text.split())

    built = await build_context(hab, "scout", "river bridge", budget_tokens=80, count_tokens=words)
    assert built.tokens == sum(words(m.content or "") for m in built.messages) <= 80
    assert 0 < len(built.record.memories) < 5


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [("", {}), ("ok", {"budget_tokens": 0}), ("ok", {"recall_k": -1}), ("ok", {"max_facts": True})],
)
async def test_bad_arguments_are_refused(hab: Habitat, task: str, kwargs: dict[str, int]) -> None:
    await _scout(hab)
    with pytest.raises(InvalidRequestError):
        await build_context(hab, "scout", task, **kwargs)  # type: ignore[arg-type]
