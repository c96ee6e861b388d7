"""The ledger over HTTP: each principal sees its own events and its agents', nothing else leaks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from habitus import Habitat
from habitus._acting_read import HIDDEN
from habitus.errors import EventNotFoundError, PolicyDeniedError
from habitus.ledger import Event, InclusionProof, Page, Subgraph, verify_inclusion
from habitus.server._routes import _events
from tests.server.conftest import Served


async def _scene(hab: Habitat) -> dict[str, Event]:
    """Alice's scout hears from her, remembers, keeps state; bob talks to his rival; rival acts on scout's memory."""
    told = await hab.acting_as("human:alice").send("scout", "look north")
    memory = await hab.acting_as("agent:scout").memory().remember("the gate is north")
    (remembered,) = (await hab.ledger.query(kind="memory.remembered")).events
    assert remembered.id == memory.id
    async with hab.ledger.transaction() as tx:
        hab.agents.stage_state(tx, "scout", "mood", "curious", actor="agent:scout")
    (state,) = (await hab.ledger.query(kind="agent.state_set")).events
    to_rival = await hab.acting_as("human:bob").send("rival", "guard the gate")
    # Rival's decision cites scout's memory (the operator wires it: the reader is what is tested).
    decided = await hab.ledger.append(
        "decision.made", actor="agent:rival", meta={"action": "guard"}, causes=[remembered, to_rival]
    )
    return {"told": told, "memory": remembered, "state": state, "to_rival": to_rival, "decided": decided}


async def _get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def _all(client: httpx.AsyncClient, **params: Any) -> list[Event]:
    """Every event a client may see, one page at a time, following the cursor."""
    events: list[Event] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor is not None else {})}
        page = Page.model_validate(await _get(client, "/v1/events", **query))
        events += page.events
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


async def test_each_principal_sees_its_own_and_its_agents_events(served: Served) -> None:
    scene = await _scene(served.hab)
    everything = (await served.hab.ledger.query(limit=1000)).events
    async with served.client("human:alice") as alice, served.client("human:bob") as bob:
        seen_by_alice = {e.id for e in await _all(alice)}
        seen_by_bob = {e.id for e in await _all(bob)}
        async with served.client("agent:scout") as scout:
            seen_by_scout = {e.id for e in await _all(scout)}
    # Alice: her message, her agents' memory and state; not bob's message to rival, nor rival's decision.
    assert {scene["told"].id, scene["memory"].id, scene["state"].id} <= seen_by_alice
    assert scene["to_rival"].id not in seen_by_alice and scene["decided"].id not in seen_by_alice
    # Bob: his message and his agent's decision; nothing of scout's memory or state.
    assert {scene["to_rival"].id, scene["decided"].id} <= seen_by_bob
    assert not {scene["told"].id, scene["memory"].id, scene["state"].id} & seen_by_bob
    # Scout: what it did and what was sent to it; nothing of buddy's, rival's or bob's.
    assert {scene["told"].id, scene["memory"].id, scene["state"].id} <= seen_by_scout
    assert not {scene["to_rival"].id, scene["decided"].id} & seen_by_scout
    # The rule, checked against the whole ledger for bob: his own, about his agent, or by it.
    expected_bob = {
        e.id
        for e in everything
        if e.actor in ("human:bob", "agent:rival")
        or e.meta.get("to") == "agent:rival"
        or e.meta.get("agent") == "rival"
        or e.meta.get("principal") in ("human:bob", "agent:rival")
    }
    assert seen_by_bob == expected_bob


async def test_an_event_one_may_not_see_is_not_found_like_one_that_does_not_exist(served: Served) -> None:
    scene = await _scene(served.hab)
    before = await served.hab.ledger.count()
    async with served.client("human:bob") as bob, served.client("human:alice") as alice:
        hidden = await bob.get(f"/v1/events/{scene['memory'].id}")
        missing = await bob.get(f"/v1/events/{uuid.uuid4()}")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == missing.json()["error"] == "EventNotFoundError"
        assert hidden.json()["message"].replace(str(scene["memory"].id), "?") == missing.json()["message"].replace(
            missing.json()["message"].split("'")[1], "?"
        )
        for suffix in ("/why", "/effects", "/proof"):
            assert (await bob.get(f"/v1/events/{scene['memory'].id}{suffix}")).status_code == 404
        mine = Event.model_validate(await _get(alice, f"/v1/events/{scene['memory'].id}"))
        assert mine == scene["memory"] and mine.content == "the gate is north"
        for bad in ("not-a-uuid", "12", "%20"):
            response = await bob.get(f"/v1/events/{bad}")
            assert response.status_code == 422 and response.json()["error"] == "InvalidRequestError", bad
    assert await served.hab.ledger.count() == before  # reading leaves no trace, refused or not


async def test_why_shows_causes_one_may_not_see_redacted(served: Served) -> None:
    scene = await _scene(served.hab)
    memory = scene["memory"]
    async with served.client("human:bob") as bob, served.client("human:alice") as alice:
        graph = Subgraph.model_validate(await _get(bob, f"/v1/events/{scene['decided'].id}/why"))
        # Alice may not see the decision (rival is bob's), so she cannot walk from it.
        assert (await alice.get(f"/v1/events/{scene['decided'].id}/why")).status_code == 404
    nodes = {n.id: n for n in graph.nodes}
    assert set(nodes) == {scene["decided"].id, memory.id, scene["to_rival"].id}
    assert {(e.cause, e.effect) for e in graph.edges} == {
        (memory.id, scene["decided"].id),
        (scene["to_rival"].id, scene["decided"].id),
    }
    shown = nodes[memory.id]
    assert (shown.seq, shown.ts, shown.kind) == (memory.seq, memory.ts, memory.kind)
    assert shown.actor == HIDDEN and shown.meta == {} and shown.content is None
    assert shown.thread is None and shown.digest is None and shown.content_type is None
    assert "the gate is north" not in json.dumps(graph.model_dump(mode="json"))
    assert nodes[scene["to_rival"].id] == scene["to_rival"]  # what bob may see is whole
    assert {o.id for o in graph.origins()} == {memory.id, scene["to_rival"].id}


async def test_why_from_an_event_alice_sees_keeps_her_view_whole(served: Served) -> None:
    scene = await _scene(served.hab)
    async with served.client("human:alice") as alice:
        effects = Subgraph.model_validate(await _get(alice, f"/v1/events/{scene['memory'].id}/effects"))
    nodes = {n.id: n for n in effects.nodes}
    assert nodes[scene["memory"].id] == scene["memory"]
    decided = nodes[scene["decided"].id]  # bob's agent's decision, which alice may not see
    assert decided.actor == HIDDEN and decided.meta == {} and decided.kind == "decision.made"
    assert decided.causes == (scene["memory"].id,)  # only causes inside the graph: to_rival stays unnamed


async def test_an_auditor_granted_ledger_read_sees_everything(served: Served) -> None:
    hab = served.hab
    await _scene(hab)
    _, secret = await hab.control.tokens.create("human:auditor")
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=served.app), base_url="http://habitus.test", headers=headers
    ) as auditor:
        (token,) = await _all(auditor)  # by default, only what is about itself: its token's creation
        assert token.kind == "token.created" and token.meta["principal"] == "human:auditor"
        await hab.control.grant("human:auditor", "ledger:read", "*")
        everything = (await hab.ledger.query(limit=1000)).events
        seen = await _all(auditor)
        # Memories also need memory:read on their scope: reading the ledger is not reading minds.
        assert seen == [e for e in everything if not e.kind.startswith("memory.")]
        await hab.control.grant("human:auditor", "memory:read", "*")
        assert await _all(auditor) == (await hab.ledger.query(limit=1000)).events


async def test_pages_under_filtering_hold_every_visible_event_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    hab = served.hab
    for i in range(40):
        await hab.ledger.append("note.recorded", actor="human:alice" if i % 3 else "human:bob", content=f"note {i}")
    everything = (await hab.ledger.query(limit=1000)).events
    bobs_notes = [e for e in everything if e.kind == "note.recorded" and e.actor == "human:bob"]
    async with served.client("human:bob") as bob:
        whole = Page.model_validate(await _get(bob, "/v1/events", limit=1000))
        assert whole.next_cursor is None
        for limit in (1, 3, 7):
            assert await _all(bob, limit=limit) == whole.events
            newest_first = await _all(bob, limit=limit, order="desc")
            assert newest_first == whole.events[::-1]
            assert await _all(bob, limit=limit, kind="note.recorded") == bobs_notes
        # A full last page says there is no more only when there is none.
        exact = Page.model_validate(await _get(bob, "/v1/events", kind="note.recorded", limit=len(bobs_notes)))
        assert exact.events == bobs_notes and exact.next_cursor is None
        short = Page.model_validate(await _get(bob, "/v1/events", kind="note.recorded", limit=len(bobs_notes) - 1))
        assert short.next_cursor == bobs_notes[-2].seq
        # A call that stops reading early returns a short page and a cursor; following it misses nothing.
        monkeypatch.setattr("habitus._acting_read._SCAN_MAX", 5)
        assert await _all(bob, limit=4) == whole.events
        since = await bob.get("/v1/events", params={"since": "2026-01-01T00:00:00+00:00", "kind": "note.recorded"})
        assert Page.model_validate(since.json()).events == bobs_notes[:100]
        bad_params: list[dict[str, Any]] = [
            {"since": "2026-01-01T00:00:00"},  # no offset: which time is it?
            {"until": "1700000000"},
            {"limit": 0},
            {"limit": 1001},
            {"order": "sideways"},
            {"cursor": -1},
            {"cursor": 2**70},
            {"limit": [2, 3]},  # given twice
        ]
        for params in bad_params:
            bad = await bob.get("/v1/events", params=params)
            assert bad.status_code == 422 and bad.json()["error"] == "InvalidRequestError", params
        assert "RFC 3339" in (await bob.get("/v1/events", params=bad_params[0])).json()["message"]
        unknown = await bob.get("/v1/events", params={"kind": "no.such"})
        assert unknown.status_code == 422 and unknown.json()["error"] == "UnknownKindError"


async def test_verify_checkpoints_and_proofs(served: Served) -> None:
    hab = served.hab
    scene = await _scene(hab)
    checkpoint = await hab.ledger.checkpoint()
    async with served.client("human:bob") as bob:
        report = await _get(bob, "/v1/verify")
        assert report["ok"] is True and report["events"] == await hab.ledger.count() and report["problems"] == []
        listed = await _get(bob, "/v1/checkpoints")
        assert listed == [c.model_dump(mode="json") for c in await hab.ledger.checkpoints()]
        assert listed[-1] == checkpoint.model_dump(mode="json")
        proof = InclusionProof.model_validate(await _get(bob, f"/v1/events/{scene['to_rival'].id}/proof"))
        assert proof.seq == scene["to_rival"].seq and proof.tree_size == await hab.ledger.count()
        index = proof.seq - 1
        path = [bytes.fromhex(p) for p in proof.path]
        assert verify_inclusion(bytes.fromhex(proof.leaf), index, proof.tree_size, path, bytes.fromhex(proof.root))
        older = InclusionProof.model_validate(
            await _get(bob, f"/v1/events/{scene['to_rival'].id}/proof", tree_size=checkpoint.tree_size)
        )
        assert older.root == checkpoint.root
        too_small = await bob.get(f"/v1/events/{scene['to_rival'].id}/proof", params={"tree_size": 1})
        assert too_small.status_code == 400
        assert (await bob.get(f"/v1/events/{scene['memory'].id}/proof")).status_code == 404


async def test_a_suspended_agent_reads_nothing(served: Served) -> None:
    await served.hab.agents.suspend("scout")
    async with served.client("agent:scout") as scout:
        for url in ("/v1/events", "/v1/verify", "/v1/stream"):
            refused = await scout.get(url)
            assert refused.status_code == 403 and refused.json()["error"] == "PolicyDeniedError", url
            assert "suspended" in refused.json()["message"]


# -- the live stream, over a real server (an in-process ASGI transport cannot stream forever) ---------


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):  # open streams must not hold the server up
            await task


async def _read(lines: AsyncIterator[str], count: int) -> list[dict[str, str]]:
    """The next ``count`` messages of a Server-Sent Events response's lines (comments skipped)."""
    messages: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(10):
        async for line in lines:
            if line == "":
                if fields:
                    messages.append(fields)
                    fields = {}
                    if len(messages) == count:
                        return messages
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    raise AssertionError(f"the stream ended after {len(messages)} of {count} messages")


