"""DocumentDBBackend against the real Mongo-wire server (FerretDB v1 here).

What the contract suite cannot show: the duplicate-key race of the portable save,
operator-looking values stored verbatim, the TTL-index fallback and explicit purge,
``_id`` order versus UUID order with many keys, duck-typed and user-built collections,
settings validation, error mapping, and an unreachable server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from bson.int64 import Int64
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WTimeoutError,
)
from pymongo.results import DeleteResult, InsertOneResult, UpdateResult
from pymongo.write_concern import WriteConcern

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
from sessionstore.backends import UUID_KEY_SPACE, KeyRange
from sessionstore.backends._bson_codec import from_doc, to_doc
from sessionstore.backends.documentdb import (
    DocumentDBBackend,
    DocumentDBSettings,
    map_pymongo_error,
)
from tests.helpers import T0, make_session
from tests.real.documentdb_store import (
    TEST_DATABASE,
    fresh_collection,
    fresh_collection_name,
    new_client,
)
from tests.real.servers import MONGODB_URI

pytestmark = pytest.mark.real

#: A fake credential: tests assert it never shows up in messages or reprs.
PASSWORD = "s3cr3t-Pa55"


# -- helpers ----------------------------------------------------------------------------


class DuckCollection:
    """Only the six methods the backend may use (what Motor and AsyncCollection share).

    Delegates to a real collection, records what happened, and can run another writer
    between the first conditional replace and the insert (the race window).
    """

    def __init__(
        self,
        inner: AsyncCollection[dict[str, Any]],
        *,
        between_replace_and_insert: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.calls: list[tuple[str, object]] = []
        self._race = between_replace_and_insert

    async def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("find_one", None))
        return await self.inner.find_one(filter, *args, **kwargs)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("find", None))
        return self.inner.find(*args, **kwargs)

    async def replace_one(
        self, filter: Mapping[str, Any], replacement: Mapping[str, Any]
    ) -> UpdateResult:
        result = await self.inner.replace_one(filter, replacement)
        self.calls.append(("replace_one", result.matched_count))
        if self._race is not None:
            race, self._race = self._race, None
            await race()
        return result

    async def insert_one(self, document: Any) -> InsertOneResult:
        try:
            result = await self.inner.insert_one(document)
        except DuplicateKeyError:
            self.calls.append(("insert_one", "duplicate"))
            raise
        self.calls.append(("insert_one", "ok"))
        return result

    async def delete_one(self, filter: Mapping[str, Any]) -> DeleteResult:
        result = await self.inner.delete_one(filter)
        self.calls.append(("delete_one", result.deleted_count))
        return result


class FailingCollection(DuckCollection):
    """Fails every call: proves that validation happens before any I/O."""

    def __init__(self) -> None:
        self.calls = []

    def __getattribute__(self, name: str) -> Any:
        if name in {"find_one", "find", "replace_one", "insert_one", "delete_one"}:
            raise AssertionError(f"unexpected I/O: {name}")
        return super().__getattribute__(name)


@pytest.fixture
async def collection() -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    async with fresh_collection() as coll:
        yield coll


@pytest.fixture
async def backend(
    collection: AsyncCollection[dict[str, Any]],
) -> AsyncIterator[DocumentDBBackend]:
    async with DocumentDBBackend(collection) as store:
        yield store


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the portable save: duplicate-key race ------------------------------------------------


async def test_race_with_an_older_concurrent_creator_leaves_ours(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    ours = make_session(revision=200)
    theirs = ours.model_copy(update={"revision": 100, "status": SessionStatus.GRADED})

    async def other_writer() -> None:
        await collection.insert_one(to_doc(theirs))

    racing = DuckCollection(collection, between_replace_and_insert=other_writer)
    async with DocumentDBBackend(racing) as store:
        await store.save(ours)
        assert racing.calls == [
            ("replace_one", 0),  # nothing stored yet
            ("insert_one", "duplicate"),  # the other writer got there first
            ("replace_one", 1),  # theirs is older: replaced
        ]
        assert await store.get(ours.session_id) == StoredRecord.of(ours)


async def test_race_with_a_newer_concurrent_creator_keeps_theirs(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    ours = make_session(revision=200)
    theirs = ours.model_copy(update={"revision": 300, "status": SessionStatus.GRADED})

    async def other_writer() -> None:
        await collection.insert_one(to_doc(theirs))

    racing = DuckCollection(collection, between_replace_and_insert=other_writer)
    async with DocumentDBBackend(racing) as store:
        await store.save(ours)  # no error: a newer revision is stored
        assert racing.calls == [
            ("replace_one", 0),
            ("insert_one", "duplicate"),
            ("replace_one", 0),
        ]
        assert await store.get(ours.session_id) == StoredRecord.of(theirs)


@pytest.mark.parametrize(("their_revision", "winner"), [(100, "tombstone"), (300, "theirs")])
async def test_delete_races_a_concurrent_creator_the_same_way(
    collection: AsyncCollection[dict[str, Any]], their_revision: int, winner: str
) -> None:
    theirs = make_session(revision=their_revision)

    async def other_writer() -> None:
        await collection.insert_one(to_doc(theirs))

    racing = DuckCollection(collection, between_replace_and_insert=other_writer)
    async with DocumentDBBackend(racing) as store:
        await store.delete(theirs.session_id, 200)
        expected = (
            StoredRecord.tombstone(theirs.session_id, 200)
            if winner == "tombstone"
            else StoredRecord.of(theirs)
        )
        assert await store.get(theirs.session_id) == expected


@pytest.mark.parametrize(
    ("stored_revision", "kept"), [(None, "ours"), (100, "ours"), (200, "theirs"), (300, "theirs")]
)
async def test_insert_first_gives_the_same_outcome_in_fewer_round_trips(
    collection: AsyncCollection[dict[str, Any]], stored_revision: int | None, kept: str
) -> None:
    # A backfill's target: the insert goes first, the guarded replace only on a duplicate.
    ours = make_session(revision=200)
    theirs = ours.model_copy(update={"revision": stored_revision or 1})
    if stored_revision is not None:
        await collection.insert_one(to_doc(theirs))
    duck = DuckCollection(collection)
    async with DocumentDBBackend(duck, insert_first=True) as store:
        assert store.insert_first
        await store.save(ours)
        if stored_revision is None:
            assert duck.calls == [("insert_one", "ok")]  # one round trip, not two
        else:
            replaced = int(stored_revision < ours.revision)
            assert duck.calls == [("insert_one", "duplicate"), ("replace_one", replaced)]
        expected = ours if kept == "ours" else theirs
        assert await store.get(ours.session_id) == StoredRecord.of(expected)


@pytest.mark.parametrize("insert_first", [False, True])
async def test_a_duplicate_on_another_unique_index_is_not_swallowed(insert_first: bool) -> None:
    class OtherIndexCollision(DuckCollection):
        async def replace_one(
            self, filter: Mapping[str, Any], replacement: Mapping[str, Any]
        ) -> UpdateResult:
            return UpdateResult({"n": 0, "nModified": 0}, acknowledged=True)

        async def insert_one(self, document: Any) -> InsertOneResult:
            raise DuplicateKeyError(
                "E11000 duplicate key", 11000, {"code": 11000, "keyPattern": {"email": 1}}
            )

    coll = OtherIndexCollision.__new__(OtherIndexCollision)
    coll.calls = []
    async with DocumentDBBackend(coll, insert_first=insert_first) as store:
        with pytest.raises(BackendRejectedError) as info:
            await store.save(make_session(revision=1))
    assert isinstance(info.value.__cause__, DuplicateKeyError)


async def test_colliding_upsert_is_reported_as_duplicate_key(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    """What the server answers to ``replace_one(..., upsert=True)`` that collides on _id.

    notes/real-servers.md (B4) expected FerretDB v1 to wrap the collision as
    InternalError (code 1). FerretDB v1.24.2 on SQLite answers E11000 (DuplicateKeyError),
    as MongoDB does. The backend does not depend on either: it never upserts.
    """
    stored = make_session(revision=300)
    await collection.insert_one(to_doc(stored))
    late = to_doc(stored.model_copy(update={"revision": 100}))
    with pytest.raises(DuplicateKeyError) as info:
        await collection.replace_one(
            {"_id": late["_id"], "revision": {"$lt": Int64(100)}}, late, upsert=True
        )
    assert info.value.code == 11000
    raw = await collection.find_one({"_id": late["_id"]})
    assert raw is not None and raw["revision"] == 300


# -- values that look like operators -------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    ['{"$gt": ""}', "$where", "$set", '{"$ne": null}', "$regex", "this.revision > 0"],
)
async def test_operator_looking_values_are_stored_verbatim(
    backend: DocumentDBBackend, collection: AsyncCollection[dict[str, Any]], hostile: str
) -> None:
    s = make_session(
        revision=5,
        student_id=hostile,
        assessment_id=hostile,
        metadata={"note": hostile, "where": "$where"},
        answers=(
            Answer(
                question_id=hostile,
                response=hostile,
                attachments=(Attachment(content_type=hostile, filename=hostile, data=b"x"),),
            ),
        ),
    )
    bystander = make_session(revision=5)
    await backend.save(bystander)
    await backend.save(s)
    await backend.save(s.model_copy(update={"revision": 6}))
    assert await backend.get(s.session_id) == StoredRecord.of(s.model_copy(update={"revision": 6}))
    assert await backend.get(bystander.session_id) == StoredRecord.of(bystander)

    raw = await collection.find_one({"_id": Binary.from_uuid(s.session_id)})
    assert raw is not None
    assert raw["student_id"] == hostile and raw["metadata"] == {"note": hostile, "where": "$where"}
    # A string equal to an operator document matches as a string, nothing else.
    assert await collection.count_documents({"student_id": hostile}) == 1


# -- tombstones and purge -----------------------------------------------------------------


async def test_opening_writes_nothing_and_creates_no_index(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    duck = DuckCollection(collection)
    async with DocumentDBBackend(duck) as store:
        assert await store.get(uuid.uuid4()) is None
    assert duck.calls == [("find_one", None)]
    names = [index["name"] async for index in await collection.list_indexes()]
    assert names in ([], ["_id_"])


async def test_a_tombstone_is_kept_until_purged(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    async with DocumentDBBackend(collection) as store:
        sid = uuid.uuid4()
        await store.delete(sid, 10)
        raw = await collection.find_one({"_id": Binary.from_uuid(sid)})
        assert raw is not None
        assert set(raw) == {"_id", "revision", "deleted"}  # no expiry of its own
        # purge removes only what is at most the given revision: a newer save survives.
        await store.purge(sid, 9)
        assert await store.get(sid) == StoredRecord.tombstone(sid, 10)
        await store.purge(sid, 10)
        assert await store.get(sid) is None
        newer = make_session(revision=20)
        await store.save(newer)
        await store.purge(newer.session_id, 15)
        assert await store.get(newer.session_id) == StoredRecord.of(newer)


# -- _id order is UUID order -------------------------------------------------------------


async def test_id_order_equals_uuid_int_order_with_many_keys(
    backend: DocumentDBBackend, collection: AsyncCollection[dict[str, Any]]
) -> None:
    edges = [0, 1, 255, 256, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**127 - 1, 2**127, 2**128 - 1]
    keys = {uuid.UUID(int=n) for n in edges} | {uuid.uuid4() for _ in range(150)}
    # Keys differing in a single byte at every position exercise byte-wise comparison.
    keys |= {uuid.UUID(int=1 << (8 * i)) for i in range(16)}
    base = make_session(revision=3)
    await collection.insert_many([to_doc(base.model_copy(update={"session_id": k})) for k in keys])
    expected = sorted(k.int for k in keys)

    raw = [
        uuid.UUID(bytes=bytes(d["_id"].bytes)).int
        async for d in collection.find({}, {"_id": 1}, sort=[("_id", 1)])
    ]
    assert raw == expected

    seen: list[int] = []
    for key_range in UUID_KEY_SPACE.split(7):
        cursor: str | None = None
        while True:
            page = await backend.scan(key_range, cursor=cursor, limit=37)
            assert all(r.session_id.int in key_range for r in page)
            seen.extend(r.session_id.int for r in page)
            if page.cursor is None:
                break
            cursor = page.cursor
    assert seen == expected

    # A single range over the top of the key space has no upper bound in the query.
    top = await backend.scan(KeyRange(2**128 - 2, 2**128), limit=5)
    assert [r.session_id.int for r in top] == [2**128 - 1] and top.cursor is None


async def test_scan_arguments_are_checked_before_io() -> None:
    store = DocumentDBBackend(FailingCollection())
    with pytest.raises(ConfigurationError):
        await store.scan(UUID_KEY_SPACE, limit=0)
    with pytest.raises(ConfigurationError):
        await store.scan(KeyRange(-(2**63), 2**63))  # a Cassandra token range
    with pytest.raises(ConfigurationError):
        await store.scan(UUID_KEY_SPACE, cursor="not-hex")
    await store.aclose()


# -- duck-typed and user-built collections ---------------------------------------------


async def test_a_duck_typed_collection_is_enough(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    duck = DuckCollection(collection)
    s = make_session(revision=9, attachment_bytes=1000)
    async with DocumentDBBackend(duck) as store:
        await store.save(s)
        await store.delete(uuid.uuid4(), 3)
        assert await store.get(s.session_id) == StoredRecord.of(s)
        page = await store.scan(UUID_KEY_SPACE)
        assert len(page.records) == 2
        await store.purge(s.session_id, s.revision)
        assert await store.get(s.session_id) is None
    assert repr(store).startswith("DocumentDBBackend(name='documentdb'")


async def test_a_collection_from_a_client_with_default_codec_options_round_trips() -> None:
    # A user's client without uuidRepresentation/tz_aware: the codec must not depend on them.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        MONGODB_URI, serverSelectionTimeoutMS=5_000
    )
    collection = client[TEST_DATABASE][fresh_collection_name()]
    try:
        s = make_session(revision=42, attachment_bytes=4096)
        async with DocumentDBBackend(collection) as store:
            assert not store.owns_client
            await store.save(s)
            await store.delete(uuid.uuid4(), 1)
            assert await store.get(s.session_id) == StoredRecord.of(s)
            assert {r.revision for r in await store.scan(UUID_KEY_SPACE)} == {42, 1}
        # Closing the backend did not close the user's client.
        assert await collection.count_documents({}) == 2
        raw = await collection.find_one({"deleted": False})
        assert raw is not None and isinstance(raw["_id"], Binary) and raw["_id"].subtype == 4
    finally:
        await collection.drop()
        await client.close()


async def test_closing_a_backend_keeps_a_shared_client_usable(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    async with DocumentDBBackend(collection) as first:
        await first.save(make_session(revision=1))
    async with DocumentDBBackend(collection) as second:
        assert len((await second.scan(UUID_KEY_SPACE)).records) == 1
    with pytest.raises(RepositoryClosedError):
        await first.get(uuid.uuid4())


async def test_unacknowledged_write_concern_is_refused(
    collection: AsyncCollection[dict[str, Any]],
) -> None:
    with pytest.raises(ConfigurationError):
        DocumentDBBackend(collection.with_options(write_concern=WriteConcern(w=0)))


# -- codec, as stored ------------------------------------------------------------------------


async def test_stored_layout(
    backend: DocumentDBBackend, collection: AsyncCollection[dict[str, Any]]
) -> None:
    s = make_session(revision=2**62 + 1, attachment_bytes=10)
    await backend.save(s)
    raw = await collection.with_options(
        codec_options=collection.codec_options.with_options(
            uuid_representation=UuidRepresentation.UNSPECIFIED
        )
    ).find_one({"_id": Binary.from_uuid(s.session_id)})
    assert raw is not None
    assert isinstance(raw["_id"], Binary) and raw["_id"].subtype == 4
    assert raw["_id"].as_uuid() == s.session_id
    assert isinstance(raw["revision"], Int64) and raw["revision"] == 2**62 + 1
    assert raw["deleted"] is False
    assert raw["status"] == "started"
    assert raw["started_at"] == T0 and raw["started_at"].tzinfo is not None
    assert raw["metadata"] == {"client": "ios", "locale": "fr-FR"}
    q1, q2 = raw["answers"]
    assert q1 == {"question_id": "q1", "response": "42", "attachments": [], "answered_at": T0}
    (att,) = q2["attachments"]
    assert isinstance(att["data"], bytes) and att["data"] == s.answers[1].attachments[0].data
    assert "answered_at" not in q2  # None is omitted
    assert from_doc(raw) == s


def test_codec_round_trips_optional_and_unicode_fields() -> None:
    s = make_session(
        revision=1,
        student_id="élève-✓",
        answers=(
            Answer(question_id="q", response="", answered_at=None),
            Answer(
                question_id="r",
                response="x" * 1000,
                attachments=(Attachment(content_type="image/png", data=b"\x00\xff" * 10),),
                answered_at=dt.datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC),
            ),
        ),
        metadata={},
    )
    assert from_doc(to_doc(s)) == s


# Strings the model accepts: no NUL, no lone surrogates (not UTF-8 encodable).
_chars = st.characters(codec="utf-8", exclude_characters="\x00")
_text = st.text(alphabet=_chars, min_size=1, max_size=12)
_instants = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)
_sessions = st.builds(
    StudentSession,
    session_id=st.uuids(),
    student_id=_text,
    assessment_id=_text,
    status=st.sampled_from(SessionStatus),
    started_at=_instants,
    updated_at=_instants,
    answers=st.lists(
        st.builds(
            Answer,
            question_id=_text,
            response=st.text(alphabet=_chars, max_size=30),
            attachments=st.lists(
                st.builds(
                    Attachment,
                    content_type=_text,
                    filename=st.none() | _text,
                    data=st.binary(max_size=64),
                ),
                max_size=2,
            ).map(tuple),
            answered_at=st.none() | _instants,
        ),
        max_size=3,
    ).map(tuple),
    metadata=st.dictionaries(
        _text.filter(lambda k: not k.startswith("$") and "." not in k), _text, max_size=3
    ),
    revision=st.integers(min_value=1, max_value=2**63 - 1),
)
_WIRE: CodecOptions[Mapping[str, Any]] = CodecOptions(
    tz_aware=True, tzinfo=dt.UTC, uuid_representation=UuidRepresentation.STANDARD
)


@settings(max_examples=100, deadline=None)
@given(_sessions)
def test_codec_round_trips_through_bson_for_any_valid_session(s: StudentSession) -> None:
    assert from_doc(bson.decode(bson.encode(to_doc(s)), codec_options=_WIRE)) == s


async def test_corrupt_stored_document_is_a_backend_error_without_values(
    backend: DocumentDBBackend, collection: AsyncCollection[dict[str, Any]]
) -> None:
    sid = uuid.uuid4()
    await collection.insert_one(
        {"_id": Binary.from_uuid(sid), "revision": 3, "deleted": False, "student_id": "secret-x"}
    )
    with pytest.raises(BackendError) as info:
        await backend.get(sid)
    assert type(info.value) is BackendError
    assert "secret-x" not in str(info.value) and str(sid) in str(info.value)


async def test_too_large_document_is_rejected(backend: DocumentDBBackend) -> None:
    # Bypasses the model's size check (ensure_session) on purpose: the store's own limit.
    s = make_session(revision=1, attachment_bytes=17 * 1024 * 1024)
    with pytest.raises(BackendRejectedError) as info:
        await backend.save(s)
    assert isinstance(info.value.__cause__, DocumentTooLarge | OperationFailure)


# -- validation before I/O --------------------------------------------------------------


async def test_invalid_input_is_refused_before_any_io() -> None:
    store = DocumentDBBackend(FailingCollection())
    with pytest.raises(InvalidSessionError):
        await store.save(make_session(revision=0))
    with pytest.raises(InvalidSessionError):
        await store.save(make_session(revision=1).model_copy(update={"status": "bogus"}))
    with pytest.raises(InvalidSessionError):
        await store.delete(uuid.uuid4(), 0)
    with pytest.raises(InvalidSessionError):
        await store.delete(uuid.uuid4(), 2**63)
    with pytest.raises(InvalidSessionError):
        await store.get("not-a-uuid")  # type: ignore[arg-type]
    await store.aclose()


# -- settings ------------------------------------------------------------------------------


def _settings(**overrides: Any) -> DocumentDBSettings:
    values: dict[str, Any] = {
        "uri": f"mongodb://app:{PASSWORD}@127.0.0.1:27017/?replicaSet=rs0",
        "database": "assessments",
    }
    values.update(overrides)
    return DocumentDBSettings(**values)


def test_settings_defaults_and_repr_hide_the_password() -> None:
    settings = _settings()
    assert settings.collection == "sessions"
    assert settings.retry_writes is False and settings.read_preference == "primary"
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in text
    with pytest.raises(Exception):  # noqa: B017, PT011 - frozen: pydantic's own error
        settings.database = "other"  # type: ignore[misc]


def test_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(tls=True, tls_ca_file=tmp_path / "global-bundle.pem")
    assert "tls_ca_file" in str(info.value) and PASSWORD not in str(info.value)
    ca = tmp_path / "global-bundle.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _settings(tls=True, tls_ca_file=ca).tls_ca_file == ca
    assert _settings(tls_ca_file=ca).uses_tls
    assert _settings().uses_tls and not _settings(tls=False).uses_tls


def test_tls_is_on_unless_tls_false_opts_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from sessionstore.backends import documentdb

    built: list[dict[str, Any]] = []

    def capture(uri: str, **options: Any) -> object:
        built.append(options)
        return object()

    monkeypatch.setattr(documentdb, "AsyncMongoClient", capture)
    defaults = _settings()
    assert defaults.tls is True
    documentdb._make_client(defaults)
    documentdb._make_client(_settings(tls=False))
    assert [options["tls"] for options in built] == [True, False]


@pytest.mark.parametrize(
    "query", ["tls=false", "ssl=false", "TLS=False", "replicaSet=rs0;ssl=false", "tls=%66alse"]
)
def test_a_uri_that_turns_tls_off_needs_the_opt_out(query: str) -> None:
    uri = f"mongodb://app:{PASSWORD}@127.0.0.1:27017/?{query}"
    with pytest.raises(ConfigurationError, match="turns TLS off") as info:
        _settings(uri=uri)
    message = str(info.value)
    assert PASSWORD not in message and "127.0.0.1" not in message and "tls=False" in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert _settings(uri=uri, tls=False).tls is False  # the explicit opt-out


def test_tls_false_contradicting_the_uri_or_a_ca_file_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "global-bundle.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigurationError, match="tls_ca_file"):
        _settings(tls=False, tls_ca_file=ca)
    with pytest.raises(ConfigurationError, match="turns TLS on") as info:
        _settings(uri=f"mongodb://app:{PASSWORD}@h/?ssl=true", tls=False)
    assert PASSWORD not in str(info.value)


async def test_default_settings_speak_tls_to_the_plaintext_test_server() -> None:
    # FerretDB here listens without TLS: with the defaults the client speaks TLS and
    # never gets a usable server (no fallback to plaintext); the same settings with the
    # opt-out connect.
    def settings(**tls: bool) -> DocumentDBSettings:
        return DocumentDBSettings(
            uri=MONGODB_URI,
            database=TEST_DATABASE,
            collection=fresh_collection_name(),
            server_selection_timeout_ms=1_000,
            **tls,
        )

    store = DocumentDBBackend.connect(settings())
    try:
        with pytest.raises(BackendUnavailableError, match="no server available"):
            await store.get(uuid.uuid4())
    finally:
        await store.aclose()
    plaintext = DocumentDBBackend.connect(settings(tls=False))
    async with plaintext:
        assert await plaintext.get(uuid.uuid4()) is None


async def test_a_ca_file_that_is_not_pem_fails_the_open(tmp_path: Path) -> None:
    ca = tmp_path / "global-bundle.pem"
    ca.write_text("not a certificate\n")
    store = DocumentDBBackend.connect(_settings(tls_ca_file=ca))
    with pytest.raises(ConfigurationError) as info:
        await store.get(uuid.uuid4())
    assert PASSWORD not in str(info.value) and info.value.__context__ is None
    await store.aclose()


async def test_an_invalid_uri_fails_the_open_without_the_password() -> None:
    store = DocumentDBBackend.connect(_settings(uri=f"mongodb://app:{PASSWORD}@/?replicaSet="))
    with pytest.raises(ConfigurationError) as info:
        await store.get(uuid.uuid4())
    assert PASSWORD not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    await store.aclose()


@pytest.mark.parametrize(
    "overrides",
    [
        {"uri": f"http://app:{PASSWORD}@host/"},
        {"database": "bad.name"},
        {"collection": "system.sessions"},
        {"read_preference": "secondary_preferred"},
        {"server_selection_timeout_ms": 0},
        {"unknown_option": True},
        {"uri": 12345},
    ],
)
def test_invalid_settings_raise_configuration_error_without_the_password(
    overrides: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings(**overrides)
    assert PASSWORD not in str(info.value)
    # pydantic's own error quotes the input: it must not even be kept as the context.
    assert info.value.__cause__ is None and info.value.__context__ is None


async def test_connect_owns_its_client_with_the_documented_options() -> None:
    settings = DocumentDBSettings(
        uri=MONGODB_URI,
        database=TEST_DATABASE,
        collection=fresh_collection_name(),
        server_selection_timeout_ms=5_000,
        tls=False,  # the loopback test server has no TLS listener
    )
    store = DocumentDBBackend.connect(settings)
    assert store.owns_client and store._client is None  # nothing connects before use
    try:
        s = make_session(revision=1)
        await store.save(s)
        assert await store.get(s.session_id) == StoredRecord.of(s)
        client = store._client
        assert client is not None
        options = client.options
        assert options.codec_options.uuid_representation == UuidRepresentation.STANDARD
        assert options.codec_options.tz_aware and options.codec_options.tzinfo == dt.UTC
        assert options.retry_writes is False
        await client[TEST_DATABASE].drop_collection(settings.collection)
    finally:
        await store.aclose()
    assert store._client is None
    with pytest.raises(RepositoryClosedError):
        await store.get(uuid.uuid4())


async def test_concurrent_first_calls_open_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from sessionstore.backends import documentdb

    made: list[object] = []
    real_make_client = documentdb._make_client

    def counting_make_client(settings: DocumentDBSettings) -> Any:
        made.append(settings)
        return real_make_client(settings)

    monkeypatch.setattr(documentdb, "_make_client", counting_make_client)
    settings = DocumentDBSettings(
        uri=MONGODB_URI, database=TEST_DATABASE, collection=fresh_collection_name(), tls=False
    )
    store = DocumentDBBackend.connect(settings)  # opening awaits the index creation
    try:
        assert await asyncio.gather(*(store.get(uuid.uuid4()) for _ in range(5))) == [None] * 5
        assert len(made) == 1
    finally:
        await store.aclose()
        async with fresh_collection() as coll:  # the shared client, to drop the collection
            await coll.database.drop_collection(settings.collection)


# -- errors --------------------------------------------------------------------------------


@pytest.fixture
def _collect_sockets_leaked_by_pymongo() -> Iterator[None]:
    """Collect, inside the test, the sockets PyMongo 4.20 leaks when closed mid-connect.

    Closing a client cancels its monitor while it may be connecting to the dead port;
    PyMongo then drops the socket without closing it (PYTHON-5867, fixed upstream after
    4.20). The socket sits in a reference cycle, so without this its ResourceWarning
    surfaces in whichever later test the garbage collector happens to run.
    """
    yield
    gc.collect()  # while the test's "ignore::ResourceWarning" filter still applies


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.usefixtures("_collect_sockets_leaked_by_pymongo")
async def test_unreachable_server_is_backend_unavailable() -> None:
    settings = _settings(
        uri=f"mongodb://app:{PASSWORD}@127.0.0.1:{_closed_port()}/?directConnection=true",
        server_selection_timeout_ms=200,
        connect_timeout_ms=200,
    )
    store = DocumentDBBackend.connect(settings)
    with pytest.raises(BackendUnavailableError) as info:
        await store.get(uuid.uuid4())
    assert PASSWORD not in str(info.value) and info.value.store == "documentdb"
    assert isinstance(info.value.__cause__, ServerSelectionTimeoutError)
    await store.aclose()
    assert store._client is None  # closing closed the client it owned


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.usefixtures("_collect_sockets_leaked_by_pymongo")
async def test_unreachable_server_with_a_user_collection() -> None:
    client = new_client(f"mongodb://127.0.0.1:{_closed_port()}/", serverSelectionTimeoutMS=200)
    try:
        store = DocumentDBBackend(client["db"]["sessions"], name="docdb")
        with pytest.raises(BackendUnavailableError) as info:
            await store.save(make_session(revision=1))
        assert str(info.value).startswith("[docdb] save:")
        await store.aclose()
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ServerSelectionTimeoutError(f"h:1: refused {PASSWORD}"), BackendUnavailableError),
        (AutoReconnect("connection reset"), BackendUnavailableError),
        (ConnectionFailure("refused"), BackendUnavailableError),
        (WaitQueueTimeoutError("pool exhausted"), BackendUnavailableError),
        (NetworkTimeout("timed out"), BackendTimeoutError),
        (ExecutionTimeout("operation exceeded time limit", 50), BackendTimeoutError),
        (WTimeoutError("waiting for replication timed out", 64), BackendTimeoutError),
        (OperationFailure("exceeded time limit", 262), BackendTimeoutError),
        (OperationFailure("not primary", 10107), BackendUnavailableError),
        (OperationFailure("Authentication failed.", 18), BackendRejectedError),
        (OperationFailure("bad value {student: 'secret-x'}", 2), BackendRejectedError),
        (DuplicateKeyError("E11000 dup key: { student: 'secret-x' }", 11000), BackendRejectedError),
        (DocumentTooLarge("too large"), BackendRejectedError),
        (InvalidDocument("cannot encode object: 'secret-x'"), BackendRejectedError),
        (PyMongoError("something else secret-x"), BackendError),
    ],
)
def test_error_mapping(exc: BaseException, expected: type[BackendError]) -> None:
    mapped = map_pymongo_error(exc, store="documentdb", operation="save", secrets=(PASSWORD,))
    assert type(mapped) is expected
    assert "secret-x" not in str(mapped) and PASSWORD not in str(mapped)
    assert str(mapped).startswith("[documentdb] save:")
