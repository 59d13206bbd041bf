"""BackfillJob on in-memory stores: copies, revision rule, checkpoints, faults, throttling."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessionstore import (
    BackendRejectedError,
    BackendTimeoutError,
    ConfigurationError,
    InMemoryBackend,
    Phase,
    StoredRecord,
)
from sessionstore.jobs import (
    BackfillJob,
    JobAction,
    MemoryCheckpointStore,
    PageBudget,
    RetryPolicy,
    SqliteCheckpointStore,
    UnitState,
    WorkUnit,
)
from sessionstore.model import encoded_size
from sessionstore.phases import Store
from sessionstore.testing import FaultInjectingBackend, memory_repository
from tests.helpers import make_session

FAST = RetryPolicy(attempts=5, base_delay=0.001, max_delay=0.002)


@pytest.fixture
async def stores() -> AsyncIterator[tuple[FaultInjectingBackend, FaultInjectingBackend]]:
    c = FaultInjectingBackend(InMemoryBackend(name="cassandra"))
    d = FaultInjectingBackend(InMemoryBackend(name="documentdb"))
    async with c, d:
        yield c, d


async def _seed(store: FaultInjectingBackend, n: int, *, tombstones: int = 0) -> None:
    for i in range(n):
        await store.inner.save(make_session(revision=1_000 + i))
    for i in range(tombstones):
        await store.inner.delete(uuid.uuid4(), 500 + i)


async def test_copies_every_session_and_tombstone_with_its_revision(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 120, tombstones=7)
    report = await BackfillJob(c, d, page_size=10).run(BackfillJob(c, d).plan(parts=16))
    assert report.ok()
    assert (report.counts["sessions"], report.counts["tombstones"]) == (120, 7)
    assert report.counts["records"] == 127
    assert d.inner.records() == c.inner.records()


async def test_never_overwrites_newer_target_data(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    old = make_session(revision=100)
    newer_in_target = old.model_copy(update={"revision": 200, "status": "graded"})
    deleted_later = make_session(revision=100)
    await c.inner.save(old)
    await c.inner.save(deleted_later)
    await d.inner.save(newer_in_target)  # a dual-write already landed
    await d.inner.delete(deleted_later.session_id, 300)  # and a dual-written delete
    await BackfillJob(c, d).run()
    assert d.inner.records()[old.session_id] == StoredRecord.of(newer_in_target)
    assert d.inner.records()[deleted_later.session_id].deleted


async def test_resumed_run_skips_completed_units_and_ends_identical(
    stores,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    c, d = stores
    await _seed(c, 200, tombstones=5)
    path = tmp_path / "cp.db"
    async with SqliteCheckpointStore(path) as cp:
        job = BackfillJob(c, d, name="bf", checkpoints=cp, retry=FAST, concurrency=2)
        units = job.plan(parts=20)
        # The target goes down after a while: some units complete, the rest fail.
        calls = 0
        real_save = d.inner.save

        async def save_then_die(session, **options):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls > 80:
                raise BackendTimeoutError("down", store="documentdb")
            return await real_save(session, **options)

        d.inner.save = save_then_die
        first = await job.run(units)
        assert not first.ok()
        assert first.failed_units
        done_first = {u for u, r in (await cp.units("bf")).items() if r.state is UnitState.DONE}
        assert 0 < len(done_first) < len(units)

        d.inner.save = real_save
        second = await BackfillJob(c, d, name="bf", checkpoints=cp).run(units)
        assert second.ok()
        assert second.units_skipped == len(done_first)
        assert second.units_run == len(units) - len(done_first)
        records = await cp.units("bf")
        assert all(records[u].starts == 1 for u in done_first), "a completed unit ran again"

    uninterrupted_target = InMemoryBackend(name="documentdb")
    async with uninterrupted_target:
        straight = await BackfillJob(c, uninterrupted_target).run(units=None)
    assert d.inner.records() == uninterrupted_target.records() == c.inner.records()
    assert second.counts == straight.counts  # the same totals as one uninterrupted run


async def test_a_finished_job_reruns_nothing_and_restart_runs_everything(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 30)
    cp = MemoryCheckpointStore()
    job = BackfillJob(c, d, name="bf", checkpoints=cp)
    units = job.plan(parts=8)
    await job.run(units)
    again = await job.run(units)
    assert (again.units_run, again.units_skipped, again.counts["sessions"]) == (0, 8, 30)
    restarted = await job.run(units, restart=True)
    assert (restarted.units_run, restarted.counts["sessions"]) == (8, 30)


async def test_a_different_plan_under_the_same_name_is_refused(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    cp = MemoryCheckpointStore()
    job = BackfillJob(c, d, name="bf", checkpoints=cp)
    await job.run(job.plan(parts=4))
    with pytest.raises(ConfigurationError, match="different plan"):
        await job.run(job.plan(parts=5))


async def test_transient_timeouts_are_retried_with_back_off(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 150)
    c.fail_randomly(0.2, operation="scan", seed=1, error=BackendTimeoutError)
    d.fail_randomly(0.2, operation="save", seed=2)
    job = BackfillJob(
        c,
        d,
        rate=100_000,
        retry=RetryPolicy(attempts=12, base_delay=0.001, max_delay=0.004),
        page_size=20,
    )
    report = await job.run(job.plan(parts=8))
    assert report.ok(), report.failed_units
    assert report.retries > 0 and report.back_offs == report.retries
    assert d.inner.records() == c.inner.records()


async def test_refused_records_fail_their_unit_but_not_the_job(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 40)
    victim = next(iter(c.inner.records()))
    real_save = d.inner.save

    async def refuse_one(session, **options):  # type: ignore[no-untyped-def]
        if session.session_id == victim:
            raise BackendRejectedError("document refused (DocumentTooLarge)", store="documentdb")
        return await real_save(session, **options)

    d.inner.save = refuse_one
    report = await BackfillJob(c, d, retry=FAST).run(BackfillJob(c, d).plan(parts=4))
    assert len(report.failed_units) == 1
    assert "refused 1 of the unit's sessions" in next(iter(report.failed_units.values()))
    assert report.stopped is None
    assert set(d.inner.records()) == set(c.inner.records()) - {victim}


async def test_credentials_refused_by_the_source_stop_the_job(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 10)
    c.go_down(operation="scan", error=BackendRejectedError)
    report = await BackfillJob(c, d, concurrency=1).run(BackfillJob(c, d).plan(parts=8))
    assert len(report.failed_units) == 1
    assert report.stopped is not None and "cannot fix" in report.stopped
    assert report.units_not_run == 7


async def test_an_outage_stops_the_job_after_consecutive_failures(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 10)
    c.go_down(operation="scan")
    job = BackfillJob(c, d, concurrency=1, retry=FAST, max_consecutive_failures=3)
    report = await job.run(job.plan(parts=10))
    assert len(report.failed_units) == 3
    assert report.units_not_run == 7
    assert "3 failed units in a row" in (report.stopped or "")


async def test_id_list_copies_only_those_and_counts_absent_ones(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 50)
    wanted = list(c.inner.records())[:7]
    absent = [uuid.uuid4(), uuid.uuid4()]
    job = BackfillJob(c, d)
    report = await job.run(job.plan_ids([*wanted, *absent], batch=3))
    assert (report.counts["sessions"], report.counts["absent"], report.units_planned) == (7, 2, 3)
    assert set(d.inner.records()) == set(wanted)


async def test_reverse_direction(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(d, 60, tombstones=3)
    job = BackfillJob(d, c)
    report = await job.run()
    assert (report.source, report.target) == (Store.DOCUMENTDB, Store.CASSANDRA)
    assert c.inner.records() == d.inner.records()


async def test_pages_are_bounded_by_page_size(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed(c, 300)
    limits: list[int] = []
    real_scan = c.inner.scan

    async def spy(key_range, *, cursor=None, limit=500):  # type: ignore[no-untyped-def]
        limits.append(limit)
        return await real_scan(key_range, cursor=cursor, limit=limit)

    c.inner.scan = spy
    await BackfillJob(c, d, page_size=25).run(BackfillJob(c, d).plan(parts=2))
    # The first pages are small probes (nothing is known of the sizes yet): at most one
    # per unit, since every page read teaches the job's estimate.
    assert limits[0] == PageBudget.PROBE
    assert limits.count(PageBudget.PROBE) <= 2
    assert set(limits) == {PageBudget.PROBE, 25}
    assert len(limits) >= 300 // 25
    assert c.inner.records() == d.inner.records()


def _spy_pages(store: FaultInjectingBackend) -> tuple[list[int], list[int]]:
    """Record each scan's limit and the encoded bytes of the page it returned."""
    limits: list[int] = []
    held: list[int] = []
    real_scan = store.inner.scan

    async def spy(key_range, *, cursor=None, limit=500):  # type: ignore[no-untyped-def]
        limits.append(limit)
        page = await real_scan(key_range, cursor=cursor, limit=limit)
        held.append(sum(encoded_size(r.session) for r in page.records if r.session))
        return page

    store.inner.scan = spy
    return limits, held


