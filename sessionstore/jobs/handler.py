"""Run work units handed over by a queue: the Lambda handler and the runner workers share.

A unit is a small JSON message (:meth:`WorkUnit.to_json`). :class:`UnitRunner` runs
units on one set of stores for as long as a worker lives; ``sessionstore worker``
(:mod:`sessionstore.jobs.worker`) and the Lambda handler below both use it. Units are
idempotent (every write goes through the revision rule), so at-least-once delivery is
exactly what they need: a message delivered twice, or retried after a crash, changes
nothing the second time.

For AWS Lambda behind an SQS queue, :func:`sqs_handler` runs a batch and answers with
SQS's *partial batch response*, so only the failed messages return to the queue (and,
after the redrive policy's retries, to the dead-letter queue)::

    # lambda_function.py
    from sessionstore.jobs.handler import sqs_handler as handler

Its stores are built once per Lambda container, from the environment
(:meth:`ConnectionSettings.from_env`), on the first invocation, and opened on first
use; warm invocations reuse them (and the event loop their drivers are bound to), so
only a cold start pays for the Cassandra and DocumentDB connection set-up.
:func:`run_message` is the one-shot form: it opens and closes both stores for one
message. The planner side is ``sessionstore backfill ... --enqueue QUEUE_URL``. See
docs/jobs.md for the queue, timeouts and the IAM side.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sessionstore._errors import ConfigurationError, SessionStoreError
from sessionstore.backends.base import SessionBackend
from sessionstore.jobs.backfill import BackfillJob
from sessionstore.jobs.engine import DEFAULT_PAGE_BYTES, UnitJob, UnitResult, describe_error
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.units import JobAction, WorkUnit
from sessionstore.jobs.verify import VerifyJob
from sessionstore.phases import Store

__all__ = [
    "UnitRunner",
    "build_stores",
    "close_warm_stores",
    "open_stores",
    "run_message",
    "run_work_unit",
    "sqs_handler",
]

log = logging.getLogger(__name__)


def build_stores(settings: ConnectionSettings | None = None) -> dict[Store, SessionBackend]:
    """Both stores from ``settings`` (default: the environment), unopened.

    DocumentDB inserts before it tries the guarded replace (``insert_first``), as a
    backfill's target should: the outcome is the same for every unit, and a backfill
    into a mostly empty collection saves a round trip per session.
    """
    config = settings or ConnectionSettings.from_env()
    return {store: config.backend(store, insert_first=True) for store in Store}


@contextlib.asynccontextmanager
async def open_stores(
    settings: ConnectionSettings | None = None,
) -> AsyncIterator[dict[Store, SessionBackend]]:
    """Both stores of :func:`build_stores`, closed on exit."""
    stores = build_stores(settings)
    try:
        yield stores
    finally:
        for backend in stores.values():
            await backend.aclose()


class UnitRunner:
    """Runs units on one set of stores, for as long as a worker lives.

    One job object per (job name, action, direction) is kept and reused, so the units
    of one job share a rate limiter (``rate`` is per process, not per unit), the
    in-flight limit and the page budget. The stores are used as given: a worker opens
    them once and closes them when it stops.

    ::

        runner = UnitRunner(stores, rate=500)
        result = await runner.run(WorkUnit.from_json(message))
    """

    _KEPT = 16  # job objects kept (a queue usually carries one job)

    def __init__(
        self,
        stores: Mapping[Store, SessionBackend],
        *,
        rate: float | None = None,
        page_size: int = 100,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        max_in_flight: int = 32,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.stores = stores
        self._options: dict[str, Any] = {
            "rate": rate,
            "page_size": page_size,
            "page_bytes": page_bytes,
            "max_in_flight": max_in_flight,
            "retry": retry,
        }
        self._jobs: collections.OrderedDict[tuple[str, JobAction, Store], UnitJob] = (
            collections.OrderedDict()
        )

    def job_for(self, unit: WorkUnit) -> UnitJob:
        """The job object that runs ``unit`` (created on first use, then reused)."""
        key = (unit.job, unit.action, unit.source)
        job = self._jobs.get(key)
        if job is None:
            source, target = self.stores[unit.source], self.stores[unit.target]
            kind = BackfillJob if unit.action is JobAction.BACKFILL else VerifyJob
            job = kind(source, target, name=unit.job, source_store=unit.source, **self._options)
            self._jobs[key] = job
            while len(self._jobs) > self._KEPT:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(key)
        return job

    async def run(self, unit: WorkUnit) -> UnitResult:
        """Run one unit; raises the store's error if it fails after its retries."""
        return await self.job_for(unit).run_unit(unit)


