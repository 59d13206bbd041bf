"""A column of a saved session updated in Cassandra by another service.

For example ``UPDATE sessions SET status = 'graded' WHERE session_id = ?``, with the
server's timestamp or a later ``USING TIMESTAMP``. The record's revision is then that
later WRITETIME, so that reads, backfill and verify all see the update.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from sessionstore import (
    InMemoryBackend,
    SessionBackend,
    SessionStatus,
    StoredRecord,
    StudentSession,
)
from sessionstore.jobs import BackfillJob, VerifyJob
from sessionstore.model import with_revision
from tests.helpers import make_session
from tests.real.cassandra_store import (
    TestCassandraBackend,
    open_backend,
    session_execute,
    shared_session,
)
from tests.real.documentdb_store import open_documentdb_store

pytestmark = pytest.mark.real


@pytest.fixture
async def cassandra() -> AsyncIterator[TestCassandraBackend]:
    store = await open_backend()
    try:
        yield store
    finally:
        await store.aclose()


def a_minute_ago() -> int:
    """A revision older than the server's own write timestamps (now, in microseconds)."""
    return time.time_ns() // 1_000 - 60_000_000


async def grade_out_of_band(
    backend: TestCassandraBackend, sid: uuid.UUID, timestamp: int | None
) -> int:
    """Set ``status = 'graded'`` as another service would; return the cell's WRITETIME."""
    session = await shared_session()
    target = f"{backend.keyspace}.{backend.table}"
    using = "" if timestamp is None else f"USING TIMESTAMP {timestamp} "
    await session_execute(
        session, f"UPDATE {target} {using}SET status = 'graded' WHERE session_id = %s", (sid,)
    )
    (row,) = await session_execute(
        session, f"SELECT WRITETIME(status) AS wt FROM {target} WHERE session_id = %s", (sid,)
    )
    return int(row.wt)


def graded(session: StudentSession, revision: int) -> StudentSession:
    return with_revision(session.model_copy(update={"status": SessionStatus.GRADED}), revision)


@pytest.mark.parametrize("explicit", [True, False], ids=["using-timestamp", "server-timestamp"])
async def test_get_and_scan_report_the_later_revision(
    cassandra: TestCassandraBackend, explicit: bool
) -> None:
    saved = make_session(revision=a_minute_ago())
    await cassandra.save(saved)
    writetime = await grade_out_of_band(
        cassandra, saved.session_id, saved.revision + 1_000 if explicit else None
    )
    assert writetime > saved.revision
    expected = StoredRecord.of(graded(saved, writetime))
    assert await cassandra.get(saved.session_id) == expected
    page = await cassandra.scan(cassandra.key_space)
    assert page.records == (expected,)


async def test_a_tombstone_updated_later_is_that_much_newer(
    cassandra: TestCassandraBackend,
) -> None:
    sid, revision = uuid.uuid4(), a_minute_ago()
    await cassandra.delete(sid, revision)
    writetime = await grade_out_of_band(cassandra, sid, revision + 500)
    expected = StoredRecord.tombstone(sid, writetime)
    assert await cassandra.get(sid) == expected
    assert (await cassandra.scan(cassandra.key_space)).records == (expected,)


@pytest.fixture(params=["memory", "documentdb"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[SessionBackend]:
    if request.param == "memory":
        store: SessionBackend = InMemoryBackend(name="documentdb")
        await store.__aenter__()
    else:
        # As the command line builds a backfill's target.
        store = (await open_documentdb_store(insert_first=True)).backend
    try:
        yield store
    finally:
        await store.aclose()


async def test_backfill_copies_an_out_of_band_update_that_verify_finds(
    cassandra: TestCassandraBackend, target: SessionBackend
) -> None:
    saved = make_session(revision=a_minute_ago())
    untouched = make_session(revision=saved.revision)
    for session in (saved, untouched):
        await cassandra.save(session)
    first = await BackfillJob(cassandra, target).run()
    assert first.ok()
    assert await target.get(saved.session_id) == StoredRecord.of(saved)

    writetime = await grade_out_of_band(cassandra, saved.session_id, None)

    stale = await VerifyJob(cassandra, target).run()
    assert stale.counts["stale"] == 1
    assert stale.counts["consistent"] == 1
    assert stale.fields["status"] == 1

    copy = await BackfillJob(cassandra, target).run()
    assert copy.ok()
    assert await target.get(saved.session_id) == StoredRecord.of(graded(saved, writetime))
    assert await target.get(untouched.session_id) == StoredRecord.of(untouched)

    clean = await VerifyJob(cassandra, target).run()
    assert clean.ok()
    assert clean.counts["consistent"] == 2
