"""``sessionstore purge`` on real Cassandra and FerretDB: seeded tombstones, some a month
old, are purged from both stores (an older live copy in the other store with them), the
young and the re-created are kept, a dry run changes nothing, and afterwards neither a
backfill nor verify --repair in either direction brings a purged deletion back. The
retired-store mode never connects to the retired store.

The commands run in-process (``main()``), so these are plain functions that set up the
stores with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from typing import Any

import pytest

from sessionstore import StoredRecord
from sessionstore.cli.main import main
from sessionstore.revision import wall_clock_us
from tests.real.jobs_support import (
    Names,
    all_records,
    open_pair,
    seed_cassandra,
    seed_documentdb,
    small_session,
)

pytestmark = pytest.mark.real

DAY_US = dt.timedelta(days=1) // dt.timedelta(microseconds=1)


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json", "--no-progress"])
    return code, json.loads(capsys.readouterr().out)


def _ago(days: float) -> int:
    return wall_clock_us() - int(days * DAY_US)


def _live(days: float, rng: random.Random, sid: uuid.UUID | None = None) -> StoredRecord:
    session = small_session(_ago(days), rng, session_id=sid or uuid.UUID(int=rng.getrandbits(128)))
    return StoredRecord.of(session)


async def _seed(names: Names) -> dict[str, uuid.UUID]:
    """A handful of tombstones, each with another fate, and live sessions in both stores."""
    rng = random.Random(11)
    ids = {
        k: uuid.UUID(int=rng.getrandbits(128))
        for k in ("old", "young", "stale_docdb", "stale_cassandra", "recreated")
    }
    tomb = StoredRecord.tombstone
    in_both = [tomb(ids["old"], _ago(40)), tomb(ids["young"], _ago(5))]
    cassandra = [
        *in_both,  # both stores hold the deletion
        tomb(ids["stale_docdb"], _ago(40)),  # DocumentDB missed the delete
        _live(45, rng, ids["stale_cassandra"]),  # Cassandra missed it (DOCDB_ONLY)
        _live(1, rng, ids["recreated"]),  # saved again after its deletion
    ]
    documentdb = [
        *in_both,
        _live(45, rng, ids["stale_docdb"]),
        tomb(ids["stale_cassandra"], _ago(40)),
        tomb(ids["recreated"], _ago(40)),
    ]
    both = [_live(50, rng) for _ in range(5)]
    await seed_cassandra(names.table, [*cassandra, *both])
    async with open_pair(names) as pair:
        await seed_documentdb(pair.collection, [*documentdb, *both])
    return ids


async def _contents(names: Names) -> tuple[dict[uuid.UUID, StoredRecord], ...]:
    async with open_pair(names) as pair:
        return await all_records(pair.cassandra), await all_records(pair.documentdb)


def test_purge_on_the_real_stores(names: Names, capsys: pytest.CaptureFixture[str]) -> None:
    ids = asyncio.run(_seed(names))
    before = asyncio.run(_contents(names))
    purge = ["purge", "--source", "cassandra", "--parts", "4"]

    code, dry = _run_json([*purge, "--dry-run"], capsys)
    assert code == 0, dry
    assert dry["purge"]["stale_copies_removed"] == 2
    assert asyncio.run(_contents(names)) == before  # a dry run writes nothing

    code, report = _run_json(purge, capsys)
    assert code == 0, report
    assert report["purge"] == {
        # Cassandra: old, young, stale_docdb; DocumentDB: young, stale_cassandra, recreated
        "tombstones": 6,
        "purged": 3,
        "too_young": 2,
        "recreated": 1,
        "conflicts": 0,
        "stale_copies_removed": 2,
    }
    cassandra, documentdb = asyncio.run(_contents(names))
    for gone in ("old", "stale_docdb", "stale_cassandra"):
        assert ids[gone] not in cassandra and ids[gone] not in documentdb, gone
    assert cassandra[ids["young"]] == before[0][ids["young"]]
    assert documentdb[ids["young"]] == before[1][ids["young"]]
    assert cassandra[ids["recreated"]] == before[0][ids["recreated"]]
    assert documentdb[ids["recreated"]] == before[1][ids["recreated"]]
    assert len(cassandra) == len(documentdb) == 5 + 2  # the live sessions, young, recreated

    # Nothing run afterwards brings a purged deletion back.
    for source in ("cassandra", "documentdb"):
        code, copied = _run_json(["backfill", "--source", source, "--parts", "4"], capsys)
        assert code == 0, copied
        code, verified = _run_json(
            ["verify", "--source", source, "--parts", "4", "--repair"], capsys
        )
        assert code == 0, verified
    cassandra, documentdb = asyncio.run(_contents(names))
    for gone in ("old", "stale_docdb", "stale_cassandra"):
        assert ids[gone] not in cassandra and ids[gone] not in documentdb, gone


def test_purge_with_the_other_store_retired_never_connects_to_it(
    names: Names, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(12)
    old, young = uuid.UUID(int=rng.getrandbits(128)), uuid.UUID(int=rng.getrandbits(128))

    async def seed() -> None:
        async with open_pair(names) as pair:
            await seed_documentdb(
                pair.collection,
                [StoredRecord.tombstone(old, _ago(31)), StoredRecord.tombstone(young, _ago(2))],
            )

    asyncio.run(seed())
    # Cassandra is gone: nothing listens there, and the command must not try.
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_HOSTS", "127.0.0.1")
    monkeypatch.setenv("SESSIONSTORE_CASSANDRA_PORT", "1")
    retired = ["purge", "--source", "documentdb", "--other-store-retired", "--parts", "2"]
    code, report = _run_json(retired, capsys)
    assert code == 0, report
    assert report["target_location"] == "retired"
    assert (report["purge"]["purged"], report["purge"]["too_young"]) == (1, 1)

    async def left() -> dict[uuid.UUID, StoredRecord]:
        async with open_pair(names) as pair:
            return await all_records(pair.documentdb)

    assert set(asyncio.run(left())) == {young}
    # Without the flag, the unreachable other store is refused before anything is written.
    assert main(["purge", "--source", "documentdb", "--parts", "2"]) == 3
    assert "cannot reach the other store" in capsys.readouterr().err
    assert set(asyncio.run(left())) == {young}
