"""The repair queue: sessions whose two stores may differ, waiting for the worker.

An entry leaves the queue in one of two ways only: the worker acknowledges it (both
stores now agree), or the worker moves it to the *dead letters* (a conflict the revision
rule cannot settle, a deletion one store may have forgotten, or a copy that kept failing
for ``max_attempts``). Dead letters are kept, by session id, until a person looks at them
(``sessionstore repair --dead-letters``) and re-queues them. An acknowledgement or a dead
letter only removes the entry if nobody re-queued the session meanwhile, so a crash or a
race never loses a repair: at worst a session is repaired twice, which the revision rule
makes harmless.

Example::

    queue = InMemoryRepairQueue()
    await queue.enqueue(session_id, "secondary_write_failed")
    for task in await queue.claim(100):
        ...
        await queue.ack(task)
    stats = await queue.stats()
    assert stats.drained
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from sessionstore._errors import ConfigurationError
from sessionstore.backends.base import LifecycleMixin

__all__ = [
    "DeadLetter",
    "InMemoryRepairQueue",
    "QueueStats",
    "RepairQueue",
    "RepairTask",
]


@dataclasses.dataclass(frozen=True, slots=True)
class RepairTask:
    """One claimed session.

    ``attempts`` counts the failed attempts before this claim; ``token`` is what the
    queue needs to acknowledge this very claim (a generation, an SQS receipt handle).
    """

    session_id: uuid.UUID
    reason: str
    attempts: int
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A session the worker gave up on; ``reason`` says why (never session content)."""

    session_id: uuid.UUID
    reason: str
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """How many sessions are in each state of the queue."""

    #: Visible now: the next claim may take them.
    ready: int
    #: Claimed by a worker (leased), or waiting out a back-off after a failure.
    waiting: int
    #: Dead letters: kept for a person to look at.
    dead: int

    @property
    def pending(self) -> int:
        """Sessions still to repair (ready or waiting)."""
        return self.ready + self.waiting

    @property
    def drained(self) -> bool:
        """Nothing pending and no dead letter: both stores agree on every queued session."""
        return self.pending == 0 and self.dead == 0


