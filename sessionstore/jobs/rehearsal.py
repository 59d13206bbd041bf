"""A migration rehearsal on in-memory stores: every phase, a rollback, injected faults.

Concurrent writers save, read and delete synthetic sessions while the phase steps
``off -> dualwrite -> shadow -> live -> rampdown -> complete`` and rolls back
again to ``dualwrite``, the last phase in which both stores are written (going on
to ``off`` stops DocumentDB's updates; only a new backfill brings it level again).
The secondary store fails a share of its writes. History written before
dual-writing is copied by a reconcile pass (the backfill's job), and before the
rollback from ``complete`` the writes Cassandra missed are copied back (the reverse
backfill). Repairs are drained at each flip, as the runbook asks. At the end every
key is checked: both stores must hold the newest acknowledged revision.

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

from sessionstore.backends.memory import InMemoryBackend
from sessionstore.jobs.reconcile import reconcile
from sessionstore.model import Answer, Attachment, SessionStatus, StudentSession
from sessionstore.phases import PHASE_PLANS, Phase, StaticPhaseSource
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.worker import RepairWorker
from sessionstore.repository import SessionRepository
from sessionstore.testing import FaultInjectingBackend

__all__ = ["PhaseStats", "RehearsalConfig", "RehearsalReport", "run_rehearsal"]

#: Forward through every stage, then the rollback down to DUAL_WRITE.
SCHEDULE: tuple[Phase, ...] = (*Phase, *reversed(tuple(Phase)[1:-1]))


@dataclasses.dataclass(frozen=True)
class RehearsalConfig:
    """Knobs of a rehearsal; the defaults finish in a few seconds."""

    keys: int = 300
    writers: int = 8
    ops_per_phase: int = 400
    fault_rate: float = 0.05
    seed: int = 2026
    queue_path: Path | None = None


@dataclasses.dataclass
class PhaseStats:
    """What happened while one phase was active."""

    phase: Phase
    operations: int = 0
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
    history_copied: int = 0
    reverse_copied: int = 0
    keys_checked: int = 0
    diverged_keys: int = 0
    lost_writes: int = 0

    @property
    def ok(self) -> bool:
        """True when both stores ended identical and nothing acknowledged was lost."""
        return self.diverged_keys == 0 and self.lost_writes == 0


class _Traffic:
    """Synthetic service traffic; remembers the newest acknowledged revision per key."""

    def __init__(self, repo: SessionRepository, config: RehearsalConfig) -> None:
        self.repo = repo
        self.rng = random.Random(config.seed)
        self.keys = [uuid.UUID(int=self.rng.getrandbits(128)) for _ in range(config.keys)]
        self.acked: dict[uuid.UUID, tuple[int, bool]] = {}

    def _ack(self, sid: uuid.UUID, revision: int, deleted: bool) -> None:
        if sid not in self.acked or self.acked[sid][0] < revision:
            self.acked[sid] = (revision, deleted)

    def _session(self, sid: uuid.UUID) -> StudentSession:
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
        if roll < 0.5:
            saved = await self.repo.save(self._session(sid))
            self._ack(sid, saved.revision, False)
        elif roll < 0.9:
            await self.repo.get(sid)
        else:
            self._ack(sid, await self.repo.delete(sid), True)
        stats.latencies.append(time.perf_counter() - start)
        stats.operations += 1

    async def run_phase(self, stats: PhaseStats, ops: int, writers: int) -> None:
        per_writer, extra = divmod(ops, writers)

        async def writer(n: int) -> None:
            for _ in range(n):
                await self.one(stats)

        await asyncio.gather(*(writer(per_writer + (i < extra)) for i in range(writers)))


async def run_rehearsal(config: RehearsalConfig = RehearsalConfig()) -> RehearsalReport:
    """Run the rehearsal and return its report (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="sessionstore-rehearsal-") as tmp:
        queue_path = config.queue_path or Path(tmp) / "repairs.db"
        return await _rehearse(config, queue_path)


async def _rehearse(config: RehearsalConfig, queue_path: Path) -> RehearsalReport:
    cassandra = FaultInjectingBackend(InMemoryBackend(name="cassandra"))
    documentdb = FaultInjectingBackend(InMemoryBackend(name="documentdb"))
    phases = StaticPhaseSource(Phase.CASSANDRA_ONLY)
    queue = SqliteRepairQueue(queue_path)
    repo = SessionRepository(
        cassandra=cassandra,
        documentdb=documentdb,
        phases=phases,
        repairs=queue,
        rng=random.Random(config.seed),
    )
    report = RehearsalReport(phases=[])
    fault_rng = random.Random(config.seed + 1)
    async with repo:
        worker = RepairWorker(
            cassandra=cassandra,
            documentdb=documentdb,
            queue=queue,
            telemetry=repo.telemetry,
            retry_delay_seconds=0.01,
        )
        traffic = _Traffic(repo, config)
        previous: Phase | None = None
        for phase in SCHEDULE:
            if previous is Phase.DOCDB_ONLY:
                # Rolling back from DOCDB_ONLY: Cassandra missed those writes.
                report.reverse_copied += (
                    await reconcile(documentdb, cassandra, repair=True)
                ).repaired
            phases.phase = phase
            if previous is Phase.CASSANDRA_ONLY and phase is Phase.DUAL_WRITE:
                # Dual-writes are on: copy the history (the backfill's job).
                report.history_copied += (
                    await reconcile(cassandra, documentdb, repair=True)
                ).repaired
            secondary = PHASE_PLANS[phase].secondary
            if secondary is not None:
                target = cassandra if secondary.value == "cassandra" else documentdb
                for op in ("save", "delete"):
                    target.fail_randomly(
                        config.fault_rate, operation=op, seed=fault_rng.getrandbits(32)
                    )
            stats = PhaseStats(phase)
            await traffic.run_phase(stats, config.ops_per_phase, config.writers)
            cassandra.heal()
            documentdb.heal()
            # The on-call runbook drains repairs before each flip; so does the rehearsal.
            await repo.wait_for_comparisons()
            report.repairs_copied += (await worker.drain()).copied
            report.phases.append(stats)
            previous = phase
        final = await reconcile(cassandra, documentdb)
        report.keys_checked = final.keys
        report.diverged_keys = final.differences
        records = (cassandra.inner.records(), documentdb.inner.records())
        for sid, (revision, deleted) in traffic.acked.items():
            for held in records:
                record = held.get(sid)
                if record is None or record.revision != revision or record.deleted != deleted:
                    report.lost_writes += 1
        stats_ = repo.stats
        report.operations = sum(p.operations for p in report.phases)
        report.faults_injected = cassandra.injected + documentdb.injected
        report.divergences_seen = stats_.divergences
        report.repairs_enqueued = stats_.repairs_enqueued
    return report
