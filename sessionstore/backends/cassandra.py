"""The Apache Cassandra backend, on cassandra-driver (extra ``cassandra``).

Every write carries its revision as the CQL write timestamp (``USING TIMESTAMP``), so
Cassandra's own per-cell last-write-wins *is* the library's revision rule: an older
save or delete is simply shadowed, with no read-before-write and no lightweight
transaction. A delete writes a tombstone row (``deleted = true``, data columns null)
instead of a CQL ``DELETE``, so that its revision stays readable; it is kept until
:class:`~sessionstore.jobs.PurgeJob` removes it (a CQL ``DELETE USING TIMESTAMP``).

Cassandra answers a write the same whether it won or was shadowed, so a plain save
reports ``applied=None``; the repository reads the stored revision back (``head``) to
tell. ``expected_revision`` is a read, the write, and a read back: it is not atomic
(Cassandra's lightweight transactions cannot carry a write timestamp), see
docs/cassandra.md.

Example::

    settings = CassandraSettings(contact_points=["10.0.0.1"], keyspace="exams",
                                 local_dc="eu-west-1", username="svc",
                                 password="...")
    async with CassandraBackend.connect(settings) as store:
        await store.save(session)           # session.revision > 0
        record = await store.get(session.session_id)

See docs/cassandra.md for the schema, the consistency and the error mapping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import socket
import ssl
import struct
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    RequestValidationException,
    Unauthorized,
    Unavailable,
    UnresolvableContactPoints,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.connection import ProtocolError as ClientProtocolError
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import (
    ConfigurationException,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ProtocolException,
    SyntaxException,
)
from cassandra.query import SimpleStatement, tuple_factory
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from sessionstore._errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidSessionError,
    RepositoryClosedError,
    SessionStoreError,
)
from sessionstore.backends import _cql_codec as codec
from sessionstore.backends._asyncio_bridge import execute
from sessionstore.backends.base import (
    BackendState,
    KeyRange,
    LifecycleMixin,
    RecordHead,
    ScanPage,
    StoredRecord,
    WriteResult,
    check_expected,
    expectation_met,
)
from sessionstore.model import StudentSession, validate_session_id
from sessionstore.revision import check_revision

if TYPE_CHECKING:
    from cassandra.cluster import Session

__all__ = [
    "TOKEN_KEY_SPACE",
    "CassandraBackend",
    "CassandraSettings",
    "create_schema",
    "schema_cql",
]

#: Murmur3Partitioner tokens, as a half-open range (the end, 2**63, is not a token).
TOKEN_KEY_SPACE = KeyRange(-(2**63), 2**63)
_MIN_TOKEN = -(2**63)
_MAX_TOKEN = 2**63 - 1

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
# Replication option keys and values: strategy class names and data-center names.
_REPLICATION_WORD = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
# SERIAL levels are for lightweight transactions only; ANY cannot serve reads.
_UNUSABLE_CONSISTENCY = frozenset({"SERIAL", "LOCAL_SERIAL", "ANY"})
_SCHEMA_TIMEOUT = 60.0


def _identifier(value: str, what: str) -> str:
    # Keyspace and table names are the only text spliced into CQL, once, at prepare time.
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"{what} must match {_IDENTIFIER.pattern} (letters, digits, underscore)"
        )
    return value


def _consistency(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in ConsistencyLevel.value_to_name:
            raise ConfigurationError("unknown consistency level")
        value = ConsistencyLevel.value_to_name[value]
    if not isinstance(value, str):
        raise ConfigurationError("consistency must be a ConsistencyLevel name")
    name = value.upper()
    if name not in ConsistencyLevel.name_to_value or name in _UNUSABLE_CONSISTENCY:
        usable = sorted(set(ConsistencyLevel.name_to_value) - _UNUSABLE_CONSISTENCY)
        raise ConfigurationError(f"consistency must be one of {', '.join(usable)}")
    return int(ConsistencyLevel.name_to_value[name])


# --------------------------------------------------------------------------- settings

_Identifier = Annotated[str, StringConstraints(pattern=_IDENTIFIER.pattern)]


class CassandraSettings(BaseModel):
    """How :meth:`CassandraBackend.connect` reaches the cluster.

    The password is a :class:`~pydantic.SecretStr`: it never appears in ``repr``,
    ``str`` or validation errors. A username and password need TLS (``ssl_ca_file``):
    without it they would cross the network in plaintext, and the settings raise
    :class:`~sessionstore.ConfigurationError` unless ``allow_plaintext_credentials=True``
    (a loopback test cluster). Example::

        CassandraSettings(contact_points=["10.0.0.1", "10.0.0.2"], keyspace="exams",
                          local_dc="eu-west-1", username="svc", password="s3cret",
                          ssl_ca_file="/etc/ssl/cassandra-ca.pem")
    """

    # hide_input_in_errors: a rejected value (possibly the password) is not echoed.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    contact_points: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = Field(
        min_length=1
    )
    port: int = Field(default=9042, ge=1, le=65535)
    keyspace: _Identifier
    table: _Identifier = "sessions"
    #: The data center to route requests to; inferred from the first contact point if unset.
    local_dc: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: CA bundle (PEM) that signed the nodes' certificates; enables TLS when set.
    ssl_ca_file: Path | None = None
    #: Check that each node's certificate names its address (needs IP SANs for IPs).
    ssl_check_hostname: bool = True
    #: Opt-in to send ``username``/``password`` without TLS (no ``ssl_ca_file``).
    allow_plaintext_credentials: bool = False
    #: A ``cassandra.ConsistencyLevel`` name, used for reads and writes.
    consistency: str = "LOCAL_QUORUM"
    request_timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    #: Native protocol version; None negotiates (the driver logs each downgrade step).
    protocol_version: int | None = Field(default=None, ge=3)

    @field_validator("consistency")
    @classmethod
    def _check_consistency(cls, value: str) -> str:
        try:
            _consistency(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value.upper()

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if (
            self.username is not None
            and self.ssl_ca_file is None
            and not self.allow_plaintext_credentials
        ):
            # Not a ValueError: pydantic would wrap it in its own ValidationError.
            raise ConfigurationError(
                "Cassandra credentials without TLS would cross the network in plaintext: "
                "set ssl_ca_file, or allow_plaintext_credentials=True to accept that "
                "(a loopback test cluster)"
            )
        return self


def _build_cluster(settings: CassandraSettings) -> Cluster:
    # Called in a worker thread: the Cluster constructor resolves contact points (DNS).
    profile = ExecutionProfile(
        # Token-aware: a request goes straight to a replica of its key.
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(settings.local_dc or "")),
        consistency_level=_consistency(settings.consistency),
        request_timeout=settings.request_timeout,
        # Plain tuples (the codec reads them in SELECT order): the driver's default
        # named_tuple_factory builds a new namedtuple class for every result, about
        # 100 us of CPU per request (see docs/performance.md).
        row_factory=tuple_factory,
    )
    kwargs: dict[str, Any] = {
        "contact_points": list(settings.contact_points),
        "port": settings.port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": settings.connect_timeout,
        "control_connection_timeout": settings.connect_timeout,
        # The driver leaves Nagle's algorithm on: a request written in more than one
        # send() then waits for the server's delayed ACK, about 40 ms per write on
        # Linux (measured: 45 ms vs 0.9 ms for a 4 KB INSERT; see docs/performance.md).
        "sockopts": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }
    if settings.protocol_version is not None:
        kwargs["protocol_version"] = settings.protocol_version
    if settings.username is not None and settings.password is not None:
        kwargs["auth_provider"] = PlainTextAuthProvider(
            username=settings.username, password=settings.password.get_secret_value()
        )
    if settings.ssl_ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=str(settings.ssl_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load ssl_ca_file ({type(exc).__name__})") from exc
        context.check_hostname = settings.ssl_check_hostname
        kwargs["ssl_context"] = context
    return Cluster(**kwargs)


# --------------------------------------------------------------------------- errors


def _map_error(exc: BaseException, *, store: str, operation: str) -> SessionStoreError:
    """The library's exception for a driver exception (the caller raises it ``from exc``).

    Messages name the operation and the driver's exception class only: driver and
    server messages may quote bound values or the user name.
    """
    kind = type(exc).__name__
    message = f"{operation} failed ({kind})"
    if isinstance(exc, NoHostAvailable):
        errors = list(getattr(exc, "errors", {}).values())
        if errors and all(isinstance(e, AuthenticationFailed) for e in errors):
            return BackendRejectedError(f"{operation} failed (authentication)", store=store)
        return BackendUnavailableError(
            f"{operation} failed (no host available, {len(errors)} tried)", store=store
        )
    if isinstance(exc, OperationTimedOut | ReadTimeout | WriteTimeout):
        return BackendTimeoutError(message, store=store)
    if isinstance(
        exc,
        Unavailable
        | OverloadedErrorMessage
        | IsBootstrappingErrorMessage
        | ConnectionException
        | UnresolvableContactPoints,  # DNS: none of the contact points resolved
    ):
        return BackendUnavailableError(message, store=store)
    if isinstance(
        exc,
        RequestValidationException  # InvalidRequest, Unauthorized, AlreadyExists, ...
        | AuthenticationFailed
        | Unauthorized
        | SyntaxException
        | ConfigurationException
        | ProtocolException  # server side: frame too large, malformed request
        | ClientProtocolError,
    ):
        return BackendRejectedError(message, store=store)
    return BackendError(message, store=store)


# --------------------------------------------------------------------------- statements


class _Statements:
    """The prepared statements of one table; CQL text is only ever built here."""

    def __init__(self, session: Session, keyspace: str, table: str) -> None:
        # S608: the only spliced names are keyspace and table, validated against
        # _IDENTIFIER by the backend; every value is a bind marker.
        target = f"{keyspace}.{table}"
        columns = ", ".join(codec.INSERT_COLUMNS)
        markers = ", ".join("?" for _ in codec.INSERT_COLUMNS)
        select = ", ".join(
            expr if expr == name else f"{expr} AS {name}" for expr, name in codec.SELECT_COLUMNS
        )
        self.save = session.prepare(
            f"INSERT INTO {target} ({columns}) VALUES ({markers}) USING TIMESTAMP ?"  # noqa: S608
        )
        self.get = session.prepare(
            f"SELECT {select} FROM {target} WHERE session_id = ?"  # noqa: S608
        )
        head = ", ".join(
            expr if expr == name else f"{expr} AS {name}" for expr, name in codec.HEAD_COLUMNS
        )
        self.head = session.prepare(
            f"SELECT {head} FROM {target} WHERE session_id = ?"  # noqa: S608
        )
        self.purge = session.prepare(
            f"DELETE FROM {target} USING TIMESTAMP ? WHERE session_id = ?"  # noqa: S608
        )
        # Inclusive upper bound: the half-open end 2**63 does not fit a bigint.
        self.scan = session.prepare(
            f"SELECT {select} FROM {target} "  # noqa: S608
            "WHERE token(session_id) >= ? AND token(session_id) <= ?"
        )
        for statement in (self.save, self.get, self.head, self.purge, self.scan):
            # Writes carry their own timestamp, so replaying any of them is harmless: let
            # the driver retry and speculate on them.
            statement.is_idempotent = True


# --------------------------------------------------------------------------- backend


class CassandraBackend(LifecycleMixin):
    """The :class:`~sessionstore.backends.SessionBackend` on an Apache Cassandra table.

    Build it on a ``cassandra.cluster.Session`` you own (the backend never shuts it
    down), or with :meth:`connect`, which creates and owns its ``Cluster``::

        backend = CassandraBackend(session, keyspace="exams", table="sessions")
        async with backend:
            page = await backend.scan(backend.key_space.split(64)[0], limit=500)

    Statements are prepared when the backend opens; a missing keyspace or table then
    raises :class:`~sessionstore.ConfigurationError` (see :func:`create_schema`).
    Keys are ordered by Murmur3 token, so :attr:`key_space` is ``[-2**63, 2**63)``.
    """

    _settings: CassandraSettings | None
    _session: Session | None
    _cluster: Cluster | None  # set only when this backend created the cluster
    _statements: _Statements | None

    def __init__(
        self,
        session: Session,
        *,
        keyspace: str,
        table: str = "sessions",
        consistency: str | int = "LOCAL_QUORUM",
        request_timeout: float = 10.0,
        name: str = "cassandra",
    ) -> None:
        if session is None:
            raise ConfigurationError("session is required; use CassandraBackend.connect()")
        self._configure(
            keyspace=keyspace,
            table=table,
            consistency=consistency,
            request_timeout=request_timeout,
            name=name,
        )
        self._session = session

    def _configure(
        self,
        *,
        keyspace: str,
        table: str,
        consistency: str | int,
        request_timeout: float,
        name: str,
    ) -> None:
        self._keyspace = _identifier(keyspace, "keyspace")
        self._table = _identifier(table, "table")
        self._consistency = _consistency(consistency)
        if not request_timeout > 0:
            raise ConfigurationError("request_timeout must be positive")
        self._request_timeout = float(request_timeout)
        self._name = name
        self._lifecycle_name = f"backend {name!r}"
        self._settings = None
        self._session = None
        self._cluster = None
        self._statements = None
        self._open_lock = asyncio.Lock()
        self._release_lock = threading.Lock()

    @classmethod
    def connect(cls, settings: CassandraSettings, *, name: str = "cassandra") -> Self:
        """A backend that creates (when opened) and owns its own ``Cluster``.

        Nothing connects here; the connection is made in a worker thread on first use
        or ``async with``, and closed by :meth:`aclose`::

            async with CassandraBackend.connect(settings) as store:
                ...
        """
        if not isinstance(settings, CassandraSettings):
            raise ConfigurationError("settings must be CassandraSettings")
        backend = cls.__new__(cls)
        backend._configure(
            keyspace=settings.keyspace,
            table=settings.table,
            consistency=settings.consistency,
            request_timeout=settings.request_timeout,
            name=name,
        )
        backend._settings = settings
        return backend

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, "
            f"table={self._keyspace}.{self._table}, state={self._state.value})"
        )

    @property
    def name(self) -> str:
        """The store name used in metrics and errors."""
        return self._name

    @property
    def key_space(self) -> KeyRange:
        """Murmur3 token order: ``[-2**63, 2**63)``."""
        return TOKEN_KEY_SPACE

    @property
    def keyspace(self) -> str:
        """The keyspace holding the sessions table."""
        return self._keyspace

    @property
    def table(self) -> str:
        """The sessions table."""
        return self._table

    # ---------------------------------------------------------------- lifecycle

    async def _connect(self) -> Session:
        """The session, creating the owned cluster first if needed (in a thread)."""
        if self._session is not None:
            return self._session
        settings = self._settings
        assert settings is not None  # a backend without session was built by connect()

        def connect_blocking() -> Session:
            cluster = _build_cluster(settings)
            # Recorded before connecting, so that aclose() can shut it down even if the
            # task that opened the backend was cancelled while this thread ran.
            self._cluster = cluster
            try:
                return cluster.connect()
            except BaseException:
                self._cluster = None
                cluster.shutdown()
                raise

        try:
            session = await asyncio.to_thread(connect_blocking)
        except ConfigurationError:
            raise
        except Exception as exc:
            raise _map_error(exc, store=self._name, operation="connect") from exc
        self._session = session
        return session

    async def _open(self) -> None:
        # Serialized: concurrent first calls must not build two clusters.
        async with self._open_lock:
            if self._statements is not None:
                return
            if self._closed():
                raise RepositoryClosedError(f"{self._lifecycle_name} is closed")
            session = await self._connect()
            try:
                self._check_partitioner(session)
                self._statements = await asyncio.to_thread(
                    _Statements, session, self._keyspace, self._table
                )
            except InvalidRequest as exc:
                await self._release()
                raise ConfigurationError(
                    f"cannot prepare statements on {self._keyspace}.{self._table}: the "
                    "keyspace or table is missing or does not have the expected schema "
                    "(see create_schema)"
                ) from exc
            except ConfigurationError:
                await self._release()
                raise
            except Exception as exc:
                await self._release()
                raise _map_error(exc, store=self._name, operation="prepare") from exc
            if self._closed():
                # aclose() ran while this task waited on the worker thread.
                await self._release()
                raise RepositoryClosedError(f"{self._lifecycle_name} is closed")

    def _closed(self) -> bool:
        return self._state is BackendState.CLOSED

    def _check_partitioner(self, session: Session) -> None:
        # key_space and the token scans assume Murmur3; refuse any other partitioner.
        partitioner = getattr(getattr(session.cluster, "metadata", None), "partitioner", None)
        if partitioner and not str(partitioner).endswith("Murmur3Partitioner"):
            raise ConfigurationError(f"unsupported partitioner {partitioner}; need Murmur3")

    async def _release(self) -> None:
        # Idempotent; shuts down only a cluster this backend created.
        self._statements = None
        with self._release_lock:
            cluster, self._cluster = self._cluster, None
            if self._settings is not None:
                self._session = None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def _close(self) -> None:
        await self._release()

    async def aclose(self) -> None:
        """Release the owned cluster (never a session passed in). Idempotent."""
        await super().aclose()
        # Also covers a cluster connected by create_schema() on a never-opened backend.
        await self._release()

    async def _schema_session(self) -> Session:
        if self._state is BackendState.CLOSED:
            raise RepositoryClosedError(f"{self._lifecycle_name} is closed")
        async with self._open_lock:
            return await self._connect()

    # ---------------------------------------------------------------- requests

    def _bind(self, statement: Any, values: tuple[Any, ...]) -> Any:
        try:
            bound = statement.bind(values)
        except (TypeError, ValueError, OverflowError) as exc:
            # Values come from a validated session through the codec; a failure here is
            # input the model let through. The driver's message would quote the value.
            raise InvalidSessionError(
                f"session cannot be encoded for Cassandra ({type(exc).__name__})"
            ) from None
        bound.consistency_level = self._consistency
        return bound

    async def _run(
        self, session: Session, operation: str, bound: Any, paging_state: bytes | None = None
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        while True:
            try:
                return await execute(
                    session,
                    bound,
                    request_timeout=self._request_timeout,
                    paging_state=paging_state,
                )
            except Exception as exc:
                # While a connection's send buffer is full (multi-MB writes in flight)
                # the driver refuses new requests, unsent, with NoHostAvailable of
                # ConnectionBusy instead of queueing them: wait for it to drain.
                if _all_busy(exc) and loop.time() < deadline:
                    await asyncio.sleep(_BUSY_PAUSE)
                    continue
                raise _map_error(exc, store=self._name, operation=operation) from exc

    def _ready(self) -> tuple[Session, _Statements]:
        session, statements = self._session, self._statements
        if session is None or statements is None or self._state is not BackendState.OPEN:
            raise RepositoryClosedError(f"{self._lifecycle_name} is closed")
        return session, statements

    def _decode(self, row: Any) -> StoredRecord:
        try:
            return codec.record_from_row(row)
        except codec.RowDecodeError as exc:
            raise BackendError(
                f"stored row cannot be decoded ({', '.join(exc.fields)})", store=self._name
            ) from exc

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """The stored record (a tombstone if ``deleted``), or None if never written."""
        key = validate_session_id(session_id)
        await self._ensure_open()
        session, statements = self._ready()
        result = await self._run(session, "get", self._bind(statements.get, (key,)))
        rows = result.current_rows
        return self._decode(rows[0]) if rows else None

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """The stored revision (the newest of the revision and data cells) and flag."""
        key = validate_session_id(session_id)
        await self._ensure_open()
        session, statements = self._ready()
        return await self._head(session, statements, key)

    async def _head(
        self, session: Session, statements: _Statements, key: uuid.UUID
    ) -> RecordHead | None:
        result = await self._run(session, "head", self._bind(statements.head, (key,)))
        rows = result.current_rows
        if not rows:
            return None
        try:
            return codec.head_from_row(rows[0])
        except codec.RowDecodeError as exc:
            raise BackendError(
                f"stored row cannot be decoded ({', '.join(exc.fields)})", store=self._name
            ) from exc

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Write ``session`` at write timestamp ``session.revision``.

        An older or equal revision already stored wins, cell by cell, so a late save is
        a no-op. ``session`` must have been validated (the repository does it once).
        """
        if not isinstance(session, StudentSession):
            raise InvalidSessionError(
                f"expected StudentSession, got {type(session).__name__}", fields=("<root>",)
            )
        check_revision(session.revision)
        expected = check_expected(expected_revision)
        row = codec.to_row(session)
        await self._ensure_open()
        cql_session, statements = self._ready()
        bound = self._bind(statements.save, (*row, session.revision))
        return await self._write(
            cql_session,
            statements,
            operation="save",
            key=row[0],
            revision=session.revision,
            bound=bound,
            expected=expected,
        )

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Write a tombstone row at write timestamp ``revision``."""
        key = validate_session_id(session_id)
        check_revision(revision)
        expected = check_expected(expected_revision)
        await self._ensure_open()
        session, statements = self._ready()
        bound = self._bind(statements.save, (*codec.tombstone_row(key, revision), revision))
        return await self._write(
            session,
            statements,
            operation="delete",
            key=key,
            revision=revision,
            bound=bound,
            expected=expected,
        )

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """``DELETE ... USING TIMESTAMP revision``: removes every cell at most that old."""
        key = validate_session_id(session_id)
        check_revision(revision)
        await self._ensure_open()
        session, statements = self._ready()
        await self._run(session, "purge", self._bind(statements.purge, (revision, key)))

    async def _write(
        self,
        session: Session,
        statements: _Statements,
        *,
        operation: str,
        key: uuid.UUID,
        revision: int,
        bound: Any,
        expected: int | None,
    ) -> WriteResult:
        if expected is None:
            await self._run(session, operation, bound)
            return _UNKNOWN
        # Optimistic concurrency without a lightweight transaction (those cannot carry
        # a write timestamp): check, write, and read back. Two writers expecting the
        # same revision can both pass the check; the read back then fails the one whose
        # revision lost, but not one that read back before the other wrote.
        before = await self._head(session, statements, key)
        if (expected > 0 and revision <= expected) or not expectation_met(before, expected):
            return WriteResult(False, 0 if before is None else before.revision)
        await self._run(session, operation, bound)
        after = await self._head(session, statements, key)
        if after is not None and after.revision == revision:
            return _APPLIED
        return WriteResult(False, 0 if after is None else after.revision)

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Up to ``limit`` records whose token is in ``key_range``, in token order.

        ``cursor`` wraps the driver's paging state (which holds the last key read) with
        the protocol version and a checksum of the range: it resumes only the same
        range, and a damaged cursor raises ConfigurationError instead of reaching the
        server. A page may hold fewer than ``limit`` rows, even none, and a cursor.
        """
        if not isinstance(key_range, KeyRange):
            raise ConfigurationError("key_range must be a KeyRange")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError("limit must be at least 1")
        parsed = _split_cursor(cursor)
        await self._ensure_open()
        session, statements = self._ready()
        low = max(key_range.start, _MIN_TOKEN)
        high = min(key_range.end - 1, _MAX_TOKEN)  # inclusive: 2**63 is not a bigint
        # No key has the minimum token (Murmur3 maps it to the maximum), and Cassandra
        # reads "token <= minimum" as "to the end of the ring": answer locally.
        if low > high or high == _MIN_TOKEN:
            if parsed is not None:
                raise ConfigurationError("malformed scan cursor")  # never issued for it
            return ScanPage((), None)
        protocol = int(session.cluster.protocol_version)
        paging_state = None if parsed is None else _check_cursor(parsed, protocol, low, high)
        bound = self._bind(statements.scan, (low, high))
        bound.fetch_size = limit
        result = await self._run(session, "scan", bound, paging_state)
        records = tuple(self._decode(row) for row in result.current_rows)
        state = result.paging_state if result.has_more_pages else None
        return ScanPage(records, _make_cursor(state, protocol, low, high) if state else None)


