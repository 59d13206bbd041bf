"""What the SQS repair queue does beyond the queue contract, on the real server (ElasticMQ).

The contract itself runs in tests/contract/test_queue_contract.py (the ``sqs`` kind).
Here: what a message holds, messages the redrive policy moved, malformed messages, the
dead-letter queue read without losing anything, a lease lost before the acknowledgement,
and the checks made when the queue is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sessionstore import ConfigurationError, DeadLetter, SqsRepairQueue
from tests.real.sqs import SqsQueue, fresh_queue, sqs_client

pytestmark = pytest.mark.real


@contextlib.asynccontextmanager
async def opened(sqs: SqsQueue, **options: Any) -> AsyncIterator[SqsRepairQueue]:
    client = sqs_client()
    try:
        async with SqsRepairQueue(sqs.url, client=client, **options) as queue:
            yield queue
    finally:
        client.close()


def raw_receive(sqs: SqsQueue, *, dlq: bool = False) -> list[Any]:
    reply = sqs.client.receive_message(
        QueueUrl=sqs.dlq_url if dlq else sqs.url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        VisibilityTimeout=0,  # only a look: leave the messages where they are
        MessageAttributeNames=["All"],
    )
    return list(reply.get("Messages", []))


async def test_a_message_holds_the_session_id_and_the_reason_only(sqs_queue: SqsQueue) -> None:
    sid = uuid.uuid4()
    async with opened(sqs_queue) as queue:
        await queue.enqueue(sid, "secondary_write_failed")
    [message] = raw_receive(sqs_queue)
    assert json.loads(message["Body"]) == {
        "session_id": str(sid),
        "reason": "secondary_write_failed",
    }
    assert "MessageAttributes" not in message


@pytest.mark.parametrize("sqs_queue", [{"max_receive_count": 2}], indirect=True)
async def test_messages_moved_by_the_redrive_policy_are_dead_letters(sqs_queue: SqsQueue) -> None:
    # A worker that crashed twice on the message (its leases ran out, no ack).
    sid = uuid.uuid4()
    async with opened(sqs_queue) as queue:
        await queue.enqueue(sid, "read_stale")
        for attempt in range(2):
            [task] = await queue.claim(1, lease_seconds=1)
            assert task.attempts == attempt
            await asyncio.sleep(1.5)
        assert await queue.claim(1, wait_seconds=1) == []  # redriven, not delivered
        assert await queue.dead_letters() == [DeadLetter(sid, "redriven", 2)]
        stats = await queue.stats()
        assert (stats.pending, stats.dead) == (0, 1)
        assert await queue.requeue_dead() == 1
        [task] = await queue.claim(1)
        assert (task.session_id, task.reason, task.attempts) == (sid, "read_stale", 0)
        await queue.ack(task)
        assert (await queue.stats()).drained


async def test_a_malformed_message_is_moved_to_the_dead_letters_at_once(
    sqs_queue: SqsQueue,
) -> None:
    sqs_queue.client.send_message(QueueUrl=sqs_queue.url, MessageBody="not a repair")
    async with opened(sqs_queue) as queue:
        assert await queue.claim(10, wait_seconds=1) == []
        stats = await queue.stats()
        assert (stats.pending, stats.dead) == (0, 1)
        assert await queue.dead_letters() == []  # not a session: nothing to list by id
    [dead] = raw_receive(sqs_queue, dlq=True)
    assert dead["Body"] == "not a repair"
    assert dead["MessageAttributes"]["dead_reason"]["StringValue"] == "malformed"


async def test_reading_dead_letters_keeps_every_one_and_requeues_only_those_named(
    sqs_queue: SqsQueue,
) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    async with opened(sqs_queue) as queue:
        for sid in ids:
            await queue.enqueue(sid, "x")
        for task in await queue.claim(10):
            await queue.dead_letter(task, "conflict")
        assert len(await queue.dead_letters(limit=2)) == 2
        letters = await queue.dead_letters()
        assert sorted(d.session_id for d in letters) == sorted(ids)
        assert {(d.reason, d.attempts) for d in letters} == {("conflict", 0)}
        assert (await queue.stats()).dead == 5  # looking took nothing away

        assert await queue.requeue_dead([ids[0]]) == 1
        # The others were handed back at once, not after the scan's hold.
        assert sorted(d.session_id for d in await queue.dead_letters()) == sorted(ids[1:])
        assert [t.session_id for t in await queue.claim(10)] == [ids[0]]


async def test_a_session_dead_lettered_twice_is_listed_and_requeued_once(
    sqs_queue: SqsQueue,
) -> None:
    sid = uuid.uuid4()
    async with opened(sqs_queue) as queue:
        for _ in range(2):
            await queue.enqueue(sid, "x")
        for task in await queue.claim(10):
            await queue.dead_letter(task, "possibly_deleted")
        assert (await queue.stats()).dead == 2
        assert [d.session_id for d in await queue.dead_letters()] == [sid]
        assert await queue.requeue_dead([sid]) == 1
        stats = await queue.stats()
        assert (stats.ready, stats.dead) == (1, 0)


async def test_an_ack_after_the_lease_ran_out_leaves_the_message_to_the_new_claim(
    sqs_queue: SqsQueue,
) -> None:
    sid = uuid.uuid4()
    async with opened(sqs_queue) as queue:
        await queue.enqueue(sid, "x")
        [slow] = await queue.claim(1, lease_seconds=1)
        await asyncio.sleep(1.5)
        [fast] = await queue.claim(1)
        await queue.ack(slow)  # too late: the message is the other worker's now
        await queue.retry(slow, delay_seconds=0)  # no effect either
        assert (await queue.stats()).pending == 1
        await queue.ack(fast)
        assert (await queue.stats()).drained


async def test_opening_checks_the_queue_and_its_dead_letter_queue(sqs_queue: SqsQueue) -> None:
    missing = sqs_queue.url + "-missing"
    with pytest.raises(ConfigurationError, match="does not exist"):
        async with opened(dataclasses.replace(sqs_queue, url=missing)):
            pass
    # A queue without a redrive policy: dead letters would have nowhere to go.
    client = sqs_queue.client
    bare = client.create_queue(QueueName=f"sessionstore-test-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    try:
        with pytest.raises(ConfigurationError, match="no redrive policy"):
            async with SqsRepairQueue(bare, client=client):
                pass
        # ... unless a dead-letter queue is named.
        async with SqsRepairQueue(bare, dead_letter_url=sqs_queue.dlq_url, client=client) as q:
            await q.enqueue(uuid.uuid4(), "x")
            [task] = await q.claim(1)
            await q.dead_letter(task, "conflict")
            assert (await q.stats()).dead == 1
    finally:
        client.delete_queue(QueueUrl=bare)


def test_a_queue_of_another_server_is_reached_through_its_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the command line builds it: the endpoint from SESSIONSTORE_SQS_ENDPOINT, the
    # region and credentials from the usual AWS variables.
    from tests.real.sqs import sqs_env

    for name, value in sqs_env().items():
        monkeypatch.setenv(name, value)

    async def round_trip(url: str) -> list[uuid.UUID]:
        sid = uuid.uuid4()
        async with SqsRepairQueue(url) as queue:
            await queue.enqueue(sid, "x")
            return [sid, *(t.session_id for t in await queue.claim(1, wait_seconds=1))]

    with fresh_queue() as sqs:
        sid, claimed = asyncio.run(round_trip(sqs.url))
    assert claimed == sid
