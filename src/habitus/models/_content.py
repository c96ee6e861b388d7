"""What a ``model.called`` event's content holds: the prompt and the answer, cut short to fit the content limit."""

from __future__ import annotations

from typing import Any

from habitus.ledger._codec import encode_content
from habitus.models._types import ChatRequest, Completion

__all__ = ["call_content", "fit"]

_MARK = "... [truncated]"


def call_content(request: ChatRequest, completion: Completion) -> dict[str, Any]:
    """The content of the ``model.called`` event recording ``request`` and its ``completion``."""
    content: dict[str, Any] = {
        "messages": [m.model_dump(mode="json", exclude_defaults=True) for m in request.messages],
        "completion": {
            "text": completion.text,
            "tool_calls": [c.model_dump(mode="json") for c in completion.tool_calls],
        },
    }
    if request.tools:
        content["tools"] = [t.name for t in request.tools]
    return content


def _size(content: dict[str, Any]) -> int:
    encoded = encode_content(content)
    return 0 if encoded is None else len(encoded[1])


def fit(content: dict[str, Any], limit: int) -> tuple[dict[str, Any], bool]:
    """``content`` as it is if it fits in ``limit`` bytes; else with its long texts cut short (and, if that
    is not enough, its oldest messages dropped), and True."""
    if _size(content) <= limit:
        return content, False
    low, high = 0, max(_longest(content), 0)
    while low < high:  # the longest cut that fits
        middle = (low + high + 1) // 2
        if _size(_cut(content, middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    fitted = _cut(content, low)
    while _size(fitted) > limit and fitted["messages"]:
        fitted["messages"] = fitted["messages"][1:]
    if _size(fitted) > limit:
        fitted = {"messages": [], "completion": {"text": _MARK, "tool_calls": []}}
    return fitted, True


def _longest(content: dict[str, Any]) -> int:
    texts = [m.get("content") or "" for m in content["messages"]]
    texts.append(content["completion"]["text"])
    return max(len(t) for t in texts)


def _cut(content: dict[str, Any], cap: int) -> dict[str, Any]:
    def short(text: str) -> str:
        return text if len(text) <= cap else text[:cap] + _MARK

    messages = []
    for m in content["messages"]:
        m = dict(m)
        if isinstance(m.get("content"), str):
            m["content"] = short(m["content"])
        messages.append(m)
    completion = dict(content["completion"])
    completion["text"] = short(completion["text"])
    return {**content, "messages": messages, "completion": completion}
