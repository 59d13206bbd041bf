"""Backfill on the real servers, in both directions, while the service keeps writing.

- 20,000 sessions DocumentDB -> Cassandra (the reverse backfill before a late rollback),
  with writers updating and deleting sessions through the repository (RAMPDOWN) during
  the copy.
- Cassandra -> DocumentDB (the migration itself) from history that includes legacy rows
  without a revision, with dual-writing writers, verified in both passes.

Both end with verify reporting zero differences and every acknowledged write present at
its revision in both stores. See tests/real/jobs_support.py for why the DocumentDB side
is large only where it is scanned.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence

import pytest

from sessionstore import (
    InMemoryRepairQueue,
    Phase,
    RepairWorker,
    SessionBackend,
    SessionRepository,
    SessionStatus,
    StaticPhaseSource,
    StoredRecord,
    Timeouts,
)
from sessionstore.jobs import BackfillJob, JobReport, VerifyJob
from sessionstore.testing import KeySerializingBackend
from tests.real.jobs_support import (
    RealPair,
    all_records,
    history,
    real_pair,
    seed_cassandra,
    seed_documentdb,
    small_session,
)

pytestmark = pytest.mark.real


class Writers:
    """Service traffic through a repository: updates and deletes of existing sessions.

    Each writer owns a disjoint share of the keys: FerretDB runs a conditional write as
    a read followed by a write, so two writers racing on one key could let the older
    write land last (DocumentDB's writes are atomic). Keys are still written while the
    backfill copies them, which is what this test is about.
    """

    def __init__(self, repo: SessionRepository, keys: Sequence[uuid.UUID], count: int) -> None:
        self.repo = repo
        self.shares = [list(keys[i::count]) for i in range(count)]
        self.acked: dict[uuid.UUID, tuple[int, bool]] = {}
        self.rng = random.Random(42)

    async def run(self, stop: asyncio.Event, *, max_ops: int) -> None:
        async def writer(share: list[uuid.UUID]) -> None:
            for _ in range(max_ops):
                if stop.is_set():
                    return
                sid = self.rng.choice(share)
                if self.rng.random() < 0.75:
                    session = small_session(
                        0, self.rng, session_id=sid, status=SessionStatus.GRADED
                    )
                    saved = await self.repo.save(session)
                    self.acked[sid] = (saved.revision, False)
                else:
                    self.acked[sid] = (await self.repo.delete(sid), True)

        await asyncio.gather(*(writer(share) for share in self.shares))


async def _assert_acked(
    writers: Writers, pair: RealPair, stores: tuple[SessionBackend, ...] = ()
) -> None:
    assert writers.acked, "the writers acknowledged nothing"
    for sid, (revision, deleted) in writers.acked.items():
        for store in stores or (pair.cassandra, pair.documentdb):
            record = await store.get(sid)
            assert record is not None, (store.name, sid)
            assert (record.revision, record.deleted) == (revision, deleted), store.name


async def test_backfill_20k_sessions_documentdb_to_cassandra_while_writers_write() -> None:
    async with real_pair() as pair:
        records = history(20_000, seed=1, tombstone_every=50)
        started = time.perf_counter()
        await seed_documentdb(pair.collection, records)
        seeded = time.perf_counter() - started

        queue = InMemoryRepairQueue()
        repo = SessionRepository(
            cassandra=pair.cassandra,
            documentdb=pair.documentdb,
            phases=StaticPhaseSource(Phase.RAMPDOWN),  # DocumentDB first, Cassandra second
            repairs=queue,
            repair_delay=0.0,  # no call is cancelled mid-flight here
            # FerretDB scans all 20k documents for each conditional write (no index use
            # for binary _ids): under the backfill a write takes seconds, not the
            # milliseconds the default deadlines are made for.
            timeouts=Timeouts(read=60, write=60, secondary_write=60),
        )
        live = [r.session_id for r in records if r.session is not None]
        writers = Writers(repo, random.Random(3).sample(live, 300), count=3)
        # Large pages: each FerretDB range query scans the whole collection.
        job = BackfillJob(
            pair.documentdb, pair.cassandra, page_size=5000, concurrency=4, max_in_flight=64
        )
        stop = asyncio.Event()

        async def backfill() -> JobReport:
            try:
                return await job.run(job.plan(parts=4))
            finally:
                stop.set()

        async with repo:  # closing the repository closes both stores: verify inside
            started = time.perf_counter()
            report, _ = await asyncio.gather(backfill(), writers.run(stop, max_ops=40))
            copy_seconds = time.perf_counter() - started
            await RepairWorker(
                cassandra=pair.cassandra, documentdb=pair.documentdb, queue=queue
            ).drain()
            assert report.ok(), report.failed_units
            assert report.counts["records"] == 20_000
            assert report.counts["tombstones"] >= 400
            assert len(writers.acked) >= 10

            # Writes are over: verify strictly (no "newer" allowed either). The target
            # pass would read FerretDB once per Cassandra key (a full scan each, see
            # jobs_support); the same question -- does Cassandra hold keys DocumentDB
            # does not? -- is answered below by comparing the key sets of both scans.
            verify = VerifyJob(
                pair.documentdb,
                pair.cassandra,
                page_size=5000,
                max_in_flight=64,
                scan_target=False,
                strict=True,
            )
            verified = await verify.run(verify.plan(parts=4))
            assert verified.ok(strict=True), verified.to_dict()
            assert verified.differences == 0
            assert verified.counts["checked"] == 20_000
            in_cassandra = await all_records(pair.cassandra)
            assert set(in_cassandra) == {r.session_id for r in records}
            # Strict verify proved DocumentDB equal to Cassandra key by key; reading
            # FerretDB per key again would cost a collection scan each.
            await _assert_acked(writers, pair, (pair.cassandra,))
        print(
            f"\nseeded 20k in {seeded:.1f}s; backfill {copy_seconds:.1f}s "
            f"({report.sessions_per_second:.0f} sessions/s) with {len(writers.acked)} "
            f"sessions written meanwhile; verify {verified.elapsed_seconds:.1f}s"
        )


async def test_backfill_cassandra_to_documentdb_with_legacy_rows_while_dual_writing() -> None:
    async with real_pair() as pair:
        records = history(400, seed=2, tombstone_every=20)
        live = [r for r in records if r.session is not None]
        # Half the live history predates the revision column: only a write timestamp.
        legacy = {r.session_id: r.revision - 7 for r in live[::2]}
        await seed_cassandra(pair.table, records, legacy=legacy)
        expected = {
            r.session_id: (legacy.get(r.session_id, r.revision), r.deleted) for r in records
        }

        # FerretDB is the target: the backfill and the writers both write it, so its
        # writes are serialized per key (see Writers and sessionstore.testing).
        documentdb = KeySerializingBackend(pair.documentdb)
        queue = InMemoryRepairQueue()
        repo = SessionRepository(
            cassandra=pair.cassandra,
            documentdb=documentdb,
            phases=StaticPhaseSource(Phase.DUAL_WRITE),
            repairs=queue,
            repair_delay=0.0,  # no call is cancelled mid-flight here
        )
        touched = [r.session_id for r in live[:60]] + [uuid.uuid4() for _ in range(20)]
        writers = Writers(repo, touched, count=4)
        job = BackfillJob(pair.cassandra, documentdb, page_size=50, concurrency=4)
        stop = asyncio.Event()

        async def backfill() -> JobReport:
            try:
                return await job.run(job.plan(parts=16))
            finally:
                stop.set()

        async with repo:  # closing the repository closes both stores: check inside
            report, _ = await asyncio.gather(backfill(), writers.run(stop, max_ops=30))
            await RepairWorker(cassandra=pair.cassandra, documentdb=documentdb, queue=queue).drain()
            assert report.ok(), report.failed_units
            assert report.counts["records"] >= 400

            verify = VerifyJob(pair.cassandra, pair.documentdb, strict=True)
            verified = await verify.run(verify.plan(parts=4))
            assert verified.ok(strict=True), verified.to_dict()
            assert verified.counts["checked"] == len({*expected, *writers.acked})

            await _assert_acked(writers, pair)
            in_documentdb = await all_records(pair.documentdb)
            for sid, (revision, deleted) in expected.items():
                if sid in writers.acked:
                    continue
                got = in_documentdb[sid]
                # A legacy row arrives with its Cassandra WRITETIME as its revision.
                assert (got.revision, got.deleted) == (revision, deleted)
            untouched = next(s for s in legacy if s not in writers.acked)
            source = await pair.cassandra.get(untouched)
            assert source is not None and source.session is not None
            assert source.revision == legacy[untouched]
            assert in_documentdb[untouched] == StoredRecord.of(source.session)
