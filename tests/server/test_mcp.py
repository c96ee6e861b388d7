"""MCP: the habitat's tools and resources through the SDK's own client, in-process, over stdio and at /mcp.

Every call acts as the caller's principal: what it records carries the caller as actor,
and what policy refuses comes back as a tool error with a ``policy.denied`` event behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent, TextResourceContents

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions
from habitus.server import create_app
from habitus.server._mcp import create_mcp_server
from tests.server.conftest import Served

TOOLS = {"remember", "recall", "forget", "facts", "send", "request", "inbox", "why", "log"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


def ok(result: CallToolResult) -> Any:
    """The structured result of a call that succeeded (a list comes back wrapped as ``result``)."""
    assert not result.is_error, result.content
    content = result.structured_content
    assert content is not None
    return content.get("result", content) if set(content) == {"result"} else content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def as_(served: Served, principal: str) -> Client:
    """An in-process client of the habitat's MCP server, acting as ``principal``."""
    return Client(create_mcp_server(served.hab, principal=principal))


async def test_the_tools_and_their_schemas_come_from_typed_signatures(served: Served) -> None:
    async with as_(served, "agent:scout") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert set(tools) == TOOLS
    remember = tools["remember"].input_schema
    assert remember["required"] == ["text"] and remember["properties"]["importance"]["maximum"] == 1
    assert tools["recall"].input_schema["properties"]["mode"]["enum"] == ["hybrid", "dense", "lexical"]
    assert "ctx" not in tools["log"].input_schema["properties"]
    assert tools["why"].output_schema is not None  # the library's own models describe the results
    assert templates == {"habitus://agents/{agent}/state", "habitus://threads/{thread}"}


async def test_memory_tools_act_as_the_caller_and_are_recorded(served: Served) -> None:
    hab = served.hab
    async with as_(served, "agent:scout") as scout:
        record = ok(await scout.call_tool("remember", {"text": "The north bridge is closed", "tags": ["roads"]}))
        assert record["agent"] == "scout" and record["scope"] == "agent:scout"
        recall = ok(await scout.call_tool("recall", {"query": "is the bridge closed?", "tags": ["roads"]}))
        assert [h["record"]["id"] for h in recall["hits"]] == [record["id"]]
        await hab.acting_as("agent:scout").memory().assert_fact("north bridge", "status", "closed")
        facts = ok(await scout.call_tool("facts", {"subject": "north bridge"}))
        assert [(f["predicate"], f["value"]) for f in facts] == [("status", "closed")]
        forgotten = ok(await scout.call_tool("forget", {"memory": record["id"], "reason": "reopened"}))
        assert forgotten["memory"] == record["id"]
        assert ok(await scout.call_tool("recall", {"query": "bridge"}))["hits"] == []
    remembered = await hab.ledger.get(record["id"])
    recalled = await hab.ledger.get(recall["event"])
    gone = await hab.ledger.get(forgotten["event"])
    assert (remembered.kind, recalled.kind, gone.kind) == ("memory.remembered", "memory.recalled", "memory.forgotten")
    assert {remembered.actor, recalled.actor, gone.actor} == {"agent:scout"}
    assert remembered.erased and recalled.causes == (remembered.id,)

    async with as_(served, "human:alice") as alice:  # the owner uses her agent's memory, as herself
        ok(await alice.call_tool("remember", {"text": "Rain tomorrow", "agent": "scout"}))
        assert "is not an agent" in error_text(await alice.call_tool("recall", {"query": "rain"}))
    mine = await hab.ledger.query(kind="memory.remembered", actor="human:alice")
    assert [e.meta["agent"] for e in mine.events] == ["scout"]


def _replying_app() -> App:
    app = App("mcp-test")

    @app.behaviour
    class Worker(Agent):
        @handles("ping")
        async def ping(self, msg: Message) -> None:
            self.ctx.state.set("pinged", msg.body)
            await self.ctx.reply({"pong": msg.body})

    return app


