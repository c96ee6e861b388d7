"""Capabilities beyond the matrix: widening, delegation, crafted scopes and ids, revocation, configuration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions
from habitus.control import ControlConfig, GrantRule
from habitus.control._config import BudgetRule, RuleRef
from habitus.errors import InvalidRequestError, PolicyDeniedError, ScopeDeniedError
from habitus.memory import HashEmbedder

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)


def build_app() -> App:
    app = App("policy")

    @app.behaviour
    class Worker(Agent):
        @handles("forge")
        async def forge(self, msg: Message) -> None:
            self.ctx.emit("capability.granted", meta={"subject": self.ctx.principal, "action": "*", "resource": "*"})

        async def on_message(self, msg: Message) -> None:
            self.ctx.emit("note.recorded", content=f"handled {msg.body}")

    for agent, owner in [("scout", "human:alice"), ("buddy", "human:alice"), ("rival", "human:bob")]:
        app.agent(agent, "Worker", owner=owner)
    app.agent("deputy", "Worker", owner="service:desk")
    return app


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=64))
    for agent, owner in [("scout", "human:alice"), ("buddy", "human:alice"), ("rival", "human:bob")]:
        await h.agents.spawn(agent, behaviour="Worker", owner=owner)
    await h.agents.spawn("deputy", behaviour="Worker", owner="service:desk")
    try:
        yield h
    finally:
        await h.close()


async def _denials(hab: Habitat) -> list[tuple[str, str, str]]:
    events = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
    return [(str(e.meta["principal"]), str(e.meta["action"]), str(e.meta["resource"])) for e in events]


async def test_nobody_widens_their_own_capabilities(hab: Habitat) -> None:
    buddy = hab.acting_as("agent:buddy")
    with pytest.raises(PolicyDeniedError, match="nobody widens their own capabilities"):
        await buddy.grant("agent:buddy", "memory:read", "scope:agent:scout")
    with pytest.raises(PolicyDeniedError, match="does not hold memory:read scope:agent:scout"):
        await buddy.grant("agent:rival", "memory:read", "scope:agent:scout")  # not its to give
    with pytest.raises(PolicyDeniedError, match="does not hold"):
        await hab.acting_as("human:alice").grant("agent:buddy", "message:send", "agent:*")  # wider than she holds
    with pytest.raises(PolicyDeniedError, match="only Habitus appends"):
        await buddy.append("capability.granted", meta={"subject": "agent:buddy", "action": "*", "resource": "*"})
    assert hab.control.capabilities() == []
    assert [d[:2] for d in await _denials(hab)] == [
        ("agent:buddy", "capability:grant"),
        ("agent:buddy", "capability:grant"),
        ("human:alice", "capability:grant"),
        ("agent:buddy", "ledger:append"),
    ]
    # scope:self is the subject's own scope: scout cannot give buddy a right over buddy's memory
    with pytest.raises(PolicyDeniedError, match="does not hold memory:read scope:self"):
        await hab.acting_as("agent:scout").grant("agent:buddy", "memory:read", "scope:self")
    # what one holds, one may pass on: attenuation, not prohibition
    await hab.memory("scout").remember("scout saw a fox")
    granted = await hab.acting_as("agent:scout").grant("agent:buddy", "memory:read", "scope:agent:scout")
    assert granted.granted_by == "agent:scout"
    hits = await hab.acting_as("agent:buddy").memory("scout").recall("what did scout see")
    assert hits[0].record.text == "scout saw a fox"
    with pytest.raises(ScopeDeniedError):  # reading is not writing
        await hab.acting_as("agent:buddy").memory("scout").remember("buddy was here")


async def test_an_agent_cannot_forge_policy_events_from_a_handler(hab: Habitat) -> None:
    runtime = await hab.start(build_app(), options=FAST)
    await hab.messages.send("scout", "x", sender="human:alice", type="forge")
    for _ in range(500):
        if (await hab.ledger.query(kind="message.dead_lettered")).events:
            break
        await asyncio.sleep(0.02)
    (dead,) = (await hab.ledger.query(kind="message.dead_lettered")).events
    assert "PolicyDeniedError" in str(dead.meta["error"]) and "capability.granted" in str(dead.meta["error"])
    assert ("agent:scout", "ledger:append", "kind:capability.granted") in await _denials(hab)
    assert hab.control.capabilities() == []
    await runtime.stop()


async def test_acting_for_someone_needs_their_delegation_and_never_adds_rights(hab: Habitat) -> None:
    await hab.control.grant("agent:deputy", "memory:read", "scope:group:vault")
    await hab.control.grant("human:alice", "memory:read", "scope:group:vault")
    await hab.control.grant("agent:deputy", "memory:write", "scope:group:vault")
    await hab.memory("deputy").remember("the vault code is 0451", scope="group:vault")

    # without a delegation, claiming to act for alice is refused
    with pytest.raises(PolicyDeniedError, match="human:alice has not delegated to agent:deputy"):
        await hab.acting_as("agent:deputy", on_behalf_of="human:alice").memory("deputy").recall("vault code")
    # bob delegates, but bob may not read the vault: the deputy acting for him may not either
    await hab.control.delegate("agent:deputy", "human:bob")
    for_bob = hab.acting_as("agent:deputy", on_behalf_of="human:bob")
    with pytest.raises(ScopeDeniedError, match="acting for human:bob"):
        await for_bob.memory("deputy").recall("vault code", scope="group:vault")
    # alice delegates and may read it: now it works, for her
    await hab.acting_as("human:alice").grant("agent:deputy", "principal:act", "human:alice")
    for_alice = hab.acting_as("agent:deputy", on_behalf_of="human:alice")
    hits = await for_alice.memory("deputy").recall("vault code", scope="group:vault")
    assert hits[0].record.text == "the vault code is 0451"
    # alice may not delegate on bob's behalf
    with pytest.raises(PolicyDeniedError):
        await hab.acting_as("human:alice").grant("agent:rival", "principal:act", "human:bob")


async def test_messages_sent_for_someone_say_so(hab: Habitat) -> None:
    await hab.control.delegate("agent:buddy", "human:alice")
    sent = await hab.acting_as("agent:buddy", on_behalf_of="human:alice").send("scout", "from alice, via buddy")
    assert sent.actor == "agent:buddy" and sent.meta["on_behalf_of"] == "human:alice"


async def test_crafted_scopes_and_ids_do_not_reach_other_memory(hab: Habitat) -> None:
    secret = await hab.memory("scout").remember("scout's secret: the key is under the mat")
    rival = hab.memory("rival")
    with pytest.raises(ScopeDeniedError):
        await rival.get(secret.id)  # an id learned somehow
    with pytest.raises(ScopeDeniedError):
        await rival.forget(secret.id, reason="cover tracks")
    with pytest.raises(ScopeDeniedError):
        await rival.recall("key", scope="agent:scout")
    with pytest.raises(ScopeDeniedError):
        await rival.facts(scope="agent:scout")
    for crafted in ("agent:scout/../rival", "group:*", "scope:agent:scout", "agent:*", "public' OR 1=1"):
        with pytest.raises((InvalidRequestError, ScopeDeniedError)):
            await rival.recall("key", scope=crafted)
    assert all(h.record.id != secret.id for h in await rival.recall("where is the key"))
    assert all(h.record.id != secret.id for h in await hab.acting_as("human:bob").memory("rival").recall("key"))
    assert (await hab.memory("scout").get(secret.id)).text.startswith("scout's secret")


async def test_a_revoked_capability_stops_mail_already_queued(hab: Habitat) -> None:
    cap = await hab.acting_as("human:alice").grant("human:bob", "message:send", "agent:scout")
    await hab.acting_as("human:bob").send("scout", "queued while allowed")
    await hab.control.revoke(cap.id, by="human:alice")
    with pytest.raises(PolicyDeniedError):
        await hab.acting_as("human:bob").send("scout", "after the revocation")
    runtime = await hab.start(build_app(), options=FAST)
    for _ in range(500):
        if (await hab.ledger.query(kind="message.dead_lettered")).events:
            break
        await asyncio.sleep(0.02)
    (dead,) = (await hab.ledger.query(kind="message.dead_lettered")).events
    assert "refused by policy" in str(dead.meta["error"])
    assert not [e for e in (await hab.ledger.query(kind="note.recorded")).events if "queued" in str(e.content)]
    await runtime.stop()
    with pytest.raises(PolicyDeniedError, match="it was granted by human:alice"):
        await hab.control.revoke(
            (await hab.acting_as("human:alice").grant("agent:rival", "message:send", "agent:scout")).id, by="human:bob"
        )


async def test_capabilities_can_lapse(hab: Habitat) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    await hab.control.grant("human:bob", "message:send", "agent:scout", until=soon)
    await hab.acting_as("human:bob").send("scout", "in time")
    await asyncio.sleep(0.4)
    with pytest.raises(PolicyDeniedError):
        await hab.acting_as("human:bob").send("scout", "too late")
    with pytest.raises(InvalidRequestError, match="future"):
        await hab.control.grant("human:bob", "message:send", "agent:scout", until=datetime.now(UTC) - timedelta(1))


async def test_bad_grants_are_refused_with_the_value_named(hab: Habitat) -> None:
    with pytest.raises(InvalidRequestError, match="'bob'"):
        await hab.control.grant("bob", "message:send", "agent:scout")
    with pytest.raises(InvalidRequestError, match="'send'"):
        await hab.control.grant("human:bob", "send", "agent:scout")
    with pytest.raises(InvalidRequestError, match="not a memory scope"):
        await hab.control.grant("human:bob", "memory:read", "scope:weird:thing")
    with pytest.raises(InvalidRequestError, match="no capability"):
        await hab.control.revoke("0190a0b0-0000-7000-8000-000000000000")
    assert hab.control.capabilities() == []


async def test_short_resource_names_mean_what_the_issue_says(hab: Habitat) -> None:
    tool = await hab.control.grant("agent:scout", "tool:call", "shell")
    model = await hab.control.grant("agent:scout", "model:use", "local/*")
    team = await hab.control.grant("agent:scout", "memory:read", "scope:team-a")
    assert (tool.resource, model.resource, team.resource) == ("tool:shell", "model:local/*", "scope:group:team-a")
    assert hab.control.decide("agent:scout", "model:use", "model:local/llama").allowed
    assert not hab.control.decide("agent:scout", "model:use", "model:openai/gpt").allowed
    assert hab.control.decide("agent:scout", "memory:read", "scope:group:team-a").allowed
    # and asking in the short form means the same as granting in it
    assert hab.control.decide("agent:scout", "tool:call", "shell").allowed
    assert hab.control.decide("agent:scout", "memory:read", "team-a").allowed
    assert not hab.control.decide("agent:scout", "tool:call", "python").allowed


async def test_policy_loaded_from_configuration_is_recorded_once(settings: Settings) -> None:
    config = ControlConfig(
        grants=[GrantRule(subject="agent:*", action="memory:read", resource="team-a")],
        approvals=[RuleRef(action="tool:call", resource="shell")],
        budgets=[BudgetRule(subject="human:alice", meter="messages", limit=100, period="hour")],
        trust={"source:lab-*": "trusted"},
    )
    configured = settings.model_copy(update={"control": config})
    async with await Habitat.init(configured.path, settings=configured) as hab:
        (cap,) = hab.control.capabilities()
        assert (cap.subject, cap.action, cap.resource, cap.granted_by) == (
            "agent:*", "memory:read", "scope:group:team-a", "system",
        )  # fmt: skip
        assert hab.control.approval_rules() == [("tool:call", "tool:shell")]
        assert [(b.subject, b.limit, b.period) for b in hab.control.budgets()] == [("human:alice", 100, 3600)]
        assert hab.control.trust_of("source:lab-3") == "trusted" and hab.control.trust_of("source:web") == "untrusted"
    async with await Habitat.open(configured.path, settings=configured) as hab:
        assert len(hab.control.capabilities()) == 1
        assert len(hab.control.budgets()) == 1 and hab.control.approval_rules() == [("tool:call", "tool:shell")]
    async with await Habitat.open(configured.path, settings=configured, read_only=True) as hab:
        policy = (await hab.ledger.query(kind="capability.granted")).events
        assert len(policy) == 1 and policy[0].meta["source"] == "habitus.toml"
        for kind in ("approval.required", "budget.set", "trust.labelled"):
            assert len((await hab.ledger.query(kind=kind)).events) == 1, f"{kind} recorded more than once"


def test_the_control_table_of_habitus_toml_is_read(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    file = tmp_path / "habitus.toml"
    file.write_text(
        '[control]\ngrants = [{ subject = "agent:analyst", action = "memory:read", resource = "scope:team-a" }]\n'
        'budgets = [{ subject = "human:ada", meter = "tokens", limit = 1000, period = "day" }]\n'
        '[control.trust]\n"source:web-*" = "untrusted"\n',
        encoding="utf-8",
    )
    settings = Settings.resolve(config_file=file, environ={})
    assert settings.control.grants[0].subject == "agent:analyst"
    assert settings.control.budgets[0].limit == 1000
    file.write_text('[control]\nbudgets = [{ subject = "human:ada", meter = "coins", limit = 1 }]\n')
    with pytest.raises(InvalidRequestError, match="meter"):
        Settings.resolve(config_file=file, environ={})


async def test_a_read_only_handle_sees_the_writers_policy(hab: Habitat, settings: Settings) -> None:
    async with await Habitat.open(settings.path, settings=settings, read_only=True) as reader:
        assert not reader.control.decide("human:bob", "message:send", "agent:scout").allowed
        await hab.control.grant("human:bob", "message:send", "agent:scout")
        assert reader.control.decide("human:bob", "message:send", "agent:scout").allowed


async def test_erasure_is_for_ones_own_events_and_ones_agents(hab: Habitat) -> None:
    note = await hab.acting_as("human:alice").append("note.recorded", content="alice's phone is 555-0100")
    by_scout = await hab.acting_as("agent:scout").append("note.recorded", content="scout's note")
    with pytest.raises(PolicyDeniedError, match="human:bob may not ledger:erase human:alice"):
        await hab.acting_as("human:bob").erase(note.id, reason="tidying")
    with pytest.raises(PolicyDeniedError, match="agent:rival may not ledger:erase agent:scout"):
        await hab.acting_as("agent:rival").erase(by_scout.id, reason="cover tracks")
    assert (await hab.ledger.get(note.id)).content == "alice's phone is 555-0100"
    erased = await hab.acting_as("human:alice").erase(note.id, reason="my number")
    assert (await hab.ledger.get(erased.target)).erased
    await hab.acting_as("human:alice").erase(by_scout.id, reason="her agent's note")  # an owner may
    memory = await hab.memory("scout").remember("a memory")
    with pytest.raises(InvalidRequestError, match="forget it"):
        await hab.acting_as("agent:scout").erase(memory.id, reason="wrong door")


async def test_suspending_an_agent_stops_a_handler_already_running(hab: Habitat) -> None:
    app = App("slow")
    started, release = asyncio.Event(), asyncio.Event()

    @app.behaviour
    class Slow(Agent):
        async def on_message(self, msg: Message) -> None:
            started.set()
            await release.wait()
            self.ctx.emit("note.recorded", content="after the suspension")

    app.agent("slowpoke", "Slow", owner="human:alice")
    await hab.start(app, options=FAST)
    await hab.messages.send("slowpoke", "go", sender="human:alice")
    await asyncio.wait_for(started.wait(), 10)
    await hab.agents.suspend("slowpoke", by="human:alice", reason="kill switch")
    release.set()
    for _ in range(500):
        if any(d[0] == "agent:slowpoke" for d in await _denials(hab)):
            break
        await asyncio.sleep(0.02)
    assert ("agent:slowpoke", "ledger:append", "kind:note.recorded") in await _denials(hab)
    assert (await hab.ledger.query(kind="note.recorded")).events == []
    assert hab.messages.depth("slowpoke") == 1  # kept for when it is resumed


async def test_a_delivery_in_this_process_asks_again_once_anything_a_decision_depends_on_changed(
    hab: Habitat,
) -> None:
    control, messenger = hab.control, hab.messages
    cap = await hab.acting_as("human:alice").grant("human:bob", "message:send", "agent:scout")
    allowed_at = control.epoch
    sent = await hab.acting_as("human:bob").send("scout", "queued while allowed")
    message = Message.from_event(sent)
    assert control.unchanged_since(allowed_at)
    assert await messenger.check_delivery(message, "agent:scout") is None
    await hab.control.revoke(cap.id, by="human:alice")
    assert not control.unchanged_since(allowed_at)
    refusal = await messenger.check_delivery(message, "agent:scout")
    assert refusal is not None and "human:bob may not message:send agent:scout" in refusal
    assert ("human:bob", "message:send", "agent:scout") in await _denials(hab)
    # An agent's status change, or any hook (which may answer differently each time), also asks again.
    allowed_at = control.epoch
    await hab.agents.suspend("rival")
    assert not control.unchanged_since(allowed_at)
    allowed_at = control.epoch
    hab.control.add_hook(lambda request: None)
    assert not control.unchanged_since(allowed_at) and not control.unchanged_since(control.epoch)
