"""A frozen store (SIGSTOP) under concurrent load never fails or holds the caller for long.

A SIGSTOPped server is the hard case: its port still accepts connections (the kernel's
backlog) and the drivers write their requests, but nothing ever answers, so only the
drivers' own timeouts (cassandra-driver 10 s, PyMongo 30 s) would end the wait. The
repository's deadlines (:class:`~sessionstore.Timeouts`, the documented defaults here)
and breakers must end it first.

Each test freezes one server of a private set (``scripts/servers freeze``; skipped
when the servers are external, as every test that stops a server is) for
``FREEZE_SECONDS`` while writers and readers go through one repository built as a
service builds it (``CassandraBackend.connect``, ``DocumentDBBackend.connect``, a
SQLite repair queue), then thaws it, drains the repair queue and checks that every
acknowledged write is in both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sessionstore import (
    PHASE_PLANS,
    BreakerPolicy,
    Phase,
    SessionRepository,
    SqliteRepairQueue,
    StaticPhaseSource,
    Store,
    Timeouts,
)
from sessionstore.backends.cassandra import CassandraBackend, create_schema
from sessionstore.backends.documentdb import DocumentDBBackend, DocumentDBSettings
from sessionstore.repository import DEFAULT_REPAIR_DELAY
from sessionstore.testing import Call, FaultInjectingBackend, KeySerializingBackend
from tests.real.cassandra_store import (
    TEST_KEYSPACE,
    fresh_table_name,
    server_settings,
    session_execute,
    shared_session,
)
from tests.real.documentdb_store import TEST_DATABASE, fresh_collection
from tests.real.load import Load, Timed, assert_converged, drain, wait_until_answers
from tests.real.pair import servers
from tests.real.servers import MONGODB_URI
from tests.unit.metrics import counter_points, gauge_points, histogram_max

pytestmark = [
    pytest.mark.real,
    # PyMongo 4.20.1 does not close the socket (or the transport around it) of a
    # connection it is still creating when the calling task is cancelled (here: by the
    # repository's deadline); the garbage collector closes it later, with one of these
    # warnings. Upstream: PYTHON-5867, not released yet. The autouse fixture below
    # collects inside the test, so that the warning does not land on a later test.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function _SelectorTransport.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

#: The documented defaults: what a caller can count on.
TIMEOUTS = Timeouts()
#: Default failures (5); probes every second instead of 5 s, so that the breaker closes
#: soon after the thaw and the file stays well under two minutes.
BREAKER = BreakerPolicy(open_seconds=1.0)
#: Allowed on top of a deadline for a whole call: what the healthy store takes under
#: this load (FerretDB's conditional write scans its collection, and both servers,
#: the SQLite repair queue's fsync and the event loop's 9 callers share 2 cores and one
#: disk: up to 1.7 s in CI), and the repair enqueue. A call held by the frozen store
#: would wait until the thaw, up to FREEZE_SECONDS.
MARGIN = 2.0
#: Allowed on top of the deadline for the frozen store's own part of a call (its
#: ``db.client.operation.duration``): the event loop's latency only. The drivers alone
#: would hold it until the thaw, or 10 s (Cassandra) or 30 s (PyMongo).
STORE_MARGIN = 0.5
#: A write refused by an open breaker sends nothing: its time is the event loop's queue.
FAST_FAIL = 0.25
WRITERS, READERS = 6, 3
#: Long enough for the authoritative store's breaker to open (the writes in flight at
#: the freeze pass their 5 s deadline first) and stay open for seconds.
WARM_SECONDS, FREEZE_SECONDS = 1.5, TIMEOUTS.write + 3.0
#: The drain waits for the repairs' delay (the repository's default ``repair_delay``).
DRAIN_SECONDS = DEFAULT_REPAIR_DELAY + 20.0

SERVER = {Store.CASSANDRA: "cassandra", Store.DOCUMENTDB: "ferretdb"}
WRITES = ("save", "delete")


@pytest.fixture(autouse=True)
def _collect_leaked_sockets() -> Iterator[None]:
    yield
    gc.collect()


@dataclasses.dataclass
class Pair:
    """The repository under test, its stores (wrapped, one call log), queue and metrics."""

    repo: SessionRepository
    cassandra: FaultInjectingBackend
    documentdb: FaultInjectingBackend
    queue: SqliteRepairQueue
    calls: list[Call]
    metrics: InMemoryMetricReader

    def transitions(self, store: Store) -> dict[str, int]:
        """``sessionstore.breaker.transitions`` of ``store``, by new state."""
        points = counter_points(self.metrics, "sessionstore.breaker.transitions")
        return {
            dict(attrs)["sessionstore.state"]: value
            for attrs, value in points.items()
            if dict(attrs)["sessionstore.store"] == store.value
        }

    def slowest(self, store: Store, operations: tuple[str, ...]) -> float:
        """The longest of ``store``'s calls of these operations (seconds), per its metric."""
        points = histogram_max(self.metrics, "db.client.operation.duration")
        return max(
            (
                value
                for attrs, value in points.items()
                if dict(attrs)["sessionstore.store"] == store.value
                and dict(attrs)["db.operation.name"] in operations
            ),
            default=0.0,
        )

    def breaker_state(self, store: Store) -> float | None:
        """``sessionstore.breaker.state`` of ``store``: 0 closed, 1 open, 2 probing."""
        points = gauge_points(self.metrics, "sessionstore.breaker.state")
        return points.get((("sessionstore.store", store.value),))

    async def wait_closed(self, store: Store, within: float = 20.0) -> None:
        """Wait (the load still running) until the thawed store's breaker closed again."""
        deadline = time.monotonic() + within
        while self.breaker_state(store) != 0 or not self.transitions(store).get("closed"):
            assert time.monotonic() < deadline, f"the breaker of {store} did not close"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def frozen_pair(phase: Phase, tmp_path: Path) -> AsyncIterator[Pair]:
    """An open repository over a fresh table and collection, backends as a service has them."""
    session = await shared_session()
    table = fresh_table_name()
    await create_schema(session, TEST_KEYSPACE, table)
    metrics = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics])
    calls: list[Call] = []
    try:
        async with fresh_collection() as collection:
            cassandra = FaultInjectingBackend(
                CassandraBackend.connect(server_settings(table=table)), calls=calls
            )
            ferretdb = DocumentDBBackend.connect(
                DocumentDBSettings(
                    uri=MONGODB_URI,
                    database=TEST_DATABASE,
                    collection=collection.name,
                    tls=False,
                )
            )
            # FerretDB's conditional write is a read then a write: same-key writes are
            # serialized in this process (see KeySerializingBackend); keys stay concurrent.
            documentdb = FaultInjectingBackend(KeySerializingBackend(ferretdb), calls=calls)
            queue = SqliteRepairQueue(tmp_path / "repairs.db")
            repo = SessionRepository(
                cassandra=cassandra,
                documentdb=documentdb,
                phases=StaticPhaseSource(phase),
                repairs=queue,
                meter_provider=provider,
                timeouts=TIMEOUTS,
                breaker=BREAKER,
            )
            async with repo:
                yield Pair(repo, cassandra, documentdb, queue, calls, metrics)
    finally:
        provider.shutdown()
        await session_execute(session, f"DROP TABLE IF EXISTS {TEST_KEYSPACE}.{table}")


