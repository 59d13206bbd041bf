"""The repair queue's Lambda handler on the real servers: SQS-shaped events built from
messages received from ElasticMQ, repaired against the real Cassandra and FerretDB.

The handler keeps its own event loop (as in a Lambda container), so these are plain
functions that prepare the stores with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sessionstore import ConfigurationError, SqsRepairQueue, StoredRecord
from sessionstore.backends.cassandra import CassandraBackend
from sessionstore.backends.documentdb import DocumentDBBackend
from sessionstore.repair import handler
from sessionstore.revision import wall_clock_us
from tests.helpers import make_session
from tests.real.cassandra_store import TEST_KEYSPACE, session_execute, shared_session
from tests.real.documentdb_store import TEST_DATABASE, new_client
from tests.real.jobs_support import Names, create_names, drop_names, seed_cassandra
from tests.real.servers import SQS_REGION
from tests.real.sqs import SqsQueue, fresh_queue

pytestmark = pytest.mark.real


@pytest.fixture
def wired(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Names, SqsQueue, collections.Counter[str]]]:
    """A fresh table, collection and queue; the function's environment names them.

    Yields a counter of how often each kind of connection was opened.
    """
    names = asyncio.run(create_names())
    opened: collections.Counter[str] = collections.Counter()
    for cls in (CassandraBackend, DocumentDBBackend, SqsRepairQueue):
        original = cls._open

        async def counting(self: Any, _original: Any = original, _name: str = cls.__name__) -> None:
            opened[_name] += 1
            await _original(self)

        monkeypatch.setattr(cls, "_open", counting)
    with fresh_queue(max_receive_count=5) as sqs:
        env = {
            **names.env(),
            **sqs.env(),
            "SESSIONSTORE_REPAIR_RETRY_DELAY": "30",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            yield names, sqs, opened
        finally:
            handler.close()
            asyncio.run(drop_names(names))


def _event(sqs: SqsQueue, ids: list[uuid.UUID]) -> dict[str, Any]:
    """Queue ``ids``, receive them from the server, and wrap them as Lambda does."""
    for sid in ids:
        sqs.client.send_message(
            QueueUrl=sqs.url,
            MessageBody=f'{{"session_id": "{sid}", "reason": "secondary_write_failed"}}',
        )
    arn = sqs.client.get_queue_attributes(QueueUrl=sqs.url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    messages: list[Any] = []
    while len(messages) < len(ids):
        reply = sqs.client.receive_message(
            QueueUrl=sqs.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=60,  # the function's timeout, as the event source sets it
            MessageSystemAttributeNames=["All"],
        )
        messages += reply.get("Messages", [])
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": SQS_REGION,
            }
            for m in messages
        ]
    }


def _message_id(event: dict[str, Any], sid: uuid.UUID) -> str:
    [record] = [r for r in event["Records"] if str(sid) in r["body"]]
    return str(record["messageId"])


def _stats(sqs: SqsQueue) -> tuple[int, int, int]:
    attrs = sqs.client.get_queue_attributes(
        QueueUrl=sqs.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    dead = sqs.client.get_queue_attributes(
        QueueUrl=sqs.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        int(dead["ApproximateNumberOfMessages"]),
    )


async def _documentdb_revisions(names: Names) -> dict[uuid.UUID, int]:
    # A raw client: the backends' opens are what the test counts.
    client = new_client()
    try:
        collection = client[TEST_DATABASE][names.collection]
        docs = await collection.find({}, {"_id": 1, "revision": 1}).to_list()
    finally:
        await client.close()
    return {d["_id"]: d["revision"] for d in docs}


async def _corrupt_row(names: Names) -> uuid.UUID:
    """A Cassandra row that another service wrote with a status no session has."""
    sid = uuid.uuid4()
    session = await shared_session()
    await session_execute(
        session,
        f"INSERT INTO {TEST_KEYSPACE}.{names.table} (session_id, status, revision) "
        f"VALUES ({sid}, 'bogus', {wall_clock_us()})",
    )
    return sid


def test_the_handler_repairs_an_event_and_keeps_its_connections_warm(
    wired: tuple[Names, SqsQueue, collections.Counter[str]],
) -> None:
    names, sqs, opened = wired
    now = wall_clock_us()
    records = [StoredRecord.of(make_session(revision=now + i)) for i in range(4)]
    asyncio.run(seed_cassandra(names.table, records))
    ids = [r.session_id for r in records]

    # Cold start: three sessions whose DocumentDB write had failed.
    assert handler.handler(_event(sqs, ids[:3]), None) == {"batchItemFailures": []}
    assert asyncio.run(_documentdb_revisions(names)) == {
        r.session_id: r.revision for r in records[:3]
    }
    assert _stats(sqs) == (0, 0, 0)
    assert opened == {"CassandraBackend": 1, "DocumentDBBackend": 1, "SqsRepairQueue": 1}

    # Warm: the same connections serve the next event, in which one record fails.
    corrupt = asyncio.run(_corrupt_row(names))
    event = _event(sqs, [ids[3], corrupt])
    assert handler.handler(event, None) == {
        "batchItemFailures": [{"itemIdentifier": _message_id(event, corrupt)}]
    }
    assert opened == {"CassandraBackend": 1, "DocumentDBBackend": 1, "SqsRepairQueue": 1}
    revisions = asyncio.run(_documentdb_revisions(names))
    assert revisions == {r.session_id: r.revision for r in records}
    # The failed record waits out its back-off in the queue; nothing became a dead letter.
    assert _stats(sqs) == (0, 1, 0)


def test_the_handler_refuses_an_event_of_another_queue(
    wired: tuple[Names, SqsQueue, collections.Counter[str]],
) -> None:
    _, sqs, _ = wired
    event = _event(sqs, [uuid.uuid4()])
    for record in event["Records"]:
        record["eventSourceARN"] = "arn:aws:sqs:us-east-1:000000000000:another-queue"
    with pytest.raises(ConfigurationError, match="another queue"):
        handler.handler(event, None)
