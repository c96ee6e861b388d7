"""A ThinkingAgent against a real HTTP endpoint: the fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from habitus import App, Habitat, Settings
from habitus.agents import RuntimeOptions
from habitus.thinking import ThinkingAgent
from tests.models.fake_openai import FakeOpenAI, Reply


async def thermostat(zone: str) -> dict[str, object]:
    """The temperature of a greenhouse zone, in degrees Celsius."""
    return {"zone": zone, "temp_c": 31.4}


async def test_a_thinking_agent_thinks_with_a_configured_openai_compatible_endpoint(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    environ = {"HABITUS_MODEL_URL": fake_openai.url, "HABITUS_MODEL_NAME": "fake-chat"}
    settings = Settings.resolve(config_file=None, environ=environ, path=tmp_path / "h", embedder="hash")
    fake_openai.reply(
        Reply(tool_calls=[("thermostat", {"zone": "north"})]),
        Reply(text="It is 31.4 °C in the north zone; open the vents.", prompt_tokens=90, completion_tokens=12),
    )
    app = App("endpoint")

    @app.behaviour
    class Analyst(ThinkingAgent):
        system_prompt = "You watch a greenhouse."
        tools = ("thermostat",)

    async with await Habitat.init(settings.path, settings=settings) as hab:
        hab.tools.register(thermostat)
        await hab.agents.spawn("analyst", behaviour="Analyst", owner="human:ada")
        await hab.control.grant("agent:analyst", "model:use", "model:default/*")
        await hab.control.grant("agent:analyst", "tool:call", "tool:thermostat")
        note = await hab.memory("analyst").remember("The north zone holds the tomatoes")
        await hab.start(app, options=RuntimeOptions(max_attempts=1))

        reply = await hab.messages.request("analyst", "How warm is the north zone?", sender="human:ada", timeout=20)
        assert reply.body == "It is 31.4 °C in the north zone; open the vents."

        first, second = fake_openai.chat_requests
        assert first.body["model"] == "fake-chat"
        system, user = first.body["messages"]
        assert system["role"] == "system" and "The north zone holds the tomatoes" in system["content"]
        assert user == {"role": "user", "content": "human:ada says:\nHow warm is the north zone?"}
        assert [t["function"]["name"] for t in first.body["tools"]] == ["thermostat"]
        asked, answered = second.body["messages"][-2:]
        assert asked["tool_calls"][0]["function"]["name"] == "thermostat"
        assert answered["role"] == "tool" and answered["tool_call_id"] == asked["tool_calls"][0]["id"]
        assert json.loads(answered["content"]) == {"zone": "north", "temp_c": 31.4}

        calls = (await hab.ledger.query(kind="model.called")).events
        assert [c.meta["provider"] for c in calls] == ["default", "default"]
        assert calls[1].meta["prompt_tokens"] == 90
        assert all(note.id in c.causes for c in calls)  # the memory in the prompt is a cause of each call
        returned = (await hab.ledger.query(kind="tool.returned")).events
        assert len(returned) == 1 and returned[0].id in calls[1].causes
