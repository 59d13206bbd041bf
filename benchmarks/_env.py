"""The servers: the library's backends as a service builds them, and the raw drivers.

The library side is built the way a service builds it (``CassandraBackend.connect`` and
``DocumentDBBackend.connect`` with their settings), so whatever the library configures
(or forgets to) is measured. The baselines use a driver connection of their own, set up
as well as the drivers allow: the execution profile the backend builds (token-aware
routing, consistency, tuple rows), the same protocol version and codec options, and
``TCP_NODELAY`` on the Cassandra sockets (PyMongo sets it itself). Every table and
collection is created fresh under the keyspace/database ``sessionstore_bench`` and
dropped by :meth:`Servers.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from types import TracebackType
from typing import Any, Self

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement, tuple_factory
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from benchmarks._raw import cql
from sessionstore.backends.cassandra import CassandraBackend, CassandraSettings, schema_cql
from sessionstore.backends.documentdb import DocumentDBBackend, DocumentDBSettings
from sessionstore.phases import PhaseSource
from sessionstore.repair import InMemoryRepairQueue, RepairQueue
from sessionstore.repository import SessionRepository

CASSANDRA_HOSTS = os.environ.get("SESSIONSTORE_CASSANDRA_HOSTS", "127.0.0.1").split(",")
CASSANDRA_PORT = int(os.environ.get("SESSIONSTORE_CASSANDRA_PORT", "19042"))
MONGODB_URI = os.environ.get("SESSIONSTORE_MONGODB_URI", "mongodb://127.0.0.1:27117/")

KEYSPACE = "sessionstore_bench"
DATABASE = "sessionstore_bench"
#: The library's default consistency, set on the baselines' statements too.
CONSISTENCY = ConsistencyLevel.LOCAL_QUORUM
REQUEST_TIMEOUT = 30.0

Doc = dict[str, Any]


def cluster_settings(port: int = CASSANDRA_PORT) -> dict[str, Any]:
    """Keyword arguments of the baselines' ``Cluster``: the backend's own profile."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy("")),
        consistency_level=CONSISTENCY,
        request_timeout=REQUEST_TIMEOUT,
        row_factory=tuple_factory,
    )
    return {
        "contact_points": CASSANDRA_HOSTS,
        "port": port,
        "protocol_version": 5,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": 10.0,
        "sockopts": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }


def mongo_client(uri: str = MONGODB_URI, **overrides: Any) -> AsyncMongoClient[Doc]:
    """A client with the options ``DocumentDBBackend.connect`` uses."""
    options: dict[str, Any] = {
        "uuidRepresentation": "standard",
        "tz_aware": True,
        "tzinfo": dt.UTC,
        "retryWrites": False,
        "readPreference": "primary",
        "serverSelectionTimeoutMS": 10_000,
        "maxPoolSize": 100,
        "appname": "sessionstore-bench",
    }
    options.update(overrides)
    return AsyncMongoClient(uri, **options)


