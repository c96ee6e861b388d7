"""The README's first command: ``habitus up`` runs the demo society and serves its dashboard.

A real ``habitus up`` process (the real embedder, the scripted model), the real HTTP API,
and the dashboard in Debian's Chromium: the Highlights show a decision, a model call
informed by memories, a superseded belief, a policy denial and an audit note, and the
decision's causes reach back across agents to a sensor's reading.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.test_dashboard import chromium  # noqa: F401  (the fixture)

_DEADLINE_S = 180.0  # a ceiling for a loaded CI machine, not a performance claim


@dataclass
class Up:
    url: str
    token: str
    process: subprocess.Popen[str]

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(
            f"{self.url}/v1{path}", params=params, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def wait_for(self, kind: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + _DEADLINE_S
        while time.monotonic() < deadline:
            events: list[dict[str, Any]] = self.get("/events", kind=kind, limit=50)["events"]
            if events:
                return events
            assert self.process.poll() is None, "habitus up stopped"
            time.sleep(0.5)
        pytest.fail(f"no {kind} event within {_DEADLINE_S:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    command = [sys.executable, "-m", "habitus._cli", "-H", str(tmp_path / "habitat"), "up", "--port", str(_free_port())]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + _DEADLINE_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"dashboard\s+(http://\S+)/\?token=(\S+)", line)
            if found:
                yield Up(found.group(1), found.group(2), process)
                break
        else:
            pytest.fail("habitus up printed no dashboard address:\n" + "".join(lines))
        if not any("dashboard" in line for line in lines):
            pytest.fail("habitus up stopped before serving:\n" + "".join(lines))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped; the habitat is closed" in rest
    assert "greenhouse society runs" in "".join(lines)


def test_up_runs_the_society_and_the_dashboard_shows_its_highlights(chromium: Path, up: Up) -> None:  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    assert up.get("/whoami")["principal"] == "human:operator"
    (note, *_) = up.wait_for("note.recorded")
    (denial, *_) = up.wait_for("policy.denied")
    decisions = up.wait_for("decision.made")
    decision = decisions[0]["id"]
    assert decision in note["causes"]
    assert denial["meta"]["resource"] == "tool:override_flow_limit"
    superseding = [f for f in up.wait_for("fact.asserted") if f["meta"].get("supersedes")]
    assert superseding

    trail = up.get(f"/events/{decision}/why", depth=80, limit=5000)
    actors = {node["actor"] for node in trail["nodes"]}
    assert {"agent:coordinator", "agent:analyst", "agent:sensor-north"} <= actors

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(f"{up.url}/?token={up.token}")
            expect(page.get_by_test_id("whoami")).to_have_text("human:operator")

            page.get_by_test_id("tab-highlights").click()
            expect(page.get_by_test_id("hl-decisions").get_by_test_id("event").first).to_contain_text("irrigate")
            models = page.get_by_test_id("hl-models").get_by_test_id("event")
            expect(models.filter(has_text="informed by").first).to_be_visible()
            expect(page.get_by_test_id("hl-facts").get_by_test_id("event").first).to_contain_text("bed:")
            expect(page.get_by_test_id("hl-denials").get_by_test_id("event").first).to_contain_text(
                "override_flow_limit"
            )
            expect(page.get_by_test_id("hl-notes").get_by_test_id("event").first).to_contain_text("Finding")

            # The decision's causal graph, traced to its origins, reaches the sensors' readings.
            page.get_by_test_id("hl-decisions").locator(f'[data-event-id="{decision}"]').click()
            graph = page.get_by_test_id("graph")
            expect(graph.get_by_test_id("graph-node").first).to_be_visible()
            page.get_by_test_id("trace-origin").click()
            expect(graph.locator('[data-testid="graph-node"][data-kind="message.published"]').first).to_be_visible()
            expect(graph.locator('[data-testid="graph-node"][data-kind="model.called"]').first).to_be_visible()
            expect(graph.locator('[data-testid="graph-node"][data-kind="memory.remembered"]').first).to_be_visible()
            assert not problems, problems
        finally:
            browser.close()
