"""Providers come from habitus.toml's [models] table and HABITUS_MODEL_*; with none, the scripted model answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from habitus import Habitat, Settings
from habitus.errors import InvalidRequestError
from habitus.models import OpenAIProvider, ScriptedModel
from tests.models.fake_openai import FakeOpenAI


async def test_providers_come_from_the_models_table(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    toml = tmp_path / "habitus.toml"
    toml.write_text(
        f"""
[models]
default = "local"

[models.providers.local]
base_url = "{fake_openai.url}"
api_key = "sk-from-file"
chat_model = "llama3.1"
embedding_model = "nomic-embed-text"
concurrency = 3
embed_batch = 2

[models.providers.offline]
kind = "scripted"
""",
        encoding="utf-8",
    )
    settings = Settings.resolve(config_file=toml, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        gateway = hab.models
        assert gateway.providers == ["local", "offline"] and gateway.default == "local"
        assert isinstance(gateway.provider(), OpenAIProvider) and isinstance(gateway.provider("offline"), ScriptedModel)
        assert gateway.config("local").concurrency == 3

        call = await gateway.chat("system", "hello")
        assert call.text == "Hello from the fake model." and call.model == "llama3.1"
        await gateway.embed("system", ["a", "b", "c"])
        (sent,) = fake_openai.chat_requests
        assert sent.body["model"] == "llama3.1" and sent.headers["authorization"] == "Bearer sk-from-file"
        assert sorted(len(r.body["input"]) for r in fake_openai.embedding_requests) == [1, 2]

        offline = await gateway.chat("system", "ping", provider="offline")
        assert offline.text.startswith('You said: "ping"') and offline.provider == "offline"


async def test_habitus_model_url_configures_a_default_provider(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    environ = {"HABITUS_MODEL_URL": fake_openai.url, "HABITUS_MODEL_KEY": "sk-env", "HABITUS_MODEL_NAME": "qwen2.5"}
    settings = Settings.resolve(config_file=None, environ=environ, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        assert hab.models.providers == ["default"] and hab.models.default == "default"
        call = await hab.models.chat("system", "hello")
        assert call.provider == "default" and call.model == "qwen2.5"
        (sent,) = fake_openai.chat_requests
        assert sent.headers["authorization"] == "Bearer sk-env" and sent.body["model"] == "qwen2.5"


async def test_the_environment_overrides_a_default_table(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    toml = tmp_path / "habitus.toml"
    toml.write_text(
        '[models.providers.default]\nbase_url = "http://127.0.0.1:9/v1"\nchat_model = "from-file"\nconcurrency = 7\n',
        encoding="utf-8",
    )
    settings = Settings.resolve(config_file=toml, environ={"HABITUS_MODEL_URL": fake_openai.url}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        call = await hab.models.chat("system", "hello")
        assert call.model == "from-file" and hab.models.config().concurrency == 7
        assert len(fake_openai.chat_requests) == 1  # the URL from the environment won


async def test_with_nothing_configured_the_scripted_model_answers(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        assert hab.models.providers == ["scripted"] and hab.models.default == "scripted"
        call = await hab.models.chat("system", "Is the bridge open?")
        assert call.text == 'You said: "Is the bridge open?". (scripted model; 0 lines of context)'
        event = await hab.ledger.get(call.event)
        assert event.kind == "model.called" and event.meta["provider"] == "scripted"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[models]\ndefault = "missing"\n', "[models] default is 'missing', but no provider has that name"),
        ("[models.providers.local]\nchat_model = 'x'\n", "model provider 'local' needs a base_url"),
    ],
)
async def test_a_bad_models_table_is_a_clear_error(tmp_path: Path, table: str, message: str) -> None:
    toml = tmp_path / "habitus.toml"
    toml.write_text(table, encoding="utf-8")
    settings = Settings.resolve(config_file=toml, environ={}, path=tmp_path / "h")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            _ = hab.models
