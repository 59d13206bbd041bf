"""A durable repair queue in a SQLite file: the embedded default.

Every change is committed before the call returns (WAL journal, ``synchronous=FULL``),
so a process crash loses no queued repair. Calls run in a worker thread so the event
loop never waits on the disk.

Example::

    async with SqliteRepairQueue("repairs.db") as queue:
        await queue.enqueue(session_id, "secondary_write_failed")
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid

from sessionstore._errors import RepairQueueError
from sessionstore._sqlite import SqliteFile
from sessionstore.repair.queue import RepairTask

__all__ = ["SqliteRepairQueue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repairs (
    session_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    generation INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS repairs_visible ON repairs (visible_at, generation);
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER);
INSERT OR IGNORE INTO counter VALUES (0, 0);
"""


class SqliteRepairQueue(SqliteFile):
    """A repair queue that survives a crash. ``path`` is created if missing.

    Lease times use the wall clock, so leases taken by a crashed process expire even
    though that process is gone.
    """

    _lifecycle_name = "repair queue"
    _schema = _SCHEMA
    _busy_seconds = 10.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._depth = 0

    def _error(self, exc: sqlite3.Error) -> RepairQueueError:
        return RepairQueueError(f"repair queue failed: {type(exc).__name__}", store="repair-queue")

    async def _open(self) -> None:
        await super()._open()

        def count() -> int:
            return int(self._db().execute("SELECT count(*) FROM repairs").fetchone()[0])

        self._depth = await self._run(count, opening=True)

    async def enqueue(self, session_id: uuid.UUID, reason: str) -> None:
        """Queue the session durably; re-queuing bumps its generation."""

        def write() -> int:
            db = self._db()
            with db:  # one transaction: the counter and the row move together
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE counter SET value = value + 1 WHERE id = 0")
                gen = db.execute("SELECT value FROM counter WHERE id = 0").fetchone()[0]
                db.execute(
                    "INSERT INTO repairs (session_id, reason, generation) VALUES (?, ?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET generation = excluded.generation, "
                    "visible_at = 0",
                    (str(session_id), reason, gen),
                )
            return int(db.execute("SELECT count(*) FROM repairs").fetchone()[0])

        self._depth = await self._run(write)

    async def claim(self, limit: int, *, lease_seconds: float = 60.0) -> list[RepairTask]:
        """Lease up to ``limit`` visible tasks, oldest first."""

        def lease() -> list[RepairTask]:
            db = self._db()
            now = time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    "SELECT session_id, reason, generation, attempts FROM repairs "
                    "WHERE visible_at <= ? ORDER BY generation LIMIT ?",
                    (now, limit),
                ).fetchall()
                db.executemany(
                    "UPDATE repairs SET visible_at = ? WHERE session_id = ?",
                    [(now + lease_seconds, row[0]) for row in rows],
                )
            return [RepairTask(uuid.UUID(r[0]), r[1], r[2], r[3]) for r in rows]

        return await self._run(lease)

    async def ack(self, task: RepairTask) -> None:
        """Remove the task unless the session was re-queued after the claim."""

        def delete() -> int:
            db = self._db()
            with db:
                db.execute(
                    "DELETE FROM repairs WHERE session_id = ? AND generation = ?",
                    (str(task.session_id), task.generation),
                )
            return int(db.execute("SELECT count(*) FROM repairs").fetchone()[0])

        self._depth = await self._run(delete)

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Make the task visible again after ``delay_seconds``, counting the attempt."""

        def update() -> None:
            db = self._db()
            with db:
                db.execute(
                    "UPDATE repairs SET attempts = attempts + 1, visible_at = ? "
                    "WHERE session_id = ? AND generation = ?",
                    (time.time() + delay_seconds, str(task.session_id), task.generation),
                )

        await self._run(update)

    async def depth(self) -> int:
        """How many sessions are queued."""

        def count() -> int:
            return int(self._db().execute("SELECT count(*) FROM repairs").fetchone()[0])

        self._depth = await self._run(count)
        return self._depth

    def cached_depth(self) -> int:
        """The depth as of the last operation (no I/O)."""
        return self._depth
