"""The ``habitus`` command-line interface (private: use the command, not this module)."""

from habitus._cli import _agents, _memory  # noqa: F401  (register the agent and memory commands on cli)
from habitus._cli._main import cli, main

__all__ = ["cli", "main"]