@runtime_checkable
class RepairQueue(Protocol):
    """Durable set of sessions to repair, with leases so a crashed worker's tasks return."""

    async def enqueue(
        self, session_id: uuid.UUID, reason: str, *, delay_seconds: float = 0.0
    ) -> None:
        """Queue ``session_id``; a session queued (or dead) already is queued again.

        With ``delay_seconds`` no worker claims it before then: the repository delays the
        repair of a write it gave up on, which may still land in the store meanwhile.
        """
        ...

    async def claim(
        self, limit: int, *, lease_seconds: float = 60.0, wait_seconds: float = 0.0
    ) -> list[RepairTask]:
        """Lease up to ``limit`` ready tasks for ``lease_seconds``.

        With none ready, wait up to ``wait_seconds`` for one (a long poll).
        """
        ...

    async def ack(self, task: RepairTask) -> None:
        """Remove the task unless the session was re-queued after it was claimed."""
        ...

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Count a failed attempt; the task is ready again after ``delay_seconds``."""
        ...

    async def dead_letter(self, task: RepairTask, reason: str) -> None:
        """Move the task to the dead letters (unless re-queued after it was claimed)."""
        ...

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Up to ``limit`` dead letters."""
        ...

    async def requeue_dead(self, session_ids: Iterable[uuid.UUID] | None = None) -> int:
        """Queue dead letters again (all, or those of ``session_ids``); returns how many."""
        ...

    async def stats(self) -> QueueStats:
        """Counts by state."""
        ...

    async def depth(self) -> int:
        """Sessions still to repair (``stats().pending``)."""
        ...

    def cached_depth(self) -> int:
        """The pending count as of the last operation, for metrics (no I/O)."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


#: Seconds between polls of a queue that cannot block until a task is ready.
POLL_SECONDS = 0.2
#: The longest enqueue delay (SQS's own limit for DelaySeconds).
MAX_DELAY_SECONDS = 900.0


def check_delay(delay_seconds: float) -> float:
    """``delay_seconds`` if it is a number of seconds in ``[0, 900]``."""
    if isinstance(delay_seconds, bool) or not isinstance(delay_seconds, int | float):
        raise ConfigurationError("delay_seconds must be a number")
    if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
        raise ConfigurationError(f"delay_seconds must be between 0 and {MAX_DELAY_SECONDS:g}")
    return float(delay_seconds)


async def poll(
    lease: Callable[[], Awaitable[list[RepairTask]]], wait_seconds: float
) -> list[RepairTask]:
    """Call ``lease`` until it returns tasks or ``wait_seconds`` have passed."""
    deadline = time.monotonic() + wait_seconds
    while True:
        tasks = await lease()
        remaining = deadline - time.monotonic()
        if tasks or remaining <= 0:
            return tasks
        await asyncio.sleep(min(POLL_SECONDS, remaining))


@dataclasses.dataclass(slots=True)
class _Entry:
    reason: str
    generation: int
    attempts: int = 0
    visible_at: float = 0.0
    dead: str | None = None  # the dead-letter reason


class InMemoryRepairQueue(LifecycleMixin):
    """A repair queue in a dict: for tests and rehearsals (not durable)."""

    _lifecycle_name = "repair queue"

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._generation = 0

    def _current(self, task: RepairTask) -> _Entry | None:
        entry = self._entries.get(task.session_id)
        if entry is None or entry.dead is not None or str(entry.generation) != task.token:
            return None
        return entry

    async def enqueue(
        self, session_id: uuid.UUID, reason: str, *, delay_seconds: float = 0.0
    ) -> None:
        """Queue the session (again, if queued or dead), ready after ``delay_seconds``."""
        await self._ensure_open()
        self._generation += 1
        visible_at = time.time() + check_delay(delay_seconds)
        entry = self._entries.get(session_id)
        if entry is None:
            self._entries[session_id] = _Entry(reason, self._generation, visible_at=visible_at)
            return
        entry.generation, entry.visible_at = self._generation, visible_at
        if entry.dead is not None:
            entry.reason, entry.attempts, entry.dead = reason, 0, None

    async def claim(
        self, limit: int, *, lease_seconds: float = 60.0, wait_seconds: float = 0.0
    ) -> list[RepairTask]:
        """Lease up to ``limit`` ready tasks, oldest first (polling up to ``wait_seconds``)."""
        return await poll(lambda: self._lease(limit, lease_seconds), wait_seconds)

    async def _lease(self, limit: int, lease_seconds: float) -> list[RepairTask]:
        await self._ensure_open()
        now = time.time()
        ready = sorted(
            (
                (sid, e)
                for sid, e in self._entries.items()
                if e.dead is None and e.visible_at <= now
            ),
            key=lambda item: item[1].visible_at,
        )[:limit]
        tasks = []
        for sid, entry in ready:
            entry.visible_at = now + lease_seconds
            tasks.append(RepairTask(sid, entry.reason, entry.attempts, str(entry.generation)))
        return tasks

    async def ack(self, task: RepairTask) -> None:
        """Remove the task if its session was not re-queued since the claim."""
        await self._ensure_open()
        if self._current(task) is not None:
            del self._entries[task.session_id]

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Count the failed attempt; ready again after ``delay_seconds``."""
        await self._ensure_open()
        entry = self._current(task)
        if entry is not None:
            entry.attempts += 1
            entry.visible_at = time.time() + delay_seconds

    async def dead_letter(self, task: RepairTask, reason: str) -> None:
        """Keep the session as a dead letter with ``reason``."""
        await self._ensure_open()
        entry = self._current(task)
        if entry is not None:
            entry.dead = reason

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """The dead letters, up to ``limit``."""
        await self._ensure_open()
        dead = [
            DeadLetter(sid, e.dead, e.attempts)
            for sid, e in self._entries.items()
            if e.dead is not None
        ]
        return dead[:limit]

    async def requeue_dead(self, session_ids: Iterable[uuid.UUID] | None = None) -> int:
        """Queue dead letters again, with their attempts reset."""
        await self._ensure_open()
        wanted = None if session_ids is None else set(session_ids)
        count = 0
        for sid, entry in self._entries.items():
            if entry.dead is not None and (wanted is None or sid in wanted):
                entry.dead, entry.attempts, entry.visible_at = None, 0, time.time()
                count += 1
        return count

    async def stats(self) -> QueueStats:
        """Counts by state."""
        await self._ensure_open()
        now = time.time()
        ready = waiting = dead = 0
        for entry in self._entries.values():
            if entry.dead is not None:
                dead += 1
            elif entry.visible_at <= now:
                ready += 1
            else:
                waiting += 1
        return QueueStats(ready, waiting, dead)

    async def depth(self) -> int:
        """Sessions still to repair."""
        return (await self.stats()).pending

    def cached_depth(self) -> int:
        """The pending count (no I/O here)."""
        return sum(entry.dead is None for entry in self._entries.values())

    def pending(self) -> set[uuid.UUID]:
        """The session ids still to repair, for assertions in tests."""
        return {sid for sid, e in self._entries.items() if e.dead is None}

    def dead(self) -> dict[uuid.UUID, str]:
        """The dead letters' session ids and reasons, for assertions in tests."""
        return {sid: e.dead for sid, e in self._entries.items() if e.dead is not None}
