"""An in-memory backend that obeys the same contract as the real stores.

Shipped for users' unit tests and for ``sessionstore rehearse``. Example::

    from sessionstore.backends import InMemoryBackend
    async with InMemoryBackend(name="cassandra") as store:
        assert await store.get(some_id) is None
"""

from __future__ import annotations

import bisect
import uuid

from sessionstore._errors import ConfigurationError, InvalidSessionError
from sessionstore.backends.base import (
    UUID_KEY_SPACE,
    KeyRange,
    LifecycleMixin,
    RecordHead,
    ScanPage,
    StoredRecord,
    WriteResult,
    check_expected,
    expectation_met,
)
from sessionstore.model import StudentSession, validate_session_id
from sessionstore.revision import check_revision

__all__ = ["InMemoryBackend"]


class InMemoryBackend(LifecycleMixin):
    """A dict of records keyed by session id, with the revision rule and tombstones.

    ``records()`` exposes a snapshot for assertions in tests.
    """

    def __init__(self, *, name: str = "memory") -> None:
        self._name = name
        self._lifecycle_name = f"backend {name!r}"
        self._records: dict[uuid.UUID, StoredRecord] = {}
        self._order: list[int] = []  # sorted uuid ints, for range scans

    @property
    def name(self) -> str:
        """The store name used in metrics and errors."""
        return self._name

    @property
    def key_space(self) -> KeyRange:
        """UUID value order, like DocumentDB's ``_id`` order."""
        return UUID_KEY_SPACE

    def records(self) -> dict[uuid.UUID, StoredRecord]:
        """A snapshot of everything stored (tombstones included)."""
        return dict(self._records)

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """The stored record, or None."""
        key = validate_session_id(session_id)
        await self._ensure_open()
        return self._records.get(key)

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """The stored revision and tombstone flag, or None."""
        record = await self.get(session_id)
        return None if record is None else RecordHead(record.revision, record.deleted)

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Store ``session`` if its revision is newer (and it is the expected successor)."""
        if not isinstance(session, StudentSession):
            raise InvalidSessionError(
                f"expected StudentSession, got {type(session).__name__}", fields=("<root>",)
            )
        check_revision(session.revision)
        check_expected(expected_revision)
        await self._ensure_open()
        return self._put(StoredRecord.of(session.model_copy(deep=True)), expected_revision)

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Write a tombstone at ``revision`` if it is newer than what is stored."""
        key = validate_session_id(session_id)
        check_revision(revision)
        check_expected(expected_revision)
        await self._ensure_open()
        return self._put(StoredRecord.tombstone(key, revision), expected_revision)

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Forget the key if its stored revision is at most ``revision``."""
        key = validate_session_id(session_id)
        check_revision(revision)
        await self._ensure_open()
        current = self._records.get(key)
        if current is not None and current.revision <= revision:
            del self._records[key]
            del self._order[bisect.bisect_left(self._order, key.int)]

    def _put(self, record: StoredRecord, expected: int | None) -> WriteResult:
        current = self._records.get(record.session_id)
        head = None if current is None else RecordHead(current.revision, current.deleted)
        if (current is not None and current.revision >= record.revision) or (
            expected is not None and not expectation_met(head, expected)
        ):
            return WriteResult(False, 0 if current is None else current.revision)
        if current is None:
            bisect.insort(self._order, record.session_id.int)
        self._records[record.session_id] = record
        return WriteResult(True)

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Records in ``key_range`` in UUID order; ``cursor`` is the last key's hex."""
        await self._ensure_open()
        if limit < 1:
            raise ConfigurationError("limit must be at least 1")
        lo = key_range.start if cursor is None else _parse_cursor(cursor) + 1
        start = bisect.bisect_left(self._order, lo)
        stop = bisect.bisect_left(self._order, key_range.end)
        keys = self._order[start : min(stop, start + limit)]
        records = tuple(self._records[uuid.UUID(int=k)] for k in keys)
        more = start + limit < stop
        return ScanPage(records, format(keys[-1], "032x") if more and keys else None)


def _parse_cursor(cursor: str) -> int:
    try:
        return int(cursor, 16)
    except ValueError:
        raise ConfigurationError("malformed scan cursor") from None
