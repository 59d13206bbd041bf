"""Purge: remove old tombstones from both stores, so that a deleted session stays deleted.

Neither store lets a tombstone expire by itself. A tombstone gone from one store while
the other still holds an older live copy of the session is how a deletion is undone: a
comparison queues the key and a repair copies the old copy back. This job is the only
way a tombstone disappears, and it looks at both stores to remove one.

Two passes of checkpointed, throttled range units, like verify: the first scans the
source's key space, the second the target's, so that tombstones held by either store
are found. For each tombstone T of the scanned store:

- T is younger than ``older_than`` (default and minimum: the repair worker's tombstone
  grace, 30 days; ages are taken against the wall clock, as revisions are microseconds
  since the epoch): kept (``too_young``).
- The other store holds a live session newer than T: the key was re-created, nothing is
  purged (``recreated``); the stale tombstone is the repair worker's business.
- The other store holds a live session at T's own revision, a conflict the revision
  rule cannot order: nothing is purged (``conflicts``); ``verify --repair`` settles it.
- Otherwise the key is purged from the *other* store first, then from the scanned one,
  both with ``purge(key, T.revision)``, so a newer write landing meanwhile in either
  store survives. A crash between the two leaves the scanned store's tombstone, which
  the next run finds again. An older live copy in the other store goes with it
  (``stale_copies_removed``): it is what a resurrection would have been made of.

Why this is safe: once both stores lack the key, only a copy of a live session older
than T could bring it back, and the repair worker never copies a live session older
than its grace into a store that lacks the key (:func:`~sessionstore.repair.worker.
older_than_grace`); T is older than the grace, so is any such copy. A backfill or a
``verify --repair`` does not apply that rule: do not run them at the same time as a
purge (docs/runbook.md).

``other_store_retired=True`` is for after the migration, once the other store's data
is destroyed: the source alone is scanned and purged, and the other store is never
read or written (pass ``target=None``). It is the point of no return: if the other
store ever served again, its old copies of the purged sessions would come back.
``dry_run=True`` counts what would be purged and writes nothing.

Example::

    job = PurgeJob(documentdb, cassandra, name="purge-2026-06",
                   checkpoints=SqliteCheckpointStore("checkpoints.db"), rate=2000)
    report = await job.run()
    print(report.counts["purged"], report.counts["stale_copies_removed"])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import NoReturn

from sessionstore._errors import ConfigurationError
from sessionstore.backends.base import (
    UUID_KEY_SPACE,
    KeyRange,
    LifecycleMixin,
    RecordHead,
    ScanPage,
    SessionBackend,
    StoredRecord,
    WriteResult,
)
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
from sessionstore.jobs.units import JobAction, WorkUnit, plan_fingerprint, plan_ranges
from sessionstore.model import StudentSession
from sessionstore.phases import Store
from sessionstore.repair.worker import DEFAULT_TOMBSTONE_GRACE, older_than_grace
from sessionstore.revision import wall_clock_us

__all__ = ["PurgeJob", "check_older_than"]

log = logging.getLogger(__name__)

_MICROSECOND = dt.timedelta(microseconds=1)


class PurgeJob(UnitJob):
    """Remove tombstones older than ``older_than`` from both stores; resumable, throttled.

    Takes the arguments of :class:`~sessionstore.jobs.backfill.BackfillJob`, plus:

    Args:
        older_than: the least age of a purged tombstone. Below the tombstone grace
            (30 days, :data:`~sessionstore.repair.worker.DEFAULT_TOMBSTONE_GRACE`) it is
            a ConfigurationError unless ``allow_below_grace``: then a repair worker can
            still copy an old live copy into a store that no longer holds the deletion.
            If the repair workers run with a longer grace, pass at least theirs.
        allow_below_grace: accept ``older_than`` below the grace (tests, rehearsals, or
            workers configured with a shorter grace).
        other_store_retired: purge the source alone; ``target`` must then be None.
        dry_run: count, write nothing.
        time_source: the wall clock, microseconds since the epoch (simulated in tests).

    Counts: ``records`` scanned, ``tombstones`` seen, ``purged`` (or would be, in a dry
    run), ``too_young``, ``recreated``, ``conflicts``, ``stale_copies_removed``.
    """

    action = JobAction.PURGE
    # The second pass then meets only the tombstones the first one left: no key is handled
    # by both passes at once, and the counts do not depend on timing.
    sequential_passes = True

    def __init__(
        self,
        source: SessionBackend,
        target: SessionBackend | None,
        *,
        name: str = "purge",
        checkpoints: CheckpointStore | None = None,
        older_than: dt.timedelta = DEFAULT_TOMBSTONE_GRACE,
        allow_below_grace: bool = False,
        other_store_retired: bool = False,
        dry_run: bool = False,
        time_source: Callable[[], int] | None = None,
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
        check_older_than(older_than, allow_below_grace=allow_below_grace)
        if other_store_retired and target is not None:
            raise ConfigurationError(
                "other_store_retired: the other store is never touched, pass target=None"
            )
        if not other_store_retired and target is None:
            raise ConfigurationError(
                "a purge needs both stores (target=None only with other_store_retired)"
            )
        retired = _RetiredStore()
        super().__init__(
            source,
            retired if target is None else target,
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
        self.older_than = older_than
        self.other_store_retired = other_store_retired
        self.dry_run = dry_run
        self._now = time_source or wall_clock_us
        self._options = {
            "older_than_days": older_than / dt.timedelta(days=1),
            "other_store_retired": other_store_retired,
            "dry_run": dry_run,
            "concurrency": concurrency,
            "rate": rate,
            "page_size": page_size,
            "page_bytes": page_bytes,
        }

    def plan(self, *, parts: int = 256) -> list[WorkUnit]:
        """Units scanning the source, then the target (the source alone if it is retired)."""
        options = {"job": self.name, "action": self.action, "source": self.source_store}
        units = plan_ranges(self.source.key_space, parts, **options)  # type: ignore[arg-type]
        if not self.other_store_retired:
            units += plan_ranges(
                self.target.key_space,
                parts,
                scan=self.target_store,
                **options,  # type: ignore[arg-type]
            )
        return units

    def fingerprint(self, units: Sequence[WorkUnit]) -> str:
        """The plan's fingerprint with the options that change what a unit does.

        A job resumed with another ``older_than``, mode or ``dry_run`` is refused rather
        than mixing two kinds of progress (a dry run's done units must never let a real
        run skip them).
        """
        options = {
            "older_than_us": self.older_than // _MICROSECOND,
            "other_store_retired": self.other_store_retired,
            "dry_run": self.dry_run,
        }
        text = f"{plan_fingerprint(units)}\n{json.dumps(options, sort_keys=True)}"
        return hashlib.sha256(text.encode()).hexdigest()

    async def run(
        self,
        units: Sequence[WorkUnit] | None = None,
        *,
        fingerprint: str | None = None,
        restart: bool = False,
    ) -> JobReport:
        """Run the plan (default: both passes, 256 units each); see UnitJob.run."""
        plan = self.plan() if units is None else list(units)
        report = await super().run(
            plan, fingerprint=fingerprint or self.fingerprint(plan), restart=restart
        )
        report.options = dict(self._options)
        return report

    async def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Purge one unit's old tombstones; raises (nothing half-done) if a store fails."""
        self.check_unit(unit)
        assert unit.scan is not None  # a purge unit is a range (WorkUnit checks it)
        if self.other_store_retired and unit.scan is not self.source_store:
            raise ConfigurationError(f"unit {unit.unit_id} scans the retired store")
        scanned = self.store(unit.scan)
        other = None if self.other_store_retired else self.store(unit.scan.other)
        now = self._now()
        result = UnitResult()
        async for page in self._pages(scanned, unit.key_range):
            tombstones = [r for r in page.records if r.deleted]
            result.counts["tombstones"] += len(tombstones)
            await _each(tombstones, lambda r: self._purge(r, scanned, other, now, result))
            result.counts["records"] += len(page.records)
            self._advanced(len(page.records))
        return result

    async def _purge(
        self,
        tombstone: StoredRecord,
        scanned: SessionBackend,
        other: SessionBackend | None,
        now: int,
        result: UnitResult,
    ) -> None:
        sid, revision = tombstone.session_id, tombstone.revision
        if not older_than_grace(revision, now, self.older_than):
            result.counts["too_young"] += 1
            return
        stale_copy = False
        if other is not None:
            head = await self._request(lambda: other.head(sid))
            if head is not None and not head.deleted and head.revision >= revision:
                if head.revision > revision:
                    result.counts["recreated"] += 1
                    log.info("purge: %s was re-created in %s; tombstone kept", sid, other.name)
                else:
                    result.counts["conflicts"] += 1
                    log.warning(
                        "purge: %s is live in %s at its tombstone's revision; kept for "
                        "verify --repair",
                        sid,
                        other.name,
                    )
                return
            stale_copy = head is not None and not head.deleted
        if not self.dry_run:
            # The other store first: a crash in between leaves the scanned store's
            # tombstone, and the next run finds it again.
            if other is not None:
                await self._request(lambda: other.purge(sid, revision))
            await self._request(lambda: scanned.purge(sid, revision))
        result.counts["purged"] += 1
        if stale_copy:
            assert other is not None
            result.counts["stale_copies_removed"] += 1
            log.info("purge: %s held an older live copy of deleted %s; removed", other.name, sid)


