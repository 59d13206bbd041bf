"""The command line on in-memory stores: reports, exit codes, bad input, secrets, phase."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from ldclient.client import LDClient
from ldclient.config import Config

from sessionstore import (
    BackendRejectedError,
    InMemoryBackend,
    LaunchDarklyPhaseSource,
    Phase,
    SqliteRepairQueue,
    StoredRecord,
    StudentSession,
    WriteResult,
)
from sessionstore.cli import jobs as cli_jobs
from sessionstore.cli import phase as cli_phase
from sessionstore.cli.main import main
from sessionstore.jobs import SqliteCheckpointStore, WorkUnit
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store
from sessionstore.revision import wall_clock_us
from sessionstore.testing import (
    Call,
    FaultInjectingBackend,
    launchdarkly_test_client,
    set_launchdarkly_phase,
)
from tests.helpers import make_session

SECRET = "hunter2-s3cret"


class _Kept(FaultInjectingBackend):
    """A store whose data outlives one command (closing it does not close the data)."""

    #: Press Ctrl-C (SIGINT to this process) once this many sessions were saved.
    interrupt_after: int | None = None

    async def _close(self) -> None:
        return None

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        result = await super().save(session, expected_revision=expected_revision)
        saves = sum(1 for c in self.calls if c.operation == "save")
        if self.interrupt_after is not None and saves >= self.interrupt_after:
            self.interrupt_after = None  # once
            signal.raise_signal(signal.SIGINT)
        return result


class Fakes:
    def __init__(self) -> None:
        self.data = {s: InMemoryBackend(name=s.value) for s in Store}
        self.built: list[Store] = []
        self.calls: list[Call] = []  # every call that reached a store
        self.insert_first: dict[Store, bool] = {}
        self.faults: dict[Store, type[Exception]] = {}
        #: Saves that fail in the next command: a count, or None for every save.
        self.failing_saves: dict[Store, int | None] = {}
        self.interrupt_after: int | None = None

    def factory(
        self, settings: ConnectionSettings, store: Store, *, insert_first: bool = False
    ) -> _Kept:
        self.built.append(store)
        self.insert_first[store] = insert_first
        backend = _Kept(self.data[store], calls=self.calls)
        backend.interrupt_after = self.interrupt_after
        if store in self.faults:
            backend.go_down(error=self.faults[store])  # type: ignore[arg-type]
        if store in self.failing_saves:
            count = self.failing_saves.pop(store)
            if count is None:
                backend.go_down(operation="save")
            else:
                backend.fail_next(count, operation="save")
        return backend

    def seed(self, store: Store, n: int, *, first_revision: int = 100) -> list[uuid.UUID]:
        async def go() -> list[uuid.UUID]:
            backend = self.data[store]
            await backend.__aenter__()
            sessions = [
                make_session(revision=first_revision + i, metadata={"note": SECRET})
                for i in range(n)
            ]
            for s in sessions:
                await backend.save(s)
            return [s.session_id for s in sessions]

        return asyncio.run(go())

    def rewrite(self, store: Store, ids: list[uuid.UUID]) -> None:
        """Newer revisions of ``ids`` in ``store`` alone, as writes to one store would be."""

        async def go() -> None:
            backend = self.data[store]
            for sid in ids:
                old = (await backend.get(sid)).session  # type: ignore[union-attr]
                assert old is not None
                await backend.save(
                    old.model_copy(update={"revision": old.revision + 10**6, "status": "graded"})
                )

        asyncio.run(go())

    def records(self, store: Store) -> dict[uuid.UUID, StoredRecord]:
        return self.data[store].records()


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fakes:
    f = Fakes()
    monkeypatch.setattr(cli_jobs, "make_backend", f.factory)
    monkeypatch.chdir(tmp_path)
    for name in ("SESSIONSTORE_CASSANDRA_KEYSPACE", "SESSIONSTORE_MONGODB_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", f"mongodb://app:{SECRET}@docdb:27017/")
    return f


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    return json.loads(out)  # type: ignore[no-any-return]


BACKFILL = ["backfill", "--source", "cassandra", "--parts", "8"]


def test_the_same_backfill_again_copies_again(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9, item 7: after a rollback, 'a new backfill' must copy, not resume."""
    ids = fakes.seed(Store.CASSANDRA, 40)
    assert main([*BACKFILL, "--json"]) == 0
    first = _json(capsys)
    assert first["counts"]["sessions"] == 40
    assert first["units"] == {"planned": 8, "run": 8, "skipped": 0, "failed": 0, "not_run": 0}
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)

    # Rolled back to CASSANDRA_ONLY: writes reach Cassandra alone, new sessions and
    # newer revisions of old ones, until the next DUAL_WRITE and its backfill.
    fakes.seed(Store.CASSANDRA, 5)
    fakes.rewrite(Store.CASSANDRA, ids[:7])
    assert fakes.records(Store.DOCUMENTDB) != fakes.records(Store.CASSANDRA)

    assert main([*BACKFILL, "--json"]) == 0
    again = _json(capsys)
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)
    assert (again["units"]["run"], again["units"]["skipped"]) == (8, 0)
    assert again["job"] != first["job"]
    for report in (first, again):  # the plan, the start (UTC) and a random suffix
        assert re.fullmatch(
            r"backfill-cassandra-to-documentdb-parts-8-\d{8}T\d{6}Z-[0-9a-f]{6}", report["job"]
        )
    assert (first["resumed"], again["resumed"]) == (False, False)
    assert again["this_run"]["units_run"] == 8
    assert again["this_run"]["counts"]["sessions"] == 45

    assert main(["verify", "--source", "cassandra", "--parts", "4", "--strict", "--json"]) == 0
    verified = _json(capsys)
    assert verified["differences"] == dict.fromkeys(
        ("missing", "stale", "content_mismatch", "deleted_in_one", "newer"), 0
    )
    assert verified["counts"]["checked"] == 45


