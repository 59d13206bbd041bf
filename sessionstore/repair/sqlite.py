"""A durable repair queue in a SQLite file: the embedded default for one process.

Every change is committed before the call returns (WAL journal, ``synchronous=FULL``),
so a process crash loses no queued repair. Calls run in a worker thread so the event
loop never waits on the disk. Enqueuing costs two indexed statements whatever the
queue's length (nothing counts the table on the write path).

A file on a pod's disk dies with the pod: for a fleet, use a shared queue
(:class:`~sessionstore.repair.sqs.SqsRepairQueue`).

Example::

    async with SqliteRepairQueue("repairs.db") as queue:
        await queue.enqueue(session_id, "secondary_write_failed")
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable

from sessionstore._errors import RepairQueueError
from sessionstore._sqlite import SqliteFile
from sessionstore.repair.queue import DeadLetter, QueueStats, RepairTask, check_delay, poll

__all__ = ["SqliteRepairQueue"]

# ``dead`` holds the dead-letter reason, NULL while the entry is pending. Claims read
# the pending entries in visible_at order through the partial index.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS repair_queue (
    session_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    generation INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    dead TEXT
);
CREATE INDEX IF NOT EXISTS repair_queue_ready ON repair_queue (visible_at) WHERE dead IS NULL;
"""


class SqliteRepairQueue(SqliteFile):
    """A repair queue that survives a crash. ``path`` is created if missing.

    Lease times use the wall clock, so leases taken by a crashed process expire even
    though that process is gone. Several processes on one host may share the file.
    """

    _lifecycle_name = "repair queue"
    _schema = _SCHEMA
    _busy_seconds = 10.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._pending = 0

    def _error(self, exc: sqlite3.Error) -> RepairQueueError:
        return RepairQueueError(f"repair queue failed: {type(exc).__name__}", store="repair-queue")

    async def _open(self) -> None:
        await super()._open()
        self._pending = (await self._run(self._count, opening=True)).pending

    def _count(self) -> QueueStats:
        now = time.time()
        row = (
            self._db()
            .execute(
                "SELECT coalesce(sum(dead IS NULL AND visible_at <= ?), 0), "
                "coalesce(sum(dead IS NULL AND visible_at > ?), 0), "
                "coalesce(sum(dead IS NOT NULL), 0) FROM repair_queue",
                (now, now),
            )
            .fetchone()
        )
        return QueueStats(int(row[0]), int(row[1]), int(row[2]))

    async def enqueue(
        self, session_id: uuid.UUID, reason: str, *, delay_seconds: float = 0.0
    ) -> None:
        """Queue the session durably (again, if queued or dead), ready after the delay."""
        key = str(session_id)
        delay = check_delay(delay_seconds)

        def write() -> int:
            db = self._db()
            now = time.time() + delay
            with db:  # one transaction
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR IGNORE INTO repair_queue (session_id, reason, generation, "
                    "visible_at) VALUES (?, ?, 1, ?)",
                    (key, reason, now),
                )
                if db.execute("SELECT changes()").fetchone()[0]:
                    return 1
                revived = db.execute(
                    "SELECT dead IS NOT NULL FROM repair_queue WHERE session_id = ?", (key,)
                ).fetchone()[0]
                db.execute(
                    "UPDATE repair_queue SET generation = generation + 1, visible_at = ?, "
                    "reason = CASE WHEN dead IS NULL THEN reason ELSE ? END, "
                    "attempts = CASE WHEN dead IS NULL THEN attempts ELSE 0 END, dead = NULL "
                    "WHERE session_id = ?",
                    (now, reason, key),
                )
                return int(revived)

        self._pending += await self._run(write)

    async def claim(
        self, limit: int, *, lease_seconds: float = 60.0, wait_seconds: float = 0.0
    ) -> list[RepairTask]:
        """Lease up to ``limit`` ready tasks, oldest first (polling up to ``wait_seconds``)."""

        def lease() -> list[RepairTask]:
            db = self._db()
            now = time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    "SELECT session_id, reason, generation, attempts FROM repair_queue "
                    "WHERE dead IS NULL AND visible_at <= ? ORDER BY visible_at LIMIT ?",
                    (now, limit),
                ).fetchall()
                db.executemany(
                    "UPDATE repair_queue SET visible_at = ? WHERE session_id = ?",
                    [(now + lease_seconds, row[0]) for row in rows],
                )
            return [RepairTask(uuid.UUID(r[0]), r[1], r[3], str(r[2])) for r in rows]

        return await poll(lambda: self._run(lease), wait_seconds)

    async def ack(self, task: RepairTask) -> None:
        """Remove the task unless the session was re-queued after the claim."""

        def delete() -> int:
            db = self._db()
            with db:
                cursor = db.execute(
                    "DELETE FROM repair_queue WHERE session_id = ? AND generation = ? "
                    "AND dead IS NULL",
                    (str(task.session_id), int(task.token)),
                )
            return cursor.rowcount

        self._pending -= await self._run(delete)

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Count the failed attempt; ready again after ``delay_seconds``."""

        def update() -> None:
            db = self._db()
            with db:
                db.execute(
                    "UPDATE repair_queue SET attempts = attempts + 1, visible_at = ? "
                    "WHERE session_id = ? AND generation = ? AND dead IS NULL",
                    (time.time() + delay_seconds, str(task.session_id), int(task.token)),
                )

        await self._run(update)

    async def dead_letter(self, task: RepairTask, reason: str) -> None:
        """Keep the session as a dead letter, unless re-queued after the claim."""

        def update() -> int:
            db = self._db()
            with db:
                cursor = db.execute(
                    "UPDATE repair_queue SET dead = ? "
                    "WHERE session_id = ? AND generation = ? AND dead IS NULL",
                    (reason, str(task.session_id), int(task.token)),
                )
            return cursor.rowcount

        self._pending -= await self._run(update)

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Up to ``limit`` dead letters."""

        def select() -> list[DeadLetter]:
            rows = (
                self._db()
                .execute(
                    "SELECT session_id, dead, attempts FROM repair_queue "
                    "WHERE dead IS NOT NULL ORDER BY session_id LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
            return [DeadLetter(uuid.UUID(r[0]), r[1], r[2]) for r in rows]

        return await self._run(select)

    async def requeue_dead(self, session_ids: Iterable[uuid.UUID] | None = None) -> int:
        """Queue dead letters again (attempts reset); returns how many."""
        keys = None if session_ids is None else [(str(s),) for s in session_ids]

        def update() -> int:
            db = self._db()
            sql = "UPDATE repair_queue SET dead = NULL, attempts = 0, visible_at = ? "
            with db:
                if keys is None:
                    return db.execute(sql + "WHERE dead IS NOT NULL", (time.time(),)).rowcount
                now = time.time()
                before = db.total_changes
                db.executemany(
                    sql + "WHERE dead IS NOT NULL AND session_id = ?",
                    [(now, key[0]) for key in keys],
                )
                return db.total_changes - before

        count = await self._run(update)
        self._pending += count
        return count

    async def stats(self) -> QueueStats:
        """Counts by state (one pass over the table: for reports, not the write path)."""
        stats = await self._run(self._count)
        self._pending = stats.pending
        return stats

    async def depth(self) -> int:
        """Sessions still to repair."""
        return (await self.stats()).pending

    def cached_depth(self) -> int:
        """The pending count as this process last saw it (no I/O)."""
        return self._pending
