"""The repair queue contract: written once, run against every queue implementation.

What the repository and the worker rely on: a queued session is claimed until it is
acknowledged or dead-lettered; a claim is a lease that expires; a session queued again
while it is being repaired is not lost by the acknowledgement of the older claim; a
failed attempt is counted; dead letters are kept by id until re-queued; and the stats
tell "drained" from "still pending".
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sessionstore import ConfigurationError, RepairQueue, RepositoryClosedError
from tests.queues import QueueHandle


async def claim_all(queue: RepairQueue, *, lease_seconds: float = 60.0) -> list[uuid.UUID]:
    tasks = await queue.claim(100, lease_seconds=lease_seconds)
    return [t.session_id for t in tasks]


async def test_enqueued_session_is_claimed_then_acked(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "secondary_write_failed")
    [task] = await queue.claim(10)
    assert task.session_id == sid
    assert task.reason == "secondary_write_failed"
    assert task.attempts == 0
    assert await queue.claim(10) == []  # leased
    await queue.ack(task)
    stats = await queue.stats()
    assert stats.drained
    assert await queue.claim(10) == []


async def test_claim_respects_the_limit_and_returns_each_session_once(
    repair_queue: QueueHandle,
) -> None:
    queue = repair_queue.queue
    ids = {uuid.uuid4() for _ in range(7)}
    for sid in ids:
        await queue.enqueue(sid, "x")
    first = await queue.claim(3)
    assert len(first) <= 3
    seen = [t.session_id for t in first]
    for _ in range(10):
        seen += [t.session_id for t in await queue.claim(3)]
        if set(seen) == ids:
            break
    assert sorted(seen) == sorted(ids)


async def test_requeue_during_processing_is_not_lost(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "secondary_write_failed")
    [task] = await queue.claim(10)
    await queue.enqueue(sid, "secondary_write_failed")  # a new failure while repairing
    await queue.ack(task)  # acknowledges the older claim only
    assert (await queue.stats()).pending >= 1
    assert sid in await claim_all(queue)


async def test_dead_letter_during_a_requeue_keeps_the_session_pending(
    repair_queue: QueueHandle,
) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "read_stale")
    [task] = await queue.claim(10)
    await queue.enqueue(sid, "secondary_write_failed")
    await queue.dead_letter(task, "conflict")
    assert sid in await claim_all(queue)


async def test_an_expired_lease_returns_the_task(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "x")
    [_] = await queue.claim(1, lease_seconds=repair_queue.short_lease)
    assert await queue.claim(1) == []
    await asyncio.sleep(repair_queue.short_lease + repair_queue.slack)
    [again] = await queue.claim(1)
    assert again.session_id == sid


async def test_retry_counts_the_attempt_and_waits_out_the_delay(
    repair_queue: QueueHandle,
) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "x")
    [task] = await queue.claim(1)
    await queue.retry(task, delay_seconds=repair_queue.short_lease)
    stats = await queue.stats()
    assert (stats.ready, stats.waiting) == (0, 1)
    assert not stats.drained
    assert await queue.claim(1) == []
    await asyncio.sleep(repair_queue.short_lease + repair_queue.slack)
    [retried] = await queue.claim(1)
    assert retried.session_id == sid
    assert retried.attempts == task.attempts + 1


async def test_dead_letters_are_kept_by_id_and_can_be_requeued(
    repair_queue: QueueHandle,
) -> None:
    queue = repair_queue.queue
    dead, alive = uuid.uuid4(), uuid.uuid4()
    await queue.enqueue(dead, "read_content_mismatch")
    await queue.enqueue(alive, "x")
    tasks = {t.session_id: t for t in await queue.claim(10)}
    await queue.dead_letter(tasks[dead], "conflict")
    await queue.ack(tasks[alive])
    stats = await queue.stats()
    assert (stats.pending, stats.dead) == (0, 1)
    assert not stats.drained
    [letter] = await queue.dead_letters()
    assert (letter.session_id, letter.reason) == (dead, "conflict")
    assert await queue.claim(10) == []  # a dead letter is never claimed
    assert await queue.requeue_dead([dead]) == 1
    assert (await queue.stats()).dead == 0
    [task] = await queue.claim(10)
    assert task.session_id == dead
    await queue.ack(task)
    assert (await queue.stats()).drained


async def test_requeue_dead_without_ids_requeues_all(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    ids = {uuid.uuid4() for _ in range(3)}
    for sid in ids:
        await queue.enqueue(sid, "x")
    for task in await queue.claim(10):
        await queue.dead_letter(task, "gave_up:BackendUnavailableError")
    assert {d.session_id for d in await queue.dead_letters()} == ids
    assert await queue.requeue_dead() == 3
    assert set(await claim_all(queue)) == ids


async def test_stats_tell_ready_from_waiting(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    for _ in range(3):
        await queue.enqueue(uuid.uuid4(), "x")
    await queue.claim(1)
    stats = await queue.stats()
    assert (stats.ready, stats.waiting, stats.dead) == (2, 1, 0)
    assert stats.pending == await queue.depth() == 3


async def test_a_closed_queue_refuses_calls(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    await queue.aclose()
    with pytest.raises(RepositoryClosedError):
        await queue.enqueue(uuid.uuid4(), "x")


async def test_a_waiting_claim_returns_as_soon_as_a_task_is_queued(
    repair_queue: QueueHandle,
) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    assert await queue.claim(1, wait_seconds=repair_queue.short_lease) == []

    async def enqueue_later() -> None:
        await asyncio.sleep(repair_queue.short_lease)
        await queue.enqueue(sid, "x")

    loop = asyncio.get_running_loop()
    started = loop.time()
    _, tasks = await asyncio.gather(enqueue_later(), queue.claim(1, wait_seconds=30))
    assert [t.session_id for t in tasks] == [sid]
    assert loop.time() - started < 10  # long before the 30 s the claim was allowed


async def test_a_delayed_task_is_not_claimed_before_its_delay(repair_queue: QueueHandle) -> None:
    queue = repair_queue.queue
    sid = uuid.uuid4()
    await queue.enqueue(sid, "write_interrupted", delay_seconds=repair_queue.short_lease)
    stats = await queue.stats()
    assert (stats.ready, stats.waiting) == (0, 1)  # pending, not drained
    assert await queue.claim(1) == []
    await asyncio.sleep(repair_queue.short_lease + repair_queue.slack)
    [task] = await queue.claim(1)
    assert task.session_id == sid


async def test_an_enqueue_delay_out_of_range_is_refused(repair_queue: QueueHandle) -> None:
    for bad in (-1.0, 901.0):
        with pytest.raises(ConfigurationError):
            await repair_queue.queue.enqueue(uuid.uuid4(), "x", delay_seconds=bad)
