"""What the backfill, verify and purge jobs share: units run with checkpoints, reports.

A job runs its units with ``concurrency`` workers. Before a unit starts its start is
checkpointed; when it completes, its counts are, in one durable transaction. Units
already done in the checkpoint are skipped (a resumed job reports how many). A unit
that fails after its retries is recorded as failed and the job goes on with the
others; an error that retrying cannot fix (credentials rejected, bad configuration),
or too many failures in a row, stops the job early. Either way the job returns a
:class:`JobReport`; re-running it resumes with the units not done.

Example::

    report = await BackfillJob(source, target, checkpoints=cp).run()
    print(report.units_run, report.units_skipped, report.counts["sessions"])
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import functools
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from sessionstore._errors import (
    BackendRejectedError,
    ConfigurationError,
    SessionStoreError,
)
from sessionstore.backends.base import KeyRange, ScanPage, SessionBackend, StoredRecord
from sessionstore.jobs.checkpoint import (
    CheckpointError,
    CheckpointStore,
    MemoryCheckpointStore,
    UnitState,
)
from sessionstore.jobs.throttle import RateLimiter, RetryPolicy, Throttle
from sessionstore.jobs.units import JobAction, UnitKind, WorkUnit, check_job_name, plan_fingerprint
from sessionstore.model import encoded_size
from sessionstore.phases import Store

__all__ = ["DEFAULT_PAGE_BYTES", "JobProgress", "JobReport", "PageBudget", "UnitJob", "UnitResult"]

#: Default ``page_bytes``: about how much session data one scan page may hold.
DEFAULT_PAGE_BYTES = 32 * 1024 * 1024

_T = TypeVar("_T")
_I = TypeVar("_I")

#: Verify's kinds that mean the target is wrong (``newer`` is expected while dual-writing).
UNEXPECTED_KINDS: tuple[str, ...] = ("missing", "stale", "content_mismatch", "deleted_in_one")
DIFFERENCE_KINDS: tuple[str, ...] = (*UNEXPECTED_KINDS, "newer")
#: Purge's counts (see :mod:`sessionstore.jobs.purge`).
PURGE_COUNTS: tuple[str, ...] = (
    "tombstones",
    "purged",
    "too_young",
    "recreated",
    "conflicts",
    "stale_copies_removed",
)


@dataclasses.dataclass
class UnitResult:
    """What one unit did: counts by name and differing field names (never values)."""

    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    fields: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class JobProgress(Protocol):
    """Receives progress events (the command line draws a progress bar from them)."""

    def started(self, *, total: int, skipped: int) -> None:
        """The job starts: ``total`` units planned, ``skipped`` already done."""

    def advanced(self, records: int) -> None:
        """``records`` more sessions were processed."""

    def unit_finished(self, unit: WorkUnit, ok: bool) -> None:
        """A unit completed (``ok``) or failed."""


@dataclasses.dataclass
class JobReport:
    """The outcome of one run of a job: what this run did, and the job's totals.

    ``units_run``, ``failed_units``, ``run_counts``, ``elapsed_seconds`` and the rate
    cover this run only. ``counts`` and ``fields`` cover every done unit of the plan,
    earlier runs of the same job too: a resumed job therefore reports the same
    ``counts`` as one uninterrupted run over unchanged data. ``resumed`` says whether
    the checkpoint already held progress of these units (an earlier run was resumed);
    ``job_started_at`` is when the job was begun (its first run), ``started_at`` when
    this run started, both in UTC.
    """

    job: str
    action: JobAction
    source: Store
    target: Store
    units_planned: int
    units_run: int = 0
    units_skipped: int = 0
    units_not_run: int = 0
    failed_units: dict[str, str] = dataclasses.field(default_factory=dict)
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    fields: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    run_counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    elapsed_seconds: float = 0.0
    retries: int = 0
    back_offs: int = 0
    stopped: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    resumed: bool = False
    job_started_at: dt.datetime | None = None
    started_at: dt.datetime | None = None

    @property
    def complete(self) -> bool:
        """Every planned unit is done (in this run or an earlier one)."""
        return self.units_run + self.units_skipped == self.units_planned

    @property
    def sessions_per_second(self) -> float:
        """Sessions this run processed per second of its wall time."""
        if self.elapsed_seconds <= 0:
            return 0.0
        return self.run_counts["records"] / self.elapsed_seconds

    @property
    def differences(self) -> int:
        """Verify: keys that differ in any way (``newer`` included)."""
        return sum(self.counts[k] for k in DIFFERENCE_KINDS)

    @property
    def unresolved(self) -> int:
        """Verify: unexpected differences that were not repaired (``newer`` excluded)."""
        found = sum(self.counts[k] for k in UNEXPECTED_KINDS)
        return max(0, found - self.counts["repaired"] - self.counts["resolved"])

    def ok(self, *, strict: bool = False) -> bool:
        """Complete, nothing failed, and (verify) no unresolved difference.

        ``strict`` also counts ``newer`` as a failure (use it once writes are quiet).
        """
        if not self.complete or self.failed_units:
            return False
        if self.action is JobAction.VERIFY:
            return self.unresolved == 0 and not (strict and self.counts["newer"])
        return True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (names and counts only)."""
        data: dict[str, Any] = {
            "job": self.job,
            "action": self.action.value,
            "source": self.source.value,
            "target": self.target.value,
            "options": self.options,
            "units": {
                "planned": self.units_planned,
                "run": self.units_run,
                "skipped": self.units_skipped,
                "failed": len(self.failed_units),
                "not_run": self.units_not_run,
            },
            "failed_units": dict(sorted(self.failed_units.items())),
            "resumed": self.resumed,
            "job_started_at": _iso(self.job_started_at),
            "this_run": {
                "started_at": _iso(self.started_at),
                "units_run": self.units_run,
                "units_failed": len(self.failed_units),
                "counts": dict(sorted(self.run_counts.items())),
                "elapsed_seconds": round(self.elapsed_seconds, 3),
                "sessions_per_second": round(self.sessions_per_second, 1),
                "retries": self.retries,
                "back_offs": self.back_offs,
            },
            "counts": dict(sorted(self.counts.items())),
            "stopped": self.stopped,
            "complete": self.complete,
        }
        if self.action is JobAction.VERIFY:
            data["differences"] = {k: self.counts[k] for k in DIFFERENCE_KINDS}
            data["fields"] = dict(sorted(self.fields.items()))
            data["unresolved"] = self.unresolved
        if self.action is JobAction.PURGE:
            data["purge"] = {k: self.counts[k] for k in PURGE_COUNTS}
        data["ok"] = self.ok(strict=bool(self.options.get("strict")))
        return data


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def describe_error(exc: BaseException) -> str:
    """An error as a report line: its class and message (messages never hold values)."""
    return f"{type(exc).__name__}: {exc}"


