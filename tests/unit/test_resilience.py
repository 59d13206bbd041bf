"""The other store never holds the caller: deadlines, breakers, read fallback, bounded work.

The stores here hang (``freeze``) rather than fail, as a stopped server does. Deadlines
are short so that the tests are quick; each waiting assertion allows a wide margin (the
guarantee is "bounded by the deadline", not a speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from sessionstore import (
    PHASE_PLANS,
    BackendTimeoutError,
    BreakerPolicy,
    BreakerState,
    CircuitOpenError,
    ConfigurationError,
    InMemoryBackend,
    InMemoryRepairQueue,
    Phase,
    SessionRepository,
    StaticPhaseSource,
    Store,
    StudentSession,
    Timeouts,
    WriteResult,
)
from sessionstore.testing import MemoryStores, memory_repository
from tests.helpers import make_session

FAST = Timeouts(read=0.05, write=0.05, secondary_write=0.05, shadow_read=0.05)
MARGIN = 1.0  # seconds of scheduling slack allowed on top of a deadline
DUAL = [p for p in Phase if PHASE_PLANS[p].secondary is not None]


def repository(phase: Phase, **options: Any) -> tuple[Any, MemoryStores]:
    options.setdefault("timeouts", FAST)
    options.setdefault("breaker", BreakerPolicy(failures=3, open_seconds=0.05))
    return memory_repository(phase, **options)


def store_of(stores: MemoryStores, store: Store) -> Any:
    return getattr(stores, store.value)


async def timed(coro: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


@pytest.mark.parametrize("phase", DUAL)
async def test_a_hung_secondary_costs_at_most_its_deadline_then_is_skipped(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    assert plan.secondary is not None
    repo, stores = repository(phase)
    frozen = store_of(stores, plan.secondary)
    async with repo:
        frozen.freeze()
        saved = []
        for _ in range(6):
            result, waited = await timed(repo.save(make_session()))
            assert waited < FAST.secondary_write + MARGIN
            saved.append(result)
        # Three deadlines opened the breaker: later writes did not reach the store.
        sent = [c for c in stores.calls if c.store == plan.secondary.value]
        assert len(sent) == 3
        assert repo.stats.secondary_skipped == 3
        assert stores.repairs.pending() == {s.session_id for s in saved}  # type: ignore[attr-defined]
        for s in saved:  # the authoritative store has each write
            assert (
                await store_of(stores, plan.authoritative).inner.get(s.session_id)
            ).revision == (s.revision)
        frozen.thaw()
        await asyncio.sleep(0.1)
        await repo.save(make_session())  # a call after open_seconds starts a probe
        await repo.wait_for_comparisons()
        assert repo._stores.breakers[plan.secondary].state is BreakerState.CLOSED
        again = await repo.save(make_session())
        assert (await frozen.inner.get(again.session_id)).revision == again.revision


@pytest.mark.parametrize("phase", [p for p in Phase if PHASE_PLANS[p].compare])
async def test_a_hung_shadow_store_never_delays_reads(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    other = plan.read.other
    repo, stores = repository(phase)
    async with repo:
        saved = await repo.save(make_session())
        store_of(stores, other).freeze(operation="get")
        for _ in range(8):
            got, waited = await timed(repo.get(saved.session_id))
            assert got == saved
            assert waited < FAST.read + MARGIN
        await repo.wait_for_comparisons()  # each comparison gave up at its deadline
        assert repo.stats.comparisons == 8
        # A background read passing its deadline is not held against the store: it may
        # be only slow (the reads queue up behind each other), and the store may be the
        # authoritative one for the sessions of another phase.
        assert repo._stores.breakers[other].state is BreakerState.CLOSED
        store_of(stores, other).thaw()


async def test_shadow_reads_stop_when_the_store_fails_and_its_breaker_opens() -> None:
    repo, stores = repository(Phase.SHADOW)
    async with repo:
        saved = await repo.save(make_session())
        stores.documentdb.go_down(operation="get")
        for _ in range(8):
            assert await repo.get(saved.session_id) == saved
            await repo.wait_for_comparisons()
        assert repo._stores.breakers[Store.DOCUMENTDB].state is BreakerState.OPEN
        assert repo.stats.comparisons_skipped >= 1  # not compared once it opened
        sent = [c for c in stores.calls if c.store == "documentdb" and c.operation == "get"]
        assert len(sent) == 3  # the breaker's failures: no more reads were sent


@pytest.mark.parametrize("phase", [Phase.SHADOW, Phase.DOCDB_PRIMARY])
async def test_a_failed_authoritative_read_falls_back_to_the_other_store(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    assert plan.fallback
    repo, stores = repository(phase)
    auth = store_of(stores, plan.read)
    async with repo:
        saved = await repo.save(make_session())
        auth.freeze(operation="get")
        got, waited = await timed(repo.get(saved.session_id))
        assert got == saved
        assert waited < FAST.read + MARGIN
        auth.thaw()
        auth.fail_next(1, operation="get")
        assert await repo.get(saved.session_id) == saved
        assert repo.stats.read_fallbacks == 2


@pytest.mark.parametrize("phase", [p for p in Phase if not PHASE_PLANS[p].fallback])
async def test_no_fallback_where_the_other_store_may_be_stale(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    repo, stores = repository(phase)
    async with repo:
        saved = await repo.save(make_session())
        store_of(stores, plan.read).freeze(operation="get")
        with pytest.raises(BackendTimeoutError):
            await repo.get(saved.session_id)
        assert repo.stats.read_fallbacks == 0


async def test_fallback_can_be_switched_off() -> None:
    repo, stores = repository(Phase.SHADOW, read_fallback=False)
    async with repo:
        saved = await repo.save(make_session())
        stores.cassandra.fail_next(1, operation="get")
        with pytest.raises(Exception, match="injected"):
            await repo.get(saved.session_id)


@pytest.mark.parametrize("phase", [Phase.SHADOW, Phase.DOCDB_PRIMARY])
async def test_a_stopped_authoritative_store_fails_writes_fast_once_its_breaker_opens(
    phase: Phase,
) -> None:
    plan = PHASE_PLANS[phase]
    repo, stores = repository(phase)
    auth = store_of(stores, plan.authoritative)
    async with repo:
        saved = await repo.save(make_session())
        auth.freeze()
        for _ in range(3):
            _, waited = await timed(
                asyncio.gather(repo.save(make_session()), return_exceptions=True)
            )
            assert waited < FAST.write + MARGIN
        sent = len(stores.calls)
        with pytest.raises(CircuitOpenError):
            await repo.save(make_session())
        with pytest.raises(CircuitOpenError):
            await repo.delete(saved.session_id)
        assert len(stores.calls) == sent  # failed fast: nothing was sent
        # Reads keep answering from the other store meanwhile.
        assert await repo.get(saved.session_id) == saved
        auth.thaw()


async def test_a_call_deadline_bounds_the_whole_call() -> None:
    repo, stores = repository(Phase.DUAL_WRITE, timeouts=Timeouts())
    async with repo:
        saved = await repo.save(make_session())
        stores.cassandra.freeze()
        with pytest.raises(BackendTimeoutError, match="deadline"):
            _, waited = await timed(repo.get(saved.session_id, timeout=0.05))
        stores.cassandra.thaw()
        stores.documentdb.freeze()
        # Past the call deadline during the secondary write: the authoritative result.
        result, waited = await timed(repo.save(make_session(), timeout=0.1))
        assert waited < 0.1 + MARGIN
        assert result.session_id in stores.repairs.pending()  # type: ignore[attr-defined]
        stores.documentdb.thaw()
        with pytest.raises(ConfigurationError):
            await repo.get(saved.session_id, timeout=0)


async def test_background_comparisons_are_bounded() -> None:
    repo, stores = repository(Phase.SHADOW, max_comparisons=2, timeouts=Timeouts(shadow_read=5.0))
    async with repo:
        saved = await repo.save(make_session())
        stores.documentdb.freeze(operation="get")
        for _ in range(5):
            assert await repo.get(saved.session_id) == saved
        assert repo.stats.comparisons_skipped == 3
        stores.documentdb.thaw()
        await repo.wait_for_comparisons()
        assert repo.stats.comparisons == 2


async def test_health_probes_read_only_and_reports_breakers_queue_and_phase() -> None:
    repo, stores = repository(Phase.DOCDB_PRIMARY)
    async with repo:
        report = await repo.health()
        assert report.healthy
        assert report.phase is Phase.DOCDB_PRIMARY
        assert report.queue is not None and report.queue.drained
        assert {c.operation for c in stores.calls} == {"head"}
        assert stores.cassandra.inner.records() == {} == stores.documentdb.inner.records()
        stores.cassandra.freeze()
        for _ in range(3):
            await repo.save(make_session())  # the secondary's deadlines open its breaker
        report = await repo.health()
        assert not report.healthy
        cassandra = report.stores[Store.CASSANDRA]
        assert (cassandra.reachable, cassandra.error) == (False, "DeadlineExceeded")
        assert cassandra.breaker is BreakerState.OPEN
        assert report.queue is not None and report.queue.pending == 3
        assert report.to_dict()["stores"]["cassandra"]["breaker"] == "open"
        stores.cassandra.thaw()


class _LosesCancellation(InMemoryBackend):
    """A store whose save, once cancelled, carries on until ``release`` is set: a driver
    that loses the cancellation, as PyMongo does on Python 3.11 (a write to a frozen
    FerretDB then waited for its connection handshake until the server came back)."""

    def __init__(self) -> None:
        super().__init__(name="documentdb")
        self.release = asyncio.Event()
        self.finished = 0

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        # Lost, as Python 3.11's asyncio.wait_for loses it when its future is done too.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await self.release.wait()
        self.finished += 1
        return await super().save(session, expected_revision=expected_revision)


async def test_a_store_call_that_loses_its_cancellation_still_ends_at_the_deadline() -> None:
    documentdb = _LosesCancellation()
    queue = InMemoryRepairQueue()
    repo = SessionRepository(
        cassandra=InMemoryBackend(name="cassandra"),
        documentdb=documentdb,
        phases=StaticPhaseSource(Phase.DUAL_WRITE),
        repairs=queue,
        timeouts=FAST,
    )
    async with repo:
        saved, waited = await timed(repo.save(make_session()))
        assert waited < FAST.secondary_write + MARGIN
        assert queue.pending() == {saved.session_id}
        assert repo.stats.secondary_failures == 1
        # The abandoned call goes on by itself and lands (the revision rule allows it).
        documentdb.release.set()
        for _ in range(100):
            if documentdb.finished:
                break
            await asyncio.sleep(0.01)
        assert documentdb.records()[saved.session_id].revision == saved.revision


@pytest.mark.parametrize(
    "make",
    [
        lambda: Timeouts(read=0),
        lambda: Timeouts(secondary_write=-1),
        lambda: Timeouts(call=0),
        lambda: Timeouts(shadow_read=True),
        lambda: BreakerPolicy(failures=0),
        lambda: BreakerPolicy(open_seconds=0),
    ],
)
def test_bad_resilience_settings_are_configuration_errors(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()
