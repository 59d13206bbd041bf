"""The repair queues and worker."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

from sessionstore import (
    InMemoryRepairQueue,
    Phase,
    RepairWorker,
    SqliteRepairQueue,
)
from sessionstore.testing import memory_repository
from tests.helpers import make_session


async def test_sqlite_and_memory_queues_keep_one_entry_per_session(tmp_path: Path) -> None:
    for queue in (InMemoryRepairQueue(), SqliteRepairQueue(tmp_path / "q.db")):
        async with queue:
            sid = uuid.uuid4()
            await queue.enqueue(sid, "a")
            await queue.enqueue(sid, "b")
            assert await queue.depth() == queue.cached_depth() == 1
            [task] = await queue.claim(10)
            await queue.ack(task)
            assert await queue.depth() == queue.cached_depth() == 0


CRASHING_WRITER = """
import asyncio, os, sys, uuid
from sessionstore import SqliteRepairQueue
async def main():
    q = SqliteRepairQueue(sys.argv[1])
    await q.__aenter__()
    for line in sys.argv[2:]:
        await q.enqueue(uuid.UUID(line), "secondary_write_failed")
    os._exit(9)  # die without closing anything
asyncio.run(main())
"""


async def test_sqlite_queue_survives_a_crash(tmp_path: Path) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    path = tmp_path / "repairs.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_WRITER,
        str(path),
        *map(str, ids),
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    assert await proc.wait() == 9
    async with SqliteRepairQueue(path) as q:
        assert {t.session_id for t in await q.claim(100)} == set(ids)


async def test_worker_copies_newest_in_either_direction() -> None:
    repo, stores = memory_repository(Phase.DUAL_WRITE)
    async with repo:
        stores.documentdb.fail_next(2, operation="save")
        a = await repo.save(make_session())
        b = await repo.save(make_session())
        # b later gets a newer version in DocumentDB only (as after a rollback).
        newer_b = b.model_copy(update={"revision": b.revision + 100})
        await stores.documentdb.inner.save(newer_b)
        worker = RepairWorker(
            cassandra=stores.cassandra, documentdb=stores.documentdb, queue=stores.repairs
        )
        report = await worker.drain()
        assert report.copied == 2
        assert report.failed == 0
        for sid, rev in ((a.session_id, a.revision), (b.session_id, newer_b.revision)):
            assert (await stores.cassandra.get(sid)).revision == rev  # type: ignore[union-attr]
            assert (await stores.documentdb.get(sid)).revision == rev  # type: ignore[union-attr]
        assert await stores.repairs.depth() == 0


async def test_worker_retries_when_a_store_is_down() -> None:
    repo, stores = memory_repository(Phase.DUAL_WRITE)
    async with repo:
        stores.documentdb.fail_next(1, operation="save")
        s = await repo.save(make_session())
        stores.documentdb.go_down()
        worker = RepairWorker(
            cassandra=stores.cassandra,
            documentdb=stores.documentdb,
            queue=stores.repairs,
            retry_delay_seconds=0,
        )
        report = await worker.drain(max_rounds=1)
        assert report.failed == 1
        assert await stores.repairs.depth() == 1
        stores.documentdb.heal()
        report = await worker.drain()
        assert report.copied == 1
        assert (await stores.documentdb.get(s.session_id)).revision == s.revision  # type: ignore[union-attr]
