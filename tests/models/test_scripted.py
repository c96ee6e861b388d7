"""The scripted model: deterministic, offline answers for tests and demos."""

from __future__ import annotations

import math

import pytest

from habitus import Habitat
from habitus.errors import InvalidRequestError
from habitus.models import ChatMessage, ChatRequest, Completion, ScriptedModel, ToolCall


def request(*messages: tuple[str, str]) -> ChatRequest:
    return ChatRequest(
        model="scripted",
        messages=tuple(ChatMessage(role=role, content=text) for role, text in messages),
    )


async def test_the_script_is_answered_in_order_then_the_default_answer() -> None:
    weather = ToolCall(id="c1", name="weather", arguments={"city": "Oslo"})
    model = ScriptedModel(
        [
            "Hello!",
            Completion(model="scripted", tool_calls=(weather,)),
            lambda r: f"You asked {len(r.messages)} things",
        ]
    )
    assert model.remaining == 3
    assert (await model.complete(request(("user", "hi")))).text == "Hello!"
    second = await model.complete(request(("user", "weather?")))
    assert second.tool_calls == (weather,) and second.finish_reason == "tool_calls"
    assert (await model.complete(request(("user", "a"), ("user", "b")))).text == "You asked 2 things"
    assert model.remaining == 0
    default = await model.complete(
        request(("system", "Memory: the bridge is closed.\nMemory: the ferry runs hourly."), ("user", "Can I cross?"))
    )
    assert default.text == 'You said: "Can I cross?". (scripted model; 2 lines of context)'
    assert [r.messages[-1].content for r in model.requests][:2] == ["hi", "weather?"]


async def test_a_responder_answers_once_the_script_is_spent() -> None:
    async def responder(r: ChatRequest) -> str:
        return f"echo: {r.messages[-1].content}"

    model = ScriptedModel(["first"], responder=responder)
    assert (await model.complete(request(("user", "one")))).text == "first"
    assert (await model.complete(request(("user", "two")))).text == "echo: two"
    model.add("scripted again")
    assert (await model.complete(request(("user", "three")))).text == "scripted again"


async def test_the_default_answer_reports_a_tool_result() -> None:
    model = ScriptedModel()
    tool_result = ChatMessage(role="tool", tool_call_id="c1", content='{"celsius": 21}')
    r = ChatRequest(model="scripted", messages=(ChatMessage(role="user", content="Weather?"), tool_result))
    assert (await model.complete(r)).text.startswith('The tool answered: {"celsius": 21}.')


async def test_answers_stream_word_by_word_with_estimated_usage() -> None:
    model = ScriptedModel(["The north bridge is closed."])
    pieces: list[str] = []
    completion = await model.complete(request(("user", "x" * 10)), on_text=pieces.append)
    assert pieces == ["The ", "north ", "bridge ", "is ", "closed."]
    assert "".join(pieces) == completion.text
    assert completion.usage.prompt_tokens == math.ceil(10 / 4)
    assert completion.usage.completion_tokens == math.ceil(len(completion.text) / 4)


async def test_a_script_item_of_the_wrong_type_is_a_clear_error() -> None:
    model = ScriptedModel([lambda r: 42])  # type: ignore[list-item,return-value]
    with pytest.raises(InvalidRequestError, match="returned int, not a Completion or a str"):
        await model.complete(request(("user", "hi")))


async def test_embeddings_are_deterministic_unit_vectors_that_share_words() -> None:
    model = ScriptedModel(dimensions=32)
    a, b, c, again = await model.embed(
        ["the bridge is closed", "the bridge is open", "quarterly revenue rose", "the bridge is closed"]
    )
    assert a == again and len(a) == 32
    for vector in (a, b, c):
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)

    def cosine(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cosine(a, b) > cosine(a, c)
    with pytest.raises(InvalidRequestError):
        await model.embed("one string")


async def test_a_scripted_model_added_to_a_habitat_records_its_calls(habitat: Habitat) -> None:
    model = ScriptedModel(["Scripted answer."], name="demo")
    habitat.models.add_provider("demo", model, default=True)
    streamed: list[str] = []
    call = await habitat.models.chat(
        "system", [ChatMessage(role="user", content="Hello?")], on_text=streamed.append, causes=()
    )
    assert call.text == "Scripted answer." and "".join(streamed) == call.text
    assert call.provider == "demo" and call.model == "scripted"
    event = await habitat.ledger.get(call.event)
    assert event.meta["streamed"] is True and event.meta["prompt_tokens"] == 2
    vectors = await habitat.models.embed("system", ["a b", "c d"])
    assert len(vectors) == 2 and len(vectors[0]) == 64
