"""The repair worker: makes both stores hold the newest revision of queued sessions.

For each queued session it reads both stores and copies the newer record (session or
tombstone) to the other one under the revision rule. The authoritative store normally
holds the newer record; after a rollback the other one may, and copying newest-wins is
right in both cases. A repair never makes a store older, and it never guesses:

- two different records at the *same* revision (a conflict) are not copied either way;
- a live session present in one store only, and older than the tombstone grace period,
  is not copied: the other store may have held a deletion that has since been purged,
  and copying would bring a deleted session back.

Both go to the queue's dead letters with their session id, as does a copy that failed
``max_attempts`` times (each failure is retried with exponential back-off, capped at 64
times the base delay). Nothing is acknowledged away.

``drain()`` empties the queue and returns; ``follow(stop)`` runs until ``stop`` is set
(a sidecar, ``sessionstore repair --follow``); ``process(task)`` settles one task that
was received elsewhere (the Lambda handler, :mod:`sessionstore.repair.handler`).

Example::

    worker = RepairWorker(cassandra=c, documentdb=d, queue=queue)
    report = await worker.drain()
    assert report.dead_lettered == 0
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import enum
import logging
import uuid
from collections.abc import Callable

from sessionstore._errors import BackendError, ConfigurationError
from sessionstore._telemetry import Telemetry
from sessionstore.backends.base import SessionBackend, copy_record
from sessionstore.divergence import DivergenceKind, compare_records
from sessionstore.repair.queue import DeadLetter, RepairQueue, RepairTask
from sessionstore.revision import wall_clock_us

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TOMBSTONE_GRACE",
    "RepairOutcome",
    "RepairReport",
    "RepairWorker",
    "older_than_grace",
]

log = logging.getLogger(__name__)

#: Failed attempts after which a queued session becomes a dead letter.
DEFAULT_MAX_ATTEMPTS = 8

#: The least age of a tombstone before the purge job may remove it; automatic repairs
#: never fill a key that one store lacks with a live copy older than this.
DEFAULT_TOMBSTONE_GRACE = dt.timedelta(days=30)


class RepairOutcome(enum.StrEnum):
    """What one repair did (the ``sessionstore.repairs.completed`` outcome)."""

    #: The newer record was copied to the other store.
    COPIED = "copied"
    #: Both stores already held the same newest record.
    IN_SYNC = "in_sync"
    #: Different records at the same revision: dead letter, settle with verify --repair.
    CONFLICT = "conflict"
    #: One store lacks the key and the other holds an old live copy: dead letter.
    POSSIBLY_DELETED = "possibly_deleted"
    #: A store failed; retried later.
    FAILED = "failed"
    #: Failed ``max_attempts`` times: dead letter.
    GAVE_UP = "gave_up"


@dataclasses.dataclass
class RepairReport:
    """Counts of what a drain did."""

    copied: int = 0
    in_sync: int = 0
    conflicts: int = 0
    possibly_deleted: int = 0
    failed: int = 0
    gave_up: int = 0

    @property
    def processed(self) -> int:
        """Tasks handled, whatever their outcome."""
        return sum(dataclasses.astuple(self))

    @property
    def dead_lettered(self) -> int:
        """Tasks moved to the dead letters by this drain."""
        return self.conflicts + self.possibly_deleted + self.gave_up

    def add(self, outcome: RepairOutcome) -> None:
        """Count one outcome."""
        name = {
            RepairOutcome.CONFLICT: "conflicts",
            RepairOutcome.POSSIBLY_DELETED: "possibly_deleted",
            RepairOutcome.GAVE_UP: "gave_up",
        }.get(outcome, outcome.value)
        setattr(self, name, getattr(self, name) + 1)

    def merge(self, other: RepairReport) -> None:
        """Add another report's counts to this one."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def older_than_grace(revision: int, now_us: int, grace: dt.timedelta) -> bool:
    """Whether ``revision`` is older than ``grace`` before ``now_us``."""
    return revision < now_us - grace // dt.timedelta(microseconds=1)


