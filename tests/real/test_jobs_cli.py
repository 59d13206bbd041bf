"""The command line on the real servers: verify finds and repairs each kind of seeded
difference (both directions), the same backfill run again copies again, bad input
changes nothing, repair drains a queue, and the rehearsal runs on a scratch table and
collection.

These tests call ``main()`` in-process (no event loop of their own), so they are plain
functions that set up the stores with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessionstore import SessionStatus, SqliteRepairQueue, StoredRecord
from sessionstore.cli.main import main
from sessionstore.revision import restamp_revision, wall_clock_us
from tests.helpers import make_session
from tests.real.cassandra_store import shared_session
from tests.real.jobs_support import (
    Names,
    all_records,
    history,
    open_pair,
    seed_cassandra,
    small_session,
)
from tests.real.servers import MONGODB_URI

pytestmark = pytest.mark.real

SECRET = "wr0ng-Passw0rd"


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


async def _seed_differences(names: Names) -> dict[str, StoredRecord]:
    """Ten consistent keys, and the kinds of difference; returns the source record per kind."""
    seeded: dict[str, StoredRecord] = {}
    async with open_pair(names) as pair:
        c, d = pair.cassandra, pair.documentdb
        for _ in range(10):
            s = make_session(revision=50)
            await c.save(s)
            await d.save(s)
        missing = make_session(revision=60)
        await c.save(missing)
        tombstone = uuid.uuid4()
        await c.delete(tombstone, 61)
        stale = make_session(revision=70, status=SessionStatus.GRADED)
        await c.save(stale)
        await d.save(stale.model_copy(update={"revision": 65, "status": SessionStatus.STARTED}))
        newer = make_session(revision=80)
        await c.save(newer)
        await d.save(newer.model_copy(update={"revision": 90}))
        only_target = make_session(revision=85)
        await d.save(only_target)
        conflict = make_session(revision=100)
        await c.save(conflict)
        await d.save(conflict.model_copy(update={"answers": ()}))
        deleted = make_session(revision=110)
        await c.delete(deleted.session_id, 110)
        await d.save(deleted)
        for kind, sid in {
            "missing": missing.session_id,
            "tombstone": tombstone,
            "stale": stale.session_id,
            "newer": newer.session_id,
            "only_in_target": only_target.session_id,
            "content_mismatch": conflict.session_id,
            "deleted_in_one": deleted.session_id,
        }.items():
            record = await c.get(sid) or await d.get(sid)
            assert record is not None
            seeded[kind] = record
    return seeded


def test_verify_finds_each_seeded_difference_and_repair_fixes_them(
    names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded = asyncio.run(_seed_differences(names))
    verify = ["verify", "--source", "cassandra", "--parts", "4"]

    code, report = _run_json(verify, capsys)
    assert code == 1
    assert report["differences"] == {
        "missing": 2,  # a live session and a tombstone the target never got
        "stale": 1,
        "content_mismatch": 1,
        "deleted_in_one": 1,
        "newer": 2,  # one newer, one only in the target
    }
    assert report["counts"]["only_in_target"] == 1
    assert report["counts"]["consistent"] == 10
    assert {"answers", "status", "deleted", "revision"} <= set(report["fields"])

    code, backwards = _run_json(["verify", "--source", "documentdb", "--parts", "4"], capsys)
    assert code == 1
    assert backwards["differences"] == {
        "missing": 1,
        "stale": 1,
        "content_mismatch": 1,
        "deleted_in_one": 1,
        "newer": 3,
    }

    code, repaired = _run_json([*verify, "--repair"], capsys)
    assert code == 0, repaired
    assert repaired["counts"]["repaired"] == 5
    assert repaired["unresolved"] == 0

    code, after = _run_json([*verify, "--strict"], capsys)
    assert code == 1  # strict: the two 'newer' keys are still reported, by design
    assert after["unresolved"] == 0
    assert after["differences"]["newer"] == 2
    assert main([*verify]) == 0
    capsys.readouterr()

    async def check() -> None:
        async with open_pair(names) as pair:
            for kind in ("missing", "tombstone", "stale"):
                got = await pair.documentdb.get(seeded[kind].session_id)
                assert got == seeded[kind], kind
            for kind in ("content_mismatch", "deleted_in_one"):
                source = seeded[kind]
                in_c = await pair.cassandra.get(source.session_id)
                in_d = await pair.documentdb.get(source.session_id)
                assert in_c == in_d, kind
                assert in_c is not None and in_c.revision == restamp_revision(source.revision)
                assert in_c.deleted == source.deleted
            newer = await pair.documentdb.get(seeded["newer"].session_id)
            assert newer is not None and newer.revision == 90  # left alone

    asyncio.run(check())


def test_the_same_backfill_after_a_rollback_copies_again(
    names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9, item 7: the runbook's 'new backfill' after a rollback copies what changed."""
    old = history(120, seed=7, tombstone_every=20)
    asyncio.run(seed_cassandra(names.table, old))
    backfill = ["backfill", "--source", "cassandra", "--parts", "4", "--no-progress"]
    code, first = _run_json(backfill, capsys)
    assert code == 0, first
    assert first["counts"]["records"] == 120

    async def rolled_back_writes() -> list[StoredRecord]:
        # In CASSANDRA_ONLY the service writes Cassandra alone: new sessions, and newer
        # revisions of sessions DocumentDB already holds.
        rng = random.Random(8)
        revision = max(r.revision for r in old)
        async with open_pair(names) as pair:
            written = [small_session(revision + 1 + i, rng) for i in range(6)]
            written += [
                r.session.model_copy(
                    update={"revision": revision + 100 + i, "status": SessionStatus.GRADED}
                )
                for i, r in enumerate(old[:8])
                if r.session is not None
            ]
            for session in written:
                await pair.cassandra.save(session)
        return [StoredRecord.of(s) for s in written]

    changed = asyncio.run(rolled_back_writes())
    code, again = _run_json(backfill, capsys)  # the very same command
    assert code == 0, again

    async def check() -> None:
        async with open_pair(names) as pair:
            for record in changed:
                assert await pair.documentdb.get(record.session_id) == record
            assert await all_records(pair.documentdb) == await all_records(pair.cassandra)

    asyncio.run(check())
    assert again["job"] != first["job"]
    assert (again["resumed"], again["units"]["skipped"]) == (False, 0)
    assert again["this_run"]["counts"]["records"] == 126
    assert again["this_run"]["counts"]["sessions"] > len(changed)


