"""Scratch stores on real servers: a fresh table and collection, dropped afterwards.

``sessionstore rehearse --real`` runs the rehearsal on them, so a rehearsal against a
staging cluster never touches the sessions table. The driver connections are made
here (not by the backends' ``connect``) because dropping a table needs a raw session.

Example::

    async with scratch_stores(ConnectionSettings.from_env()) as stores:
        report = await run_rehearsal(config, cassandra=stores.cassandra,
                                     documentdb=stores.documentdb)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sessionstore._errors import BackendUnavailableError, ConfigurationError
from sessionstore.backends.base import SessionBackend
from sessionstore.jobs.settings import ConnectionSettings

__all__ = ["ScratchStores", "scratch_stores"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


@dataclasses.dataclass(frozen=True)
class ScratchStores:
    """Two empty backends on real servers, and the table/collection name they use."""

    cassandra: SessionBackend
    documentdb: SessionBackend
    name: str


def _cluster(settings: ConnectionSettings) -> Any:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    options: dict[str, Any] = {
        "contact_points": list(settings.cassandra_hosts),
        "port": settings.cassandra_port,
        "connect_timeout": 5.0,
        # As CassandraBackend.connect does: without it each write waits ~40 ms on Nagle.
        "sockopts": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        "execution_profiles": {
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(
                    DCAwareRoundRobinPolicy(settings.cassandra_local_dc or "")
                ),
                request_timeout=settings.request_timeout,
            )
        },
    }
    if settings.cassandra_protocol_version is not None:
        options["protocol_version"] = settings.cassandra_protocol_version
    if settings.cassandra_username and settings.cassandra_password:
        options["auth_provider"] = PlainTextAuthProvider(
            settings.cassandra_username, settings.cassandra_password.get_secret_value()
        )
    ca_file = settings.cassandra_tls_ca_file or settings.tls_ca_file
    if ca_file is not None:
        options["ssl_context"] = ssl.create_default_context(cafile=str(ca_file))
    return Cluster(**options)


def _mongo_client(settings: ConnectionSettings) -> Any:
    from pymongo import AsyncMongoClient

    if settings.mongodb_uri is None or not settings.documentdb_database:
        raise ConfigurationError("the MongoDB URI and DocumentDB database must be set")
    options: dict[str, Any] = {
        "uuidRepresentation": "standard",
        "tz_aware": True,
        "tzinfo": dt.UTC,
        "retryWrites": False,
        "serverSelectionTimeoutMS": 10_000,
    }
    ca_file = settings.documentdb_tls_ca_file or settings.tls_ca_file
    if ca_file is not None:
        options.update(tls=True, tlsCAFile=str(ca_file))
    return AsyncMongoClient(settings.mongodb_uri.get_secret_value(), **options)


@contextlib.asynccontextmanager
async def scratch_stores(
    settings: ConnectionSettings, *, keep: bool = False, create_keyspace: bool = False
) -> AsyncIterator[ScratchStores]:
    """Yield backends on a fresh ``rehearsal_<hex>`` table and collection.

    The keyspace must exist unless ``create_keyspace`` (SimpleStrategy, one replica:
    test clusters only). Both are dropped on exit unless ``keep``.
    """
    from sessionstore.backends.cassandra import CassandraBackend, create_schema
    from sessionstore.backends.documentdb import DocumentDBBackend

    keyspace = settings.cassandra_keyspace
    if not keyspace or not _IDENTIFIER.match(keyspace):
        # Checked here too: the name is spliced into the DROP TABLE below.
        raise ConfigurationError("the Cassandra keyspace must be set to a valid name")
    name = f"rehearsal_{uuid.uuid4().hex[:10]}"
    try:
        session = await asyncio.to_thread(lambda: _cluster(settings).connect())
    except Exception as exc:
        raise BackendUnavailableError(
            f"connect failed ({type(exc).__name__})", store="cassandra"
        ) from exc
    client = _mongo_client(settings)
    replication: dict[str, str | int] = {"class": "SimpleStrategy", "replication_factor": 1}
    try:
        await create_schema(
            session, keyspace, name, replication=replication if create_keyspace else None
        )
        collection = client[settings.documentdb_database][name]
        yield ScratchStores(
            CassandraBackend(session, keyspace=keyspace, table=name),
            DocumentDBBackend(collection, name="documentdb"),
            name,
        )
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                drop = f"DROP TABLE IF EXISTS {keyspace}.{name}"
                await asyncio.to_thread(session.execute, drop, timeout=60.0)
            with contextlib.suppress(Exception):
                await client[settings.documentdb_database].drop_collection(name)
        await client.close()
        await asyncio.to_thread(session.cluster.shutdown)
