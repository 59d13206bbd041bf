"""The repair queue: sessions whose two stores may differ, waiting for the worker.

An entry is removed only when the worker acknowledges it, and an acknowledgement only
removes the entry if nobody re-queued the session meanwhile (its ``generation`` is
unchanged), so a crash or a race never loses a repair: at worst a session is repaired
twice, which the revision rule makes harmless.

Example::

    queue = InMemoryRepairQueue()
    await queue.enqueue(session_id, "secondary_write_failed")
    for task in await queue.claim(100):
        ...
        await queue.ack(task)
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from sessionstore.backends.base import LifecycleMixin

__all__ = ["InMemoryRepairQueue", "RepairQueue", "RepairTask"]


@dataclasses.dataclass(frozen=True, slots=True)
class RepairTask:
    """One queued session. ``generation`` changes each time the session is re-queued."""

    session_id: uuid.UUID
    reason: str
    generation: int
    attempts: int = 0


@runtime_checkable
class RepairQueue(Protocol):
    """Durable set of sessions to repair, with leases so a crashed worker's tasks return."""

    async def enqueue(self, session_id: uuid.UUID, reason: str) -> None:
        """Queue ``session_id`` (once: re-queuing bumps its generation)."""
        ...

    async def claim(self, limit: int, *, lease_seconds: float = 60.0) -> list[RepairTask]:
        """Lease up to ``limit`` tasks that are not leased by another worker."""
        ...

    async def ack(self, task: RepairTask) -> None:
        """Remove the task unless the session was re-queued after it was claimed."""
        ...

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Return a failed task to the queue, visible again after ``delay_seconds``."""
        ...

    async def depth(self) -> int:
        """How many sessions are queued."""
        ...

    def cached_depth(self) -> int:
        """The depth as of the last operation, for metrics (no I/O)."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclasses.dataclass(slots=True)
class _Entry:
    reason: str
    generation: int
    attempts: int = 0
    visible_at: float = 0.0


class InMemoryRepairQueue(LifecycleMixin):
    """A repair queue in a dict: for tests and rehearsals (not durable)."""

    _lifecycle_name = "repair queue"

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._generation = 0

    async def enqueue(self, session_id: uuid.UUID, reason: str) -> None:
        """Queue the session; if already queued, bump its generation and make it visible."""
        await self._ensure_open()
        self._generation += 1
        entry = self._entries.get(session_id)
        if entry is None:
            self._entries[session_id] = _Entry(reason, self._generation)
        else:
            entry.generation, entry.visible_at = self._generation, 0.0

    async def claim(self, limit: int, *, lease_seconds: float = 60.0) -> list[RepairTask]:
        """Lease up to ``limit`` visible tasks, oldest generation first."""
        await self._ensure_open()
        now = time.monotonic()
        visible = sorted(
            ((sid, e) for sid, e in self._entries.items() if e.visible_at <= now),
            key=lambda item: item[1].generation,
        )[:limit]
        tasks = []
        for sid, entry in visible:
            entry.visible_at = now + lease_seconds
            tasks.append(RepairTask(sid, entry.reason, entry.generation, entry.attempts))
        return tasks

    async def ack(self, task: RepairTask) -> None:
        """Remove the task if its generation is unchanged."""
        await self._ensure_open()
        entry = self._entries.get(task.session_id)
        if entry is not None and entry.generation == task.generation:
            del self._entries[task.session_id]

    async def retry(self, task: RepairTask, *, delay_seconds: float) -> None:
        """Make the task visible again after ``delay_seconds``."""
        await self._ensure_open()
        entry = self._entries.get(task.session_id)
        if entry is not None and entry.generation == task.generation:
            entry.attempts += 1
            entry.visible_at = time.monotonic() + delay_seconds

    async def depth(self) -> int:
        """How many sessions are queued."""
        await self._ensure_open()
        return len(self._entries)

    def cached_depth(self) -> int:
        """The current depth (no I/O here)."""
        return len(self._entries)

    def pending(self) -> set[uuid.UUID]:
        """The queued session ids, for assertions in tests."""
        return set(self._entries)
