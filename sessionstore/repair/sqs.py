"""The repair queue on Amazon SQS: one queue shared by a whole fleet of processes.

A pod's SQLite file dies with the pod; an SQS queue outlives every process that writes
to it, and any number of workers (``sessionstore repair --follow`` sidecars, or the
Lambda of :mod:`sessionstore.repair.handler`) drain it. The queue protocol maps onto
SQS this way:

- ``enqueue``: one message, body ``{"session_id": ..., "reason": ...}`` (an id and a
  reason, never session content). SQS does not deduplicate: a session queued twice is
  two messages, and the second repair finds both stores in sync (the revision rule).
- ``claim``: ReceiveMessage with ``VisibilityTimeout`` = the lease (whole seconds,
  rounded up) and ``WaitTimeSeconds`` = the wait (a long poll, 20 s per request at most).
  ``attempts`` is ``ApproximateReceiveCount - 1``: on SQS a lease that expired (a
  crashed worker) counts as an attempt too.
- ``ack``: DeleteMessage by the receipt handle (the task's ``token``). A receipt handle
  whose lease expired meanwhile is another worker's now: nothing is deleted, and that
  worker repairs the session again, harmlessly.
- ``retry``: ChangeMessageVisibility to the back-off delay; the next receive counts it.
- ``dead_letter``: SendMessage to the dead-letter queue (DLQ) with the reason and the
  attempts as message attributes, then DeleteMessage. A crash in between leaves the
  session in both queues, never in none.
- Messages that the queue's *redrive policy* moved to the DLQ (received
  ``maxReceiveCount`` times, never acknowledged: a worker crashed or timed out on them)
  are dead letters with the reason ``redriven``.
- ``dead_letters`` and ``requeue_dead`` read the DLQ: the messages they look at are
  hidden for a moment (:data:`SCAN_HOLD_SECONDS`) and handed back, so nothing is lost
  even if the process dies mid-scan. Re-queued dead letters are sent to the main queue
  before they are deleted from the DLQ.
- ``stats``: the queues' ``ApproximateNumberOfMessages*`` attributes. On Amazon SQS
  these are approximate (eventually consistent, within about a minute).

The DLQ is the one of the main queue's ``RedrivePolicy`` unless ``dead_letter_url`` is
given. Opening the queue reads the main queue's attributes (it fails fast on a wrong
URL or missing permissions); the DLQ is looked up on its first use, so a service that
only enqueues needs ``sqs:SendMessage`` and ``sqs:GetQueueAttributes`` on the main queue
(docs/jobs.md lists every action).

Example::

    async with SqsRepairQueue("https://sqs.eu-west-1.amazonaws.com/123456789012/repairs") as q:
        await q.enqueue(session_id, "secondary_write_failed")
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sessionstore._errors import ConfigurationError, RepairQueueError, SessionStoreError
from sessionstore._sqs import aws_error_code, sqs_call, sqs_settings
from sessionstore.backends.base import LifecycleMixin
from sessionstore.repair.queue import DeadLetter, QueueStats, RepairTask, check_delay

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

    #: Looks at a batch of dead letters; returns the ones to delete.
    _Visit = Callable[[list[MessageTypeDef]], Awaitable[list[MessageTypeDef]]]

__all__ = ["SCAN_HOLD_SECONDS", "SqsRepairQueue", "parse_body"]

log = logging.getLogger(__name__)

#: Seconds the dead letters being read are hidden from other readers (then handed back).
SCAN_HOLD_SECONDS = 60
#: SQS limits: messages per receive or batch, seconds of one long poll, of a lease.
_BATCH = 10
_MAX_WAIT = 20
_MAX_VISIBILITY = 12 * 3600
#: The dead-letter reason of a message the redrive policy moved to the DLQ.
REDRIVEN = "redriven"
#: The dead-letter reason of a message whose body is not a repair task.
MALFORMED = "malformed"

# A receipt handle that no longer names a message in flight: the lease is gone.
_LEASE_LOST = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
_NO_QUEUE = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})
_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def parse_body(body: str) -> tuple[uuid.UUID, str]:
    """The session id and reason of a repair message; ConfigurationError if malformed.

    >>> parse_body('{"session_id": "6d5c1bb6-8b5e-4bd6-9d5e-1f1f0c1c2a3b", "reason": "x"}')
    (UUID('6d5c1bb6-8b5e-4bd6-9d5e-1f1f0c1c2a3b'), 'x')
    """
    try:
        data = json.loads(body)
        return uuid.UUID(data["session_id"]), str(data["reason"])
    except (ValueError, TypeError, KeyError, AttributeError):
        # Never echo the body: it is not ours, and may hold anything.
        raise ConfigurationError("not a repair message (a JSON session_id and reason)") from None


def _body(session_id: uuid.UUID, reason: str) -> str:
    return json.dumps({"session_id": str(session_id), "reason": reason})


def _seconds(value: float, what: str) -> int:
    """Whole seconds for SQS, rounded up: a lease is never shorter than asked."""
    if not 0 <= value <= _MAX_VISIBILITY:
        raise ConfigurationError(f"{what} must be between 0 and {_MAX_VISIBILITY} seconds")
    return math.ceil(value)


class SqsRepairQueue(LifecycleMixin):
    """A repair queue on an SQS standard queue with a dead-letter queue.

    Args:
        queue_url: the main queue (a standard queue; FIFO queues are refused).
        dead_letter_url: the DLQ; default: the target of the queue's RedrivePolicy.
        endpoint_url: an SQS-compatible server (default ``SESSIONSTORE_SQS_ENDPOINT``).
        region: default: the one in the queue URL, then ``AWS_REGION``.
        client: a boto3 SQS client to use (not closed by this queue).

    Settings are checked here, before any call: a bad URL or no region raise
    :class:`~sessionstore.ConfigurationError`.
    """

    _lifecycle_name = "repair queue"

    def __init__(
        self,
        queue_url: str,
        *,
        dead_letter_url: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: SQSClient | None = None,
    ) -> None:
        self._settings = sqs_settings(queue_url, endpoint_url=endpoint_url, region=region)
        if dead_letter_url is not None:
            sqs_settings(dead_letter_url)  # the same URL check
        for url in (queue_url, dead_letter_url):
            if url is not None and url.rstrip("/").endswith(".fifo"):
                raise ConfigurationError(
                    "the repair queue must be a standard SQS queue, not a FIFO queue"
                )
        if client is None:
            self._settings.region_name()
        self._url = queue_url
        self._dlq_url = dead_letter_url
        self._client = client
        self._owns_client = client is None
        self._max_receive: int | None = None
        self._dlq_arn: str | None = None
        self._dlq_lock = asyncio.Lock()
        self._pending = 0

    @property
    def url(self) -> str:
        """The main queue's URL."""
        return self._url

    # -- lifecycle -------------------------------------------------------------------

    async def _open(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._settings.client)
        try:
            await self._check_queue()
        except BaseException:
            await self._close()  # the queue stays unopened: release its connections
            raise

    async def _check_queue(self) -> None:
        attrs = await self._attributes(self._url, ["QueueArn", "RedrivePolicy"], "open")
        policy = attrs.get("RedrivePolicy")
        if policy:
            redrive = json.loads(policy)
            self._dlq_arn = str(redrive["deadLetterTargetArn"])
            self._max_receive = int(redrive["maxReceiveCount"])
        elif self._dlq_url is None:
            raise ConfigurationError(
                "the repair queue has no redrive policy: give it a dead-letter queue "
                "(RedrivePolicy) or pass dead_letter_url="
            )
        else:
            log.warning("repair queue without a redrive policy: a crashing message loops")

    async def _close(self) -> None:
        if self._client is not None and self._owns_client:
            client, self._client = self._client, None
            client.close()

    def _sqs(self) -> SQSClient:
        assert self._client is not None
        return self._client

    async def _attributes(self, url: str, names: list[Any], operation: str) -> dict[str, str]:
        try:
            reply = await sqs_call(
                self._sqs().get_queue_attributes, operation, QueueUrl=url, AttributeNames=names
            )
        except SessionStoreError as exc:
            if aws_error_code(exc) in _NO_QUEUE:
                raise ConfigurationError(f"SQS queue {url} does not exist") from exc
            raise
        return {str(name): value for name, value in reply.get("Attributes", {}).items()}

    async def _dead_letter_url(self) -> str:
        """The DLQ's URL: given, or looked up once from the redrive policy's ARN."""
        await self._ensure_open()
        async with self._dlq_lock:
            if self._dlq_url is None:
                assert self._dlq_arn is not None
                # arn:aws:sqs:<region>:<account>:<name>
                *_, account, name = self._dlq_arn.split(":")
                reply = await sqs_call(
                    self._sqs().get_queue_url,
                    "find the dead-letter queue",
                    QueueName=name,
                    QueueOwnerAWSAccountId=account,
                )
                self._dlq_url = reply["QueueUrl"]
            return self._dlq_url

    # -- the queue protocol ----------------------------------------------------------

    async def enqueue(
        self, session_id: uuid.UUID, reason: str, *, delay_seconds: float = 0.0
    ) -> None:
        """Send one message for the session (a session queued twice is two messages).

        ``delay_seconds`` becomes the message's DelaySeconds (rounded up).
        """
        delay = math.ceil(check_delay(delay_seconds))
        await self._ensure_open()
        await sqs_call(
            self._sqs().send_message,
            "enqueue",
            QueueUrl=self._url,
            MessageBody=_body(session_id, reason),
            DelaySeconds=delay,
        )

    async def claim(
        self, limit: int, *, lease_seconds: float = 60.0, wait_seconds: float = 0.0
    ) -> list[RepairTask]:
        """Receive up to ``limit`` messages, hidden for ``lease_seconds``.

        With none ready, long-poll up to ``wait_seconds``. With ``wait_seconds=0`` this
        is a short poll, which on Amazon SQS samples a subset of its servers and may
        answer nothing while a small queue holds messages: poll for a second or more
        when "nothing" must mean empty.
        """
        await self._ensure_open()
        visibility = _seconds(lease_seconds, "lease_seconds")
        deadline = time.monotonic() + wait_seconds
        tasks: list[RepairTask] = []
        while len(tasks) < limit:
            remaining = deadline - time.monotonic()
            # Once some tasks are in hand, only top the batch up; never wait for more.
            wait = 0 if tasks or remaining <= 0 else min(_MAX_WAIT, math.ceil(remaining))
            messages = await self._receive(
                self._url, min(_BATCH, limit - len(tasks)), visibility, wait
            )
            for message in messages:
                task = await self._task(message)
                if task is not None:
                    tasks.append(task)
            if not messages and (tasks or time.monotonic() >= deadline):
                break
        return tasks

    async def _receive(
        self, url: str, count: int, visibility: int, wait: int
    ) -> list[MessageTypeDef]:
        reply = await sqs_call(
            self._sqs().receive_message,
            "receive",
            QueueUrl=url,
            MaxNumberOfMessages=count,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "DeadLetterQueueSourceArn"],
            MessageAttributeNames=["All"],
        )
        return list(reply.get("Messages", []))

    async def _task(self, message: MessageTypeDef) -> RepairTask | None:
        return await self.task_from_message(
            body=message.get("Body", ""),
            receipt_handle=message["ReceiptHandle"],
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            message_id=message.get("MessageId", "?"),
        )

    async def task_from_message(
        self, *, body: str, receipt_handle: str, receive_count: int, message_id: str
    ) -> RepairTask | None:
        """The task of a message received elsewhere (a Lambda event's record).

        A body that is not a repair message is moved to the dead letters at once, and
        None is returned.
        """
        try:
            session_id, reason = parse_body(body)
        except ConfigurationError:
            log.warning("message %s is not a repair task: moved to the dead letters", message_id)
            await self._move_to_dead(
                body, receipt_handle, {"dead_reason": _text(MALFORMED)}, message_id
            )
            return None
        return RepairTask(session_id, reason, max(receive_count - 1, 0), receipt_handle)

    async def ack(self, task: RepairTask) -> None:
        """Delete the message; a lost lease deletes nothing (another worker has it)."""
        await self._ensure_open()
        await self._by_receipt(self._sqs().delete_message, "ack", task.token)

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Hide the message for ``delay_seconds``; its next receive counts the attempt."""
        await self._ensure_open()
        delay = _seconds(delay_seconds, "delay_seconds")
        await self._by_receipt(
            self._sqs().change_message_visibility, "retry", task.token, VisibilityTimeout=delay
        )

    async def dead_letter(self, task: RepairTask, reason: str) -> None:
        """Send the session to the DLQ with ``reason`` and its attempts, then delete it."""
        await self._ensure_open()
        attributes = {"dead_reason": _text(reason), "attempts": _number(task.attempts)}
        await self._move_to_dead(
            _body(task.session_id, task.reason), task.token, attributes, task.session_id
        )

    async def _move_to_dead(
        self,
        body: str,
        receipt_handle: str,
        attributes: Mapping[str, MessageAttributeValueTypeDef],
        what: object,
    ) -> None:
        await sqs_call(
            self._sqs().send_message,
            "dead letter",
            QueueUrl=await self._dead_letter_url(),
            MessageBody=body,
            MessageAttributes=attributes,
        )
        if await self._by_receipt(self._sqs().delete_message, "dead letter", receipt_handle):
            return
        log.warning("dead letter %s: its lease had expired; it may also be repaired", what)

    async def _by_receipt(self, call: Any, operation: str, token: str, **kwargs: Any) -> bool:
        """Call with the receipt handle; False (logged) if the lease was lost."""
        try:
            await sqs_call(call, operation, QueueUrl=self._url, ReceiptHandle=token, **kwargs)
        except SessionStoreError as exc:
            if aws_error_code(exc) not in _LEASE_LOST:
                raise
            log.info("%s: the lease had expired; another claim holds the message", operation)
            return False
        return True

    # -- dead letters ----------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, one per session; the DLQ keeps every message."""
        letters: dict[uuid.UUID, DeadLetter] = {}

        async def look(batch: list[MessageTypeDef]) -> list[MessageTypeDef]:
            for message in batch:
                letter = self._letter(message)
                if letter is not None and len(letters) < limit:
                    letters.setdefault(letter.session_id, letter)
            return []  # hand every message back

        await self._scan_dead(look, enough=lambda: len(letters) >= limit)
        return list(letters.values())

    async def requeue_dead(self, session_ids: Iterable[uuid.UUID] | None = None) -> int:
        """Queue dead letters again (all, or those of ``session_ids``); returns how many
        sessions. Each is sent to the main queue before its dead letters are deleted."""
        wanted = None if session_ids is None else set(session_ids)
        done: set[uuid.UUID] = set()

        async def requeue(batch: list[MessageTypeDef]) -> list[MessageTypeDef]:
            taken: list[MessageTypeDef] = []
            entries: list[SendMessageBatchRequestEntryTypeDef] = []
            for message in batch:
                letter = self._letter(message)
                if letter is None or (wanted is not None and letter.session_id not in wanted):
                    continue
                taken.append(message)
                if letter.session_id not in done:
                    done.add(letter.session_id)
                    _, reason = parse_body(message["Body"])
                    entries.append(
                        {"Id": str(len(entries)), "MessageBody": _body(letter.session_id, reason)}
                    )
            if entries:
                await self._send_batch(entries)
            return taken

        await self._scan_dead(requeue, enough=lambda: False)
        return len(done)

    async def _send_batch(self, entries: list[Any]) -> None:
        reply = await sqs_call(
            self._sqs().send_message_batch, "requeue", QueueUrl=self._url, Entries=entries
        )
        if reply.get("Failed"):
            # Nothing of this batch is deleted from the DLQ: the caller sees the error.
            codes = sorted({f.get("Code", "?") for f in reply["Failed"]})
            raise RepairQueueError(
                f"requeue: {len(reply['Failed'])} messages not sent {codes}", store="sqs"
            )

    def _letter(self, message: MessageTypeDef) -> DeadLetter | None:
        try:
            session_id, _ = parse_body(message.get("Body", ""))
        except ConfigurationError:
            log.warning(
                "dead-letter message %s is not a repair task: delete it by hand",
                message.get("MessageId", "?"),
            )
            return None
        attributes = message.get("MessageAttributes", {})
        reason = attributes.get("dead_reason")
        if reason is None:
            # Moved by the redrive policy: received maxReceiveCount times, never acked.
            return DeadLetter(session_id, REDRIVEN, self._max_receive or 0)
        attempts = attributes.get("attempts")
        count = 0 if attempts is None else int(attempts.get("StringValue", "0"))
        return DeadLetter(session_id, reason.get("StringValue", "?"), count)

    async def _scan_dead(self, visit: _Visit, *, enough: Callable[[], bool]) -> None:
        """Receive the DLQ batch by batch; ``visit(batch)`` returns the messages to delete.

        The others are handed back (visible again) before this returns, or at the latest
        after SCAN_HOLD_SECONDS if this process dies. A 1 s long poll ends the scan: a
        short poll may answer nothing while a small queue still holds messages.
        """
        url = await self._dead_letter_url()
        held: dict[str, str] = {}  # message id -> receipt handle, to hand back
        try:
            while not enough():
                batch = await self._receive(url, _BATCH, SCAN_HOLD_SECONDS, 1)
                fresh = [m for m in batch if m["MessageId"] not in held]
                if not fresh:
                    break  # empty, or the hold ran out and the scan came round again
                for message in fresh:
                    held[message["MessageId"]] = message["ReceiptHandle"]
                delete = await visit(fresh)
                if delete:
                    await self._batch(
                        self._sqs().delete_message_batch,
                        url,
                        [
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(delete)
                        ],
                    )
                    for message in delete:
                        held.pop(message["MessageId"])
        finally:
            handles = list(held.values())
            for start in range(0, len(handles), _BATCH):
                entries = [
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                    for i, h in enumerate(handles[start : start + _BATCH])
                ]
                await self._batch(self._sqs().change_message_visibility_batch, url, entries)

    async def _batch(self, call: Any, url: str, entries: list[Any]) -> None:
        reply = await sqs_call(call, "dead letters", QueueUrl=url, Entries=entries)
        if reply.get("Failed"):
            # A delete that failed leaves a duplicate dead letter (re-queued again later,
            # harmlessly); a hand-back that failed ends with the hold. Neither loses one.
            log.warning("dead letters: %d batch entries failed", len(reply["Failed"]))

    # -- counts ----------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counts from both queues' attributes (approximate on Amazon SQS)."""
        await self._ensure_open()
        main, dead = await asyncio.gather(
            self._attributes(self._url, list(_COUNTS), "stats"),
            self._attributes(await self._dead_letter_url(), list(_COUNTS), "stats"),
        )
        ready = int(main.get(_COUNTS[0], 0))
        waiting = int(main.get(_COUNTS[1], 0)) + int(main.get(_COUNTS[2], 0))
        stats = QueueStats(ready, waiting, sum(int(dead.get(name, 0)) for name in _COUNTS))
        self._pending = stats.pending
        return stats

    async def depth(self) -> int:
        """Messages still to process in the main queue."""
        return (await self.stats()).pending

    def cached_depth(self) -> int:
        """The queue-wide pending count as of this process's last ``stats()`` (no I/O).

        A service process that only enqueues never reads it: chart the queue's own
        CloudWatch metrics for a fleet (docs/jobs.md).
        """
        return self._pending


def _text(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


def _number(value: int) -> MessageAttributeValueTypeDef:
    return {"DataType": "Number", "StringValue": str(value)}
