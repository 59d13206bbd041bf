"""Connections to the real servers that ``scripts/servers up`` starts.

Settings come from the environment so a developer can point the tests at servers of
their own (see docs/servers.md):

- ``SESSIONSTORE_CASSANDRA_HOSTS`` (default ``127.0.0.1``), ``SESSIONSTORE_CASSANDRA_PORT``
  (default ``19042``)
- ``SESSIONSTORE_MONGODB_URI`` (default ``mongodb://127.0.0.1:27117/``)
- ``SESSIONSTORE_SQS_ENDPOINT`` (default ``http://127.0.0.1:<SESSIONSTORE_SQS_PORT>``, port
  ``19324``): an SQS-compatible endpoint (ElasticMQ here), used through boto3

A server that does not answer fails the test; nothing here skips.
"""

from __future__ import annotations

import os

from tests.stores import StoreHandle

CASSANDRA_HOSTS = os.environ.get("SESSIONSTORE_CASSANDRA_HOSTS", "127.0.0.1").split(",")
CASSANDRA_PORT = int(os.environ.get("SESSIONSTORE_CASSANDRA_PORT", "19042"))
MONGODB_URI = os.environ.get("SESSIONSTORE_MONGODB_URI", "mongodb://127.0.0.1:27117/")
SQS_ENDPOINT = os.environ.get(
    "SESSIONSTORE_SQS_ENDPOINT",
    f"http://127.0.0.1:{os.environ.get('SESSIONSTORE_SQS_PORT', '19324')}",
)
# ElasticMQ ignores the region and the credentials but boto3 needs both; the server is
# configured with this region, so the queue ARNs it returns name it too.
SQS_REGION = "us-east-1"


async def open_real_store(kind: str) -> StoreHandle:
    """A fresh, empty, opened backend of ``kind`` on the real server."""
    if kind == "cassandra":
        from tests.real.cassandra_store import open_cassandra_store

        return await open_cassandra_store()
    if kind in ("documentdb", "documentdb-insert-first"):
        from tests.real.documentdb_store import open_documentdb_store

        return await open_documentdb_store(insert_first=kind.endswith("insert-first"))
    raise ValueError(kind)