_APPLIED = WriteResult(True)
_UNKNOWN = WriteResult(None)

#: Seconds between attempts while every connection is busy (see CassandraBackend._run).
_BUSY_PAUSE = 0.005


def _all_busy(exc: BaseException) -> bool:
    """Whether the driver refused the request, unsent, because its connections were busy."""
    if not isinstance(exc, NoHostAvailable):
        return False
    errors: dict[Any, BaseException] = getattr(exc, "errors", None) or {}
    return bool(errors) and all(isinstance(e, ConnectionBusy) for e in errors.values())


# A cursor is hex of: protocol version (1 byte), digest (8 bytes), paging state.
# Why not the bare paging state: Cassandra answers an unparsable paging state with a
# protocol error, on which the driver closes the connection and marks the node down --
# one bad cursor would fail every concurrent request. The digest also ties the cursor to
# its token range, and the version to the protocol whose paging-state format it uses.
_DIGEST_SIZE = 8


def _cursor_digest(protocol: int, low: int, high: int, state: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"sessionstore-cql")
    digest.update(struct.pack(">Bqq", protocol, low, high))
    digest.update(state)
    return digest.digest()


def _make_cursor(state: bytes, protocol: int, low: int, high: int) -> str:
    return (bytes([protocol]) + _cursor_digest(protocol, low, high, state) + state).hex()


