"""``sessionstore check`` against the real stores and ElasticMQ: read-only, and a frozen store.

``main()`` runs in-process, so these are plain functions using ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sessionstore import SqsRepairQueue
from tests.real.cassandra_store import TEST_KEYSPACE, session_execute, shared_session
from tests.real.documentdb_store import TEST_DATABASE, new_client
from tests.real.jobs_support import Names, create_names, drop_names
from tests.real.pair import servers
from tests.real.sqs import SqsQueue, fresh_queue

pytestmark = pytest.mark.real


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Names, SqsQueue]]:
    """A fresh table (empty), a collection name not yet created, and an SQS queue."""
    names = asyncio.run(create_names())
    with fresh_queue() as sqs:
        env = {
            **names.env(),
            **sqs.env(),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("LAUNCHDARKLY_SDK_KEY", raising=False)
        try:
            yield names, sqs
        finally:
            asyncio.run(drop_names(names))


async def _what_is_stored(names: Names) -> tuple[int, bool]:
    """Rows in the table, and whether the collection exists."""
    session = await shared_session()
    rows = await session_execute(session, f"SELECT count(*) FROM {TEST_KEYSPACE}.{names.table}")
    client = new_client()
    try:
        exists = names.collection in await client[TEST_DATABASE].list_collection_names()
    finally:
        await client.close()
    return rows[0][0], exists


async def _queue(sqs: SqsQueue, ids: list[uuid.UUID]) -> None:
    async with SqsRepairQueue(sqs.url) as queue:
        for sid in ids:
            await queue.enqueue(sid, "secondary_write_failed")


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    from sessionstore.cli.main import main

    code = main(["check", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_check_reports_both_stores_and_the_queue_and_writes_nothing(
    wired: tuple[Names, SqsQueue], capsys: pytest.CaptureFixture[str]
) -> None:
    names, sqs = wired
    asyncio.run(_queue(sqs, [uuid.uuid4(), uuid.uuid4()]))
    code, report = _check(capsys)
    assert code == 0, report
    assert report["result"] == "HEALTHY"
    assert all(h["reachable"] for h in report["stores"].values())
    assert report["repair_queue"]["ready"] + report["repair_queue"]["waiting"] == 2
    # Read-only: the table gained no row, the collection was not even created, and the
    # queue's two messages are still there to receive.
    assert asyncio.run(_what_is_stored(names)) == (0, False)
    received = sqs.client.receive_message(
        QueueUrl=sqs.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    assert len(received) == 2


def test_check_reports_a_frozen_store_within_its_timeout(
    wired: tuple[Names, SqsQueue], capsys: pytest.CaptureFixture[str]
) -> None:
    names, _ = wired
    servers("freeze", "ferretdb")
    try:
        start = time.monotonic()
        code, report = _check(capsys, "--timeout", "1")
        waited = time.monotonic() - start
    finally:
        servers("thaw", "ferretdb")
    assert code == 3
    documentdb = report["stores"]["documentdb"]
    assert (documentdb["reachable"], documentdb["error"]) == (False, "DeadlineExceeded")
    assert report["stores"]["cassandra"]["reachable"] is True
    assert waited < 1 + 10  # the probe's timeout, plus connecting to Cassandra
    assert asyncio.run(_what_is_stored(names)) == (0, False)
