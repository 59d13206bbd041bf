"""Scratch stores on real servers: a fresh table and collection, dropped afterwards.

``sessionstore rehearse --real`` runs the rehearsal on them, so a rehearsal against a
staging cluster never touches the sessions table. The driver connections are made
here (not by the backends' ``connect``) because dropping a table needs a raw session,
but with the backends' own builders, so the same settings rules apply (TLS on for
DocumentDB unless opted out, no Cassandra credentials in plaintext unless opted in).

Example::

    async with scratch_stores(ConnectionSettings.from_env()) as stores:
        report = await run_rehearsal(config, cassandra=stores.cassandra,
                                     documentdb=stores.documentdb)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator

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


@contextlib.asynccontextmanager
async def scratch_stores(
    settings: ConnectionSettings, *, keep: bool = False, create_keyspace: bool = False
) -> AsyncIterator[ScratchStores]:
    """Yield backends on a fresh ``rehearsal_<hex>`` table and collection.

    The keyspace must exist unless ``create_keyspace`` (SimpleStrategy, one replica:
    test clusters only). Both are dropped on exit unless ``keep``.
    """
    from sessionstore.backends.cassandra import CassandraBackend, _build_cluster, create_schema
    from sessionstore.backends.documentdb import DocumentDBBackend, _make_client

    keyspace = settings.cassandra_keyspace
    if not keyspace or not _IDENTIFIER.match(keyspace):
        # Checked here too: the name is spliced into the DROP TABLE below.
        raise ConfigurationError("the Cassandra keyspace must be set to a valid name")
    name = f"rehearsal_{uuid.uuid4().hex[:10]}"
    # Both validated before anything connects.
    cassandra_settings = settings.cassandra_settings(table=name)
    documentdb_settings = settings.documentdb_settings(collection=name)
    client = _make_client(documentdb_settings)  # connects on first use
    try:
        session = await asyncio.to_thread(lambda: _build_cluster(cassandra_settings).connect())
    except BaseException as exc:
        await client.close()
        if isinstance(exc, ConfigurationError) or not isinstance(exc, Exception):
            raise
        raise BackendUnavailableError(
            f"connect failed ({type(exc).__name__})", store="cassandra"
        ) from exc
    replication: dict[str, str | int] = {"class": "SimpleStrategy", "replication_factor": 1}
    try:
        await create_schema(
            session, keyspace, name, replication=replication if create_keyspace else None
        )
        collection = client[documentdb_settings.database][name]
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
                await client[documentdb_settings.database].drop_collection(name)
        await client.close()
        await asyncio.to_thread(session.cluster.shutdown)