def _split_cursor(cursor: str | None) -> bytes | None:
    # Format check only, before any I/O; _check_cursor verifies it once connected.
    if cursor is None:
        return None
    try:
        raw = bytes.fromhex(cursor) if isinstance(cursor, str) else b""
    except ValueError:
        raw = b""
    if len(raw) <= 1 + _DIGEST_SIZE:
        raise ConfigurationError("malformed scan cursor")
    return raw


def _check_cursor(raw: bytes, protocol: int, low: int, high: int) -> bytes:
    version, digest, state = raw[0], raw[1 : 1 + _DIGEST_SIZE], raw[1 + _DIGEST_SIZE :]
    if version != protocol:
        raise ConfigurationError(
            f"scan cursor was made with protocol version {version}, not {protocol}"
        )
    if not hmac.compare_digest(digest, _cursor_digest(protocol, low, high, state)):
        raise ConfigurationError("malformed scan cursor, or one of another key range")
    return state


# --------------------------------------------------------------------------- schema


def schema_cql(keyspace: str, table: str = "sessions") -> str:
    """The ``CREATE TABLE`` statement of the expected production schema.

    >>> print(schema_cql("exams"))  # doctest: +ELLIPSIS
    CREATE TABLE IF NOT EXISTS exams.sessions (...
    """
    target = f"{_identifier(keyspace, 'keyspace')}.{_identifier(table, 'table')}"
    return (
        f"CREATE TABLE IF NOT EXISTS {target} (\n"
        "    session_id uuid PRIMARY KEY,\n"
        "    student_id text,\n"
        "    assessment_id text,\n"
        "    status text,\n"
        "    started_at timestamp,\n"
        "    updated_at timestamp,\n"
        "    answers text,\n"
        "    attachment_data frozen<list<blob>>,\n"
        "    metadata frozen<map<text, text>>,\n"
        "    revision bigint,\n"
        "    deleted boolean\n"
        ")"
    )


