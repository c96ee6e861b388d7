"""Agents, messages and approvals over HTTP: each route's answer, and its errors as JSON 4xx."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from habitus import Agent, App, Habitat, Message, handles
from habitus.agents import RuntimeOptions, SpawnSpec
from habitus.errors import ApprovalPendingError, PolicyDeniedError, UnknownAgentError
from habitus.ledger import Event
from tests.server.conftest import Served

FAST = RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05)


async def denials(hab: Habitat) -> list[Event]:
    return (await hab.ledger.query(kind="policy.denied", limit=1000)).events


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()]


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The JSON error body of a refused request, checked for its status and error name."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error and body["message"], body
    return body


# -- listing and reading agents -------------------------------------------------------------


async def test_each_principal_lists_the_agents_it_may_see(served: Served) -> None:
    async with (
        served.client("human:alice") as alice,
        served.client("human:bob") as bob,
        served.client("agent:scout") as scout,
        served.client("agent:rival") as rival,
    ):
        assert ids(await alice.get("/v1/agents")) == ["buddy", "scout"]
        assert ids(await bob.get("/v1/agents")) == ["rival"]
        assert ids(await scout.get("/v1/agents")) == ["buddy", "scout"]  # itself and its owner's other agents
        assert ids(await rival.get("/v1/agents")) == ["rival"]
        # a grant of state:read on an agent makes it visible to the grantee
        await served.hab.acting_as("human:alice").grant("agent:rival", "state:read", "agent:scout")
        assert ids(await rival.get("/v1/agents")) == ["rival", "scout"]
        assert (await rival.get("/v1/agents/scout")).json()["owner"] == "human:alice"
        # paging: the last id as 'after'
        assert ids(await alice.get("/v1/agents", params={"limit": 1})) == ["buddy"]
        assert ids(await alice.get("/v1/agents", params={"after": "buddy", "limit": 1})) == ["scout"]
        assert ids(await alice.get("/v1/agents", params={"after": "scout"})) == []
        refused(await alice.get("/v1/agents", params={"limit": 0}), 422, "InvalidRequestError")
        refused(await alice.get("/v1/agents", params={"limit": "many"}), 422, "InvalidRequestError")
        refused(await alice.get("/v1/agents", params={"after": "-bad id"}), 400, "InvalidRequestError")
    assert [a.id for a in await served.hab.acting_as("system").agents()] == ["buddy", "rival", "scout"]


async def test_listing_filters_across_many_pages_of_agents(served: Served) -> None:
    """An owner with a few agents among thousands sees exactly hers, in order, page after page."""
    hab = served.hab
    specs = [SpawnSpec(f"crowd-{i:05d}", behaviour="Worker", owner="human:bob") for i in range(4500)]
    specs += [SpawnSpec(f"crowd-{i:05d}x", behaviour="Worker", owner="human:alice") for i in (10, 2500, 4400)]
    await hab.agents.spawn_many(specs)
    async with served.client("human:alice") as alice, served.client("human:bob") as bob:
        assert ids(await alice.get("/v1/agents")) == ["buddy", "crowd-00010x", "crowd-02500x", "crowd-04400x", "scout"]
        assert ids(await alice.get("/v1/agents", params={"after": "crowd-00010x", "limit": 2})) == [
            "crowd-02500x",
            "crowd-04400x",
        ]
        seen: list[str] = []
        after: str | None = None
        while page := ids(await bob.get("/v1/agents", params={"limit": 1000, **({"after": after} if after else {})})):
            seen += page
            after = page[-1]
        assert len(seen) == 4501 and seen == sorted(seen) and "rival" in seen


async def test_an_agent_one_may_not_see_is_reported_as_missing(served: Served) -> None:
    async with served.client("human:alice") as alice, served.client("human:bob") as bob:
        info = (await alice.get("/v1/agents/scout")).json()
        assert info["id"] == "scout" and info["owner"] == "human:alice" and info["status"] == "spawned"
        hidden = refused(await bob.get("/v1/agents/scout"), 404, "UnknownAgentError")
        missing = refused(await bob.get("/v1/agents/ghost"), 404, "UnknownAgentError")
        assert hidden["message"].replace("scout", "?") == missing["message"].replace("ghost", "?")  # no probing
        refused(await alice.get("/v1/agents/-bad"), 400, "InvalidRequestError")


async def test_agent_ids_with_slashes_reach_their_routes(served: Served) -> None:
    async with served.client("human:alice") as alice:
        created = await alice.post("/v1/agents", json={"id": "team-a/scout", "behaviour": "Worker"})
        assert created.status_code == 201, created.text
        assert (await alice.get("/v1/agents/team-a/scout")).json()["id"] == "team-a/scout"
        assert (await alice.get("/v1/agents/team-a/scout/state")).json() == {}
        assert (await alice.post("/v1/agents/team-a/scout/suspend")).json()["status"] == "suspended"
        refused(await alice.get("/v1/agents/team-a/nobody/state"), 404, "UnknownAgentError")


async def test_acting_for_someone_sees_what_both_may_see(served: Served) -> None:
    hab = served.hab
    with pytest.raises(PolicyDeniedError):  # bob has not delegated to scout
        await hab.acting_as("agent:scout", on_behalf_of="human:bob").agents()
    await hab.control.delegate("agent:scout", "human:alice")
    assert [a.id for a in await hab.acting_as("agent:scout", on_behalf_of="human:alice").agents()] == ["buddy", "scout"]
    await hab.control.delegate("agent:rival", "human:alice")
    assert await hab.acting_as("agent:rival", on_behalf_of="human:alice").agents() == []  # rival's ∩ alice's
    with pytest.raises(UnknownAgentError):
        await hab.acting_as("agent:rival", on_behalf_of="human:alice").agent("scout")


async def test_a_suspended_agent_sees_nothing(served: Served) -> None:
    """The kill switch: a suspended agent's token reads no agents and no approvals, each refusal recorded."""
    hab = served.hab
    await hab.agents.suspend("scout", by="human:alice")
    async with served.client("agent:scout") as scout:
        for path in ("/v1/agents", "/v1/agents/scout", "/v1/agents/buddy", "/v1/approvals"):
            before = len(await denials(hab))
            body = refused(await scout.get(path), 403, "PolicyDeniedError")
            assert "agent:scout is suspended" in body["message"], path
            assert len(await denials(hab)) == before + 1
    async with served.client("human:alice") as alice:  # its owner still sees it, suspended
        assert (await alice.get("/v1/agents/scout")).json()["status"] == "suspended"


