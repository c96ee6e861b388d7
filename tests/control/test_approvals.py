"""Approvals: an action that needs a human waits in a queue; the agent resumes or gets the refusal, across restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions
from habitus.control import Approval
from habitus.errors import ApprovalPendingError, ApprovalRejectedError, InvalidRequestError, PolicyDeniedError
from habitus.memory import HashEmbedder

FAST = RuntimeOptions(retry_base=0.05, idle_seconds=5, timer_poll=0.05)


def build_app() -> App:
    app = App("approvals")

    @app.behaviour
    class Operator(Agent):
        @handles("run")
        async def run(self, msg: Message) -> None:
            try:
                await self.ctx.authorize("tool:call", "shell", detail={"command": msg.body})
            except ApprovalRejectedError as refusal:
                self.ctx.emit("decision.made", meta={"action": "refused"}, content=str(refusal))
                return
            self.ctx.emit("note.recorded", content=f"ran {msg.body}")

    app.agent("scout", "Operator", owner="human:alice")
    return app


async def _open(settings: Settings, *, app: bool) -> Habitat:
    hab = await Habitat.open(settings.path, settings=settings, create=True)
    hab.use_embedder(HashEmbedder(dim=32))
    if app:
        await hab.start(build_app(), options=FAST)
    return hab


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def _pending(hab: Habitat) -> Approval:
    async def some() -> bool:
        return bool(hab.control.approvals())

    await _until(some)
    (approval,) = hab.control.approvals()
    return approval


async def _notes(hab: Habitat) -> list[str]:
    return [str(e.content) for e in (await hab.ledger.query(kind="note.recorded")).events]


async def _prepare(hab: Habitat) -> None:
    await hab.control.require_approval("tool:call", "shell")
    await hab.control.grant("agent:scout", "tool:call", "shell")


async def test_an_approved_action_goes_ahead_and_the_decision_is_recorded(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    try:
        await _prepare(hab)
        sent = await hab.messages.send("scout", "ls /tmp", sender="human:alice", type="run")
        approval = await _pending(hab)
        assert (approval.principal, approval.action, approval.resource) == ("agent:scout", "tool:call", "tool:shell")
        requested = await hab.ledger.get(approval.id)
        assert requested.kind == "approval.requested" and sent.id in requested.causes
        assert requested.content == {"command": "ls /tmp"}
        assert await _notes(hab) == []  # it waits
        with pytest.raises(PolicyDeniedError, match="human:bob may not approval:decide agent:scout"):
            await hab.acting_as("human:bob").approve(approval.id)
        with pytest.raises(PolicyDeniedError, match="nobody approves their own request"):
            await hab.acting_as("agent:scout").approve(approval.id)
        decided = await hab.acting_as("human:alice").approve(approval.id, reason="looks harmless")
        assert decided.status == "approved" and decided.decided_by == "human:alice"

        async def ran() -> bool:
            return await _notes(hab) == ["ran ls /tmp"]

        await _until(ran)
        (decision,) = (await hab.ledger.query(kind="approval.decided")).events
        assert decision.actor == "human:alice" and decision.meta["decision"] == "approved"
        assert decision.causes == (approval.id,)
        why = await hab.ledger.why((await hab.ledger.query(kind="note.recorded")).events[0].id)
        assert sent.id in {n.id for n in why.nodes}
        with pytest.raises(InvalidRequestError, match="already approved"):
            await hab.control.reject(approval.id, by="human:alice")
    finally:
        await hab.close()


async def test_a_rejected_action_gives_the_agent_the_refusal(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    try:
        await _prepare(hab)
        await hab.messages.send("scout", "rm -rf /", sender="human:alice", type="run")
        approval = await _pending(hab)
        await hab.control.reject(approval.id, by="human:alice", reason="no")

        async def refused() -> bool:
            return bool((await hab.ledger.query(kind="decision.made")).events)

        await _until(refused)
        (decision,) = (await hab.ledger.query(kind="decision.made")).events
        assert "human:alice rejected agent:scout tool:call tool:shell: no" in str(decision.content)
        assert await _notes(hab) == []
    finally:
        await hab.close()


async def test_approvals_survive_restarts_without_asking_twice(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    await _prepare(hab)
    await hab.messages.send("scout", "backup", sender="human:alice", type="run")
    first = await _pending(hab)
    await hab.close()  # the handler was waiting: its message stays unacknowledged

    hab = await _open(settings, app=True)  # the redelivered message finds the same request, still pending
    try:
        await asyncio.sleep(0.3)
        assert [a.id for a in hab.control.approvals()] == [first.id]
    finally:
        await hab.close()

    hab = await _open(settings, app=False)  # decided while no app runs
    try:
        await hab.control.approve(first.id, by="human:alice")
    finally:
        await hab.close()

    hab = await _open(settings, app=True)
    try:

        async def ran() -> bool:
            return await _notes(hab) == ["ran backup"]

        await _until(ran)
        assert len((await hab.ledger.query(kind="approval.requested")).events) == 1
    finally:
        await hab.close()


async def test_a_decision_left_in_the_inbox_by_another_handle_reaches_the_waiting_agent(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    try:
        await _prepare(hab)
        await hab.messages.send("scout", "uptime", sender="human:alice", type="run")
        approval = await _pending(hab)
        async with await Habitat.open(settings.path, settings=settings, read_only=True) as reader:
            assert [a.id for a in reader.control.approvals()] == [approval.id]
            reader.control.post_decision(approval.id, "approved", by="human:alice", reason="from the CLI")

        async def ran() -> bool:
            return await _notes(hab) == ["ran uptime"]

        await _until(ran)
        assert hab.control.approval(approval.id).decided_by == "human:alice"
        assert not list((settings.path / "inbox").glob("*.json"))
    finally:
        await hab.close()


async def test_a_refused_inbox_decision_is_set_aside_with_its_reason(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    try:
        await _prepare(hab)
        await hab.messages.send("scout", "date", sender="human:alice", type="run")
        approval = await _pending(hab)
        hab.control.post_decision(approval.id, "approved", by="human:mallory", reason=None)
        await hab.control.process_inbox()
        (refused,) = (settings.path / "inbox").glob("*.refused")
        assert "human:mallory may not approval:decide" in refused.read_text()
        assert hab.control.approval(approval.id).status == "pending"
    finally:
        await hab.close()


async def test_waiting_can_time_out_and_the_request_stays_queued(settings: Settings) -> None:
    hab = await _open(settings, app=False)
    try:
        await hab.agents.spawn("scout", behaviour="Operator", owner="human:alice")
        await _prepare(hab)
        with pytest.raises(ApprovalPendingError, match="still pending"):
            await hab.acting_as("agent:scout").authorize("tool:call", "shell", timeout=0.1)
        (approval,) = hab.control.approvals()
        assert approval.status == "pending"
    finally:
        await hab.close()


async def test_suspending_a_waiting_agent_stops_the_action_even_once_approved(settings: Settings) -> None:
    hab = await _open(settings, app=True)
    try:
        await _prepare(hab)
        await hab.messages.send("scout", "deploy", sender="human:alice", type="run")
        approval = await _pending(hab)
        await hab.agents.suspend("scout", by="human:alice", reason="kill switch")
        await hab.control.approve(approval.id, by="human:alice")

        async def refused() -> bool:
            events = (await hab.ledger.query(kind="policy.denied")).events
            return any(e.meta["principal"] == "agent:scout" for e in events)

        await _until(refused)
        await asyncio.sleep(0.3)
        assert await _notes(hab) == []  # nothing ran while suspended
        assert hab.messages.depth("scout") == 1  # and the mailbox is kept
        await hab.agents.resume("scout", by="human:alice")

        async def ran() -> bool:
            return await _notes(hab) == ["ran deploy"]

        await _until(ran)  # resumed, the redelivered message finds its approval
    finally:
        await hab.close()


async def test_a_rule_can_make_grants_wait_for_a_human(settings: Settings) -> None:
    hab = await _open(settings, app=False)
    try:
        await hab.agents.spawn("friend", behaviour="Operator", owner="human:bob")
        await hab.agents.spawn("scout", behaviour="Operator", owner="human:alice")
        await hab.control.require_approval("capability:grant", "*")
        granting = asyncio.create_task(
            hab.acting_as("human:alice").grant("agent:friend", "message:send", "agent:scout")
        )
        approval = await _pending(hab)
        assert approval.action == "capability:grant" and approval.resource == "agent:friend"
        assert hab.control.capabilities() == []
        await hab.control.approve(approval.id, by="system")
        cap = await granting
        assert cap.subject == "agent:friend" and cap.granted_by == "human:alice"
        await hab.control.waive_approval("capability:grant", "*")
        await hab.acting_as("human:alice").grant("agent:friend", "state:read", "agent:scout")  # no wait now
    finally:
        await hab.close()


async def test_a_rule_can_make_erasing_memories_wait_for_a_human(settings: Settings) -> None:
    hab = await _open(settings, app=False)
    try:
        await hab.agents.spawn("scout", behaviour="Operator", owner="human:alice")
        await hab.control.require_approval("memory:erase", "*")
        record = await hab.memory("scout").remember("the old gate code is 1234")
        forgetting = asyncio.create_task(hab.memory("scout").forget(record.id, reason="rotated"))
        approval = await _pending(hab)
        assert (approval.principal, approval.action, approval.resource) == (
            "agent:scout", "memory:erase", "scope:agent:scout",
        )  # fmt: skip
        assert (await hab.memory("scout").get(record.id)).text == "the old gate code is 1234"  # not yet
        await hab.acting_as("human:alice").approve(approval.id)
        await forgetting
        assert (await hab.ledger.get(record.id)).erased
    finally:
        await hab.close()


async def test_a_grant_that_wants_approval_holds_each_message_until_a_human_agrees(settings: Settings) -> None:
    hab = await _open(settings, app=False)
    try:
        await hab.agents.spawn("scout", behaviour="Operator", owner="human:alice")
        await hab.acting_as("human:alice").grant("source:gate", "message:send", "agent:scout", approval=True)
        sending = asyncio.create_task(hab.acting_as("source:gate").send("scout", "open me"))
        approval = await _pending(hab)
        assert (approval.principal, approval.action, approval.resource) == (
            "source:gate", "message:send", "agent:scout",
        )  # fmt: skip
        assert hab.messages.depth("scout") == 0  # not queued while it waits
        await hab.acting_as("human:alice").approve(approval.id)
        sent = await sending
        assert sent.meta["trust"] == "untrusted" and hab.messages.depth("scout") == 1
    finally:
        await hab.close()


async def test_two_readers_of_the_inbox_record_a_decision_once(settings: Settings) -> None:
    hab = await _open(settings, app=False)
    try:
        await hab.agents.spawn("scout", behaviour="Operator", owner="human:alice")
        await _prepare(hab)
        with pytest.raises(ApprovalPendingError):
            await hab.acting_as("agent:scout").authorize("tool:call", "shell", timeout=0.01)
        (approval,) = hab.control.approvals()
        hab.control.post_decision(approval.id, "approved", by="human:alice", reason=None)
        done = await asyncio.gather(hab.control.process_inbox(), hab.control.process_inbox())
        assert sorted(done) == [0, 1]
        assert len((await hab.ledger.query(kind="approval.decided")).events) == 1
        assert not list((settings.path / "inbox").iterdir())  # nothing refused, nothing left
        with pytest.raises(InvalidRequestError, match="decision"):
            hab.control.post_decision(approval.id, "maybe", by="human:alice", reason=None)  # type: ignore[arg-type]
    finally:
        await hab.close()
