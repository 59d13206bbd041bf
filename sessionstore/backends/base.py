"""The backend protocol every store implements, and the records it exchanges.

A backend is a small async object: ``get`` and ``head`` (the stored revision only),
``save`` (if newer), ``delete`` (a tombstone, if newer), ``purge`` (forget a key),
``scan`` of a key range in pages, and ``aclose``. Every write obeys the one rule of the
design: it lands only if its revision is greater than the stored one (a record or a
tombstone); otherwise it is a no-op, reported in the returned :class:`WriteResult`
where the store can tell. With ``expected_revision`` a write also lands only if the
stored record is the one the caller read (optimistic concurrency).

Example::

    async with InMemoryBackend() as store:
        await store.save(session.model_copy(update={"revision": 10}))
        record = await store.get(session.session_id)
        assert record is not None and record.revision == 10
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import uuid
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from sessionstore._errors import ConfigurationError, RepositoryClosedError
from sessionstore.model import StudentSession
from sessionstore.revision import check_revision

__all__ = [
    "UUID_KEY_SPACE",
    "BackendState",
    "KeyRange",
    "LifecycleMixin",
    "RecordHead",
    "ScanPage",
    "SessionBackend",
    "StoredRecord",
    "WriteResult",
    "check_expected",
    "copy_record",
    "expectation_met",
]


@dataclasses.dataclass(frozen=True, slots=True)
class StoredRecord:
    """What a store holds for one key: a session, or a tombstone (``session is None``)."""

    session_id: uuid.UUID
    revision: int
    session: StudentSession | None

    @property
    def deleted(self) -> bool:
        """True for a tombstone."""
        return self.session is None

    @classmethod
    def of(cls, session: StudentSession) -> StoredRecord:
        """The record for a live session."""
        return cls(session.session_id, session.revision, session)

    @classmethod
    def tombstone(cls, session_id: uuid.UUID, revision: int) -> StoredRecord:
        """The record for a deletion at ``revision``."""
        return cls(session_id, revision, None)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordHead:
    """The stored revision of a key and whether it is a tombstone (no session content)."""

    revision: int
    deleted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WriteResult:
    """What a conditional write did.

    ``applied`` is True when the write landed (its revision is now the stored one),
    False when it did not (an equal or newer revision is stored, or, with
    ``expected_revision``, another record than the expected one), and None when the
    store cannot tell without reading (a plain Cassandra write: Cassandra applies it
    cell by cell, by timestamp, and answers the same either way).
    ``current_revision`` is the stored revision when the write did not land and the
    store knows it (0: nothing stored).
    """

    applied: bool | None
    current_revision: int | None = None


def expectation_met(head: RecordHead | None, expected_revision: int) -> bool:
    """Whether what is stored is what a writer expecting ``expected_revision`` read.

    ``expected_revision`` is the revision of the live session the writer read, or 0 when
    it read none (nothing stored, or a tombstone).

    >>> expectation_met(None, 0), expectation_met(RecordHead(7, deleted=True), 0)
    (True, True)
    >>> expectation_met(RecordHead(7, deleted=False), 7), expectation_met(None, 7)
    (True, False)
    """
    if expected_revision == 0:
        return head is None or head.deleted
    return head is not None and not head.deleted and head.revision == expected_revision


def check_expected(expected_revision: object) -> int | None:
    """Validate an ``expected_revision`` argument (None, 0, or a revision)."""
    if expected_revision is None:
        return None
    return check_revision(expected_revision, field="expected_revision", allow_zero=True)


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class KeyRange:
    """A half-open range ``[start, end)`` in a backend's own key order.

    Cassandra orders keys by Murmur3 token (``-2**63 .. 2**63``); DocumentDB and the
    in-memory store by the UUID's 128-bit value. Ranges are plain integers so that a
    unit of migration work serializes to JSON.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ConfigurationError(f"empty key range [{self.start}, {self.end})")

    def split(self, parts: int) -> list[KeyRange]:
        """Split into ``parts`` contiguous ranges that cover this one exactly."""
        if parts < 1:
            raise ConfigurationError("parts must be at least 1")
        width = self.end - self.start
        parts = min(parts, width)
        bounds = [self.start + (width * i) // parts for i in range(parts)] + [self.end]
        return [KeyRange(a, b) for a, b in itertools.pairwise(bounds)]

    def __contains__(self, point: object) -> bool:
        return isinstance(point, int) and self.start <= point < self.end


#: The key space of stores ordered by UUID value (in-memory, DocumentDB).
UUID_KEY_SPACE = KeyRange(0, 2**128)


@dataclasses.dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a range scan. ``cursor`` resumes after it; None when the range is done."""

    records: tuple[StoredRecord, ...]
    cursor: str | None

    def __iter__(self) -> Iterator[StoredRecord]:
        return iter(self.records)


@runtime_checkable
class SessionBackend(Protocol):
    """The async protocol of one store. See the module docstring for the revision rule."""

    @property
    def name(self) -> str:
        """Short store name used in metrics and errors, e.g. ``"cassandra"``."""
        ...

    @property
    def key_space(self) -> KeyRange:
        """The whole key space of this store, for splitting into scan ranges."""
        ...

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """The stored record (tombstones included), or None if nothing is stored."""
        ...

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """The stored revision and tombstone flag only (a cheap read), or None."""
        ...

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Store ``session`` if its revision is greater than the stored one.

        With ``expected_revision``, also only if :func:`expectation_met` holds for the
        stored record (atomically where the store can; see each backend).
        """
        ...

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Write a tombstone at ``revision`` if it is greater than the stored one."""
        ...

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Forget the key if what is stored has a revision of at most ``revision``.

        Only :class:`~sessionstore.jobs.PurgeJob` calls it, once both stores hold the
        deletion and it is older than the tombstone grace period.
        """
        ...

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Up to ``limit`` records in ``key_range`` (tombstones included), in key order."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BackendState(enum.Enum):
    """Lifecycle of a backend, queue or repository."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class LifecycleMixin:
    """``async with`` support and a closed-state guard shared by the implementations.

    The first call opens the object once, even when several calls arrive together; a
    close that lands while it is opening wins.
    """

    _state: BackendState = BackendState.UNOPENED
    _lifecycle_name: str = "object"
    _lifecycle_lock: asyncio.Lock | None = None

    async def _open(self) -> None:
        """Connect; called once on first use or on ``__aenter__``."""

    async def _close(self) -> None:
        """Disconnect; called once by ``aclose`` if the object was opened."""

    def _is(self, state: BackendState) -> bool:
        # A method, so that type checkers do not narrow the state across awaits.
        return self._state is state

    async def _ensure_open(self) -> None:
        if self._is(BackendState.OPEN):
            return
        if self._lifecycle_lock is None:
            self._lifecycle_lock = asyncio.Lock()
        async with self._lifecycle_lock:
            if self._is(BackendState.UNOPENED):
                await self._open()
                if self._is(BackendState.CLOSED):
                    await self._close()  # aclose() ran while _open awaited: undo it
                else:
                    self._state = BackendState.OPEN
        if not self._is(BackendState.OPEN):
            raise RepositoryClosedError(f"{self._lifecycle_name} is closed")

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release resources; later calls raise RepositoryClosedError. Idempotent."""
        if self._is(BackendState.CLOSED):
            return
        was_open = self._is(BackendState.OPEN)
        self._state = BackendState.CLOSED
        if was_open:
            await self._close()


async def copy_record(
    record: StoredRecord,
    target: SessionBackend,
    *,
    request: Callable[[Callable[[], Awaitable[WriteResult]]], Awaitable[WriteResult]] | None = None,
) -> WriteResult:
    """Write ``record`` to ``target`` with its own revision (a no-op if the target is newer).

    ``request`` wraps the store call (the jobs pass their throttled retrier).
    """
    if record.session is None:
        sid, revision = record.session_id, record.revision

        def call() -> Awaitable[WriteResult]:
            return target.delete(sid, revision)
    else:
        session = record.session
        if session.revision != record.revision:
            session = session.model_copy(update={"revision": record.revision})

        def call() -> Awaitable[WriteResult]:
            return target.save(session)

    return await (call() if request is None else request(call))