# -- spawning and the lifecycle -------------------------------------------------------------


async def test_a_human_spawns_an_agent_it_owns(served: Served) -> None:
    hab = served.hab
    async with served.client("human:alice") as alice, served.client("agent:scout") as scout:
        spec = {"id": "helper", "behaviour": "Worker", "name": "Helper", "labels": {"team": "a"}, "topics": ["a.*"]}
        created = await alice.post("/v1/agents", json=spec)
        assert created.status_code == 201, created.text
        info = created.json()
        assert info["owner"] == "human:alice" and info["labels"] == {"team": "a"} and info["topics"] == ["a.*"]
        assert (await hab.agents.get("helper")).owner == "human:alice"
        refused(await alice.post("/v1/agents", json=spec), 409, "AgentExistsError")
        before = len(await denials(hab))
        body = refused(
            await scout.post("/v1/agents", json={"id": "minion", "behaviour": "Worker"}), 403, "PolicyDeniedError"
        )
        assert "agent:scout" in body["message"] and "agent:spawn" in body["message"]
        assert len(await denials(hab)) == before + 1
        for bad, status in [
            ({"behaviour": "Worker"}, 422),  # no id
            ({"id": "x", "behaviour": ""}, 422),
            ({"id": "x", "behaviour": "Worker", "owner": "human:bob"}, 422),  # the owner is the caller
            ({"id": "x", "behaviour": "Worker", "labels": {"k": 3}}, 422),
            ({"id": "x", "behaviour": "Worker", "topics": ["a" * 300]}, 422),
            ({"id": "bad id", "behaviour": "Worker"}, 400),
            ({"id": "x", "behaviour": "Worker", "topics": ["not a topic"]}, 400),
        ]:
            refused(await alice.post("/v1/agents", json=bad), status, "InvalidRequestError")
        refused(
            await alice.post("/v1/agents", content=b"{not json", headers={"content-type": "application/json"}),
            422,
            "InvalidRequestError",
        )


