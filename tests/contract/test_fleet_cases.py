"""The fleet's failure cases, one test each: what used to be lost, resurrected or hidden.

Each test builds the exact situation: several repositories over the same stores, clocks
seconds apart, a timeout whose write landed, a cancelled call, a tombstone one store
forgot, a revision from the future. They run on the in-memory pair and on the real
Cassandra and FerretDB. tests/unit/test_fleet_property.py draws these and more at
random; these are the named, minimal cases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sessionstore import (
    BackendTimeoutError,
    ConflictError,
    InMemoryBackend,
    InMemoryRepairQueue,
    InvalidRevisionError,
    Phase,
    RepairWorker,
    SessionRepository,
    StaticPhaseSource,
)
from sessionstore.repair.worker import DEFAULT_TOMBSTONE_GRACE
from sessionstore.testing import FaultInjectingBackend, SimulatedTime
from tests.helpers import make_session
from tests.stores import open_store

WEEKS = DEFAULT_TOMBSTONE_GRACE + dt.timedelta(days=1)


class _Kept(FaultInjectingBackend):
    """A wrapper whose closing leaves the store open (several repositories share it)."""

    async def _close(self) -> None:
        return None


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.real)])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    """Fresh, empty Cassandra-role and DocumentDB-role stores of one kind."""
    real = request.param == "real"
    cassandra = await open_store("cassandra" if real else "memory", role="cassandra")
    documentdb = await open_store("documentdb" if real else "memory", role="documentdb")
    try:
        yield cassandra.backend, documentdb.backend
    finally:
        await cassandra.backend.aclose()
        await documentdb.backend.aclose()


class Fleet:
    """Stores, a shared queue, and repositories whose clocks read one simulated time."""

    def __init__(self, pair: tuple[Any, Any], phase: Phase = Phase.DUAL_WRITE) -> None:
        self.time = SimulatedTime(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
        self.cassandra = _Kept(pair[0])
        self.documentdb = _Kept(pair[1])
        self.repair_delay = 0.0 if isinstance(pair[0], InMemoryBackend) else 0.5
        self.queue = InMemoryRepairQueue()
        self.phases = StaticPhaseSource(phase)
        self.worker = RepairWorker(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            queue=self.queue,
            retry_delay_seconds=0,
            time_source=self.time,
        )

    def repository(self, *, skew: float = 0.0, writer_id: int = 1) -> SessionRepository:
        return SessionRepository(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            phases=self.phases,
            repairs=self.queue,
            clock=self.time.clock(skew=skew, writer_id=writer_id),
            # A cancelled call's write can land in a real store after the call gave up:
            # its repair waits a little (drains below wait for it).
            repair_delay=self.repair_delay,
        )

    async def drain(self) -> Any:
        """Drain the repairs, waiting out the repository's repair delay."""
        return await self.worker.drain(wait_seconds=self.repair_delay)

    async def read_in_every_phase(self, repo: SessionRepository, sid: uuid.UUID) -> set[Any]:
        """What a reader gets for ``sid`` in each phase (the phase restored after)."""
        before = self.phases.phase
        seen = set()
        for phase in Phase:
            self.phases.phase = phase
            got = await repo.get(sid)
            seen.add(None if got is None else got.revision)
        self.phases.phase = before
        return seen


async def test_1_a_tombstone_forgotten_by_one_store_is_not_resurrected_by_a_repair(
    pair: tuple[Any, Any],
) -> None:
    fleet = Fleet(pair, Phase.DUAL_WRITE)
    async with fleet.repository() as repo:
        saved = await repo.save(make_session())
        fleet.documentdb.fail_next(1, operation="delete")  # the secondary misses the delete
        tombstone = await repo.delete(saved.session_id, revision=saved.revision)
        # Weeks later, Cassandra alone forgets the tombstone (a TTL left on one store,
        # a cleanup by hand); DocumentDB still holds the copy from before the delete.
        fleet.time.advance(WEEKS)
        await fleet.cassandra.inner.purge(saved.session_id, tombstone)
        report = await fleet.drain()
        # The repair does not copy the old live copy back: it is a dead letter, by id.
        assert report.copied == 0
        assert fleet.queue.dead() == {saved.session_id: "possibly_deleted"}
        assert await fleet.cassandra.get(saved.session_id) is None
        fleet.phases.phase = Phase.SHADOW  # a comparison finds the difference again
        assert await repo.get(saved.session_id) is None
        await repo.wait_for_comparisons()
        await fleet.drain()
        assert await fleet.cassandra.get(saved.session_id) is None


async def test_1_the_purge_job_takes_both_copies_so_nothing_is_left_to_resurrect(
    pair: tuple[Any, Any],
) -> None:
    from sessionstore.jobs import BackfillJob, PurgeJob, VerifyJob

    fleet = Fleet(pair, Phase.DOCDB_ONLY)
    async with fleet.repository() as repo:
        old = make_session(revision=fleet.time() - 1)
        await fleet.cassandra.inner.save(old)  # Cassandra's copy, from before DOCDB_ONLY
        await fleet.documentdb.inner.save(old)
        await repo.delete(old.session_id)  # DOCDB_ONLY: Cassandra never hears of it
        fleet.time.advance(WEEKS)
        purge = PurgeJob(fleet.documentdb, fleet.cassandra, time_source=fleet.time)
        assert (await purge.run(purge.plan(parts=1))).counts["stale_copies_removed"] == 1
        # The runbook's rollback: RAMPDOWN, the reverse backfill, verify --repair.
        fleet.phases.phase = Phase.RAMPDOWN
        for job in (
            BackfillJob(fleet.documentdb, fleet.cassandra),
            VerifyJob(fleet.documentdb, fleet.cassandra, repair=True),
        ):
            assert (await job.run()).ok()
        assert await fleet.read_in_every_phase(repo, old.session_id) == {None}


