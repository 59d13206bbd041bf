"""AWS Lambda entry point for the SQS repair queue: repair the sessions of an event.

Deploy with ``pip install 'sessionstore[cassandra,documentdb,sqs]'``::

    # lambda_function.py
    from sessionstore.repair.handler import handler

The event source mapping is the repair queue, with **ReportBatchItemFailures** on. Each
record is one queued session, settled by :meth:`RepairWorker.process
<sessionstore.RepairWorker.process>` exactly as ``sessionstore repair --follow`` would:

- repaired or already in sync: deleted from the queue;
- a conflict, a possibly deleted session, or a failure on its ``max_attempts``-th
  receive: sent to the dead-letter queue with the reason, and deleted;
- a store failed: hidden for the back-off delay and named in ``batchItemFailures``,
  so it comes back (and after the redrive policy's ``maxReceiveCount``, goes to the
  dead-letter queue);
- a body that is not a repair message: moved to the dead-letter queue.

The stores and the SQS client are opened on a container's first invocation and kept for
the warm ones that follow, on one event loop kept with them (the drivers' connections
belong to the loop that opened them).

Environment: ``SESSIONSTORE_REPAIR_QUEUE`` (the queue's URL, required: retries and dead
letters go through it), ``SESSIONSTORE_REPAIR_MAX_ATTEMPTS`` (8),
``SESSIONSTORE_REPAIR_RETRY_DELAY`` (seconds, 1), ``SESSIONSTORE_REPAIR_CONCURRENCY``
(8), ``SESSIONSTORE_REPAIR_TOMBSTONE_GRACE_DAYS`` (30), and the stores' ``SESSIONSTORE_*``
variables (docs/cli.md). See docs/jobs.md for the queue, the event source and IAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sessionstore._errors import ConfigurationError, SessionStoreError
from sessionstore.backends.base import SessionBackend
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store
from sessionstore.repair.queue import RepairQueue
from sessionstore.repair.sqs import SqsRepairQueue
from sessionstore.repair.worker import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TOMBSTONE_GRACE,
    RepairOutcome,
    RepairWorker,
)

__all__ = ["close", "handler"]

log = logging.getLogger(__name__)


#: Setting -> environment variable.
_ENVIRONMENT = {
    "queue_url": "SESSIONSTORE_REPAIR_QUEUE",
    "max_attempts": "SESSIONSTORE_REPAIR_MAX_ATTEMPTS",
    "retry_delay": "SESSIONSTORE_REPAIR_RETRY_DELAY",
    "concurrency": "SESSIONSTORE_REPAIR_CONCURRENCY",
    "tombstone_grace_days": "SESSIONSTORE_REPAIR_TOMBSTONE_GRACE_DAYS",
}


class _Settings(BaseModel):
    """The handler's own settings (``_ENVIRONMENT``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_url: str
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    retry_delay: float = Field(default=1.0, ge=0)
    concurrency: int = Field(default=8, ge=1)
    tombstone_grace_days: float = Field(default=DEFAULT_TOMBSTONE_GRACE.days, gt=0)

    @classmethod
    def from_env(cls) -> _Settings:
        """Read the variables; errors name the variable, never its value."""
        values = {
            field: os.environ[name].strip()
            for field, name in _ENVIRONMENT.items()
            if os.environ.get(name, "").strip()
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            names = sorted({_ENVIRONMENT[str(e["loc"][0])] for e in exc.errors()})
            raise ConfigurationError(
                f"repair handler: missing or invalid {', '.join(names)}"
            ) from None


@dataclasses.dataclass
class _Container:
    """What a warm container keeps between invocations."""

    loop: asyncio.AbstractEventLoop
    stores: dict[Store, SessionBackend]
    queue: SqsRepairQueue
    worker: RepairWorker

    def resources(self) -> list[SessionBackend | RepairQueue]:
        return [*self.stores.values(), self.queue]

    async def aclose(self) -> None:
        for resource in self.resources():
            with contextlib.suppress(SessionStoreError):
                await resource.aclose()


class _Warm:
    container: ClassVar[_Container | None] = None


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    """AWS Lambda entry point: ``{"batchItemFailures": [...]}`` names the records to retry.

    An error opening the stores or the queue fails the whole invocation (every record
    comes back after the visibility timeout).
    """
    container = _Warm.container or _open()
    records = list(event.get("Records", ()))
    failed = container.loop.run_until_complete(_handle(container, records))
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def close() -> None:
    """Close the kept connections (tests; Lambda just freezes or drops the container)."""
    container, _Warm.container = _Warm.container, None
    if container is not None:
        try:
            container.loop.run_until_complete(container.aclose())
        finally:
            container.loop.close()


def _open() -> _Container:
    settings = _Settings.from_env()
    connections = ConnectionSettings.from_env()
    queue = SqsRepairQueue(settings.queue_url)
    stores = {store: connections.backend(store) for store in Store}
    worker = RepairWorker(
        cassandra=stores[Store.CASSANDRA],
        documentdb=stores[Store.DOCUMENTDB],
        queue=queue,
        concurrency=settings.concurrency,
        retry_delay_seconds=settings.retry_delay,
        max_attempts=settings.max_attempts,
        tombstone_grace=dt.timedelta(days=settings.tombstone_grace_days),
    )
    container = _Container(asyncio.new_event_loop(), stores, queue, worker)
    try:
        container.loop.run_until_complete(_open_all(container))
    except BaseException:
        container.loop.run_until_complete(container.aclose())
        container.loop.close()
        raise
    _Warm.container = container
    return container


async def _open_all(container: _Container) -> None:
    for resource in container.resources():
        await resource.__aenter__()


async def _handle(container: _Container, records: list[Mapping[str, Any]]) -> list[str]:
    """The message ids of the records to retry."""
    queue_name = _queue_name(container.queue.url)
    for record in records:
        arn = str(record.get("eventSourceARN", ""))
        if arn and arn.split(":")[-2:] != queue_name:
            # Its receipt handle would be used on another queue: a wiring mistake.
            raise ConfigurationError(
                "the event comes from another queue than SESSIONSTORE_REPAIR_QUEUE"
            )
    results = await asyncio.gather(*(_one(container, record) for record in records))
    return [str(r.get("messageId", "")) for r, retry in zip(records, results, strict=True) if retry]


async def _one(container: _Container, record: Mapping[str, Any]) -> bool:
    """Settle one record; True if it must come back."""
    message_id = str(record.get("messageId", ""))
    receipt = record.get("receiptHandle")
    if not isinstance(receipt, str):
        log.error("record %s is not an SQS message", message_id)
        return True
    attributes = record.get("attributes") or {}
    try:
        task = await container.queue.task_from_message(
            body=str(record.get("body", "")),
            receipt_handle=receipt,
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            message_id=message_id,
        )
        if task is None:
            return False  # not a repair message: now a dead letter
        return await container.worker.process(task) is RepairOutcome.FAILED
    except SessionStoreError as exc:
        # The queue itself failed (a retry or dead letter not recorded): come back.
        log.error("repair message %s failed: %s", message_id, type(exc).__name__)
        return True


def _queue_name(url: str) -> list[str]:
    """``[account, name]`` of a queue URL (``https://sqs.<region>.amazonaws.com/<id>/<name>``)."""
    return urllib.parse.urlsplit(url).path.strip("/").split("/")[-2:]
