"""Fixtures: the backend matrix that the contract suite runs over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessionstore.backends import InMemoryBackend, SessionBackend
from tests.queues import QUEUE_KINDS, QueueHandle, open_queue
from tests.stores import BACKEND_KINDS, StoreHandle, open_store


@pytest.fixture(params=BACKEND_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StoreHandle]:
    """An open, empty store of each kind (the real ones need scripts/servers up)."""
    handle = await open_store(request.param, role="cassandra")
    try:
        yield handle
    finally:
        await handle.backend.aclose()


@pytest.fixture
async def memory_backend() -> AsyncIterator[SessionBackend]:
    async with InMemoryBackend() as backend:
        yield backend


@pytest.fixture(params=QUEUE_KINDS)
async def repair_queue(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[QueueHandle]:
    """An open, empty repair queue of each kind."""
    async with open_queue(request.param, tmp_path) as handle:
        yield handle