async def run_work_unit(
    unit: WorkUnit,
    stores: Mapping[Store, SessionBackend],
    *,
    rate: float | None = None,
    page_size: int = 100,
    page_bytes: int = DEFAULT_PAGE_BYTES,
    max_in_flight: int = 32,
) -> UnitResult:
    """Run one unit against open (or openable) ``stores``; raises if it fails.

    No checkpoint is kept: the queue is the checkpoint (a message is deleted only when
    its unit succeeded). A worker running many units keeps a :class:`UnitRunner`.
    """
    runner = UnitRunner(
        stores, rate=rate, page_size=page_size, page_bytes=page_bytes, max_in_flight=max_in_flight
    )
    return await runner.run(unit)


def run_message(
    message: str | bytes,
    *,
    settings: ConnectionSettings | None = None,
    rate: float | None = None,
    page_size: int = 100,
    page_bytes: int = DEFAULT_PAGE_BYTES,
) -> dict[str, Any]:
    """Parse and run one message; returns ``{"job", "unit_id", "counts", "fields"}``.

    Raises :class:`~sessionstore.ConfigurationError` for a malformed message (before
    any store is touched) and the store's error if the unit fails after its retries.
    """
    unit = WorkUnit.from_json(message)

    async def run() -> UnitResult:
        async with open_stores(settings) as stores:
            return await run_work_unit(
                unit, stores, rate=rate, page_size=page_size, page_bytes=page_bytes
            )

    result = asyncio.run(run())
    return _summary(unit, result)


def _summary(unit: WorkUnit, result: UnitResult) -> dict[str, Any]:
    return {
        "job": unit.job,
        "unit_id": unit.unit_id,
        "counts": dict(result.counts),
        "fields": dict(result.fields),
    }


def _env_number(name: str, kind: type[float] | type[int]) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number") from None


@dataclasses.dataclass
class _Warm:
    """What a Lambda container keeps between invocations."""

    loop: asyncio.Runner
    stores: dict[Store, SessionBackend]
    runner: UnitRunner


class _Container:
    """The module-level slot of the container's warm state."""

    warm: _Warm | None = None


def _warm_state() -> _Warm:
    """The container's stores and event loop, built on the first invocation."""
    if _Container.warm is None:
        page_mb = _env_number("SESSIONSTORE_JOB_PAGE_MB", int)
        # Nothing connects here: the backends open on first use, inside an invocation.
        stores = build_stores()
        runner = UnitRunner(
            stores,
            rate=_env_number("SESSIONSTORE_JOB_RATE", float),
            page_size=_env_number("SESSIONSTORE_JOB_PAGE_SIZE", int) or 100,
            page_bytes=page_mb * 1024 * 1024 if page_mb else DEFAULT_PAGE_BYTES,
        )
        # One event loop for the container's life: PyMongo's async client is bound to
        # the loop it first ran on, so a new asyncio.run per invocation would need new
        # clients, and with them new connections.
        _Container.warm = _Warm(asyncio.Runner(), stores, runner)
    return _Container.warm


def close_warm_stores() -> None:
    """Close the container's stores and event loop (tests; a Lambda extension's shutdown)."""
    warm, _Container.warm = _Container.warm, None
    if warm is None:
        return

    async def close() -> None:
        for backend in warm.stores.values():
            with contextlib.suppress(Exception):
                await backend.aclose()

    try:
        warm.loop.run(close())
    finally:
        warm.loop.close()


def sqs_handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    """AWS Lambda entry point for an SQS event source with partial batch responses.

    Each record's body is one WorkUnit message; the batch's units run concurrently, on
    stores kept across warm invocations (see the module docstring). Returns
    ``{"batchItemFailures": [...]}`` naming the messages that failed (malformed ones
    too: they belong in the dead-letter queue). ``SESSIONSTORE_JOB_RATE``,
    ``SESSIONSTORE_JOB_PAGE_SIZE`` and ``SESSIONSTORE_JOB_PAGE_MB`` set the container's
    rate (sessions/s, shared by the batch's units), page size (records) and page budget
    (MB of sessions per unit; size the function's memory above batch size times it).
    """
    records = list(event.get("Records", ()))
    warm = _warm_state()

    async def one(record: Mapping[str, Any]) -> dict[str, str] | None:
        message_id = str(record.get("messageId", ""))
        try:
            unit = WorkUnit.from_json(record.get("body", ""))
            result = await warm.runner.run(unit)
        except SessionStoreError as exc:
            log.error("unit message %s failed: %s", message_id, describe_error(exc))
            return {"itemIdentifier": message_id}
        except Exception:  # a bug in one unit fails its message, not the batch
            log.exception("unit message %s failed unexpectedly", message_id)
            return {"itemIdentifier": message_id}
        log.info("unit done: %s", json.dumps(_summary(unit, result)))
        return None

    async def run_all() -> list[dict[str, str] | None]:
        return await asyncio.gather(*(one(record) for record in records))

    failures = [f for f in warm.loop.run(run_all()) if f is not None]
    return {"batchItemFailures": failures}
