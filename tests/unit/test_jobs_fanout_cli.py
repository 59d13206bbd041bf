"""``backfill|verify --enqueue`` and ``sessionstore worker`` on in-memory stores and queue:
the plan goes to the queue, workers drain it, flags are checked before anything is sent,
and the exit codes follow docs/cli.md."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sessionstore import InMemoryBackend
from sessionstore.cli import enqueue as cli_enqueue
from sessionstore.cli import jobs as cli_jobs
from sessionstore.cli import worker as cli_worker
from sessionstore.cli.main import main
from sessionstore.jobs import WorkUnit
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.jobs.unit_queue import InMemoryUnitQueue
from sessionstore.phases import Store
from sessionstore.testing import FaultInjectingBackend
from tests.helpers import make_session

URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/units"


class _Kept(FaultInjectingBackend):
    """A store whose data outlives one command."""

    async def _close(self) -> None:
        return None


class Fleet:
    """In-memory stores and one in-memory queue, shared by every command of a test."""

    def __init__(self) -> None:
        self.data = {s: InMemoryBackend(name=s.value) for s in Store}
        self.queue = InMemoryUnitQueue(visibility_timeout=30)
        self.built: list[Store] = []
        self.urls: list[str] = []
        self.down: set[Store] = set()

    def backend(self, settings: ConnectionSettings, store: Store, **_: Any) -> _Kept:
        self.built.append(store)
        kept = _Kept(self.data[store])
        if store in self.down:
            kept.go_down()
        return kept

    def from_url(self, url: str, **_: Any) -> InMemoryUnitQueue:
        self.urls.append(url)
        return self.queue

    def seed(self, n: int) -> None:
        """Sessions in the DocumentDB fake: the in-memory key space is DocumentDB's (UUIDs),
        so the plan --enqueue makes without a store fits it."""

        async def go() -> None:
            for i in range(n):
                await self.data[Store.DOCUMENTDB].save(make_session(revision=10 + i))

        asyncio.run(go())


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Fleet:
    made = Fleet()
    monkeypatch.setattr(cli_jobs, "make_backend", made.backend)
    for module in (cli_enqueue, cli_worker):
        monkeypatch.setattr(module.SqsUnitQueue, "from_url", made.from_url)
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_KEYSPACE", "exams")
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", "mongodb://db:27017/")
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    return made


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


WORKER = ["worker", URL, "--until-drained", "--wait-seconds", "1", "--json"]


def test_enqueue_then_two_workers_copy_everything(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.seed(50)
    argv = ["backfill", "--source", "documentdb", "--parts", "8", "--enqueue", URL, "--json"]
    assert main(argv) == 0
    sent = _json(capsys)
    assert (sent["units"], sent["queue"], sent["sessions"]) == (8, URL, None)
    assert sent["job"].startswith("backfill-documentdb-to-cassandra-parts-8-")
    assert fleet.built == []  # the planner touches no store

    assert main([*WORKER, "--concurrency", "3"]) == 0
    first = _json(capsys)
    assert main(WORKER) == 0  # a second worker finds the queue drained
    second = _json(capsys)
    assert first["units"]["done"] + second["units"]["done"] == 8
    assert first["sessions"] + second["sessions"] == 50
    assert first["jobs"] == [sent["job"]]
    assert fleet.data[Store.CASSANDRA].records() == fleet.data[Store.DOCUMENTDB].records()


def test_id_batches_of_twenty_by_default_with_enqueue(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    fleet.seed(45)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(sid) for sid in fleet.data[Store.DOCUMENTDB].records()))
    assert main(["backfill", "--source", "documentdb", "--ids", str(ids), "--enqueue", URL]) == 0
    assert "enqueued 3 units" in capsys.readouterr().out
    units = [
        WorkUnit.from_json(m.body) for m in asyncio.run(fleet.queue.receive(10, wait_seconds=0))
    ]
    assert sorted(len(u.ids) for u in units) == [5, 20, 20]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--enqueue", URL, "--print-units"], "drop --print-units"),
        (["--enqueue", URL, "--resume"], "drop --resume"),
        (["--enqueue", URL, "--job", "j", "--restart"], "drop --restart"),
        (["--sqs-endpoint", "http://127.0.0.1:9324"], "goes with --enqueue"),
        (["--enqueue", URL, "--shard", "0/2"], "--shard needs --job"),
    ],
)
def test_enqueue_flag_clashes_exit_two_before_anything_is_sent(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["verify", "--source", "cassandra", *extra]) == 2
    assert message in capsys.readouterr().err
    assert fleet.urls == [] and fleet.built == []


def test_a_malformed_queue_url_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "--source", "cassandra", "--enqueue", "sqs://units"]) == 2
    assert "queue URL" in capsys.readouterr().err


@pytest.mark.parametrize("credentials", [True, False])
def test_an_unreachable_or_refusing_queue_exits_three(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], credentials: bool
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Nothing listens on port 9: connection refused.
    argv = ["backfill", "--source", "cassandra", "--enqueue", "http://127.0.0.1:9/000/units"]
    assert main(argv) == 3
    expected = "cannot reach the queue" if credentials else "(no AWS credentials)"
    assert expected in capsys.readouterr().err


def test_worker_exit_codes(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.seed(10)
    assert main(["backfill", "--source", "documentdb", "--parts", "2", "--enqueue", URL]) == 0
    asyncio.run(fleet.queue.put_raw("not a unit"))
    capsys.readouterr()
    fleet.queue.max_receive_count = 1
    # A malformed message fails (and, after max receives, is dead-lettered): exit 1.
    assert main([*WORKER, "--retry-delay", "0"]) == 1
    report = _json(capsys)
    assert (report["units"]["done"], report["units"]["failed"]) == (2, 1)
    assert fleet.queue.dead_letters == ["not a unit"]

    fleet.down.add(Store.CASSANDRA)  # a store that cannot be reached: exit 3, no receive
    asyncio.run(fleet.queue.put_raw("waiting"))
    assert main(WORKER) == 3
    assert "cannot reach the store cassandra" in capsys.readouterr().err
    assert asyncio.run(fleet.queue.counts()).visible == 1
