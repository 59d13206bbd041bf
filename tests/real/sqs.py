"""Fresh SQS queues on the real SQS-compatible server (ElasticMQ in this repo), via boto3.

Every queue gets a unique name ``sessionstore-test-<12 hex>`` and its own dead-letter
queue ``<name>-dlq``, wired by a redrive policy; both are deleted afterwards, so tests
never see each other's messages (and never reuse a name, which real SQS refuses for 60 s
after a delete).

    with fresh_queue(max_receive_count=2, visibility_timeout=1) as queue:
        queue.client.send_message(QueueUrl=queue.url, MessageBody="...")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from tests.real.servers import SQS_ENDPOINT, SQS_REGION

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def sqs_client() -> SQSClient:
    """A boto3 SQS client for the test server (dummy credentials: ElasticMQ checks none)."""
    return boto3.client(
        "sqs",
        endpoint_url=SQS_ENDPOINT,
        region_name=SQS_REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def sqs_env() -> dict[str, str]:
    """The variables that point the library's SQS pieces (as the command line builds
    them) at the test server: its endpoint, region and dummy credentials."""
    return {
        "SESSIONSTORE_SQS_ENDPOINT": SQS_ENDPOINT,
        "AWS_DEFAULT_REGION": SQS_REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }


@dataclasses.dataclass(frozen=True)
class SqsQueue:
    """A standard queue, its dead-letter queue, and the client that made them."""

    client: SQSClient
    url: str
    dlq_url: str
    max_receive_count: int
    visibility_timeout: int

    def env(self) -> dict[str, str]:
        """:func:`sqs_env`, and this queue as the repair queue (``SESSIONSTORE_REPAIR_QUEUE``)."""
        return {"SESSIONSTORE_REPAIR_QUEUE": self.url, **sqs_env()}


@contextlib.contextmanager
def fresh_queue(
    *, max_receive_count: int = 3, visibility_timeout: int = 1, client: SQSClient | None = None
) -> Iterator[SqsQueue]:
    """A new standard queue whose messages move to its DLQ after ``max_receive_count`` receives.

    ``visibility_timeout`` (seconds) is the queue's default; both queues are deleted on exit.
    """
    client = client or sqs_client()
    name = f"sessionstore-test-{uuid.uuid4().hex[:12]}"
    dlq_url = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    try:
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        url = client.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(visibility_timeout),
                "RedrivePolicy": json.dumps(redrive),
            },
        )["QueueUrl"]
        try:
            yield SqsQueue(client, url, dlq_url, max_receive_count, visibility_timeout)
        finally:
            _delete_quietly(client, url)
    finally:
        _delete_quietly(client, dlq_url)


def _delete_quietly(client: SQSClient, url: str) -> None:
    # a failed clean-up must not hide the test's own outcome
    with contextlib.suppress(BotoCoreError, ClientError):
        client.delete_queue(QueueUrl=url)
