"""``sessionstore check`` on in-memory stores: the report, exit codes, read-only probes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessionstore import (
    ConfigurationError,
    InMemoryBackend,
    Phase,
    RecordHead,
    SqliteRepairQueue,
)
from sessionstore.cli import jobs as cli_jobs
from sessionstore.cli import phase as cli_phase
from sessionstore.cli.main import main
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store
from sessionstore.testing import Call, FaultInjectingBackend, launchdarkly_test_client
from tests.helpers import make_session

SECRET = "hunter2-s3cret"
CONTEXT_SECRET = "fleet-wide-context-secret"


class _NoTable(InMemoryBackend):
    """A store whose table is missing: the backend reports a configuration error."""

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        raise ConfigurationError("the keyspace or table is missing")


class _Kept(FaultInjectingBackend):
    """A store whose data outlives one command (closing it does not close the data)."""

    async def _close(self) -> None:
        return None


class Fakes:
    def __init__(self) -> None:
        self.data: dict[Store, InMemoryBackend] = {s: InMemoryBackend(name=s.value) for s in Store}
        self.calls: list[Call] = []
        self.frozen: set[Store] = set()
        self.down: set[Store] = set()

    def factory(
        self, settings: ConnectionSettings, store: Store, *, insert_first: bool = False
    ) -> FaultInjectingBackend:
        backend = _Kept(self.data[store], calls=self.calls)
        if store in self.frozen:
            backend.freeze()
        if store in self.down:
            backend.go_down()
        return backend


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fakes:
    f = Fakes()
    monkeypatch.setattr(cli_jobs, "make_backend", f.factory)
    monkeypatch.chdir(tmp_path)
    for name in ("LAUNCHDARKLY_SDK_KEY", "SESSIONSTORE_REPAIR_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_KEYSPACE", "exams")
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", f"mongodb://app:{SECRET}@docdb:27017/")
    return f


def _queue(path: Path, sessions: int) -> Path:
    async def fill() -> None:
        async with SqliteRepairQueue(path) as queue:
            for _ in range(sessions):
                await queue.enqueue(uuid.uuid4(), "secondary_write_failed")

    asyncio.run(fill())
    return path


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_healthy_pair_is_probed_read_only(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    queue = _queue(tmp_path / "repairs.db", 3)
    before = queue.read_bytes()
    assert main(["check", "--queue", str(queue), "--json"]) == 0
    data = _json(capsys)
    assert data["healthy"] is True and data["result"] == "HEALTHY"
    assert {s: h["reachable"] for s, h in data["stores"].items()} == {
        "cassandra": True,
        "documentdb": True,
    }
    assert data["repair_queue"] == {"ready": 3, "waiting": 0, "dead": 0}
    assert data["phase"] is None and "not configured" in data["phase_note"]
    # One read of one key per store; nothing written anywhere.
    assert sorted((c.store, c.operation) for c in fakes.calls) == [
        ("cassandra", "head"),
        ("documentdb", "head"),
    ]
    assert fakes.data[Store.CASSANDRA].records() == {} == fakes.data[Store.DOCUMENTDB].records()
    assert queue.read_bytes() == before

    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "repair queue  not checked" in out and out.rstrip().endswith("result: HEALTHY")
    assert SECRET not in out and "app:***@docdb" in out


def test_a_frozen_store_is_reported_unreachable_within_the_timeout(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.frozen.add(Store.DOCUMENTDB)
    start = time.monotonic()
    assert main(["check", "--timeout", "0.2"]) == 3
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert "documentdb    UNREACHABLE (DeadlineExceeded" in out
    assert "cassandra     answers in" in out
    assert out.rstrip().endswith("result: UNREACHABLE")


def test_a_store_down_or_an_unreadable_queue_is_exit_3(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fakes.down.add(Store.CASSANDRA)
    assert main(["check", "--json"]) == 3
    data = _json(capsys)
    assert data["stores"]["cassandra"]["error"] == "BackendUnavailableError"
    assert data["healthy"] is False

    fakes.down.clear()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    assert main(["check", "--queue", str(corrupt), "--json"]) == 3
    data = _json(capsys)
    assert data["repair_queue"] is None and data["repair_queue_error"] == "RepairQueueError"


def test_bad_input_is_exit_2(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mistyped queue file is not an empty queue; nothing is probed.
    assert main(["check", "--queue", "no-such-repairs.db"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert fakes.calls == []
    assert not Path("no-such-repairs.db").exists()

    # A missing table is the settings' fault, not the store's.
    fakes.data[Store.CASSANDRA] = _NoTable(name="cassandra")
    assert main(["check"]) == 2
    assert "cassandra     BAD SETTINGS (ConfigurationError" in capsys.readouterr().out

    # A missing setting: found when the stores are built, before either is probed.
    def validating(settings: ConnectionSettings, store: Store, **options: Any) -> Any:
        if store is Store.CASSANDRA:
            settings.cassandra_settings()
        else:
            settings.documentdb_settings()
        return fakes.factory(settings, store, **options)

    fakes.data[Store.CASSANDRA] = InMemoryBackend(name="cassandra")
    fakes.calls.clear()
    monkeypatch.delenv("SESSIONSTORE_DOCUMENTDB_DATABASE")
    monkeypatch.setattr(cli_jobs, "make_backend", validating)
    assert main(["check"]) == 2
    assert "SESSIONSTORE_DOCUMENTDB_DATABASE" in capsys.readouterr().err
    assert fakes.calls == []


def test_the_phase_comes_from_launchdarkly_when_configured(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = launchdarkly_test_client("session-store-migration", Phase.DOCDB_PRIMARY)
    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: client)
    monkeypatch.setenv("LAUNCHDARKLY_SDK_KEY", SECRET)
    # The service's context keying is required, and checked before anything is probed.
    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", raising=False)
    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS", raising=False)
    assert main(["check"]) == 2
    assert fakes.calls == []
    capsys.readouterr()

    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", CONTEXT_SECRET)
    assert main(["check", "--json"]) == 0
    data = _json(capsys)
    assert (data["phase"], data["phase_fallback"], data["phase_note"]) == ("live", False, None)

    other, _ = launchdarkly_test_client("another-flag", Phase.SHADOW)
    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: other)
    assert main(["check", "--default-phase", "DUAL_WRITE"]) == 0
    out = capsys.readouterr().out
    assert "DUAL_WRITE (dualwrite)" in out and "NOT EVALUATED" in out
    assert SECRET not in out and CONTEXT_SECRET not in out

    class Offline:
        def is_initialized(self) -> bool:
            return False

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: Offline())
    assert main(["check", "--json"]) == 3
    data = _json(capsys)
    assert data["phase"] is None and "did not initialize" in data["phase_note"]
    assert data["healthy"] is True  # the stores are; LaunchDarkly is not


def test_check_writes_nothing_even_with_sessions_stored(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        for store in Store:
            await fakes.data[store].save(make_session(revision=5))

    asyncio.run(seed())
    before = {s: dict(fakes.data[s].records()) for s in Store}
    assert main(["check", "--json"]) == 0
    assert {s: fakes.data[s].records() for s in Store} == before
    assert {c.operation for c in fakes.calls} == {"head"}
