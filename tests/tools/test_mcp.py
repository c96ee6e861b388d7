"""Tools from a real MCP server (the SDK's own server, over stdio and streamable HTTP): listed, called, failing."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from habitus import Habitat
from habitus.errors import HabitatUnavailableError, InvalidRequestError

SERVER = str(Path(__file__).with_name("mcp_server.py"))


async def test_a_stdio_servers_tools_are_listed_called_and_recorded(hab: Habitat) -> None:
    names = await hab.tools.add_mcp_server("calc", command=[sys.executable, SERVER])
    assert sorted(names) == ["calc.add", "calc.erase", "calc.fail", "calc.shout"]
    (spec,) = hab.tools.specs(["calc.add"])
    assert spec.description == "Add two whole numbers."
    assert spec.parameters["required"] == ["a", "b"]
    assert hab.tools.get("calc.erase").dangerous  # the server marks it destructive
    assert not hab.tools.get("calc.add").dangerous

    await hab.control.grant("agent:scout", "tool:call", "calc.*")
    result = await hab.tools.call("agent:scout", "calc.add", {"a": 2, "b": 40})
    assert result.ok and result.value == {"result": 42}
    called = await hab.ledger.get(result.called)
    assert called.meta == {"tool": "calc.add", "source": "mcp"}
    assert (await hab.ledger.get(result.result)).kind == "tool.returned"

    shouted = await hab.tools.call("agent:scout", "calc.shout", {"text": "hello"})
    assert shouted.value == {"result": "HELLO!"}


async def test_errors_from_the_server_and_bad_arguments_are_failed_calls(hab: Habitat) -> None:
    await hab.tools.add_mcp_server("calc", command=[sys.executable, SERVER])
    failed = await hab.tools.call("system", "calc.fail", {"reason": "not today"})
    assert not failed.ok and failed.error is not None
    assert failed.error.type == "remote_error" and "refused: not today" in failed.error.message
    event = await hab.ledger.get(failed.result)
    assert event.kind == "tool.failed" and event.meta["error"] == "remote_error"

    bad = await hab.tools.call("system", "calc.add", {"a": "two"})
    assert bad.error is not None and bad.error.type == "invalid_arguments"
    assert "'b' is a required property" in bad.error.message

    await hab.tools.aclose()  # the session ends: its tools fail as unavailable, they do not crash
    gone = await hab.tools.call("system", "calc.add", {"a": 1, "b": 2})
    assert gone.error is not None and gone.error.type == "unavailable"


async def test_bad_servers_are_refused_clearly(hab: Habitat, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"either command= .* or url="):
        await hab.tools.add_mcp_server("x")
    with pytest.raises(InvalidRequestError, match="an MCP server's name is 1-32 letters"):
        await hab.tools.add_mcp_server("a.b", command=[sys.executable, SERVER])
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(HabitatUnavailableError, match="could not connect to MCP server 'broken'"):
        await hab.tools.add_mcp_server("broken", command=[sys.executable, str(broken)])
    assert hab.tools.names == []


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    """The same server over streamable HTTP on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


async def test_a_streamable_http_server_works_the_same(hab: Habitat, http_server: str) -> None:
    names = await hab.tools.add_mcp_server("web", url=http_server)
    assert "web.add" in names
    result = await hab.tools.call("system", "web.add", {"a": 1, "b": 2})
    assert result.ok and result.value == {"result": 3}
