"""The inference gateway: model providers behind one protocol, every call checked, budgeted and recorded."""

from habitus.models._config import ModelsConfig, ProviderConfig
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
    "ModelProvider",
    "ModelsConfig",
    "OnText",
    "ProviderConfig",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
