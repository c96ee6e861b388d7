"""Thinking agents: context assembled from memory under a token budget, and agents whose handler is a model.

- :func:`build_context` gathers what an agent believes, recalls and was told about a task,
  within a token budget, and records exactly which events went into the prompt.
- :class:`ThinkingAgent` runs receive → recall → assemble → call the model → use tools →
  reply and remember, every step an event that ``why`` can follow.
"""

from habitus.thinking._agent import ThinkingAgent, Thought, ToolUse
from habitus.thinking._context import BuiltContext, TokenCounter, build_context, estimate_tokens

__all__ = [
    "BuiltContext",
    "ThinkingAgent",
    "Thought",
    "TokenCounter",
    "ToolUse",
    "build_context",
    "estimate_tokens",
]
