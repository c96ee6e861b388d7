"""Fixtures for the server's tests: a habitat, the app over it, and clients with tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from habitus import Habitat, Settings
from habitus.memory import HashEmbedder
from habitus.server import create_app


@dataclass
class Served:
    """A habitat with agents scout and buddy (owned by human:alice) and rival (human:bob), its app, and tokens."""

    hab: Habitat
    app: FastAPI
    tokens: dict[str, str]  # principal -> secret

    def client(self, principal: str | None = None) -> httpx.AsyncClient:
        """A client acting as ``principal`` (its token), or with no token."""
        headers = {"Authorization": f"Bearer {self.tokens[principal]}"} if principal else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://habitus.test", headers=headers
        )


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    hab = await Habitat.init(settings.path, settings=settings)
    hab.use_embedder(HashEmbedder(dim=64))
    for agent, owner in [("scout", "human:alice"), ("buddy", "human:alice"), ("rival", "human:bob")]:
        await hab.agents.spawn(agent, behaviour="Worker", owner=owner)
    tokens = {}
    for principal in ("human:alice", "human:bob", "agent:scout", "agent:rival"):
        _, secret = await hab.control.tokens.create(principal, name="test")
        tokens[principal] = secret
    try:
        yield Served(hab, create_app(hab), tokens)
    finally:
        await hab.close()