async def _streams_closed(app: FastAPI) -> None:
    async with asyncio.timeout(10):
        while _events._streams(app).open:
            await asyncio.sleep(0.02)


async def test_the_stream_sends_visible_events_as_they_commit_and_resumes(served: Served) -> None:
    hab, app = served.hab, served.app
    scene = await _scene(hab)
    auth = {"Authorization": f"Bearer {served.tokens['human:bob']}"}
    async with _running(app) as url, httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as bob:
        expected = await _all(bob)
        async with bob.stream("GET", "/v1/stream", params={"after": 0}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            backlog = await _read(lines, len(expected))
            assert [Event.model_validate_json(m["data"]) for m in backlog] == expected
            assert [(m["event"], m["id"]) for m in backlog] == [(e.kind, str(e.seq)) for e in expected]
            # Live: alice's note is not bob's to see; his own note comes through.
            await hab.ledger.append("note.recorded", actor="human:alice", content="private")
            mine = await hab.ledger.append("note.recorded", actor="human:bob", content="public")
            (live,) = await _read(lines, 1)
            assert live["id"] == str(mine.seq) and Event.model_validate_json(live["data"]) == mine
        await _streams_closed(app)  # the client went away: the stream stopped reading
        # A browser reconnecting sends Last-Event-ID: the stream goes on after it.
        resume = {"Last-Event-ID": str(scene["to_rival"].seq)}
        async with bob.stream("GET", "/v1/stream", headers=resume) as response:
            after = [e for e in expected if e.seq > scene["to_rival"].seq] + [mine]
            assert [m["id"] for m in await _read(response.aiter_lines(), len(after))] == [str(e.seq) for e in after]
        await _streams_closed(app)
        bad = await bob.get("/v1/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and bad.json()["error"] == "InvalidRequestError"


async def test_stopping_the_streams_ends_them_so_the_server_can_shut_down(served: Served) -> None:
    app = served.app
    auth = {"Authorization": f"Bearer {served.tokens['human:alice']}"}
    async with _running(app) as url, httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as alice:
        async with alice.stream("GET", "/v1/stream") as response:
            assert response.status_code == 200
            await asyncio.sleep(0.1)
            assert _events._streams(app).open == 1
            _events.stop_streams(app)
            async with asyncio.timeout(5):
                remaining = [line async for line in response.aiter_lines()]
            assert all(line == "" or line.startswith(":") for line in remaining)
        await _streams_closed(app)
    # _running's exit waited for the server to stop: nothing held it.


async def test_acting_tail_yields_only_visible_events(served: Served) -> None:
    hab = served.hab
    bob = hab.acting_as("human:bob")
    got: list[Event] = []

    async def follow() -> None:
        async for event in bob.tail():
            got.append(event)
            if len(got) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await hab.acting_as("human:alice").send("scout", "secret")
    first = await bob.send("rival", "hello")
    await hab.ledger.append("note.recorded", actor="human:alice", content="also secret")
    second = await hab.ledger.append("note.recorded", actor="agent:rival", content="seen")
    async with asyncio.timeout(5):
        await task
    assert got == [first, second]


async def test_the_stream_ends_when_the_habitat_closes(served: Served) -> None:
    hab, app = served.hab, served.app
    auth = {"Authorization": f"Bearer {served.tokens['human:alice']}"}
    async with _running(app) as url, httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as alice:
        async with alice.stream("GET", "/v1/stream") as response:
            assert response.status_code == 200
            await asyncio.sleep(0.1)
            await hab.close()
            async with asyncio.timeout(5):
                remaining = [line async for line in response.aiter_lines()]
            assert all(line == "" or line.startswith(":") for line in remaining)
        await _streams_closed(app)


async def test_acting_for_someone_sees_only_what_both_may_see(served: Served) -> None:
    hab = served.hab
    scene = await _scene(hab)
    await hab.control.grant("human:carol", "ledger:read", "*")
    await hab.control.delegate("human:carol", "human:bob")
    carol = hab.acting_as("human:carol")
    for_bob = hab.acting_as("human:carol", on_behalf_of="human:bob")
    assert await carol.event(scene["told"].id) == scene["told"]
    with pytest.raises(EventNotFoundError):
        await for_bob.event(scene["told"].id)  # carol may read it, bob may not: not for bob
    bobs = (await hab.acting_as("human:bob").events(limit=1000)).events
    assert (await for_bob.events(limit=1000)).events == [e for e in bobs if carol.can_see(e)]
    with pytest.raises(PolicyDeniedError):
        await hab.acting_as("human:dave", on_behalf_of="human:bob").events()  # bob never delegated to dave
