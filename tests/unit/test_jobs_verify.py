"""VerifyJob on in-memory stores: each kind of difference, field names, sampling, repair."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from sessionstore import InMemoryBackend, SessionStatus, StoredRecord
from sessionstore.jobs import VerifyJob
from sessionstore.jobs.verify import is_sampled
from sessionstore.revision import restamp_revision
from sessionstore.testing import FaultInjectingBackend
from tests.helpers import make_session

SECRET = "do-not-leak-this-answer"


@pytest.fixture
async def stores() -> AsyncIterator[tuple[InMemoryBackend, InMemoryBackend]]:
    c, d = InMemoryBackend(name="cassandra"), InMemoryBackend(name="documentdb")
    async with c, d:
        yield c, d


async def _seed_differences(c: InMemoryBackend, d: InMemoryBackend) -> dict[str, uuid.UUID]:
    """One or more keys of each kind; returns a key per kind."""
    keys: dict[str, uuid.UUID] = {}
    for _ in range(10):  # consistent
        s = make_session(revision=50, metadata={"note": SECRET})
        await c.save(s)
        await d.save(s)
    missing = make_session(revision=60)
    await c.save(missing)
    keys["missing"] = missing.session_id
    tomb_only = uuid.uuid4()
    await c.delete(tomb_only, 61)  # a tombstone the target never saw: missing too
    keys["missing_tombstone"] = tomb_only
    stale = make_session(revision=70, status=SessionStatus.GRADED, metadata={"note": SECRET})
    await c.save(stale)
    await d.save(stale.model_copy(update={"revision": 65, "status": SessionStatus.STARTED}))
    keys["stale"] = stale.session_id
    newer = make_session(revision=80)
    await c.save(newer)
    await d.save(newer.model_copy(update={"revision": 90, "student_id": "other"}))
    keys["newer"] = newer.session_id
    only_target = make_session(revision=85)
    await d.save(only_target)
    keys["only_in_target"] = only_target.session_id
    conflict = make_session(revision=100, metadata={"note": SECRET})
    await c.save(conflict)
    await d.save(conflict.model_copy(update={"answers": ()}))
    keys["content_mismatch"] = conflict.session_id
    deleted = make_session(revision=110)
    await c.delete(deleted.session_id, 110)
    await d.save(deleted)
    keys["deleted_in_one"] = deleted.session_id
    return keys


async def test_each_kind_of_difference_is_counted_with_field_names_only(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    await _seed_differences(c, d)
    report = await VerifyJob(c, d, page_size=4).run(VerifyJob(c, d).plan(parts=8))
    counts = report.counts
    assert counts["checked"] == 10 + 2 + 1 + 1 + 1 + 1 + 1
    assert (counts["missing"], counts["stale"], counts["newer"]) == (2, 1, 2)
    assert (counts["content_mismatch"], counts["deleted_in_one"]) == (1, 1)
    assert counts["only_in_target"] == 1
    assert counts["consistent"] == 10
    assert report.fields["answers"] == 1
    assert report.fields["status"] == 1  # the stale one
    assert report.fields["deleted"] == 1
    assert report.unresolved == 5
    assert not report.ok()
    text = json.dumps(report.to_dict())
    assert SECRET not in text
    assert json.loads(text)["differences"]["missing"] == 2


async def test_repair_fixes_from_the_source_and_leaves_newer_alone(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    keys = await _seed_differences(c, d)
    before = {k: (c.records().get(v), d.records().get(v)) for k, v in keys.items()}
    report = await VerifyJob(c, d, repair=True).run()
    assert report.counts["repaired"] == 5
    assert report.unresolved == 0
    assert report.ok() and not report.ok(strict=True)  # 'newer' remains, by design

    after = VerifyJob(c, d, name="again", strict=True)
    second = await after.run()
    assert second.counts["newer"] == 2 and second.unresolved == 0
    cr, dr = c.records(), d.records()
    for kind in ("missing", "missing_tombstone", "stale"):
        assert dr[keys[kind]] == cr[keys[kind]]
    # Equal revisions R: the source's record, re-stamped just above R, in both stores.
    for kind in ("content_mismatch", "deleted_in_one"):
        source_before = before[kind][0]
        assert source_before is not None
        assert cr[keys[kind]] == dr[keys[kind]]
        assert cr[keys[kind]].revision == restamp_revision(source_before.revision)
        assert cr[keys[kind]].deleted == source_before.deleted
    # 'newer' and 'only in target' are untouched in both stores.
    for kind in ("newer", "only_in_target"):
        assert (cr.get(keys[kind]), dr.get(keys[kind])) == before[kind]


async def test_a_newer_write_during_repair_is_never_overwritten(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    s = make_session(revision=100)
    await c.save(s)
    await d.save(s.model_copy(update={"status": SessionStatus.GRADED}))  # equal-revision conflict
    # The service writes a newer revision between verify's read and its repair.
    target = FaultInjectingBackend(d)
    live = s.model_copy(update={"revision": 5_000, "status": SessionStatus.SUBMITTED})
    real_get = d.get
    reads = 0

    async def get_then_service_writes(sid):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        if reads == 2:  # the repair's re-read
            await c.save(live)
            await d.save(live)
        return await real_get(sid)

    target.inner.get = get_then_service_writes  # type: ignore[method-assign]
    await VerifyJob(c, target, repair=True, scan_target=False).run()
    assert c.records()[s.session_id] == StoredRecord.of(live)
    assert d.records()[s.session_id] == StoredRecord.of(live)


async def test_sampling_is_deterministic_and_compares_a_share(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    for i in range(400):
        await c.save(make_session(revision=10 + i))
    first = await VerifyJob(c, d, name="a", sample=0.25).run()
    second = await VerifyJob(c, d, name="b", sample=0.25).run()
    assert first.counts == second.counts
    assert 60 < first.counts["checked"] < 140
    assert first.counts["records"] == 400  # everything is read, a share compared
    expected = sum(is_sampled(sid, 0.25) for sid in c.records())
    assert first.counts["missing"] == expected


async def test_id_list_verify(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    keys = await _seed_differences(c, d)
    never = uuid.uuid4()
    job = VerifyJob(c, d)
    report = await job.run(job.plan_ids([keys["stale"], keys["only_in_target"], never], batch=2))
    counts = report.counts
    assert (counts["stale"], counts["newer"], counts["only_in_target"], counts["absent"]) == (
        1,
        1,
        1,
        1,
    )
    assert counts["consistent"] == 1  # the never-written id: absent in both


async def test_consistent_stores_verify_clean_in_both_directions(stores) -> None:  # type: ignore[no-untyped-def]
    c, d = stores
    for i in range(50):
        s = make_session(revision=10 + i)
        await c.save(s)
        await d.save(s)
    await d.delete(uuid.uuid4(), 3)
    forward = await VerifyJob(c, d, strict=True).run()
    backward = await VerifyJob(d, c, name="back").run()
    assert forward.counts["only_in_target"] == 1 and not forward.ok(strict=True)
    assert backward.counts["missing"] == 1
    await c.delete(next(k for k, r in d.records().items() if r.deleted), 3)
    assert (await VerifyJob(c, d, name="clean", strict=True).run()).ok(strict=True)
