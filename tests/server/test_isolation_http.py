"""The isolation matrix of ``tests/control/test_isolation.py``, over HTTP with a token for each role.

The same roles and the same expected answers (imported, so the two cannot drift), for the
actions the HTTP API reaches: each allowed call succeeds without a denial, each refused
call is a 403 whose JSON body names the principal, the action and the resource, with
exactly one ``policy.denied`` event appended for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from habitus import Habitat, Settings
from habitus.memory import HashEmbedder
from habitus.server import create_app
from tests.control.test_isolation import ACTIONS as LIBRARY_ACTIONS
from tests.control.test_isolation import EXPECTED, FAST, ROLES, build_app, prepare


@dataclass
class Matrix:
    hab: Habitat
    clients: dict[str, httpx.AsyncClient]  # principal -> a client with its token


@pytest.fixture
async def matrix(settings: Settings) -> AsyncIterator[Matrix]:
    """The habitat of the library's matrix (same agents, grants and suspension), served, with a token per role."""
    hab = await Habitat.init(settings.path, settings=settings)
    hab.use_embedder(HashEmbedder(dim=64))
    await hab.start(build_app(), options=FAST)
    await prepare(hab)
    app = create_app(hab)
    clients: dict[str, httpx.AsyncClient] = {}
    for principal in ROLES.values():
        _, secret = await hab.control.tokens.create(principal, name="matrix")
        clients[principal] = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://habitus.test",
            headers={"Authorization": f"Bearer {secret}"},
        )
    try:
        yield Matrix(hab, clients)
    finally:
        for client in clients.values():
            await client.aclose()
        await hab.close()


async def _erase(hab: Habitat, client: httpx.AsyncClient) -> httpx.Response:
    record = await hab.memory("scout").remember("a note to be erased")
    return await client.delete(f"/v1/agents/scout/memories/{record.id}", params={"reason": "matrix"})


Attempt = Callable[[Habitat, httpx.AsyncClient], Awaitable[httpx.Response]]

HTTP_ACTIONS: dict[str, Attempt] = {
    "send": lambda h, c: c.post("/v1/messages", json={"to": "scout", "body": "hello"}),
    "request": lambda h, c: c.post(
        "/v1/requests", json={"to": "scout", "body": "hello", "type": "ping", "timeout": 10}
    ),
    "read state": lambda h, c: c.get("/v1/agents/scout/state"),
    "remember": lambda h, c: c.post("/v1/agents/scout/memories", json={"text": "planted"}),
    "recall": lambda h, c: c.post("/v1/agents/scout/recall", json={"query": "north gate"}),
    "read facts": lambda h, c: c.get("/v1/agents/scout/facts", params={"subject": "north gate"}),
    "erase": _erase,
}

_COLUMNS = list(LIBRARY_ACTIONS)
CASES = [
    pytest.param(
        role,
        action,
        row[_COLUMNS.index(action)],
        id=f"{role}-{action}-{'allow' if row[_COLUMNS.index(action)] else 'deny'}",
    )
    for role, row in EXPECTED.items()
    for action in HTTP_ACTIONS
]


def test_the_http_matrix_covers_every_library_action_the_api_reaches() -> None:
    assert set(HTTP_ACTIONS) <= set(LIBRARY_ACTIONS)
    assert set(LIBRARY_ACTIONS) - set(HTTP_ACTIONS) == {"call tool", "use model"}  # no HTTP route for these


@pytest.mark.parametrize(("role", "action", "allowed"), CASES)
async def test_isolation_matrix_over_http(matrix: Matrix, role: str, action: str, allowed: bool) -> None:
    hab = matrix.hab
    principal = ROLES[role]
    checked_action = LIBRARY_ACTIONS[action][0]
    before = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
    response = await HTTP_ACTIONS[action](hab, matrix.clients[principal])
    after = (await hab.ledger.query(kind="policy.denied", limit=1000)).events
    if allowed:
        assert 200 <= response.status_code < 300, response.text
        assert after == before, f"{principal} was allowed to {action} but a denial was recorded"
        return
    assert response.status_code == 403, response.text
    body = response.json()
    expected_error = "ScopeDeniedError" if checked_action.startswith("memory:") else "PolicyDeniedError"
    assert body["error"] == expected_error
    assert len(after) == len(before) + 1, "a denial must append exactly one policy.denied event"
    denial = after[-1]
    assert denial.meta["principal"] == principal and denial.meta["action"] == checked_action
    assert denial.meta["reason"]
    for part in (principal, checked_action, str(denial.meta["resource"])):
        assert part in body["message"], (part, body)


async def test_what_the_allowed_calls_did_is_recorded_as_the_caller(matrix: Matrix) -> None:
    """The granted agent's write over HTTP landed in scout's memory as agent:friend, and recall finds it."""
    hab = matrix.hab
    friend = matrix.clients["agent:friend"]
    planted = (await friend.post("/v1/agents/scout/memories", json={"text": "friend was here"})).json()
    event = await hab.ledger.get(planted["id"])
    assert event.actor == "agent:friend" and event.meta["agent"] == "scout" and event.meta["scope"] == "agent:scout"
    hits = (await friend.post("/v1/agents/scout/recall", json={"query": "who was here"})).json()["hits"]
    assert any(h["record"]["id"] == planted["id"] for h in hits)
    sent = (await friend.post("/v1/messages", json={"to": "scout", "body": "from a friend"})).json()
    assert sent["actor"] == "agent:friend" and sent["meta"]["to"] == "agent:scout"
