"""Fixtures for the tools' tests: a habitat with an agent owned by a human, and its tool registry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from habitus import Habitat, Settings


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    """A new habitat with agent ``scout``, owned by ``human:alice``."""
    h = await Habitat.init(settings.path, settings=settings)
    await h.agents.spawn("scout", behaviour="Worker", owner="human:alice")
    try:
        yield h
    finally:
        await h.close()
