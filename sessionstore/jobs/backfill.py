"""Backfill: copy every historical session from one store to the other.

Runs in either direction: Cassandra to DocumentDB (the migration), or DocumentDB to
Cassandra (before a late rollback from ``DOCDB_ONLY``). Each record read from the source
is written to the target *with its own revision*, through the target's revision rule:
a session with :meth:`~sessionstore.SessionBackend.save`, a tombstone with
:meth:`~sessionstore.SessionBackend.delete`. A copy therefore never overwrites a newer
session that dual-writes already put in the target, and a re-run (or a unit run twice
after a crash) changes nothing. A Cassandra record's revision is the newest of its
revision cell and its columns' ``WRITETIME`` (see docs/cassandra.md): a historical row
without a revision is older than any dual-written write, and a column updated by
another service after the library's save is copied as the newer write it is.

The source is read page by page (``page_size`` records), one page per unit in flight,
so memory stays flat whatever the table size: about ``concurrency * page_size``
sessions at a time.

Example::

    job = BackfillJob(cassandra, documentdb, name="backfill-2026-03",
                      checkpoints=SqliteCheckpointStore("checkpoints.db"),
                      concurrency=4, rate=2000)
    report = await job.run(job.plan(parts=1024))
    assert report.ok()
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sessionstore._errors import BackendRejectedError, InvalidSessionError, SessionStoreError
from sessionstore.backends.base import KeyRange, SessionBackend, StoredRecord, copy_record
from sessionstore.jobs.checkpoint import CheckpointStore
from sessionstore.jobs.engine import (
    DEFAULT_PAGE_BYTES,
    JobProgress,
    JobReport,
    UnitJob,
    UnitResult,
    _each,
)
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.units import JobAction, UnitKind, WorkUnit, plan_ids, plan_ranges
from sessionstore.phases import Store

__all__ = ["BackfillJob", "RecordsRejectedError"]

log = logging.getLogger(__name__)


class RecordsRejectedError(SessionStoreError):
    """Some records of a unit could not be written to the target (refused by it).

    The unit is recorded as failed, and runs again when the job is resumed; the other
    records of the unit were copied. The session ids are logged (ids, never contents).
    """


class BackfillJob(UnitJob):
    """Copy ``source`` into ``target`` under the revision rule; resumable and throttled.

    Args:
        source, target: the two backends (named ``cassandra`` and ``documentdb``, or
            pass ``source_store``).
        name: the job name that checkpoints and messages are keyed by.
        checkpoints: where unit completion is recorded (in memory if None).
        concurrency: units processed at the same time.
        rate: ceiling in sessions read from the source per second (None: unlimited);
            halved on every timeout or overload answer, then recovering.
        page_size: records read per scan request, at most.
        page_bytes: about how much session data one scan page may hold: pages of
            large sessions ask for fewer records (see :class:`~sessionstore.jobs.engine.
            PageBudget`), so memory stays near ``concurrency * page_bytes``.
        max_in_flight: store requests in flight at once, all units together.
        retry: back-off policy for timeouts and unavailability.
        progress: receives progress events (a progress bar).
    """

    action = JobAction.BACKFILL

    def __init__(
        self,
        source: SessionBackend,
        target: SessionBackend,
        *,
        name: str = "backfill",
        checkpoints: CheckpointStore | None = None,
        concurrency: int = 4,
        rate: float | None = None,
        page_size: int = 100,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        max_in_flight: int = 32,
        retry: RetryPolicy | None = None,
        source_store: Store | None = None,
        progress: JobProgress | None = None,
        max_consecutive_failures: int = 10,
    ) -> None:
        super().__init__(
            source,
            target,
            name=name,
            checkpoints=checkpoints,
            concurrency=concurrency,
            rate=rate,
            page_size=page_size,
            page_bytes=page_bytes,
            max_in_flight=max_in_flight,
            retry=retry,
            source_store=source_store,
            progress=progress,
            max_consecutive_failures=max_consecutive_failures,
        )
        self._options = {
            "concurrency": concurrency,
            "rate": rate,
            "page_size": page_size,
            "page_bytes": page_bytes,
        }

    def plan(self, *, parts: int = 256, ranges: Sequence[KeyRange] | None = None) -> list[WorkUnit]:
        """Units covering the source's key space (or ``ranges`` of it), ``parts`` each."""
        return plan_ranges(
            self.source.key_space,
            parts,
            job=self.name,
            action=self.action,
            source=self.source_store,
            ranges=ranges,
        )

    def plan_ids(self, ids: Sequence[uuid.UUID], *, batch: int = 500) -> list[WorkUnit]:
        """Units copying exactly ``ids`` (ids absent from the source are counted)."""
        return plan_ids(ids, batch, job=self.name, action=self.action, source=self.source_store)

    async def run(
        self,
        units: Sequence[WorkUnit] | None = None,
        *,
        fingerprint: str | None = None,
        restart: bool = False,
    ) -> JobReport:
        """Run the plan (default: the whole key space in 256 units); see UnitJob.run."""
        report = await super().run(
            self.plan() if units is None else units, fingerprint=fingerprint, restart=restart
        )
        report.options = dict(self._options)
        return report

    async def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Copy one unit's records; raises after retries, or if the target refused some.

        Counts: ``records`` read or looked up, ``sessions`` and ``tombstones`` written,
        ``absent`` ids the source does not hold.
        """
        self.check_unit(unit)
        result = UnitResult()
        rejected: list[uuid.UUID] = []
        if unit.kind is UnitKind.RANGE:
            await self._copy_range(unit.key_range, result, rejected)
        else:
            await self._copy_ids(unit.ids, result, rejected)
        if rejected:
            log.warning(
                "backfill %s unit %s: target refused sessions %s",
                self.name,
                unit.unit_id,
                ", ".join(str(r) for r in rejected[:50]),
            )
            raise RecordsRejectedError(
                f"the target refused {len(rejected)} of the unit's sessions (ids logged)"
            )
        return result

    async def _copy_range(
        self, key_range: KeyRange, result: UnitResult, rejected: list[uuid.UUID]
    ) -> None:
        async for page in self._pages(self.source, key_range):
            await _each(page.records, lambda r: self._copy(r, result, rejected))
            result.counts["records"] += len(page.records)
            self._advanced(len(page.records))

    async def _copy_ids(
        self, ids: Sequence[uuid.UUID], result: UnitResult, rejected: list[uuid.UUID]
    ) -> None:
        async def one(sid: uuid.UUID) -> None:
            await self.throttle.limiter.acquire(1)
            record = await self._request(lambda: self.source.get(sid))
            if record is None:
                result.counts["absent"] += 1
            else:
                await self._copy(record, result, rejected)
            result.counts["records"] += 1
            self._advanced(1)

        await _each(ids, one)

    async def _copy(
        self, record: StoredRecord, result: UnitResult, rejected: list[uuid.UUID]
    ) -> None:
        try:
            await copy_record(record, self.target, request=self._request)
        except (BackendRejectedError, InvalidSessionError):
            rejected.append(record.session_id)
            return
        result.counts["tombstones" if record.deleted else "sessions"] += 1
