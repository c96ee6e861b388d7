"""The gateway over a real (fake) OpenAI-compatible server: calls, streams, tools, embeddings, failures,
budgets, policy, concurrency and provenance."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from habitus import Habitat, Settings
from habitus.errors import (
    BudgetExceededError,
    HabitatClosedError,
    InvalidRequestError,
    ModelTimeoutError,
    ModelUnavailableError,
    PolicyDeniedError,
    ReadOnlyHabitatError,
)
from habitus.ledger import Event
from habitus.models import (
    ChatMessage,
    ContextRecord,
    OpenAIProvider,
    ProviderConfig,
    ToolCall,
    ToolSpec,
)
from tests.models.fake_openai import FakeOpenAI, Reply, fake_vector

WEATHER = ToolSpec(
    name="weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def use_fake(hab: Habitat, fake: FakeOpenAI, *, max_retries: int = 2, timeout_s: float = 10.0, **config: Any) -> None:
    """Make the fake server the default provider, called ``local``."""
    provider = OpenAIProvider(
        "local",
        fake.url,
        api_key="sk-fake",
        chat_model="fake-chat",
        embedding_model="fake-embed",
        timeout_s=timeout_s,
        max_retries=max_retries,
        retry_backoff_s=0.01,
    )
    settings = ProviderConfig(base_url=fake.url, chat_model="fake-chat", embedding_model="fake-embed", **config)
    hab.models.add_provider("local", provider, config=settings, default=True)


@pytest.fixture
async def hab(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[Habitat]:
    """A habitat whose default model is the fake server, with agent scout (owned by human:alice) allowed to use it."""
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", embedder="hash")
    h = await Habitat.init(settings.path, settings=settings)
    await h.agents.spawn("scout", behaviour="Thinker", owner="human:alice")
    await h.control.grant("agent:scout", "model:use", "model:local/*")
    use_fake(h, fake_openai)
    try:
        yield h
    finally:
        await h.close()


async def events(hab: Habitat, kind: str) -> list[Event]:
    return list((await hab.ledger.query(kind=kind)).events)


def content(event: Event) -> dict[str, Any]:
    """A ``model.called`` event's content: the prompt and the answer."""
    assert isinstance(event.content, dict)
    return event.content


async def test_a_chat_is_answered_and_recorded_with_its_prompt_tokens_and_cost(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    hab.models.add_provider(
        "local",
        hab.models.provider("local"),
        config=ProviderConfig(chat_model="fake-chat", prompt_cost_per_1k=2.0, completion_cost_per_1k=10.0),
    )
    fake_openai.reply(Reply(text="It is 21 °C in Oslo.", prompt_tokens=12, completion_tokens=8))
    messages = [
        ChatMessage(role="system", content="You are a weather bot."),
        ChatMessage(role="user", content="How warm is Oslo?"),
    ]
    call = await hab.models.chat("agent:scout", messages, max_tokens=50, temperature=0.2)

    assert call.text == "It is 21 °C in Oslo."
    assert (call.usage.prompt_tokens, call.usage.completion_tokens) == (12, 8)
    assert call.cost == pytest.approx((12 * 2.0 + 8 * 10.0) / 1000)
    assert (call.provider, call.model, call.tool_calls) == ("local", "fake-chat", ())
    (sent,) = fake_openai.chat_requests
    assert sent.body == {
        "model": "fake-chat",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "How warm is Oslo?"},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
    }
    assert sent.headers["authorization"] == "Bearer sk-fake"

    (event,) = await events(hab, "model.called")
    assert event.id == call.event and event.actor == "agent:scout"
    assert event.meta["provider"] == "local" and event.meta["model"] == "fake-chat"
    assert (event.meta["prompt_tokens"], event.meta["completion_tokens"]) == (12, 8)
    assert event.meta["cost"] == pytest.approx(call.cost) and event.meta["finish_reason"] == "stop"
    assert event.meta["latency_ms"] == call.latency_ms
    assert "streamed" not in event.meta  # false, the default, is not stored
    assert content(event)["messages"][1] == {"role": "user", "content": "How warm is Oslo?"}
    assert content(event)["completion"] == {"text": "It is 21 °C in Oslo.", "tool_calls": []}