@dataclasses.dataclass(frozen=True)
class Freeze:
    """When the server was frozen and thawed (monotonic), and the call log's length then."""

    frozen_at: float
    thaw_at: float
    log_at_thaw: int


async def freeze_under_load(
    pair: Pair, load: Load, server: str, store: Store, *, settle: float
) -> Freeze:
    """Run the load: warm up, SIGSTOP ``server`` for FREEZE_SECONDS, SIGCONT it, wait
    until ``store``'s breaker closed again, then ``settle`` seconds more.

    ``scripts/servers`` runs off the event loop: the callers' clocks keep running.
    """
    async with load.running(WRITERS, READERS):
        await asyncio.sleep(WARM_SECONDS)
        await asyncio.to_thread(servers, "freeze", server)
        frozen_at = time.monotonic()
        try:
            await asyncio.sleep(FREEZE_SECONDS)
        finally:
            thaw_at, log_at_thaw = time.monotonic(), len(pair.calls)
            await asyncio.to_thread(servers, "thaw", server)
        await pair.wait_closed(store)
        await asyncio.sleep(settle)
    return Freeze(frozen_at, thaw_at, log_at_thaw)


def summary(label: str, calls: list[Timed]) -> str:
    if not calls:
        return f"{label}: none"
    seconds = sorted(t.seconds for t in calls)
    return (
        f"{label}: {len(calls)} calls, median {statistics.median(seconds) * 1000:.0f} ms, "
        f"max {seconds[-1] * 1000:.0f} ms"
    )


def late(calls: list[Timed], bound: float, frozen_at: float) -> list[str]:
    """The calls that took longer than ``bound`` seconds, described for the failure."""
    return [
        f"{t.kind} started {t.start - frozen_at:+.2f}s from the freeze took {t.seconds:.2f}s"
        for t in calls
        if t.seconds > bound
    ]


# Phases and the server that is the secondary store in each.
SECONDARY_FROZEN = [
    (Phase.DUAL_WRITE, "ferretdb"),
    (Phase.SHADOW, "ferretdb"),
    (Phase.DOCDB_PRIMARY, "cassandra"),
    (Phase.RAMPDOWN, "cassandra"),
]


