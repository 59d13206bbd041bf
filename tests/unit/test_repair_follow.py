"""The continuous repair worker (``follow``, ``repair --follow``) and the checks made
before any SQS call (SqsRepairQueue's settings, the Lambda handler's environment).

The SQS queue itself, and the handler, run against the real server in tests/real/.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstore import (
    ConfigurationError,
    InMemoryBackend,
    InMemoryRepairQueue,
    RepairWorker,
    SqliteRepairQueue,
    SqsRepairQueue,
    StudentSession,
    WriteResult,
)
from sessionstore.cli import jobs as cli_jobs
from sessionstore.cli.main import main
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store
from sessionstore.repair import handler
from sessionstore.revision import wall_clock_us
from sessionstore.testing import FaultInjectingBackend
from tests.helpers import make_session


async def _seed(store: InMemoryBackend, n: int) -> list[uuid.UUID]:
    """``n`` sessions saved a moment ago (recent: the worker copies them)."""
    await store.__aenter__()
    sessions = [make_session(revision=wall_clock_us() + i) for i in range(n)]
    for s in sessions:
        await store.save(s)
    return [s.session_id for s in sessions]


# -- RepairWorker.follow ------------------------------------------------------------


async def test_follow_repairs_sessions_queued_while_it_runs_until_stopped() -> None:
    cassandra, documentdb = InMemoryBackend(name="c"), InMemoryBackend(name="d")
    await documentdb.__aenter__()
    queue = InMemoryRepairQueue()
    worker = RepairWorker(cassandra=cassandra, documentdb=documentdb, queue=queue)
    stop = asyncio.Event()
    batches: list[int] = []
    following = asyncio.create_task(
        worker.follow(stop, poll_seconds=0.2, on_batch=lambda r: batches.append(r.processed))
    )
    ids = await _seed(cassandra, 3)
    for sid in ids:  # queued after the worker started waiting
        await queue.enqueue(sid, "secondary_write_failed")
    for _ in range(100):
        if len(documentdb.records()) == 3:
            break
        await asyncio.sleep(0.05)
    stop.set()
    report = await asyncio.wait_for(following, 5)
    assert report.copied == 3
    assert sum(batches) == 3
    assert documentdb.records() == cassandra.records()
    assert queue.pending() == set()


async def test_follow_stops_by_itself_when_a_session_gives_up() -> None:
    cassandra = InMemoryBackend(name="c")
    documentdb = FaultInjectingBackend(InMemoryBackend(name="d"))
    documentdb.go_down(operation="save")
    queue = InMemoryRepairQueue()
    [sid] = await _seed(cassandra, 1)
    await queue.enqueue(sid, "secondary_write_failed")
    worker = RepairWorker(
        cassandra=cassandra,
        documentdb=documentdb,
        queue=queue,
        max_attempts=3,
        retry_delay_seconds=0.01,
    )
    report = await asyncio.wait_for(worker.follow(asyncio.Event(), poll_seconds=0.2), 10)
    assert (report.failed, report.gave_up) == (2, 1)
    [letter] = worker.dead_lettered()
    assert (letter.session_id, letter.reason) == (sid, "gave_up:BackendUnavailableError")
    assert queue.dead() == {sid: "gave_up:BackendUnavailableError"}


async def test_follow_needs_a_positive_poll() -> None:
    worker = RepairWorker(
        cassandra=InMemoryBackend(), documentdb=InMemoryBackend(), queue=InMemoryRepairQueue()
    )
    with pytest.raises(ConfigurationError, match="poll_seconds"):
        await worker.follow(asyncio.Event(), poll_seconds=0)


# -- sessionstore repair --follow ----------------------------------------------------


class _Store(FaultInjectingBackend):
    """A store whose data outlives the command; ``after_save`` runs after each save."""

    after_save: Callable[[int], None] = staticmethod(lambda saves: None)  # type: ignore[assignment]
    saves = 0

    async def _close(self) -> None:
        return None

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        result = await super().save(session, expected_revision=expected_revision)
        self.saves += 1
        self.after_save(self.saves)
        return result


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> dict[Store, _Store]:
    data = {store: _Store(InMemoryBackend(name=store.value)) for store in Store}

    def factory(settings: ConnectionSettings, store: Store, **_: Any) -> _Store:
        return data[store]

    monkeypatch.setattr(cli_jobs, "make_backend", factory)
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_KEYSPACE", "exams")
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", "mongodb://docdb:27017/")
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    return data


def _queued(path: Path, ids: list[uuid.UUID]) -> None:
    async def go() -> None:
        async with SqliteRepairQueue(path) as queue:
            for sid in ids:
                await queue.enqueue(sid, "secondary_write_failed")

    asyncio.run(go())


def test_repair_follow_finishes_the_tasks_in_hand_on_sigterm_and_exits_0(
    stores: dict[Store, _Store], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cassandra, documentdb = stores[Store.CASSANDRA], stores[Store.DOCUMENTDB]
    ids = asyncio.run(_seed(cassandra.inner, 5))
    path = tmp_path / "repairs.db"
    _queued(path, ids)

    def sigterm_on_the_first_save(saves: int) -> None:
        if saves == 1:
            signal.raise_signal(signal.SIGTERM)

    documentdb.after_save = sigterm_on_the_first_save
    argv = ["repair", "--queue", str(path), "--follow", "--poll-seconds", "0.2", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    # The signal came during the first save: the batch in hand was finished.
    assert (report["copied"], report["result"]) == (5, "STOPPED")
    assert documentdb.inner.records() == cassandra.inner.records()
    assert asyncio.run(_depth(path)) == 0


def test_repair_follow_exits_1_listing_a_session_that_gave_up(
    stores: dict[Store, _Store], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [sid] = asyncio.run(_seed(stores[Store.CASSANDRA].inner, 1))
    path = tmp_path / "repairs.db"
    _queued(path, [sid])
    stores[Store.DOCUMENTDB].go_down(operation="save")
    argv = ["repair", "--queue", str(path), "--follow", "--poll-seconds", "0.2"]
    assert main([*argv, "--max-attempts", "2", "--retry-delay", "0.01"]) == 1
    out = capsys.readouterr().out
    assert f"dead letter {sid}  gave_up:BackendUnavailableError" in out
    assert "GAVE UP" in out


def test_repair_follow_refuses_one_off_flags(tmp_path: Path) -> None:
    path = tmp_path / "repairs.db"
    _queued(path, [])
    for extra in (["--wait", "5"], ["--max-rounds", "1"], ["--dead-letters"]):
        assert main(["repair", "--queue", str(path), "--follow", *extra]) == 2


async def _depth(path: Path) -> int:
    async with SqliteRepairQueue(path) as queue:
        return await queue.depth()


# -- checks made before any SQS call -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("repairs", "queue_url"),
        ("ftp://sqs.eu-west-1.amazonaws.com/123456789012/repairs", "queue_url"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/repairs.fifo", "standard"),
        ("http://127.0.0.1:9324/000000000000/repairs", "region"),
    ],
)
def test_sqs_queue_settings_are_checked_before_any_call(
    monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match=message):
        SqsRepairQueue(url)


def test_an_aws_queue_url_names_its_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    # Nothing connects: the region comes from the URL.
    SqsRepairQueue("https://sqs.eu-west-1.amazonaws.com/123456789012/repairs")


def test_repair_command_checks_an_sqs_url_before_any_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert main(["repair", "--queue", "http://127.0.0.1:1/000000000000/q", "--follow"]) == 2
    assert "region" in capsys.readouterr().err


def test_the_handler_names_a_missing_or_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONSTORE_REPAIR_QUEUE", raising=False)
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_REPAIR_QUEUE"):
        handler.handler({"Records": []})
    monkeypatch.setenv("SESSIONSTORE_REPAIR_QUEUE", "https://sqs.eu-west-1.amazonaws.com/1/q")
    monkeypatch.setenv("SESSIONSTORE_REPAIR_MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_REPAIR_MAX_ATTEMPTS") as info:
        handler.handler({"Records": []})
    assert "zero" not in str(info.value)
