"""The SQS behaviour the repair queue and the backfill fan-out will rely on, on a real server.

ElasticMQ (``scripts/servers up elasticmq``) stands in for Amazon SQS; boto3 reaches it by
its endpoint URL. Each test has fresh queues (``tests/real/sqs.py``) with visibility
timeouts of a second or two, so the file runs in seconds.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.real.sqs import SqsQueue, fresh_queue, sqs_client

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, MessageTypeDef

pytestmark = pytest.mark.real


def receive(queue: SqsQueue, *, wait: int = 0, dlq: bool = False) -> list[MessageTypeDef]:
    """Up to 10 messages with all their attributes, long-polling for ``wait`` seconds."""
    reply = queue.client.receive_message(
        QueueUrl=queue.dlq_url if dlq else queue.url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    return reply.get("Messages", [])


def receive_count(message: MessageTypeDef) -> int:
    return int(message["Attributes"]["ApproximateReceiveCount"])


def test_send_receive_delete(sqs_queue: SqsQueue) -> None:
    sent = sqs_queue.client.send_message(QueueUrl=sqs_queue.url, MessageBody="repair s-1")

    [message] = receive(sqs_queue, wait=2)
    assert message["MessageId"] == sent["MessageId"]
    assert message["Body"] == "repair s-1"
    sqs_queue.client.delete_message(QueueUrl=sqs_queue.url, ReceiptHandle=message["ReceiptHandle"])

    # deleted for good: it does not come back once its visibility timeout is over
    assert receive(sqs_queue, wait=sqs_queue.visibility_timeout + 1) == []


@pytest.mark.parametrize("sqs_queue", [{"visibility_timeout": 2}], indirect=True)
def test_a_received_message_is_invisible_until_its_visibility_timeout_ends(
    sqs_queue: SqsQueue,
) -> None:
    sqs_queue.client.send_message(QueueUrl=sqs_queue.url, MessageBody="repair s-1")
    [first] = receive(sqs_queue, wait=2)
    received_at = time.monotonic()

    assert receive(sqs_queue, wait=1) == []  # another consumer polls and gets nothing
    [again] = receive(sqs_queue, wait=5)
    back_after = time.monotonic() - received_at

    assert again["MessageId"] == first["MessageId"]
    assert receive_count(again) == 2
    assert again["ReceiptHandle"] != first["ReceiptHandle"]
    assert back_after >= sqs_queue.visibility_timeout - 0.2  # not before the timeout


@pytest.mark.parametrize("sqs_queue", [{"max_receive_count": 10}], indirect=True)
def test_change_message_visibility_extends_and_releases(sqs_queue: SqsQueue) -> None:
    client = sqs_queue.client
    client.send_message(QueueUrl=sqs_queue.url, MessageBody="repair s-1")
    [first] = receive(sqs_queue, wait=2)

    # a slow consumer extends its hold: past the queue's 1 s timeout, nobody else sees it
    client.change_message_visibility(
        QueueUrl=sqs_queue.url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=3
    )
    assert receive(sqs_queue, wait=2) == []
    [second] = receive(sqs_queue, wait=3)
    assert second["MessageId"] == first["MessageId"]

    # a failing consumer hands it back at once
    client.change_message_visibility(
        QueueUrl=sqs_queue.url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0
    )
    [third] = receive(sqs_queue)
    assert third["MessageId"] == first["MessageId"]
    assert receive_count(third) == 3


@pytest.mark.parametrize("max_receive_count", [1, 3])
def test_a_message_moves_to_the_dead_letter_queue_after_max_receive_count(
    max_receive_count: int,
) -> None:
    # a long visibility timeout: only the explicit hand-back below makes the message visible
    with fresh_queue(max_receive_count=max_receive_count, visibility_timeout=30) as queue:
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            "session_id": {"DataType": "String", "StringValue": "s-1"}
        }
        sent = queue.client.send_message(
            QueueUrl=queue.url, MessageBody="repair s-1", MessageAttributes=attributes
        )
        for attempt in range(1, max_receive_count + 1):
            [message] = receive(queue, wait=1)
            assert receive_count(message) == attempt
            queue.client.change_message_visibility(
                QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )

        assert receive(queue, wait=1) == []  # one receive too many: redriven, not delivered
        [dead] = receive(queue, wait=2, dlq=True)
        assert dead["MessageId"] == sent["MessageId"]
        assert dead["Body"] == "repair s-1"
        assert dead["MessageAttributes"] == attributes


def test_message_attributes_round_trip(sqs_queue: SqsQueue) -> None:
    attributes: dict[str, MessageAttributeValueTypeDef] = {
        "session_id": {"DataType": "String", "StringValue": "s-ü-1 ✓"},
        "revision": {"DataType": "Number", "StringValue": "1733212345678901"},
        "weight": {"DataType": "Number.float", "StringValue": "1.50"},
        "digest": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
        "kind": {"DataType": "String.repair", "StringValue": "documentdb"},
    }
    sqs_queue.client.send_message(
        QueueUrl=sqs_queue.url, MessageBody="repair s-1", MessageAttributes=attributes
    )

    [message] = receive(sqs_queue, wait=2)
    assert message["MessageAttributes"] == attributes


def test_long_polling_returns_as_soon_as_a_message_arrives(sqs_queue: SqsQueue) -> None:
    sender = sqs_client()
    timer = threading.Timer(
        1.0, lambda: sender.send_message(QueueUrl=sqs_queue.url, MessageBody="late")
    )
    started = time.monotonic()
    timer.start()
    try:
        messages = receive(sqs_queue, wait=20)
    finally:
        timer.join()
    waited = time.monotonic() - started

    assert [m["Body"] for m in messages] == ["late"]
    assert waited < 10  # returned on arrival (about 1 s), not at the end of the 20 s wait