def check_older_than(older_than: dt.timedelta, *, allow_below_grace: bool = False) -> None:
    """Refuse an age that is not a positive timedelta, or below the grace unless allowed.

    >>> check_older_than(dt.timedelta(days=45))
    >>> check_older_than(dt.timedelta(days=1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sessionstore._errors.ConfigurationError: older_than (1 days) is below the tombstone grace...
    """
    if not isinstance(older_than, dt.timedelta) or older_than <= dt.timedelta(0):
        raise ConfigurationError("older_than must be a positive timedelta")
    if older_than < DEFAULT_TOMBSTONE_GRACE and not allow_below_grace:
        day = dt.timedelta(days=1)
        raise ConfigurationError(
            f"older_than ({older_than / day:g} days) is below the tombstone grace "
            f"({DEFAULT_TOMBSTONE_GRACE / day:g} days): a repair could still copy an old "
            "session into a store that no longer holds its deletion (allow_below_grace "
            "overrides this)"
        )


class _RetiredStore(LifecycleMixin):
    """Stands in for the retired other store: the purge never uses it, and any use fails."""

    name = "retired"
    key_space = UUID_KEY_SPACE

    def _refuse(self) -> NoReturn:
        raise ConfigurationError("the other store is retired: the purge never touches it")

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """Refused."""
        self._refuse()

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """Refused."""
        self._refuse()

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Refused."""
        self._refuse()

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Refused."""
        self._refuse()

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Refused."""
        self._refuse()

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Refused."""
        self._refuse()
