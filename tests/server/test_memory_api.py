"""Memory over HTTP: remember, list, get, forget, recall and facts, as the caller, with JSON 4xx for bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from habitus import Habitat
from tests.server.conftest import Served


async def denials(hab: Habitat) -> int:
    return len((await hab.ledger.query(kind="policy.denied", limit=1000)).events)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error and body["message"], body
    return body


async def test_remember_list_get_and_recall(served: Served) -> None:
    hab = served.hab
    async with served.client("human:alice") as alice, served.client("agent:scout") as scout:
        note = {
            "text": "the north gate is locked at night",
            "at": "2026-05-03T21:00:00+02:00",
            "kind": "observation",
            "tags": ["gate"],
            "meta": {"speaker": "ada", "confidence": 0.9},
            "importance": 0.8,
            "ttl": 3600,
            "thread": "patrol",
        }
        record = ok(await alice.post("/v1/agents/scout/memories", json=note), 201)
        assert record["agent"] == "scout" and record["scope"] == "agent:scout" and record["kind"] == "observation"
        assert datetime.fromisoformat(record["at"]) == datetime(2026, 5, 3, 19, tzinfo=UTC)
        assert record["tags"] == ["gate"] and record["expires_at"]
        event = await hab.ledger.get(record["id"])
        assert event.actor == "human:alice" and event.meta["agent"] == "scout"  # recorded as the caller
        own = ok(
            await scout.post("/v1/agents/scout/memories", json={"text": "the well is dry", "source": [record["id"]]}),
            201,
        )
        assert own["sources"] == [record["id"]]

        listed = ok(await alice.get("/v1/agents/scout/memories"))
        assert [m["id"] for m in listed] == [record["id"], own["id"]]
        assert [m["id"] for m in ok(await alice.get("/v1/agents/scout/memories", params={"kinds": "observation"}))] == [
            record["id"]
        ]
        assert (
            ok(await alice.get("/v1/agents/scout/memories", params={"after": record["seq"], "limit": 1}))[0]["id"]
            == own["id"]
        )
        assert ok(await scout.get(f"/v1/agents/scout/memories/{record['id']}"))["text"] == note["text"]

        recalled = ok(await alice.post("/v1/agents/scout/recall", json={"query": "is the gate locked?", "k": 1}))
        (hit,) = recalled["hits"]
        assert hit["record"]["id"] == record["id"] and hit["score"] > 0 and hit["provenance"][0] == record["id"]
        assert (await hab.ledger.get(recalled["event"])).kind == "memory.recalled"
        filtered = {"query": "gate", "tags": ["gate"], "kinds": ["observation"], "trust": "trusted", "mode": "lexical"}
        assert [h["record"]["id"] for h in ok(await scout.post("/v1/agents/scout/recall", json=filtered))["hits"]] == [
            record["id"]
        ]
        window = {"query": "gate", "since": "2026-05-04T00:00:00Z", "scope": ["private"]}
        assert ok(await scout.post("/v1/agents/scout/recall", json=window))["hits"] == []


async def test_memory_is_refused_to_whoever_may_not_use_it(served: Served) -> None:
    hab = served.hab
    record = await hab.memory("scout").remember("a private note")
    async with served.client("human:bob") as bob, served.client("agent:rival") as rival:
        attempts = [
            (bob.post("/v1/agents/scout/memories", json={"text": "planted"}), "memory:write"),
            (bob.get("/v1/agents/scout/memories"), "memory:read"),
            (bob.get(f"/v1/agents/scout/memories/{record.id}"), "memory:read"),
            (rival.post("/v1/agents/scout/recall", json={"query": "note"}), "memory:read"),
            (rival.get("/v1/agents/scout/facts"), "memory:read"),
            (rival.post("/v1/agents/scout/facts", json={"subject": "s", "predicate": "p", "value": 1}), "memory:write"),
            (bob.delete(f"/v1/agents/scout/memories/{record.id}", params={"reason": "mine now"}), "memory:erase"),
        ]
        for attempt, action in attempts:
            before = await denials(hab)
            body = refused(await attempt, 403, "ScopeDeniedError")
            assert action in body["message"] and "scope:agent:scout" in body["message"]
            assert await denials(hab) == before + 1
    assert (await hab.memory("scout").get(record.id)).text == "a private note"


async def test_forget_needs_a_reason_and_erases_for_good(served: Served) -> None:
    async with served.client("human:alice") as alice:
        record = ok(await alice.post("/v1/agents/scout/memories", json={"text": "the code is 1234"}), 201)
        path = f"/v1/agents/scout/memories/{record['id']}"
        refused(await alice.delete(path), 422, "InvalidRequestError")
        refused(await alice.delete(path, params={"reason": ""}), 422, "InvalidRequestError")
        refused(await alice.delete(path, params={"reason": "   "}), 400, "InvalidRequestError")
        forgotten = ok(await alice.delete(path, params={"reason": "a secret"}))
        assert forgotten["memory"] == record["id"] and forgotten["event"] and forgotten["erasure"]
        refused(await alice.get(path), 404, "MemoryNotFoundError")
        refused(await alice.delete(path, params={"reason": "again"}), 404, "MemoryNotFoundError")
        assert ok(await alice.post("/v1/agents/scout/recall", json={"query": "the code"}))["hits"] == []
        assert (await served.hab.ledger.get(record["id"])).content is None


async def test_facts_are_asserted_superseded_and_read_in_time(served: Served) -> None:
    async with served.client("agent:scout") as scout:
        first = ok(
            await scout.post("/v1/agents/scout/facts", json={"subject": "gate", "predicate": "state", "value": "open"}),
            201,
        )
        assert first["agent"] == "scout" and first["value"] == "open" and first["superseded_at"] is None
        second = {
            "subject": "gate",
            "predicate": "state",
            "value": {"locked": True},
            "valid_from": "2026-01-01T00:00:00Z",
        }
        later = ok(await scout.post("/v1/agents/scout/facts", json=second), 201)
        current = ok(await scout.get("/v1/agents/scout/facts", params={"subject": "gate"}))
        assert {f["id"] for f in current} >= {later["id"]} and first["id"] not in {f["id"] for f in current}
        history = ok(await scout.get("/v1/agents/scout/facts", params={"subject": "gate", "history": True}))
        assert first["id"] in {f["id"] for f in history}
        then = ok(
            await scout.get("/v1/agents/scout/facts", params={"as_of": first["recorded_at"], "predicate": "state"})
        )
        assert [f["id"] for f in then] == [first["id"]]
        held = ok(await scout.get("/v1/agents/scout/facts", params={"valid_at": "2026-06-01T00:00:00+00:00"}))
        assert [f["value"] for f in held] == [{"locked": True}]
        assert ok(await scout.get("/v1/agents/scout/facts", params={"subject": "moon"})) == []
        forgotten = ok(await scout.delete(f"/v1/agents/scout/memories/{later['id']}", params={"reason": "wrong"}))
        assert forgotten["memory"] == later["id"]


async def test_bad_memory_input_is_a_4xx_that_says_what_was_wrong(served: Served) -> None:
    async with served.client("human:alice") as alice:
        remember = "/v1/agents/scout/memories"
        for body, status, where in [
            ({}, 422, "body.text"),
            ({"text": ""}, 422, "body.text"),
            ({"text": "x" * 100_001}, 422, "body.text"),
            ({"text": "x", "at": "2026-05-03T21:00:00"}, 422, "body.at"),  # naive: ambiguous
            ({"text": "x", "at": "0001-01-01T00:00:00+01:00"}, 422, "body.at"),  # before year 1 in UTC
            ({"text": "x", "at": "yesterday"}, 422, "body.at"),
            ({"text": "x", "importance": 2}, 422, "body.importance"),
            ({"text": "x", "ttl": 0}, 422, "body.ttl"),
            ({"text": "x", "ttl": 1e300}, 422, "body.ttl"),
            ({"text": "x", "tags": ["t"] * 33}, 422, "body.tags"),
            ({"text": "x", "source": ["not-a-uuid"]}, 422, "body.source.0"),
            ({"text": "x", "trust": "maybe"}, 422, "body.trust"),
            ({"text": "x", "color": "red"}, 422, "body.color"),
        ]:
            body_out = refused(await alice.post(remember, json=body), status, "InvalidRequestError")
            assert body_out["message"].startswith(where), (body, body_out)
        refused(await alice.post(remember, json={"text": "   "}), 400, "InvalidRequestError")
        refused(await alice.post(remember, json={"text": "x", "scope": "nowhere"}), 400, "InvalidRequestError")
        unknown_source = {"text": "x", "source": [str(uuid.uuid4())]}
        refused(await alice.post(remember, json=unknown_source), 422, "UnknownCauseError")
        refused(await alice.post("/v1/agents/ghost/memories", json={"text": "x"}), 404, "UnknownAgentError")
        refused(await alice.get("/v1/agents/ghost/memories"), 404, "UnknownAgentError")
        refused(await alice.get("/v1/agents/scout/memories/not-a-uuid"), 422, "InvalidRequestError")
        refused(await alice.get(f"/v1/agents/scout/memories/{uuid.uuid4()}"), 404, "MemoryNotFoundError")
        refused(await alice.get("/v1/agents/scout/memories", params={"limit": 0}), 422, "InvalidRequestError")
        refused(await alice.get("/v1/agents/scout/memories", params={"trust": "x"}), 422, "InvalidRequestError")

        recall = "/v1/agents/scout/recall"
        for body in (
            {},
            {"query": ""},
            {"query": "x", "k": 0},
            {"query": "x", "k": 1001},
            {"query": "x", "mode": "psychic"},
            {"query": "x", "since": "2026-01-01T00:00:00"},
            {"query": "x", "scope": []},
        ):
            refused(await alice.post(recall, json=body), 422, "InvalidRequestError")
        refused(await alice.post(recall, json={"query": "x", "scope": "group:nobody"}), 403, "ScopeDeniedError")

        facts = "/v1/agents/scout/facts"
        refused(await alice.post(facts, json={"subject": "s", "predicate": "p"}), 422, "InvalidRequestError")  # value
        refused(await alice.post(facts, json={"subject": "", "predicate": "p", "value": 1}), 422, "InvalidRequestError")
        backwards = {
            "subject": "s",
            "predicate": "p",
            "value": 1,
            "valid_from": "2026-02-01T00:00:00Z",
            "valid_to": "2026-01-01T00:00:00Z",
        }
        refused(await alice.post(facts, json=backwards), 400, "InvalidRequestError")
        refused(await alice.get(facts, params={"as_of": "2026-01-01T00:00:00"}), 422, "InvalidRequestError")
        refused(await alice.get(facts, params={"valid_at": "soon"}), 422, "InvalidRequestError")