async def test_message_tools_and_resources_through_a_running_app(served: Served) -> None:
    hab = served.hab
    await hab.start(_replying_app(), options=RuntimeOptions(retry_base=0.01, idle_seconds=5, timer_poll=0.05))
    async with as_(served, "human:alice") as alice:
        sent = ok(await alice.call_tool("send", {"to": "buddy", "body": {"note": "hello"}, "thread": "t1"}))
        assert (sent["kind"], sent["actor"], sent["meta"]["to"]) == ("message.sent", "human:alice", "agent:buddy")
        reply = ok(
            await alice.call_tool(
                "request", {"to": "scout", "body": "hi", "type": "ping", "timeout": 5, "thread": "t1"}
            )
        )
        assert (reply["sender"], reply["body"], reply["to"]) == ("agent:scout", {"pong": "hi"}, "human:alice")
        inbox = ok(await alice.call_tool("inbox", {}))
        assert [m["id"] for m in inbox] == [reply["id"]]  # a person's inbox: the replies sent to her
        graph = ok(await alice.call_tool("why", {"event": reply["id"]}))
        request = reply["in_reply_to"]
        assert {n["id"] for n in graph["nodes"]} >= {reply["id"], request}
        assert {"cause": request, "effect": reply["id"]} in graph["edges"]
        page = ok(await alice.call_tool("log", {"kind": "message.sent", "limit": 2}))
        assert [e["id"] for e in page["events"]] == [reply["id"], request]  # newest first
        assert page["next_cursor"] is not None
        state = await alice.read_resource("habitus://agents/scout/state")
        thread = await alice.read_resource("habitus://threads/t1")
    assert isinstance(state.contents[0], TextResourceContents) and json.loads(state.contents[0].text) == {
        "pinged": "hi"
    }
    assert isinstance(thread.contents[0], TextResourceContents)
    in_thread = json.loads(thread.contents[0].text)["events"]
    assert [e["id"] for e in in_thread if e["kind"] == "message.sent"] == [sent["id"], request, reply["id"]]
    assert (await hab.ledger.get(request)).actor == "human:alice"


async def test_an_agents_inbox_is_its_mailbox(served: Served) -> None:
    async with as_(served, "human:alice") as alice:
        ok(await alice.call_tool("send", {"to": "scout", "body": "first"}))
        ok(await alice.call_tool("send", {"to": "scout", "body": "second"}))
        assert [m["body"] for m in ok(await alice.call_tool("inbox", {"agent": "scout"}))] == ["first", "second"]
    async with as_(served, "agent:scout") as scout:
        mailbox = ok(await scout.call_tool("inbox", {"limit": 1}))
    assert [(m["body"], m["sender"]) for m in mailbox] == [("first", "human:alice")]


async def test_a_refusal_is_a_tool_error_and_a_policy_denied_event(served: Served) -> None:
    hab = served.hab
    await hab.acting_as("agent:scout").memory().remember("alice's door code is 4711")
    async with as_(served, "human:bob") as bob:
        denied = await bob.call_tool("recall", {"query": "door code", "agent": "scout"})
        assert "ScopeDeniedError" in error_text(denied) and "4711" not in error_text(denied)
        refused = await bob.call_tool("send", {"to": "scout", "body": "let me in"})
        assert "PolicyDeniedError" in error_text(refused)
        with pytest.raises(MCPError, match="PolicyDeniedError"):
            await bob.read_resource("habitus://agents/scout/state")
        missing = await bob.call_tool("why", {"event": "01a21d5a-0000-7000-8000-000000000000"})
        assert "EventNotFoundError" in error_text(missing)
        assert "validation error" in error_text(await bob.call_tool("recall", {"query": "x", "k": 0}))
    denials = [e for e in (await hab.ledger.query(kind="policy.denied")).events if e.meta["principal"] == "human:bob"]
    assert {(e.meta["action"], e.meta["resource"]) for e in denials} == {
        ("memory:read", "scope:agent:scout"),
        ("message:send", "agent:scout"),
        ("state:read", "agent:scout"),
    }


async def test_a_server_without_a_principal_refuses_calls_outside_http(served: Served) -> None:
    async with Client(create_mcp_server(served.hab)) as client:
        assert "no principal" in error_text(await client.call_tool("log", {}))


# -- stdio ------------------------------------------------------------------------------------------


