"""Tokens bound to principals: every request acts as its token's principal, or is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from habitus import Habitat, Settings
from habitus.errors import InvalidRequestError
from habitus.server import create_app
from tests.server.conftest import Served


async def test_a_request_acts_as_its_tokens_principal(served: Served) -> None:
    async with served.client("human:alice") as alice, served.client() as anonymous:
        assert (await alice.get("/v1/whoami")).json() == {"principal": "human:alice"}
        refused = await anonymous.get("/v1/whoami")
        assert refused.status_code == 401 and refused.json()["error"] == "Unauthorized"
        assert "Bearer" in refused.headers["www-authenticate"]
        assert (await anonymous.get("/v1/health")).json()["ok"] is True  # the only open route


async def test_unknown_revoked_and_expired_tokens_are_refused(served: Served) -> None:
    hab = served.hab
    async with served.client() as client:
        for bad in ("nonsense", "hab_nothere_xyz", served.tokens["human:alice"] + "x"):
            response = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code == 401, bad
        info, secret = await hab.control.tokens.create("human:carol", expires=datetime.now(UTC) + timedelta(seconds=60))
        assert (await client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})).status_code == 200
        await hab.control.tokens.revoke(info.id)
        assert (await client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})).status_code == 401
    created = (await hab.ledger.query(kind="token.created")).events
    assert all(secret not in str(e.meta) for e in created)  # only digests are kept
    with pytest.raises(InvalidRequestError):
        await hab.control.tokens.create("system")
    with pytest.raises(InvalidRequestError):
        await hab.control.tokens.create("human:dave", expires=datetime.now(UTC) - timedelta(seconds=1))


async def test_a_development_principal_is_used_only_when_turned_on(settings: Settings) -> None:
    import httpx

    async with await Habitat.init(settings.path, settings=settings) as hab:
        app = create_app(hab, dev_principal="human:dev")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/v1/whoami")).json() == {"principal": "human:dev"}


async def test_unknown_routes_and_methods_answer_json(served: Served) -> None:
    async with served.client("human:alice") as alice:
        missing = await alice.get("/v1/no-such-thing")
        assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
        wrong = await alice.delete("/v1/whoami")
        assert wrong.status_code == 405 and wrong.json()["error"] == "MethodNotAllowed"


async def test_events_are_appended_as_the_caller_and_reserved_kinds_are_refused(served: Served) -> None:
    async with served.client("agent:scout") as scout:
        made = await scout.post("/v1/events", json={"kind": "note.recorded", "content": "the gate is open"})
        assert made.status_code == 201, made.text
        event = made.json()
        assert event["actor"] == "agent:scout" and event["content"] == "the gate is open"
        forged = await scout.post(
            "/v1/events", json={"kind": "capability.granted", "meta": {"subject": "agent:scout", "action": "*"}}
        )
        assert forged.status_code == 403 and forged.json()["error"] == "PolicyDeniedError"
        for bad in ({"kind": "no.such.kind", "content": "x"}, {"kind": "note.recorded"}, {"content": "x"}):
            response = await scout.post("/v1/events", json=bad)
            assert 400 <= response.status_code < 500, (bad, response.status_code, response.text)
            assert response.json()["message"]
    stored = await served.hab.ledger.get(event["id"])
    assert stored.actor == "agent:scout"
