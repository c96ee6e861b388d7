"""A tiny MCP server for the tests, on the installed SDK's server API: run as ``python mcp_server.py``.

With ``--http PORT`` it serves streamable HTTP on 127.0.0.1 instead of stdio.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

server = MCPServer("habitus-test-tools")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Say it louder."""
    return text.upper() + "!"


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason given."""
    raise ToolError(f"refused: {reason}")


@server.tool(annotations=ToolAnnotations(destructive_hint=True))
def erase(path: str) -> str:
    """Pretends to erase a path (marked destructive)."""
    return f"erased {path}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
