"""The queue worker: one message at a time, SQS partial batch responses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sessionstore import ConfigurationError, InMemoryBackend, SessionBackend
from sessionstore.jobs import BackfillJob, VerifyJob, handler
from sessionstore.phases import Store
from tests.helpers import make_session


class _Kept(InMemoryBackend):
    """Keeps its data when closed, and counts how often it was opened and closed."""

    opened = 0
    closed = 0

    async def _open(self) -> None:
        self.opened += 1
        await super()._open()

    async def _close(self) -> None:
        self.closed += 1


class _Stores(dict[Store, _Kept]):
    """The two fake stores, and how many times the handler built a set of stores."""

    built = 0


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Stores]:
    data = _Stores({s: _Kept(name=s.value) for s in Store})

    @contextlib.asynccontextmanager
    async def open_fakes(settings: Any = None) -> AsyncIterator[dict[Store, SessionBackend]]:
        yield dict(data)

    def build_fakes(settings: Any = None) -> dict[Store, SessionBackend]:
        data.built += 1
        return dict(data)

    monkeypatch.setattr(handler, "open_stores", open_fakes)
    monkeypatch.setattr(handler, "build_stores", build_fakes)
    try:
        yield data
    finally:
        handler.close_warm_stores()


async def _seed(store: InMemoryBackend, n: int) -> None:
    for i in range(n):
        await store.save(make_session(revision=10 + i))


async def test_run_work_unit_copies_one_unit(stores: _Stores) -> None:
    c, d = stores[Store.CASSANDRA], stores[Store.DOCUMENTDB]
    await _seed(c, 30)
    units = BackfillJob(c, d, name="bf").plan(parts=3)
    total = 0
    for unit in units:
        result = await handler.run_work_unit(unit, stores)
        total += result.counts["sessions"]
        # Delivered twice (at-least-once): nothing changes the second time.
        await handler.run_work_unit(unit, stores)
    assert total == 30
    assert d.records() == c.records()


def test_sqs_handler_reports_only_failed_messages(
    stores: _Stores,
) -> None:
    import asyncio

    c, d = stores[Store.CASSANDRA], stores[Store.DOCUMENTDB]
    asyncio.run(_seed(d, 12))
    units = BackfillJob(d, c, name="reverse").plan(parts=2)
    verify = VerifyJob(d, c, name="check").plan(parts=1)
    event = {
        "Records": [
            {"messageId": "m1", "body": units[0].to_json()},
            {"messageId": "m2", "body": "{not json"},
            {"messageId": "m3", "body": units[1].to_json()},
            {"messageId": "m4", "body": verify[0].to_json()},
        ]
    }
    assert handler.sqs_handler(event, None) == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert c.records() == d.records()


def test_warm_invocations_reuse_the_containers_stores(stores: _Stores) -> None:
    import asyncio

    c, d = stores[Store.CASSANDRA], stores[Store.DOCUMENTDB]
    asyncio.run(_seed(c, 10))
    first, second = BackfillJob(c, d, name="bf").plan(parts=2)

    for unit in (first, second):  # two invocations of one container
        event = {"Records": [{"messageId": unit.unit_id, "body": unit.to_json()}]}
        assert handler.sqs_handler(event, None) == {"batchItemFailures": []}

    assert stores.built == 1
    assert (c.opened, d.opened) == (1, 1)
    assert (c.closed, d.closed) == (0, 0)
    assert d.records() == c.records()
    handler.close_warm_stores()
    assert (c.closed, d.closed) == (1, 1)


def test_run_message_rejects_malformed_messages_before_any_store(
    stores: _Stores,
) -> None:
    with pytest.raises(ConfigurationError, match="invalid work unit"):
        handler.run_message('{"job": "x"}')


async def test_the_workers_documentdb_store_inserts_first() -> None:
    # Nothing connects until a store is used: this only builds and closes them.
    from sessionstore.backends.cassandra import CassandraBackend
    from sessionstore.backends.documentdb import DocumentDBBackend
    from sessionstore.jobs.settings import ConnectionSettings

    settings = ConnectionSettings(
        cassandra_keyspace="exams",
        mongodb_uri="mongodb://app:pw@db:27017/",
        documentdb_database="assessments",
    )
    async with handler.open_stores(settings) as stores:
        documentdb = stores[Store.DOCUMENTDB]
        assert isinstance(documentdb, DocumentDBBackend)
        assert documentdb.insert_first
        assert isinstance(stores[Store.CASSANDRA], CassandraBackend)
