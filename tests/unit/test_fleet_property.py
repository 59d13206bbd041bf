"""Property: a fleet of repositories loses no acknowledged write, resurrects no deleted
session, and never hides a conflict, whatever Hypothesis draws.

The fleet: two or three repositories ("processes") over the same two stores and one
shared repair queue, each with its own revision clock skewed by up to five seconds,
each adopting phase flips on its own (a flag takes seconds to reach every process).
The steps drawn: saves (blind, or read-modify-write), deletes, reads, faults before or
after a write applied, callers cancelled after any number of event-loop steps (every
await point of a dual write), time leaping ahead by seconds or by weeks, repair drains,
the tombstone purge job, and phase moves forward and back, with the runbook's own steps
(backfills, a drain before the read store changes) done by the operator of the test.

Checked throughout and at the end:
(a) every acknowledged write is readable, or superseded by a newer write;
(b) no deleted session is ever readable again;
(c) every conflict is visible: a write that is not the newest raised ConflictError, and
    a pair of stores that disagree at the end is a dead letter, by session id.
Reads of a session still queued for repair are exempt from (a) and (b): during a flip
of the read store, a process already flipped may read a secondary copy that is being
repaired (see docs/phases.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import uuid
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sessionstore import (
    PHASE_PLANS,
    BackendError,
    BackendTimeoutError,
    ConflictError,
    InMemoryBackend,
    InMemoryRepairQueue,
    Phase,
    RepairWorker,
    SessionRepository,
    StaticPhaseSource,
    StoredRecord,
    StudentSession,
)
from sessionstore.jobs import BackfillJob, PurgeJob
from sessionstore.repair.worker import DEFAULT_TOMBSTONE_GRACE
from sessionstore.testing import FaultInjectingBackend, SimulatedTime
from tests.helpers import make_session

KEYS = [uuid.UUID(int=(i + 1) << 64) for i in range(2)]
PHASES = list(Phase)
STORES = ("cassandra", "documentdb")


class RecordingBackend(FaultInjectingBackend):
    """Remembers every record that reached the store (landed or not)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.sent: set[tuple[uuid.UUID, int, bool, str]] = set()

    async def save(self, session: StudentSession, **options: Any) -> Any:
        self.sent.add((session.session_id, session.revision, False, _digest(session)))
        return await super().save(session, **options)

    async def delete(self, session_id: uuid.UUID, revision: int, **options: Any) -> Any:
        self.sent.add((session_id, revision, True, ""))
        return await super().delete(session_id, revision, **options)


def _visible(record: StoredRecord | None) -> tuple[int, str] | None:
    """What a reader sees: nothing, or a live session's revision and content."""
    if record is None or record.session is None:
        return None
    return record.revision, _digest(record.session)


def _digest(session: StudentSession | None) -> str:
    return "" if session is None else session.metadata.get("v", "")


@dataclasses.dataclass
class Ack:
    revision: int
    deleted: bool
    digest: str


@dataclasses.dataclass
class Proc:
    repo: SessionRepository
    phases: StaticPhaseSource


