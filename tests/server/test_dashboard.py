"""The dashboard, in a real browser: Playwright driving Debian's Chromium against a real server.

The habitat and uvicorn run in a background thread with their own event loop; the test
drives the page with Playwright's sync API from the test thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi import FastAPI

from habitus import Habitat, Settings
from habitus.ledger import Event, caused_by
from habitus.memory import HashEmbedder
from habitus.server import create_app
from habitus.server._routes._events import stop_streams
from tests.server.conftest import Served

CHROMIUM = Path("/usr/bin/chromium")
T = TypeVar("T")


@dataclass
class Live:
    """A habitat served over real HTTP from a background thread, and the trail seeded in it."""

    url: str
    token: str
    hab: Habitat
    app: FastAPI
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server
    events: dict[str, Event] = field(default_factory=dict)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)


async def _seed(hab: Habitat) -> tuple[str, dict[str, Event]]:
    """A question from human:alice that crosses two agents, and a memory that cites it."""
    hab.use_embedder(HashEmbedder(dim=64))
    for agent in ("scout", "buddy"):
        await hab.agents.spawn(agent, behaviour="Worker", owner="human:alice")
    _, token = await hab.control.tokens.create("human:alice", name="dashboard")
    ask = await hab.messages.send("scout", "Is the north bridge open?", sender="human:alice", thread="bridge")
    with caused_by(ask):
        relay = await hab.messages.send("buddy", "Check the north bridge", sender="agent:scout", thread="bridge")
    with caused_by(relay):
        answer = await hab.messages.send(
            "scout", "The north bridge is closed for repairs", sender="agent:buddy", thread="bridge"
        )
    memory = await hab.memory("buddy").remember("The north bridge is closed for repairs", source=[relay])
    await hab.memory("buddy").remember("Lunch is at noon on Fridays")
    await hab.ledger.checkpoint()
    return token, {"ask": ask, "relay": relay, "answer": answer, "memory": await hab.ledger.get(memory.id)}


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, or a skip that says how to get it (before any server starts); in CI
    (``CI_REQUIRE_BROWSER`` set by ``.ci/run``, which installs it) a missing browser fails."""
    if not CHROMIUM.exists():
        reason = f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    started: Future[Live] = Future()
    failed: list[BaseException] = []

    async def main() -> None:
        hab = await Habitat.init(settings.path, settings=settings)
        try:
            token, events = await _seed(hab)
            app = create_app(hab)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            server = uvicorn.Server(
                uvicorn.Config(app, log_level="warning", access_log=False, ws="none", lifespan="on")
            )
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if serving.done():
                serving.result()  # raises what stopped it
            loop = asyncio.get_running_loop()
            started.set_result(Live(f"http://127.0.0.1:{port}", token, hab, app, loop, server, events))
            await serving
        finally:
            await hab.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - the thread's boundary: the test thread re-raises it
            if started.done():
                failed.append(exc)
            else:
                started.set_exception(exc)

    thread = threading.Thread(target=run, name="habitus-server", daemon=True)
    thread.start()
    served = started.result(timeout=30)
    try:
        yield served
    finally:
        served.loop.call_soon_threadsafe(stop_streams, served.app)  # open streams would hold the shutdown up
        served.server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the server did not stop"
        if failed:
            raise failed[0]


