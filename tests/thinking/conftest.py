"""Habitats for the thinking tests (the deterministic hash embedder), and the fake OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from habitus import Habitat, Settings
from habitus.memory import HashEmbedder
from tests.models.fake_openai import fake_openai

__all__ = ["fake_openai", "hab"]


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=128))
    try:
        yield h
    finally:
        await h.close()
