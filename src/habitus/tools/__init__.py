"""Tools: a registry of Python functions, sandboxed programs and MCP servers' tools; each call an event.

Reach the registry as :attr:`habitus.Habitat.tools`; see ``docs/tools.md``.
Importing this package registers the ``tool.*`` event kinds.
"""

from habitus.tools._kinds import FailureType, ToolSource
from habitus.tools._registry import ToolRegistry
from habitus.tools._sandbox import Isolation, Limit, SandboxLimits, SandboxResult, run_sandboxed
from habitus.tools._tool import Tool, ToolFailure, ToolResult

__all__ = [
    "FailureType",
    "Isolation",
    "Limit",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolFailure",
    "ToolRegistry",
    "ToolResult",
    "ToolSource",
    "run_sandboxed",
]
