"""Fresh DocumentDB-kind stores on the real Mongo-wire server (FerretDB in this repo).

Every store gets its own collection ``sessionstore_test.c_<12 hex>``, dropped when the
backend is closed, so tests never see each other's data. The tests of one event loop
share one ``AsyncMongoClient`` (a client is bound to the loop it first ran on, and
pytest-asyncio gives each test its own loop); it is closed when the last store or
collection of that loop is released, never by a backend's ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from sessionstore.backends.documentdb import DocumentDBBackend
from tests.real.servers import MONGODB_URI
from tests.stores import StoreHandle

TEST_DATABASE = "sessionstore_test"


@dataclasses.dataclass
class _Shared:
    client: AsyncMongoClient[dict[str, Any]]
    users: int = 0


_clients: dict[asyncio.AbstractEventLoop, _Shared] = {}


def new_client(uri: str = MONGODB_URI, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client configured like the one ``DocumentDBBackend.connect`` builds."""
    settings: dict[str, Any] = {
        "uuidRepresentation": "standard",
        "tz_aware": True,
        "tzinfo": dt.UTC,
        "retryWrites": False,
        "serverSelectionTimeoutMS": 5_000,
    }
    settings.update(options)
    return AsyncMongoClient(uri, **settings)


async def acquire_client() -> AsyncMongoClient[dict[str, Any]]:
    """The running loop's shared client; pair every call with :func:`release_client`."""
    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None:
        shared = _clients[loop] = _Shared(new_client())
    shared.users += 1
    return shared.client


async def release_client() -> None:
    """Drop one use of the running loop's shared client; the last one closes it."""
    loop = asyncio.get_running_loop()
    shared = _clients[loop]
    shared.users -= 1
    if shared.users == 0:
        del _clients[loop]
        await shared.client.close()


def fresh_collection_name() -> str:
    return f"c_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def fresh_collection() -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    """A new, empty collection on the shared client; dropped afterwards."""
    client = await acquire_client()
    collection = client[TEST_DATABASE][fresh_collection_name()]
    try:
        yield collection
    finally:
        try:
            with contextlib.suppress(PyMongoError):
                await collection.drop()
        finally:
            await release_client()


class _TestBackend(DocumentDBBackend):
    """Drops its collection and releases the shared client when closed."""

    def __init__(
        self, collection: AsyncCollection[dict[str, Any]], *, insert_first: bool = False
    ) -> None:
        super().__init__(collection, name="documentdb", insert_first=insert_first)
        self._test_collection = collection

    async def _close(self) -> None:
        try:
            with contextlib.suppress(PyMongoError):
                await self._test_collection.drop()
        finally:
            await release_client()
            await super()._close()


async def open_documentdb_store(*, insert_first: bool = False) -> StoreHandle:
    """An opened DocumentDBBackend on a fresh collection of the real server."""
    client = await acquire_client()
    backend = _TestBackend(
        client[TEST_DATABASE][fresh_collection_name()], insert_first=insert_first
    )
    try:
        await backend.__aenter__()
    except BaseException:
        await release_client()
        raise
    # FerretDB (standing in for DocumentDB here) runs a conditional update as a query
    # followed by a write by _id, with no re-check: two concurrent writers to one key can
    # both "win", so the suite must not expect atomic conditional writes. DocumentDB's
    # single-document writes are atomic.
    return StoreHandle(backend, "documentdb", atomic_conditional_writes=False)
