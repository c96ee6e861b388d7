"""The inference gateway: model providers behind one protocol, every call checked, budgeted and recorded."""

from habitus.models import _kinds  # noqa: F401  (registers the model kinds before any habitat replays its ledger)
from habitus.models._config import ModelsConfig, ProviderConfig
from habitus.models._gateway import ModelCall, ModelGateway
from habitus.models._openai import OpenAIProvider
from habitus.models._scripted import ScriptedModel
from habitus.models._types import (
    ChatMessage,
    ChatRequest,
    Completion,
    ContextRecord,
    ModelProvider,
    OnText,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ContextRecord",
    "ModelCall",
    "ModelGateway",
    "ModelProvider",
    "ModelsConfig",
    "OnText",
    "OpenAIProvider",
    "ProviderConfig",
    "ScriptedModel",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
