"""Run work units handed over by another job engine (the SQS + Lambda wiring).

A unit is a small JSON message (:meth:`WorkUnit.to_json`). A worker of any job engine
calls :func:`run_message` with one message; the stores come from the environment
(:meth:`ConnectionSettings.from_env`). Units are idempotent (every write goes through
the revision rule), so at-least-once delivery is exactly what they need: a message
delivered twice, or retried after a crash, changes nothing the second time.

For AWS Lambda behind an SQS queue, :func:`sqs_handler` processes a batch and answers
with SQS's *partial batch response*, so only the failed messages return to the queue
(and, after the redrive policy's retries, to the dead-letter queue)::

    # lambda_function.py
    from sessionstore.jobs.handler import sqs_handler as handler

The unit planner side is ``sessionstore backfill ... --print-units`` (one message per
line). See docs/jobs.md for the queue, timeouts and the IAM side.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sessionstore.jobs.units import JobAction, WorkUnit
from sessionstore.jobs.verify import VerifyJob
from sessionstore.phases import Store

__all__ = ["open_stores", "run_message", "run_work_unit", "sqs_handler"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_stores(
    settings: ConnectionSettings | None = None,
) -> AsyncIterator[dict[Store, SessionBackend]]:
    """Both stores from ``settings`` (default: the environment), closed on exit.

    DocumentDB inserts before it tries the guarded replace (``insert_first``), as a
    backfill's target should: the outcome is the same for every unit, and a backfill
    into a mostly empty collection saves a round trip per session.
    """
    config = settings or ConnectionSettings.from_env()
    stores = {store: config.backend(store, insert_first=True) for store in Store}
    try:
        yield stores
    finally:
        for backend in stores.values():
            await backend.aclose()


def _job(unit: WorkUnit, stores: Mapping[Store, SessionBackend], **options: Any) -> UnitJob:
    source, target = stores[unit.source], stores[unit.target]
    if unit.action is JobAction.BACKFILL:
        return BackfillJob(source, target, name=unit.job, source_store=unit.source, **options)
    return VerifyJob(source, target, name=unit.job, source_store=unit.source, **options)


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
    its unit succeeded).
    """
    job = _job(
        unit,
        stores,
        rate=rate,
        page_size=page_size,
        page_bytes=page_bytes,
        max_in_flight=max_in_flight,
    )
    return await job.run_unit(unit)


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


def sqs_handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    """AWS Lambda entry point for an SQS event source with partial batch responses.

    Each record's body is one WorkUnit message. Returns ``{"batchItemFailures": [...]}``
    naming the messages that failed (malformed ones too: they belong in the dead-letter
    queue). ``SESSIONSTORE_JOB_RATE``, ``SESSIONSTORE_JOB_PAGE_SIZE`` and
    ``SESSIONSTORE_JOB_PAGE_MB`` set the per-invocation rate (sessions/s), page size
    (records) and page budget (MB of sessions; size the function's memory above it).
    """
    records = list(event.get("Records", ()))
    rate = _env_number("SESSIONSTORE_JOB_RATE", float)
    page_size = _env_number("SESSIONSTORE_JOB_PAGE_SIZE", int) or 100
    page_mb = _env_number("SESSIONSTORE_JOB_PAGE_MB", int)
    page_bytes = page_mb * 1024 * 1024 if page_mb else DEFAULT_PAGE_BYTES
    failures: list[dict[str, str]] = []

    async def run_all() -> None:
        async with open_stores() as stores:
            for record in records:
                message_id = str(record.get("messageId", ""))
                try:
                    unit = WorkUnit.from_json(record.get("body", ""))
                    result = await run_work_unit(
                        unit, stores, rate=rate, page_size=page_size, page_bytes=page_bytes
                    )
                except SessionStoreError as exc:
                    log.error("unit message %s failed: %s", message_id, describe_error(exc))
                    failures.append({"itemIdentifier": message_id})
                    continue
                log.info("unit done: %s", json.dumps(_summary(unit, result)))

    asyncio.run(run_all())
    return {"batchItemFailures": failures}
