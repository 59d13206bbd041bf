"""The unit queue: a job's work units as SQS messages, for ``sessionstore worker`` and Lambda.

One message is one :class:`~sessionstore.jobs.WorkUnit` as JSON: ids and key ranges,
never student data. :meth:`SqsUnitQueue.enqueue` sends a plan with ``SendMessageBatch``
(10 messages and at most 256 KiB a call, a few calls in flight); a worker receives
units with long polls, holds each message invisible while its unit runs (a heartbeat
extends the visibility timeout), deletes it only once the unit succeeded, and hands it
back (``ChangeMessageVisibility``) when the unit failed or the worker stops. Delivery is
at-least-once, which units are built for: every write goes through the revision rule,
so a unit run twice changes nothing the second time.

:class:`InMemoryUnitQueue` is the same contract in memory (visibility timeouts, receive
counts and a dead-letter list), for tests of code that drives a worker. Example::

    queue = SqsUnitQueue.from_url("https://sqs.eu-west-1.amazonaws.com/123/backfill-units")
    sent = await queue.enqueue(job.plan(parts=16384))
    [message] = await queue.receive(1, wait_seconds=10)
    unit = WorkUnit.from_json(message.body)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from sessionstore._errors import BackendRejectedError, BackendUnavailableError, ConfigurationError
from sessionstore._sqs import STORE, SqsSettings, region_of, sqs_call
from sessionstore.jobs.units import WorkUnit

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENTRIES",
    "InMemoryUnitQueue",
    "QueueCounts",
    "QueuedMessage",
    "SqsUnitQueue",
    "UnitQueue",
    "message_batches",
]

log = logging.getLogger(__name__)

#: SQS limits of one batch call: 10 entries, 256 KiB of message bodies together.
MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
# Entries a batch send may retry when SQS reports them failed on its side.
_SEND_ATTEMPTS = 4


@dataclasses.dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One received message: its body (a unit as JSON) and how to answer for it."""

    message_id: str
    receipt_handle: str
    body: str
    #: How many times the message has been received, this time included (>1: redelivered).
    receive_count: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCounts:
    """Approximate message counts of a queue, and its default visibility timeout."""

    visible: int
    in_flight: int
    delayed: int
    visibility_timeout: int

    @property
    def drained(self) -> bool:
        """No message waits, is being worked on, or is delayed."""
        return self.visible == 0 and self.in_flight == 0 and self.delayed == 0