class RepairWorker:
    """Drains a repair queue against the two stores.

    Args:
        cassandra, documentdb: the two stores.
        queue: the repair queue.
        max_attempts: failed attempts after which a session becomes a dead letter.
        tombstone_grace: the least age of a purged tombstone (see the module docstring).
        time_source: microseconds since the epoch (the wall clock; simulated in tests).
    """

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
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        tombstone_grace: dt.timedelta = DEFAULT_TOMBSTONE_GRACE,
        time_source: Callable[[], int] | None = None,
        lease_seconds: float = 60.0,
    ) -> None:
        for value, what in ((batch_size, "batch_size"), (concurrency, "concurrency")):
            if value < 1:
                raise ConfigurationError(f"{what} must be at least 1")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if retry_delay_seconds < 0 or lease_seconds <= 0:
            raise ConfigurationError("retry_delay_seconds and lease_seconds must be positive")
        if tombstone_grace <= dt.timedelta(0):
            raise ConfigurationError("tombstone_grace must be positive")
        self._stores = (cassandra, documentdb)
        self._queue = queue
        self._telemetry = telemetry or Telemetry()
        self._batch_size = batch_size
        self._limit = asyncio.Semaphore(concurrency)
        self._retry_delay = retry_delay_seconds
        self._max_attempts = max_attempts
        self._grace = tombstone_grace
        self._now = time_source or wall_clock_us
        self._lease = lease_seconds
        self._dead: collections.deque[DeadLetter] = collections.deque(maxlen=1000)

    async def sync(self, session_id: uuid.UUID) -> RepairOutcome:
        """Copy the newer of the two records to the other store; return the outcome."""
        first, second = self._stores
        a, b = await asyncio.gather(first.get(session_id), second.get(session_id))
        divergence = compare_records(a, b)
        if divergence.consistent:
            return RepairOutcome.IN_SYNC
        if divergence.kind in (DivergenceKind.CONTENT_MISMATCH, DivergenceKind.DELETED_IN_ONE):
            # Equal revisions: the revision rule cannot pick a winner.
            log.warning("repair conflict: equal revisions differ in %s", divergence.fields)
            return RepairOutcome.CONFLICT
        if a is not None and (b is None or a.revision > b.revision):
            newer, target, other = a, second, b
        else:
            assert b is not None
            newer, target, other = b, first, a
        if (
            other is None
            and not newer.deleted
            and older_than_grace(newer.revision, self._now(), self._grace)
        ):
            return RepairOutcome.POSSIBLY_DELETED
        await copy_record(newer, target)
        return RepairOutcome.COPIED

    async def drain(
        self, *, max_rounds: int | None = None, wait_seconds: float = 0.0
    ) -> RepairReport:
        """Process tasks until none is ready (or ``max_rounds`` batches).

        ``wait_seconds``: how long each claim waits for a task before the queue counts
        as drained (an SQS short poll may answer nothing while messages wait).
        """
        report = RepairReport()
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            tasks = await self._queue.claim(
                self._batch_size, lease_seconds=self._lease, wait_seconds=wait_seconds
            )
            if not tasks:
                break
            rounds += 1
            report.merge(await self._run(tasks))
        return report

    async def follow(
        self,
        stop: asyncio.Event,
        *,
        poll_seconds: float = 5.0,
        stop_on_give_up: bool = True,
        on_batch: Callable[[RepairReport], None] | None = None,
    ) -> RepairReport:
        """Process tasks as they come, until ``stop`` is set; returns the totals.

        Each claim long-polls up to ``poll_seconds``, so ``stop`` is noticed within that
        time; the tasks in hand (those of the poll in flight too) are finished first,
        never abandoned. With ``stop_on_give_up`` it also returns after a batch in which
        a task used up its ``max_attempts``: when a store is down, going on would turn
        every queued session into a dead letter in turn. ``on_batch`` sees each
        batch's report.
        """
        if poll_seconds <= 0:
            raise ConfigurationError("poll_seconds must be positive")
        total = RepairReport()
        while not stop.is_set():
            tasks = await self._queue.claim(
                self._batch_size, lease_seconds=self._lease, wait_seconds=poll_seconds
            )
            if not tasks:
                continue
            report = await self._run(tasks)
            total.merge(report)
            if on_batch is not None:
                on_batch(report)
            if stop_on_give_up and report.gave_up:
                break
        return total

    def dead_lettered(self) -> list[DeadLetter]:
        """The dead letters this worker made, oldest first (the last 1000)."""
        return list(self._dead)

    async def _run(self, tasks: list[RepairTask]) -> RepairReport:
        report = RepairReport()
        for outcome in await asyncio.gather(*(self.process(t) for t in tasks)):
            report.add(outcome)
        return report

    async def process(self, task: RepairTask) -> RepairOutcome:
        """Repair one claimed task and settle it in the queue: acknowledged, retried
        later with back-off (``FAILED``), or moved to the dead letters."""
        async with self._limit:
            try:
                outcome = await self.sync(task.session_id)
            except BackendError as exc:
                error = type(exc).__name__
                if task.attempts + 1 >= self._max_attempts:
                    outcome = RepairOutcome.GAVE_UP
                    await self._dead_letter(task, f"gave_up:{error}")
                else:
                    outcome = RepairOutcome.FAILED
                    delay = self._retry_delay * 2 ** min(task.attempts, 6)
                    await self._queue.retry(task, delay_seconds=delay)
                log.warning("repair of %s failed (%s): %s", task.session_id, error, outcome)
            else:
                if outcome in (RepairOutcome.CONFLICT, RepairOutcome.POSSIBLY_DELETED):
                    await self._dead_letter(task, outcome.value)
                    log.error("repair of %s left as a dead letter: %s", task.session_id, outcome)
                else:
                    await self._queue.ack(task)
            self._telemetry.repair_completed(outcome.value)
            return outcome

    async def _dead_letter(self, task: RepairTask, reason: str) -> None:
        await self._queue.dead_letter(task, reason)
        self._dead.append(DeadLetter(task.session_id, reason, task.attempts))