async def test_state_is_read_by_the_owner_and_the_agent_only(served: Served) -> None:
    hab = served.hab
    async with hab.ledger.transaction() as tx:
        hab.agents.stage_state(tx, "scout", "mood", {"calm": True}, actor="agent:scout")
    async with (
        served.client("human:alice") as alice,
        served.client("agent:scout") as scout,
        served.client("human:bob") as bob,
    ):
        assert (await alice.get("/v1/agents/scout/state")).json() == {"mood": {"calm": True}}
        assert (await scout.get("/v1/agents/scout/state")).json() == {"mood": {"calm": True}}
        before = len(await denials(hab))
        body = refused(await bob.get("/v1/agents/scout/state"), 403, "PolicyDeniedError")
        assert all(part in body["message"] for part in ("human:bob", "state:read", "agent:scout"))
        assert len(await denials(hab)) == before + 1
        refused(await alice.get("/v1/agents/ghost/state"), 404, "UnknownAgentError")


async def test_the_owner_suspends_resumes_and_retires_its_agents(served: Served) -> None:
    hab = served.hab
    async with served.client("human:alice") as alice, served.client("human:bob") as bob:
        suspended = await alice.post("/v1/agents/scout/suspend", json={"reason": "kill switch"})
        assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
        event = (await hab.ledger.query(kind="agent.suspended")).events[-1]
        assert event.actor == "human:alice" and event.meta["reason"] == "kill switch"
        refused(await alice.post("/v1/agents/scout/suspend"), 400, "InvalidRequestError")  # already suspended
        assert (await alice.post("/v1/agents/scout/resume")).json()["status"] == "active"
        refused(await bob.post("/v1/agents/scout/retire"), 403, "PolicyDeniedError")
        refused(await alice.post("/v1/agents/scout/retire", json={"reason": "x" * 1001}), 422, "InvalidRequestError")
        refused(await alice.post("/v1/agents/scout/retire", json={"why": "typo"}), 422, "InvalidRequestError")
        assert (await alice.post("/v1/agents/scout/retire", json={})).json()["status"] == "retired"
        refused(await alice.post("/v1/agents/scout/resume"), 400, "InvalidRequestError")
        refused(await alice.post("/v1/agents/ghost/suspend"), 404, "UnknownAgentError")


# -- mailboxes ------------------------------------------------------------------------------