async def test_habitus_mcp_over_stdio(tmp_path: Path) -> None:
    path = tmp_path / "habitat"
    async with await Habitat.init(path, settings=Settings.resolve(config_file=None, environ={}, path=path)) as hab:
        await hab.agents.spawn("scout", behaviour="Worker", owner="human:alice")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    env["HABITUS_EMBEDDER"] = "hash"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from habitus._cli import main; main()", "-H", str(path), "mcp", "--principal", "agent:scout"],
        env=env,
        cwd=str(tmp_path),
    )
    async with Client(params) as client:
        record = ok(await client.call_tool("remember", {"text": "The ferry leaves at noon"}))
        hits = ok(await client.call_tool("recall", {"query": "when does the ferry leave?"}))["hits"]
        assert [h["record"]["text"] for h in hits] == ["The ferry leaves at noon"]
    async with await Habitat.open(path, read_only=True) as reopened:
        remembered = await reopened.ledger.get(record["id"])
        recalled = (await reopened.ledger.query(kind="memory.recalled")).events
    assert remembered.actor == "agent:scout" and [e.actor for e in recalled] == ["agent:scout"]


# -- streamable HTTP at /mcp --------------------------------------------------------------------------


@asynccontextmanager
async def uvicorn_serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port (its lifespan included); yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # per-request (2026) and session-based (2025) protocols
async def test_mcp_over_streamable_http_acts_as_the_tokens_principal(served: Served, mode: str) -> None:
    hab = served.hab
    token = {"Authorization": f"Bearer {served.tokens['human:alice']}"}
    async with uvicorn_serving(served.app) as base, httpx2.AsyncClient(headers=token) as http:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode) as alice:
            record = ok(await alice.call_tool("remember", {"text": "Bring the spare key", "agent": "scout"}))
            recall = ok(await alice.call_tool("recall", {"query": "spare key", "agent": "scout"}))
            assert [h["record"]["id"] for h in recall["hits"]] == [record["id"]]
            assert "ScopeDeniedError" in error_text(await alice.call_tool("recall", {"query": "x", "agent": "rival"}))
        anonymous = await http.post(f"{base}/mcp", json=INITIALIZE, headers={"Authorization": ""} | MCP_HEADERS)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "Unauthorized"
    assert (await hab.ledger.get(record["id"])).actor == "human:alice"
    assert (await hab.ledger.get(recall["event"])).actor == "human:alice"
    denied = (await hab.ledger.query(kind="policy.denied")).events
    assert [(e.meta["principal"], e.meta["resource"]) for e in denied] == [("human:alice", "scope:agent:rival")]


@asynccontextmanager
async def asgi_client(app: FastAPI, base_url: str = "http://habitus.test") -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base_url) as client:
        yield client


async def test_each_http_request_is_authenticated_and_a_session_keeps_to_its_principal(served: Served) -> None:
    alice = {"Authorization": f"Bearer {served.tokens['human:alice']}"} | MCP_HEADERS
    bob = {"Authorization": f"Bearer {served.tokens['human:bob']}"} | MCP_HEADERS
    async with asgi_client(served.app) as http:
        not_running = await http.post("/mcp", json=INITIALIZE, headers=alice)
        assert not_running.status_code == 503  # no lifespan, no session manager: a clear answer, not a hang
        async with served.app.router.lifespan_context(served.app):
            for bad in ("nonsense", served.tokens["human:alice"] + "x"):
                refused = await http.post(
                    "/mcp", json=INITIALIZE, headers=MCP_HEADERS | {"Authorization": f"Bearer {bad}"}
                )
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            opened = await http.post("/mcp", json=INITIALIZE, headers=alice)
            assert opened.status_code == 200
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            stolen = await http.post("/mcp", json=initialized, headers=bob | session)
            assert stolen.status_code == 404  # another principal's session does not exist for bob
            assert (await http.post("/mcp", json=initialized, headers=alice | session)).status_code == 202
            (info,) = [t for t in served.hab.control.tokens.list() if t.principal == "human:alice"]
            await served.hab.control.tokens.revoke(info.id)
            assert (await http.post("/mcp", json=initialized, headers=alice | session)).status_code == 401
    assert "/mcp" not in served.app.openapi()["paths"]


async def test_the_development_principal_answers_on_loopback_only(settings: Settings) -> None:
    async with await Habitat.init(settings.path, settings=settings) as hab:
        app = create_app(hab, dev_principal="human:dev")
        async with app.router.lifespan_context(app):
            async with asgi_client(app, "http://127.0.0.1:7077") as local:
                assert (await local.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)).status_code == 200
            async with asgi_client(app, "http://rebound.example:7077") as rebound:
                refused = await rebound.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
                assert refused.status_code == 401 and "loopback" in refused.json()["message"]