class UnitQueue(Protocol):
    """What a worker needs from a queue of units (SQS, or the in-memory one)."""

    async def enqueue(self, units: Sequence[WorkUnit]) -> int:
        """Send every unit as one message; returns how many were sent."""
        ...

    async def receive(
        self, max_messages: int, *, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[QueuedMessage]:
        """Up to ``max_messages`` (at most 10), waiting up to ``wait_seconds`` for the first."""
        ...

    async def delete(self, message: QueuedMessage) -> None:
        """Acknowledge a message: its unit is done."""
        ...

    async def set_visibility(self, messages: Sequence[QueuedMessage], seconds: int) -> int:
        """Keep messages invisible ``seconds`` from now (0 hands them back at once).

        Returns how many were changed (a message already redelivered elsewhere is not).
        """
        ...

    async def counts(self) -> QueueCounts:
        """The queue's approximate counts; also proves it is reachable."""
        ...


def message_batches(bodies: Sequence[str]) -> list[list[str]]:
    """Group message bodies into batches SQS accepts: <= 10 entries and <= 256 KiB each.

    >>> [len(b) for b in message_batches(["x" * 100] * 23)]
    [10, 10, 3]
    >>> [len(b) for b in message_batches(["x" * 100_000] * 5)]
    [2, 2, 1]
    """
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode())
        if length > MAX_BATCH_BYTES:
            raise ConfigurationError(f"a unit message of {length} bytes is above SQS's 256 KiB")
        if current and (len(current) == MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    if current:
        batches.append(current)
    return batches


class SqsUnitQueue:
    """A standard SQS queue of unit messages, through boto3 (calls run in worker threads).

    ``from_url`` is the usual way in: for a queue URL that is not an AWS one (ElasticMQ,
    LocalStack) the endpoint defaults to the URL's own origin, unless
    ``SESSIONSTORE_SQS_ENDPOINT`` says otherwise. Errors are the library's
    (:class:`~sessionstore.BackendError` with ``store="sqs"``), naming the operation and
    the AWS error code only.
    """

    def __init__(self, settings: SqsSettings, *, client: SQSClient | None = None) -> None:
        self.settings = settings
        self.url = settings.queue_url
        self._client = client

    @classmethod
    def from_url(
        cls, queue_url: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> SqsUnitQueue:
        """The queue at ``queue_url``; ConfigurationError for a malformed URL (no values)."""
        options: dict[str, Any] = {"queue_url": queue_url}
        if endpoint_url is not None:
            options["endpoint_url"] = endpoint_url
        if region is not None:
            options["region"] = region
        try:
            settings = SqsSettings(**options)
        except ValidationError:
            raise ConfigurationError(
                "the queue URL must look like https://sqs.<region>.amazonaws.com/<account>/<name>"
            ) from None
        if settings.endpoint_url is None and region_of(queue_url) is None:
            parts = urllib.parse.urlsplit(queue_url)
            settings = settings.model_copy(
                update={"endpoint_url": f"{parts.scheme}://{parts.netloc}"}
            )
        return cls(settings)

    @property
    def client(self) -> SQSClient:
        """The boto3 client, built on first use (nothing connects before a call)."""
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    async def enqueue(self, units: Sequence[WorkUnit], *, concurrency: int = 8) -> int:
        """Send every unit as one message, ``concurrency`` batch calls in flight.

        Entries SQS fails on its side are retried; an entry it refuses (``SenderFault``)
        raises BackendRejectedError, after the batches already sent (their count is in
        the message): sending the same plan again is safe, units are idempotent.
        """
        batches = message_batches([unit.to_json() for unit in units])
        pending = collections.deque(batches)
        sent = 0

        async def sender() -> None:
            nonlocal sent
            while pending:
                batch = pending.popleft()
                await self._send_batch(batch)
                sent += len(batch)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(batches))):
                    group.create_task(sender())
        except BaseExceptionGroup as exc:
            log.error("enqueue stopped: %d of %d units were sent", sent, len(units))
            raise exc.exceptions[0] from None
        return sent

    async def _send_batch(self, bodies: list[str]) -> None:
        entries: dict[str, SendMessageBatchRequestEntryTypeDef] = {
            str(i): {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)
        }
        for attempt in range(_SEND_ATTEMPTS):
            reply = await sqs_call(
                self.client.send_message_batch,
                "SendMessageBatch",
                QueueUrl=self.url,
                Entries=list(entries.values()),
            )
            failed = reply.get("Failed", [])
            if not failed:
                return
            refused = [f for f in failed if f.get("SenderFault")]
            if refused:
                raise BackendRejectedError(
                    f"SendMessageBatch refused {len(refused)} messages ({refused[0]['Code']})",
                    store=STORE,
                )
            entries = {f["Id"]: entries[f["Id"]] for f in failed}
            await asyncio.sleep(0.2 * 2**attempt)
        raise BackendUnavailableError(
            f"SendMessageBatch kept failing for {len(entries)} messages", store=STORE
        )

    async def receive(
        self, max_messages: int, *, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[QueuedMessage]:
        """Up to ``max_messages`` (1-10) messages; a long poll of up to ``wait_seconds``."""
        options: dict[str, Any] = {}
        if visibility_timeout is not None:
            options["VisibilityTimeout"] = visibility_timeout
        reply = await sqs_call(
            self.client.receive_message,
            "ReceiveMessage",
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(max_messages, MAX_BATCH_ENTRIES)),
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            **options,
        )
        return [
            QueuedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            for m in reply.get("Messages", [])
        ]

    async def delete(self, message: QueuedMessage) -> None:
        """Delete a message whose unit is done."""
        await sqs_call(
            self.client.delete_message,
            "DeleteMessage",
            QueueUrl=self.url,
            ReceiptHandle=message.receipt_handle,
        )

    async def set_visibility(self, messages: Sequence[QueuedMessage], seconds: int) -> int:
        """``ChangeMessageVisibilityBatch`` in groups of 10; returns how many changed."""
        changed = 0
        for start in range(0, len(messages), MAX_BATCH_ENTRIES):
            group = messages[start : start + MAX_BATCH_ENTRIES]
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                for i, m in enumerate(group)
            ]
            reply = await sqs_call(
                self.client.change_message_visibility_batch,
                "ChangeMessageVisibilityBatch",
                QueueUrl=self.url,
                Entries=entries,
            )
            for failure in reply.get("Failed", []):
                # Typically the receipt handle expired: the message went to another worker.
                log.warning(
                    "visibility of message %s not changed (%s)",
                    group[int(failure["Id"])].message_id,
                    failure.get("Code", "?"),
                )
            changed += len(reply.get("Successful", []))
        return changed

    async def counts(self) -> QueueCounts:
        """``GetQueueAttributes``: the approximate counts and the visibility timeout."""
        reply = await sqs_call(
            self.client.get_queue_attributes,
            "GetQueueAttributes",
            QueueUrl=self.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
                "VisibilityTimeout",
            ],
        )
        found = reply.get("Attributes", {})
        return QueueCounts(
            visible=int(found.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(found.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(found.get("ApproximateNumberOfMessagesDelayed", 0)),
            visibility_timeout=int(found.get("VisibilityTimeout", 30)),
        )


@dataclasses.dataclass
class _Stored:
    message_id: str
    body: str
    visible_at: float = 0.0
    receives: int = 0
    receipt: str | None = None


class InMemoryUnitQueue:
    """The unit queue in memory, with SQS's semantics where a worker can tell.

    Received messages stay invisible for the visibility timeout, then return; each
    receive gets a new receipt handle (an old one can no longer delete or extend);
    a message received ``max_receive_count`` times and then due again moves to
    :attr:`dead_letters`. ``clock`` is injectable for tests.

    >>> import asyncio
    >>> queue = InMemoryUnitQueue(visibility_timeout=30)
    >>> asyncio.run(queue.put_raw("not a unit")) is None
    True
    >>> [m.body for m in asyncio.run(queue.receive(10, wait_seconds=0))]
    ['not a unit']
    """

    def __init__(
        self,
        *,
        visibility_timeout: int = 30,
        max_receive_count: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.visibility_timeout = visibility_timeout
        self.max_receive_count = max_receive_count
        self.dead_letters: list[str] = []
        self.deleted: list[str] = []
        self._clock = clock
        self._messages: dict[str, _Stored] = {}
        self._ids = itertools.count(1)

    async def put_raw(self, body: str) -> None:
        """Queue any body (a malformed message, in tests)."""
        message_id = f"m{next(self._ids)}"
        self._messages[message_id] = _Stored(message_id, body)

    async def enqueue(self, units: Sequence[WorkUnit]) -> int:
        """Queue one message per unit."""
        for unit in units:
            await self.put_raw(unit.to_json())
        return len(units)

    async def receive(
        self, max_messages: int, *, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[QueuedMessage]:
        """Due messages, waiting up to ``wait_seconds`` (of real time) for one."""
        deadline = time.monotonic() + wait_seconds
        while True:
            found = self._take(max(1, min(max_messages, MAX_BATCH_ENTRIES)), visibility_timeout)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            # Polled, not an Event: the queue may serve several event loops in turn.
            await asyncio.sleep(min(left, 0.02))

    def _take(self, limit: int, visibility_timeout: int | None) -> list[QueuedMessage]:
        now = self._clock()
        taken: list[QueuedMessage] = []
        for stored in list(self._messages.values()):
            if len(taken) == limit:
                break
            if stored.visible_at > now:
                continue
            if stored.receives >= self.max_receive_count:
                del self._messages[stored.message_id]
                self.dead_letters.append(stored.body)
                continue
            stored.receives += 1
            stored.receipt = uuid.uuid4().hex
            stored.visible_at = now + (
                self.visibility_timeout if visibility_timeout is None else visibility_timeout
            )
            taken.append(
                QueuedMessage(stored.message_id, stored.receipt, stored.body, stored.receives)
            )
        return taken

    def _current(self, message: QueuedMessage) -> _Stored | None:
        stored = self._messages.get(message.message_id)
        if stored is None or stored.receipt != message.receipt_handle:
            return None
        return stored

    async def delete(self, message: QueuedMessage) -> None:
        """Delete the message if the receipt handle is still its current one."""
        if self._current(message) is not None:
            del self._messages[message.message_id]
            self.deleted.append(message.body)

    async def set_visibility(self, messages: Sequence[QueuedMessage], seconds: int) -> int:
        """Change the visibility of messages whose receipt handles are current."""
        changed = 0
        for message in messages:
            stored = self._current(message)
            if stored is not None:
                stored.visible_at = self._clock() + seconds
                changed += 1
        return changed

    async def counts(self) -> QueueCounts:
        """Exact counts (dead letters are not counted: they left the queue)."""
        now = self._clock()
        visible = sum(1 for m in self._messages.values() if m.visible_at <= now)
        return QueueCounts(
            visible=visible,
            in_flight=len(self._messages) - visible,
            delayed=0,
            visibility_timeout=self.visibility_timeout,
        )
