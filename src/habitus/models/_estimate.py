"""Token estimates for providers that do not count: about four characters a token."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from habitus.models._types import ChatRequest, ToolCall

__all__ = ["completion_chars", "estimate_tokens", "request_chars"]


def estimate_tokens(chars: int) -> int:
    """Tokens a text of ``chars`` characters is taken to use when the provider does not say: ceil(chars / 4)."""
    return math.ceil(chars / 4)


def request_chars(request: ChatRequest) -> int:
    """Characters of everything a request sends the model: messages, tool calls and tool specs."""
    total = 0
    for message in request.messages:
        total += len(message.content or "")
        for call in message.tool_calls:
            total += len(call.name) + len(json.dumps(call.arguments))
    for tool in request.tools:
        total += len(tool.name) + len(tool.description) + len(json.dumps(tool.parameters))
    return total


def completion_chars(text: str, tool_calls: Sequence[ToolCall]) -> int:
    """Characters of an answer: its text and its tool calls."""
    return len(text) + sum(len(c.name) + len(json.dumps(c.arguments)) for c in tool_calls)
