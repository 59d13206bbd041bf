"""Kill and resume: the backfill command stopped at random points, resumed each time.

The command runs in a subprocess against the real servers. It is stopped once with
SIGTERM (a clean interruption, exit 130) and then with SIGKILL at random moments
(seeded), each after a random number of units completed, and resumed each time with
``--resume``. Every resumed run must skip
exactly the units the checkpoint holds as done, never start a completed unit again,
and the last run must end with the same data as an uninterrupted run: verify, run
as a command too, reports zero differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.real.jobs_support import (
    Names,
    create_names,
    drop_names,
    history,
    open_pair,
    seed_cassandra,
)

pytestmark = pytest.mark.real

UNITS = 24
JOB = "kill-and-resume"


def _units(checkpoint: Path) -> dict[str, tuple[str, int]]:
    """unit id -> (state, starts), read without disturbing the writer (WAL)."""
    if not checkpoint.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute(
                "SELECT unit_id, state, starts FROM units WHERE job = ?", (JOB,)
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is not written yet
            return {}
    return {r[0]: (r[1], int(r[2])) for r in rows}


def _done(units: dict[str, tuple[str, int]]) -> dict[str, int]:
    return {u: starts for u, (state, starts) in units.items() if state == "done"}


async def _run(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _wait_for_done(proc: asyncio.subprocess.Process, checkpoint: Path, target: int) -> None:
    deadline = time.monotonic() + 180
    while len(_done(_units(checkpoint))) < target:
        if proc.returncode is not None or time.monotonic() > deadline:
            _, err = await proc.communicate()
            pytest.fail(
                f"backfill ended before {target} units (rc {proc.returncode}):\n{err.decode()}"
            )
        await asyncio.sleep(0.02)


def _command(checkpoint: Path) -> list[str]:
    return [sys.executable, "-m", "sessionstore"]


async def test_sigkilled_backfill_resumes_without_redoing_completed_units(tmp_path: Path) -> None:
    names = await create_names()
    try:
        async with open_pair(names) as pair:
            await seed_cassandra(pair.table, history(400, seed=4, tombstone_every=25))
        # Only the subprocesses touch the stores from now on.
        await _stop_and_resume(names, tmp_path / "checkpoints.db")
    finally:
        await drop_names(names)


async def _stop_and_resume(names: Names, checkpoint: Path) -> None:
    rng = random.Random(20260301)
    env = {**os.environ, **names.env()}
    backfill = [
        *_command(checkpoint),
        "backfill", "--source", "cassandra", "--job", JOB, "--parts", str(UNITS),
        "--concurrency", "2", "--page-size", "10", "--no-progress", "--json",
        "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    resume = [*backfill, "--resume"]  # the first run starts the job, the others continue it
    stops = sorted(rng.sample(range(2, UNITS - 4), 4))
    snapshots: list[dict[str, int]] = []
    for number, target in enumerate(stops):
        proc = await _run(resume if number else backfill, env)
        await _wait_for_done(proc, checkpoint, target)
        await asyncio.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the next units
        if number == 0:
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        _, err = await proc.communicate()
        if number == 0:
            assert proc.returncode == 130, err.decode()
            assert "interrupted" in err.decode()
        else:
            assert proc.returncode == -signal.SIGKILL
        done = _done(_units(checkpoint))
        assert len(done) < UNITS, "the run finished before it was stopped"
        if snapshots:
            assert set(snapshots[-1]) <= set(done)
        snapshots.append(done)

    proc = await _run(resume, env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    before = snapshots[-1]
    assert report["resumed"] is True
    assert report["units"]["skipped"] == len(before)
    assert report["units"]["run"] == report["this_run"]["units_run"] == UNITS - len(before)
    assert report["counts"]["records"] == 400  # the totals of a run that never stopped
    assert report["counts"]["tombstones"] == 16
    final = _units(checkpoint)
    assert len(final) == UNITS and all(state == "done" for state, _ in final.values())
    for snapshot in snapshots:
        for unit, starts in snapshot.items():
            assert final[unit][1] == starts, f"completed unit {unit} was started again"
    assert any(starts > 1 for _, starts in final.values()), "no stop landed inside a unit"

    verify = [
        *_command(checkpoint),
        "verify", "--source", "cassandra", "--parts", "4", "--strict", "--json",
        "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    proc = await _run(verify, env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    verified = json.loads(out)
    assert verified["counts"]["checked"] == 400
    assert all(n == 0 for n in verified["differences"].values())
