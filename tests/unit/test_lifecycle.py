"""The lifecycle guard shared by backends and queues."""

from __future__ import annotations

import asyncio

import pytest

from sessionstore import RepositoryClosedError
from sessionstore.backends.base import BackendState, LifecycleMixin


class Counting(LifecycleMixin):
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.gate = asyncio.Event()

    async def _open(self) -> None:
        await self.gate.wait()
        self.opened += 1

    async def _close(self) -> None:
        self.closed += 1

    async def use(self) -> None:
        await self._ensure_open()


async def test_concurrent_first_calls_open_once() -> None:
    obj = Counting()
    calls = [asyncio.create_task(obj.use()) for _ in range(5)]
    await asyncio.sleep(0)
    obj.gate.set()
    await asyncio.gather(*calls)
    assert obj.opened == 1
    assert obj._state is BackendState.OPEN


async def test_close_during_open_wins_and_releases() -> None:
    obj = Counting()
    call = asyncio.create_task(obj.use())
    await asyncio.sleep(0)
    await obj.aclose()
    obj.gate.set()
    with pytest.raises(RepositoryClosedError):
        await call
    assert (obj.opened, obj.closed) == (1, 1)


async def test_close_is_idempotent_and_final() -> None:
    obj = Counting()
    obj.gate.set()
    async with obj:
        pass
    await obj.aclose()
    assert obj.closed == 1
    with pytest.raises(RepositoryClosedError):
        await obj.use()
