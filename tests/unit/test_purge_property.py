"""Property (issue 9, item 1): a deleted session never comes back, whatever the order of
saves, deletes, secondary failures, phase flips and rollbacks (done as the runbook says),
repair drains, backfills and verify --repair in either direction, purges, and time
passing, for any duration.

A session whose newest acknowledged write is a delete: after every step, the store the
phase reads from holds no live copy of it, and a read returns nothing; at the end, once
the stores are brought together as the runbook does (a dual-write phase, repairs
drained), neither store holds a live copy of it. (In a single-store phase the other
store is stale by design until the backfill that leaving the phase needs.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sessionstore import (
    PHASE_PLANS,
    BackendUnavailableError,
    Phase,
    RepairWorker,
    StaticPhaseSource,
)
from sessionstore.jobs import BackfillJob, PurgeJob, RetryPolicy, VerifyJob
from sessionstore.phases import Store
from sessionstore.testing import MemoryStores, SimulatedTime, memory_repository
from tests.helpers import make_session

KEYS = [uuid.UUID(int=i + 1) for i in range(3)]
#: The runbook's order; a flip moves one row up or down.
ORDER = list(Phase)
FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)

key = st.sampled_from(range(len(KEYS)))
store = st.sampled_from(list(Store))

steps = st.lists(
    st.one_of(
        st.tuples(st.just("save"), key),
        st.tuples(st.just("delete"), key),
        st.tuples(st.just("read"), key),
        st.tuples(st.just("fail"), store, st.sampled_from(["save", "delete"])),
        st.tuples(st.just("flip"), st.sampled_from([-1, 1])),
        st.tuples(st.just("drain")),
        st.tuples(st.just("days"), st.integers(1, 45)),
        st.tuples(st.just("purge"), store),
        st.tuples(st.just("backfill"), store),
        st.tuples(st.just("verify_repair"), store),
    ),
    max_size=40,
)


class Model:
    """The repository, its two stores, a worker and the simulated wall clock."""

    def __init__(self, phase: Phase) -> None:
        self.time = SimulatedTime()
        self.phases = StaticPhaseSource(phase)
        self.repo, self.stores = memory_repository(self.phases, clock=self.time.clock(writer_id=1))
        self.worker = RepairWorker(
            cassandra=self.stores.cassandra,
            documentdb=self.stores.documentdb,
            queue=self.stores.repairs,
            retry_delay_seconds=0,
            time_source=self.time,
        )
        self.deleted: dict[uuid.UUID, bool] = {}  # newest acknowledged write is a delete
        self.jobs = 0

    def backend(self, which: Store) -> Any:
        stores: MemoryStores = self.stores
        return stores.cassandra if which is Store.CASSANDRA else stores.documentdb

    def name(self) -> str:
        self.jobs += 1
        return f"job-{self.jobs}"

    async def backfill(self, source: Store) -> None:
        job = BackfillJob(
            self.backend(source), self.backend(source.other), name=self.name(), retry=FAST
        )
        await job.run(job.plan(parts=2))

    async def verify_repair(self, source: Store) -> None:
        a, b = self.backend(source), self.backend(source.other)
        job = VerifyJob(a, b, name=self.name(), repair=True, retry=FAST)
        await job.run(job.plan(parts=2))

    async def purge(self, source: Store) -> None:
        a, b = self.backend(source), self.backend(source.other)
        job = PurgeJob(a, b, name=self.name(), time_source=self.time, retry=FAST)
        await job.run(job.plan(parts=2))

    async def settle(self) -> None:
        """What the runbook asks before a flip: faults gone, the repair queue drained."""
        self.stores.cassandra.heal()
        self.stores.documentdb.heal()
        await self.repo.wait_for_comparisons()
        await self.worker.drain()

    async def flip(self, step: int) -> None:
        """One row of the runbook's table, with the backfill a flip out of a single-store
        phase needs (verify --repair after it, as the runbook does)."""
        now = ORDER.index(self.phases.phase)
        new = ORDER[min(max(now + step, 0), len(ORDER) - 1)]
        if new is self.phases.phase:
            return
        await self.settle()
        self.phases.phase = new
        if self.phases.phase is Phase.DUAL_WRITE and step > 0:  # off -> dualwrite
            await self.backfill(Store.CASSANDRA)
            await self.verify_repair(Store.CASSANDRA)
        if self.phases.phase is Phase.RAMPDOWN and step < 0:  # complete -> rampdown
            await self.backfill(Store.DOCUMENTDB)
            await self.verify_repair(Store.DOCUMENTDB)

    async def check(self, sid: uuid.UUID) -> None:
        if not self.deleted.get(sid):
            return
        assert await self.repo.get(sid) is None, "a deleted session reads as present"

    def check_stores(self, stores: list[Store]) -> None:
        for sid, deleted in self.deleted.items():
            if deleted:
                for which in stores:
                    record = self.backend(which).inner.records().get(sid)
                    assert record is None or record.deleted, f"deleted session live in {which}"


async def run(first: Phase, plan: list[tuple[Any, ...]]) -> None:
    model = Model(first)
    async with model.repo:
        for step in plan:
            kind = step[0]
            try:
                if kind == "save":
                    sid = KEYS[step[1]]
                    await model.repo.save(make_session(session_id=sid))
                    model.deleted[sid] = False
                elif kind == "delete":
                    sid = KEYS[step[1]]
                    await model.repo.delete(sid)
                    model.deleted[sid] = True
                elif kind == "read":
                    await model.check(KEYS[step[1]])
                elif kind == "fail":
                    model.backend(step[1]).fail_next(1, operation=step[2])
                elif kind == "flip":
                    await model.flip(step[1])
                elif kind == "drain":
                    await model.worker.drain()
                elif kind == "days":
                    model.time.advance(dt.timedelta(days=step[1]))
                else:
                    await getattr(model, kind)(step[1])
            except BackendUnavailableError:
                pass  # the authoritative store failed: the write was not acknowledged
            model.check_stores([PHASE_PLANS[model.phases.phase].read])
        # Bring the stores together as the runbook does: into a dual-write phase (with
        # the backfill that leaving a single-store phase needs), repairs drained.
        if model.phases.phase in (Phase.CASSANDRA_ONLY, Phase.DOCDB_ONLY):
            await model.flip(1 if model.phases.phase is Phase.CASSANDRA_ONLY else -1)
        await model.settle()
        for sid in KEYS:
            await model.check(sid)
        model.check_stores(list(Store))


_C, _D = Store.CASSANDRA, Store.DOCUMENTDB
#: A delete that missed the secondary store, a month passing, then the purge of the
#: authoritative store's tombstone: the other store's old copy is what came back.
_MISSED_DELETE = [("save", 0), ("fail", _D, "delete"), ("delete", 0), ("days", 31)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(ORDER), plan=steps)
# The paths by which a purge confined to one store let a deletion come back:
@example(first=Phase.DUAL_WRITE, plan=[*_MISSED_DELETE, ("purge", _C), ("backfill", _D)])
@example(first=Phase.SHADOW, plan=[*_MISSED_DELETE, ("purge", _C), ("verify_repair", _D)])
@example(first=Phase.SHADOW, plan=[*_MISSED_DELETE, ("purge", _C), ("read", 0), ("drain",)])
@example(  # a delete in DOCDB_ONLY, the purge, then the rollback with its reverse backfill
    first=Phase.RAMPDOWN,
    plan=[("save", 0), ("flip", 1), ("delete", 0), ("days", 40), ("purge", _D)]
    + [("flip", -1)] * 3,
)
def test_a_deleted_session_never_comes_back(first: Phase, plan: list[tuple[Any, ...]]) -> None:
    asyncio.run(run(first, plan))
