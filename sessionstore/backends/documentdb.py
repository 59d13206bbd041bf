"""The DocumentDB store, on PyMongo's asyncio API (``pymongo.AsyncMongoClient``).

One document per session, ``_id`` = the session UUID (binary subtype 4); the layout is in
:mod:`sessionstore.backends._bson_codec`. Every write follows the design's portable
last-write-wins algorithm, which needs nothing beyond single-document CRUD and so also
runs on FerretDB::

    replace_one({_id, revision: {$lt: rev}}, doc)      # no upsert
    if nothing matched:  insert_one(doc)
    if DuplicateKeyError (a concurrent creator):  replace_one(...) once more
    if that matches nothing too: an equal or newer revision is stored -> not applied

A backend built with ``insert_first=True`` (a backfill's target, where most keys are
absent) tries ``insert_one(doc)`` first and falls back to the guarded ``replace_one`` on a
duplicate key: one round trip instead of two for a key the collection does not hold,
two for one it does.

With ``expected_revision`` (optimistic concurrency) the guard names the expected record
instead: ``{_id, deleted: false, revision: expected}``, or for "nothing live"
``{_id, deleted: true, revision: {$lt: rev}}`` then an insert. On DocumentDB each of
these single-document writes is atomic, so of two writers expecting the same revision
exactly one succeeds.

Deletes write a tombstone the same way. Tombstones are kept until
:class:`~sessionstore.jobs.PurgeJob` removes them from both stores (``purge``).

Example (the backend creates and owns the client)::

    settings = DocumentDBSettings(
        uri="mongodb://app:secret@docdb.example:27017/?replicaSet=rs0",
        database="assessments",
        tls_ca_file="/etc/ssl/global-bundle.pem",   # TLS is on by default
    )
    async with DocumentDBBackend.connect(settings) as store:
        await store.save(session)

or, with a collection from a client you own (you close it)::

    client = AsyncMongoClient(uri, uuidRepresentation="standard", tz_aware=True)
    async with DocumentDBBackend(client["assessments"]["sessions"]) as store:
        record = await store.get(session_id)

See docs/documentdb.md for supported engines and connection options.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterable, Awaitable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from bson.errors import BSONError, InvalidDocument
from bson.int64 import Int64
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.results import DeleteResult, InsertOneResult, UpdateResult

from sessionstore._errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidSessionError,
    RepositoryClosedError,
)
from sessionstore.backends._bson_codec import (
    record_from_doc,
    to_doc,
    tombstone_doc,
    uuid_to_bson,
)
from sessionstore.backends.base import (
    UUID_KEY_SPACE,
    KeyRange,
    LifecycleMixin,
    RecordHead,
    ScanPage,
    StoredRecord,
    WriteResult,
    check_expected,
)
from sessionstore.model import StudentSession, validate_session_id
from sessionstore.revision import check_revision

__all__ = [
    "CollectionLike",
    "DocumentDBBackend",
    "DocumentDBSettings",
    "map_pymongo_error",
]

ReadPreferenceName = Literal[
    "primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"
]

# Server error codes that mean "took too long" or "this node cannot serve right now";
# PyMongo raises them as plain OperationFailure from some paths (write errors).
_TIMEOUT_CODES = frozenset({50, 89, 202, 262})  # MaxTimeMSExpired, NetworkTimeout, ...
_UNAVAILABLE_CODES = frozenset(
    {6, 7, 91, 189, 10107, 11600, 11602, 13435, 13436}  # HostUnreachable, NotWritablePrimary, ...
)


class CollectionLike(Protocol):
    """The part of a collection the backend uses.

    Both ``pymongo.asynchronous.collection.AsyncCollection`` and Motor's
    ``AsyncIOMotorCollection`` have it, so either can be passed to
    :class:`DocumentDBBackend`::

        DocumentDBBackend(client["db"]["sessions"])
    """

    def find_one(self, filter: Any = ..., *args: Any, **kwargs: Any) -> Awaitable[Any]: ...

    def find(self, *args: Any, **kwargs: Any) -> AsyncIterable[Any]: ...

    def replace_one(
        self, filter: Mapping[str, Any], replacement: Mapping[str, Any]
    ) -> Awaitable[UpdateResult]: ...

    def insert_one(self, document: Any) -> Awaitable[InsertOneResult]: ...

    def delete_one(self, filter: Mapping[str, Any]) -> Awaitable[DeleteResult]: ...


class DocumentDBSettings(BaseModel):
    """How :meth:`DocumentDBBackend.connect` builds its client.

    Invalid values raise :class:`~sessionstore.ConfigurationError` (field names and
    reasons only: the URI may hold a password, so it never appears in a message, in
    ``repr`` or in ``str``).

    TLS is on by default, as on Amazon DocumentDB. ``tls=False`` is the only way to a
    plaintext connection (a loopback test server); a URI that turns TLS off by itself
    (``tls=false`` or ``ssl=false``) is refused unless ``tls=False`` says so too.

    Example for Amazon DocumentDB 5.0/8.0::

        DocumentDBSettings(
            uri="mongodb://app:pw@cluster.docdb.amazonaws.com:27017/?replicaSet=rs0",
            database="assessments",
            tls_ca_file="/etc/ssl/global-bundle.pem",
            read_preference="secondaryPreferred",   # reads from replicas
        )

    and for a FerretDB on the loopback interface (tests)::

        DocumentDBSettings(uri="mongodb://127.0.0.1:27117/", database="t", tls=False)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``mongodb://`` or ``mongodb+srv://`` URI; may carry credentials and options.
    uri: SecretStr
    database: str
    collection: str = "sessions"
    #: TLS on (the default); False is the explicit opt-out to plaintext, for test servers.
    tls: bool = True
    #: CA bundle (for DocumentDB: ``global-bundle.pem``); must exist; needs ``tls``.
    tls_ca_file: Path | None = None
    #: DocumentDB before 8.0.2 has no retryable writes; enable only on 8.0.2+.
    retry_writes: bool = False
    #: ``"secondaryPreferred"`` reads from replicas (may return a slightly stale revision).
    read_preference: ReadPreferenceName = "primary"
    server_selection_timeout_ms: int = Field(default=10_000, gt=0)
    connect_timeout_ms: int = Field(default=10_000, gt=0)
    #: None waits forever; a multi-MB session needs well above the round-trip time.
    socket_timeout_ms: int | None = Field(default=30_000, gt=0)
    max_pool_size: int = Field(default=100, gt=0)

    @model_validator(mode="wrap")
    @classmethod
    def _configuration_error(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # pydantic's ValidationError echoes input values (the URI with its password), so
        # it is replaced, not chained: field names and reasons only.
        try:
            settings = handler(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
        else:
            # Checked here, not in an "after" validator: those run outside this wrapper.
            problem = settings._tls_problem()
            if problem is None:
                return settings
            problems = f"tls: {problem}"
        # Raised outside the except block so that not even __context__ keeps the original.
        raise ConfigurationError(f"invalid DocumentDB settings: {problems}")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        # MongoDB/DocumentDB database name rules; checked here so a typo fails at startup.
        if not 0 < len(value) <= 63 or any(c in value for c in '/\\. "$*<>:|?\x00'):
            raise ValueError('must be 1-63 characters without /\\. "$*<>:|? or NUL')
        return value

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        if not value or value.startswith("system.") or "$" in value or "\x00" in value:
            raise ValueError("must be non-empty, not start with 'system.', without '$' or NUL")
        return value

    @field_validator("tls_ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA file {str(value)!r} does not exist or is not a file")
        return value

    def _tls_problem(self) -> str | None:
        # Names the URI option only, never the URI (it may hold the password).
        if self.tls:
            option = _uri_tls_off_option(self.uri)
            if option is not None:
                return (
                    f"the URI turns TLS off ({option}=false): TLS is required unless "
                    "tls=False is set too (the explicit plaintext opt-out)"
                )
        elif self.tls_ca_file is not None:
            return "tls_ca_file is set, but tls=False turns TLS off"
        elif _uri_tls_on_option(self.uri) is not None:
            return "tls=False contradicts the URI, which turns TLS on"
        return None

    @property
    def uses_tls(self) -> bool:
        """True unless ``tls=False`` opted out (the client is then created with TLS off)."""
        return self.tls


class DocumentDBBackend(LifecycleMixin):
    """A :class:`~sessionstore.SessionBackend` on a DocumentDB (or any Mongo-API) collection.

    Build it from a collection you own (``DocumentDBBackend(collection)``; its client is
    not closed by :meth:`aclose`), or from settings with :meth:`connect` (the backend
    creates the client when it is opened and closes it in :meth:`aclose`). Opening
    writes nothing and creates no index: the backend needs only the ``_id`` index.

    ``insert_first=True`` makes writes try an insert before the guarded replace: for the
    target of a backfill, where most keys are absent (see the module docstring). The
    outcome is the same either way; only the round trips differ.

    Assumes the collection has no unique index besides ``_id`` and that every document
    in it was written by this backend (a document without a numeric ``revision`` would
    block all writes to its key).

    Example::

        async with DocumentDBBackend(collection) as db:
            result = await db.save(session)        # lands only if newer
            assert result.applied
            await db.delete(session.session_id, session.revision + 1)
    """

    _collection: CollectionLike | None
    _client: AsyncMongoClient[dict[str, Any]] | None
    _settings: DocumentDBSettings | None

    def __init__(
        self,
        collection: CollectionLike,
        *,
        name: str = "documentdb",
        insert_first: bool = False,
    ) -> None:
        self._setup(name=name, insert_first=insert_first)
        _check_write_concern(collection)
        self._collection = collection

    @classmethod
    def connect(
        cls,
        settings: DocumentDBSettings,
        *,
        name: str = "documentdb",
        insert_first: bool = False,
    ) -> Self:
        """A backend that creates (when opened) and owns its client. Nothing connects yet.

        ::

            async with DocumentDBBackend.connect(settings) as store:
                ...
        """
        if not isinstance(settings, DocumentDBSettings):
            raise ConfigurationError("settings must be DocumentDBSettings")
        backend = cls.__new__(cls)
        backend._setup(name=name, insert_first=insert_first)
        backend._settings = settings
        return backend

    def _setup(self, *, name: str, insert_first: bool) -> None:
        self._name = name
        self._lifecycle_name = f"backend {name!r}"
        self._insert_first = bool(insert_first)
        self._collection = None
        self._client = None
        self._settings = None

    def __repr__(self) -> str:
        if self._settings is not None:
            where = f"{self._settings.database}.{self._settings.collection}"
        else:
            where = str(getattr(self._collection, "full_name", "?"))
        return f"{type(self).__name__}(name={self._name!r}, collection={where!r})"

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The store name used in metrics and errors (default ``"documentdb"``)."""
        return self._name

    @property
    def key_space(self) -> KeyRange:
        """``[0, 2**128)``: ``_id`` order is the UUID's 128-bit value order."""
        return UUID_KEY_SPACE

    @property
    def owns_client(self) -> bool:
        """True when built by :meth:`connect`: :meth:`aclose` then closes the client."""
        return self._settings is not None

    @property
    def insert_first(self) -> bool:
        """Whether writes try an insert before the guarded replace (a backfill's target)."""
        return self._insert_first

    # -- lifecycle --------------------------------------------------------------------

    async def _open(self) -> None:
        # Connecting is lazy in PyMongo: nothing is sent until the first request.
        if self._settings is not None:
            self._client = _make_client(self._settings)
            self._collection = self._client[self._settings.database][self._settings.collection]

    async def _close(self) -> None:
        await self._close_owned_client()

    async def _close_owned_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _coll(self) -> CollectionLike:
        await self._ensure_open()
        if self._collection is None:  # pragma: no cover - _open always sets it
            raise RepositoryClosedError(f"{self._lifecycle_name} has no collection")
        return self._collection

    # -- the protocol -----------------------------------------------------------------

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """The stored record (tombstones included), or None if never written.

        ::

            record = await store.get(session_id)
        """
        key = uuid_to_bson(validate_session_id(session_id))
        coll = await self._coll()
        try:
            doc = await coll.find_one({"_id": key})
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "get") from exc
        return None if doc is None else self._decode(doc, "get")

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """The stored revision and tombstone flag (a projection: no session content)."""
        key = uuid_to_bson(validate_session_id(session_id))
        coll = await self._coll()
        try:
            doc = await coll.find_one({"_id": key}, {"revision": 1, "deleted": 1})
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "head") from exc
        if doc is None:
            return None
        revision = doc.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise BackendError(f"head: stored document {key!s} has no revision", store=self._name)
        return RecordHead(int(revision), bool(doc.get("deleted")))

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Store ``session`` if its revision is greater than the stored one.

        ::

            result = await store.save(session.model_copy(update={"revision": clock.next()}))
        """
        if not isinstance(session, StudentSession):
            raise InvalidSessionError(
                f"expected StudentSession, got {type(session).__name__}", fields=("<root>",)
            )
        check_revision(session.revision)
        expected = check_expected(expected_revision)
        doc = to_doc(session)
        return await self._write(await self._coll(), doc, session.revision, expected, "save")

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Write a tombstone at ``revision`` if it is greater than the stored one.

        ::

            await store.delete(session_id, clock.next())
        """
        sid = validate_session_id(session_id)
        check_revision(revision)
        expected = check_expected(expected_revision)
        doc = tombstone_doc(sid, revision)
        return await self._write(await self._coll(), doc, revision, expected, "delete")

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Remove the document if its revision is at most ``revision``."""
        key = uuid_to_bson(validate_session_id(session_id))
        check_revision(revision)
        coll = await self._coll()
        try:
            await coll.delete_one({"_id": key, "revision": {"$lte": Int64(revision)}})
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "purge") from exc

    async def _write(
        self,
        coll: CollectionLike,
        doc: dict[str, Any],
        revision: int,
        expected: int | None,
        operation: str,
    ) -> WriteResult:
        # The portable algorithm of the design (module docstring). No upsert: FerretDB
        # and DocumentDB differ in how an upsert that collides is reported, while an
        # insert's duplicate key is E11000 on every engine.
        newer = {"$lt": Int64(revision)}
        try:
            if expected is not None and expected > 0:
                # Only the live record the caller read may be replaced.
                if revision <= expected:
                    return _NOT_APPLIED
                guard = {"_id": doc["_id"], "deleted": False, "revision": Int64(expected)}
                return _applied((await coll.replace_one(guard, doc)).matched_count)
            if expected == 0:
                # Only a tombstone (older than this write) or nothing may be replaced.
                guard = {"_id": doc["_id"], "deleted": True, "revision": newer}
                if (await coll.replace_one(guard, doc)).matched_count:
                    return _APPLIED
                return await self._insert(coll, doc)
            guard = {"_id": doc["_id"], "revision": newer}
            # Replace first (the default), or go straight to the insert (insert_first).
            if not self._insert_first and (await coll.replace_one(guard, doc)).matched_count:
                return _APPLIED
            if (await self._insert(coll, doc)).applied:
                return _APPLIED
            # The key exists: created by someone else between our replace and insert, or
            # already there (insert_first). The guarded replace decides; matching
            # nothing means an equal or newer revision is stored.
            return _applied((await coll.replace_one(guard, doc)).matched_count)
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, operation) from exc

    async def _insert(self, coll: CollectionLike, doc: dict[str, Any]) -> WriteResult:
        try:
            await coll.insert_one(doc)
        except DuplicateKeyError as exc:
            if not _is_id_collision(exc):
                raise
            return _NOT_APPLIED
        return _APPLIED

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Up to ``limit`` records with ``_id`` in ``key_range``, in UUID order.

        ``cursor`` is the last key's 32-hex; a page shorter than ``limit`` ends the range
        (``cursor`` None). A full last page still returns a cursor, and the next call an
        empty page: that costs one round trip per range instead of reading one document
        more per page. ::

            page = await store.scan(store.key_space.split(16)[3], limit=100)
        """
        if limit < 1:
            raise ConfigurationError("limit must be at least 1")
        if key_range.start < UUID_KEY_SPACE.start or key_range.end > UUID_KEY_SPACE.end:
            raise ConfigurationError("key range is outside the UUID key space")
        low = key_range.start if cursor is None else max(key_range.start, _parse_cursor(cursor) + 1)
        if low >= key_range.end:
            await self._coll()  # still reports use-after-close
            return ScanPage((), None)
        bounds: dict[str, Any] = {"$gte": uuid_to_bson(uuid.UUID(int=low))}
        if key_range.end < UUID_KEY_SPACE.end:  # 2**128 is not a UUID: no upper bound
            bounds["$lt"] = uuid_to_bson(uuid.UUID(int=key_range.end))
        coll = await self._coll()
        records: list[StoredRecord] = []
        try:
            async for doc in coll.find({"_id": bounds}, sort=[("_id", ASCENDING)], limit=limit):
                records.append(self._decode(doc, "scan"))
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "scan") from exc
        if len(records) < limit:
            return ScanPage(tuple(records), None)
        return ScanPage(tuple(records), format(records[-1].session_id.int, "032x"))

    # -- helpers ----------------------------------------------------------------------

    def _decode(self, doc: Mapping[str, Any], operation: str) -> StoredRecord:
        try:
            return record_from_doc(doc)
        except InvalidSessionError as exc:
            # The session id is an opaque key, safe to name; the fields are names only.
            raise BackendError(
                f"{operation}: stored document {doc.get('_id')!s} is not a valid record "
                f"({', '.join(exc.fields)})",
                store=self._name,
            ) from exc

    def _error(self, exc: BaseException, operation: str) -> BackendError:
        secrets = _uri_secrets(self._settings.uri) if self._settings is not None else ()
        return map_pymongo_error(exc, store=self._name, operation=operation, secrets=secrets)


