"""``sessionstore repair`` on an SQS queue URL, against the real stores and ElasticMQ:
a one-off drain, and ``--follow`` exiting 1 on a poisoned session after its attempts.

``main()`` runs in-process, so these are plain functions using ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sessionstore import SqsRepairQueue, StoredRecord
from sessionstore.cli.main import main
from sessionstore.revision import wall_clock_us
from tests.helpers import make_session
from tests.real.cassandra_store import TEST_KEYSPACE, session_execute, shared_session
from tests.real.jobs_support import Names, create_names, drop_names, open_pair, seed_cassandra
from tests.real.sqs import SqsQueue, fresh_queue

pytestmark = pytest.mark.real


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Names, SqsQueue]]:
    names = asyncio.run(create_names())
    with fresh_queue(max_receive_count=5) as sqs:
        env = {
            **names.env(),
            **sqs.env(),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            yield names, sqs
        finally:
            asyncio.run(drop_names(names))


async def _queue(sqs: SqsQueue, ids: list[uuid.UUID]) -> None:
    async with SqsRepairQueue(sqs.url) as queue:
        for sid in ids:
            await queue.enqueue(sid, "secondary_write_failed")


async def _corrupt_row(names: Names) -> uuid.UUID:
    """A Cassandra row that another service wrote with a status no session has: every
    repair of it fails (the row cannot be decoded)."""
    sid = uuid.uuid4()
    session = await shared_session()
    await session_execute(
        session,
        f"INSERT INTO {TEST_KEYSPACE}.{names.table} (session_id, status, revision) "
        f"VALUES ({sid}, 'bogus', {wall_clock_us()})",
    )
    return sid


async def _documentdb(names: Names, ids: list[uuid.UUID]) -> list[int | None]:
    async with open_pair(names) as pair:
        return [r and r.revision for r in [await pair.documentdb.get(sid) for sid in ids]]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_repair_drains_an_sqs_queue(
    wired: tuple[Names, SqsQueue], capsys: pytest.CaptureFixture[str]
) -> None:
    names, sqs = wired
    now = wall_clock_us()
    records = [StoredRecord.of(make_session(revision=now + i)) for i in range(5)]
    asyncio.run(seed_cassandra(names.table, records))
    ids = [r.session_id for r in records]
    asyncio.run(_queue(sqs, [*ids, ids[0]]))  # one session queued twice: two messages

    code, report = _run(["repair", "--queue", sqs.url], capsys)
    assert code == 0, report
    assert report["queued_before"] == 6
    # Both messages of the session may be in one batch: each repair then copies it.
    assert report["copied"] + report["in_sync"] == 6
    assert report["copied"] >= 5
    assert report["remaining"] == {"ready": 0, "waiting": 0, "dead": 0}
    assert asyncio.run(_documentdb(names, ids)) == [r.revision for r in records]


def test_repair_follow_exits_1_on_a_poisoned_session_and_leaves_it_a_dead_letter(
    wired: tuple[Names, SqsQueue], capsys: pytest.CaptureFixture[str]
) -> None:
    names, sqs = wired
    [good] = [StoredRecord.of(make_session(revision=wall_clock_us()))]
    asyncio.run(seed_cassandra(names.table, [good]))
    poisoned = asyncio.run(_corrupt_row(names))
    asyncio.run(_queue(sqs, [good.session_id, poisoned]))

    follow = ["repair", "--follow", "--poll-seconds", "1", "--retry-delay", "1"]
    code, report = _run([*follow, "--max-attempts", "2"], capsys)
    assert code == 1
    assert report["result"].startswith("GAVE UP")
    assert (report["copied"], report["failed"], report["gave_up"]) == (1, 1, 1)
    assert report["dead_letters"] == [
        {"session_id": str(poisoned), "reason": "gave_up:BackendError", "attempts": 1}
    ]
    assert asyncio.run(_documentdb(names, [good.session_id])) == [good.revision]

    # The dead letter stays in the DLQ, listed by id, until someone re-queues it.
    code, listed = _run(["repair", "--dead-letters"], capsys)
    assert code == 1
    assert [d["session_id"] for d in listed["dead_letters"]] == [str(poisoned)]
    assert listed["remaining"] == {"ready": 0, "waiting": 0, "dead": 1}