async def test_a_streamed_answer_arrives_in_pieces_in_order(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(Reply(text="The north bridge is closed today.", prompt_tokens=9, completion_tokens=6))
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    call = await hab.models.chat("agent:scout", "Is the bridge open?", on_text=on_text)

    assert pieces == ["The ", "north ", "bridge ", "is ", "closed ", "today."]
    assert "".join(pieces) == call.text == "The north bridge is closed today."
    assert (call.usage.prompt_tokens, call.usage.completion_tokens) == (9, 6)  # from the final chunk
    (sent,) = fake_openai.chat_requests
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    (event,) = await events(hab, "model.called")
    assert event.meta["streamed"] is True


async def test_a_stream_without_usage_is_estimated_at_four_characters_a_token(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply(Reply(text="x" * 41, include_usage=False))
    pieces: list[str] = []
    call = await hab.models.chat("agent:scout", "y" * 10, on_text=pieces.append)
    assert pieces == ["x" * 41]
    assert (call.usage.prompt_tokens, call.usage.completion_tokens) == (math.ceil(10 / 4), math.ceil(41 / 4))


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls_are_parsed_and_tools_are_sent_in_openai_form(
    hab: Habitat, fake_openai: FakeOpenAI, streamed: bool
) -> None:
    fake_openai.reply(Reply(tool_calls=[("weather", {"city": "Oslo"}), ("weather", {"city": "Bergen, NO"})]))
    pieces: list[str] = []
    call = await hab.models.chat(
        "agent:scout", "Weather in Oslo and Bergen?", tools=[WEATHER], on_text=pieces.append if streamed else None
    )

    assert call.tool_calls == (
        ToolCall(id="call_0", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="call_1", name="weather", arguments={"city": "Bergen, NO"}),
    )
    assert call.completion.finish_reason == "tool_calls" and call.text == "" and pieces == []
    (sent,) = fake_openai.chat_requests
    assert sent.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]
    (event,) = await events(hab, "model.called")
    assert event.meta["tool_calls"] == ["weather", "weather"]
    assert content(event)["tools"] == ["weather"]
    assert content(event)["completion"]["tool_calls"][1]["arguments"] == {"city": "Bergen, NO"}


async def test_a_conversation_with_tool_results_is_serialised_as_openai_expects(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    asked = ToolCall(id="call_7", name="weather", arguments={"city": "Oslo"})
    messages = [
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", tool_calls=(asked,)),
        ChatMessage(role="tool", tool_call_id="call_7", content='{"celsius": 21}'),
    ]
    await hab.models.chat("agent:scout", messages, tools=[WEATHER])
    (sent,) = fake_openai.chat_requests
    assert sent.body["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": '{"celsius": 21}'},
    ]


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_arguments_that_are_not_json_are_a_clear_error(
    hab: Habitat, fake_openai: FakeOpenAI, streamed: bool
) -> None:
    fake_openai.reply(Reply(tool_calls=[("weather", '{"city": "Oslo"')]))
    with pytest.raises(ModelUnavailableError, match=r"tool 'weather' with arguments that are not valid JSON"):
        await hab.models.chat(
            "agent:scout", "Weather?", tools=[WEATHER], on_text=(lambda _: None) if streamed else None
        )
    (failed,) = await events(hab, "model.failed")
    assert failed.meta["error"] == "ModelUnavailableError"
    assert await events(hab, "model.called") == []


async def test_embeddings_are_split_into_batches_and_come_back_in_order(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    use_fake(hab, fake_openai, embed_batch=4)
    texts = [f"text number {i}" for i in range(10)]
    vectors = await hab.models.embed("agent:scout", texts)

    assert vectors == [fake_vector(t) for t in texts]
    sizes = sorted((len(r.body["input"]) for r in fake_openai.embedding_requests), reverse=True)
    assert sizes == [4, 4, 2]  # ceil(10 / 4) requests, sent side by side
    assert all(r.body["model"] == "fake-embed" for r in fake_openai.embedding_requests)
    (event,) = await events(hab, "model.embedded")
    assert event.actor == "agent:scout" and event.content is None
    tokens = math.ceil(sum(len(t) for t in texts) / 4)
    assert event.meta == {
        "provider": "local", "model": "fake-embed", "texts": 10, "tokens": tokens,
        "dimensions": 8, "latency_ms": event.meta["latency_ms"],
    }  # fmt: skip


async def test_concurrent_embeddings_share_one_request(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    groups = [[f"group {g} text {i}" for i in range(2)] for g in range(5)]
    results = await asyncio.gather(*(hab.models.embed("agent:scout", texts) for texts in groups))

    assert len(fake_openai.embedding_requests) == 1
    assert len(fake_openai.embedding_requests[0].body["input"]) == 10
    for texts, vectors in zip(groups, results, strict=True):
        assert vectors == [fake_vector(t) for t in texts]
    assert len(await events(hab, "model.embedded")) == 5  # one per call, though they shared a request


async def test_a_failed_batch_fails_every_call_that_shared_it(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    use_fake(hab, fake_openai, max_retries=0)
    fake_openai.fail(1, status=503)
    outcomes = await asyncio.gather(
        hab.models.embed("agent:scout", ["a", "b"]), hab.models.embed("agent:scout", ["c"]), return_exceptions=True
    )
    assert all(isinstance(o, ModelUnavailableError) for o in outcomes)
    failed = await events(hab, "model.failed")
    assert [e.meta["operation"] for e in failed] == ["embed", "embed"]
    assert await hab.models.embed("agent:scout", ["d"]) == [fake_vector("d")]


async def test_a_slow_provider_times_out_and_the_failure_is_recorded_uncharged(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    use_fake(hab, fake_openai, timeout_s=0.2, max_retries=0)
    await hab.control.set_budget("agent:scout", "tokens", 1000)
    fake_openai.reply(Reply(text="too late", delay=3.0))
    memory = await hab.memory("scout").remember("The bridge is closed.")
    with pytest.raises(
        ModelTimeoutError, match=r"model provider 'local' \(http://127\.0\.0\.1:\d+/v1/chat/completions"
    ):
        await hab.models.chat("agent:scout", "Is it open?", context=ContextRecord(memories=(memory.id,)))

    (failed,) = await events(hab, "model.failed")
    assert failed.actor == "agent:scout" and failed.causes == (memory.id,)
    assert failed.meta["error"] == "ModelTimeoutError" and failed.meta["attempts"] == 1
    assert failed.meta["memories"] == 1 and "timed out after 0.2 s" in str(failed.meta["message"])
    assert await events(hab, "model.called") == []
    assert [b.used for b in hab.control.budgets("agent:scout")] == [0]


async def test_server_errors_are_retried_until_an_answer_comes(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail(2, status=500)
    fake_openai.reply("third time lucky")
    call = await hab.models.chat("agent:scout", "hello")
    assert call.text == "third time lucky"
    assert len(fake_openai.chat_requests) == 3
    assert await events(hab, "model.failed") == []


async def test_too_many_requests_is_retried_after_retry_after(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail(1, status=429, retry_after="0")
    call = await hab.models.chat("agent:scout", "hello")
    assert call.text == "Hello from the fake model."
    assert len(fake_openai.chat_requests) == 2


async def test_a_provider_that_keeps_failing_is_unavailable(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_always(500)
    with pytest.raises(ModelUnavailableError) as caught:
        await hab.models.chat("agent:scout", "hello")
    message = str(caught.value)
    assert not isinstance(caught.value, ModelTimeoutError)
    assert "model provider 'local'" in message and "/v1/chat/completions" in message
    assert "after 3 attempts: HTTP 500: the fake server always fails with 500" in message
    assert len(fake_openai.chat_requests) == 3  # the first try and max_retries=2
    (failed,) = await events(hab, "model.failed")
    assert failed.meta["attempts"] == 3 and failed.meta["error"] == "ModelUnavailableError"


async def test_a_client_error_is_not_retried(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail(1, status=400, error="unknown model 'fake-chat'")
    with pytest.raises(ModelUnavailableError, match=r"failed: HTTP 400: unknown model 'fake-chat'"):
        await hab.models.chat("agent:scout", "hello")
    assert len(fake_openai.chat_requests) == 1


async def test_a_prompt_over_the_budget_is_refused_before_anything_is_sent(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    await hab.control.set_budget("agent:scout", "tokens", 10)
    with pytest.raises(BudgetExceededError, match=r"agent:scout may not use 13 more tokens: its budget is 10"):
        await hab.models.chat("agent:scout", "w" * 50)  # about 13 tokens
    assert fake_openai.requests == []
    (exceeded,) = await events(hab, "budget.exceeded")
    assert exceeded.meta["meter"] == "tokens" and exceeded.meta["amount"] == 13
    assert await events(hab, "model.called") == []


async def test_tokens_spent_past_the_limit_are_charged_and_later_calls_refused(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    await hab.control.set_budget("human:alice", "tokens", 20)  # the owner's budget binds scout too
    fake_openai.reply(Reply(text="a long answer", prompt_tokens=5, completion_tokens=30))
    call = await hab.models.chat("agent:scout", "short")
    assert call.usage.total_tokens == 35
    assert [b.used for b in hab.control.budgets("agent:scout")] == [35]  # over the limit: it was spent
    with pytest.raises(BudgetExceededError, match="its owner human:alice's budget is 20"):
        await hab.models.chat("agent:scout", "again")
    assert len(fake_openai.chat_requests) == 1


async def test_an_agent_without_a_grant_may_not_use_a_model(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    await hab.agents.spawn("stranger", behaviour="Thinker", owner="human:bob")
    with pytest.raises(PolicyDeniedError, match=r"agent:stranger may not model:use model:local/fake-chat"):
        await hab.models.chat("agent:stranger", "hello")
    assert fake_openai.requests == []
    (denied,) = await events(hab, "policy.denied")
    assert denied.meta["resource"] == "model:local/fake-chat"
    with pytest.raises(PolicyDeniedError):
        await hab.models.embed("agent:stranger", ["hello"])
    # A grant for another model does not cover this one.
    await hab.control.grant("agent:stranger", "model:use", "model:local/other-model")
    with pytest.raises(PolicyDeniedError):
        await hab.models.chat("agent:stranger", "hello")
    assert (await hab.models.chat("agent:stranger", "hello", model="other-model")).model == "other-model"


async def test_acting_for_someone_is_recorded_and_needs_their_right_too(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    await hab.control.delegate("agent:scout", "human:alice")
    with pytest.raises(PolicyDeniedError, match="acting for human:alice"):
        await hab.models.chat("agent:scout", "hello", on_behalf_of="human:alice")
    await hab.control.grant("human:alice", "model:use", "model:*")
    await hab.models.chat("agent:scout", "hello", on_behalf_of="human:alice")
    (event,) = await events(hab, "model.called")
    assert event.meta["on_behalf_of"] == "human:alice" and event.actor == "agent:scout"


async def test_the_concurrency_limit_holds_calls_back(hab: Habitat, fake_openai: FakeOpenAI) -> None:
    use_fake(hab, fake_openai, concurrency=2)
    fake_openai.delay = 0.2
    calls = await asyncio.gather(*(hab.models.chat("agent:scout", f"question {i}") for i in range(6)))
    assert len(calls) == 6 and len(fake_openai.chat_requests) == 6
    assert fake_openai.max_concurrency == 2


async def test_why_a_call_was_made_lists_the_memories_facts_and_messages_in_its_prompt(
    hab: Habitat, fake_openai: FakeOpenAI
) -> None:
    memory = hab.memory("scout")
    closed = await memory.remember("The north bridge is closed for repairs.")
    detour = await memory.remember("The detour goes by the harbour.")
    await memory.remember("Unrelated: the cafe opens at nine.")
    asked = (await hab.messages.send("scout", "How do I cross the river?", sender="human:alice")).id
    note = await hab.ledger.append("note.recorded", actor="agent:scout", content="planning a route")
    context = ContextRecord(memories=(closed.id, detour.id), messages=(asked,), tokens=40)

    call = await hab.models.chat("agent:scout", "How do I cross?", context=context, causes=[note.id])

    event = await hab.ledger.get(call.event)
    assert event.causes == (note.id, closed.id, detour.id, asked)
    assert (event.meta["memories"], event.meta.get("facts", 0), event.meta["messages"]) == (2, 0, 1)
    assert event.meta["context_tokens"] == 40
    why = await hab.ledger.why(call.event)
    ids = {e.id for e in why.nodes}
    assert {closed.id, detour.id, asked, note.id} <= ids
    remembered = [e for e in why.nodes if e.kind == "memory.remembered"]
    assert {e.id for e in remembered} == {closed.id, detour.id}  # exactly the memories it was given


async def test_a_huge_prompt_is_recorded_cut_short_under_the_content_limit(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", max_content_bytes=4096)
    async with await Habitat.init(settings.path, settings=settings) as hab:
        use_fake(hab, fake_openai)
        call = await hab.models.chat("system", [ChatMessage(role="user", content="z" * 20_000)])
        event = await hab.ledger.get(call.event)
        assert event.meta["truncated"] is True
        text = str(content(event)["messages"][0]["content"])
        assert text.startswith("zzz") and text.endswith("... [truncated]") and len(text) < 4096
        assert content(event)["completion"]["text"] == "Hello from the fake model."


async def test_unknown_providers_and_missing_models_are_caller_mistakes(hab: Habitat) -> None:
    with pytest.raises(InvalidRequestError, match=r"no model provider 'nope'; configured: scripted, local"):
        await hab.models.chat("system", "hello", provider="nope")
    hab.models.add_provider("bare", OpenAIProvider("bare", "http://127.0.0.1:9/v1"))
    with pytest.raises(InvalidRequestError, match=r"model provider 'bare' has no chat_model; pass model="):
        await hab.models.chat("system", "hello", provider="bare")
    with pytest.raises(InvalidRequestError, match="at least one message"):
        await hab.models.chat("system", [])
    with pytest.raises(InvalidRequestError, match="temperature"):
        await hab.models.chat("system", "hello", temperature=5)
    with pytest.raises(InvalidRequestError, match="1-64 letters"):
        hab.models.add_provider("has space", OpenAIProvider("x", "http://127.0.0.1:9/v1"))
    with pytest.raises(InvalidRequestError, match="base_url must be an http"):
        OpenAIProvider("x", "localhost:11434")


async def test_a_closed_habitat_closes_its_gateway(hab: Habitat) -> None:
    gateway = hab.models
    await hab.close()
    with pytest.raises(HabitatClosedError, match="model gateway"):
        await gateway.chat("system", "hello")


async def test_a_read_only_habitat_refuses_before_anything_is_sent(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    environ = {"HABITUS_MODEL_URL": fake_openai.url, "HABITUS_MODEL_NAME": "m"}
    settings = Settings.resolve(config_file=None, environ=environ, path=tmp_path / "h")
    await (await Habitat.init(settings.path, settings=settings)).close()
    async with await Habitat.open(settings=settings, read_only=True) as hab:
        with pytest.raises(ReadOnlyHabitatError):
            await hab.models.chat("system", "hello")
        with pytest.raises(ReadOnlyHabitatError):
            await hab.models.embed("system", ["hello"], model="e")
    assert fake_openai.requests == []