_APPLIED = WriteResult(True)
_NOT_APPLIED = WriteResult(False)


def _applied(matched: int) -> WriteResult:
    return _APPLIED if matched else _NOT_APPLIED


def map_pymongo_error(
    exc: BaseException, *, store: str, operation: str, secrets: tuple[str, ...] = ()
) -> BackendError:
    """The library's error for a PyMongo/BSON exception; raise it ``from exc``.

    Messages name the operation, the exception class and the server's error code, never
    the server's error text for a rejected request (it may quote document values);
    ``secrets`` (the URI password) are masked in what remains. ::

        except PyMongoError as exc:
            raise map_pymongo_error(exc, store="documentdb", operation="get") from exc
    """
    kind = type(exc).__name__
    if isinstance(exc, ServerSelectionTimeoutError):
        # Checked first: it is an AutoReconnect, and its ``timeout`` flag is set too,
        # but it means no usable server, not a slow one.
        return BackendUnavailableError(
            f"{operation}: no server available ({kind}: {_scrub(_first_line(exc), secrets)})",
            store=store,
        )
    if isinstance(exc, NetworkTimeout | ExecutionTimeout | WTimeoutError):
        return BackendTimeoutError(f"{operation}: timed out ({kind}{_code(exc)})", store=store)
    if isinstance(exc, ConnectionFailure):
        return BackendUnavailableError(
            f"{operation}: connection failed ({kind}: {_scrub(_first_line(exc), secrets)})",
            store=store,
        )
    if isinstance(exc, OperationFailure):
        if exc.code in _TIMEOUT_CODES:
            return BackendTimeoutError(f"{operation}: timed out ({kind}{_code(exc)})", store=store)
        if exc.code in _UNAVAILABLE_CODES:
            return BackendUnavailableError(
                f"{operation}: server unavailable ({kind}{_code(exc)})", store=store
            )
        return BackendRejectedError(f"{operation}: rejected ({kind}{_code(exc)})", store=store)
    if isinstance(exc, InvalidDocument):  # includes DocumentTooLarge
        return BackendRejectedError(f"{operation}: document refused ({kind})", store=store)
    return BackendError(f"{operation}: driver error ({kind})", store=store)


