"""Durable checkpoints of job units: a resumed job skips what is already done.

Each unit's start and completion (with its counts) is committed before the job moves
on: SQLite in WAL mode with ``synchronous=FULL``, one transaction per change, so a job
killed with SIGKILL at any instant finds every completed unit recorded and every other
one not. Several processes (``--shard i/N``) may share one file.

A job name is bound to the fingerprint of its plan: resuming with a different plan
(other ranges, another id file, other options) is refused rather than silently mixing
two plans' progress. :meth:`~CheckpointStore.jobs` lists the jobs of one plan, newest
first, with how many of their units are done: the command line finds the run to
resume with it.

Example::

    async with SqliteCheckpointStore("checkpoints.db") as checkpoints:
        await checkpoints.begin_job("backfill-1", plan_fingerprint(units))
        done = await checkpoints.done_units("backfill-1")
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import json
import sqlite3
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from sessionstore._errors import BackendError, ConfigurationError
from sessionstore._sqlite import SqliteFile
from sessionstore.backends.base import LifecycleMixin

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "JobRecord",
    "MemoryCheckpointStore",
    "SqliteCheckpointStore",
    "UnitRecord",
    "UnitState",
]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    job TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    state TEXT NOT NULL,
    starts INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL DEFAULT '{}',
    fields TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job, unit_id)
);
"""


class CheckpointError(BackendError):
    """The checkpoint file could not be read or written (disk, permissions, corruption)."""


class UnitState(enum.StrEnum):
    """Where a unit stands in the checkpoint."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class UnitRecord:
    """What the checkpoint holds for one unit: its state, how often it started, counts."""

    unit_id: str
    state: UnitState
    starts: int
    counts: Mapping[str, int]
    fields: Mapping[str, int]
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """What the checkpoint holds for one job: its plan, when it was begun, units done.

    ``started_at`` (UTC) is when the job was first begun, or begun again by a restart;
    whether the job is complete is ``units_done`` against the size of its plan, which
    only the planner knows.
    """

    job: str
    fingerprint: str
    started_at: dt.datetime
    units_done: int


@runtime_checkable
class CheckpointStore(Protocol):
    """Where a job records unit progress. Implementations: SQLite file, memory."""

    async def begin_job(self, job: str, fingerprint: str, *, restart: bool = False) -> None:
        """Bind ``job`` to its plan; ``restart`` forgets earlier progress of ``job``."""
        ...

    async def job_fingerprint(self, job: str) -> str | None:
        """The plan fingerprint ``job`` was begun with, or None if it is unknown."""
        ...

    async def job(self, job: str) -> JobRecord | None:
        """What the checkpoint holds for ``job``, or None if it is unknown."""
        ...

    async def jobs(self, *, fingerprint: str | None = None) -> list[JobRecord]:
        """Every job (or those of the plan ``fingerprint``), the newest first."""
        ...

    async def unit_started(self, job: str, unit_id: str) -> None:
        """Record that a unit starts (counts restarts)."""
        ...

    async def unit_done(
        self, job: str, unit_id: str, counts: Mapping[str, int], fields: Mapping[str, int]
    ) -> None:
        """Record a completed unit and its counts, durably, before returning."""
        ...

    async def unit_failed(self, job: str, unit_id: str, error: str) -> None:
        """Record that a unit failed (it runs again when the job is resumed)."""
        ...

    async def units(self, job: str) -> dict[str, UnitRecord]:
        """Every unit recorded for ``job``."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _mismatch(job: str) -> ConfigurationError:
    return ConfigurationError(
        f"job {job!r} was checkpointed with a different plan (ranges, ids, options or "
        "stores); resume it with the same arguments, start it over with --restart, or "
        "pick another --job name"
    )


