"""The ``habitus`` command-line interface (private: use the command, not this module)."""

from habitus._cli import _agents  # noqa: F401  (registers the agent commands on cli)
from habitus._cli._main import cli, main

__all__ = ["cli", "main"]