# -- module helpers ---------------------------------------------------------------------


def _make_client(settings: DocumentDBSettings) -> AsyncMongoClient[dict[str, Any]]:
    options: dict[str, Any] = {
        # Codec options the codec and the other stores agree on: RFC 4122 UUIDs and
        # timezone-aware UTC datetimes.
        "uuidRepresentation": "standard",
        "tz_aware": True,
        "tzinfo": dt.UTC,
        "retryWrites": settings.retry_writes,
        "readPreference": settings.read_preference,
        "serverSelectionTimeoutMS": settings.server_selection_timeout_ms,
        "connectTimeoutMS": settings.connect_timeout_ms,
        "maxPoolSize": settings.max_pool_size,
        "appname": "sessionstore",
    }
    if settings.socket_timeout_ms is not None:
        options["socketTimeoutMS"] = settings.socket_timeout_ms
    # Always explicit: a plaintext connection only ever comes from the tls=False opt-out.
    options["tls"] = settings.tls
    if settings.tls_ca_file is not None:
        options["tlsCAFile"] = str(settings.tls_ca_file)
    uri = settings.uri.get_secret_value()
    try:
        return AsyncMongoClient(uri, **options)
    except (PyMongoError, ValueError, TypeError, OSError) as exc:
        # OSError: ssl.SSLError when the CA file is not a PEM bundle.
        reason = f"{type(exc).__name__}: {_scrub(_first_line(exc), _uri_secrets(settings.uri))}"
    # Neither chained nor raised in the except block: PyMongo's URI errors may quote
    # parts of the URI, and __context__ would keep them.
    raise ConfigurationError(f"invalid DocumentDB connection settings ({reason})")