@pytest.mark.parametrize("how", ["timeout_after_apply", "cancelled_between_writes"])
async def test_2_an_ambiguous_or_cancelled_write_is_queued(pair: tuple[Any, Any], how: str) -> None:
    fleet = Fleet(pair, Phase.DOCDB_PRIMARY)
    async with fleet.repository() as repo:
        first = await repo.save(make_session())
        if how == "timeout_after_apply":
            fleet.documentdb.fail_next(1, operation="save", error=BackendTimeoutError, after=True)
            with pytest.raises(BackendTimeoutError):
                await repo.save(first)
        else:
            fleet.documentdb.cancel_next(1, operation="save", after=True)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.create_task(repo.save(first))
            await repo.wait_for_comparisons()  # the shielded queueing finishes
        landed = await fleet.documentdb.get(first.session_id)
        assert landed is not None and landed.revision > first.revision  # it did land
        assert fleet.queue.pending() == {first.session_id}
        await fleet.drain()
        # The documented-safe rollback: drain, flip to SHADOW (reads Cassandra).
        fleet.phases.phase = Phase.SHADOW
        got = await repo.get(first.session_id)
        assert got is not None and got.revision == landed.revision


async def test_3_two_writers_behind_the_same_revision_never_tie(pair: tuple[Any, Any]) -> None:
    fleet = Fleet(pair, Phase.DUAL_WRITE)
    ahead = fleet.repository(skew=5.0, writer_id=3)
    a, b = fleet.repository(writer_id=1), fleet.repository(writer_id=2)
    async with ahead, a, b:
        stored = await ahead.save(make_session())  # R, 5 s ahead of a and b
        read_a, read_b = await a.get(stored.session_id), await b.get(stored.session_id)
        assert read_a is not None and read_b is not None
        outcomes = []
        for repo, copy, note in ((a, read_a, "a"), (b, read_b, "b")):
            try:
                saved = await repo.save(copy.model_copy(update={"metadata": {"by": note}}))
            except ConflictError:
                outcomes.append(None)
            else:
                outcomes.append(saved.revision)
        acked = [r for r in outcomes if r is not None]
        assert len(set(acked)) == len(acked)  # never the same revision twice
        final = await fleet.cassandra.get(stored.session_id)
        assert final is not None and final.revision == max(acked)
        assert final == await fleet.documentdb.get(stored.session_id)


async def test_3_an_equal_revision_conflict_is_a_dead_letter_not_acked_away(
    pair: tuple[Any, Any],
) -> None:
    fleet = Fleet(pair, Phase.SHADOW)
    async with fleet.repository() as repo:
        s = make_session(revision=fleet.time())
        await fleet.cassandra.inner.save(s)
        await fleet.documentdb.inner.save(s.model_copy(update={"metadata": {"other": "x"}}))
        assert await repo.get(s.session_id) == s
        await repo.wait_for_comparisons()  # the comparison queues it
        report = await fleet.drain()
        assert report.conflicts == 1
        assert fleet.queue.dead() == {s.session_id: "conflict"}


async def test_4_a_save_dropped_under_clock_skew_raises_a_conflict(pair: tuple[Any, Any]) -> None:
    fleet = Fleet(pair, Phase.DUAL_WRITE)
    ahead, behind = fleet.repository(skew=5.0, writer_id=1), fleet.repository(writer_id=2)
    async with ahead, behind:
        original = await behind.save(make_session())
        read = await behind.get(original.session_id)
        assert read is not None
        newer = await ahead.save(original.model_copy(update={"metadata": {"by": "ahead"}}))
        fleet.time.advance(1.0)  # "behind" saves later in real time, with a lower revision
        with pytest.raises(ConflictError) as info:
            await behind.save(read.model_copy(update={"metadata": {"by": "behind"}}))
        assert info.value.current_revision == newer.revision
        assert await behind.get(original.session_id) == newer
        # Optimistic concurrency says the same before writing anything.
        with pytest.raises(ConflictError):
            await behind.save(read, expected_revision=read.revision)


async def test_5_no_input_revision_can_push_a_clock_or_a_session_into_the_future(
    pair: tuple[Any, Any],
) -> None:
    fleet = Fleet(pair, Phase.DUAL_WRITE)
    async with fleet.repository() as repo:
        s = make_session()
        for forged in (2**62, 2**63 - 2):
            with pytest.raises(InvalidRevisionError):
                await repo.save(s.model_copy(update={"revision": forged}))
            with pytest.raises(InvalidRevisionError):
                await repo.delete(s.session_id, revision=forged)
        with pytest.raises(InvalidRevisionError):
            await repo.delete(s.session_id, revision=2**63)
        assert fleet.cassandra.calls == [] == fleet.documentdb.calls  # refused before any I/O
        saved = await repo.save(s)  # the clock is unharmed
        assert saved.revision < fleet.time() + 60_000_000