class Servers:
    """Connections to both servers plus the tables/collections this run created.

    ::

        async with Servers() as servers:
            table = await servers.new_table("lat")
            backend = await servers.cassandra_backend(table)

    ``cassandra_port`` and ``mongodb_uri`` point it at another pair (the resilience
    section's own servers); the defaults are the ``SESSIONSTORE_*`` settings.
    """

    def __init__(
        self, *, cassandra_port: int = CASSANDRA_PORT, mongodb_uri: str = MONGODB_URI
    ) -> None:
        self.cassandra_port = cassandra_port
        self.mongodb_uri = mongodb_uri
        self.run_id = uuid.uuid4().hex[:8]
        self.cluster: Cluster | None = None
        self._session: Session | None = None
        self.client: AsyncMongoClient[Doc] | None = None
        self._tables: list[str] = []
        self._collections: list[str] = []

    async def __aenter__(self) -> Self:
        # The TTL index is refused by FerretDB v1 (logged once per backend): not a finding.
        logging.getLogger("sessionstore.backends.documentdb").setLevel(logging.ERROR)
        cluster = Cluster(**cluster_settings(self.cassandra_port))
        self.cluster = cluster
        self._session = await asyncio.to_thread(cluster.connect)
        await self.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        self.client = mongo_client(self.mongodb_uri)
        await self.client.admin.command("ping")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def session(self) -> Session:
        """The shared cassandra-driver session."""
        assert self._session is not None
        return self._session

    @property
    def db(self) -> Any:
        """The benchmark's database on the shared PyMongo client."""
        assert self.client is not None
        return self.client[DATABASE]

    async def execute(self, text: str) -> list[Any]:
        """Run one CQL statement (set-up only) and return its rows."""
        return await cql(self.session, SimpleStatement(text), request_timeout=120.0)

    def name(self, prefix: str) -> str:
        """A fresh table/collection name of this run."""
        return f"{prefix}_{self.run_id}_{uuid.uuid4().hex[:6]}"

    async def new_table(self, prefix: str) -> str:
        """Create a fresh sessions table (the library's schema); return its name."""
        table = self.name(prefix)
        self._tables.append(table)
        await self.execute(schema_cql(KEYSPACE, table))
        return table

    async def drop_table(self, table: str) -> None:
        """Drop a table of this run now (frees the server's memory early)."""
        await self.execute(f"DROP TABLE IF EXISTS {KEYSPACE}.{table}")
        with contextlib.suppress(ValueError):
            self._tables.remove(table)

    async def new_collection(self, prefix: str, name: str | None = None) -> AsyncCollection[Doc]:
        """Create an empty collection (dropping any leftover of the same name)."""
        name = name or self.name(prefix)
        if name not in self._collections:
            self._collections.append(name)
        await self.db.drop_collection(name)
        await self.db.create_collection(name)
        collection: AsyncCollection[Doc] = self.db[name]
        return collection

    def cassandra_settings(self, table: str) -> CassandraSettings:
        """The backend's settings for ``table`` (library defaults, protocol v5 pinned)."""
        return CassandraSettings(
            contact_points=CASSANDRA_HOSTS,
            port=self.cassandra_port,
            keyspace=KEYSPACE,
            table=table,
            protocol_version=5,
        )

    async def cassandra_backend(self, table: str, name: str = "cassandra") -> CassandraBackend:
        """An opened ``CassandraBackend.connect`` backend (its own cluster) on ``table``."""
        backend = CassandraBackend.connect(self.cassandra_settings(table), name=name)
        await backend.__aenter__()
        return backend

    async def documentdb_backend(
        self,
        collection: AsyncCollection[Doc],
        name: str = "documentdb",
        *,
        insert_first: bool = False,
    ) -> DocumentDBBackend:
        """An opened ``DocumentDBBackend.connect`` backend (its own client)."""
        # tls=False: the explicit plaintext opt-out for the loopback test server.
        settings = DocumentDBSettings(
            uri=self.mongodb_uri, database=DATABASE, collection=collection.name, tls=False
        )
        backend = DocumentDBBackend.connect(settings, name=name, insert_first=insert_first)
        await backend.__aenter__()
        return backend

    async def repository(
        self,
        table: str,
        collection: AsyncCollection[Doc],
        phases: PhaseSource,
        repairs: RepairQueue | None = None,
        **options: Any,
    ) -> SessionRepository:
        """A repository as a service builds it: both backends connected by settings, an
        in-memory repair queue unless ``repairs`` is given; ``options`` go to
        :class:`SessionRepository`."""
        return SessionRepository(
            cassandra=await self.cassandra_backend(table),
            documentdb=await self.documentdb_backend(collection),
            phases=phases,
            repairs=repairs or InMemoryRepairQueue(),
            **options,
        )

    async def aclose(self) -> None:
        """Drop what this run created (the keyspace and database too, if left empty)."""
        try:
            if self._session is not None:
                for table in list(self._tables):
                    await self.drop_table(table)
                tables = f"SELECT table_name FROM system_schema.tables WHERE keyspace_name = '{KEYSPACE}'"  # noqa: S608, E501
                rows = await self.execute(tables)
                if not rows:
                    await self.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
            if self.client is not None:
                for name in self._collections:
                    await self.db.drop_collection(name)
                if not await self.db.list_collection_names():
                    await self.client.drop_database(DATABASE)
        finally:
            if self.client is not None:
                await self.client.close()
                self.client = None
            if self.cluster is not None:
                await asyncio.to_thread(self.cluster.shutdown)
                self.cluster = None
                self._session = None
