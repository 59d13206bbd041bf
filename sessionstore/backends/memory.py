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
    ScanPage,
    StoredRecord,
)
from sessionstore.model import StudentSession

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
        await self._ensure_open()
        return self._records.get(session_id)

    async def save(self, session: StudentSession) -> None:
        """Store ``session`` if its revision is newer than what is stored."""
        await self._ensure_open()
        if session.revision <= 0:
            raise InvalidSessionError("a stored session needs a revision", fields=("revision",))
        self._put(StoredRecord.of(session.model_copy(deep=True)))

    async def delete(self, session_id: uuid.UUID, revision: int) -> None:
        """Write a tombstone at ``revision`` if it is newer than what is stored."""
        await self._ensure_open()
        if revision <= 0:
            raise InvalidSessionError("a tombstone needs a revision", fields=("revision",))
        self._put(StoredRecord.tombstone(session_id, revision))

    def _put(self, record: StoredRecord) -> None:
        current = self._records.get(record.session_id)
        if current is None:
            bisect.insort(self._order, record.session_id.int)
        elif current.revision >= record.revision:
            return
        self._records[record.session_id] = record

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
