"""Repository behaviour beyond the phase table: lifecycle, revisions, shadow reads."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from sessionstore import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InMemoryBackend,
    InMemoryRepairQueue,
    InvalidRevisionError,
    Phase,
    RepositoryClosedError,
    SessionRepository,
    ShadowRead,
    StaticPhaseSource,
    StoredRecord,
    Timeouts,
)
from sessionstore.testing import memory_repository
from tests.helpers import make_session


class GatedBackend(InMemoryBackend):
    """get() waits until the test opens the gate."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.gate = asyncio.Event()
        self.reads = 0

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        await self.gate.wait()
        self.reads += 1
        return await super().get(session_id)


async def test_shadow_read_is_off_the_callers_path() -> None:
    docdb = GatedBackend("documentdb")
    repo = SessionRepository(
        cassandra=InMemoryBackend(name="cassandra"),
        documentdb=docdb,
        phases=StaticPhaseSource(Phase.SHADOW),
        repairs=InMemoryRepairQueue(),
    )
    async with repo:
        saved = await repo.save(make_session())
        # The shadow store cannot answer until the gate opens, yet the read returns.
        assert await asyncio.wait_for(repo.get(saved.session_id), timeout=30) == saved
        assert docdb.reads == 0
        docdb.gate.set()
        await repo.wait_for_comparisons()
        assert docdb.reads == 1


async def test_a_hung_shadow_store_is_abandoned_after_the_timeout() -> None:
    docdb = GatedBackend("documentdb")
    queue = InMemoryRepairQueue()
    repo = SessionRepository(
        cassandra=InMemoryBackend(name="cassandra"),
        documentdb=docdb,
        phases=StaticPhaseSource(Phase.SHADOW),
        repairs=queue,
        timeouts=Timeouts(shadow_read=0.05),
    )
    async with repo:
        saved = await repo.save(make_session())
        assert await repo.get(saved.session_id) == saved
        await repo.wait_for_comparisons()
        assert docdb.reads == 0
        assert await queue.depth() == 0


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 20)])
async def test_compare_sample_ratio(ratio: float, expected: int) -> None:
    repo, stores = memory_repository(Phase.SHADOW, compare_sample_ratio=ratio)
    async with repo:
        saved = await repo.save(make_session())
        stores.calls.clear()
        for _ in range(20):
            await repo.get(saved.session_id)
        await repo.wait_for_comparisons()
    assert sum(1 for c in stores.calls if c.store == "documentdb") == expected


async def test_partial_sampling_is_seeded() -> None:
    repo, stores = memory_repository(Phase.SHADOW, compare_sample_ratio=0.5, rng=random.Random(3))
    async with repo:
        saved = await repo.save(make_session())
        stores.calls.clear()
        for _ in range(200):
            await repo.get(saved.session_id)
        await repo.wait_for_comparisons()
    shadowed = sum(1 for c in stores.calls if c.store == "documentdb")
    assert 60 < shadowed < 140


class LoggingBackend(InMemoryBackend):
    """Logs when each get() starts and ends; the authoritative one waits for a gate."""

    def __init__(self, name: str, log: list[str], gate: asyncio.Event | None = None) -> None:
        super().__init__(name=name)
        self.log = log
        self.gate = gate

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        self.log.append(f"{self.name} start")
        if self.gate is not None:
            await self.gate.wait()
        self.log.append(f"{self.name} end")
        return await super().get(session_id)


