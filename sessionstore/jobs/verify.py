"""Verify: prove that the target holds what the source holds, and optionally fix it.

Two passes, both split into checkpointed range units like the backfill:

1. **Source pass**: scan the source's key ranges; look every key up in the target and
   classify the pair with :func:`~sessionstore.compare_records`.
2. **Target pass**: scan the target's key ranges; look every key up in the source and
   count the keys that *only* the target holds (as ``newer``, and ``only_in_target``).
   Keys in both stores were classified by the first pass and are not counted twice.

Or, with an id list, each id is looked up in both stores. The counts per
:class:`~sessionstore.DivergenceKind` and the differing *field names* (never values)
go into the :class:`~sessionstore.jobs.engine.JobReport`:

- ``missing``: in the source only; ``stale``: older in the target;
- ``newer``: newer in the target (expected while dual-writing: a write landed between
  the two reads, or the target is ahead);
- ``content_mismatch``: same revision, different content (a bug somewhere);
- ``deleted_in_one``: same revision, a tombstone in one store only.

``repair=True`` fixes what the source (the authoritative side) says is right:
``missing`` and ``stale`` are copied with their own revision, under the revision rule,
so a newer write that lands meanwhile is never overwritten. The equal-revision kinds
cannot be settled by the rule: both stores are re-read and, if they still conflict at
revision R, the source's record is written to both stores at the smallest revision
above R that belongs to the library's own writer id 0
(:func:`~sessionstore.revision.restamp_revision`): it outranks the two conflicting
copies and nothing else, and no repository ever issues it (any later write of the
service carries a newer clock reading, so it still wins). ``newer`` is left alone.

``sample`` (0 < s <= 1) compares a deterministic share of the keys (by CRC-32 of the
id, so re-runs and both passes pick the same keys); the ranges are still scanned.

Example::

    job = VerifyJob(cassandra, documentdb, name="verify-after-backfill")
    report = await job.run()
    print(report.counts["missing"], report.fields.most_common(3), report.unresolved)
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sessionstore._errors import BackendRejectedError, InvalidSessionError
from sessionstore.backends.base import KeyRange, SessionBackend, StoredRecord, copy_record
from sessionstore.divergence import DivergenceKind, compare_records
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
from sessionstore.revision import restamp_revision

__all__ = ["VerifyJob", "is_sampled"]

_EQUAL_REVISION = (DivergenceKind.CONTENT_MISMATCH, DivergenceKind.DELETED_IN_ONE)
_COPYABLE = (DivergenceKind.MISSING, DivergenceKind.STALE)
_Check = Callable[[StoredRecord, WorkUnit, UnitResult], Coroutine[Any, Any, None]]


def is_sampled(session_id: uuid.UUID, ratio: float) -> bool:
    """Whether ``session_id`` falls in a sample of ``ratio``; deterministic per id.

    >>> ids = [uuid.UUID(int=i) for i in range(1000)]
    >>> 400 < sum(is_sampled(i, 0.5) for i in ids) < 600
    True
    """
    return ratio >= 1.0 or zlib.crc32(session_id.bytes) < ratio * 2**32


class VerifyJob(UnitJob):
    """Compare ``source`` (authoritative) with ``target``; resumable, throttled.

    Takes the same arguments as :class:`~sessionstore.jobs.backfill.BackfillJob`, plus
    ``repair``, ``sample``, ``scan_target`` (the target pass; skipped for explicit
    ranges, which are in the source's key order) and ``strict`` (the report fails on
    ``newer`` too: use it when no writes are in flight).
    """

    action = JobAction.VERIFY

    def __init__(
        self,
        source: SessionBackend,
        target: SessionBackend,
        *,
        name: str = "verify",
        checkpoints: CheckpointStore | None = None,
        repair: bool = False,
        sample: float = 1.0,
        scan_target: bool = True,
        strict: bool = False,
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
        self.repair = repair
        self.sample = sample
        self.scan_target = scan_target
        self._options = {
            "repair": repair,
            "sample": sample,
            "strict": strict,
            "concurrency": concurrency,
            "rate": rate,
            "page_size": page_size,
            "page_bytes": page_bytes,
        }

    def plan(self, *, parts: int = 256, ranges: Sequence[KeyRange] | None = None) -> list[WorkUnit]:
        """Source-pass units, then target-pass units (unless ranges or ``scan_target``)."""
        options = {"job": self.name, "action": self.action, "repair": self.repair}
        units = plan_ranges(
            self.source.key_space,
            parts,
            source=self.source_store,
            ranges=ranges,
            sample=self.sample,
            **options,  # type: ignore[arg-type]
        )
        if self.scan_target and not ranges:
            units += plan_ranges(
                self.target.key_space,
                parts,
                source=self.source_store,
                scan=self.target_store,
                sample=self.sample,
                **options,  # type: ignore[arg-type]
            )
        self._options["scan_target"] = self.scan_target and not ranges
        return units

    def plan_ids(self, ids: Sequence[uuid.UUID], *, batch: int = 500) -> list[WorkUnit]:
        """Units comparing exactly ``ids`` in both stores."""
        self._options["scan_target"] = False
        return plan_ids(
            ids,
            batch,
            job=self.name,
            action=self.action,
            source=self.source_store,
            repair=self.repair,
            sample=self.sample,
        )

    async def run(
        self,
        units: Sequence[WorkUnit] | None = None,
        *,
        fingerprint: str | None = None,
        restart: bool = False,
    ) -> JobReport:
        """Run the plan (default: both passes over the whole key spaces, 256 units each)."""
        report = await super().run(
            self.plan() if units is None else units, fingerprint=fingerprint, restart=restart
        )
        report.options = dict(self._options)
        return report

    async def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Compare one unit (and repair it if the unit says so).

        Counts: ``records`` read, ``checked`` pairs compared, one count per divergence
        kind, ``only_in_target``, ``repaired``, ``resolved`` (fixed meanwhile by other
        writes), ``repair_failed`` (the store refused the repair write).
        """
        self.check_unit(unit)
        result = UnitResult()
        if unit.kind is UnitKind.IDS:
            await _each(unit.ids, lambda sid: self._check_id(sid, unit, result))
        elif unit.scan is self.source_store:
            await self._scan(unit, self.source, result, self._check_source_record)
        else:
            await self._scan(unit, self.target, result, self._check_target_record)
        return result

    # -- the passes -------------------------------------------------------------------

    async def _scan(
        self,
        unit: WorkUnit,
        store: SessionBackend,
        result: UnitResult,
        check: _Check,
    ) -> None:
        async for page in self._pages(store, unit.key_range):
            sampled = [r for r in page.records if is_sampled(r.session_id, unit.sample)]
            await _each(sampled, lambda r: check(r, unit, result))
            result.counts["records"] += len(page.records)
            self._advanced(len(page.records))

    async def _check_source_record(
        self, record: StoredRecord, unit: WorkUnit, result: UnitResult
    ) -> None:
        other = await self._request(lambda: self.target.get(record.session_id))
        await self._classify(record, other, unit, result)

    async def _check_target_record(
        self, record: StoredRecord, unit: WorkUnit, result: UnitResult
    ) -> None:
        other = await self._request(lambda: self.source.get(record.session_id))
        if other is None:  # pairs held by both were counted by the source pass
            result.counts["only_in_target"] += 1
            await self._classify(None, record, unit, result)

    async def _check_id(self, sid: uuid.UUID, unit: WorkUnit, result: UnitResult) -> None:
        result.counts["records"] += 1
        self._advanced(1)
        if not is_sampled(sid, unit.sample):
            return
        await self.throttle.limiter.acquire(1)
        source, target = await asyncio.gather(
            self._request(lambda: self.source.get(sid)),
            self._request(lambda: self.target.get(sid)),
        )
        if source is None and target is None:
            result.counts["absent"] += 1
        elif source is None:
            result.counts["only_in_target"] += 1
        await self._classify(source, target, unit, result)

    async def _classify(
        self,
        source: StoredRecord | None,
        target: StoredRecord | None,
        unit: WorkUnit,
        result: UnitResult,
    ) -> None:
        divergence = compare_records(source, target)
        result.counts["checked"] += 1
        result.counts[divergence.kind.value] += 1
        if divergence.consistent:
            return
        result.fields.update(divergence.fields)
        if unit.repair and divergence.kind is not DivergenceKind.NEWER:
            await self._repair(source, divergence.kind, result)

    # -- repair -----------------------------------------------------------------------

    async def _repair(
        self, source: StoredRecord | None, kind: DivergenceKind, result: UnitResult
    ) -> None:
        try:
            if kind in _COPYABLE:
                assert source is not None
                await copy_record(source, self.target, request=self._request)
                result.counts["repaired"] += 1
                return
            assert source is not None
            sid = source.session_id
            # Equal revisions: re-read, the pair may have moved on since the first read.
            now_source, now_target = await asyncio.gather(
                self._request(lambda: self.source.get(sid)),
                self._request(lambda: self.target.get(sid)),
            )
            again = compare_records(now_source, now_target)
            if again.kind in _COPYABLE and now_source is not None:
                await copy_record(now_source, self.target, request=self._request)
                result.counts["repaired"] += 1
            elif again.kind in _EQUAL_REVISION and now_source is not None:
                restamped = _restamp(now_source, restamp_revision(now_source.revision))
                await copy_record(restamped, self.source, request=self._request)
                await copy_record(restamped, self.target, request=self._request)
                result.counts["repaired"] += 1
            else:
                result.counts["resolved"] += 1
        except (BackendRejectedError, InvalidSessionError):
            result.counts["repair_failed"] += 1


def _restamp(record: StoredRecord, revision: int) -> StoredRecord:
    if record.session is None:
        return StoredRecord.tombstone(record.session_id, revision)
    return StoredRecord.of(record.session.model_copy(update={"revision": revision}))
