"""Helpers of the real-server job tests: a fresh table and collection, fast bulk seeding.

Why the sizes of these tests differ by direction: FerretDB 1.24's SQLite backend (the
DocumentDB stand-in) pushes no filter on a binary UUID ``_id`` down to SQLite, so every
per-key operation scans the whole collection (measured here: a ``find_one`` takes
~35 us per stored document, a conditional replace ~110 us per document; 0.3 s and
0.9 s at 8k documents). Amazon DocumentDB has an ``_id`` index. So a test can hold
tens of thousands of sessions in FerretDB only where FerretDB is *scanned* (a few
large range queries) and Cassandra does the per-key work; wherever FerretDB takes
per-key reads or writes, the tests keep it to hundreds of documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from cassandra.concurrent import execute_concurrent_with_args

from sessionstore import Answer, SessionBackend, StoredRecord, StudentSession
from sessionstore.backends import _cql_codec
from sessionstore.backends._bson_codec import to_doc, tombstone_doc
from sessionstore.backends.cassandra import CassandraBackend, create_schema
from sessionstore.backends.documentdb import DocumentDBBackend
from sessionstore.revision import WRITER_BITS, HybridClock
from tests.real.cassandra_store import (
    TEST_KEYSPACE,
    fresh_table_name,
    server_settings,
    session_execute,
    shared_session,
)
from tests.real.documentdb_store import TEST_DATABASE, new_client
from tests.real.servers import CASSANDRA_HOSTS, CASSANDRA_PORT, MONGODB_URI


@dataclasses.dataclass(frozen=True)
class Names:
    """A fresh table and collection on the real servers (created by :func:`create_names`)."""

    table: str
    collection: str

    def env(self) -> dict[str, str]:
        """The environment the command line needs to reach exactly these two."""
        return {
            "SESSIONSTORE_CASSANDRA_HOSTS": ",".join(CASSANDRA_HOSTS),
            "SESSIONSTORE_CASSANDRA_PORT": str(CASSANDRA_PORT),
            "SESSIONSTORE_CASSANDRA_KEYSPACE": TEST_KEYSPACE,
            "SESSIONSTORE_CASSANDRA_TABLE": self.table,
            "SESSIONSTORE_CASSANDRA_PROTOCOL_VERSION": "5",
            "SESSIONSTORE_CASSANDRA_CONSISTENCY": "ONE",
            "SESSIONSTORE_MONGODB_URI": MONGODB_URI,
            "SESSIONSTORE_DOCUMENTDB_TLS": "false",  # the loopback FerretDB has no TLS
            "SESSIONSTORE_DOCUMENTDB_DATABASE": TEST_DATABASE,
            "SESSIONSTORE_DOCUMENTDB_COLLECTION": self.collection,
        }


@dataclasses.dataclass
class RealPair:
    """Opened backends on a fresh table and collection, and their names."""

    cassandra: CassandraBackend
    documentdb: DocumentDBBackend
    names: Names
    collection: Any  # the AsyncCollection, for bulk seeding

    @property
    def table(self) -> str:
        return self.names.table

    def env(self) -> dict[str, str]:
        return self.names.env()


async def create_names() -> Names:
    """Create a fresh table (the collection appears on its first write)."""
    session = await shared_session()
    names = Names(f"jobs_{fresh_table_name()}", f"jobs_{uuid.uuid4().hex[:12]}")
    await create_schema(session, TEST_KEYSPACE, names.table)
    return names


async def drop_names(names: Names) -> None:
    """Drop the table and the collection."""
    client = new_client()
    try:
        with contextlib.suppress(Exception):
            await client[TEST_DATABASE].drop_collection(names.collection)
    finally:
        await client.close()
    session = await shared_session()
    with contextlib.suppress(Exception):
        await session_execute(session, f"DROP TABLE IF EXISTS {TEST_KEYSPACE}.{names.table}")


@contextlib.asynccontextmanager
async def open_pair(names: Names) -> AsyncIterator[RealPair]:
    """Opened backends on ``names``: Cassandra through ``CassandraBackend.connect`` (as the
    command line builds it), DocumentDB on a client of this event loop."""
    cassandra = CassandraBackend.connect(server_settings(table=names.table, consistency="ONE"))
    client = new_client()
    collection = client[TEST_DATABASE][names.collection]
    documentdb = DocumentDBBackend(collection, name="documentdb")
    try:
        await cassandra.__aenter__()
        await documentdb.__aenter__()
        yield RealPair(cassandra, documentdb, names, collection)
    finally:
        await cassandra.aclose()
        await documentdb.aclose()
        await client.close()


@contextlib.asynccontextmanager
async def real_pair() -> AsyncIterator[RealPair]:
    """A fresh table and collection with opened backends; both dropped afterwards."""
    names = await create_names()
    try:
        async with open_pair(names) as pair:
            yield pair
    finally:
        await drop_names(names)


def small_session(revision: int, rng: random.Random, **fields: Any) -> StudentSession:
    """A session of a few hundred bytes to a few KB."""
    values: dict[str, Any] = {
        "student_id": f"student-{rng.randrange(10**6)}",
        "assessment_id": f"assessment-{rng.randrange(50)}",
        "answers": tuple(
            Answer(question_id=f"q{i}", response="x" * rng.randrange(50, 700))
            for i in range(rng.randrange(1, 5))
        ),
        "metadata": {"client": rng.choice(["ios", "web", "android"])},
        "revision": revision,
    }
    values.update(fields)
    return StudentSession.create(**values)


async def seed_cassandra(
    table: str,
    records: Iterable[StoredRecord],
    *,
    legacy: Mapping[uuid.UUID, int] | None = None,
) -> None:
    """Bulk-write records with raw driver calls (100 in flight), like history written
    before this library. ``legacy`` ids are written without a revision, at the given
    write timestamp (Cassandra then reports that WRITETIME as their revision)."""
    session = await shared_session()
    legacy = legacy or {}
    columns = ", ".join(_cql_codec.INSERT_COLUMNS)
    markers = ", ".join("?" for _ in _cql_codec.INSERT_COLUMNS)
    target = f"{TEST_KEYSPACE}.{table}"
    rows: list[tuple[Any, ...]] = []
    for record in records:
        if record.session is None:
            row = _cql_codec.tombstone_row(record.session_id, record.revision)
            rows.append((*row, record.revision))
        elif record.session_id in legacy:
            row = list(_cql_codec.to_row(record.session))
            row[-2] = row[-1] = None  # no revision, no deleted column: a historical row
            rows.append((*row, legacy[record.session_id]))
        else:
            rows.append((*_cql_codec.to_row(record.session), record.revision))

    def write() -> None:
        insert = session.prepare(
            f"INSERT INTO {target} ({columns}) VALUES ({markers}) USING TIMESTAMP ?"
        )
        for ok, result in execute_concurrent_with_args(session, insert, rows, concurrency=100):
            if not ok:
                raise result

    await asyncio.to_thread(write)


async def seed_documentdb(collection: Any, records: Iterable[StoredRecord]) -> None:
    """Bulk-insert documents exactly as the backend's codec writes them."""
    docs = [
        to_doc(r.session) if r.session is not None else tombstone_doc(r.session_id, r.revision)
        for r in records
    ]
    for start in range(0, len(docs), 2000):
        await collection.insert_many(docs[start : start + 2000], ordered=False)


