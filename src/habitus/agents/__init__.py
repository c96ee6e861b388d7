"""Agents: identity, lifecycle, durable state, behaviours, and the runtime that runs them."""

from habitus.agents._behaviour import Agent, App, handles
from habitus.agents._context import AgentContext, AgentState
from habitus.agents._models import AgentInfo, Message
from habitus.agents._registry import Agents, SpawnSpec
from habitus.agents._runtime import Runtime, RuntimeOptions

__all__ = [
    "Agent",
    "AgentContext",
    "AgentInfo",
    "AgentState",
    "Agents",
    "App",
    "Message",
    "Runtime",
    "RuntimeOptions",
    "SpawnSpec",
    "handles",
]