async def test_a_mailbox_shows_waiting_messages_then_dead_letters(served: Served) -> None:
    hab = served.hab
    async with (
        served.client("human:alice") as alice,
        served.client("agent:scout") as scout,
        served.client("agent:rival") as rival,
    ):
        sent = []
        for body in ({"look": "north"}, "and south"):
            response = await alice.post("/v1/messages", json={"to": "scout", "body": body, "thread": "patrol"})
            assert response.status_code == 201, response.text
            sent.append(response.json())
        mailbox = (await alice.get("/v1/agents/scout/mailbox")).json()
        assert [m["message"]["body"] for m in mailbox] == [{"look": "north"}, "and south"]
        first = mailbox[0]
        assert first["message"]["id"] == sent[0]["id"] and first["message"]["sender"] == "human:alice"
        assert first["message"]["thread"] == "patrol" and first["attempts"] == 0 and first["dead"] is False
        assert (await scout.get("/v1/agents/scout/mailbox")).json() == mailbox  # an agent reads its own
        page = (await alice.get("/v1/agents/scout/mailbox", params={"after": sent[0]["seq"], "limit": 5})).json()
        assert [m["message"]["id"] for m in page] == [sent[1]["id"]]
        before = len(await denials(hab))
        refused(await rival.get("/v1/agents/scout/mailbox"), 403, "PolicyDeniedError")
        refused(await rival.get("/v1/agents/scout/dead-letters"), 403, "PolicyDeniedError")
        assert len(await denials(hab)) == before + 2
        refused(await alice.get("/v1/agents/scout/mailbox", params={"after": -1}), 422, "InvalidRequestError")
        refused(await alice.get("/v1/agents/scout/mailbox", params={"limit": 1001}), 422, "InvalidRequestError")
        refused(await alice.get("/v1/agents/ghost/mailbox"), 404, "UnknownAgentError")
        assert (await alice.get("/v1/agents/scout/dead-letters")).json() == {
            "agent": "scout",
            "total": 0,
            "letters": [],
        }

        await alice.post("/v1/agents/scout/retire")  # its queued messages become dead letters
        assert (await alice.get("/v1/agents/scout/mailbox")).json() == []
        dead = (await alice.get("/v1/agents/scout/dead-letters", params={"limit": 1})).json()
        assert dead["total"] == 2 and len(dead["letters"]) == 1
        letter = dead["letters"][0]
        assert (
            letter["dead"] is True and letter["error"] == "agent retired" and letter["message"]["body"] == "and south"
        )
        assert len((await alice.get("/v1/agents/scout/mailbox", params={"dead": True})).json()) == 2
        refused(await alice.post("/v1/messages", json={"to": "scout", "body": "late"}), 410, "AgentRetiredError")


# -- messages and requests ------------------------------------------------------------------