def _jobs(path: str = "sessionstore-checkpoints.db") -> list[tuple[str, int]]:
    """(name, units done) of every job in the checkpoint file, the newest first."""

    async def read() -> list[tuple[str, int]]:
        async with SqliteCheckpointStore(path) as checkpoints:
            return [(j.job, j.units_done) for j in await checkpoints.jobs()]

    return asyncio.run(read())


def test_resume_continues_an_interrupted_backfill(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 40)
    fakes.interrupt_after = 22  # Ctrl-C inside the fifth of eight units
    assert main([*BACKFILL, "--concurrency", "1", "--json"]) == 130
    assert "add --resume to the same command" in capsys.readouterr().err
    [(name, done)] = _jobs()
    assert 0 < done < 8

    fakes.interrupt_after = None
    assert main([*BACKFILL, "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    resumed = json.loads(captured.out)
    assert f"resuming job {name!r}" in captured.err
    assert resumed["job"] == name and resumed["resumed"] is True
    assert resumed["job_started_at"] <= resumed["this_run"]["started_at"]
    assert (resumed["units"]["skipped"], resumed["units"]["run"]) == (done, 8 - done)
    assert resumed["counts"]["sessions"] == 40  # the job's total, both runs
    assert 0 < resumed["this_run"]["counts"]["sessions"] < 40
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)
    assert _jobs() == [(name, 8)]

    # Complete now: a bare --resume has nothing to continue, a named one says so.
    assert main([*BACKFILL, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and f"{name!r}, is complete" in err
    fakes.calls.clear()
    assert main([*BACKFILL, "--resume", name]) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.err
    assert "nothing to do: every unit was already done; this run copied nothing" in captured.out
    assert "resumed job, begun" in captured.out
    assert fakes.calls == []  # no store was even opened
    assert main([*BACKFILL, "--job", name, "--resume", "--json"]) == 0
    report = _json(capsys)
    assert report["this_run"]["counts"] == {} and report["this_run"]["units_run"] == 0
    assert report["counts"]["sessions"] == 40


def test_a_job_name_twice_without_resume_exits_two_and_writes_nothing(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 10)
    named = [*BACKFILL, "--job", "after-rollback"]
    assert main(named) == 0
    assert "new job 'after-rollback'" in capsys.readouterr().err
    fakes.seed(Store.CASSANDRA, 3)
    before, jobs = fakes.records(Store.DOCUMENTDB), _jobs()
    fakes.calls.clear()

    assert main(named) == 2
    err = capsys.readouterr().err
    assert "job 'after-rollback' already exists" in err and "add --resume" in err
    assert fakes.calls == [] and _jobs() == jobs
    assert fakes.records(Store.DOCUMENTDB) == before

    assert main([*named, "--restart", "--json"]) == 0  # the same job, from the start
    restarted = _json(capsys)
    assert (restarted["job"], restarted["resumed"]) == ("after-rollback", False)
    assert restarted["this_run"]["counts"]["sessions"] == 13
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)


def test_shards_of_one_job_share_its_name(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.seed(Store.CASSANDRA, 30)
    sharded = [*BACKFILL, "--job", "wide"]
    runs = []
    for i in range(2):
        assert main([*sharded, "--shard", f"{i}/2", "--json"]) == 0
        runs.append(_json(capsys))
    assert [r["job"] for r in runs] == ["wide", "wide"]
    assert [r["resumed"] for r in runs] == [False, False]  # the second joined, new to it
    assert sum(r["this_run"]["counts"]["sessions"] for r in runs) == 30
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)

    assert main([*sharded, "--shard", "0/2"]) == 2
    assert "shard 0/2 of job 'wide'" in capsys.readouterr().err
    assert main([*sharded, "--shard", "0/2", "--resume", "--json"]) == 0
    assert _json(capsys)["this_run"]["units_run"] == 0
    assert main([*BACKFILL, "--resume", "wide"]) == 0  # the whole job is complete
    assert "already complete" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard", "0/2"], "--shard needs --job NAME"),
        (["--restart"], "--restart needs --job NAME"),
        (["--job", "a", "--resume", "--restart"], "give only one"),
        (["--job", "a", "--resume", "b"], "different jobs"),
        (["--job", "a", "--shard", "0/2", "--restart"], "new --job name"),
        (["--resume", "--print-units"], "--print-units reads no checkpoint"),
        (["--resume", "bad name"], "job name"),
    ],
)
@pytest.mark.parametrize("command", ["backfill", "verify"])
def test_bad_job_flags_exit_two_before_any_store_is_built(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    command: str,
    argv: list[str],
    message: str,
) -> None:
    fakes.seed(Store.CASSANDRA, 3)
    assert main([command, "--source", "cassandra", *argv]) == 2
    assert message in capsys.readouterr().err
    assert fakes.built == []