def _store_state(names: Names) -> tuple[dict[uuid.UUID, StoredRecord], int]:
    async def read() -> tuple[dict[uuid.UUID, StoredRecord], int]:
        async with open_pair(names) as pair:
            return await all_records(pair.cassandra), len(await all_records(pair.documentdb))

    return asyncio.run(read())


def test_bad_input_and_unreachable_stores_change_nothing(
    names: Names,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sessions = [StoredRecord.of(make_session(revision=10 + i)) for i in range(20)]
    asyncio.run(seed_cassandra(names.table, sessions))
    before = _store_state(names)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{sessions[0].session_id}\n# fine\n{sessions[1].session_id}x\n")
    backfill = ["backfill", "--source", "cassandra", "--parts", "4"]

    assert main([*backfill, "--ids", str(ids)]) == 2
    assert "id file line 3: not a session id" in capsys.readouterr().err
    assert main([*backfill, f"--range=0:{2**70}"]) == 2
    assert "outside the cassandra key space" in capsys.readouterr().err

    with monkeypatch.context() as m:
        m.setenv("SESSIONSTORE_CASSANDRA_TABLE", "no_such_table")
        assert main(backfill) == 2
        assert "no_such_table" in capsys.readouterr().err

    with monkeypatch.context() as m:
        uri = MONGODB_URI.replace("mongodb://", f"mongodb://intruder:{SECRET}@")
        m.setenv("SESSIONSTORE_MONGODB_URI", uri)
        assert main(backfill) == 3
        err = capsys.readouterr().err
        assert "refused the request" in err and "AuthenticationFailed" in err
        assert SECRET not in err and "intruder:***@" in err

    with monkeypatch.context() as m:
        m.setenv("SESSIONSTORE_CASSANDRA_PORT", "1")  # nothing listens there
        assert main([*backfill, "--request-timeout", "2"]) == 3
        assert "cannot reach the source cassandra 127.0.0.1:1" in capsys.readouterr().err

    with monkeypatch.context() as m:
        m.setenv("SESSIONSTORE_MONGODB_URI", "mongodb://127.0.0.1:1/")
        assert main([*backfill, "--request-timeout", "1"]) == 3
        assert "cannot reach the target documentdb" in capsys.readouterr().err

    assert _store_state(names) == before  # nothing was written anywhere
    assert before[1] == 0


def test_repair_command_drains_a_queue_against_the_real_stores(
    names: Names, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Secondary writes that failed a moment ago: recent revisions.
    now = wall_clock_us()
    sessions = [StoredRecord.of(make_session(revision=now + i)) for i in range(8)]
    asyncio.run(seed_cassandra(names.table, sessions))
    queue = tmp_path / "repairs.db"

    async def enqueue() -> None:
        async with SqliteRepairQueue(queue) as q:
            for record in sessions[:5]:
                await q.enqueue(record.session_id, "secondary_write_failed")

    asyncio.run(enqueue())
    code, report = _run_json(["repair", "--queue", str(queue)], capsys)
    assert code == 0
    assert report["copied"] == 5
    assert report["drained"] is True
    _, documentdb_count = _store_state(names)
    assert documentdb_count == 5


def test_rehearse_on_the_real_servers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.real.cassandra_store import TEST_KEYSPACE
    from tests.real.documentdb_store import TEST_DATABASE
    from tests.real.servers import CASSANDRA_HOSTS, CASSANDRA_PORT

    async def keyspace() -> None:
        await shared_session()  # creates the test keyspace

    asyncio.run(keyspace())
    env = {
        "SESSIONSTORE_CASSANDRA_HOSTS": ",".join(CASSANDRA_HOSTS),
        "SESSIONSTORE_CASSANDRA_PORT": str(CASSANDRA_PORT),
        "SESSIONSTORE_CASSANDRA_KEYSPACE": TEST_KEYSPACE,
        "SESSIONSTORE_CASSANDRA_PROTOCOL_VERSION": "5",
        "SESSIONSTORE_MONGODB_URI": MONGODB_URI,
        "SESSIONSTORE_DOCUMENTDB_DATABASE": TEST_DATABASE,
        "SESSIONSTORE_DOCUMENTDB_TLS": "false",  # the loopback FerretDB has no TLS listener
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["rehearse", "--real", "--keys", "40", "--ops-per-phase", "60"]
    argv += ["--history", "60", "--parts", "4", "--fleet-calls", "20", "--json"]
    with monkeypatch.context() as m:
        # The scratch stores follow the backends' rules: no plaintext credentials.
        m.setenv("SESSIONSTORE_CASSANDRA_USERNAME", "svc")
        m.setenv("SESSIONSTORE_CASSANDRA_PASSWORD", SECRET)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS" in err and SECRET not in err
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["history_copied"] > 0 and report["reverse_copied"] > 0
    assert [v["differences"] for v in report["verifications"]] == [0, 0, 0]
    fleet = report["fleet"]
    assert (fleet["lost_writes"], fleet["resurrected"]) == (0, 0)
    assert fleet["tombstones_forgotten"] > 0
    # The stale copies left where a store forgot a deletion are reported, by id.
    assert set(fleet["dead_letters"].values()) == {"possibly_deleted"}