class MemoryCheckpointStore(LifecycleMixin):
    """Checkpoints in a dict: for tests, single runs and workers that need none.

    >>> import asyncio
    >>> async def demo():
    ...     async with MemoryCheckpointStore() as cp:
    ...         await cp.begin_job("j", "plan-1")
    ...         await cp.unit_done("j", "u1", {"sessions": 3}, {})
    ...         return (await cp.units("j"))["u1"].state
    >>> asyncio.run(demo())
    <UnitState.DONE: 'done'>
    """

    _lifecycle_name = "checkpoint store"

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, float]] = {}  # job -> (fingerprint, begun at)
        self._units: dict[tuple[str, str], UnitRecord] = {}

    async def begin_job(self, job: str, fingerprint: str, *, restart: bool = False) -> None:
        """Bind the job to its plan (see the protocol)."""
        await self._ensure_open()
        if restart:
            self._units = {k: v for k, v in self._units.items() if k[0] != job}
            self._jobs.pop(job, None)
        known = self._jobs.setdefault(job, (fingerprint, time.time()))
        if known[0] != fingerprint:
            raise _mismatch(job)

    async def job_fingerprint(self, job: str) -> str | None:
        """The job's plan fingerprint, or None."""
        found = await self.job(job)
        return None if found is None else found.fingerprint

    async def job(self, job: str) -> JobRecord | None:
        """The job's record, or None."""
        found = [j for j in await self.jobs() if j.job == job]
        return found[0] if found else None

    async def jobs(self, *, fingerprint: str | None = None) -> list[JobRecord]:
        """Every job (or those of one plan), the newest first."""
        await self._ensure_open()
        done = collections.Counter(
            j for (j, _), r in self._units.items() if r.state is UnitState.DONE
        )
        found = [
            JobRecord(job, fp, _utc(began), done[job])
            for job, (fp, began) in self._jobs.items()
            if fingerprint in (None, fp)
        ]
        return sorted(found, key=lambda j: (j.started_at, j.job), reverse=True)

    def _get(self, job: str, unit_id: str) -> UnitRecord:
        return self._units.get((job, unit_id)) or UnitRecord(unit_id, UnitState.RUNNING, 0, {}, {})

    async def unit_started(self, job: str, unit_id: str) -> None:
        """Count a start."""
        await self._ensure_open()
        old = self._get(job, unit_id)
        self._units[job, unit_id] = dataclasses.replace(
            old, state=UnitState.RUNNING, starts=old.starts + 1, error=None
        )

    async def unit_done(
        self, job: str, unit_id: str, counts: Mapping[str, int], fields: Mapping[str, int]
    ) -> None:
        """Record completion with counts."""
        await self._ensure_open()
        old = self._get(job, unit_id)
        self._units[job, unit_id] = dataclasses.replace(
            old, state=UnitState.DONE, counts=dict(counts), fields=dict(fields), error=None
        )

    async def unit_failed(self, job: str, unit_id: str, error: str) -> None:
        """Record a failure."""
        await self._ensure_open()
        old = self._get(job, unit_id)
        self._units[job, unit_id] = dataclasses.replace(old, state=UnitState.FAILED, error=error)

    async def units(self, job: str) -> dict[str, UnitRecord]:
        """Every unit of the job."""
        await self._ensure_open()
        return {uid: rec for (j, uid), rec in self._units.items() if j == job}


