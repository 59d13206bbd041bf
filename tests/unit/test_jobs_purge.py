"""PurgeJob on in-memory stores: what is purged, what is kept, crashes, a store down,
the retired-store mode, and that nothing brings a purged deletion back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from sessionstore import (
    ConfigurationError,
    InMemoryBackend,
    InMemoryRepairQueue,
    RepairOutcome,
    RepairWorker,
    StoredRecord,
)
from sessionstore.jobs import (
    BackfillJob,
    JobReport,
    MemoryCheckpointStore,
    PurgeJob,
    RetryPolicy,
    VerifyJob,
)
from sessionstore.phases import Store
from sessionstore.testing import Call, FaultInjectingBackend, SimulatedTime
from tests.helpers import make_session

SECRET = "an-answer-nobody-may-log"
DAY = dt.timedelta(days=1)
#: Retry quickly; a single attempt where a test wants the first error to fail the unit.
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
ONCE = RetryPolicy(attempts=1)


class Stores:
    """Two fault-injecting in-memory stores sharing one call log, and a simulated clock."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.c = FaultInjectingBackend(InMemoryBackend(name="cassandra"), calls=self.calls)
        self.d = FaultInjectingBackend(InMemoryBackend(name="documentdb"), calls=self.calls)
        self.time = SimulatedTime()

    def store(self, which: Store) -> FaultInjectingBackend:
        return self.c if which is Store.CASSANDRA else self.d

    def records(self, which: Store) -> dict[uuid.UUID, StoredRecord]:
        return self.store(which).inner.records()  # type: ignore[no-any-return]

    def now(self) -> int:
        return self.time()

    def job(self, source: Store = Store.CASSANDRA, **options: object) -> PurgeJob:
        other = None if options.get("other_store_retired") else self.store(source.other)
        values: dict[str, object] = {"time_source": self.time, "retry": FAST, "page_size": 3}
        values.update(options)
        return PurgeJob(self.store(source), other, **values)  # type: ignore[arg-type]

    def ago(self, days: float) -> int:
        """The revision of a write ``days`` before the simulated now."""
        return self.time() - (days * DAY) // dt.timedelta(microseconds=1)

    async def plan_and_run(self, job: PurgeJob, parts: int = 4) -> JobReport:
        return await job.run(job.plan(parts=parts))


@pytest.fixture
async def s() -> AsyncIterator[Stores]:
    stores = Stores()
    async with stores.c, stores.d:
        yield stores


def live(revision: int, sid: uuid.UUID | None = None) -> StoredRecord:
    session = make_session(revision=revision, metadata={"note": SECRET})
    if sid is not None:
        session = session.model_copy(update={"session_id": sid})
    return StoredRecord.of(session)


async def put(store: FaultInjectingBackend, record: StoredRecord) -> None:
    if record.session is None:
        await store.delete(record.session_id, record.revision)
    else:
        await store.save(record.session)


@pytest.mark.parametrize("scanned", list(Store))
async def test_an_old_tombstone_in_both_stores_is_purged_from_both(
    s: Stores, scanned: Store
) -> None:
    sid = uuid.uuid4()
    deleted_at = s.now()
    await put(s.store(scanned), StoredRecord.tombstone(sid, deleted_at))
    await put(s.store(scanned.other), StoredRecord.tombstone(sid, deleted_at))
    kept = live(deleted_at)  # a live session of the same age: never touched
    await put(s.c, kept)
    await put(s.d, kept)
    s.time.advance(31 * DAY)

    report = await s.job(scanned).run()

    assert sid not in s.records(Store.CASSANDRA) and sid not in s.records(Store.DOCUMENTDB)
    assert s.records(Store.CASSANDRA)[kept.session_id] == kept
    assert s.records(Store.DOCUMENTDB)[kept.session_id] == kept
    assert report.ok() and report.units_planned == 2 * 256
    assert (report.counts["tombstones"], report.counts["purged"]) == (1, 1)
    assert report.counts["records"] == 3  # the tombstone once (gone before pass two), kept x2
    assert report.to_dict()["purge"] == {
        "tombstones": 1,
        "purged": 1,
        "too_young": 0,
        "recreated": 0,
        "conflicts": 0,
        "stale_copies_removed": 0,
    }