class PageBudget:
    """Sizes scan pages so that one holds about ``page_bytes`` of sessions.

    A page asks for at most ``page_size`` records, and fewer when the records seen so
    far (by every unit of the job) are large: ``page_bytes`` over their encoded size per
    record (:func:`~sessionstore.model.encoded_size`, an upper bound), estimated as the
    larger of a moving average and the largest record of the last page, so that larger
    sessions shrink the very next page. Until a first page has been seen, pages ask
    for at most :attr:`PROBE` records. Memory then stays about ``concurrency *
    page_bytes`` whatever the sessions' sizes, instead of ``concurrency * page_size``
    sessions. The scan's limit counts records, not bytes, so the page that first meets
    larger sessions than those before it can hold more than ``page_bytes``: up to
    ``page_size`` of them.
    """

    PROBE = 10
    _WEIGHT = 0.3  # of the newest page in the moving average

    def __init__(self, page_size: int, page_bytes: int) -> None:
        self.page_size = page_size
        self.page_bytes = page_bytes
        self.bytes_per_record: float | None = None
        self._last_max = 0

    def limit(self) -> int:
        """How many records the next page should ask for."""
        if self.bytes_per_record is None:
            return min(self.page_size, self.PROBE)
        estimate = max(self.bytes_per_record, self._last_max, 1.0)
        return max(1, min(self.page_size, int(self.page_bytes // estimate)))

    def observe(self, records: Sequence[StoredRecord]) -> None:
        """Update the estimate with a page just read."""
        if not records:
            return
        sizes = [256 if r.session is None else encoded_size(r.session) for r in records]
        mean = sum(sizes) / len(sizes)
        old = self.bytes_per_record
        self.bytes_per_record = mean if old is None else old + self._WEIGHT * (mean - old)
        self._last_max = max(sizes)


class UnitJob:
    """Base of the backfill, verify and purge jobs: stores, throttling, checkpoints, run loop."""

    action: ClassVar[JobAction]
    #: Run the passes (consecutive units scanning the same store) one after the other:
    #: no unit of a pass starts before every unit of the pass before it has ended.
    sequential_passes: ClassVar[bool] = False

    def __init__(
        self,
        source: SessionBackend,
        target: SessionBackend,
        *,
        name: str,
        checkpoints: CheckpointStore | None,
        concurrency: int,
        rate: float | None,
        page_size: int,
        max_in_flight: int,
        retry: RetryPolicy | None,
        source_store: Store | None,
        progress: JobProgress | None,
        max_consecutive_failures: int,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        self.name = check_job_name(name)
        checked = (
            (concurrency, "concurrency"),
            (page_size, "page_size"),
            (page_bytes, "page_bytes"),
        )
        for value, what in checked:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{what} must be a positive integer")
        if max_in_flight < 1 or max_consecutive_failures < 1:
            raise ConfigurationError("max_in_flight and max_consecutive_failures must be >= 1")
        try:
            self.source_store = Store(source_store or source.name)
        except ValueError:
            raise ConfigurationError(
                "cannot tell which store the source is: name the backends 'cassandra' and "
                "'documentdb', or pass source_store="
            ) from None
        self.target_store = self.source_store.other
        self.source = source
        self.target = target
        self._stores = {self.source_store: source, self.target_store: target}
        self._checkpoints: CheckpointStore = checkpoints or MemoryCheckpointStore()
        self._concurrency = concurrency
        self.pages = PageBudget(page_size, page_bytes)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.throttle = Throttle(RateLimiter(rate), retry)
        self._progress = progress
        self._max_failures = max_consecutive_failures

    def store(self, which: Store) -> SessionBackend:
        """The backend playing ``which`` in this job."""
        return self._stores[which]

    # -- planning and checks ----------------------------------------------------------

    def check_unit(self, unit: WorkUnit) -> None:
        """Refuse a unit of another job, direction, or a range outside the store's keys."""
        if unit.job != self.name or unit.action is not self.action:
            raise ConfigurationError(f"unit {unit.unit_id} belongs to another job or action")
        if (unit.source, unit.target) != (self.source_store, self.target_store):
            raise ConfigurationError(
                f"unit {unit.unit_id} goes {unit.source} -> {unit.target}, this job "
                f"{self.source_store} -> {self.target_store}"
            )
        if unit.kind is UnitKind.RANGE:
            assert unit.scan is not None
            space = self._stores[unit.scan].key_space
            r = unit.key_range
            if r.start < space.start or r.end > space.end:
                raise ConfigurationError(
                    f"unit {unit.unit_id}: range is outside the {unit.scan} key space "
                    f"[{space.start}, {space.end})"
                )

    async def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Run one unit (no checkpoint); subclasses implement it."""
        raise NotImplementedError

    def _report(self, planned: int) -> JobReport:
        return JobReport(
            job=self.name,
            action=self.action,
            source=self.source_store,
            target=self.target_store,
            units_planned=planned,
        )

    # -- helpers for subclasses -------------------------------------------------------

    async def _request(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """One store request: bounded in flight, retried with back-off."""
        async with self._in_flight:
            return await self.throttle.call(fn)

    async def _pages(self, store: SessionBackend, key_range: KeyRange) -> AsyncIterator[ScanPage]:
        """The range's records, page by page, each page sized by :attr:`pages`.

        The caller handles a page before asking for the next, so a unit holds one page.
        """
        limiter = self.throttle.limiter
        cursor: str | None = None
        while True:
            limit = self.pages.limit()
            await limiter.acquire(limit)
            page = await self._request(
                functools.partial(store.scan, key_range, cursor=cursor, limit=limit)
            )
            limiter.refund(limit - len(page.records))
            self.pages.observe(page.records)
            yield page
            cursor = page.cursor
            if cursor is None:
                return

    def _advanced(self, records: int) -> None:
        if self._progress is not None and records:
            self._progress.advanced(records)

    # -- the run loop -----------------------------------------------------------------

    async def run(
        self,
        units: Sequence[WorkUnit],
        *,
        fingerprint: str | None = None,
        restart: bool = False,
    ) -> JobReport:
        """Run ``units``, skipping those the checkpoint has as done; return the report.

        ``fingerprint`` identifies the whole plan (default: of ``units``); pass the full
        plan's when ``units`` is one shard of it.
        """
        for unit in units:
            self.check_unit(unit)
        if len({u.unit_id for u in units}) != len(units):
            raise ConfigurationError("the plan holds the same unit twice")
        cp = self._checkpoints
        report = self._report(len(units))
        report.started_at = dt.datetime.now(dt.UTC)
        await cp.begin_job(self.name, fingerprint or plan_fingerprint(units), restart=restart)
        begun = await cp.job(self.name)
        report.job_started_at = None if begun is None else begun.started_at
        recorded = await cp.units(self.name)
        report.resumed = any(u.unit_id in recorded for u in units)
        done = {u.unit_id for u in units if _is_done(recorded.get(u.unit_id))}
        pending = collections.deque(u for u in units if u.unit_id not in done)
        report.units_skipped = len(done)
        if self._progress is not None:
            self._progress.started(total=len(units), skipped=len(done))
        state = _RunState()
        started = time.perf_counter()
        passes = _passes(pending) if self.sequential_passes else [pending]
        try:
            for queue in passes:
                if state.stopped is not None or state.fatal is not None:
                    break
                await self._drain(queue, report, state)
        finally:
            report.elapsed_seconds = time.perf_counter() - started
            report.retries = self.throttle.retries
            report.back_offs = self.throttle.limiter.back_offs
        if state.fatal is not None:
            raise state.fatal
        report.units_not_run = sum(len(queue) for queue in passes)
        report.stopped = state.stopped
        recorded = await cp.units(self.name)
        for unit in units:
            record = recorded.get(unit.unit_id)
            if record is not None and record.state is UnitState.DONE:
                report.counts.update(record.counts)
                report.fields.update(record.fields)
        return report

    async def _drain(
        self, pending: collections.deque[WorkUnit], report: JobReport, state: _RunState
    ) -> None:
        """Run ``pending``'s units with ``concurrency`` workers until it is empty or stopped."""
        await _each(
            range(min(self._concurrency, len(pending))),
            lambda _: self._worker(pending, report, state),
        )

    async def _worker(
        self, pending: collections.deque[WorkUnit], report: JobReport, state: _RunState
    ) -> None:
        cp = self._checkpoints
        while pending and state.stopped is None and state.fatal is None:
            unit = pending.popleft()
            try:
                await cp.unit_started(self.name, unit.unit_id)
                try:
                    result = await self.run_unit(unit)
                except CheckpointError:
                    raise
                except SessionStoreError as exc:
                    await cp.unit_failed(self.name, unit.unit_id, describe_error(exc))
                    report.failed_units[unit.unit_id] = describe_error(exc)
                    state.failures += 1
                    if isinstance(exc, BackendRejectedError | ConfigurationError):
                        state.stopped = f"stopped after an error retrying cannot fix: {exc}"
                    elif state.failures >= self._max_failures:
                        state.stopped = f"stopped after {state.failures} failed units in a row"
                    if self._progress is not None:
                        self._progress.unit_finished(unit, False)
                    continue
                await cp.unit_done(self.name, unit.unit_id, result.counts, result.fields)
            except CheckpointError as exc:
                # Progress can no longer be recorded: stop rather than redo work later.
                state.fatal = exc
                return
            state.failures = 0
            report.units_run += 1
            report.run_counts.update(result.counts)
            if self._progress is not None:
                self._progress.unit_finished(unit, True)


@dataclasses.dataclass
class _RunState:
    failures: int = 0
    stopped: str | None = None
    fatal: BaseException | None = None


def _passes(units: Iterable[WorkUnit]) -> list[collections.deque[WorkUnit]]:
    """Consecutive units scanning the same store, one queue each, in plan order."""
    return [collections.deque(group) for _, group in itertools.groupby(units, lambda u: u.scan)]


def _is_done(record: Any) -> bool:
    return record is not None and record.state is UnitState.DONE


async def _each(items: Iterable[_I], fn: Callable[[_I], Coroutine[Any, Any, Any]]) -> None:
    """Run ``fn`` on every item concurrently; the first error cancels the rest and is raised.

    (A TaskGroup, unwrapped: callers get the store's own exception, not a group.)
    """
    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(fn(item))
    except BaseExceptionGroup as exc:
        raise exc.exceptions[0] from None
