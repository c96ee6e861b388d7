"""``habitus models`` and ``habitus ask``: the gateway from the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click import command
from click.testing import CliRunner, Result

from habitus import Settings, SyncHabitat
from habitus._cli import main
from tests.models.fake_openai import FakeOpenAI, Reply


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI the way the console script does (errors mapped to exit codes)."""

    def entry() -> None:
        sys.argv = ["habitus", *args]
        main()

    wrapper = command(context_settings={"ignore_unknown_options": True})(entry)
    return CliRunner().invoke(wrapper, [], env=env, catch_exceptions=False)


@pytest.fixture
def habitat_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("HABITUS_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "hab"
    assert run("init", str(path)).exit_code == 0
    return path


def model_calls(path: Path) -> list[str]:
    settings = Settings.resolve(config_file=None, environ={}, path=path)
    with SyncHabitat.open(path, settings=settings, read_only=True) as hab:
        return [e.actor for e in hab.ledger.query(kind="model.called").events]


def test_with_nothing_configured_the_scripted_model_answers(habitat_path: Path) -> None:
    listed = run("-H", str(habitat_path), "models")
    assert listed.exit_code == 0 and listed.stdout.startswith("* scripted")

    asked = run("-H", str(habitat_path), "ask", "Is the bridge open?")
    assert asked.exit_code == 0, asked.output
    assert asked.stdout == 'You said: "Is the bridge open?". (scripted model; 0 lines of context)\n'
    assert "scripted/scripted:" in asked.stderr and "model.called" in asked.stderr
    assert model_calls(habitat_path) == ["system"]


def test_ask_goes_to_the_configured_endpoint(habitat_path: Path, fake_openai: FakeOpenAI) -> None:
    env = {"HABITUS_MODEL_URL": fake_openai.url, "HABITUS_MODEL_NAME": "llama3.1"}
    (row,) = [
        json.loads(line) for line in run("-H", str(habitat_path), "models", "--json", env=env).stdout.splitlines()
    ]
    assert row["name"] == "default" and row["base_url"] == fake_openai.url and row["chat_model"] == "llama3.1"

    fake_openai.reply(Reply(text="Take the ferry.", prompt_tokens=11, completion_tokens=4))
    asked = run("-H", str(habitat_path), "ask", "How do I cross?", "--system", "Be brief.", env=env)
    assert asked.exit_code == 0, asked.output
    assert asked.stdout == "Take the ferry.\n" and "11+4 tokens" in asked.stderr
    (sent,) = fake_openai.chat_requests
    assert sent.body["stream"] is True and [m["role"] for m in sent.body["messages"]] == ["system", "user"]

    as_json = run("-H", str(habitat_path), "ask", "again", "--json", env=env)
    call = json.loads(as_json.stdout)
    assert call["completion"]["text"] == "Hello from the fake model." and call["provider"] == "default"

    fake_openai.fail_always(503)
    failed = run("-H", str(habitat_path), "ask", "once more", "--no-stream", env={**env})
    assert failed.exit_code == 4 and "HTTP 503" in failed.stderr


def test_asking_as_an_agent_without_a_grant_is_refused(habitat_path: Path) -> None:
    assert run("-H", str(habitat_path), "spawn", "scout", "--behaviour", "Thinker").exit_code == 0
    refused = run("-H", str(habitat_path), "ask", "hello", "--as", "agent:scout")
    assert refused.exit_code == 8 and "may not model:use model:scripted/scripted" in refused.stderr
    assert model_calls(habitat_path) == []
