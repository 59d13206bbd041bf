"""Property: any interleaving of saves, deletes, secondary failures, phase flips and repair
drains ends with both stores at the same newest revision for every key, and no
acknowledged write is lost."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionstore import (
    PHASE_PLANS,
    BackendUnavailableError,
    InMemoryRepairQueue,
    Phase,
    RepairWorker,
    ShadowRead,
    StaticPhaseSource,
)
from sessionstore.testing import MemoryStores, memory_repository
from tests.helpers import make_session

KEYS = [uuid.UUID(int=i + 1) for i in range(3)]
DUAL_PHASES = [p for p in Phase if PHASE_PLANS[p].secondary is not None]

key = st.sampled_from(range(len(KEYS)))
store = st.sampled_from(["cassandra", "documentdb"])


def ops(phases: list[Phase]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("save"), key),
            st.tuples(st.just("delete"), key),
            st.tuples(st.just("read"), key),
            st.tuples(st.just("fail"), store, st.sampled_from(["save", "delete"])),
            st.tuples(st.just("phase"), st.sampled_from(phases)),
            st.tuples(
                st.just("drain"),
            ),
        ),
        max_size=40,
    )


async def run(
    steps: list[tuple[Any, ...]],
    first: Phase,
    *,
    check_reads: bool,
    shadow_read: ShadowRead = ShadowRead.PARALLEL,
) -> tuple[dict[uuid.UUID, tuple[int, bool]], MemoryStores]:
    source = StaticPhaseSource(first)
    queue = InMemoryRepairQueue()
    repo, stores = memory_repository(source, repairs=queue, shadow_read=shadow_read)
    worker = RepairWorker(
        cassandra=stores.cassandra,
        documentdb=stores.documentdb,
        queue=stores.repairs,
        retry_delay_seconds=0,
    )
    acked: dict[uuid.UUID, tuple[int, bool]] = {}
    async with repo:
        for step in steps:
            kind = step[0]
            try:
                if kind == "save":
                    sid = KEYS[step[1]]
                    saved = await repo.save(make_session(session_id=sid))
                    acked[sid] = (saved.revision, False)
                elif kind == "delete":
                    sid = KEYS[step[1]]
                    acked[sid] = (await repo.delete(sid), True)
                elif kind == "read":
                    sid = KEYS[step[1]]
                    got = await repo.get(sid)
                    if check_reads and sid in acked:
                        rev, deleted = acked[sid]
                        # A read returns the newest acknowledged write, unless the read
                        # store missed it and the session is queued for repair.
                        fresh = (got is None) == deleted and (got is None or got.revision == rev)
                        assert fresh or sid in queue.pending()
                elif kind == "fail":
                    getattr(stores, step[1]).fail_next(1, operation=step[2])
                elif kind == "phase":
                    source.phase = step[1]
                else:
                    await worker.drain()
            except BackendUnavailableError:
                pass  # the authoritative store failed: the write was not acknowledged
        stores.cassandra.heal()
        stores.documentdb.heal()
        await repo.wait_for_comparisons()
        for _ in range(5):
            await worker.drain()
            if await stores.repairs.depth() == 0:
                break
        assert await stores.repairs.depth() == 0
    return acked, stores


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.sampled_from(DUAL_PHASES),
    steps=ops(DUAL_PHASES),
    shadow_read=st.sampled_from(list(ShadowRead)),
)
def test_dual_phases_converge_to_the_newest_acknowledged_write(
    first: Phase, steps: list[tuple[Any, ...]], shadow_read: ShadowRead
) -> None:
    acked, stores = asyncio.run(run(steps, first, check_reads=True, shadow_read=shadow_read))
    cassandra = stores.cassandra.inner.records()
    documentdb = stores.documentdb.inner.records()
    for sid in KEYS:
        c, d = cassandra.get(sid), documentdb.get(sid)
        if sid not in acked:
            # Only unacknowledged writes may exist; both stores still agree.
            assert (c is None) == (d is None) or (c and d and c.revision == d.revision)
            continue
        rev, deleted = acked[sid]
        assert c is not None
        assert d is not None
        assert c.revision == d.revision == rev
        assert c.deleted == d.deleted == deleted


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(list(Phase)), steps=ops(list(Phase)))
def test_no_acknowledged_write_is_lost_in_any_phase(
    first: Phase, steps: list[tuple[Any, ...]]
) -> None:
    # Single-store phases leave the other store behind by design (the backfill's job);
    # still, the newest acknowledged write is held by some store and nothing newer exists.
    acked, stores = asyncio.run(run(steps, first, check_reads=False))
    cassandra = stores.cassandra.inner.records()
    documentdb = stores.documentdb.inner.records()
    for sid, (rev, deleted) in acked.items():
        held = [r for r in (cassandra.get(sid), documentdb.get(sid)) if r is not None]
        newest = max(held, key=lambda r: r.revision)
        assert newest.revision == rev
        assert newest.deleted == deleted
