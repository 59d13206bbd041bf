"""Open an empty repair queue of each kind for a test (the queue contract's matrix)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessionstore import InMemoryRepairQueue, RepairQueue, SqliteRepairQueue, SqsRepairQueue

QUEUE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    # A fresh queue and dead-letter queue on the real SQS-compatible server (ElasticMQ).
    pytest.param("sqs", id="sqs", marks=pytest.mark.real),
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


@contextlib.asynccontextmanager
async def open_queue(kind: str, tmp_path: Path) -> AsyncIterator[QueueHandle]:
    """An open, empty queue of ``kind``; closed (and an SQS queue deleted) afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        queue: RepairQueue
        # SQS leases and long polls are whole seconds.
        timings: dict[str, float] = {}
        if kind == "memory":
            queue = InMemoryRepairQueue()
        elif kind == "sqlite":
            queue = SqliteRepairQueue(tmp_path / "repairs.db")
        elif kind == "sqs":
            from tests.real.sqs import fresh_queue, sqs_client

            # More receives than any contract test makes: only the tests move messages
            # to the dead-letter queue.
            sqs = await asyncio.to_thread(stack.enter_context, fresh_queue(max_receive_count=5))
            client = sqs_client()
            stack.callback(client.close)
            queue = SqsRepairQueue(sqs.url, client=client)
            timings = {"short_lease": 1.0, "slack": 0.5}
        else:
            raise ValueError(kind)
        await queue.__aenter__()
        stack.push_async_callback(queue.aclose)
        yield QueueHandle(queue, kind, **timings)
