"""Fill a Cassandra table fast: the raw driver, many ``execute_async`` in flight."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from benchmarks._raw import RawCassandra, cql
from sessionstore import StudentSession
from sessionstore.backends._cql_codec import to_row


def rows_of(items: Iterable[StudentSession]) -> Iterator[tuple[Any, ...]]:
    """``to_row`` of each session, with a revision (what the table would hold)."""
    base = time.time_ns() // 1000 - 10**9  # historical: older than anything written later
    for n, s in enumerate(items):
        yield to_row(s.model_copy(update={"revision": base + n}))


def cloned_rows(template: StudentSession, n: int) -> Iterator[tuple[Any, ...]]:
    """``n`` rows that differ from ``template`` in their ids only (cheap to make)."""
    row = to_row(template.model_copy(update={"revision": 1}))
    base = time.time_ns() // 1000 - 10**9
    for i in range(n):
        yield (uuid.uuid4(), f"student-{i:07d}", *row[2:9], base + i, False)


async def insert_rows(
    raw: RawCassandra, rows: Iterable[tuple[Any, ...]], *, window: int = 128
) -> int:
    """Insert every row (revision as write timestamp), ``window`` requests in flight."""
    limit = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    count = 0

    async def one(row: tuple[Any, ...]) -> None:
        try:
            bound = raw.insert.bind((*row, row[-2]))
            bound.consistency_level = raw.consistency
            await cql(raw.session, bound)
        finally:
            limit.release()

    for row in rows:
        await limit.acquire()
        task = asyncio.ensure_future(one(row))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        count += 1
    if tasks:
        await asyncio.gather(*tasks)
    return count
