"""Fresh Cassandra stores on the real server that ``scripts/servers up cassandra`` started.

Every store gets an empty table of its own, ``sessionstore_test.t_<12 hex>``, created
with the library's :func:`~sessionstore.backends.cassandra.create_schema`, so tests never
see each other's data. When the backend closes, the table is truncated and handed to the
next test (much faster than a DROP on Cassandra 5), or dropped if a request may still
be in flight; the remaining tables are dropped at exit. All tests of the process share one
driver ``Cluster``: the driver runs on its own threads, not on an event loop, so one
connection pool serves every test's loop. It is created lazily in a worker thread and
shut down at interpreter exit, never by a backend's ``aclose``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import threading
import uuid
from typing import Any, ClassVar

from cassandra import DriverException
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import (
    ConstantReconnectionPolicy,
    DCAwareRoundRobinPolicy,
    TokenAwarePolicy,
)
from cassandra.query import SimpleStatement

from sessionstore.backends.cassandra import (
    CassandraBackend,
    CassandraSettings,
    create_schema,
)
from tests.real.servers import CASSANDRA_HOSTS, CASSANDRA_PORT
from tests.stores import StoreHandle

TEST_KEYSPACE = "sessionstore_test"


class _Shared:
    """The process-wide cluster and session; a class, not module globals, to mutate."""

    lock = threading.Lock()
    cluster: Cluster | None = None
    session: Session | None = None
    keyspace_ready = False
    free_tables: ClassVar[list[str]] = []  # emptied tables, ready for the next test


def server_settings(**overrides: Any) -> CassandraSettings:
    """Settings for ``CassandraBackend.connect`` against the test server."""
    values: dict[str, Any] = {
        "contact_points": CASSANDRA_HOSTS,
        "port": CASSANDRA_PORT,
        "keyspace": TEST_KEYSPACE,
        "protocol_version": 5,  # Cassandra 5.0; skips the driver's downgrade warnings
        "connect_timeout": 5.0,
    }
    values.update(overrides)
    return CassandraSettings(**values)


#: As the backend's own clusters do (docs/cassandra.md): without it, a request written in
#: more than one send() waits about 40 ms for the server's delayed ACK.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _connect_blocking() -> Session:
    with _Shared.lock:
        if _Shared.session is None:
            profile = ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                request_timeout=30.0,
            )
            cluster = Cluster(
                CASSANDRA_HOSTS,
                port=CASSANDRA_PORT,
                protocol_version=5,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                connect_timeout=5.0,
                sockopts=NODELAY,
                # Tests restart the server (tests/real/test_real_repository.py): the
                # driver's default backoff grows to minutes, so come back within a second.
                reconnection_policy=ConstantReconnectionPolicy(0.5, max_attempts=None),
            )
            _Shared.session = cluster.connect()
            _Shared.cluster = cluster
            _at_exit(_shutdown)
        return _Shared.session


async def shared_session() -> Session:
    """The process-wide driver session (created on first use, in a worker thread)."""
    session = _Shared.session or await asyncio.to_thread(_connect_blocking)
    if not _Shared.keyspace_ready:
        await session_execute(
            session,
            f"CREATE KEYSPACE IF NOT EXISTS {TEST_KEYSPACE} "
            "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        )
        _Shared.keyspace_ready = True
    return session


async def session_execute(session: Session, cql: str, params: Any = None) -> list[Any]:
    """Run raw CQL (test set-up only) without blocking the loop; returns the rows."""
    from sessionstore.backends._asyncio_bridge import execute

    result = await execute(session, SimpleStatement(cql), params, request_timeout=60.0)
    return list(result.current_rows)


def fresh_table_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class TestCassandraBackend(CassandraBackend):
    """Gives its table back when closed (emptied, or dropped); never closes the cluster."""

    __test__ = False  # not a pytest test class

    _in_flight = 0
    _unclean = False

    async def _run(
        self, session: Session, operation: str, bound: Any, paging_state: bytes | None = None
    ) -> Any:
        self._in_flight += 1
        try:
            return await super()._run(session, operation, bound, paging_state)
        except BaseException:
            # A failed, timed-out or cancelled write may still land later: such a table
            # is dropped, never handed to another test.
            self._unclean = True
            raise
        finally:
            self._in_flight -= 1

    async def _close(self) -> None:
        try:
            if self._session is not None:
                clean = not self._unclean and self._in_flight == 0
                await _give_back(self._session, self.table, clean=clean)
        finally:
            await super()._close()


async def _give_back(session: Session, table: str, *, clean: bool) -> None:
    # Why not always DROP: on Cassandra 5 a DROP TABLE takes 0.1-1 s, a TRUNCATE of a
    # test-sized table some tens of milliseconds. Truncation discards every cell written
    # before it whatever its write timestamp, so the emptied table behaves as a new one.
    target = f"{TEST_KEYSPACE}.{table}"
    with contextlib.suppress(DriverException, OSError):
        if clean:
            await session_execute(session, f"TRUNCATE {target}")
            with _Shared.lock:
                _Shared.free_tables.append(table)
            return
        await session_execute(session, f"DROP TABLE IF EXISTS {target}")


def _at_exit(callback: Any) -> None:
    # The driver hands DDL responses to its thread pool, and concurrent.futures shuts
    # every pool down at threading shutdown -- before atexit callbacks run. Callbacks of
    # threading's own (private, Python 3.9+) hook run before that pool shutdown.
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(callback)
    else:
        register(callback)


def _shutdown() -> None:
    with _Shared.lock:
        tables, _Shared.free_tables = _Shared.free_tables, []
        session, cluster = _Shared.session, _Shared.cluster
    if session is not None:
        for table in tables:
            with contextlib.suppress(DriverException, OSError):
                session.execute(f"DROP TABLE IF EXISTS {TEST_KEYSPACE}.{table}", timeout=60.0)
    if cluster is not None:
        cluster.shutdown()


async def open_backend(**options: Any) -> TestCassandraBackend:
    """An opened backend on an empty table of its own, on the shared session."""
    session = await shared_session()
    with _Shared.lock:
        table = _Shared.free_tables.pop() if _Shared.free_tables else fresh_table_name()
    # IF NOT EXISTS: a no-op for a recycled table, the real thing for a new one.
    await create_schema(session, TEST_KEYSPACE, table)
    backend = TestCassandraBackend(session, keyspace=TEST_KEYSPACE, table=table, **options)
    await backend.__aenter__()
    return backend


async def open_cassandra_store() -> StoreHandle:
    """An opened CassandraBackend on a fresh table of the real server."""
    backend = await open_backend()
    # Writes are ordered by their USING TIMESTAMP, not by arrival: concurrent writers to
    # one key converge on the newest revision without any read-before-write.
    return StoreHandle(backend, "cassandra", atomic_conditional_writes=True)
