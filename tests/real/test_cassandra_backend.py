"""CassandraBackend against the real server: what the contract suite cannot see.

Historical rows without a revision, the tombstone row's TTL, hostile values, the
largest sessions, the error mapping, cursors, and the exact codec round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.metadata import Murmur3Token
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import dict_factory
from pydantic import ValidationError

from sessionstore import (
    Answer,
    Attachment,
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidSessionError,
    RepositoryClosedError,
    SessionStatus,
    StoredRecord,
    StudentSession,
)
from sessionstore.backends import BackendState, KeyRange
from sessionstore.backends import _cql_codec as codec
from sessionstore.backends.cassandra import (
    CassandraBackend,
    CassandraSettings,
    create_schema,
    schema_cql,
)
from sessionstore.model import encoded_size
from tests.helpers import T0, make_session
from tests.real.cassandra_store import (
    NODELAY,
    TEST_KEYSPACE,
    TestCassandraBackend,
    fresh_table_name,
    open_backend,
    server_settings,
    session_execute,
    shared_session,
)
from tests.real.servers import CASSANDRA_HOSTS, CASSANDRA_PORT

pytestmark = pytest.mark.real

MiB = 1024 * 1024


@pytest.fixture
async def backend() -> AsyncIterator[TestCassandraBackend]:
    store = await open_backend()
    try:
        yield store
    finally:
        await store.aclose()


def _target(backend: CassandraBackend) -> str:
    return f"{backend.keyspace}.{backend.table}"


# --------------------------------------------------------------------- historical rows


async def _insert_historical(backend: CassandraBackend, sid: uuid.UUID, timestamp: int) -> None:
    # A row as the service wrote it before this library: no revision, no deleted column.
    await session_execute(
        await shared_session(),
        f"INSERT INTO {_target(backend)} (session_id, student_id, assessment_id, status, "
        "started_at, updated_at, answers, metadata) "
        f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s) USING TIMESTAMP {timestamp}",
        (sid, "legacy-student", "legacy-assessment", "submitted", T0, T0, None, None),
    )


async def test_historical_row_without_revision_uses_its_writetime(
    backend: TestCassandraBackend,
) -> None:
    sid = uuid.uuid4()
    await _insert_historical(backend, sid, 1_700_000_000_123_456)
    record = await backend.get(sid)
    expected = StudentSession(
        session_id=sid,
        student_id="legacy-student",
        assessment_id="legacy-assessment",
        status=SessionStatus.SUBMITTED,
        started_at=T0,
        updated_at=T0,
        revision=1_700_000_000_123_456,
    )
    assert record == StoredRecord.of(expected)
    page = await backend.scan(backend.key_space)
    assert page.records == (record,)


async def test_historical_row_updated_per_column_takes_the_newest_writetime(
    backend: TestCassandraBackend,
) -> None:
    sid = uuid.uuid4()
    await _insert_historical(backend, sid, 1_000)
    await session_execute(
        await shared_session(),
        f"UPDATE {_target(backend)} USING TIMESTAMP 5000 SET status = 'graded' "
        "WHERE session_id = %s",
        (sid,),
    )
    record = await backend.get(sid)
    assert record is not None
    assert record.revision == 5_000
    assert record.session is not None
    assert record.session.status is SessionStatus.GRADED
    # A repair copying the record back writes it at that same revision: unchanged.
    await backend.save(record.session)
    assert await backend.get(sid) == record
    newer = make_session(session_id=sid, revision=6_000)
    await backend.save(newer)
    assert await backend.get(sid) == StoredRecord.of(newer)


# --------------------------------------------------------------------- tombstones


async def test_tombstone_row_has_no_ttl_and_the_revision_as_writetime(
    backend: TestCassandraBackend,
) -> None:
    s = make_session(revision=100)
    await backend.save(s)
    await backend.delete(s.session_id, 250)
    rows = await session_execute(
        await shared_session(),
        f"SELECT TTL(deleted) AS ttl, WRITETIME(deleted) AS wt, revision, student_id, "
        f"attachment_data FROM {_target(backend)} WHERE session_id = %s",
        (s.session_id,),
    )
    (row,) = rows
    assert row.ttl is None  # kept until the purge job removes it from both stores
    assert row.wt == 250
    assert row.revision == 250
    assert row.student_id is None
    assert row.attachment_data is None


async def test_purge_removes_only_what_is_at_most_the_revision(
    backend: TestCassandraBackend,
) -> None:
    sid = uuid.uuid4()
    await backend.delete(sid, 10)
    await backend.purge(sid, 9)
    assert await backend.get(sid) == StoredRecord.tombstone(sid, 10)
    await backend.purge(sid, 10)
    assert await backend.get(sid) is None
    assert await backend.head(sid) is None
    # An older live copy goes too; a newer save survives a purge below it.
    old = make_session(revision=5)
    await backend.save(old)
    await backend.purge(old.session_id, 10)
    assert await backend.get(old.session_id) is None
    newer = make_session(revision=50)
    await backend.save(newer)
    await backend.purge(newer.session_id, 40)
    assert await backend.get(newer.session_id) == StoredRecord.of(newer)


async def test_equal_revision_delete_wins_over_save_in_any_order(
    backend: TestCassandraBackend,
) -> None:
    # Documented tie rule: at one write timestamp a cell tombstone beats a value and
    # deleted=true beats false, so the outcome does not depend on arrival order.
    a, b = make_session(revision=50), make_session(revision=50)
    await backend.save(a)
    await backend.delete(a.session_id, 50)
    await backend.delete(b.session_id, 50)
    await backend.save(b)
    assert await backend.get(a.session_id) == StoredRecord.tombstone(a.session_id, 50)
    assert await backend.get(b.session_id) == StoredRecord.tombstone(b.session_id, 50)


# --------------------------------------------------------------------- values


HOSTILE = [
    "'; DROP TABLE sessions; --",
    "x' OR '1'='1",
    '"; DELETE FROM sessions WHERE true; --',
    "?, ?, ?) USING TTL 1 --",
    "$$ BEGIN BATCH APPLY BATCH $$",
    "token(session_id) >= -9223372036854775808",
    "\\x00\\' \U0001f600 日本語 \u202e",
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_values_are_stored_verbatim_everywhere(
    backend: TestCassandraBackend, hostile: str
) -> None:
    s = make_session(
        revision=9,
        student_id=hostile,
        assessment_id=hostile,
        metadata={"k" + hostile.replace(".", ""): hostile, "plain": "v"},
        answers=(
            Answer(
                question_id=hostile,
                response=hostile + '{"v": 2, "answers": []}',
                attachments=(
                    Attachment(content_type=hostile, filename=hostile, data=hostile.encode()),
                ),
                answered_at=T0,
            ),
        ),
    )
    bystander = make_session(revision=9)
    await backend.save(bystander)
    await backend.save(s)
    assert await backend.get(s.session_id) == StoredRecord.of(s)
    assert await backend.get(bystander.session_id) == StoredRecord.of(bystander)


@pytest.mark.parametrize(
    ("keyspace", "table"),
    [
        ("sessionstore_test", "t; DROP KEYSPACE sessionstore_test"),
        ("ks' --", "sessions"),
        ("sessionstore_test", "x" * 49),
        ("1abc", "sessions"),
    ],
)
async def test_hostile_identifiers_are_refused_before_any_io(keyspace: str, table: str) -> None:
    session = await shared_session()
    with pytest.raises(ConfigurationError):
        CassandraBackend(session, keyspace=keyspace, table=table)
    with pytest.raises(ConfigurationError):
        await create_schema(session, keyspace, table)
    with pytest.raises(ValueError, match="pattern"):
        CassandraSettings(contact_points=["h"], keyspace=keyspace, table=table)


async def test_session_of_15_mib_round_trips(backend: TestCassandraBackend) -> None:
    # Just under the library's 16 MiB limit: needs the server's max mutation size
    # (commitlog_segment_size / 2) and native_transport_max_frame_size above it.
    s = make_session(revision=3, attachment_bytes=15 * MiB)
    assert encoded_size(s) < 16 * MiB
    await backend.save(s)
    got = await backend.get(s.session_id)
    assert got == StoredRecord.of(s)


async def test_session_above_the_mutation_limit_is_rejected(
    backend: TestCassandraBackend,
) -> None:
    # The repository refuses such a session before any store (SessionTooLargeError);
    # the backend alone sends it and must map the server's refusal.
    s = make_session(revision=3, attachment_bytes=17 * MiB, student_id="secret-student")
    with pytest.raises(BackendRejectedError) as info:
        await backend.save(s)
    assert "secret-student" not in str(info.value)
    # The connection survived: the next request works.
    assert await backend.get(s.session_id) is None


async def test_codec_round_trips_edge_values(backend: TestCassandraBackend) -> None:
    earliest = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    latest = dt.datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=dt.UTC)
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 1_000, tzinfo=dt.UTC)
    sessions = [
        make_session(revision=1, metadata={}, answers=()),
        make_session(revision=2**63 - 1, started_at=earliest, updated_at=latest),
        make_session(
            revision=3,
            started_at=before_epoch,
            updated_at=before_epoch,
            answers=(
                Answer(question_id="q", response="", answered_at=None),
                Answer(
                    question_id="q2",
                    response="r",
                    answered_at=latest,
                    attachments=(
                        Attachment(content_type="image/png", data=b""),
                        Attachment(content_type="a/b", filename="f", data=b"\x00\xff" * 10),
                    ),
                ),
                Answer(question_id="q3", response="x" * 100_000, answered_at=earliest),
            ),
            metadata={"k": "", "ü": "ß" * 1000},
        ),
    ]
    for s in sessions:
        await backend.save(s)
        assert await backend.get(s.session_id) == StoredRecord.of(s)


async def test_any_row_factory_is_decoded() -> None:
    # A session given by the application may use dict_factory: rows are mappings.
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        row_factory=dict_factory,
    )
    cluster = Cluster(
        CASSANDRA_HOSTS,
        port=CASSANDRA_PORT,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        sockopts=NODELAY,
    )
    session = await asyncio.to_thread(cluster.connect)
    table = fresh_table_name()
    await create_schema(session, TEST_KEYSPACE, table)
    async with TestCassandraBackend(session, keyspace=TEST_KEYSPACE, table=table) as store:
        s = make_session(revision=4, attachment_bytes=10)
        await store.save(s)
        assert await store.get(s.session_id) == StoredRecord.of(s)
        assert (await store.scan(store.key_space)).records == (StoredRecord.of(s),)
    await asyncio.to_thread(cluster.shutdown)


# --------------------------------------------------------------------- scans


async def test_scan_returns_token_order_and_honours_range_edges(
    backend: TestCassandraBackend,
) -> None:
    sessions = [make_session(revision=1 + i) for i in range(12)]
    for s in sessions:
        await backend.save(s)
    page = await backend.scan(backend.key_space, limit=100)
    tokens = [Murmur3Token.from_key(r.session_id.bytes).value for r in page.records]
    assert tokens == sorted(tokens)
    assert len(tokens) == 12
    assert page.cursor is None

    middle = tokens[5]
    left = await backend.scan(KeyRange(-(2**63), middle), limit=100)
    right = await backend.scan(KeyRange(middle, 2**63), limit=100)
    assert len(left.records) == 5
    assert len(right.records) == 7
    single = await backend.scan(KeyRange(middle, middle + 1))
    assert [r.session_id for r in single.records] == [page.records[5].session_id]
    # Ranges beyond the token space are clamped to it.
    assert len((await backend.scan(KeyRange(-(2**70), 2**70), limit=100)).records) == 12
    assert (await backend.scan(KeyRange(2**63, 2**64))).records == ()


async def test_malformed_or_foreign_cursors_are_refused(backend: TestCassandraBackend) -> None:
    for i in range(4):
        await backend.save(make_session(revision=1 + i))
    page = await backend.scan(backend.key_space, limit=1)
    assert page.cursor is not None
    bad = [
        "not hex",
        "",
        "00" * 9,
        "05" + "00" * 30,  # right version, wrong digest
        page.cursor[:-2] + ("00" if page.cursor[-2:] != "00" else "01"),  # bit rot
        "04" + page.cursor[2:],  # another protocol version
    ]
    for cursor in bad:
        with pytest.raises(ConfigurationError):
            await backend.scan(backend.key_space, cursor=cursor, limit=1)
    with pytest.raises(ConfigurationError):
        await backend.scan(KeyRange(0, 2**63), cursor=page.cursor, limit=1)
    # The cursor still works with its own range: nothing was sent to the server.
    rest = await backend.scan(backend.key_space, cursor=page.cursor, limit=10)
    assert len(rest.records) == 3
    with pytest.raises(ConfigurationError):
        await backend.scan(backend.key_space, limit=0)


# --------------------------------------------------------------------- errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_cluster_is_unavailable() -> None:
    settings = server_settings(
        contact_points=["127.0.0.1"],
        port=_closed_port(),
        connect_timeout=1.0,
        username="svc",
        password="hunter2-secret",
        allow_plaintext_credentials=True,  # a loopback test port
    )
    backend = CassandraBackend.connect(settings)
    with pytest.raises(BackendUnavailableError) as info:
        await backend.get(uuid.uuid4())
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(settings)
    assert backend._state is BackendState.UNOPENED
    assert backend._cluster is None
    await backend.aclose()


async def test_unresolvable_host_is_unavailable_and_bad_ca_file_is_configuration() -> None:
    backend = CassandraBackend.connect(server_settings(contact_points=["no-such-host.invalid"]))
    with pytest.raises(BackendUnavailableError):
        await backend.get(uuid.uuid4())
    await backend.aclose()
    backend = CassandraBackend.connect(server_settings(ssl_ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigurationError, match="ssl_ca_file"):
        await backend.get(uuid.uuid4())
    await backend.aclose()


async def test_missing_keyspace_or_table_is_a_configuration_error() -> None:
    session = await shared_session()
    for keyspace, table in [("no_such_keyspace", "sessions"), (TEST_KEYSPACE, "no_such_table")]:
        backend = CassandraBackend(session, keyspace=keyspace, table=table)
        with pytest.raises(ConfigurationError, match="create_schema"):
            await backend.get(uuid.uuid4())
        await backend.aclose()
    with pytest.raises(ConfigurationError):
        await create_schema(session, "no_such_keyspace", "sessions")


async def test_request_timeout_is_a_timeout_error() -> None:
    store = await open_backend(request_timeout=1e-6)
    try:
        with pytest.raises(BackendTimeoutError):
            await store.save(make_session(revision=1, attachment_bytes=4 * MiB))
    finally:
        await store.aclose()


async def test_invalid_input_is_refused_before_any_io() -> None:
    session = await shared_session()
    backend = CassandraBackend(session, keyspace=TEST_KEYSPACE, table="never_created")
    s = make_session()
    for revision in (0, -1, 2**63):
        with pytest.raises(InvalidSessionError):
            await backend.save(s.model_copy(update={"revision": revision}))
        with pytest.raises(InvalidSessionError):
            await backend.delete(s.session_id, revision)
    with pytest.raises(InvalidSessionError):
        await backend.get("'; DROP TABLE sessions; --")  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionError):
        await backend.save({"session_id": s.session_id})  # type: ignore[arg-type]
    lone_surrogate = s.model_copy(update={"revision": 1, "student_id": "\ud800"})
    with pytest.raises(InvalidSessionError):
        await backend.save(lone_surrogate)
    # Nothing was prepared against the missing table: no I/O happened.
    assert backend._state is BackendState.UNOPENED
    await backend.aclose()


async def test_undecodable_row_is_a_backend_error(backend: TestCassandraBackend) -> None:
    sid = uuid.uuid4()
    await session_execute(
        await shared_session(),
        f"INSERT INTO {_target(backend)} (session_id, student_id, status, revision) "
        "VALUES (%s, 'private value', 'not-a-status', 5)",
        (sid,),
    )
    with pytest.raises(BackendError) as info:
        await backend.get(sid)
    assert "private value" not in str(info.value)
    assert "status" in str(info.value)


# --------------------------------------------------------------------- lifecycle


async def test_connect_owns_and_closes_its_cluster() -> None:
    table = fresh_table_name()
    backend = CassandraBackend.connect(server_settings(table=table))
    await create_schema(backend)  # connects without preparing: the table is new
    cluster = backend._cluster
    assert cluster is not None
    try:
        async with backend:
            s = make_session(revision=1)
            await backend.save(s)
            assert await backend.get(s.session_id) == StoredRecord.of(s)
    finally:
        await session_execute(await shared_session(), f"DROP TABLE {TEST_KEYSPACE}.{table}")
    assert cluster.is_shutdown
    assert backend._cluster is None
    with pytest.raises(RepositoryClosedError):
        await backend.get(s.session_id)


async def test_aclose_keeps_a_session_it_was_given(backend: TestCassandraBackend) -> None:
    session = await shared_session()
    await backend.aclose()
    assert not session.is_shutdown


async def test_concurrent_first_use_opens_once() -> None:
    session = await shared_session()
    table = fresh_table_name()
    await create_schema(session, TEST_KEYSPACE, table)
    store = TestCassandraBackend(session, keyspace=TEST_KEYSPACE, table=table)
    try:
        results = await asyncio.gather(*(store.get(uuid.uuid4()) for _ in range(20)))
        assert results == [None] * 20
    finally:
        await store.aclose()


async def test_cancelled_request_leaves_the_backend_usable(backend: TestCassandraBackend) -> None:
    s = make_session(revision=8, attachment_bytes=2 * MiB)
    task = asyncio.ensure_future(backend.save(s))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    other = make_session(revision=1)
    await backend.save(other)
    assert await backend.get(other.session_id) == StoredRecord.of(other)


def test_settings_hide_the_password_and_validate() -> None:
    settings = CassandraSettings(
        contact_points=["a", "b"],
        keyspace="ks",
        username="u",
        password="p4ss-w0rd",
        consistency="local_one",
        allow_plaintext_credentials=True,
    )
    assert "p4ss-w0rd" not in repr(settings)
    assert "p4ss-w0rd" not in str(settings)
    assert settings.consistency == "LOCAL_ONE"
    assert settings.port == 9042
    for bad in (
        {"consistency": "SERIAL"},
        {"consistency": "MOST"},
        {"password": None},
        {"extra": 1},
        {"contact_points": []},
    ):
        values = {
            "contact_points": ["a"],
            "keyspace": "ks",
            "username": "u",
            "password": "p4ss-w0rd",
            "allow_plaintext_credentials": True,
        } | bad
        with pytest.raises(ValidationError) as info:
            CassandraSettings(**values)  # type: ignore[arg-type]
        assert "p4ss-w0rd" not in str(info.value)
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_credentials_without_tls_need_the_explicit_opt_in(tmp_path: Path) -> None:
    base: dict[str, Any] = {"contact_points": ["a"], "keyspace": "ks"}
    credentials = {"username": "svc", "password": "p4ss-w0rd"}
    with pytest.raises(ConfigurationError, match="allow_plaintext_credentials") as info:
        CassandraSettings(**base, **credentials)
    assert "p4ss-w0rd" not in str(info.value) and "svc" not in str(info.value)
    assert info.value.__context__ is None
    opted_in = CassandraSettings(**base, **credentials, allow_plaintext_credentials=True)
    assert opted_in.allow_plaintext_credentials
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert CassandraSettings(**base, **credentials, ssl_ca_file=ca).ssl_ca_file == ca
    assert CassandraSettings(**base).username is None  # no credentials: no TLS needed


def test_schema_cql_is_the_documented_schema() -> None:
    cql = schema_cql("exams")
    assert cql.startswith("CREATE TABLE IF NOT EXISTS exams.sessions (")
    for column in codec.INSERT_COLUMNS:
        assert f"    {column} " in cql


async def test_finished_requests_leave_no_reference_cycle(backend: TestCassandraBackend) -> None:
    # A request kept in a cycle holds its values and rows (MBs for large sessions)
    # until the cyclic collector happens to run: memory would follow the data copied,
    # not the pages in flight.
    s = make_session(revision=3, attachment_bytes=1000)
    await backend.save(s)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for revision in range(4, 10):
            await backend.save(s.model_copy(update={"revision": revision}))
            assert await backend.get(s.session_id) is not None
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if type(o).__name__ == "ResponseFuture"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