@pytest.mark.parametrize(("phase", "server"), SECONDARY_FROZEN)
async def test_a_frozen_secondary_fails_no_call_and_holds_none_past_its_deadline(
    phase: Phase, server: str, tmp_path: Path
) -> None:
    secondary = PHASE_PLANS[phase].secondary
    assert secondary is not None and SERVER[secondary] == server
    servers("status", server)  # up (and skipped when the servers are external)
    async with frozen_pair(phase, tmp_path) as pair:
        load = Load(pair.repo)
        # settle: writes reach both stores again
        freeze = await freeze_under_load(pair, load, server, secondary, settle=0.5)
        frozen_at, thaw_at = freeze.frozen_at, freeze.thaw_at

        writes, reads = load.calls(WRITES), load.calls(("get",))
        print(summary("writes before the freeze", load.calls(WRITES, until=frozen_at)))
        print(summary("writes while frozen", load.calls(WRITES, since=frozen_at, until=thaw_at)))
        print(summary("reads", reads), f"; {load.conflicts} conflicts")
        assert [t for t in load.timed if t.outcome not in ("ok", "conflict")] == []
        # The frozen store's part of each write ended at its deadline, and no call
        # waited for it much longer than that.
        assert pair.slowest(secondary, WRITES) <= TIMEOUTS.secondary_write + STORE_MARGIN
        assert late(writes, TIMEOUTS.secondary_write + MARGIN, frozen_at) == []
        assert late(reads, TIMEOUTS.read + MARGIN, frozen_at) == []
        frozen_writes = load.calls(WRITES, since=frozen_at, until=thaw_at)
        assert sum(t.outcome == "ok" for t in frozen_writes) >= 20  # acknowledged meanwhile
        # The breaker opened (the secondary was skipped, not waited for) and closed after
        # the thaw (wait_closed). It may open again: FerretDB, scanning its collection on
        # 2 shared cores, answers near the 0.5 s secondary deadline once the callers it
        # skipped all come back at once.
        assert pair.repo.stats.secondary_skipped > 0
        assert pair.transitions(secondary)["open"] >= 1

        await wait_until_answers(pair.cassandra)
        await wait_until_answers(pair.documentdb)
        await drain(pair.cassandra, pair.documentdb, pair.queue, within=DRAIN_SECONDS)
        await assert_converged(load, pair.cassandra, pair.documentdb)


# Phases with a read fallback, and the server that is the authoritative store in each.
AUTHORITATIVE_FROZEN = [(Phase.SHADOW, "cassandra"), (Phase.DOCDB_PRIMARY, "ferretdb")]


@pytest.mark.parametrize(("phase", "server"), AUTHORITATIVE_FROZEN)
async def test_a_frozen_authoritative_store_fails_writes_fast_and_reads_fall_back(
    phase: Phase, server: str, tmp_path: Path
) -> None:
    plan = PHASE_PLANS[phase]
    auth = plan.authoritative
    assert plan.fallback and SERVER[auth] == server
    servers("status", server)
    async with frozen_pair(phase, tmp_path) as pair:
        load = Load(pair.repo, call_log=pair.calls)
        # settle: writes are acknowledged again
        freeze = await freeze_under_load(pair, load, server, auth, settle=1.0)
        frozen_at, thaw_at, log_at_thaw = freeze.frozen_at, freeze.thaw_at, freeze.log_at_thaw

        failed = [t for t in load.calls(WRITES) if t.outcome not in ("ok", "conflict")]
        timed_out = [t for t in failed if t.outcome == "BackendTimeoutError"]
        refused = [t for t in failed if t.outcome == "CircuitOpenError"]
        frozen_reads = load.calls(("get",), since=frozen_at, until=thaw_at)
        print(summary("writes timed out", timed_out))
        print(summary("writes refused by the breaker", refused))
        print(summary("reads while frozen", frozen_reads))

        # Reads kept answering, from the other store once the authoritative one failed.
        assert [t for t in load.calls(("get",)) if t.outcome != "ok"] == []
        assert max(t.seconds for t in frozen_reads) <= TIMEOUTS.read + MARGIN
        opened = min(t.end for t in refused)
        while_open = load.calls(("get",), since=opened, until=thaw_at)
        assert len(while_open) >= 20
        assert pair.repo.stats.read_fallbacks >= len(while_open)

        # Writes failed with a typed error: past the write deadline while the breaker
        # was closed (those in flight at the freeze), then at once, sending nothing, once
        # it had opened. No write sent while frozen was acknowledged.
        assert len(timed_out) + len(refused) == len(failed)
        assert timed_out and refused
        assert max(t.start for t in timed_out) <= min(t.start for t in refused)
        assert max(t.seconds for t in timed_out) <= TIMEOUTS.write + MARGIN
        assert max(t.seconds for t in refused) <= FAST_FAIL
        frozen_writes = load.calls(WRITES, since=frozen_at, until=thaw_at)
        assert all(t.outcome != "ok" for t in frozen_writes if t.end < thaw_at)
        since_open = pair.calls[min(t.log_index for t in refused) : log_at_thaw]
        sent = [c for c in since_open if c.store == auth.value]
        # Only the breaker's probes (one read of a random key, every open_seconds).
        assert {c.operation for c in sent} <= {"head"}
        assert len(sent) <= FREEZE_SECONDS / BREAKER.open_seconds + 1

        # After the thaw, writes are acknowledged again and the stores converge.
        assert any(t.outcome == "ok" for t in load.calls(WRITES, since=thaw_at + 1.0))
        await drain(pair.cassandra, pair.documentdb, pair.queue, within=DRAIN_SECONDS)
        await assert_converged(load, pair.cassandra, pair.documentdb)
