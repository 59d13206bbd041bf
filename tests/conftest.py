"""Fixtures: the backend matrix that the contract suite runs over."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sessionstore.backends import InMemoryBackend, SessionBackend
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