async def test_pages_of_a_mixed_table_hold_about_page_bytes(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    # In key order: one large session (200 KB) in every four, as in a mixed table.
    for i in range(120):
        size = 200_000 if i % 4 == 0 else 0
        session_id = uuid.UUID(int=(i + 1) << 64)
        await c.inner.save(
            make_session(session_id=session_id, revision=1_000 + i, attachment_bytes=size)
        )
    limits, held = _spy_pages(c)
    job = BackfillJob(c, d, page_size=100, page_bytes=1_000_000, concurrency=1)
    report = await job.run(job.plan(parts=1))
    assert report.counts["sessions"] == 120
    assert c.inner.records() == d.inner.records()
    assert limits[0] == PageBudget.PROBE
    assert max(limits[1:]) < 100  # the large sessions shrank the pages
    assert max(held[1:]) <= 1_100_000  # about the budget, never page_size of them


async def test_a_run_of_larger_sessions_shrinks_the_next_page(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    # In key order: 200 small sessions, then 60 of 200 KB.
    for i in range(260):
        size = 200_000 if i >= 200 else 0
        session_id = uuid.UUID(int=(i + 1) << 64)
        await c.inner.save(
            make_session(session_id=session_id, revision=1_000 + i, attachment_bytes=size)
        )
    limits, held = _spy_pages(c)
    job = BackfillJob(c, d, page_size=50, page_bytes=1_000_000, concurrency=1)
    await job.run(job.plan(parts=1))
    assert c.inner.records() == d.inner.records()
    over = [n for n, h in enumerate(held) if h > 1_300_000]
    # The scan's limit counts records: only the page that meets the change overshoots,
    # and the next one asks for what fits the budget (1 MB / 200 KB: at most 5).
    assert len(over) <= 1
    if over and over[0] + 1 < len(limits):
        assert limits[over[0] + 1] <= 5
    assert max(held) <= 50 * 200_000 * 1.1


@pytest.mark.parametrize("page_bytes", [0, -1, True])
def test_a_bad_page_budget_is_refused(stores, page_bytes: int) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    with pytest.raises(ConfigurationError, match="page_bytes"):
        BackfillJob(c, d, page_bytes=page_bytes)


async def test_units_of_another_job_or_direction_are_refused(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    job = BackfillJob(c, d, name="mine")
    foreign = BackfillJob(c, d, name="theirs").plan(parts=2)
    with pytest.raises(ConfigurationError, match="another job"):
        await job.run(foreign)
    backwards = BackfillJob(d, c, name="mine").plan(parts=2)
    with pytest.raises(ConfigurationError, match="goes documentdb -> cassandra"):
        await job.run(backwards)
    out_of_space = WorkUnit(
        job="mine",
        unit_id="x",
        action=JobAction.BACKFILL,
        source=Store.CASSANDRA,
        target=Store.DOCUMENTDB,
        kind="range",
        start=-5,
        end=5,
    )
    with pytest.raises(ConfigurationError, match="outside the cassandra key space"):
        await job.run_unit(out_of_space)  # in-memory stores order keys by UUID: no negatives


async def test_backfill_while_dual_writing_keeps_every_acknowledged_write() -> None:
    repo, stores = memory_repository(Phase.DUAL_WRITE)
    rng = random.Random(5)
    async with repo:
        history = [make_session(revision=10 + i) for i in range(300)]
        for s in history:
            await stores.cassandra.inner.save(s)
        keys = [s.session_id for s in history]
        acked: dict[uuid.UUID, tuple[int, bool]] = {}

        async def writer() -> None:
            for _ in range(150):
                sid = rng.choice(keys)
                if rng.random() < 0.8:
                    saved = await repo.save(make_session(session_id=sid))
                    acked[sid] = (saved.revision, False)
                else:
                    acked[sid] = (await repo.delete(sid), True)
                await asyncio.sleep(0)

        job = BackfillJob(stores.cassandra, stores.documentdb, page_size=7, concurrency=3)
        await asyncio.gather(writer(), writer(), job.run(job.plan(parts=16)))
        c, d = stores.cassandra.inner.records(), stores.documentdb.inner.records()
        assert c == d
        for sid, (revision, deleted) in acked.items():
            assert (c[sid].revision, c[sid].deleted) == (revision, deleted)