async def test_a_tombstone_younger_than_older_than_is_kept(s: Stores) -> None:
    young, old = uuid.uuid4(), uuid.uuid4()
    await put(s.c, StoredRecord.tombstone(old, s.now()))
    s.time.advance(20 * DAY)
    for store in (s.c, s.d):
        await put(store, StoredRecord.tombstone(young, s.now()))
    s.time.advance(20 * DAY)  # old: 40 days, young: 20 days

    report = await s.plan_and_run(s.job())

    assert young in s.records(Store.CASSANDRA) and young in s.records(Store.DOCUMENTDB)
    assert old not in s.records(Store.CASSANDRA)
    assert (report.counts["too_young"], report.counts["purged"]) == (2, 1)
    # A longer older_than keeps both.
    await put(s.c, StoredRecord.tombstone(old, s.ago(40)))
    longer = await s.plan_and_run(s.job(name="longer", older_than=60 * DAY))
    assert longer.counts["purged"] == 0 and old in s.records(Store.CASSANDRA)


@pytest.mark.parametrize("scanned", list(Store))
async def test_a_key_recreated_in_the_other_store_is_skipped_and_untouched(
    s: Stores, scanned: Store
) -> None:
    sid = uuid.uuid4()
    tombstone = StoredRecord.tombstone(sid, s.now())
    await put(s.store(scanned), tombstone)
    s.time.advance(40 * DAY)
    recreated = live(s.now(), sid)  # saved again, in the other store only (so far)
    await put(s.store(scanned.other), recreated)

    report = await s.plan_and_run(s.job())

    assert s.records(scanned.other)[sid] == recreated
    assert s.records(scanned)[sid] == tombstone
    assert report.counts["recreated"] == 1 and report.counts["purged"] == 0
    assert not [c for c in s.calls if c.operation == "purge"]
    assert report.ok()


async def test_a_live_copy_at_the_tombstones_revision_is_a_conflict_left_alone(s: Stores) -> None:
    sid = uuid.uuid4()
    at = s.now()
    await put(s.c, StoredRecord.tombstone(sid, at))
    await put(s.d, live(at, sid))
    s.time.advance(40 * DAY)

    report = await s.plan_and_run(s.job())

    assert s.records(Store.CASSANDRA)[sid].deleted
    assert not s.records(Store.DOCUMENTDB)[sid].deleted
    assert report.counts["conflicts"] == 1 and report.counts["purged"] == 0


