"""The queue worker: runs work units from a queue, ``concurrency`` at a time.

What ``sessionstore worker QUEUE_URL`` runs, one process of a fleet. Per message:

- **receive** with a long poll, never more messages than free slots, so no message
  waits invisible in this process while another worker is idle;
- **heartbeat**: while a unit runs its message is kept invisible, extended to the
  visibility timeout every third of it, so a unit longer than the queue's timeout is
  never delivered to a second worker while it runs;
- **delete** only after the unit succeeded; a unit that failed (or a malformed
  message) is handed back after ``retry_delay`` seconds and, after the queue's
  ``maxReceiveCount`` receives, lands in the dead-letter queue;
- **stop** (``stop`` event set, SIGTERM/SIGINT in the command): no new receives; the
  units in hand get ``grace_seconds`` to finish, the others are cancelled and their
  messages released at once (visibility 0), so another worker takes them now, not
  after the timeout. A process killed outright (SIGKILL, a lost host) holds its
  messages until their visibility timeout ends; they are then delivered again and,
  units being idempotent, run again to the same result.

Stores are opened once per process by the caller and shared by every unit (see
:class:`~sessionstore.jobs.handler.UnitRunner`). Example::

    queue = SqsUnitQueue.from_url("https://sqs.eu-west-1.amazonaws.com/123/backfill-units")
    report = await QueueWorker(queue, UnitRunner(stores), concurrency=8).run(stop)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from typing import Any

from sessionstore._errors import BackendError, BackendRejectedError, SessionStoreError
from sessionstore.jobs.engine import UnitResult, describe_error
from sessionstore.jobs.handler import UnitRunner
from sessionstore.jobs.unit_queue import QueuedMessage, UnitQueue
from sessionstore.jobs.units import WorkUnit

__all__ = ["QueueWorker", "WorkerReport"]

log = logging.getLogger(__name__)

#: Failed units listed in a report, at most.
_LISTED = 100


@dataclasses.dataclass
class WorkerReport:
    """What one worker process did: units, sessions, failures; counts by action.

    ``redelivered`` counts units whose message had been received before (by a worker
    that failed, stopped or died), ``released`` units handed back unfinished at a stop.
    """

    units_done: int = 0
    units_failed: int = 0
    released: int = 0
    redelivered: int = 0
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    counts: dict[str, collections.Counter[str]] = dataclasses.field(default_factory=dict)
    fields: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    jobs: set[str] = dataclasses.field(default_factory=set)
    elapsed_seconds: float = 0.0
    stopped: str | None = None

    @property
    def sessions(self) -> int:
        """Sessions read or looked up by this worker's units (every action)."""
        return sum(c["records"] for c in self.counts.values())

    @property
    def sessions_per_second(self) -> float:
        """Sessions per second of the worker's wall time."""
        return self.sessions / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def add(self, unit: WorkUnit, result: UnitResult) -> None:
        """Count a unit that succeeded."""
        self.units_done += 1
        self.jobs.add(unit.job)
        self.counts.setdefault(unit.action.value, collections.Counter()).update(result.counts)
        self.fields.update(result.fields)

    def fail(self, what: str, reason: str) -> None:
        """Count a unit (or malformed message) that failed."""
        self.units_failed += 1
        if len(self.failures) < _LISTED:
            self.failures[what] = reason

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (unit ids, counts and error classes; no student data)."""
        return {
            "jobs": sorted(self.jobs),
            "units": {
                "done": self.units_done,
                "failed": self.units_failed,
                "released": self.released,
                "redelivered": self.redelivered,
            },
            "sessions": self.sessions,
            "counts": {a: dict(sorted(c.items())) for a, c in sorted(self.counts.items())},
            "fields": dict(sorted(self.fields.items())),
            "failures": dict(sorted(self.failures.items())),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "sessions_per_second": round(self.sessions_per_second, 1),
            "stopped": self.stopped,
        }


@dataclasses.dataclass
class _InHand:
    message: QueuedMessage
    task: asyncio.Task[None]
    extended_at: float


class QueueWorker:
    """Runs units from ``queue`` on ``runner``'s stores until stopped (or drained).

    Args:
        queue: a :class:`~sessionstore.jobs.unit_queue.UnitQueue` (SQS or in memory).
        runner: runs one unit on the process's stores.
        concurrency: units in hand at once.
        wait_seconds: long-poll wait of a receive (1-20); a stop waits for the poll
            in progress, so it also bounds how long stopping takes when idle.
        visibility_timeout: seconds a received message stays invisible, extended by the
            heartbeat while its unit runs (None: the queue's own setting).
        retry_delay: seconds before a failed unit's message is delivered again.
        grace_seconds: how long a stop lets the units in hand finish.
        until_drained: stop once a receive finds nothing, nothing is in hand, and the
            queue reports no message visible, in flight or delayed.
        max_consecutive_failures: stop after this many failed units in a row.
    """

    def __init__(
        self,
        queue: UnitQueue,
        runner: UnitRunner,
        *,
        concurrency: int = 4,
        wait_seconds: int = 10,
        visibility_timeout: int | None = None,
        retry_delay: int = 10,
        grace_seconds: float = 30.0,
        until_drained: bool = False,
        max_consecutive_failures: int = 10,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.concurrency = concurrency
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.retry_delay = retry_delay
        self.grace_seconds = grace_seconds
        self.until_drained = until_drained
        self.max_failures = max_consecutive_failures
        self.report = WorkerReport()
        self._in_hand: dict[str, _InHand] = {}
        self._failures_in_row = 0
        self._changed = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> WorkerReport:
        """Work until ``stop`` is set, the queue is drained (``until_drained``), or an
        error stops the worker; returns the report. Cancelling ``run`` (a second
        signal) cancels the units in hand and releases their messages."""
        stop = stop or asyncio.Event()
        started = time.perf_counter()
        if self.visibility_timeout is None:
            self.visibility_timeout = (await self.queue.counts()).visibility_timeout
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._poll(stop)
            if stop.is_set() and self.report.stopped is None:
                self.report.stopped = "stopped by a signal"
            await self._finish(self.grace_seconds)
        except asyncio.CancelledError:
            await self._finish(0.0)
            raise
        finally:
            heartbeat.cancel()
            self.report.elapsed_seconds = time.perf_counter() - started
        return self.report

    # -- receiving --------------------------------------------------------------------

    async def _poll(self, stop: asyncio.Event) -> None:
        errors_in_row = 0
        while not stop.is_set() and self.report.stopped is None:
            free = self.concurrency - len(self._in_hand)
            if free <= 0:
                await self._wait_for_change(stop)
                continue
            try:
                received = await self.queue.receive(
                    free, wait_seconds=self.wait_seconds, visibility_timeout=self.visibility_timeout
                )
            except BackendRejectedError as exc:  # the queue is gone, or access denied
                self.report.stopped = f"the queue refused a receive: {exc}"
                return
            except BackendError as exc:
                errors_in_row += 1
                log.warning("receive failed (%s); retrying", describe_error(exc))
                await self._sleep_or_stop(stop, min(30.0, 0.5 * 2**errors_in_row))
                continue
            errors_in_row = 0
            if stop.is_set():
                await self._release(received)
                return
            for message in received:
                self._start(message)
            if not received and self.until_drained and not self._in_hand and await self._drained():
                self.report.stopped = "queue drained"

    async def _drained(self) -> bool:
        try:
            return (await self.queue.counts()).drained
        except BackendError as exc:
            log.warning("queue counts not read (%s)", describe_error(exc))
            return False

    async def _wait_for_change(self, stop: asyncio.Event) -> None:
        """Until a slot frees up or ``stop`` is set."""
        self._changed.clear()
        waiters = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    @staticmethod
    async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    # -- one unit ---------------------------------------------------------------------

    def _start(self, message: QueuedMessage) -> None:
        if message.receive_count > 1:
            self.report.redelivered += 1
        task = asyncio.create_task(self._handle(message))
        self._in_hand[message.receipt_handle] = _InHand(message, task, time.monotonic())
        task.add_done_callback(lambda _: self._done(message))

    def _done(self, message: QueuedMessage) -> None:
        self._in_hand.pop(message.receipt_handle, None)
        self._changed.set()

    async def _handle(self, message: QueuedMessage) -> None:
        try:
            unit = WorkUnit.from_json(message.body)
        except SessionStoreError as exc:
            log.error("message %s is not a work unit: %s", message.message_id, exc)
            await self._failed(message, f"message {message.message_id}", exc)
            return
        log.info(
            "unit %s of job %s started (receive %d)", unit.unit_id, unit.job, message.receive_count
        )
        try:
            result = await self.runner.run(unit)
        except SessionStoreError as exc:
            log.error("unit %s of job %s failed: %s", unit.unit_id, unit.job, describe_error(exc))
            await self._failed(message, unit.unit_id, exc)
            if isinstance(exc, BackendRejectedError):
                # Credentials or permissions: every other unit would fail the same way.
                self.report.stopped = f"stopped after an error retrying cannot fix: {exc}"
            return
        except Exception as exc:  # a bug in one unit must not end the fleet
            log.exception("unit %s of job %s failed unexpectedly", unit.unit_id, unit.job)
            await self._failed(message, unit.unit_id, exc)
            return
        self._failures_in_row = 0
        self.report.add(unit, result)
        try:
            await self.queue.delete(message)
        except BackendError as exc:
            # The unit is done; if its message comes back, running it again is harmless.
            log.warning("unit %s done, but its message was not deleted: %s", unit.unit_id, exc)
        log.info("unit %s of job %s done: %s", unit.unit_id, unit.job, dict(result.counts))

    async def _failed(self, message: QueuedMessage, what: str, exc: BaseException) -> None:
        self._in_hand.pop(message.receipt_handle, None)  # no heartbeat over the retry delay
        self.report.fail(what, describe_error(exc))
        self._failures_in_row += 1
        if self._failures_in_row >= self.max_failures and self.report.stopped is None:
            self.report.stopped = f"stopped after {self._failures_in_row} failed units in a row"
        try:
            await self.queue.set_visibility([message], self.retry_delay)
        except BackendError as exc2:
            log.warning("failed unit's message not handed back (%s): it returns later", exc2)

    # -- heartbeat and stopping -------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Keep the messages in hand invisible while their units run."""
        timeout = self.visibility_timeout or 30
        interval = max(0.2, timeout / 3)
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            due = [h.message for h in self._in_hand.values() if now - h.extended_at >= interval]
            if not due:
                continue
            try:
                await self.queue.set_visibility(due, timeout)
            except BackendError as exc:
                log.warning("heartbeat failed (%s); retrying", describe_error(exc))
                continue
            for message in due:
                held = self._in_hand.get(message.receipt_handle)
                if held is not None:
                    held.extended_at = now

    async def _finish(self, grace: float) -> None:
        """Let the units in hand finish for ``grace`` seconds, then release the others."""
        tasks = [h.task for h in self._in_hand.values()]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        left = list(self._in_hand.values())
        for held in left:
            held.task.cancel()
        if left:
            await asyncio.gather(*(h.task for h in left), return_exceptions=True)
            await self._release([h.message for h in left])
            for held in left:
                self._in_hand.pop(held.message.receipt_handle, None)

    async def _release(self, messages: list[QueuedMessage]) -> None:
        if not messages:
            return
        try:
            self.report.released += await self.queue.set_visibility(messages, 0)
        except BackendError as exc:
            log.warning("%d messages not released (%s): they return later", len(messages), exc)
        else:
            log.info("released %d unfinished units", len(messages))