class Fleet:
    def __init__(
        self,
        skews: list[float],
        start: Phase = Phase.CASSANDRA_ONLY,
        *,
        stores: tuple[Any, Any] | None = None,
        keys: list[uuid.UUID] | None = None,
    ) -> None:
        self.time = SimulatedTime(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
        cassandra, documentdb = stores or (
            InMemoryBackend(name="cassandra"),
            InMemoryBackend(name="documentdb"),
        )
        self.cassandra = RecordingBackend(cassandra)
        self.documentdb = RecordingBackend(documentdb)
        self.keys = keys or KEYS
        # A real store may apply a cancelled call's write after the call gave up: the
        # repository delays its repair; settling waits that long.
        self.repair_delay = 0.0 if stores is None else 0.3
        self.queue = InMemoryRepairQueue()
        self.procs = [
            Proc(
                SessionRepository(
                    cassandra=self.cassandra,
                    documentdb=self.documentdb,
                    phases=(source := StaticPhaseSource(start)),
                    repairs=self.queue,
                    clock=self.time.clock(skew=skew, writer_id=i + 1),
                    repair_delay=self.repair_delay,
                ),
                source,
            )
            for i, skew in enumerate(skews)
        ]
        self.worker = RepairWorker(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            queue=self.queue,
            retry_delay_seconds=0,
            time_source=self.time,
        )
        self.acked: dict[uuid.UUID, list[Ack]] = {k: [] for k in self.keys}
        self.target = PHASES.index(start)  # the phase the operator is moving the fleet to
        self.visited = {start}
        self.backfill_owed = False  # a process wrote Cassandra only since the last backfill
        self.reverse_owed = False  # a process wrote DocumentDB only since the last one
        self.conflicts = 0
        self.purged = 0
        #: Keys whose tombstone one store forgot on its own: the stores may keep reading
        #: differently (a tombstone against an old live copy) until a comparison or
        #: verify reports it; what is checked for them is that nothing comes back.
        self.forgotten: set[uuid.UUID] = set()
        self.counter = 0

    # -- what the checks need ------------------------------------------------------------

    def stores(self) -> tuple[RecordingBackend, RecordingBackend]:
        return self.cassandra, self.documentdb

    async def record(self, store: str, sid: uuid.UUID) -> StoredRecord | None:
        backend = self.cassandra if store == "cassandra" else self.documentdb
        result: StoredRecord | None = await backend.inner.get(sid)
        return result

    def exempt(self, sid: uuid.UUID) -> bool:
        """Still queued for repair, or a dead letter: the stores may differ for now."""
        return sid in self.queue.pending() or sid in self.queue.dead()

    def landed(self, sid: uuid.UUID, record: StoredRecord) -> bool:
        entry = (sid, record.revision, record.deleted, _digest(record.session))
        return any(entry in b.sent for b in self.stores())

    def check_read(self, sid: uuid.UUID, got: StudentSession | None) -> None:
        if not self.exempt(sid):
            self.check_visible(sid, got)

    def check_visible(self, sid: uuid.UUID, got: StudentSession | None) -> None:
        """(a) and (b) for what a reader sees of ``sid``."""
        if not self.acked[sid]:
            return
        newest = max(self.acked[sid], key=lambda a: a.revision)
        if got is None:
            # (a) a lost write, unless a newer deletion landed (acknowledged or not);
            # a purged deletion reads as None too.
            assert newest.deleted or self.newer_deletion_sent(sid, newest.revision), (
                "an acknowledged save is not readable"
            )
            return
        # (b) and (a): never older than the newest acknowledged write.
        assert got.revision >= newest.revision, "a read returned a superseded or deleted copy"
        if got.revision == newest.revision:
            assert not newest.deleted and _digest(got) == newest.digest

    def newer_deletion_sent(self, sid: uuid.UUID, revision: int) -> bool:
        return any(
            s == sid and deleted and r > revision
            for b in self.stores()
            for s, r, deleted, _ in b.sent
        )

    async def check_acknowledged(self, proc: Proc, sid: uuid.UUID, ack: Ack) -> None:
        # 9.4: a write that returned is the newest version in the authoritative store.
        auth = PHASE_PLANS[proc.phases.phase].authoritative.value
        stored = await self.record(auth, sid)
        assert stored is not None
        assert (stored.revision, stored.deleted) == (ack.revision, ack.deleted)
        assert _digest(stored.session) == ack.digest  # not another write at that revision
        self.acked[sid].append(ack)

    # -- the operator's runbook ------------------------------------------------------------

    def adopted(self) -> bool:
        return all(p.phases.phase is PHASES[self.target] for p in self.procs)

    async def adopt(self, i: int) -> None:
        proc = self.procs[i % len(self.procs)]
        proc.phases.phase = PHASES[self.target]
        await self.after_adoption()

    async def after_adoption(self) -> None:
        phases = {p.phases.phase for p in self.procs}
        if Phase.CASSANDRA_ONLY in phases:
            self.backfill_owed = True
        if Phase.DOCDB_ONLY in phases:
            self.reverse_owed = True
        if not self.adopted():
            return
        phase = PHASES[self.target]
        if phase is Phase.DUAL_WRITE and self.backfill_owed:
            await self.backfill(self.cassandra, self.documentdb)
            self.backfill_owed = False
        if phase is Phase.RAMPDOWN and self.reverse_owed:
            await self.backfill(self.documentdb, self.cassandra)
            self.reverse_owed = False

    async def backfill(self, source: Any, target: Any) -> None:
        job = BackfillJob(source, target, name=f"bf{self.counter}", concurrency=1)
        self.counter += 1
        report = await job.run(job.plan(parts=2))
        assert report.ok(), report.failed_units

    async def move(self, forward: bool, early: int) -> None:
        # The runbook flips from a settled fleet only: the stragglers adopt first.
        for i in range(len(self.procs)):
            await self.adopt(i)
        new = self.target + (1 if forward else -1)
        if not 0 <= new < len(PHASES):
            return
        old_phase, new_phase = PHASES[self.target], PHASES[new]
        if old_phase is Phase.DUAL_WRITE and new_phase is Phase.SHADOW and self.backfill_owed:
            return
        if old_phase is Phase.RAMPDOWN and new_phase is Phase.DOCDB_PRIMARY and self.reverse_owed:
            return
        if PHASE_PLANS[old_phase].read is not PHASE_PLANS[new_phase].read:
            # Drain before the read store changes; an operator does not flip past a
            # dead letter.
            await self.settle()
            if self.queue.pending() or self.queue.dead():
                return
        self.target = new
        self.visited.add(PHASES[new])
        # The flag reaches some processes at once, the others on later "adopt" steps.
        for i in range(early):
            await self.adopt(i)

    async def settle(self) -> None:
        self.cassandra.heal()
        self.documentdb.heal()
        for proc in self.procs:
            await proc.repo.wait_for_comparisons()
        for _ in range(10):
            await self.worker.drain(wait_seconds=self.repair_delay)
            if not self.queue.pending():
                break

    async def expire(self, store: str) -> None:
        """Weeks pass; one store alone forgets its tombstones older than the grace period.

        Not something the library does any more (tombstones are kept until the purge
        job removes them from both stores); it stands for a TTL left on one store or a
        cleanup by hand, and checks that the repairs do not resurrect what it forgot.
        """
        self.time.advance(DEFAULT_TOMBSTONE_GRACE + dt.timedelta(days=1))
        backend = self.cassandra if store == "cassandra" else self.documentdb
        cutoff = self.time() - DEFAULT_TOMBSTONE_GRACE // dt.timedelta(microseconds=1)
        for sid in self.keys:
            record = await backend.inner.get(sid)
            if record is not None and record.deleted and record.revision < cutoff:
                await backend.inner.purge(record.session_id, record.revision)
                self.forgotten.add(record.session_id)

    async def purge(self) -> None:
        # The purge job, both passes: each store's old tombstones, checked in the other.
        job = PurgeJob(
            self.cassandra,
            self.documentdb,
            name=f"purge{self.counter}",
            time_source=self.time,
            concurrency=1,
        )
        self.counter += 1
        report = await job.run(job.plan(parts=2))
        assert report.ok(), report.failed_units
        self.purged += report.counts["purged"]


async def run_step(fleet: Fleet, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind in ("save", "rmw", "delete", "read"):
        _, i, k, fault, cancel_after = step
        proc, sid = fleet.procs[i % len(fleet.procs)], fleet.keys[k]
        if fault is not None:
            store, op_fault, after = fault
            backend = fleet.cassandra if store == "cassandra" else fleet.documentdb
            operation = "get" if kind == "read" else ("delete" if kind == "delete" else "save")
            if op_fault == "error":
                backend.fail_next(1, operation=operation, error=BackendTimeoutError, after=after)
            else:
                backend.cancel_next(1, operation=operation, after=after)
        await call(fleet, proc, kind, sid, cancel_after)
        fleet.cassandra.heal()
        fleet.documentdb.heal()
    elif kind == "advance":
        fleet.time.advance(step[1])
    elif kind == "adopt":
        await fleet.adopt(step[1])
    elif kind == "move":
        await fleet.move(step[1], step[2])
    elif kind == "drain":
        for proc in fleet.procs:
            await proc.repo.wait_for_comparisons()
        await fleet.worker.drain()
    elif kind == "purge":
        await fleet.purge()
    elif kind == "expire":
        await fleet.expire(step[1])


async def call(
    fleet: Fleet, proc: Proc, kind: str, sid: uuid.UUID, cancel_after: int | None
) -> None:
    repo = proc.repo
    fleet.counter += 1
    version = str(fleet.counter)

    async def operation() -> tuple[str, Any]:
        if kind == "read":
            return "read", await repo.get(sid)
        if kind == "delete":
            return "delete", await repo.delete(sid)
        if kind == "rmw":
            current = await repo.get(sid)
            if current is not None:
                update = {"metadata": {"v": version}}
                return "save", await repo.save(current.model_copy(update=update))
        return "save", await repo.save(make_session(session_id=sid, metadata={"v": version}))

    task = asyncio.create_task(operation())
    if cancel_after is not None:
        for _ in range(cancel_after):
            await asyncio.sleep(0)
        task.cancel()
    try:
        what, result = await task
    except asyncio.CancelledError:
        return  # not acknowledged; the repository queued what it must
    except ConflictError as exc:
        await check_conflict(fleet, proc, sid, exc)
        return
    except BackendError:
        return  # the authoritative store failed: not acknowledged
    if what == "read":
        fleet.check_read(sid, result)
    elif what == "delete":
        await fleet.check_acknowledged(proc, sid, Ack(result, True, ""))
    else:
        await fleet.check_acknowledged(proc, sid, Ack(result.revision, False, _digest(result)))


async def check_conflict(fleet: Fleet, proc: Proc, sid: uuid.UUID, conflict: ConflictError) -> None:
    # (c) a conflict is raised, never swallowed, and carries the newer revision that won.
    fleet.conflicts += 1
    current = await fleet.record(PHASE_PLANS[proc.phases.phase].authoritative.value, sid)
    assert current is not None and conflict.current_revision is not None
    assert current.revision >= conflict.current_revision > conflict.attempted_revision


async def final_check(fleet: Fleet) -> None:
    # Bring every process to the target phase, do what the runbook owes, settle.
    for i in range(len(fleet.procs)):
        await fleet.adopt(i)
    await fleet.settle()
    phase = PHASES[fleet.target]
    plan = PHASE_PLANS[phase]
    dead = fleet.queue.dead()
    for sid in fleet.keys:
        read_store = await fleet.record(plan.read.value, sid)
        if plan.secondary is not None and sid not in dead and sid not in fleet.forgotten:
            other = await fleet.record(plan.read.other.value, sid)
            # (c) the stores agree (a tombstone and a forgotten key read the same), or the
            # difference is a dead letter with its id.
            assert _visible(read_store) == _visible(other), (sid, read_store, other)
        if sid in dead:
            continue
        if read_store is not None:
            assert fleet.landed(sid, read_store)
        fleet.check_visible(sid, None if read_store is None else read_store.session)


async def run(
    skews: list[float],
    steps: list[tuple[Any, ...]],
    start: Phase = Phase.CASSANDRA_ONLY,
    **stores: Any,
) -> Fleet:
    """Run ``steps``; ``stores``: ``stores=(cassandra, documentdb)`` and ``keys`` (real)."""
    fleet = Fleet(skews, start, **stores)
    for proc in fleet.procs:
        await proc.repo.__aenter__()
    try:
        for step in steps:
            await run_step(fleet, step)
        await final_check(fleet)
    finally:
        for proc in fleet.procs:
            await proc.repo.aclose()
    return fleet


proc = st.integers(0, 2)
key = st.integers(0, len(KEYS) - 1)
fault = st.none() | st.tuples(
    st.sampled_from(STORES), st.sampled_from(["error", "cancel"]), st.booleans()
)
cancel_after = st.none() | st.integers(0, 12)
seconds = st.sampled_from([0.001, 0.5, 3.0, 86_400.0, 40 * 86_400.0, 40 * 86_400.0])
STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "op": st.tuples(
        st.sampled_from(["save", "rmw", "delete", "read"]), proc, key, fault, cancel_after
    ),
    "advance": st.tuples(st.just("advance"), seconds),
    "adopt": st.tuples(st.just("adopt"), proc),
    "move": st.tuples(st.just("move"), st.booleans(), st.integers(0, 3)),
    "drain": st.tuples(st.just("drain")),
    "purge": st.tuples(st.just("purge")),
    "expire": st.tuples(st.just("expire"), st.sampled_from(STORES)),
}
# Weighted: mostly traffic, with enough moves to walk the migration both ways.
KINDS = ["op"] * 10 + ["advance"] * 3 + ["adopt"] * 2 + ["move"] * 3 + ["drain"] * 2
KINDS += ["purge", "expire", "expire"]
step = st.sampled_from(KINDS).flatmap(STEPS.__getitem__)


@settings(
    max_examples=int(os.environ.get("FLEET_EXAMPLES", "800")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    skews=st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=3),
    steps=st.lists(step, min_size=10, max_size=80),
    start=st.sampled_from(PHASES),
)
def test_a_fleet_loses_nothing_resurrects_nothing_and_hides_no_conflict(
    skews: list[float], steps: list[tuple[Any, ...]], start: Phase
) -> None:
    fleet = asyncio.run(run(skews, steps, start))
    event(f"phases visited: {len(fleet.visited)}")
    event(f"conflicts raised: {min(fleet.conflicts, 3)}")
    event(f"dead letters: {min(len(fleet.queue.dead()), 3)}")
    event(f"purged: {fleet.purged > 0}")
    event(f"forgotten by one store: {bool(fleet.forgotten)}")


def test_the_fleet_reaches_every_phase_and_back() -> None:
    # The strategy above can walk the whole migration: forward to DOCDB_ONLY, back again.
    walk: list[tuple[Any, ...]] = []
    for forward in [True] * 5 + [False] * 5:
        walk += [("move", forward, 1), ("adopt", 1), ("adopt", 2)]
        walk += [("save", 0, 0, None, None), ("delete", 1, 1, None, None), ("advance", 3.0)]
    fleet = asyncio.run(run([0.0, 4.0, -4.0], walk))
    assert fleet.target == 0
    assert fleet.acked[KEYS[0]] and fleet.acked[KEYS[1]]