def history(n: int, *, seed: int, tombstone_every: int = 0) -> list[StoredRecord]:
    """``n`` records with increasing past revisions; every ``tombstone_every``-th a tombstone."""
    rng = random.Random(seed)
    clock = HybridClock()
    revisions = [clock.next() for _ in range(n)]
    # Issued faster than one a microsecond tick, the last revisions run seconds ahead of
    # the wall clock; a history is in the past (a later save must be newer than it). A
    # shift by whole ticks keeps the clock's writer id in the low bits.
    tick = 1 << WRITER_BITS
    ahead = revisions[-1] - time.time_ns() // 1000 + 1_000_000
    shift = -(-max(ahead, 0) // tick) * tick
    out = []
    for i, revision in enumerate(r - shift for r in revisions):
        if tombstone_every and i % tombstone_every == tombstone_every - 1:
            out.append(StoredRecord.tombstone(uuid.UUID(int=rng.getrandbits(128)), revision))
        else:
            session = small_session(revision, rng, session_id=uuid.UUID(int=rng.getrandbits(128)))
            out.append(StoredRecord.of(session))
    return out


async def all_records(
    store: SessionBackend, page_size: int = 2000
) -> dict[uuid.UUID, StoredRecord]:
    """Every record of a store, by a full scan (a few large pages)."""
    records: dict[uuid.UUID, StoredRecord] = {}
    for key_range in store.key_space.split(4):
        cursor: str | None = None
        while True:
            page = await store.scan(key_range, cursor=cursor, limit=page_size)
            records.update((r.session_id, r) for r in page)
            cursor = page.cursor
            if cursor is None:
                break
    return records
