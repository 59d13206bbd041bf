"""``sessionstore purge`` on in-memory stores: what it purges, exit codes, bad input,
dry runs, the retired-store mode, and resuming after a store failed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessionstore import InMemoryBackend, StoredRecord
from sessionstore.cli import jobs as cli_jobs
from sessionstore.cli.main import main
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store
from sessionstore.revision import wall_clock_us
from sessionstore.testing import Call, FaultInjectingBackend
from tests.helpers import make_session

SECRET = "hunter2-s3cret"
DAY_US = dt.timedelta(days=1) // dt.timedelta(microseconds=1)


class _Kept(FaultInjectingBackend):
    """A store whose data outlives one command (closing it does not close the data)."""

    async def _close(self) -> None:
        return None


class Fakes:
    """In-memory stores behind the command, and what the command did with them."""

    def __init__(self) -> None:
        self.data = {s: InMemoryBackend(name=s.value) for s in Store}
        self.built: list[Store] = []
        self.calls: list[Call] = []
        #: Per store: the operations that fail in the next command (None: every call).
        self.down: dict[Store, tuple[str, ...] | None] = {}

    def factory(
        self, settings: ConnectionSettings, store: Store, *, insert_first: bool = False
    ) -> _Kept:
        self.built.append(store)
        backend = _Kept(self.data[store], calls=self.calls)
        if store in self.down:
            for operation in self.down[store] or (None,):
                backend.go_down(operation=operation)
        return backend

    def put(self, store: Store, record: StoredRecord) -> None:
        async def go() -> None:
            backend = self.data[store]
            await backend.__aenter__()
            if record.session is None:
                await backend.delete(record.session_id, record.revision)
            else:
                await backend.save(record.session)

        asyncio.run(go())

    def records(self, store: Store) -> dict[uuid.UUID, StoredRecord]:
        return self.data[store].records()

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.operation in ("save", "delete", "purge")]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fakes:
    f = Fakes()
    monkeypatch.setattr(cli_jobs, "make_backend", f.factory)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SESSIONSTORE_CASSANDRA_KEYSPACE", raising=False)
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", f"mongodb://app:{SECRET}@docdb:27017/")
    return f


def ago(days: float) -> int:
    return wall_clock_us() - int(days * DAY_US)


def tombstone(days: float, sid: uuid.UUID | None = None) -> StoredRecord:
    return StoredRecord.tombstone(sid or uuid.uuid4(), ago(days))


def live(days: float, sid: uuid.UUID | None = None) -> StoredRecord:
    session = make_session(revision=ago(days), metadata={"note": SECRET})
    return StoredRecord.of(session.model_copy(update={"session_id": sid or session.session_id}))


def seed(fakes: Fakes) -> dict[str, uuid.UUID]:
    """A tombstone of each fate, in both stores' scans; returns their ids."""
    old_both, young = tombstone(40), tombstone(5)
    for store in Store:
        fakes.put(store, old_both)
        fakes.put(store, young)
    stale = tombstone(40)  # Cassandra's deletion; DocumentDB kept an older live copy
    fakes.put(Store.CASSANDRA, stale)
    fakes.put(Store.DOCUMENTDB, live(45, stale.session_id))
    recreated = tombstone(40)  # deleted in DocumentDB, saved again in Cassandra
    fakes.put(Store.DOCUMENTDB, recreated)
    fakes.put(Store.CASSANDRA, live(1, recreated.session_id))
    only_docdb = tombstone(35)
    fakes.put(Store.DOCUMENTDB, only_docdb)
    return {
        "old_both": old_both.session_id,
        "young": young.session_id,
        "stale": stale.session_id,
        "recreated": recreated.session_id,
        "only_docdb": only_docdb.session_id,
    }