def test_resume_with_nothing_to_resume_exits_two(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 3)
    assert main([*BACKFILL, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume: no unfinished backfill cassandra -> documentdb job" in err
    assert main([*BACKFILL, "--resume", "gone"]) == 2
    assert "no job 'gone'" in capsys.readouterr().err
    assert main(["verify", "--source", "cassandra", "--resume"]) == 2
    assert "no unfinished verify cassandra -> documentdb job" in capsys.readouterr().err
    assert fakes.calls == []
    assert fakes.records(Store.DOCUMENTDB) == {}


def test_verify_follows_the_same_resume_rule(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 6)
    verify = ["verify", "--source", "cassandra", "--parts", "2"]
    assert main([*verify, "--job", "check"]) == 1  # missing in the target
    capsys.readouterr()
    assert main([*verify, "--job", "check"]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main([*verify, "--resume", "check", "--json"]) == 1  # complete, not ok
    report = _json(capsys)
    assert (report["resumed"], report["this_run"]["units_run"]) == (True, 0)
    assert report["differences"]["missing"] == 6
    assert main([*verify, "--json"]) == 1  # a new verify compares again
    again = _json(capsys)
    assert again["job"].startswith("verify-cassandra-vs-documentdb-")
    assert again["this_run"]["counts"]["checked"] == 6


def test_report_shows_this_run_beside_the_job_total(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 12)
    assert main([*BACKFILL, "--job", "bf", "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert main([*BACKFILL, "--job", "bf", "--resume"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("resumed job, begun ")
    assert lines[1].endswith(" UTC") and "this run started" in lines[1]
    header = next(line for line in lines if "this run" in line and "job total" in line)
    copied = next(line for line in lines if line.startswith("sessions copied"))
    this_run, total = (int(n.replace(",", "")) for n in copied.split()[-2:])
    assert total == 12 and 0 < this_run < 12
    assert header.index("this run") < header.index("job total")
    assert lines[-1] == "result: OK"


def test_verify_exit_codes_and_repair(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fakes.seed(Store.CASSANDRA, 10)
    assert main(["verify", "--source", "cassandra", "--report", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "missing in target" in out and "DIFFERENCES: 10 not resolved" in out
    assert SECRET not in out
    assert json.loads((tmp_path / "r.json").read_text())["differences"]["missing"] == 10
    assert main(["verify", "--source", "cassandra", "--repair"]) == 0
    assert "repaired" in capsys.readouterr().out
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)


def test_print_units_touches_no_store_and_shards_partition(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["backfill", "--source", "cassandra", "--parts", "16", "--print-units", "--job", "q"]
    assert main(argv) == 0
    units = [WorkUnit.from_json(line) for line in capsys.readouterr().out.splitlines()]
    assert len(units) == 16
    assert units[0].start == -(2**63) and units[-1].end == 2**63
    shards = []
    for i in range(3):
        assert main([*argv, "--shard", f"{i}/3"]) == 0
        shards += capsys.readouterr().out.splitlines()
    assert sorted(shards) == sorted(u.to_json() for u in units)
    assert fakes.built == []


def test_id_file_backfill(fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ids = fakes.seed(Store.DOCUMENTDB, 20)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(str(i) for i in ids[:5]) + f"\n{uuid.uuid4()}\n")
    assert main(["backfill", "--source", "documentdb", "--ids", str(path), "--json"]) == 0
    report = _json(capsys)
    assert (report["counts"]["sessions"], report["counts"]["absent"]) == (5, 1)
    assert report["job"].startswith("backfill-documentdb-to-cassandra-ids-")
    assert set(fakes.records(Store.CASSANDRA)) == set(ids[:5])


def test_only_a_backfill_target_inserts_first(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.seed(Store.CASSANDRA, 5)
    assert main(["backfill", "--source", "cassandra", "--parts", "2", "--json"]) == 0
    assert fakes.insert_first == {Store.CASSANDRA: False, Store.DOCUMENTDB: True}
    assert main(["verify", "--source", "cassandra", "--parts", "2", "--repair", "--json"]) == 0
    assert fakes.insert_first == {Store.CASSANDRA: False, Store.DOCUMENTDB: False}
    capsys.readouterr()


def test_page_flags_reach_the_job(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.seed(Store.CASSANDRA, 30)
    argv = ["--source", "cassandra", "--parts", "2", "--page-size", "7", "--page-mb", "3"]
    assert main(["backfill", *argv, "--json"]) == 0
    report = _json(capsys)
    assert (report["options"]["page_size"], report["options"]["page_bytes"]) == (7, 3 * 2**20)
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)


def test_a_bad_page_budget_exits_two(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["backfill", "--source", "cassandra", "--page-mb", "0"])
    assert exc.value.code == 2
    assert "--page-mb" in capsys.readouterr().err
    assert fakes.built == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ids", "{ids}"], "line 2:"),
        (["--ids", "missing-file.txt"], "cannot read id file"),
        (["--range=0:99999999999999999999999999"], "outside the cassandra key space"),
        (["--range", "5"], "not START:END"),
        (["--shard", "4/4"], "needs 0 <= i < N"),
        (["--target", "cassandra"], "other store"),
        (["--job", "no spaces please"], "job name"),
    ],
)
def test_bad_input_exits_two_before_any_store_is_built(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{uuid.uuid4()}\nnot-an-id\n")
    argv = [a.format(ids=ids) for a in argv]
    assert main(["backfill", "--source", "cassandra", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "not-an-id" not in err
    assert fakes.built == []
    assert fakes.records(Store.DOCUMENTDB) == {}


@pytest.mark.parametrize("error", [BackendRejectedError, Exception])
def test_unreachable_or_refusing_stores_exit_three_and_change_nothing(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], error: type[Exception]
) -> None:
    from sessionstore import BackendUnavailableError

    fakes.seed(Store.CASSANDRA, 5)
    fakes.faults[Store.DOCUMENTDB] = BackendUnavailableError if error is Exception else error
    assert main(["backfill", "--source", "cassandra", "--parts", "2"]) == 3
    err = capsys.readouterr().err
    expected = "refused the request" if error is BackendRejectedError else "cannot reach the target"
    assert expected in err
    assert SECRET not in err
    assert "app:***@docdb" in err
    assert fakes.records(Store.DOCUMENTDB) == {}


def test_empty_source_and_mismatched_resume_exit_two(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backfill", "--source", "cassandra"]) == 2
    assert "holds no sessions" in capsys.readouterr().err
    fakes.seed(Store.CASSANDRA, 3)
    assert main(["backfill", "--source", "cassandra", "--parts", "4", "--job", "bf"]) == 0
    capsys.readouterr()
    assert main(["backfill", "--source", "cassandra", "--parts", "5", "--job", "bf"]) == 2
    assert "planned with other input" in capsys.readouterr().err
    assert (
        main(["backfill", "--source", "cassandra", "--parts", "5", "--job", "bf", "--restart"]) == 0
    )


def test_dry_run_writes_nothing(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.seed(Store.CASSANDRA, 3)
    assert main(["backfill", "--source", "cassandra", "--dry-run"]) == 0
    assert "nothing was written" in capsys.readouterr().err
    assert fakes.records(Store.DOCUMENTDB) == {}


def test_settings_errors_exit_two_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SESSIONSTORE_MONGODB_URI", f"mongodb://app:{SECRET}@docdb/")
    monkeypatch.delenv("SESSIONSTORE_CASSANDRA_KEYSPACE", raising=False)
    monkeypatch.setenv("SESSIONSTORE_DOCUMENTDB_DATABASE", "assessments")
    assert main(["backfill", "--source", "cassandra"]) == 2
    err = capsys.readouterr().err
    assert "SESSIONSTORE_CASSANDRA_KEYSPACE" in err and SECRET not in err
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_PORT", SECRET)
    assert main(["verify", "--source", "documentdb"]) == 2
    err = capsys.readouterr().err
    assert "SESSIONSTORE_CASSANDRA_PORT" in err and SECRET not in err


def test_repair_command_drains_the_queue(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Secondary writes that failed a moment ago: recent revisions.
    ids = fakes.seed(Store.CASSANDRA, 6, first_revision=wall_clock_us())
    path = tmp_path / "repairs.db"
    _queue(path, ids)
    assert main(["repair", "--queue", str(path), "--json"]) == 0
    report = _json(capsys)
    assert (report["copied"], report["queued_before"], report["drained"]) == (6, 6, True)
    assert report["remaining"] == {"ready": 0, "waiting": 0, "dead": 0}
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)
    assert main(["repair", "--queue", str(tmp_path / "nope.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_repair_exit_code_tells_dead_letters_and_back_off_from_drained(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # An old session that only Cassandra holds: DocumentDB may have forgotten its
    # deletion, so the worker must not copy it back. It is a dead letter, listed by id.
    [old] = fakes.seed(Store.CASSANDRA, 1, first_revision=100)
    path = tmp_path / "repairs.db"
    _queue(path, [old])
    assert main(["repair", "--queue", str(path), "--json"]) == 1
    report = _json(capsys)
    assert report["possibly_deleted"] == 1
    assert report["dead_letters"] == [
        {"session_id": str(old), "reason": "possibly_deleted", "attempts": 0}
    ]
    assert old not in fakes.records(Store.DOCUMENTDB)
    assert main(["repair", "--queue", str(path), "--dead-letters"]) == 1
    assert str(old) in capsys.readouterr().out
    # A store that keeps failing: the session waits out a back-off: not drained (4).
    [recent] = fakes.seed(Store.CASSANDRA, 1, first_revision=wall_clock_us())
    _queue(path, [recent])
    fakes.failing_saves[Store.DOCUMENTDB] = None
    args = ["repair", "--queue", str(path), "--json", "--retry-delay", "30"]
    assert main(args) == 1  # the dead letter still dominates
    assert _json(capsys)["remaining"] == {"ready": 0, "waiting": 1, "dead": 1}
    assert main(["repair", "--queue", str(path), "--requeue-dead", str(old), "--json"]) == 1
    assert _json(capsys)["possibly_deleted"] == 1


def test_repair_waits_out_a_back_off_with_wait(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    [sid] = fakes.seed(Store.CASSANDRA, 1, first_revision=wall_clock_us())
    path = tmp_path / "repairs.db"
    _queue(path, [sid])
    fakes.failing_saves[Store.DOCUMENTDB] = 1
    args = ["repair", "--queue", str(path), "--json", "--retry-delay", "0.5"]
    assert main(args) == 4
    report = _json(capsys)
    assert (report["failed"], report["remaining"]["waiting"]) == (1, 1)
    assert main([*args, "--wait", "10"]) == 0
    assert _json(capsys)["copied"] == 1
    assert fakes.records(Store.DOCUMENTDB) == fakes.records(Store.CASSANDRA)


def test_repair_gives_up_after_max_attempts(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    [sid] = fakes.seed(Store.CASSANDRA, 1, first_revision=wall_clock_us())
    path = tmp_path / "repairs.db"
    _queue(path, [sid])
    fakes.failing_saves[Store.DOCUMENTDB] = None
    args = ["repair", "--queue", str(path), "--json", "--retry-delay", "0.01"]
    assert main([*args, "--max-attempts", "3", "--wait", "10"]) == 1
    report = _json(capsys)
    assert report["failed"] == 2
    assert report["gave_up"] == 1
    assert report["dead_letters"][0]["reason"] == "gave_up:BackendUnavailableError"


def _queue(path: Path, ids: list[uuid.UUID]) -> None:
    async def go() -> None:
        async with SqliteRepairQueue(path) as queue:
            for sid in ids:
                await queue.enqueue(sid, "secondary_write_failed")

    asyncio.run(go())


def test_plaintext_opt_out_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from sessionstore.cli import _common as common

    for name in (
        "SESSIONSTORE_DOCUMENTDB_TLS",
        "SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    common.add_connection_flags(parser)
    defaults = common.connection_settings(parser.parse_args([]))
    assert defaults.documentdb_tls is True
    assert defaults.cassandra_allow_plaintext_credentials is False
    flags = ["--documentdb-no-tls", "--cassandra-allow-plaintext-credentials"]
    opted_out = common.connection_settings(parser.parse_args(flags))
    assert opted_out.documentdb_tls is False
    assert opted_out.cassandra_allow_plaintext_credentials is True


CONTEXT_SECRET = "fleet-wide-context-secret"


def test_phase_table_and_session_phases(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phase"]) == 0
    table = capsys.readouterr().out
    assert all(p.name in table and p.value in table for p in Phase)

    # The service's source: sid targeted by the context key it sends; everyone else SHADOW.
    client, td = launchdarkly_test_client("session-store-migration", Phase.SHADOW)
    service = LaunchDarklyPhaseSource(
        client, flag_key="session-store-migration", context_key_secret=CONTEXT_SECRET
    )
    sid, other_sid = uuid.uuid4(), uuid.uuid4()
    set_launchdarkly_phase(td, Phase.SHADOW, targets={sid: Phase.DOCDB_PRIMARY}, source=service)
    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: client)
    monkeypatch.setenv("LAUNCHDARKLY_SDK_KEY", SECRET)
    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", CONTEXT_SECRET)
    assert main(["phase", str(sid), str(other_sid), "--json"]) == 0
    data = _json(capsys)
    assert data["sessions"] == [
        {
            "session_id": str(sid),
            "phase": "DOCDB_PRIMARY",
            "stage": "live",
            "context_key": service.context_key(sid),
            "fallback": False,
        },
        {
            "session_id": str(other_sid),
            "phase": "SHADOW",
            "stage": "shadow",
            "context_key": service.context_key(other_sid),
            "fallback": False,
        },
    ]

    other, _ = launchdarkly_test_client("another-flag", Phase.SHADOW)
    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: other)
    assert main(["phase", str(sid), "--default-phase", "DUAL_WRITE"]) == 0
    out = capsys.readouterr().out
    assert "DUAL_WRITE" in out and "default phase" in out
    assert SECRET not in out and CONTEXT_SECRET not in out


def test_phase_with_the_secret_from_a_file_or_raw_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client, td = launchdarkly_test_client("session-store-migration", Phase.DUAL_WRITE)
    # Each command closes its client: a new one per run, on the same flag data.
    config = Config("test-sdk-key", update_processor_class=td, send_events=False)
    monkeypatch.setattr(cli_phase, "make_ld_client", lambda key, timeout: LDClient(config))
    monkeypatch.setenv("LAUNCHDARKLY_SDK_KEY", SECRET)
    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", raising=False)
    sid = uuid.uuid4()

    secret_file = tmp_path / "context-secret"
    secret_file.write_text(CONTEXT_SECRET + "\n", encoding="utf-8")
    assert main(["phase", str(sid), "--context-secret-file", str(secret_file), "--json"]) == 0
    (hashed,) = _json(capsys)["sessions"]
    service = LaunchDarklyPhaseSource(
        client, flag_key="session-store-migration", context_key_secret=CONTEXT_SECRET
    )
    assert hashed["context_key"] == service.context_key(sid)

    # A service that opted into raw ids: the same opt-in, by flag or by variable.
    raw = LaunchDarklyPhaseSource(client, flag_key="session-store-migration", raw_session_ids=True)
    set_launchdarkly_phase(td, Phase.DUAL_WRITE, targets={sid: Phase.RAMPDOWN}, source=raw)
    assert main(["phase", str(sid), "--raw-session-ids", "--json"]) == 0
    assert _json(capsys)["sessions"][0]["phase"] == "RAMPDOWN"
    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS", "true")
    assert main(["phase", str(sid), "--json"]) == 0
    (by_id,) = _json(capsys)["sessions"]
    assert (by_id["phase"], by_id["context_key"]) == ("RAMPDOWN", str(sid))
    client.close()


def test_phase_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phase", "not-a-uuid"]) == 2
    monkeypatch.delenv("LAUNCHDARKLY_SDK_KEY", raising=False)
    assert main(["phase", str(uuid.uuid4())]) == 2
    assert "LAUNCHDARKLY_SDK_KEY" in capsys.readouterr().err

    class Offline:
        def is_initialized(self) -> bool:
            return False

        def close(self) -> None:
            pass

    built: list[str] = []

    def make(key: str, timeout: float) -> Offline:
        built.append(key)
        return Offline()

    monkeypatch.setenv("LAUNCHDARKLY_SDK_KEY", SECRET)
    monkeypatch.setattr(cli_phase, "make_ld_client", make)
    # The context keying is checked before LaunchDarkly is contacted.
    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", raising=False)
    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS", raising=False)
    assert main(["phase", str(uuid.uuid4())]) == 2
    assert "SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", "short-s3cret")
    assert main(["phase", str(uuid.uuid4())]) == 2
    err = capsys.readouterr().err
    assert "at least 16 bytes" in err and "short-s3cret" not in err
    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS", "maybe")
    assert main(["phase", str(uuid.uuid4())]) == 2
    assert "SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS" in capsys.readouterr().err
    assert built == []

    monkeypatch.delenv("SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS")
    monkeypatch.setenv("SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET", CONTEXT_SECRET)
    assert main(["phase", str(uuid.uuid4()), "--timeout", "0.1"]) == 3
    err = capsys.readouterr().err
    assert "did not initialize" in err and SECRET not in err and CONTEXT_SECRET not in err


def test_cli_rehearse_reports_the_backfill_and_verifications(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["rehearse", "--keys", "40", "--ops-per-phase", "60", "--history", "80", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["history_seeded"] == 80 and data["history_copied"] > 0
    assert data["reverse_copied"] > 0
    assert [v["when"] for v in data["verifications"]] == [
        "after the backfill",
        "before stepping to DOCDB_ONLY",
        "after the reverse backfill",
    ]
    assert all(v["differences"] == 0 for v in data["verifications"])