def _check_write_concern(collection: object) -> None:
    # The algorithm reads matched_count, which an unacknowledged (w=0) write lacks.
    concern = getattr(collection, "write_concern", None)
    if concern is not None and getattr(concern, "acknowledged", True) is False:
        raise ConfigurationError("the collection's write concern must be acknowledged (w >= 1)")


def _is_id_collision(exc: DuplicateKeyError) -> bool:
    # MongoDB names the index in keyPattern; FerretDB and some engines do not, and then
    # only _id can collide (the backend creates no other unique index).
    details = exc.details or {}
    pattern = details.get("keyPattern")
    return not isinstance(pattern, Mapping) or list(pattern) == ["_id"]


def _parse_cursor(cursor: str) -> int:
    try:
        value = int(cursor, 16)
    except (TypeError, ValueError):
        raise ConfigurationError("malformed scan cursor") from None
    if not 0 <= value < UUID_KEY_SPACE.end:
        raise ConfigurationError("malformed scan cursor")
    return value


def _code(exc: BaseException) -> str:
    if isinstance(exc, OperationFailure) and exc.code is not None:
        return f", code {exc.code} {_code_name(exc)}".rstrip()
    return ""


def _code_name(exc: OperationFailure) -> str:
    name = (exc.details or {}).get("codeName")
    return name if isinstance(name, str) else ""


