"""Shared fixtures: fresh habitats in temporary directories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from habitus import Habitat, Settings, SyncHabitat


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings that ignore any habitus.toml or HABITUS_* in the developer's environment."""
    return Settings.resolve(config_file=None, environ={}, path=tmp_path / "habitat")


@pytest.fixture
async def habitat(settings: Settings) -> AsyncIterator[Habitat]:
    """A new habitat, opened for writing (async API)."""
    hab = await Habitat.init(settings.path, settings=settings)
    try:
        yield hab
    finally:
        await hab.close()


@pytest.fixture
def sync_habitat(settings: Settings) -> Iterator[SyncHabitat]:
    """A new habitat, opened for writing (sync facade)."""
    hab = SyncHabitat.init(settings.path, settings=settings)
    try:
        yield hab
    finally:
        hab.close()
