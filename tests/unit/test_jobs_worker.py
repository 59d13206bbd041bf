"""The queue worker on the in-memory queue and stores: delete only after success, hand
failed units back, keep long units invisible, stop cleanly, and the unit queue's batching."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import pytest

from sessionstore import (
    BackendError,
    BackendRejectedError,
    BackendUnavailableError,
    ConfigurationError,
    InMemoryBackend,
)
from sessionstore.jobs import BackfillJob, WorkUnit
from sessionstore.jobs.handler import UnitRunner
from sessionstore.jobs.unit_queue import InMemoryUnitQueue, message_batches
from sessionstore.jobs.worker import QueueWorker
from sessionstore.phases import Store
from sessionstore.testing import FaultInjectingBackend
from tests.helpers import make_session


class Stores:
    """Cassandra (seeded, wrapped to slow or fail) and an empty DocumentDB, in memory."""

    def __init__(self, sessions: int) -> None:
        self.cassandra = InMemoryBackend(name="cassandra")
        self.documentdb = InMemoryBackend(name="documentdb")
        self.source = FaultInjectingBackend(self.cassandra)
        self.sessions = sessions

    async def seed(self) -> None:
        for i in range(self.sessions):
            await self.cassandra.save(make_session(revision=100 + i))

    def runner(self, page_size: int = 100) -> UnitRunner:
        stores = {Store.CASSANDRA: self.source, Store.DOCUMENTDB: self.documentdb}
        return UnitRunner(stores, page_size=page_size)

    def plan(self, parts: int) -> list[WorkUnit]:
        return BackfillJob(self.cassandra, self.documentdb, name="bf").plan(parts=parts)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 10 s")


@pytest.fixture
async def stores() -> Stores:
    made = Stores(40)
    await made.seed()
    return made


def worker(
    queue: InMemoryUnitQueue, stores: Stores, page_size: int = 100, **options: object
) -> QueueWorker:
    defaults: dict[str, object] = {"wait_seconds": 1, "until_drained": True, "retry_delay": 0}
    defaults.update(options)
    return QueueWorker(queue, stores.runner(page_size), **defaults)  # type: ignore[arg-type]


async def test_runs_every_unit_and_deletes_each_message_after_it(stores: Stores) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=30)
    plan = stores.plan(8)
    await queue.enqueue(plan)

    report = await worker(queue, stores, concurrency=3).run()

    assert report.stopped == "queue drained"
    assert report.units_done == 8
    assert report.units_failed == report.redelivered == report.released == 0
    assert report.counts["backfill"]["sessions"] == report.sessions == 40
    assert sorted(queue.deleted) == sorted(u.to_json() for u in plan)
    assert stores.documentdb.records() == stores.cassandra.records()
    assert report.to_dict()["units"] == {"done": 8, "failed": 0, "released": 0, "redelivered": 0}


async def test_a_failed_unit_returns_to_the_queue_and_dead_letters_after_max_receives(
    stores: Stores,
) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=30, max_receive_count=2)
    plan = stores.plan(4)
    await queue.enqueue(plan)
    await queue.put_raw('{"job": "bf", "unit_id": "x"}')  # malformed: never succeeds
    # One scan fails with an error that is not retried: its unit runs again later.
    stores.source.fail_next(1, operation="scan", error=BackendError)

    report = await worker(queue, stores, concurrency=1, max_consecutive_failures=99).run()

    assert report.units_done == 4  # the failed unit succeeded on its second delivery
    assert report.redelivered >= 2
    assert report.units_failed == 1 + 2  # one unit once, the malformed message twice
    assert any(what.startswith("message ") for what in report.failures)
    assert queue.dead_letters == ['{"job": "bf", "unit_id": "x"}']
    assert stores.documentdb.records() == stores.cassandra.records()


async def test_an_unexpected_error_fails_the_unit_not_the_worker(stores: Stores) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=30, max_receive_count=1)
    await queue.enqueue(stores.plan(3))
    runner = stores.runner()
    run = runner.run
    calls = 0

    async def buggy(unit: WorkUnit) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await run(unit)

    runner.run = buggy  # type: ignore[assignment, method-assign]
    report = await QueueWorker(
        queue, runner, wait_seconds=1, until_drained=True, retry_delay=0
    ).run()

    assert (report.units_done, report.units_failed) == (2, 1)
    assert list(report.failures.values()) == ["RuntimeError: a bug"]
    assert len(queue.dead_letters) == 1  # handed back, then dead-lettered (1 receive)


async def test_a_rejected_request_stops_the_worker_and_leaves_units_queued(
    stores: Stores,
) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=30)
    await queue.enqueue(stores.plan(6))
    stores.source.go_down(error=BackendRejectedError)

    report = await worker(queue, stores, concurrency=1).run()

    assert report.stopped is not None
    assert report.stopped.startswith("stopped after an error retrying cannot fix")
    assert report.units_done == 0
    counts = await queue.counts()
    assert counts.visible + counts.in_flight == 6  # nothing was deleted


async def test_the_heartbeat_keeps_a_long_unit_from_a_second_worker(stores: Stores) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=1)
    [unit] = stores.plan(1)
    await queue.enqueue([unit])
    stores.source.add_latency(0.6, operation="scan")  # pages of 10 sessions: 4-5 pages, ~3 s

    reports = await asyncio.gather(
        worker(queue, stores, page_size=10, concurrency=1).run(),
        worker(queue, stores, page_size=10, concurrency=1).run(),
    )

    # The second worker polled all along: had the message become visible while the unit
    # ran (past the 1 s timeout), it would have received it again.
    assert sum(r.units_done for r in reports) == 1
    assert sum(r.redelivered for r in reports) == 0
    assert queue.deleted == [unit.to_json()]
    assert stores.documentdb.records() == stores.cassandra.records()


@pytest.mark.parametrize(("grace", "finished"), [(10.0, True), (0.0, False)])
async def test_a_stop_finishes_or_releases_the_units_in_hand(
    stores: Stores, grace: float, finished: bool
) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=300)
    plan = stores.plan(2)
    await queue.enqueue(plan)
    stores.source.add_latency(0.3, operation="scan")
    stop = asyncio.Event()
    run = asyncio.create_task(worker(queue, stores, concurrency=2, grace_seconds=grace).run(stop))
    await _until(lambda: len([c for c in stores.source.calls if c.operation == "scan"]) >= 2)
    stop.set()
    report = await run

    assert report.stopped == "stopped by a signal"
    if finished:
        assert (report.units_done, report.released) == (2, 0)
        assert await queue.receive(10, wait_seconds=0) == []
    else:
        assert (report.units_done, report.released) == (0, 2)
        # released: back at once, not after the 300 s visibility timeout
        again = await queue.receive(10, wait_seconds=0)
        assert sorted(m.body for m in again) == sorted(u.to_json() for u in plan)
        assert all(m.receive_count == 2 for m in again)


async def test_cancelling_the_worker_releases_its_units(stores: Stores) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=300)
    await queue.enqueue(stores.plan(1))
    stores.source.freeze(operation="scan")  # the unit hangs
    run = asyncio.create_task(worker(queue, stores, concurrency=1).run())
    await _until(lambda: bool(stores.source.calls))  # the unit started
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [m.receive_count for m in await queue.receive(10, wait_seconds=0)] == [2]


async def test_units_of_one_job_share_one_job_object_and_its_rate(stores: Stores) -> None:
    runner = stores.runner()
    plan = stores.plan(3)
    jobs = {id(runner.job_for(u)) for u in plan}
    assert len(jobs) == 1
    other = BackfillJob(stores.cassandra, stores.documentdb, name="bf-2").plan(parts=1)[0]
    assert id(runner.job_for(other)) not in jobs


async def test_a_receive_error_is_retried(stores: Stores) -> None:
    queue = InMemoryUnitQueue(visibility_timeout=30)
    await queue.enqueue(stores.plan(2))
    calls: collections.Counter[str] = collections.Counter()
    receive = queue.receive

    async def flaky(*args: object, **kwargs: object) -> object:
        calls["receive"] += 1
        if calls["receive"] == 1:
            raise BackendUnavailableError("injected", store="sqs")
        return await receive(*args, **kwargs)  # type: ignore[arg-type]

    queue.receive = flaky  # type: ignore[method-assign]
    report = await worker(queue, stores).run()
    assert report.units_done == 2
    assert calls["receive"] >= 2


def test_message_batches_respect_sqs_limits() -> None:
    bodies = [f"{i:03d}" + "x" * (30_000 if i % 3 else 100) for i in range(40)]
    batches = message_batches(bodies)
    assert [b for batch in batches for b in batch] == bodies  # order kept, nothing lost
    assert all(1 <= len(b) <= 10 for b in batches)
    assert all(sum(len(x) for x in b) <= 256 * 1024 for b in batches)
    with pytest.raises(ConfigurationError, match="256 KiB"):
        message_batches(["x" * (256 * 1024 + 1)])
