"""The repair worker: makes both stores hold the newest revision of queued sessions.

For each queued session it reads both stores and copies the newer record (session or
tombstone) to the other one under the revision rule. The authoritative store normally
holds the newer record; after a rollback the other one may, and copying newest-wins
is right in both cases. A copy that fails is retried with exponential back-off
(capped at 64 times the base delay); a repair never
makes a store older.

Example::

    worker = RepairWorker(cassandra=c, documentdb=d, queue=queue)
    report = await worker.drain()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

from sessionstore._errors import BackendError
from sessionstore._telemetry import Telemetry
from sessionstore.backends.base import SessionBackend, StoredRecord
from sessionstore.divergence import DivergenceKind, compare_records
from sessionstore.repair.queue import RepairQueue, RepairTask

__all__ = ["RepairOutcome", "RepairReport", "RepairWorker"]

log = logging.getLogger(__name__)


class RepairOutcome:
    """Outcome names used in reports and the ``sessionstore.repairs.completed`` counter."""

    COPIED = "copied"
    IN_SYNC = "in_sync"
    CONFLICT = "conflict"
    FAILED = "failed"


@dataclasses.dataclass
class RepairReport:
    """Counts of what a drain did."""

    copied: int = 0
    in_sync: int = 0
    conflicts: int = 0
    failed: int = 0

    @property
    def processed(self) -> int:
        """Tasks handled, whatever their outcome."""
        return self.copied + self.in_sync + self.conflicts + self.failed


class RepairWorker:
    """Drains a repair queue against the two stores."""

    def __init__(
        self,
        *,
        cassandra: SessionBackend,
        documentdb: SessionBackend,
        queue: RepairQueue,
        telemetry: Telemetry | None = None,
        batch_size: int = 100,
        concurrency: int = 8,
        retry_delay_seconds: float = 1.0,
    ) -> None:
        self._stores = (cassandra, documentdb)
        self._queue = queue
        self._telemetry = telemetry or Telemetry()
        self._batch_size = batch_size
        self._limit = asyncio.Semaphore(concurrency)
        self._retry_delay = retry_delay_seconds

    async def sync(self, session_id: uuid.UUID) -> str:
        """Copy the newer of the two records to the other store; return the outcome."""
        first, second = self._stores
        a, b = await asyncio.gather(first.get(session_id), second.get(session_id))
        divergence = compare_records(a, b)
        if divergence.consistent:
            return RepairOutcome.IN_SYNC
        if divergence.kind in (DivergenceKind.CONTENT_MISMATCH, DivergenceKind.DELETED_IN_ONE):
            # Equal revisions: the revision rule cannot pick a winner. Left to verify.
            log.warning("repair conflict: equal revisions differ in %s", divergence.fields)
            return RepairOutcome.CONFLICT
        if a is not None and (b is None or a.revision > b.revision):
            await _copy(a, second)
        elif b is not None:
            await _copy(b, first)
        return RepairOutcome.COPIED

    async def drain(self, *, max_rounds: int | None = None) -> RepairReport:
        """Process tasks until the queue has no visible task (or ``max_rounds`` batches)."""
        report = RepairReport()
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            tasks = await self._queue.claim(self._batch_size)
            if not tasks:
                break
            rounds += 1
            outcomes = await asyncio.gather(*(self._process(t) for t in tasks))
            for outcome in outcomes:
                if outcome == RepairOutcome.COPIED:
                    report.copied += 1
                elif outcome == RepairOutcome.IN_SYNC:
                    report.in_sync += 1
                elif outcome == RepairOutcome.CONFLICT:
                    report.conflicts += 1
                else:
                    report.failed += 1
        return report

    async def _process(self, task: RepairTask) -> str:
        async with self._limit:
            try:
                outcome = await self.sync(task.session_id)
            except BackendError as exc:
                self._telemetry.repair_completed(RepairOutcome.FAILED)
                log.warning("repair failed (%s); will retry", type(exc).__name__)
                delay = self._retry_delay * 2 ** min(task.attempts, 6)
                await self._queue.retry(task, delay_seconds=delay)
                return RepairOutcome.FAILED
            await self._queue.ack(task)
            self._telemetry.repair_completed(outcome)
            return outcome


async def _copy(record: StoredRecord, target: SessionBackend) -> None:
    if record.session is None:
        await target.delete(record.session_id, record.revision)
    else:
        await target.save(record.session)
