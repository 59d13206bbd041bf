"""A migration rehearsal: history, backfill, every phase, a rollback, injected faults.

History is seeded in Cassandra before anything else (sessions and deletions the
service wrote before dual-writing began). Concurrent writers then save, read and delete
sessions through the repository while the phase steps
``off -> dualwrite -> shadow -> live -> rampdown -> complete`` and rolls back again to
``dualwrite`` (the last phase in which both stores are written; going on to ``off``
stops DocumentDB's updates, and only a new backfill brings it level again).

- On entering ``dualwrite``, the backfill (Cassandra to DocumentDB) runs *while* the
  writers dual-write, then verify proves DocumentDB complete.
- On entering ``complete`` (DOCDB_ONLY), verify runs again.
- Rolling back out of ``complete``: the phase goes to ``rampdown`` first, the reverse
  backfill (DocumentDB to Cassandra) runs while the writers write both stores, then
  verify proves Cassandra complete, as the runbook says.
- The secondary store fails a share of its writes (the jobs' writes too); repairs are
  drained at each flip, as the runbook asks.

At the end every key is checked: both stores must hold the newest acknowledged revision.
The stores are in memory by default; :func:`run_rehearsal` takes real backends too
(``sessionstore rehearse --real``).

Example::

    report = await run_rehearsal(RehearsalConfig(ops_per_phase=200))
    assert report.ok
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sessionstore._errors import BackendError, ConflictError
from sessionstore.backends.base import SessionBackend
from sessionstore.backends.memory import InMemoryBackend
from sessionstore.jobs.backfill import BackfillJob
from sessionstore.jobs.checkpoint import SqliteCheckpointStore
from sessionstore.jobs.engine import JobReport
from sessionstore.jobs.reconcile import reconcile
from sessionstore.jobs.rehearsal_fleet import FleetReport, run_fleet_stage
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.verify import VerifyJob
from sessionstore.model import Answer, Attachment, SessionStatus, StudentSession
from sessionstore.phases import PHASE_PLANS, Phase, StaticPhaseSource
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.worker import RepairWorker
from sessionstore.repository import SessionRepository
from sessionstore.resilience import BreakerPolicy
from sessionstore.revision import HybridClock
from sessionstore.testing import FaultInjectingBackend, KeySerializingBackend

__all__ = ["SCHEDULE", "PhaseStats", "RehearsalConfig", "RehearsalReport", "run_rehearsal"]

#: Forward through every stage, then the rollback down to DUAL_WRITE.
SCHEDULE: tuple[Phase, ...] = (*Phase, *reversed(tuple(Phase)[1:-1]))

# The jobs see injected faults too; retry them quickly.
_FAST_RETRY = RetryPolicy(attempts=10, base_delay=0.002, max_delay=0.05)


@dataclasses.dataclass(frozen=True)
class RehearsalConfig:
    """Knobs of a rehearsal; the defaults finish in a few seconds in memory."""

    keys: int = 300
    writers: int = 8
    ops_per_phase: int = 400
    fault_rate: float = 0.05
    seed: int = 2026
    #: Sessions written to Cassandra before dual-writing (a tenth of them deleted).
    history: int = 500
    #: Units the backfill and verify jobs split each key space into.
    parts: int = 32
    queue_path: Path | None = None
    checkpoint_path: Path | None = None
    #: Serialize writes per key on DocumentDB (needed on FerretDB, see testing.py).
    serialize_documentdb_writes: bool = False
    #: Run the fleet stage (sessionstore.jobs.rehearsal_fleet) after the schedule.
    fleet: bool = True
    #: Calls each of the fleet's three processes makes per phase.
    fleet_calls: int = 150


@dataclasses.dataclass
class PhaseStats:
    """What happened while one phase was active."""

    phase: Phase
    operations: int = 0
    #: Writes refused with ConflictError: a concurrent writer's newer revision won.
    conflicts: int = 0
    #: Calls that failed: the authoritative store failed or its breaker was open.
    failed: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return 0.0
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] * 1000


@dataclasses.dataclass
class RehearsalReport:
    """The outcome; ``ok`` is False if any key diverged or an acknowledged write was lost."""

    phases: list[PhaseStats]
    operations: int = 0
    faults_injected: int = 0
    divergences_seen: int = 0
    repairs_enqueued: int = 0
    repairs_copied: int = 0
    history_seeded: int = 0
    history_copied: int = 0
    backfill_sessions_per_second: float = 0.0
    reverse_copied: int = 0
    #: (when, differences found by verify) for each verification.
    verifications: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    keys_checked: int = 0
    diverged_keys: int = 0
    lost_writes: int = 0
    #: The fleet stage's outcome (None when it did not run).
    fleet: FleetReport | None = None

    @property
    def ok(self) -> bool:
        """True when the stores converged, nothing acknowledged was lost, nothing deleted
        came back (fleet stage), and every verification found no difference."""
        verified = all(differences == 0 for _, differences in self.verifications)
        fleet_ok = self.fleet is None or self.fleet.ok
        return self.diverged_keys == 0 and self.lost_writes == 0 and verified and fleet_ok


class _Traffic:
    """Synthetic service traffic; remembers the newest acknowledged revision per key."""

    def __init__(self, repo: SessionRepository, config: RehearsalConfig) -> None:
        self.repo = repo
        self.rng = random.Random(config.seed)
        self.keys = [uuid.UUID(int=self.rng.getrandbits(128)) for _ in range(config.keys)]
        self.acked: dict[uuid.UUID, tuple[int, bool]] = {}

    def ack(self, sid: uuid.UUID, revision: int, deleted: bool) -> None:
        if sid not in self.acked or self.acked[sid][0] < revision:
            self.acked[sid] = (revision, deleted)

    def session(self, sid: uuid.UUID) -> StudentSession:
        rng = self.rng
        answers = tuple(
            Answer(
                question_id=f"q{i}",
                response=f"answer {rng.randrange(10**6)}",
                attachments=(
                    (Attachment(content_type="image/png", data=rng.randbytes(2048)),)
                    if rng.random() < 0.2
                    else ()
                ),
            )
            for i in range(rng.randrange(1, 4))
        )
        return StudentSession.create(
            session_id=sid,
            student_id=f"student-{rng.randrange(1000)}",
            assessment_id="rehearsal",
            status=rng.choice(list(SessionStatus)),
            answers=answers,
            metadata={"source": "rehearsal"},
        )

    async def one(self, stats: PhaseStats) -> None:
        sid = self.rng.choice(self.keys)
        roll = self.rng.random()
        start = time.perf_counter()
        try:
            if roll < 0.5:
                saved = await self.repo.save(self.session(sid))
                self.ack(sid, saved.revision, False)
            elif roll < 0.9:
                await self.repo.get(sid)
            else:
                self.ack(sid, await self.repo.delete(sid), True)
        except ConflictError:
            # Another writer's newer revision was stored first: not acknowledged.
            stats.conflicts += 1
        except BackendError:
            # The authoritative store failed (or its breaker is open): not acknowledged.
            stats.failed += 1
        stats.latencies.append(time.perf_counter() - start)
        stats.operations += 1

    async def run_phase(self, stats: PhaseStats, ops: int, writers: int) -> None:
        per_writer, extra = divmod(ops, writers)

        async def writer(n: int) -> None:
            for _ in range(n):
                await self.one(stats)

        await asyncio.gather(*(writer(per_writer + (i < extra)) for i in range(writers)))


async def run_rehearsal(
    config: RehearsalConfig = RehearsalConfig(),
    *,
    cassandra: SessionBackend | None = None,
    documentdb: SessionBackend | None = None,
) -> RehearsalReport:
    """Run the rehearsal and return its report (see the module docstring).

    ``cassandra`` and ``documentdb`` default to in-memory stores; real backends must be
    empty (a fresh table and collection) and are closed at the end.
    """
    with tempfile.TemporaryDirectory(prefix="sessionstore-rehearsal-") as tmp:
        queue_path = config.queue_path or Path(tmp) / "repairs.db"
        checkpoint_path = config.checkpoint_path or Path(tmp) / "checkpoints.db"
        c = cassandra or InMemoryBackend(name="cassandra")
        d = documentdb or InMemoryBackend(name="documentdb")
        if config.serialize_documentdb_writes:
            d = KeySerializingBackend(d)
        # A real store may apply a cancelled call's write after the call gave up: its
        # repair waits a little (in memory nothing lands late).
        delay = 0.0 if cassandra is None else 0.3
        rehearsal = _Rehearsal(config, c, d, queue_path, checkpoint_path, repair_delay=delay)
        return await rehearsal.run()


class _Rehearsal:
    def __init__(
        self,
        config: RehearsalConfig,
        cassandra: SessionBackend,
        documentdb: SessionBackend,
        queue_path: Path,
        checkpoint_path: Path,
        *,
        repair_delay: float = 0.0,
    ) -> None:
        self.config = config
        self.repair_delay = repair_delay
        self.cassandra = FaultInjectingBackend(cassandra)
        self.documentdb = FaultInjectingBackend(documentdb)
        self.phases = StaticPhaseSource(Phase.CASSANDRA_ONLY)
        self.queue = SqliteRepairQueue(queue_path)
        self.checkpoints = SqliteCheckpointStore(checkpoint_path)
        self.repo = SessionRepository(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            phases=self.phases,
            repairs=self.queue,
            rng=random.Random(config.seed),
            # The injected faults open breakers; probe again soon, as time runs fast here.
            breaker=BreakerPolicy(open_seconds=0.05),
            repair_delay=repair_delay,
        )
        self.report = RehearsalReport(phases=[])
        self.fault_rng = random.Random(config.seed + 1)
        self.traffic = _Traffic(self.repo, config)
        self.worker = RepairWorker(
            cassandra=self.cassandra,
            documentdb=self.documentdb,
            queue=self.queue,
            telemetry=self.repo.telemetry,
            retry_delay_seconds=0.01,
        )

    async def run(self) -> RehearsalReport:
        async with self.repo, self.checkpoints:
            await self._seed_history()
            previous: Phase | None = None
            for phase in SCHEDULE:
                self.phases.phase = phase
                self._inject_faults(phase)
                stats = PhaseStats(phase)
                traffic = self.traffic.run_phase(
                    stats, self.config.ops_per_phase, self.config.writers
                )
                if previous is Phase.CASSANDRA_ONLY and phase is Phase.DUAL_WRITE:
                    # Dual-writes are on: copy the history while the service writes.
                    _, copied = await asyncio.gather(traffic, self._backfill(forward=True))
                    self.report.history_copied = copied.counts["sessions"]
                    self.report.history_copied += copied.counts["tombstones"]
                    self.report.backfill_sessions_per_second = copied.sessions_per_second
                elif previous is Phase.DOCDB_ONLY:
                    # Rolled back to RAMPDOWN: Cassandra missed the DOCDB_ONLY writes.
                    _, copied = await asyncio.gather(traffic, self._backfill(forward=False))
                    self.report.reverse_copied = copied.counts["sessions"]
                    self.report.reverse_copied += copied.counts["tombstones"]
                else:
                    await traffic
                await self._settle()
                if previous is Phase.CASSANDRA_ONLY and phase is Phase.DUAL_WRITE:
                    await self._verify("after the backfill", forward=True)
                elif previous is Phase.DOCDB_ONLY:
                    await self._verify("after the reverse backfill", forward=False)
                elif phase is Phase.RAMPDOWN and previous is Phase.DOCDB_PRIMARY:
                    await self._verify("before stepping to DOCDB_ONLY", forward=False)
                self.report.phases.append(stats)
                previous = phase
            await self._final_check()
            if self.config.fleet:
                self.report.fleet = await run_fleet_stage(
                    self.cassandra,
                    self.documentdb,
                    self.queue,
                    calls=self.config.fleet_calls,
                    seed=self.config.seed,
                    repair_delay=self.repair_delay,
                    fault_rate=self.config.fault_rate,
                    parts=self.config.parts,
                )
        return self.report

    async def _seed_history(self) -> None:
        clock = HybridClock()
        rng = random.Random(self.config.seed + 2)
        for i in range(self.config.history):
            sid = uuid.UUID(int=rng.getrandbits(128))
            session = self.traffic.session(sid).model_copy(update={"revision": clock.next()})
            await self.cassandra.save(session)
            self.traffic.ack(sid, session.revision, False)
            if i % 10 == 9:
                revision = clock.next()
                await self.cassandra.delete(sid, revision)
                self.traffic.ack(sid, revision, True)
        self.report.history_seeded = self.config.history

    def _inject_faults(self, phase: Phase) -> None:
        secondary = PHASE_PLANS[phase].secondary
        if secondary is None:
            return
        target = self.cassandra if secondary.value == "cassandra" else self.documentdb
        for op in ("save", "delete"):
            target.fail_randomly(
                self.config.fault_rate, operation=op, seed=self.fault_rng.getrandbits(32)
            )

    async def _settle(self) -> None:
        self.cassandra.heal()
        self.documentdb.heal()
        # The on-call runbook drains repairs before each flip; so does the rehearsal.
        await self.repo.wait_for_comparisons()
        report = await self.worker.drain(wait_seconds=self.repair_delay)
        self.report.repairs_copied += report.copied

    def _pair(self, forward: bool) -> tuple[SessionBackend, SessionBackend]:
        if forward:
            return self.cassandra, self.documentdb
        return self.documentdb, self.cassandra

    async def _backfill(self, *, forward: bool) -> JobReport:
        source, target = self._pair(forward)
        job = BackfillJob(
            source,
            target,
            name=f"rehearsal-backfill-{source.name}",
            checkpoints=self.checkpoints,
            retry=_FAST_RETRY,
            page_size=50,
        )
        return await job.run(job.plan(parts=self.config.parts))

    async def _verify(self, when: str, *, forward: bool) -> None:
        source, target = self._pair(forward)
        job = VerifyJob(
            source,
            target,
            name=f"rehearsal-verify-{len(self.report.verifications)}",
            checkpoints=self.checkpoints,
            retry=_FAST_RETRY,
            strict=True,
        )
        report = await job.run(job.plan(parts=self.config.parts))
        failed = len(report.failed_units) + report.units_not_run
        self.report.verifications.append((when, report.differences + failed))

    async def _final_check(self) -> None:
        final = await reconcile(self.cassandra, self.documentdb)
        self.report.keys_checked = final.keys
        self.report.diverged_keys = final.differences
        for sid, (revision, deleted) in self.traffic.acked.items():
            for store in (self.cassandra, self.documentdb):
                record = await store.get(sid)
                if record is None or record.revision != revision or record.deleted != deleted:
                    self.report.lost_writes += 1
        stats = self.repo.stats
        self.report.operations = sum(p.operations for p in self.report.phases)
        self.report.faults_injected = self.cassandra.injected + self.documentdb.injected
        self.report.divergences_seen = stats.divergences
        self.report.repairs_enqueued = stats.repairs_enqueued
