"""Revisions: the one number every write is ordered by, and the clock that issues them.

A revision is a positive 64-bit integer that reads as microseconds since the Unix epoch,
so it is also a valid Cassandra write timestamp and compares, to within a fraction of a
millisecond, with the ``WRITETIME`` of rows written before the library existed. Its low
:data:`WRITER_BITS` bits name the writer that issued it, so two writers never issue the
same revision, even when both must go above the same revision ``R`` they read::

    writer 7:  ...R rounded up... | 0000111     writer 9:  ...R rounded up... | 0001001

Writer 0 is reserved for the library's own re-stamping (:func:`restamp_revision`).

Every revision that enters the library (a session's ``revision``, ``delete(revision=...)``,
``expected_revision``, a backend call) is checked by :func:`check_revision`; the clock
additionally refuses revisions from the future (above now plus ``max_skew``), so no
input can push it out of range. Example::

    clock = HybridClock(writer_id=7)
    r = clock.next()
    assert r % 2**WRITER_BITS == 7 and clock.next(after=r) > r
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from sessionstore._errors import ConfigurationError, InvalidRevisionError

__all__ = [
    "DEFAULT_MAX_SKEW",
    "MAX_REVISION",
    "WRITER_BITS",
    "HybridClock",
    "Revision",
    "check_revision",
    "restamp_revision",
    "wall_clock_us",
]

#: The largest revision: the largest signed 64-bit integer (a CQL ``bigint`` timestamp).
MAX_REVISION = 2**63 - 1

#: Low bits of a revision that name its writer: 256 writer ids, one revision per writer
#: every 256 microseconds (3,906 per second) before the clock runs ahead of the wall.
WRITER_BITS = 8
_WRITERS = 1 << WRITER_BITS
_WRITER_MASK = _WRITERS - 1

#: How far ahead of this process's wall clock a revision may be and still be accepted.
DEFAULT_MAX_SKEW = dt.timedelta(seconds=60)

#: A revision as a pydantic field: 0 means "never saved"; stored ones are positive.
Revision = Annotated[int, Field(ge=0, le=MAX_REVISION)]


def check_revision(value: object, *, field: str = "revision", allow_zero: bool = False) -> int:
    """Return ``value`` if it is a revision (an int in ``[1, 2**63)``), else raise.

    ``allow_zero`` also accepts 0 ("never saved", "nothing stored").
    Raises :class:`~sessionstore.InvalidRevisionError` naming ``field``.

    >>> check_revision(5)
    5
    >>> check_revision(2**63)
    Traceback (most recent call last):
    ...
    sessionstore._errors.InvalidRevisionError: revision must be an int in [1, 2**63)
    """
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_REVISION:
        raise InvalidRevisionError(
            f"{field} must be an int in [{low}, 2**63)", fields=(field,), revision=None
        )
    return value


def restamp_revision(revision: int) -> int:
    """The smallest revision above ``revision`` that belongs to writer 0 (the library).

    Used to settle two different records stored at the same revision: it outranks both
    and, since no repository is writer 0, never equals a revision the service issues.

    >>> restamp_revision(1000) % 2**WRITER_BITS, restamp_revision(1000) > 1000
    (0, True)
    """
    return _slot_above(check_revision(revision), 0)


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch from the system clock."""
    return time.time_ns() // 1000


def _slot_above(floor: int, writer: int) -> int:
    """The smallest value above ``floor`` whose low bits are ``writer``."""
    candidate = (floor & ~_WRITER_MASK) | writer
    if candidate <= floor:
        candidate += _WRITERS
    if candidate > MAX_REVISION:
        raise InvalidRevisionError("revision space exhausted", fields=("revision",), revision=None)
    return candidate


class HybridClock:
    """A hybrid logical clock issuing unique revisions for one writer.

    ``next(after=r)`` is above the wall clock, above every revision this clock issued or
    observed, and above ``r``; its low bits are ``writer_id``. ``writer_id`` (1-255)
    should be unique across the processes writing at one time (for example from the pod
    ordinal); by default it is drawn at random, so two given processes share one with a
    chance of 1 in 255 (a tie is then reported as a conflict, never merged silently).

    ``max_skew`` bounds how far ahead of this clock's wall time a revision from outside
    may be: :meth:`check_input` refuses more, :meth:`observe` ignores more. ``time_source``
    (microseconds since the epoch) lets tests run many clocks, skewed, on simulated time.

    >>> c = HybridClock(writer_id=3); a = c.next(); c.next() > a
    True
    """

    def __init__(
        self,
        *,
        writer_id: int | None = None,
        max_skew: dt.timedelta = DEFAULT_MAX_SKEW,
        time_source: Callable[[], int] | None = None,
    ) -> None:
        if writer_id is None:
            writer_id = 1 + secrets.randbelow(_WRITERS - 1)
        if isinstance(writer_id, bool) or not isinstance(writer_id, int):
            raise ConfigurationError("writer_id must be an int")
        if not 1 <= writer_id < _WRITERS:
            raise ConfigurationError(f"writer_id must be between 1 and {_WRITERS - 1}")
        if not isinstance(max_skew, dt.timedelta) or max_skew <= dt.timedelta(0):
            raise ConfigurationError("max_skew must be a positive timedelta")
        self.writer_id = writer_id
        self.max_skew = max_skew
        self._skew_us = max_skew // dt.timedelta(microseconds=1)
        self._now = time_source or wall_clock_us
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """This clock's wall time, in microseconds since the epoch."""
        return self._now()

    def limit(self) -> int:
        """The largest revision accepted from outside now: wall time plus ``max_skew``.

        Revisions this clock issued or observed itself are accepted even above it (a
        writer that issued many revisions quickly runs a little ahead of its wall time).
        """
        return max(self._now() + self._skew_us, self._last)

    def check_input(self, revision: object, *, field: str = "revision") -> int:
        """``revision`` if it may be written now (0 allowed); else InvalidRevisionError.

        Refuses anything above :meth:`limit`, so that no input can carry this clock, or
        a stored session, far into the future.
        """
        value = check_revision(revision, field=field, allow_zero=True)
        if value > self.limit():
            raise InvalidRevisionError(
                f"{field} is more than {self.max_skew.total_seconds():g}s ahead of this "
                "process's clock (a writer with a clock far ahead, or a forged revision)",
                fields=(field,),
                revision=value,
            )
        return value

    def next(self, after: int = 0) -> int:
        """A fresh revision above ``after`` and above everything seen so far.

        ``after`` must have passed :meth:`check_input` (the repository does it).
        """
        now = self._now()
        with self._lock:
            self._last = _slot_above(max(now - 1, self._last, after), self.writer_id)
            return self._last

    def observe(self, revision: int) -> None:
        """Remember a revision read from a store, so later revisions exceed it.

        A revision beyond wall time plus ``max_skew`` is not taken over (it would carry
        this writer into the future); a save of that session then meets it as a conflict.
        """
        ceiling = self._now() + self._skew_us
        with self._lock:
            if self._last < revision <= ceiling:
                self._last = revision
