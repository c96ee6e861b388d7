"""Tools: a registry of Python functions, sandboxed programs and MCP servers' tools; each call an event."""
