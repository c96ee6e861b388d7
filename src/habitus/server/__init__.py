"""The server: the HTTP API (OpenAPI), MCP over streamable HTTP, and the dashboard, over one habitat.

Needs the ``server`` extra (``pip install 'habitus[server]'``).
"""

from habitus.server._app import create_app

__all__ = ["create_app"]
