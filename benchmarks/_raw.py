"""The baselines: what a service would write with the raw drivers, doing the same I/O.

- Cassandra: the same prepared statements as the backend (the CQL text is built from the
  codec's column lists, so it is identical, ``WRITETIME`` columns included), bound with
  the same consistency level and awaited from asyncio through a minimal callback bridge.
- DocumentDB: ``find_one({"_id": ...})`` and the backend's conditional write
  (``replace_one`` guarded by ``revision < new``, then ``insert_one`` if nothing matched).

Baselines send bytes that were encoded before the clock started (same encoding as the
library), so a ratio charges the library for its validation and its codecs too.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import uuid
from typing import Any

from bson.binary import Binary, UuidRepresentation
from bson.int64 import Int64
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from sessionstore.backends._cql_codec import INSERT_COLUMNS, SELECT_COLUMNS

Doc = dict[str, Any]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


#: Times a baseline waited because the driver refused a request with ConnectionBusy.
BUSY_RETRIES = collections.Counter[str]()


def _busy(exc: BaseException) -> bool:
    # The driver refuses new requests while the socket's send buffer is full (multi-MB
    # writes in flight) with NoHostAvailable(ConnectionBusy) instead of queueing them.
    errors: dict[Any, BaseException] = getattr(exc, "errors", None) or {}
    return (
        isinstance(exc, NoHostAvailable)
        and bool(errors)
        and all(isinstance(e, ConnectionBusy) for e in errors.values())
    )


async def cql(session: Any, statement: Any, *, request_timeout: float = 30.0) -> list[Any]:
    """Run a statement with ``execute_async`` and await its first page from asyncio.

    ``request_timeout`` is the driver's own per-request timeout. A request refused
    because the connection is busy is retried after a short pause, as any copy loop
    must (the library's jobs retry it with back-off).
    """
    for _ in range(100):
        try:
            return await _cql(session, statement, request_timeout)
        except NoHostAvailable as exc:
            if not _busy(exc):
                raise
            BUSY_RETRIES["cql"] += 1
            await asyncio.sleep(0.02)
    return await _cql(session, statement, request_timeout)


async def _cql(session: Any, statement: Any, request_timeout: float) -> list[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()

    def settle(rows: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(rows)
            else:
                future.set_exception(error)

    response = session.execute_async(statement, timeout=request_timeout)
    response.add_callbacks(
        lambda rows: loop.call_soon_threadsafe(settle, rows, None),
        lambda exc: loop.call_soon_threadsafe(settle, None, exc),
    )
    return await future


class RawCassandra:
    """Prepared statements with the backend's exact CQL text, on a shared session."""

    def __init__(self, session: Any, keyspace: str, table: str, consistency: int) -> None:
        target = f"{keyspace}.{table}"
        columns = ", ".join(INSERT_COLUMNS)
        markers = ", ".join("?" for _ in INSERT_COLUMNS)
        select = ", ".join(e if e == n else f"{e} AS {n}" for e, n in SELECT_COLUMNS)
        self.session = session
        self.consistency = consistency
        self.insert = session.prepare(
            f"INSERT INTO {target} ({columns}) VALUES ({markers}) USING TIMESTAMP ?"  # noqa: S608
        )
        self.select = session.prepare(
            f"SELECT {select} FROM {target} WHERE session_id = ?"  # noqa: S608
        )
        self.scan = session.prepare(
            f"SELECT {select} FROM {target} "  # noqa: S608
            "WHERE token(session_id) >= ? AND token(session_id) <= ?"
        )
        for statement in (self.insert, self.select, self.scan):
            statement.is_idempotent = True

    async def get(self, session_id: uuid.UUID) -> Any:
        """The row, or None."""
        bound = self.select.bind((session_id,))
        bound.consistency_level = self.consistency
        rows = await cql(self.session, bound)
        return rows[0] if rows else None

    async def put(self, row: tuple[Any, ...], revision: int) -> None:
        """``row`` (``to_row`` order) with its revision, at write timestamp ``revision``."""
        bound = self.insert.bind((*row[:-2], revision, False, revision))
        bound.consistency_level = self.consistency
        await cql(self.session, bound)

    async def scan_page(
        self, low: int, high: int, fetch_size: int, paging_state: bytes | None
    ) -> tuple[list[Any], bytes | None]:
        """One page of the token range ``[low, high]`` and the paging state of the next."""
        for _ in range(100):
            try:
                return await self._scan_page(low, high, fetch_size, paging_state)
            except NoHostAvailable as exc:
                if not _busy(exc):
                    raise
                BUSY_RETRIES["scan"] += 1
                await asyncio.sleep(0.02)
        return await self._scan_page(low, high, fetch_size, paging_state)

    async def _scan_page(
        self, low: int, high: int, fetch_size: int, paging_state: bytes | None
    ) -> tuple[list[Any], bytes | None]:
        bound = self.scan.bind((low, high))
        bound.consistency_level = self.consistency
        bound.fetch_size = fetch_size
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[Any], bytes | None]] = loop.create_future()
        response = self.session.execute_async(bound, timeout=30.0, paging_state=paging_state)

        def done(rows: Any) -> None:
            state = response._paging_state  # what ResultSet.paging_state reads
            loop.call_soon_threadsafe(_settle, future, (rows, state), None)

        response.add_callbacks(
            done, lambda exc: loop.call_soon_threadsafe(_settle, future, None, exc)
        )
        return await future


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def bson_id(session_id: uuid.UUID) -> Binary:
    """The ``_id`` of a session (UUID, binary subtype 4)."""
    return Binary.from_uuid(session_id, UuidRepresentation.STANDARD)


