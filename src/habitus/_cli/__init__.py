"""The ``habitus`` command-line interface (private: use the command, not this module)."""

from habitus._cli import _agents, _control, _mcp, _memory, _models, _server  # noqa: F401  (register the commands)
from habitus._cli._main import cli, main

__all__ = ["cli", "main"]