PURGE = ["purge", "--source", "cassandra", "--parts", "4"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_purge_removes_old_tombstones_from_both_stores(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = seed(fakes)
    assert main([*PURGE, "--json"]) == 0
    report = _json(capsys)
    assert re.fullmatch(
        r"purge-cassandra-and-documentdb-parts-4-\d{8}T\d{6}Z-[0-9a-f]{6}", report["job"]
    )
    assert report["purge"] == {
        "tombstones": 6,  # Cassandra: old_both, young, stale; DocumentDB: young, recreated,
        "purged": 3,  # only_docdb (old_both was purged from both by the first pass)
        "too_young": 2,
        "recreated": 1,
        "conflicts": 0,
        "stale_copies_removed": 1,
    }
    assert report["units"]["planned"] == 8 and report["ok"] is True
    assert SECRET not in json.dumps(report)
    c, d = fakes.records(Store.CASSANDRA), fakes.records(Store.DOCUMENTDB)
    for gone in ("old_both", "stale", "only_docdb"):
        assert ids[gone] not in c and ids[gone] not in d
    assert c[ids["young"]].deleted and d[ids["young"]].deleted
    assert not c[ids["recreated"]].deleted and d[ids["recreated"]].deleted

    # From DocumentDB's side, the re-created key is seen and skipped.
    assert main(["purge", "--source", "documentdb", "--parts", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"re-created in the other store, kept\s+1\s+1", out)
    assert "result: OK" in out


def test_older_than_below_the_grace_exits_two_before_any_store_is_built(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    young = tombstone(10)
    fakes.put(Store.CASSANDRA, young)
    assert main([*PURGE, "--older-than-days", "7"]) == 2
    assert "below the tombstone grace" in capsys.readouterr().err
    assert fakes.built == []
    assert not Path("sessionstore-checkpoints.db").exists()

    # The documented override.
    assert main([*PURGE, "--older-than-days", "7", "--allow-below-grace", "--json"]) == 0
    assert _json(capsys)["purge"]["purged"] == 1
    assert young.session_id not in fakes.records(Store.CASSANDRA)


def test_dry_run_counts_writes_nothing_and_keeps_no_checkpoint(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(fakes)
    before = {s: fakes.records(s) for s in Store}
    assert main([*PURGE, "--dry-run", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["options"]["dry_run"] is True and report["checkpoint"] is None
    # Nothing is removed, so the second pass meets old_both again.
    assert report["purge"]["purged"] == 4 and report["purge"]["stale_copies_removed"] == 1
    assert "dry run" in captured.err
    assert {s: fakes.records(s) for s in Store} == before
    assert fakes.writes() == []
    assert not Path("sessionstore-checkpoints.db").exists()

    assert main([*PURGE, "--dry-run", "--resume"]) == 2
    assert "--dry-run keeps no checkpoint" in capsys.readouterr().err


def test_other_store_retired_never_touches_it(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = uuid.uuid4()
    fakes.put(Store.DOCUMENTDB, tombstone(40, sid))
    fakes.put(Store.CASSANDRA, live(50, sid))  # the retired store's leftovers
    argv = ["purge", "--source", "documentdb", "--other-store-retired", "--parts", "4"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "RETIRED" in captured.err and "no rollback" in captured.err
    assert "purge documentdb only (cassandra retired)" in captured.out
    assert fakes.built == [Store.DOCUMENTDB]
    assert {c.store for c in fakes.calls} == {"documentdb"}
    assert sid not in fakes.records(Store.DOCUMENTDB)
    assert not fakes.records(Store.CASSANDRA)[sid].deleted


def test_the_other_store_unreachable(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed(fakes)
    before = {s: fakes.records(s) for s in Store}
    # Down from the start: the probe finds it, exit 3, nothing changed.
    fakes.down[Store.DOCUMENTDB] = None
    assert main(PURGE) == 3
    assert "cannot reach the other store" in capsys.readouterr().err
    assert {s: fakes.records(s) for s in Store} == before

    # Failing once the job runs: its units fail, exit 1, and nothing is purged from one
    # side only (Cassandra's side of a key goes only after DocumentDB's).
    fakes.down[Store.DOCUMENTDB] = ("head", "purge")
    assert main([*PURGE, "--retries", "1", "--json"]) == 1
    failed = _json(capsys)
    assert failed["units"]["failed"] > 0 and failed["ok"] is False
    assert failed["purge"]["purged"] == 0
    assert fakes.records(Store.CASSANDRA)[ids["stale"]].deleted
    assert ids["stale"] in fakes.records(Store.DOCUMENTDB)
    assert fakes.records(Store.DOCUMENTDB)[ids["only_docdb"]].deleted

    # Back up: --resume runs the failed units.
    del fakes.down[Store.DOCUMENTDB]
    assert main([*PURGE, "--resume", failed["job"], "--json"]) == 0
    resumed = _json(capsys)
    assert resumed["resumed"] is True and resumed["job"] == failed["job"]
    assert resumed["purge"]["purged"] == 3
    assert ids["stale"] not in fakes.records(Store.CASSANDRA)
    assert ids["stale"] not in fakes.records(Store.DOCUMENTDB)


def test_resume_refuses_other_options(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    seed(fakes)
    assert main([*PURGE, "--job", "p1"]) == 0
    capsys.readouterr()
    assert main([*PURGE, "--job", "p1", "--resume", "--older-than-days", "60"]) == 2
    assert "planned with other input" in capsys.readouterr().err
    assert main([*PURGE, "--job", "p1"]) == 2  # a used name, without --resume
    assert main([*PURGE, "--resume", "p1"]) == 0  # complete: nothing purged again
    assert "already complete" in capsys.readouterr().err


def test_unreadable_settings_exit_two_without_the_secret(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_PORT", "not-a-port")
    assert main(PURGE) == 2
    err = capsys.readouterr().err
    assert "SESSIONSTORE_CASSANDRA_PORT" in err and SECRET not in err
    assert fakes.built == []


def test_bad_flags_exit_two(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["purge", "--source", "cassandra", "--older-than-days", "0"])
    assert exc.value.code == 2
    assert main([*PURGE, "--shard", "1/2"]) == 2  # a shard needs --job
    assert main([*PURGE, "--restart"]) == 2  # --restart needs --job
    assert fakes.built == []
    capsys.readouterr()


def test_the_report_names_the_failed_units_and_how_to_continue(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.put(Store.CASSANDRA, tombstone(40))
    fakes.down[Store.DOCUMENTDB] = ("head",)
    assert main([*PURGE, "--job", "p", "--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"failed unit cassandra:\S+: BackendUnavailableError", out)
    assert "result: INCOMPLETE: add --resume p to the same command to continue" in out
