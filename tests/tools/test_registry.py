"""Python functions as tools: each call checked by policy and budget, recorded as events, and never a crash."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from habitus import Habitat, caused_by
from habitus.control import Approval
from habitus.errors import (
    ApprovalPendingError,
    ApprovalRejectedError,
    BudgetExceededError,
    InvalidRequestError,
    PolicyDeniedError,
    UnknownToolError,
)
from habitus.tools import ToolRegistry


def add_tools(tools: ToolRegistry) -> None:
    @tools.register
    def add(a: int, b: int = 0) -> int:
        """Add two whole numbers.

        Args:
            a: The first.
            b: The second.
        """
        return a + b

    @tools.register(name="lookup", description="Look a word up.", timeout_s=5)
    async def look_up(word: str) -> dict[str, str]:
        await asyncio.sleep(0)
        if word == "boom":
            raise KeyError("no such word: boom")
        return {"word": word, "meaning": word[::-1]}


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def _pending(hab: Habitat, count: int = 1) -> list[Approval]:
    async def asked() -> bool:
        return len(hab.control.approvals()) >= count

    await _until(asked)
    return hab.control.approvals()


async def test_a_call_is_recorded_as_called_then_returned_with_its_causes(hab: Habitat) -> None:
    add_tools(hab.tools)
    assert hab.tools.names == ["add", "lookup"]
    (spec,) = hab.tools.specs(["add"])
    assert spec.description == "Add two whole numbers."
    assert spec.parameters["properties"]["a"] == {"type": "integer", "description": "The first."}
    await hab.control.grant("agent:scout", "tool:call", "add")
    asked = await hab.ledger.append("note.recorded", actor="agent:scout", content="what is 2 + 3?")

    result = await hab.tools.call("agent:scout", "add", {"a": 2, "b": 3}, causes=[asked.id], call_id="call_1")

    assert result.ok and result.value == 5 and result.error is None and result.text == "5"
    called = await hab.ledger.get(result.called)
    assert called.kind == "tool.called" and called.actor == "agent:scout"
    assert called.meta == {"tool": "add", "source": "python", "call_id": "call_1"}
    assert called.content == {"a": 2, "b": 3}
    assert asked.id in called.causes
    returned = await hab.ledger.get(result.result)
    assert returned.kind == "tool.returned" and returned.causes == (called.id,)
    assert returned.content == {"value": 5}
    assert returned.meta["tool"] == "add" and returned.meta["call_id"] == "call_1"
    why = await hab.ledger.why(returned.id)
    assert {asked.id, called.id} <= {n.id for n in why.nodes}


async def test_async_tools_and_the_habitat_itself(hab: Habitat) -> None:
    add_tools(hab.tools)
    result = await hab.tools.call("system", "lookup", {"word": "gate"})  # the habitat needs no grant
    assert result.value == {"word": "gate", "meaning": "etag"}
    assert result.text == '{"word": "gate", "meaning": "etag"}'


async def test_a_tool_that_raises_is_a_failed_call_not_a_crash(hab: Habitat) -> None:
    add_tools(hab.tools)
    result = await hab.tools.call("system", "lookup", {"word": "boom"})
    assert not result.ok and result.value is None
    assert result.error is not None
    assert (result.error.type, result.error.exception) == ("exception", "KeyError")
    assert "no such word: boom" in result.error.message
    failed = await hab.ledger.get(result.result)
    assert failed.kind == "tool.failed" and failed.causes == (result.called,)
    assert failed.meta["error"] == "exception" and failed.meta["exception"] == "KeyError"
    assert isinstance(failed.content, dict) and "no such word" in str(failed.content["message"])
    assert result.text.startswith("error (exception): ")


async def test_bad_arguments_are_a_structured_failure(hab: Habitat) -> None:
    add_tools(hab.tools)
    result = await hab.tools.call("system", "add", {"a": "two", "c": 1})
    assert not result.ok and result.error is not None and result.error.type == "invalid_arguments"
    assert "argument 'a': Input should be a valid integer" in result.error.message
    assert "unexpected argument 'c' (expected: a, b)" in result.error.message
    assert (await hab.ledger.get(result.result)).meta["error"] == "invalid_arguments"
    with pytest.raises(InvalidRequestError, match="arguments must be a JSON object"):
        await hab.tools.call("system", "add", [1, 2])  # type: ignore[arg-type]


async def test_timeouts_fail_the_call(hab: Habitat) -> None:
    release = threading.Event()

    @hab.tools.register(timeout_s=0.2)
    async def slow() -> str:
        """Never finishes in time."""
        await asyncio.sleep(30)
        return "late"

    @hab.tools.register(timeout_s=0.2)
    def blocking() -> str:
        """Blocks a thread for a while."""
        release.wait(10)
        return "late"

    for name in ("slow", "blocking"):
        result = await hab.tools.call("system", name)
        assert result.error is not None and result.error.type == "timeout"
        assert f"tool {name!r} ran past its 0.2 s" in result.error.message
    release.set()


async def test_unknown_tools_and_bad_registrations(hab: Habitat) -> None:
    add_tools(hab.tools)
    with pytest.raises(UnknownToolError, match="no tool named 'ad' is registered; registered tools: add, lookup"):
        await hab.tools.call("system", "ad", {})
    with pytest.raises(UnknownToolError):
        hab.tools.specs(["add", "nope"])
    with pytest.raises(InvalidRequestError, match="a tool named 'add' is already registered"):
        hab.tools.register(lambda: 1, name="add")
    with pytest.raises(InvalidRequestError, match="a tool's name is 1-64 letters"):
        hab.tools.register(lambda: 1, name="two words")
    with pytest.raises(InvalidRequestError, match="timeout_s must be a positive number"):
        hab.tools.register(lambda: 1, name="x", timeout_s=0)
    assert not (await hab.ledger.query(kind="tool.called")).events


async def test_an_agent_needs_a_grant_and_a_refusal_is_recorded(hab: Habitat) -> None:
    add_tools(hab.tools)
    with pytest.raises(PolicyDeniedError, match="agent:scout may not tool:call tool:add: no capability"):
        await hab.tools.call("agent:scout", "add", {"a": 1})
    (denied,) = (await hab.ledger.query(kind="policy.denied")).events
    assert denied.meta["action"] == "tool:call" and denied.meta["resource"] == "tool:add"
    assert not (await hab.ledger.query(kind="tool.called")).events  # nothing ran
    await hab.control.grant("agent:scout", "tool:call", "look*")  # patterns work as for any capability
    assert (await hab.tools.call("agent:scout", "lookup", {"word": "x"})).ok
    with pytest.raises(PolicyDeniedError):
        await hab.tools.call("agent:scout", "add", {"a": 1})
    # Acting for someone needs their delegation, and their right too.
    await hab.control.grant("agent:scout", "tool:call", "add")
    with pytest.raises(PolicyDeniedError, match="human:bob has not delegated to agent:scout"):
        await hab.tools.call("agent:scout", "add", {"a": 1}, on_behalf_of="human:bob")
    await hab.control.delegate("agent:scout", "human:bob", by="system")
    await hab.control.grant("human:bob", "tool:call", "add")
    result = await hab.tools.call("agent:scout", "add", {"a": 1}, on_behalf_of="human:bob")
    assert (await hab.ledger.get(result.called)).meta["on_behalf_of"] == "human:bob"


async def test_the_tool_calls_budget_stops_calls_at_the_limit(hab: Habitat) -> None:
    add_tools(hab.tools)
    await hab.control.grant("agent:scout", "tool:call", "*")
    await hab.control.set_budget("agent:scout", "tool_calls", 2, period="day")
    for i in range(2):
        assert (await hab.tools.call("agent:scout", "add", {"a": i})).ok
    with pytest.raises(BudgetExceededError, match="agent:scout may not use 1 more tool_calls: its budget is 2"):
        await hab.tools.call("agent:scout", "add", {"a": 9})
    (exceeded,) = (await hab.ledger.query(kind="budget.exceeded")).events
    assert exceeded.meta["meter"] == "tool_calls"
    assert len((await hab.ledger.query(kind="tool.called")).events) == 2
    (budget,) = hab.control.budgets("agent:scout")
    assert budget.used == 2
    # The owner's budget binds all of its agents' calls too.
    await hab.control.set_budget("agent:scout", "tool_calls", None)
    await hab.control.set_budget("human:alice", "tool_calls", 2, period="day")
    for word in ("a", "b"):  # usage counts against a budget from when it is set
        assert (await hab.tools.call("agent:scout", "lookup", {"word": word})).ok
    with pytest.raises(BudgetExceededError, match="its owner human:alice's budget is 2"):
        await hab.tools.call("agent:scout", "lookup", {"word": "x"})


async def test_a_dangerous_tool_waits_for_a_human_and_runs_once_approved(hab: Habitat) -> None:
    ran: list[str] = []

    @hab.tools.register(dangerous=True)
    def wipe(path: str) -> str:
        """Delete a folder."""
        ran.append(path)
        return f"wiped {path}"

    await hab.control.grant("agent:scout", "tool:call", "wipe")
    call = asyncio.create_task(hab.tools.call("agent:scout", "wipe", {"path": "/data/old"}))
    (approval,) = await _pending(hab)
    assert (approval.principal, approval.action, approval.resource) == ("agent:scout", "tool:call", "tool:wipe")
    assert (await hab.ledger.get(approval.id)).content == {"path": "/data/old"}  # the human sees the arguments
    await asyncio.sleep(0.05)
    assert not call.done() and ran == []
    await hab.acting_as("human:alice").approve(approval.id)  # alice owns scout
    result = await call
    assert result.ok and result.value == "wiped /data/old" and ran == ["/data/old"]
    assert (await hab.ledger.get(result.called)).meta["dangerous"] is True


async def test_a_rejected_dangerous_call_raises_and_never_runs(hab: Habitat) -> None:
    ran: list[str] = []

    @hab.tools.register(dangerous=True)
    def wipe(path: str) -> None:
        """Delete a folder."""
        ran.append(path)

    await hab.control.grant("agent:scout", "tool:call", "wipe")
    call = asyncio.create_task(hab.tools.call("agent:scout", "wipe", {"path": "/"}))
    (approval,) = await _pending(hab)
    await hab.control.reject(approval.id, by="human:alice", reason="not the root")
    with pytest.raises(
        ApprovalRejectedError, match="human:alice rejected agent:scout tool:call tool:wipe: not the root"
    ):
        await call
    assert ran == [] and not (await hab.ledger.query(kind="tool.called")).events
    with pytest.raises(ApprovalPendingError, match="is still pending"):
        await hab.tools.call("agent:scout", "wipe", {"path": "/tmp"}, approval_timeout=0.1)


async def test_a_grant_with_approval_waits_and_each_set_of_arguments_is_approved_on_its_own(hab: Habitat) -> None:
    add_tools(hab.tools)
    await hab.control.grant("agent:scout", "tool:call", "add", approval=True)
    message = await hab.ledger.append("note.recorded", actor="human:alice", content="add things")
    with caused_by(message):  # as inside a handler: requests are recognised across retries
        first = asyncio.create_task(hab.tools.call("agent:scout", "add", {"a": 1}))
        (approval,) = await _pending(hab)
        await hab.control.approve(approval.id, by="human:alice")
        assert (await first).value == 1
        # Other arguments in the same handler are a new request, not the approved one again.
        second = asyncio.create_task(hab.tools.call("agent:scout", "add", {"a": 1000}))
        (other,) = await _pending(hab)
        assert other.id != approval.id
        await hab.control.approve(other.id, by="human:alice")
        assert (await second).value == 1000


async def test_a_cancelled_call_still_records_how_it_ended(hab: Habitat) -> None:
    started = asyncio.Event()

    @hab.tools.register
    async def wait_forever() -> None:
        """Waits until cancelled."""
        started.set()
        await asyncio.sleep(3600)

    call = asyncio.create_task(hab.tools.call("system", "wait_forever"))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    (failed,) = (await hab.ledger.query(kind="tool.failed")).events
    (called,) = (await hab.ledger.query(kind="tool.called")).events
    assert failed.meta["error"] == "cancelled" and failed.causes == (called.id,)
