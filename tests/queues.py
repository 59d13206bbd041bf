"""Open an empty repair queue of each kind for a test (the queue contract's matrix)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sessionstore import InMemoryRepairQueue, RepairQueue, SqliteRepairQueue

QUEUE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
]


@dataclasses.dataclass
class QueueHandle:
    """A queue plus the timings its tests may rely on."""

    queue: RepairQueue
    kind: str
    #: A lease or back-off short enough to wait out in a test, in seconds.
    short_lease: float = 0.2
    #: How much later than asked an expired lease may come back.
    slack: float = 0.1


async def open_queue(kind: str, tmp_path: Path) -> QueueHandle:
    queue: RepairQueue
    if kind == "memory":
        queue = InMemoryRepairQueue()
    elif kind == "sqlite":
        queue = SqliteRepairQueue(tmp_path / "repairs.db")
    else:
        raise ValueError(kind)
    await queue.__aenter__()
    return QueueHandle(queue, kind)