async def test_a_newer_tombstone_in_the_other_store_survives_the_older_ones_purge(
    s: Stores,
) -> None:
    sid = uuid.uuid4()
    await put(s.c, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(35 * DAY)
    newer = StoredRecord.tombstone(sid, s.now())
    await put(s.d, newer)  # deleted again 35 days later, in DocumentDB: 5 days old now
    s.time.advance(5 * DAY)

    report = await s.plan_and_run(s.job())

    assert sid not in s.records(Store.CASSANDRA)
    assert s.records(Store.DOCUMENTDB)[sid] == newer
    assert (report.counts["purged"], report.counts["too_young"]) == (1, 1)


@pytest.mark.parametrize("scanned", list(Store))
async def test_an_older_live_copy_in_the_other_store_is_removed_and_nothing_brings_it_back(
    s: Stores, scanned: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9, item 1: the deleted session's old copy in the other store is what a repair
    used to copy back once the tombstone had expired in one store."""
    sid = uuid.uuid4()
    old_copy = live(s.now(), sid)
    await put(s.store(scanned.other), old_copy)  # the store that missed the delete
    s.time.advance(DAY)
    await put(s.store(scanned), StoredRecord.tombstone(sid, s.now()))
    other_session = live(s.now())  # a live session in both stores, to show the jobs work
    await put(s.c, other_session)
    await put(s.d, other_session)
    s.time.advance(31 * DAY)

    caplog.set_level(logging.INFO, logger="sessionstore")
    report = await s.plan_and_run(s.job())

    assert sid not in s.records(Store.CASSANDRA) and sid not in s.records(Store.DOCUMENTDB)
    assert report.counts["stale_copies_removed"] == 1 and report.counts["purged"] == 1
    # The other store was purged first, then the scanned one.
    purges = [c.store for c in s.calls if c.operation == "purge"]
    assert purges == [scanned.other.value, scanned.value]
    assert str(sid) in caplog.text and SECRET not in caplog.text
    assert SECRET not in json.dumps(report.to_dict())

    # Nothing that runs later brings the deleted session back.
    worker = RepairWorker(
        cassandra=s.c, documentdb=s.d, queue=InMemoryRepairQueue(), time_source=s.time
    )
    assert await worker.sync(sid) is RepairOutcome.IN_SYNC
    for source in Store:
        a, b = s.store(source), s.store(source.other)
        backfill = await BackfillJob(a, b, name=f"bf-{source}").run()
        verify = await VerifyJob(a, b, name=f"v-{source}", repair=True).run()
        assert backfill.ok() and verify.ok(strict=True)
        assert backfill.counts["sessions"] == 1 and verify.counts["checked"] == 1
    assert sid not in s.records(Store.CASSANDRA) and sid not in s.records(Store.DOCUMENTDB)


@pytest.mark.parametrize(
    ("older_than", "age_days", "outcome"),
    [
        (None, 31, RepairOutcome.POSSIBLY_DELETED),
        # Why the grace is the minimum: a younger purge loses this race.
        (DAY, 2, RepairOutcome.COPIED),
    ],
)
async def test_a_repair_that_read_the_old_copy_before_the_purge_and_writes_after_it(
    s: Stores, older_than: dt.timedelta | None, age_days: int, outcome: RepairOutcome
) -> None:
    sid = uuid.uuid4()
    await put(s.d, live(s.now(), sid))  # DocumentDB missed the delete
    s.time.advance(DAY)
    await put(s.c, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(age_days * DAY)
    worker = RepairWorker(
        cassandra=s.c, documentdb=s.d, queue=InMemoryRepairQueue(), time_source=s.time
    )
    s.c.freeze(operation="get")  # the repair's read of Cassandra hangs, after it read...
    repair = asyncio.create_task(worker.sync(sid))
    for _ in range(20):
        await asyncio.sleep(0)
    assert Call("documentdb", "get", sid) in s.calls  # ...the old copy from DocumentDB

    options = {} if older_than is None else {"older_than": older_than, "allow_below_grace": True}
    report = await s.plan_and_run(s.job(**options))
    assert report.counts["purged"] == 1
    s.c.thaw()  # the repair reads Cassandra now: the key is gone from both stores

    assert await repair is outcome
    if outcome is RepairOutcome.POSSIBLY_DELETED:  # older than the grace: never copied
        assert sid not in s.records(Store.CASSANDRA) and sid not in s.records(Store.DOCUMENTDB)
    else:  # the deleted session is back
        assert not s.records(Store.CASSANDRA)[sid].deleted


@pytest.mark.parametrize("fault", ["scanned purge fails", "other purge fails after applying"])
async def test_a_crash_between_the_two_purges_leaves_the_tombstone_for_the_next_run(
    s: Stores, fault: str
) -> None:
    sid = uuid.uuid4()
    await put(s.d, live(s.now(), sid))
    s.time.advance(DAY)
    await put(s.c, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(31 * DAY)
    if fault.startswith("scanned"):
        s.c.fail_next(1, operation="purge")
    else:
        s.d.fail_next(1, operation="purge", after=True)
    checkpoints = MemoryCheckpointStore()

    job = s.job(name="purge-1", checkpoints=checkpoints, retry=ONCE)
    first = await job.run(job.plan(parts=1))

    assert not first.ok() and len(first.failed_units) == 1
    assert sid not in s.records(Store.DOCUMENTDB)  # the other store was purged first...
    assert s.records(Store.CASSANDRA)[sid].deleted  # ...and the tombstone is still there
    # Meanwhile a repair copies the tombstone, never the removed copy.
    worker = RepairWorker(
        cassandra=s.c, documentdb=s.d, queue=InMemoryRepairQueue(), time_source=s.time
    )
    assert await worker.sync(sid) is RepairOutcome.COPIED
    assert s.records(Store.DOCUMENTDB)[sid].deleted

    again = s.job(name="purge-1", checkpoints=checkpoints)
    second = await again.run(again.plan(parts=1))

    assert second.ok() and second.resumed and second.units_run == 1
    assert sid not in s.records(Store.CASSANDRA) and sid not in s.records(Store.DOCUMENTDB)
    assert second.counts["purged"] == 1


async def test_the_other_store_down_fails_the_unit_and_purges_nothing(s: Stores) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    for sid in ids:
        await put(s.c, StoredRecord.tombstone(sid, s.now()))
        await put(s.d, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(31 * DAY)
    s.d.go_down()

    report = await s.plan_and_run(s.job(), parts=2)

    assert not report.ok() and report.failed_units
    assert "BackendUnavailableError" in next(iter(report.failed_units.values()))
    assert report.counts["purged"] == 0
    assert all(s.records(Store.CASSANDRA)[sid].deleted for sid in ids)
    assert all(s.records(Store.DOCUMENTDB)[sid].deleted for sid in ids)
    assert not [c for c in s.calls if c.operation == "purge" and c.store == "cassandra"]


async def test_other_store_retired_purges_the_source_alone(s: Stores) -> None:
    sid = uuid.uuid4()
    stale = live(s.now(), sid)
    await put(s.c, stale)  # the retired store's data: never read, never written
    s.time.advance(DAY)
    await put(s.d, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(31 * DAY)
    s.calls.clear()

    job = s.job(Store.DOCUMENTDB, other_store_retired=True)
    report = await job.run(job.plan(parts=4))

    assert report.units_planned == 4  # one pass: DocumentDB's key space only
    assert sid not in s.records(Store.DOCUMENTDB)
    assert s.records(Store.CASSANDRA)[sid] == stale
    assert {c.store for c in s.calls} == {"documentdb"}
    assert report.counts["purged"] == 1 and report.options["other_store_retired"]
    # A unit of the other store's key space is refused, not run.
    two_sided = s.job(Store.DOCUMENTDB, name="purge")
    with pytest.raises(ConfigurationError):
        await job.run_unit(two_sided.plan(parts=1)[1])


def test_bad_options_are_refused_before_any_store_is_touched() -> None:
    stores = Stores()
    with pytest.raises(ConfigurationError, match="below the tombstone grace"):
        stores.job(older_than=29 * DAY)
    with pytest.raises(ConfigurationError, match="positive"):
        stores.job(older_than=-DAY, allow_below_grace=True)
    with pytest.raises(ConfigurationError, match="target=None"):
        PurgeJob(stores.c, stores.d, other_store_retired=True)
    with pytest.raises(ConfigurationError, match="needs both stores"):
        PurgeJob(stores.c, None)
    assert stores.calls == []
    stores.job(older_than=DAY, allow_below_grace=True)  # the documented override


async def test_below_grace_with_the_override_purges_younger_tombstones(s: Stores) -> None:
    sid = uuid.uuid4()
    await put(s.c, StoredRecord.tombstone(sid, s.now()))
    s.time.advance(2 * DAY)
    report = await s.plan_and_run(s.job(older_than=DAY, allow_below_grace=True))
    assert report.counts["purged"] == 1 and sid not in s.records(Store.CASSANDRA)


async def test_dry_run_counts_and_writes_nothing(s: Stores) -> None:
    stale_id, both_id = uuid.uuid4(), uuid.uuid4()
    await put(s.d, live(s.now(), stale_id))
    s.time.advance(DAY)
    await put(s.c, StoredRecord.tombstone(stale_id, s.now()))
    for store in (s.c, s.d):
        await put(store, StoredRecord.tombstone(both_id, s.now()))
    s.time.advance(31 * DAY)
    before = (s.records(Store.CASSANDRA), s.records(Store.DOCUMENTDB))
    checkpoints = MemoryCheckpointStore()

    dry = s.job(name="p", dry_run=True, checkpoints=checkpoints)
    report = await dry.run(dry.plan(parts=2))

    assert (s.records(Store.CASSANDRA), s.records(Store.DOCUMENTDB)) == before
    assert not [c for c in s.calls if c.operation == "purge"]
    # Nothing is removed, so the second pass sees the tombstone both stores hold again.
    assert report.counts["purged"] == 3 and report.counts["stale_copies_removed"] == 1
    assert report.options["dry_run"] is True
    # A real run cannot take over the dry run's done units under the same name.
    real = s.job(name="p", checkpoints=checkpoints)
    with pytest.raises(ConfigurationError):
        await real.run(real.plan(parts=2))
    assert (s.records(Store.CASSANDRA), s.records(Store.DOCUMENTDB)) == before