async def mongo_get(collection: AsyncCollection[Doc], session_id: uuid.UUID) -> Doc | None:
    """``find_one`` by ``_id``."""
    return await collection.find_one({"_id": bson_id(session_id)})


async def mongo_put(
    collection: AsyncCollection[Doc], doc: Doc, revision: int, *, insert_first: bool = False
) -> None:
    """The backend's conditional write of ``doc`` at ``revision``, spelled out.

    ``insert_first``: the order of a backfill's target (and of a copy loop into a mostly
    empty collection): the insert, and the conditional replace only on a duplicate key.
    """
    rev = Int64(revision)
    doc = {**doc, "revision": rev}
    guard = {"_id": doc["_id"], "revision": {"$lt": rev}}
    if not insert_first and (await collection.replace_one(guard, doc)).matched_count:
        return
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError:
        await collection.replace_one(guard, doc)


def millis(value: dt.datetime) -> int:
    """Integer epoch milliseconds of a driver timestamp (decoded through a float)."""
    micros = (value.replace(tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
    return (micros + 500) // 1000


def row_to_values(row: Any) -> tuple[tuple[Any, ...], int]:
    """A selected row as INSERT values (``to_row`` order) and its revision.

    Timestamps go back as integer milliseconds: re-sending the driver's datetimes would
    truncate values decoded a few microseconds low by one millisecond.
    """
    values = (*row[:4], millis(row[4]), millis(row[5]), *row[6:11])
    revision = row[9] if row[9] is not None else max(w for w in row[11:] if w)
    return values, revision


def _millis(value: dt.datetime) -> dt.datetime:
    # The driver decodes timestamps through a float; stored values are whole milliseconds.
    micros = (value.replace(tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
    return _EPOCH + dt.timedelta(milliseconds=(micros + 500) // 1000)


def same_content(expected: Doc, found: Doc | None) -> bool:
    """Whether ``found`` (from the server) holds ``expected`` (from :func:`row_to_doc`)."""
    if found is None:
        return False
    return all(found.get(k) == v for k, v in expected.items() if k != "_id")


def row_to_doc(row: Any) -> Doc:
    """A Cassandra row (``SELECT_COLUMNS`` order) as the backend's BSON document.

    What a hand-written copy loop would do: no validation, plain dicts.
    """
    (
        sid,
        student,
        assessment,
        status,
        started,
        updated,
        answers,
        blobs,
        metadata,
        rev,
        deleted,
        *writetimes,
    ) = row
    if deleted:
        return {"_id": bson_id(sid), "revision": Int64(rev), "deleted": True}
    blobs = list(blobs or ())
    used = 0
    items = []
    for item in json.loads(answers)["answers"] if answers else ():
        atts = []
        for ref in item["attachments"]:
            att: Doc = {"content_type": ref["content_type"], "data": blobs[used]}
            used += 1
            if ref["filename"] is not None:
                att["filename"] = ref["filename"]
            atts.append(att)
        answer: Doc = {
            "question_id": item["question_id"],
            "response": item["response"],
            "attachments": atts,
        }
        if item["answered_at"] is not None:
            answer["answered_at"] = _EPOCH + dt.timedelta(milliseconds=item["answered_at"])
        items.append(answer)
    return {
        "_id": bson_id(sid),
        "revision": Int64(rev if rev is not None else max(w for w in writetimes if w)),
        "deleted": False,
        "student_id": student,
        "assessment_id": assessment,
        "status": status,
        "started_at": _millis(started),
        "updated_at": _millis(updated),
        "answers": items,
        "metadata": dict(metadata or {}),
    }
