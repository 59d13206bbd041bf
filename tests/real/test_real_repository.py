"""The repository over the real pair: every phase, and the servers stopped under load."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest

from sessionstore import (
    MAX_ENCODED_SIZE,
    InMemoryRepairQueue,
    InvalidSessionError,
    Phase,
    SessionRepository,
    SessionTooLargeError,
    StaticPhaseSource,
)
from sessionstore.backends.cassandra import CassandraBackend, create_schema
from sessionstore.backends.documentdb import DocumentDBBackend
from sessionstore.testing import KeySerializingBackend
from tests.helpers import make_session
from tests.phase_checks import check_routing
from tests.real.load import Load, assert_converged, drain, wait_until_answers
from tests.real.pair import real_repository, servers

pytestmark = pytest.mark.real


@pytest.mark.parametrize("phase", list(Phase))
async def test_phase_routing_on_the_real_pair(phase: Phase) -> None:
    async with real_repository(phase) as (repo, stores):
        await check_routing(phase, repo, stores)


@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE, Phase.DOCDB_PRIMARY])
async def test_multi_megabyte_session_round_trips_through_both_stores(phase: Phase) -> None:
    async with real_repository(phase) as (repo, stores):
        saved = await repo.save(make_session(attachment_bytes=8 * 1024 * 1024))
        assert await repo.get(saved.session_id) == saved
        for store in (stores.cassandra, stores.documentdb):
            record = await store.inner.get(saved.session_id)
            assert record is not None and record.session == saved


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_session(attachment_bytes=MAX_ENCODED_SIZE + 1),
        lambda: make_session().model_copy(update={"metadata": {"$set": "x"}}),
        lambda: make_session().model_copy(update={"metadata": {"a.b": "x"}}),
    ],
)
async def test_bad_sessions_touch_neither_real_store(make: Any) -> None:
    async with real_repository(Phase.DUAL_WRITE) as (repo, stores):
        bad = make()
        with pytest.raises(InvalidSessionError):
            await repo.save(bad)
        assert stores.calls == []
        for store in (stores.cassandra, stores.documentdb):
            assert await store.inner.get(bad.session_id) is None
            page = await store.inner.scan(store.inner.key_space, limit=10)
            assert page.records == ()


async def test_oversize_is_the_typed_error() -> None:
    async with real_repository(Phase.DOCDB_PRIMARY) as (repo, _):
        with pytest.raises(SessionTooLargeError) as info:
            await repo.save(make_session(attachment_bytes=MAX_ENCODED_SIZE + 1))
        assert info.value.limit == MAX_ENCODED_SIZE


@pytest.mark.parametrize(
    "hostile_id",
    ['{"$gt": ""}', "00000000-0000-0000-0000-000000000000' OR '1'='1", "*", "$where"],
)
async def test_injection_shaped_ids_are_rejected_before_any_store(hostile_id: str) -> None:
    async with real_repository(Phase.SHADOW) as (repo, stores):
        await repo.save(make_session())
        with pytest.raises(InvalidSessionError):
            await repo.get(hostile_id)
        with pytest.raises(InvalidSessionError):
            await repo.delete(hostile_id)
        # The save, its read-back of the stored revision (Cassandra), the secondary save.
        assert sorted(c.operation for c in stores.calls) == ["head", "save", "save"]


# -- servers stopped under load ------------------------------------------------------


async def _fault_run(phase: Phase, down: str, cassandra: Any, ferretdb: Any) -> None:
    # Six writers share 60 keys, so two writes to one key often overlap. FerretDB's
    # conditional replace is a read followed by a write (DocumentDB's is atomic): the
    # older of two overlapping writes can land last, and no revision rule can stop it.
    # Writes to one key are therefore serialized in this process; keys stay concurrent.
    documentdb = KeySerializingBackend(ferretdb)
    queue = InMemoryRepairQueue()
    repo = SessionRepository(
        cassandra=cassandra,
        documentdb=documentdb,
        phases=StaticPhaseSource(phase),
        repairs=queue,
        # The stopped server's process is gone: none of its writes can land late.
        repair_delay=0.0,
    )
    async with repo:
        load = Load(repo)
        async with load.running():
            await asyncio.sleep(1.5)  # both up
            # In a thread: the event loop (and the calls' deadlines) keep running meanwhile.
            await asyncio.to_thread(servers, "stop", down)
            await asyncio.sleep(4)  # secondary down: writes still acknowledged
            acked_while_down = len(load.acked)
            await asyncio.to_thread(servers, "start", down)
            await wait_until_answers(cassandra if down == "cassandra" else documentdb)
            await asyncio.sleep(1.5)  # both up again
        assert acked_while_down > 0
        assert repo.stats.secondary_failures > 0, "the stopped server never failed a write"
        failed = [t for t in load.timed if t.outcome not in ("ok", "conflict")]
        assert not failed, f"a secondary outage failed {len(failed)} calls: {failed[:3]}"
        await drain(cassandra, documentdb, queue)
        await assert_converged(load, cassandra, documentdb)


async def test_documentdb_down_during_dual_write_loses_nothing() -> None:
    from tests.real.cassandra_store import open_backend
    from tests.real.documentdb_store import new_client

    client = new_client(serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
    cassandra = await open_backend()
    collection = client["sessionstore_test"][f"fault_{uuid.uuid4().hex[:8]}"]
    documentdb = DocumentDBBackend(collection, name="documentdb")
    try:
        await _fault_run(Phase.DUAL_WRITE, "ferretdb", cassandra, documentdb)
    finally:
        with contextlib.suppress(Exception):
            await collection.drop()
        await client.close()


async def test_cassandra_down_during_docdb_primary_loses_nothing() -> None:
    from cassandra.cluster import Cluster
    from cassandra.policies import ConstantReconnectionPolicy

    from tests.real.cassandra_store import NODELAY, TEST_KEYSPACE, shared_session
    from tests.real.documentdb_store import new_client
    from tests.real.servers import CASSANDRA_HOSTS, CASSANDRA_PORT

    # A cluster of its own that reconnects every half second after the restart.
    cluster = Cluster(
        CASSANDRA_HOSTS,
        port=CASSANDRA_PORT,
        protocol_version=5,
        connect_timeout=2,
        reconnection_policy=ConstantReconnectionPolicy(0.5, max_attempts=None),
        sockopts=NODELAY,
    )
    session = await asyncio.to_thread(cluster.connect)
    await shared_session()  # the test keyspace exists
    table = f"fault_{uuid.uuid4().hex[:8]}"
    await create_schema(session, TEST_KEYSPACE, table)
    cassandra = CassandraBackend(session, keyspace=TEST_KEYSPACE, table=table)
    client = new_client(serverSelectionTimeoutMS=5000)
    collection = client["sessionstore_test"][f"fault_{uuid.uuid4().hex[:8]}"]
    documentdb = DocumentDBBackend(collection, name="documentdb")
    try:
        await _fault_run(Phase.DOCDB_PRIMARY, "cassandra", cassandra, documentdb)
    finally:
        with contextlib.suppress(Exception):
            await collection.drop()
        await client.close()
        await asyncio.to_thread(cluster.shutdown)
        # Later tests share the process-wide session: wait until it is back too.
        shared = await shared_session()
        await wait_until_answers(CassandraBackend(shared, keyspace=TEST_KEYSPACE, table=table))
