"""The backend contract: written once, run against every implementation.

Each test asserts what the repository relies on: the revision rule (a write lands only
when newer), tombstones, exact round-trips, range scans that see every key once, and a
clear error after close.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from sessionstore import (
    InvalidRevisionError,
    RecordHead,
    RepositoryClosedError,
    StoredRecord,
    WriteResult,
)
from sessionstore.backends import KeyRange
from sessionstore.revision import MAX_REVISION
from tests.helpers import make_session
from tests.stores import StoreHandle


async def test_get_missing_returns_none(store: StoreHandle) -> None:
    assert await store.backend.get(uuid.uuid4()) is None


async def test_save_then_get_round_trips_exactly(store: StoreHandle) -> None:
    s = make_session(revision=1_000, attachment_bytes=2048)
    await store.backend.save(s)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)


async def test_multi_megabyte_attachments_round_trip(store: StoreHandle) -> None:
    s = make_session(revision=7, attachment_bytes=6 * 1024 * 1024)
    await store.backend.save(s)
    got = await store.backend.get(s.session_id)
    assert got is not None
    assert got.session == s


async def test_newer_revision_replaces(store: StoreHandle) -> None:
    s = make_session(revision=100)
    newer = s.model_copy(update={"revision": 200, "metadata": {"client": "web"}})
    await store.backend.save(s)
    await store.backend.save(newer)
    assert await store.backend.get(s.session_id) == StoredRecord.of(newer)


@pytest.mark.parametrize("older_revision", [50, 100])
async def test_older_or_equal_revision_is_a_no_op(store: StoreHandle, older_revision: int) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    # Equal revision with the same content is a replay; older is a late write.
    late = (
        s
        if older_revision == 100
        else s.model_copy(update={"revision": older_revision, "status": "graded"})
    )
    await store.backend.save(late)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)


async def test_delete_writes_a_tombstone(store: StoreHandle) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    await store.backend.delete(s.session_id, 150)
    assert await store.backend.get(s.session_id) == StoredRecord.tombstone(s.session_id, 150)


async def test_delete_of_never_written_key_still_blocks_older_writes(store: StoreHandle) -> None:
    sid = uuid.uuid4()
    await store.backend.delete(sid, 500)
    await store.backend.save(make_session(session_id=sid, revision=400))
    assert await store.backend.get(sid) == StoredRecord.tombstone(sid, 500)


async def test_older_delete_is_a_no_op(store: StoreHandle) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    await store.backend.delete(s.session_id, 99)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)


async def test_late_write_does_not_resurrect_a_deleted_session(store: StoreHandle) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    await store.backend.delete(s.session_id, 300)
    await store.backend.save(s.model_copy(update={"revision": 200}))
    assert await store.backend.get(s.session_id) == StoredRecord.tombstone(s.session_id, 300)


async def test_newer_write_after_delete_recreates(store: StoreHandle) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    await store.backend.delete(s.session_id, 300)
    again = s.model_copy(update={"revision": 400})
    await store.backend.save(again)
    assert await store.backend.get(s.session_id) == StoredRecord.of(again)


async def test_replays_in_any_order_converge_to_newest(store: StoreHandle) -> None:
    sid = uuid.uuid4()
    base = make_session(session_id=sid)
    ops: list[tuple[str, int]] = [("save", r) for r in (10, 20, 30, 40)] + [("delete", 35)]
    rng = random.Random(7)
    for _ in range(3):
        rng.shuffle(ops)
        for op, rev in ops:
            if op == "save":
                await store.backend.save(base.model_copy(update={"revision": rev}))
            else:
                await store.backend.delete(sid, rev)
    assert await store.backend.get(sid) == StoredRecord.of(base.model_copy(update={"revision": 40}))


async def test_concurrent_writers_leave_the_newest_revision(store: StoreHandle) -> None:
    keys = [uuid.uuid4() for _ in range(8)]
    revisions = list(range(1, 25))
    base = make_session()

    async def write_all(key: uuid.UUID) -> None:
        shuffled = random.Random(key.int).sample(revisions, len(revisions))
        writes = [base.model_copy(update={"session_id": key, "revision": r}) for r in shuffled]
        if store.atomic_conditional_writes:
            await asyncio.gather(*(store.backend.save(w) for w in writes))
        else:
            # FerretDB's conditional update is read-then-write, not atomic (DocumentDB's
            # is): writers to one key are serialized here, keys still run concurrently.
            for w in writes:
                await store.backend.save(w)

    await asyncio.gather(*(write_all(k) for k in keys))
    for key in keys:
        got = await store.backend.get(key)
        assert got is not None
        assert got.revision == max(revisions)


async def test_scan_pages_see_every_key_once(store: StoreHandle) -> None:
    live = [make_session(revision=10 + i) for i in range(23)]
    for s in live:
        await store.backend.save(s)
    deleted = uuid.uuid4()
    await store.backend.delete(deleted, 5)
    expected = {s.session_id: s.revision for s in live} | {deleted: 5}

    seen: dict[uuid.UUID, int] = {}
    for key_range in store.backend.key_space.split(4):
        cursor: str | None = None
        while True:
            page = await store.backend.scan(key_range, cursor=cursor, limit=5)
            for record in page:
                assert record.session_id not in seen
                seen[record.session_id] = record.revision
            cursor = page.cursor
            if cursor is None:
                break
    assert seen == expected


async def test_scan_of_empty_range_is_empty(store: StoreHandle) -> None:
    space = store.backend.key_space
    page = await store.backend.scan(KeyRange(space.start, space.start + 1), limit=10)
    assert page.records == ()
    assert page.cursor is None


@pytest.mark.parametrize(
    "hostile",
    [
        '{"$gt": ""}',
        "'; DROP TABLE sessions; --",
        "$where: function() { return true }",
        "x' OR '1'='1",
    ],
)
async def test_hostile_strings_are_stored_verbatim(store: StoreHandle, hostile: str) -> None:
    s = make_session(revision=5, student_id=hostile[:256], metadata={"note": hostile})
    other = make_session(revision=5)
    await store.backend.save(other)
    await store.backend.save(s)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)
    assert await store.backend.get(other.session_id) == StoredRecord.of(other)


async def test_use_after_close_raises(store: StoreHandle) -> None:
    await store.backend.aclose()
    await store.backend.aclose()  # idempotent
    with pytest.raises(RepositoryClosedError):
        await store.backend.get(uuid.uuid4())


# -- what a write reports, the cheap head read, optimistic concurrency, purge -----------


async def test_head_reports_the_stored_revision_and_tombstone_flag(store: StoreHandle) -> None:
    s = make_session(revision=100, attachment_bytes=1024)
    assert await store.backend.head(s.session_id) is None
    await store.backend.save(s)
    assert await store.backend.head(s.session_id) == RecordHead(100, deleted=False)
    await store.backend.delete(s.session_id, 200)
    assert await store.backend.head(s.session_id) == RecordHead(200, deleted=True)


async def test_a_write_reports_whether_it_landed(store: StoreHandle) -> None:
    # applied is True or False where the store can tell, None where it cannot; a store
    # that says True or False must be right.
    s = make_session(revision=100)
    first = await store.backend.save(s)
    assert first.applied in (True, None)
    late = await store.backend.save(s.model_copy(update={"revision": 50}))
    assert late.applied in (False, None)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)
    late_delete = await store.backend.delete(s.session_id, 60)
    assert late_delete.applied in (False, None)
    if late.applied is False and late.current_revision is not None:
        assert late.current_revision == 100


@pytest.mark.parametrize("kind", ["save", "delete"])
async def test_expected_revision_lands_only_on_the_expected_record(
    store: StoreHandle, kind: str
) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)

    async def write(revision: int, expected: int) -> WriteResult:
        if kind == "save":
            copy = s.model_copy(update={"revision": revision, "status": "graded"})
            return await store.backend.save(copy, expected_revision=expected)
        return await store.backend.delete(s.session_id, revision, expected_revision=expected)

    stale = await write(300, 99)  # the caller read something else
    assert stale.applied is False
    assert stale.current_revision in (100, None)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)
    assert (await write(200, 0)).applied is False  # "no live session": there is one
    assert (await write(200, 100)).applied is True
    assert (await store.backend.head(s.session_id)) == RecordHead(200, deleted=kind == "delete")


async def test_expected_revision_zero_creates_or_replaces_a_tombstone(store: StoreHandle) -> None:
    fresh = make_session(revision=10)
    assert (await store.backend.save(fresh, expected_revision=0)).applied is True
    sid = uuid.uuid4()
    await store.backend.delete(sid, 50)
    recreated = make_session(session_id=sid, revision=60)
    assert (await store.backend.save(recreated, expected_revision=0)).applied is True
    assert await store.backend.get(sid) == StoredRecord.of(recreated)
    older = make_session(session_id=uuid.uuid4(), revision=60)
    await store.backend.delete(older.session_id, 70)  # a newer deletion than the write
    assert (await store.backend.save(older, expected_revision=0)).applied is False


async def test_purge_forgets_the_key_only_up_to_the_revision(store: StoreHandle) -> None:
    s = make_session(revision=100)
    await store.backend.save(s)
    await store.backend.delete(s.session_id, 200)
    await store.backend.purge(s.session_id, 199)
    assert await store.backend.get(s.session_id) == StoredRecord.tombstone(s.session_id, 200)
    await store.backend.purge(s.session_id, 200)
    assert await store.backend.get(s.session_id) is None
    assert await store.backend.head(s.session_id) is None
    page = await store.backend.scan(store.backend.key_space)
    assert s.session_id not in {r.session_id for r in page}
    await store.backend.purge(uuid.uuid4(), 5)  # nothing stored: a no-op


@pytest.mark.parametrize("bad", [0, -1, 2**63, True, 1.5, "7"])
async def test_every_store_refuses_the_same_revisions(store: StoreHandle, bad: object) -> None:
    s = make_session(revision=10)
    sid = uuid.uuid4()
    with pytest.raises(InvalidRevisionError):
        await store.backend.save(s.model_copy(update={"revision": bad}))
    with pytest.raises(InvalidRevisionError):
        await store.backend.delete(sid, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRevisionError):
        await store.backend.purge(sid, bad)  # type: ignore[arg-type]
    if bad != 0:
        with pytest.raises(InvalidRevisionError):
            await store.backend.save(s, expected_revision=bad)  # type: ignore[arg-type]
    assert await store.backend.get(s.session_id) is None
    assert await store.backend.get(sid) is None


async def test_the_largest_revision_is_accepted_by_every_store(store: StoreHandle) -> None:
    s = make_session(revision=MAX_REVISION)
    await store.backend.save(s)
    assert await store.backend.get(s.session_id) == StoredRecord.of(s)
