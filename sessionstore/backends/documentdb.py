"""The DocumentDB store, on PyMongo's asyncio API (``pymongo.AsyncMongoClient``).

One document per session, ``_id`` = the session UUID (binary subtype 4); the layout is in
:mod:`sessionstore.backends._bson_codec`. Every write follows the design's portable
last-write-wins algorithm, which needs nothing beyond single-document CRUD and so also
runs on FerretDB::

    replace_one({_id, revision: {$lt: rev}}, doc)      # no upsert
    if nothing matched:  insert_one(doc)
    if DuplicateKeyError (a concurrent creator):  replace_one(...) once more
    if that matches nothing too: an equal or newer revision is stored -> no-op

A backend built with ``insert_first=True`` (a backfill's target, where most keys are
absent) tries ``insert_one(doc)`` first and falls back to the guarded ``replace_one`` on a
duplicate key: one round trip instead of two for a key the collection does not hold,
two for one it does.

Deletes write a tombstone the same way; a TTL index on ``purge_after`` removes it later,
or :meth:`DocumentDBBackend.purge_tombstones` where the engine has no TTL indexes.

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
import logging
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
    ScanPage,
    StoredRecord,
)
from sessionstore.model import StudentSession, validate_session_id

__all__ = [
    "DEFAULT_TOMBSTONE_TTL",
    "CollectionLike",
    "DocumentDBBackend",
    "DocumentDBSettings",
    "map_pymongo_error",
]

_log = logging.getLogger(__name__)

#: How long a tombstone outlives its deletion. It must exceed the longest time a late,
#: older write can still arrive (backfill runs, repair-queue age), or that write would
#: bring the deleted session back once the tombstone is purged.
DEFAULT_TOMBSTONE_TTL = dt.timedelta(days=30)

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

    def create_index(self, keys: Any, **kwargs: Any) -> Awaitable[str]: ...

    def delete_many(self, filter: Mapping[str, Any]) -> Awaitable[DeleteResult]: ...


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
    #: Seconds a tombstone is kept (see DEFAULT_TOMBSTONE_TTL for how to choose it).
    tombstone_ttl: int = Field(default=int(DEFAULT_TOMBSTONE_TTL.total_seconds()), gt=0)

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
    creates the client when it is opened and closes it in :meth:`aclose`). Opening also
    creates the TTL index on ``purge_after`` unless ``ensure_indexes=False``; engines
    without TTL indexes (FerretDB v1) leave :attr:`ttl_index_supported` False, and then
    :meth:`purge_tombstones` must be run periodically.

    ``insert_first=True`` makes writes try an insert before the guarded replace: for the
    target of a backfill, where most keys are absent (see the module docstring). The
    outcome is the same either way; only the round trips differ.

    Assumes the collection has no unique index besides ``_id`` and that every document
    in it was written by this backend (a document without a numeric ``revision`` would
    block all writes to its key).

    Example::

        async with DocumentDBBackend(collection, tombstone_ttl=dt.timedelta(days=7)) as db:
            await db.save(session)                 # lands only if newer
            await db.delete(session.session_id, session.revision + 1)
            if not db.ttl_index_supported:
                await db.purge_tombstones()
    """

    _collection: CollectionLike | None
    _client: AsyncMongoClient[dict[str, Any]] | None
    _settings: DocumentDBSettings | None

    def __init__(
        self,
        collection: CollectionLike,
        *,
        name: str = "documentdb",
        tombstone_ttl: dt.timedelta | float = DEFAULT_TOMBSTONE_TTL,
        ensure_indexes: bool = True,
        insert_first: bool = False,
    ) -> None:
        self._setup(
            name=name,
            tombstone_ttl=tombstone_ttl,
            ensure_indexes=ensure_indexes,
            insert_first=insert_first,
        )
        _check_write_concern(collection)
        self._collection = collection

    @classmethod
    def connect(
        cls,
        settings: DocumentDBSettings,
        *,
        name: str = "documentdb",
        ensure_indexes: bool = True,
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
        backend._setup(
            name=name,
            tombstone_ttl=dt.timedelta(seconds=settings.tombstone_ttl),
            ensure_indexes=ensure_indexes,
            insert_first=insert_first,
        )
        backend._settings = settings
        return backend

    def _setup(
        self,
        *,
        name: str,
        tombstone_ttl: dt.timedelta | float,
        ensure_indexes: bool,
        insert_first: bool,
    ) -> None:
        ttl = (
            tombstone_ttl
            if isinstance(tombstone_ttl, dt.timedelta)
            else dt.timedelta(seconds=tombstone_ttl)
        )
        if ttl <= dt.timedelta(0):
            raise ConfigurationError("tombstone_ttl must be positive")
        self._name = name
        self._lifecycle_name = f"backend {name!r}"
        self._tombstone_ttl = ttl
        self._ensure_indexes_on_open = ensure_indexes
        self._insert_first = bool(insert_first)
        self._ttl_index_supported: bool | None = None
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

    @property
    def ttl_index_supported(self) -> bool | None:
        """Whether the TTL index on ``purge_after`` exists; None until indexes were ensured."""
        return self._ttl_index_supported

    @property
    def tombstone_ttl(self) -> dt.timedelta:
        """How long a tombstone is kept before it may be purged."""
        return self._tombstone_ttl

    # -- lifecycle --------------------------------------------------------------------

    async def _open(self) -> None:
        if self._settings is not None:
            self._client = _make_client(self._settings)
            self._collection = self._client[self._settings.database][self._settings.collection]
        try:
            if self._ensure_indexes_on_open:
                await self._create_indexes()
        except BaseException:
            # _ensure_open will retry _open on the next call: do not leak this client.
            await self._close_owned_client()
            raise

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

    async def ensure_indexes(self) -> bool:
        """Create the TTL index on ``purge_after``; return whether the engine accepted it.

        Idempotent. An engine that refuses TTL indexes (FerretDB v1 answers
        NotImplemented) is not an error: the result is False and tombstones must be
        purged with :meth:`purge_tombstones`::

            if not await store.ensure_indexes():
                schedule(store.purge_tombstones, every=dt.timedelta(hours=1))
        """
        await self._coll()
        return await self._create_indexes()

    async def _create_indexes(self) -> bool:
        assert self._collection is not None
        try:
            # expireAfterSeconds=0: each tombstone carries its own expiry instant.
            await self._collection.create_index([("purge_after", ASCENDING)], expireAfterSeconds=0)
        except OperationFailure as exc:
            self._ttl_index_supported = False
            _log.warning(
                "%s: TTL index on purge_after not created (code %s %s); "
                "tombstones must be removed with purge_tombstones()",
                self._name,
                exc.code,
                _code_name(exc),
            )
            return False
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "create index") from exc
        self._ttl_index_supported = True
        return True

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

    async def save(self, session: StudentSession) -> None:
        """Store ``session`` if its revision is greater than the stored one; else no-op.

        ::

            await store.save(session.model_copy(update={"revision": clock.next()}))
        """
        if not isinstance(session, StudentSession):
            raise InvalidSessionError(
                f"expected StudentSession, got {type(session).__name__}", fields=("<root>",)
            )
        if session.revision <= 0:
            raise InvalidSessionError("a stored session needs a revision", fields=("revision",))
        doc = to_doc(session)
        await self._write_if_newer(await self._coll(), doc, session.revision, "save")

    async def delete(self, session_id: uuid.UUID, revision: int) -> None:
        """Write a tombstone at ``revision`` if it is greater than the stored one.

        ::

            await store.delete(session_id, clock.next())
        """
        sid = validate_session_id(session_id)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision <= 0:
            raise InvalidSessionError("a tombstone needs a revision", fields=("revision",))
        if revision >= 2**63:
            raise InvalidSessionError("revision must fit in 64 bits", fields=("revision",))
        purge_after = dt.datetime.now(dt.UTC) + self._tombstone_ttl
        doc = tombstone_doc(sid, revision, purge_after)
        await self._write_if_newer(await self._coll(), doc, revision, "delete")

    async def _write_if_newer(
        self, coll: CollectionLike, doc: dict[str, Any], revision: int, operation: str
    ) -> None:
        # The portable algorithm of the design (module docstring). No upsert: FerretDB
        # and DocumentDB differ in how an upsert that collides is reported, while an
        # insert's duplicate key is E11000 on every engine.
        guard = {"_id": doc["_id"], "revision": {"$lt": Int64(revision)}}
        try:
            # Replace first (the default), or go straight to the insert (insert_first).
            if not self._insert_first and (await coll.replace_one(guard, doc)).matched_count:
                return
            try:
                await coll.insert_one(doc)
                return
            except DuplicateKeyError as exc:
                if not _is_id_collision(exc):
                    raise
                # The key exists: created by someone else between our replace and
                # insert, or already there (insert_first). The guarded replace decides.
            await coll.replace_one(guard, doc)
            # Matching nothing here means an equal or newer revision is stored: no-op.
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, operation) from exc

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

    async def purge_tombstones(self, older_than: dt.datetime | None = None) -> int:
        """Delete tombstones whose ``purge_after`` is at or before ``older_than`` (default now).

        What the TTL index does by itself on DocumentDB; needed where it could not be
        created (:attr:`ttl_index_supported` is False). Returns the number removed. ::

            removed = await store.purge_tombstones()
        """
        cutoff = dt.datetime.now(dt.UTC) if older_than is None else older_than
        if cutoff.tzinfo is None:
            raise ConfigurationError("older_than must be timezone-aware")
        coll = await self._coll()
        try:
            result = await coll.delete_many({"deleted": True, "purge_after": {"$lte": cutoff}})
        except (PyMongoError, BSONError) as exc:
            raise self._error(exc, "purge tombstones") from exc
        return result.deleted_count

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