@pytest.mark.parametrize(
    ("phase", "primary", "other"),
    [(Phase.SHADOW, "cassandra", "documentdb"), (Phase.DOCDB_PRIMARY, "documentdb", "cassandra")],
)
@pytest.mark.parametrize("order", list(ShadowRead))
async def test_when_the_shadow_read_starts(
    phase: Phase, primary: str, other: str, order: ShadowRead
) -> None:
    log: list[str] = []
    gate = asyncio.Event()
    stores = {
        name: LoggingBackend(name, log, gate if name == primary else None)
        for name in ("cassandra", "documentdb")
    }
    queue = InMemoryRepairQueue()
    repo = SessionRepository(
        cassandra=stores["cassandra"],
        documentdb=stores["documentdb"],
        phases=StaticPhaseSource(phase),
        repairs=queue,
        shadow_read=order,
    )
    async with repo:
        # Only the authoritative store has it: the comparison must notice.
        saved = make_session(revision=5)
        await stores[primary].save(saved)
        read = asyncio.create_task(repo.get(saved.session_id))
        await asyncio.sleep(0.01)
        gate.set()
        assert await read == saved
        await repo.wait_for_comparisons()
        queued = [t.session_id for t in await queue.claim(10)]
    if order is ShadowRead.PARALLEL:
        assert log.index(f"{other} start") < log.index(f"{primary} end")
    else:
        assert log.index(f"{other} start") > log.index(f"{primary} end")
    assert repo.stats.comparisons == 1
    assert repo.stats.divergences == 1
    assert queued == [saved.session_id]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compare_sample_ratio": 1.5},
        {"shadow_read": "after_primary"},
        {"max_comparisons": -1},
        {"timeouts": "fast"},
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        memory_repository(Phase.SHADOW, **kwargs)


async def test_revisions_increase_and_outrank_the_replaced_revision() -> None:
    repo, stores = memory_repository(Phase.DUAL_WRITE)
    async with repo:
        s = make_session()
        first = await repo.save(s)
        second = await repo.save(first)
        assert second.revision > first.revision > 0
        # A copy written by a writer whose clock runs 30 s ahead (within the max skew).
        ahead = first.model_copy(update={"revision": second.revision + 30_000_000})
        await stores.cassandra.inner.save(ahead)
        await stores.documentdb.inner.save(ahead)
        read = await repo.get(s.session_id)
        assert read == ahead
        third = await repo.save(read)
        assert third.revision > ahead.revision
        assert await repo.get(s.session_id) == third
        tomb = await repo.delete(s.session_id, revision=third.revision)
        assert tomb > third.revision
        assert await repo.get(s.session_id) is None


async def test_a_revision_from_the_far_future_is_never_taken_over() -> None:
    # A store poisoned by a forged revision (2**62): reading it does not carry the clock
    # away, saving the read copy is refused, and a fresh save is a visible conflict.
    repo, stores = memory_repository(Phase.DUAL_WRITE)
    async with repo:
        poisoned = make_session(revision=2**62)
        await stores.cassandra.inner.save(poisoned)
        read = await repo.get(poisoned.session_id)
        assert read == poisoned
        with pytest.raises(InvalidRevisionError):
            await repo.save(read)
        with pytest.raises(ConflictError) as info:
            await repo.save(read.model_copy(update={"revision": 0}))
        assert info.value.current_revision == 2**62
        other = await repo.save(make_session())  # the clock itself is unharmed
        assert other.revision < 2**62


async def test_lifecycle_is_guarded() -> None:
    repo, _ = memory_repository()
    with pytest.raises(RepositoryClosedError):
        await repo.get(uuid.uuid4())
    async with repo:
        pass
    with pytest.raises(RepositoryClosedError):
        await repo.save(make_session())
    with pytest.raises(RepositoryClosedError):
        await repo.__aenter__()
    await repo.aclose()  # idempotent


async def test_closing_closes_the_stores() -> None:
    repo, stores = memory_repository()
    async with repo:
        pass
    with pytest.raises(RepositoryClosedError):
        await stores.cassandra.inner.get(uuid.uuid4())


async def test_a_store_that_cannot_open_leaves_nothing_open() -> None:
    class Broken(InMemoryBackend):
        async def _open(self) -> None:
            raise BackendUnavailableError("down", store="documentdb")

    cassandra = InMemoryBackend(name="cassandra")
    repo = SessionRepository(
        cassandra=cassandra,
        documentdb=Broken(name="documentdb"),
        phases=StaticPhaseSource(Phase.DUAL_WRITE),
        repairs=InMemoryRepairQueue(),
    )
    with pytest.raises(BackendUnavailableError):
        await repo.__aenter__()
    with pytest.raises(RepositoryClosedError):
        await cassandra.get(uuid.uuid4())
    with pytest.raises(RepositoryClosedError):
        await repo.get(uuid.uuid4())