class SqliteCheckpointStore(SqliteFile):
    """Checkpoints in a SQLite file that survives SIGKILL; shared safely by processes.

    The file is created on first use. Calls run in a worker thread so the event loop
    never waits on the disk.
    """

    _lifecycle_name = "checkpoint store"
    _schema = _SCHEMA
    _busy_seconds = 30.0

    @property
    def path(self) -> str:
        """The checkpoint file."""
        return self._path

    def _error(self, exc: sqlite3.Error) -> CheckpointError:
        return CheckpointError(
            f"checkpoint file {self._path!r} failed: {type(exc).__name__}", store="checkpoints"
        )

    async def begin_job(self, job: str, fingerprint: str, *, restart: bool = False) -> None:
        """Bind the job to its plan; ConfigurationError if it was planned differently."""

        def write() -> bool:
            db = self._db()
            with db:
                db.execute("BEGIN IMMEDIATE")
                if restart:
                    db.execute("DELETE FROM units WHERE job = ?", (job,))
                    db.execute("DELETE FROM jobs WHERE job = ?", (job,))
                row = db.execute("SELECT fingerprint FROM jobs WHERE job = ?", (job,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO jobs VALUES (?, ?, ?)", (job, fingerprint, time.time()))
                    return True
                return bool(row[0] == fingerprint)

        if not await self._run(write):
            raise _mismatch(job)

    async def job_fingerprint(self, job: str) -> str | None:
        """The job's plan fingerprint, or None (reads only)."""

        def read() -> str | None:
            row = self._db().execute("SELECT fingerprint FROM jobs WHERE job = ?", (job,))
            found = row.fetchone()
            return None if found is None else str(found[0])

        return await self._run(read)

    async def job(self, job: str) -> JobRecord | None:
        """The job's record, or None (reads only)."""
        found = await self._select_jobs(job=job)
        return found[0] if found else None

    async def jobs(self, *, fingerprint: str | None = None) -> list[JobRecord]:
        """Every job (or those of one plan), the newest first (reads only)."""
        return await self._select_jobs(fingerprint=fingerprint)

    async def _select_jobs(
        self, *, job: str | None = None, fingerprint: str | None = None
    ) -> list[JobRecord]:
        def read() -> list[JobRecord]:
            rows = self._db().execute(
                "SELECT j.job, j.fingerprint, j.created_at, COALESCE(SUM(u.state = 'done'), 0) "
                "FROM jobs AS j LEFT JOIN units AS u ON u.job = j.job "
                "WHERE (?1 IS NULL OR j.job = ?1) AND (?2 IS NULL OR j.fingerprint = ?2) "
                "GROUP BY j.job ORDER BY j.created_at DESC, j.job DESC",
                (job, fingerprint),
            )
            return [JobRecord(r[0], r[1], _utc(r[2]), int(r[3])) for r in rows]

        return await self._run(read)

    async def unit_started(self, job: str, unit_id: str) -> None:
        """Count a start, durably."""

        def write() -> None:
            db = self._db()
            with db:
                db.execute(
                    "INSERT INTO units (job, unit_id, state, starts, updated_at) "
                    "VALUES (?, ?, 'running', 1, ?) ON CONFLICT(job, unit_id) DO UPDATE SET "
                    "state = 'running', starts = starts + 1, error = NULL, "
                    "updated_at = excluded.updated_at",
                    (job, unit_id, time.time()),
                )

        await self._run(write)

    async def unit_done(
        self, job: str, unit_id: str, counts: Mapping[str, int], fields: Mapping[str, int]
    ) -> None:
        """Record completion with counts in one committed transaction."""
        counts_json = json.dumps(dict(counts), sort_keys=True)
        fields_json = json.dumps(dict(fields), sort_keys=True)

        def write() -> None:
            db = self._db()
            with db:
                db.execute(
                    "INSERT INTO units (job, unit_id, state, starts, counts, fields, updated_at) "
                    "VALUES (?, ?, 'done', 1, ?, ?, ?) ON CONFLICT(job, unit_id) DO UPDATE SET "
                    "state = 'done', counts = excluded.counts, fields = excluded.fields, "
                    "error = NULL, updated_at = excluded.updated_at",
                    (job, unit_id, counts_json, fields_json, time.time()),
                )

        await self._run(write)

    async def unit_failed(self, job: str, unit_id: str, error: str) -> None:
        """Record a failure; the unit runs again on resume."""

        def write() -> None:
            db = self._db()
            with db:
                db.execute(
                    "INSERT INTO units (job, unit_id, state, starts, error, updated_at) "
                    "VALUES (?, ?, 'failed', 1, ?, ?) ON CONFLICT(job, unit_id) DO UPDATE SET "
                    "state = 'failed', error = excluded.error, updated_at = excluded.updated_at",
                    (job, unit_id, error[:500], time.time()),
                )

        await self._run(write)

    async def units(self, job: str) -> dict[str, UnitRecord]:
        """Every unit recorded for the job."""

        def read() -> dict[str, UnitRecord]:
            rows = self._db().execute(
                "SELECT unit_id, state, starts, counts, fields, error FROM units WHERE job = ?",
                (job,),
            )
            return {
                r[0]: UnitRecord(r[0], UnitState(r[1]), int(r[2]), _load(r[3]), _load(r[4]), r[5])
                for r in rows
            }

        return await self._run(read)


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _load(text: str) -> dict[str, int]:
    try:
        data = json.loads(text)
    except ValueError:
        raise CheckpointError("checkpoint holds malformed counts", store="checkpoints") from None
    return collections.Counter({str(k): int(v) for k, v in data.items()})