def _replication_cql(replication: Mapping[str, str | int]) -> str:
    if "class" not in replication:
        raise ConfigurationError("replication needs a 'class'")
    items = []
    for key, value in replication.items():
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not (
            isinstance(key, str)
            and isinstance(text, str)
            and _REPLICATION_WORD.match(key)
            and _REPLICATION_WORD.match(text)
        ):
            raise ConfigurationError(
                "replication keys and values must be names or integers "
                f"matching {_REPLICATION_WORD.pattern}"
            )
        items.append(f"'{key}': '{text}'")
    return "{" + ", ".join(items) + "}"


async def create_schema(
    target: Session | CassandraBackend,
    keyspace: str | None = None,
    table: str | None = None,
    *,
    replication: Mapping[str, str | int] | None = None,
) -> None:
    """Create the sessions table (and the keyspace, when ``replication`` is given).

    ``target`` is a driver ``Session``, or a :class:`CassandraBackend` whose keyspace
    and table are the defaults (an unopened backend from :meth:`CassandraBackend.connect`
    connects without preparing, so this works before the table exists). Idempotent
    (``IF NOT EXISTS``); it does not alter an existing table. Example::

        await create_schema(session, "exams", "sessions",
                            replication={"class": "NetworkTopologyStrategy", "eu-west": 3})
    """
    if isinstance(target, CassandraBackend):
        keyspace = keyspace or target.keyspace
        table = table or target.table
        session = await target._schema_session()
        store = target.name
    else:
        session, store = target, "cassandra"
    if keyspace is None:
        raise ConfigurationError("keyspace is required")
    statements = []
    if replication is not None:
        statements.append(
            f"CREATE KEYSPACE IF NOT EXISTS {_identifier(keyspace, 'keyspace')} "
            f"WITH replication = {_replication_cql(replication)}"
        )
    statements.append(schema_cql(keyspace, table or "sessions"))
    for cql in statements:
        try:
            # DDL waits for schema agreement inside the driver, on its own threads.
            await execute(session, SimpleStatement(cql), request_timeout=_SCHEMA_TIMEOUT)
        except Exception as exc:
            if isinstance(exc, InvalidRequest | ConfigurationException):
                raise ConfigurationError(
                    f"cannot create {keyspace}.{table or 'sessions'} "
                    f"({type(exc).__name__}; does the keyspace exist?)"
                ) from exc
            raise _map_error(exc, store=store, operation="create_schema") from exc