def _first_line(exc: BaseException) -> str:
    # ServerSelectionTimeoutError appends a long topology description; the first part
    # (host:port and the socket error) is what an operator needs.
    text = str(exc).split(", Topology Description:", 1)[0]
    return text.splitlines()[0][:300] if text else ""


def _uri_tls_options(uri: SecretStr) -> dict[str, str]:
    # The URI's tls/ssl options, names lower-cased (URI option names are case-insensitive;
    # PyMongo also accepts ';' between options). Parsed without resolving mongodb+srv.
    try:
        query = urllib.parse.urlsplit(uri.get_secret_value()).query
    except ValueError:  # malformed: PyMongo reports it when the client is built
        return {}
    options: dict[str, str] = {}
    for pair in re.split(r"[&;]", query):
        name, _, value = pair.partition("=")
        if name.lower() in ("tls", "ssl"):
            options[name.lower()] = urllib.parse.unquote(value).strip().lower()
    return options


def _uri_tls_off_option(uri: SecretStr) -> str | None:
    """The URI option (``tls``/``ssl``) that turns TLS off, if any."""
    return next((k for k, v in _uri_tls_options(uri).items() if v == "false"), None)


def _uri_tls_on_option(uri: SecretStr) -> str | None:
    """The URI option (``tls``/``ssl``) that turns TLS on, if any."""
    return next((k for k, v in _uri_tls_options(uri).items() if v == "true"), None)


def _uri_secrets(uri: SecretStr) -> tuple[str, ...]:
    try:
        password = urllib.parse.urlsplit(uri.get_secret_value()).password
    except ValueError:
        return ()
    if not password:
        return ()
    return (password, urllib.parse.unquote(password))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