def test_a_person_follows_an_answer_back_to_its_origin_and_recalls_a_memory(chromium: Path, live: Live) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    ask, relay, answer = (str(live.events[k].id) for k in ("ask", "relay", "answer"))
    memory = str(live.events["memory"].id)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

            # Opened with ?token=: the page acts as alice, and the token leaves the address bar.
            page.goto(f"{live.url}/?token={live.token}")
            expect(page.get_by_test_id("whoami")).to_have_text("human:alice")
            assert "token" not in page.url
            expect(page.get_by_test_id("ledger-badge")).to_contain_text("verified")
            expect(page.get_by_test_id("live-badge")).to_have_text("live")

            # The timeline, newest first: pick buddy's answer and see why it happened.
            timeline = page.get_by_test_id("timeline")
            expect(timeline.locator(f'[data-event-id="{answer}"]')).to_contain_text("closed for repairs")
            timeline.locator(f'[data-event-id="{answer}"]').click()
            graph = page.get_by_test_id("graph")
            node = graph.get_by_test_id("graph-node")
            expect(graph.locator(f'[data-testid="graph-node"][data-event-id="{relay}"]')).to_be_visible()
            expect(graph.locator(f'[data-cause="{relay}"][data-effect="{answer}"]')).to_have_count(1)
            expect(node).to_have_count(2)  # one hop: the answer and scout's relay
            expect(graph.locator(f'[data-event-id="{ask}"]')).to_have_count(0)

            # Expanding the relay crosses from scout back to alice's question, the origin.
            graph.locator(f'[data-testid="graph-node"][data-event-id="{relay}"]').click()
            origin = graph.locator(f'[data-testid="graph-node"][data-event-id="{ask}"]')
            expect(origin).to_be_visible()
            expect(origin).to_have_class(re.compile(r"\bhuman\b"))
            expect(graph.locator(f'[data-cause="{ask}"][data-effect="{relay}"]')).to_have_count(1)
            expect(page.get_by_test_id("event-detail")).to_contain_text("Check the north bridge")

            # Live: an event committed now appears at the top of the timeline.
            fresh = live.call(live.hab.messages.send("buddy", "Thanks!", sender="human:alice", thread="bridge"))
            expect(timeline.locator("li").first.locator(f'[data-event-id="{fresh.id}"]')).to_be_visible()

            # The memory browser: recall in buddy's memory, see the hit, its score and provenance.
            page.get_by_test_id("tab-memory").click()
            page.get_by_label("Agent", exact=True).select_option("buddy")
            expect(page.get_by_test_id("memories").get_by_test_id("memory")).to_have_count(2)
            page.get_by_label("Recall", exact=True).fill("is the north bridge closed?")
            page.get_by_test_id("recall-submit").click()
            best = page.get_by_test_id("recall-hit").first
            expect(best).to_contain_text("The north bridge is closed for repairs")
            expect(best.get_by_test_id("recall-score")).to_have_text(re.compile(r"^\d+\.\d{3}$"))
            expect(best.get_by_test_id("why").first).to_be_visible()
            expect(best.locator(f'[data-testid="provenance"][data-event-id="{memory}"]')).to_be_visible()
            best.locator(f'[data-testid="provenance"][data-event-id="{relay}"]').click()  # provenance -> graph
            expect(graph.locator(f'[data-testid="graph-node"][data-event-id="{relay}"]')).to_have_class(
                re.compile(r"\broot\b")
            )

            # The ledger: verified, with its latest signed checkpoint.
            page.get_by_test_id("tab-ledger").click()
            expect(page.get_by_test_id("verify-status")).to_contain_text("✓")
            expect(page.get_by_test_id("checkpoint").first).to_contain_text("events")

            # Agents with their mailboxes; conversations as a chat.
            page.get_by_test_id("tab-agents").click()
            scout = page.locator('[data-testid="agent-row"][data-agent="scout"]')
            expect(scout.get_by_test_id("agent-mailbox")).to_have_text("2")
            scout.get_by_role("button").click()
            expect(page.get_by_test_id("agent-detail").get_by_test_id("mailbox-entry")).to_have_count(2)
            page.get_by_test_id("tab-threads").click()
            page.locator('[data-testid="thread"][data-thread="thread:bridge"]').click()
            expect(page.get_by_test_id("chat-message")).to_have_count(4)
            assert problems == []
        finally:
            browser.close()


async def test_the_dashboard_is_served_at_the_root_and_shadows_no_route(served: Served) -> None:
    async with served.client() as anonymous:
        page = await anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"  # the first address may carry ?token=
        for asset, media in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
            response = await anonymous.get(asset)
            assert response.status_code == 200 and response.headers["content-type"].startswith(media)
        for path in ('src="app.js"', 'href="style.css"'):
            assert path in page.text  # relative: the page also works behind a path prefix
        assert (await anonymous.get("/v1/whoami")).status_code == 401  # the API still asks for a token
        missing = await anonymous.get("/v1/no-such-thing")
        assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
        assert (await anonymous.get("/no-such-file.js")).json()["error"] == "NotFound"
        spec = (await anonymous.get("/openapi.json")).json()
        assert all(p.startswith("/v1/") for p in spec["paths"])  # the dashboard is not part of the API


def test_the_dashboard_uses_nothing_from_elsewhere() -> None:
    static = Path(__file__).resolve().parents[2] / "src" / "habitus" / "server" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path  # no CDN: no internet at run time
        assert "innerHTML" not in text, path  # data is rendered as text, never as markup