async def test_send_returns_the_message_event_and_is_checked(served: Served) -> None:
    hab = served.hab
    async with served.client("agent:scout") as scout, served.client("agent:rival") as rival:
        sent = await scout.post("/v1/messages", json={"to": "agent:buddy", "body": [1, 2], "type": "note"})
        assert sent.status_code == 201, sent.text
        event = sent.json()
        assert event["kind"] == "message.sent" and event["actor"] == "agent:scout"
        assert event["meta"] == {"to": "agent:buddy", "type": "note"} and event["content"] == [1, 2]
        assert (await hab.ledger.get(event["id"])).actor == "agent:scout"
        before = len(await denials(hab))
        body = refused(await rival.post("/v1/messages", json={"to": "scout", "body": "hi"}), 403, "PolicyDeniedError")
        assert all(part in body["message"] for part in ("agent:rival", "message:send", "agent:scout"))
        assert len(await denials(hab)) == before + 1
        refused(await scout.post("/v1/messages", json={"to": "ghost", "body": "hi"}), 404, "UnknownAgentError")
        refused(await scout.post("/v1/messages", json={"to": "human:alice", "body": "hi"}), 400, "InvalidRequestError")
        refused(await scout.post("/v1/messages", json={"body": "hi"}), 422, "InvalidRequestError")
        refused(await scout.post("/v1/messages", json={"to": "buddy", "thread": ""}), 422, "InvalidRequestError")
        nan = b'{"to": "buddy", "body": NaN}'
        response = await scout.post("/v1/messages", content=nan, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500 and response.json()["error"]


async def test_a_request_returns_the_reply_or_times_out(served: Served) -> None:
    hab = served.hab
    async with served.client("human:alice") as alice:
        late = await alice.post("/v1/requests", json={"to": "scout", "body": "?", "type": "ping", "timeout": 0.2})
        refused(late, 409, "NoAppRunningError")  # no app is running yet: refused at once, nothing sent
        for timeout in (0, -1, 121):
            bad = {"to": "scout", "body": "?", "timeout": timeout}
            refused(await alice.post("/v1/requests", json=bad), 422, "InvalidRequestError")

        app = App("replies")

        @app.behaviour
        class Worker(Agent):
            @handles("ping")
            async def ping(self, msg: Message) -> None:
                await self.ctx.reply({"pong": msg.body})

        await hab.start(app, options=FAST)
        answered = await alice.post("/v1/requests", json={"to": "scout", "body": "hi", "type": "ping", "timeout": 10})
        assert answered.status_code == 200, answered.text
        reply = answered.json()
        assert reply["body"] == {"pong": "hi"} and reply["sender"] == "agent:scout" and reply["to"] == "human:alice"
        request = await hab.ledger.get(reply["in_reply_to"])
        assert request.actor == "human:alice" and request.meta["expects_reply"] is True
        async with served.client("agent:rival") as rival:
            refused(await rival.post("/v1/requests", json={"to": "scout", "type": "ping"}), 403, "PolicyDeniedError")


# -- approvals ------------------------------------------------------------------------------


async def _pending_request(hab: Habitat) -> str:
    """A request by scout to call the shell, waiting for a human (scout holds the grant, with approval)."""
    await hab.control.grant("agent:scout", "tool:call", "shell", approval=True)
    with pytest.raises(ApprovalPendingError):
        await hab.acting_as("agent:scout").authorize("tool:call", "shell", timeout=0.01)
    (pending,) = hab.control.approvals()
    return str(pending.id)


async def test_approvals_are_listed_for_who_made_or_may_decide_them(served: Served) -> None:
    request = await _pending_request(served.hab)
    async with (
        served.client("human:alice") as alice,
        served.client("agent:scout") as scout,
        served.client("human:bob") as bob,
    ):
        listed = (await alice.get("/v1/approvals")).json()
        assert [a["id"] for a in listed] == [request]
        assert listed[0]["principal"] == "agent:scout" and listed[0]["resource"] == "tool:shell"
        assert [a["id"] for a in (await scout.get("/v1/approvals")).json()] == [request]  # its own request
        assert (await bob.get("/v1/approvals")).json() == []
        assert (await alice.get("/v1/approvals/" + request)).json()["status"] == "pending"
        hidden = refused(await bob.get("/v1/approvals/" + request), 404, "EventNotFoundError")
        missing = refused(await bob.get(f"/v1/approvals/{uuid.uuid4()}"), 404, "EventNotFoundError")
        assert hidden["error"] == missing["error"]
        refused(await alice.get("/v1/approvals/not-an-id"), 422, "InvalidRequestError")
        refused(await alice.get("/v1/approvals", params={"status": "maybe"}), 422, "InvalidRequestError")
        assert (await alice.get("/v1/approvals", params={"status": "approved"})).json() == []


async def test_approving_and_rejecting_over_http(served: Served) -> None:
    hab = served.hab
    request = await _pending_request(hab)
    async with (
        served.client("human:alice") as alice,
        served.client("agent:scout") as scout,
        served.client("human:bob") as bob,
    ):
        before = len(await denials(hab))
        body = refused(await scout.post(f"/v1/approvals/{request}/approve"), 403, "PolicyDeniedError")
        assert "agent:scout" in body["message"] and "approval:decide" in body["message"]  # nobody approves their own
        refused(await bob.post(f"/v1/approvals/{request}/approve"), 403, "PolicyDeniedError")
        assert len(await denials(hab)) == before + 2
        refused(await alice.post(f"/v1/approvals/{request}/approve", json={"reason": 3}), 422, "InvalidRequestError")
        approved = await alice.post(f"/v1/approvals/{request}/approve", json={"reason": "looks safe"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved" and approved.json()["decided_by"] == "human:alice"
        assert approved.json()["reason"] == "looks safe"
        refused(await alice.post(f"/v1/approvals/{request}/reject"), 400, "InvalidRequestError")  # decided already
        assert [a["id"] for a in (await alice.get("/v1/approvals", params={"status": "all"})).json()] == [request]

        with pytest.raises(ApprovalPendingError):
            await hab.acting_as("agent:scout").authorize("tool:call", "shell", timeout=0.01)
        second = next(str(a.id) for a in hab.control.approvals())
        rejected = (await alice.post(f"/v1/approvals/{second}/reject")).json()
        assert rejected["status"] == "rejected" and rejected["reason"] is None
        statuses = [a["status"] for a in (await scout.get("/v1/approvals", params={"status": "all"})).json()]
        assert statuses == ["approved", "rejected"]
