"""The rehearsal's fleet stage: many writers, skewed clocks, cancellations, expiring tombstones.

After the phase schedule, three repositories stand for three service processes (in
this one process: the in-memory stores cannot be shared across processes): their clocks
are 4 seconds apart, each has its own writer id, each takes a phase flip a moment after
the others, and they share the stores and the repair queue. They write the same few
sessions at once (read-modify-writes and blind saves, deletes, reads); some callers are
cancelled at a random point, and the secondary store sometimes times out *after*
applying a write. Then time passes beyond the tombstone grace: the purge job removes the
old tombstones from both stores, and a backfill each way and a verify with repair run,
as a rollback would run them. Last, one store forgets a few tombstones on its own (as a
TTL left on one store would) while the other still holds the copy from before the
delete: the repair worker must report them, not copy them back.

Counted: acknowledged writes lost (must be 0), deleted sessions readable again (must be
0), and the conflicts reported instead of being resolved silently (ConflictErrors raised
to callers, and dead letters by session id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Callable

from sessionstore._errors import BackendError, BackendTimeoutError, ConflictError
from sessionstore.jobs.backfill import BackfillJob
from sessionstore.jobs.purge import PurgeJob
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.verify import VerifyJob
from sessionstore.model import StudentSession
from sessionstore.phases import PHASE_PLANS, Phase, StaticPhaseSource
from sessionstore.repair.queue import RepairQueue
from sessionstore.repair.worker import DEFAULT_TOMBSTONE_GRACE, RepairWorker
from sessionstore.repository import SessionRepository
from sessionstore.resilience import BreakerPolicy
from sessionstore.revision import HybridClock, wall_clock_us
from sessionstore.testing import FaultInjectingBackend

__all__ = ["FleetReport", "run_fleet_stage"]

#: Clock offsets of the three simulated processes, in seconds.
SKEWS = (-4.0, 0.0, 4.0)
#: The phases the fleet walks through, with a rollback at the end.
WALK = (Phase.DUAL_WRITE, Phase.SHADOW, Phase.DOCDB_PRIMARY, Phase.SHADOW)
_FAST_RETRY = RetryPolicy(attempts=10, base_delay=0.002, max_delay=0.05)
_LATER = DEFAULT_TOMBSTONE_GRACE + dt.timedelta(days=1)


@dataclasses.dataclass
class FleetReport:
    """What the fleet stage did and found."""

    processes: int = len(SKEWS)
    operations: int = 0
    cancelled: int = 0
    conflicts_raised: int = 0
    failed_calls: int = 0
    tombstones_forgotten: int = 0
    tombstones_purged: int = 0
    dead_letters: dict[str, str] = dataclasses.field(default_factory=dict)
    lost_writes: int = 0
    resurrected: int = 0

    @property
    def ok(self) -> bool:
        """Nothing acknowledged lost, nothing deleted readable again."""
        return self.lost_writes == 0 and self.resurrected == 0


class _Stage:
    def __init__(
        self,
        cassandra: FaultInjectingBackend,
        documentdb: FaultInjectingBackend,
        queue: RepairQueue,
        *,
        keys: int,
        seed: int,
        repair_delay: float,
        parts: int,
    ) -> None:
        self.cassandra, self.documentdb, self.queue = cassandra, documentdb, queue
        self.parts = parts
        self.rng = random.Random(seed)
        self.keys = [uuid.UUID(int=self.rng.getrandbits(128)) for _ in range(keys)]
        self.report = FleetReport()
        self.acked: dict[uuid.UUID, tuple[int, bool]] = {}
        # Sessions with a delete whose caller never learnt the outcome (cancelled or
        # failed): it may have landed, and then been purged with the older records.
        self.unacked_deletes: set[uuid.UUID] = set()
        self.repair_delay = repair_delay
        self.sources = [StaticPhaseSource(WALK[0]) for _ in SKEWS]
        self.repos = [
            SessionRepository(
                cassandra=cassandra,
                documentdb=documentdb,
                phases=source,
                repairs=queue,
                clock=HybridClock(writer_id=200 + i, time_source=_skewed(skew)),
                breaker=BreakerPolicy(open_seconds=0.05),
                repair_delay=repair_delay,
                rng=random.Random(seed + i),
            )
            for i, (skew, source) in enumerate(zip(SKEWS, self.sources, strict=True))
        ]

    def worker(self, time_source: Callable[[], int] | None = None) -> RepairWorker:
        return RepairWorker(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            queue=self.queue,
            retry_delay_seconds=0.01,
            time_source=time_source,
        )

    def ack(self, sid: uuid.UUID, revision: int, deleted: bool) -> None:
        if sid not in self.acked or self.acked[sid][0] < revision:
            self.acked[sid] = (revision, deleted)

    # -- traffic ---------------------------------------------------------------------

    async def call(self, repo: SessionRepository, sid: uuid.UUID) -> None:
        roll = self.rng.random()
        self.report.operations += 1
        try:
            if roll < 0.35:
                current = await repo.get(sid)
                base = current or _session(sid, self.rng)
                saved = await repo.save(base.model_copy(update={"metadata": {"n": str(roll)}}))
                self.ack(sid, saved.revision, False)
            elif roll < 0.6:
                saved = await repo.save(_session(sid, self.rng))
                self.ack(sid, saved.revision, False)
            elif roll < 0.75:
                self.unacked_deletes.add(sid)
                self.ack(sid, await repo.delete(sid), True)
                self.unacked_deletes.discard(sid)
            else:
                await repo.get(sid)
        except ConflictError:
            self.report.conflicts_raised += 1
        except BackendError:
            self.report.failed_calls += 1

    async def process(self, i: int, calls: int) -> None:
        repo = self.repos[i]
        for _ in range(calls):
            sid = self.rng.choice(self.keys)
            task = asyncio.ensure_future(self.call(repo, sid))
            if self.rng.random() < 0.08:
                # The caller goes away at a random point of the call.
                await asyncio.sleep(self.rng.random() * 0.002)
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                self.report.cancelled += 1

    async def traffic(self, phase: Phase, calls: int) -> None:
        # The flag reaches the processes one after the other.
        async def adopt() -> None:
            for source in self.sources:
                await asyncio.sleep(0.005)
                source.phase = phase

        await asyncio.gather(adopt(), *(self.process(i, calls) for i in range(len(SKEWS))))

    async def settle(self) -> None:
        self.cassandra.heal()
        self.documentdb.heal()
        for repo in self.repos:
            await repo.wait_for_comparisons()
        worker = self.worker()
        for _ in range(20):
            await worker.drain(wait_seconds=self.repair_delay)
            if (await self.queue.stats()).pending == 0:
                return

    # -- tombstones expire -----------------------------------------------------------------

    async def forget_some_tombstones(self) -> list[uuid.UUID]:
        """Sessions deleted while the secondary missed it; one store then forgets them."""
        plan = PHASE_PLANS[self.sources[0].phase]
        assert plan.secondary is not None
        authoritative = self._backend(plan.authoritative.value)
        secondary = self._backend(plan.secondary.value)
        victims = [uuid.UUID(int=self.rng.getrandbits(128)) for _ in range(5)]
        repo = self.repos[1]
        for sid in victims:
            saved = await repo.save(_session(sid, self.rng))
            secondary.fail_next(1, operation="delete", error=BackendTimeoutError)
            self.ack(sid, await repo.delete(sid, revision=saved.revision), True)
        for repo in self.repos:
            await repo.wait_for_comparisons()
        for sid in victims:
            head = await authoritative.inner.head(sid)
            if head is not None and head.deleted:
                await authoritative.inner.purge(sid, head.revision)
                self.report.tombstones_forgotten += 1
        return victims

    def _backend(self, name: str) -> FaultInjectingBackend:
        return self.cassandra if name == "cassandra" else self.documentdb

    async def expire(self) -> None:
        later = _skewed(_LATER.total_seconds())
        purge = PurgeJob(
            self.cassandra, self.documentdb, name="rehearsal-fleet-purge", time_source=later
        )
        report = await purge.run(purge.plan(parts=self.parts))
        self.report.tombstones_purged = report.counts["purged"]
        # What a rollback then runs: a backfill each way, verify with repair.
        pairs = ((self.cassandra, self.documentdb), (self.documentdb, self.cassandra))
        for source, target in pairs:
            name = f"rehearsal-fleet-{source.name}"
            backfill = BackfillJob(source, target, name=name, retry=_FAST_RETRY)
            await backfill.run(backfill.plan(parts=self.parts))
            verify = VerifyJob(source, target, repair=True, retry=_FAST_RETRY)
            await verify.run(verify.plan(parts=self.parts))

    # -- the checks --------------------------------------------------------------------

    async def check(self) -> None:
        dead = {d.session_id: d.reason for d in await self.queue.dead_letters()}
        self.report.dead_letters = {str(k): v for k, v in dead.items()}
        repo = self.repos[0]
        for sid, (revision, deleted) in self.acked.items():
            records = [await store.get(sid) for store in (self.cassandra, self.documentdb)]
            stored = [r for r in records if r is not None]
            newest = max(stored, key=lambda r: r.revision) if stored else None
            read = await repo.get(sid)
            # A write whose caller was cancelled may have landed after an acknowledged
            # one: only a newer revision may stand in for an acknowledged write.
            if deleted:
                # Nothing older than the deletion readable again, and no automatic
                # process copied it into a store that had forgotten the deletion (a
                # dead letter says so when one store still holds a stale copy).
                older_live = [r for r in stored if not r.deleted and r.revision < revision]
                if (read is not None and read.revision < revision) or (
                    older_live and sid not in dead
                ):
                    self.report.resurrected += 1
            elif newest is None and sid in self.unacked_deletes:
                continue  # a delete of unknown outcome landed, then was purged
            elif newest is None or newest.revision < revision:
                self.report.lost_writes += 1


def _skewed(seconds: float) -> Callable[[], int]:
    offset = round(seconds * 1_000_000)
    return lambda: wall_clock_us() + offset


def _session(sid: uuid.UUID, rng: random.Random) -> StudentSession:
    return StudentSession.create(
        session_id=sid,
        student_id=f"student-{rng.randrange(100)}",
        assessment_id="rehearsal-fleet",
        metadata={"n": str(rng.random())},
    )


async def run_fleet_stage(
    cassandra: FaultInjectingBackend,
    documentdb: FaultInjectingBackend,
    queue: RepairQueue,
    *,
    keys: int = 20,
    calls: int = 150,
    seed: int = 2026,
    repair_delay: float = 0.0,
    fault_rate: float = 0.05,
    parts: int = 4,
) -> FleetReport:
    """Run the fleet stage on open stores and queue; see the module docstring.

    ``parts``: units per key space of the purge, backfill and verify jobs.
    """
    stage = _Stage(
        cassandra,
        documentdb,
        queue,
        keys=keys,
        seed=seed,
        repair_delay=repair_delay,
        parts=parts,
    )
    for repo in stage.repos:
        await repo.__aenter__()
    try:
        for phase in WALK:
            secondary = PHASE_PLANS[phase].secondary
            if secondary is not None:
                store = stage._backend(secondary.value)
                for op in ("save", "delete"):
                    # A timeout after the write applied: the caller cannot tell.
                    store.fail_randomly(
                        fault_rate,
                        operation=op,
                        seed=stage.rng.getrandbits(32),
                        error=BackendTimeoutError,
                        after=True,
                    )
            await stage.traffic(phase, calls)
            await stage.settle()
        await stage.expire()
        await stage.forget_some_tombstones()
        await stage.worker(time_source=_skewed(_LATER.total_seconds())).drain(
            wait_seconds=repair_delay
        )
        await stage.check()
    finally:
        for repo in stage.repos:
            # The stores and the queue belong to the rehearsal: it closes them.
            await repo.wait_for_comparisons()
    return stage.report
