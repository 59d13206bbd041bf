"""The revision clock: microseconds since the epoch, never repeating, never going back."""

from __future__ import annotations

import threading
import time

__all__ = ["HybridClock"]


class HybridClock:
    """A hybrid logical clock in microseconds (a valid Cassandra write timestamp).

    ``next(after=r)`` is greater than the wall clock's last reading, every revision this
    clock issued or observed, and ``r``, so a save always outranks what it replaces even
    when another writer's clock runs ahead.

    >>> c = HybridClock(); a = c.next(); c.next() > a
    True
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    @staticmethod
    def _now_us() -> int:
        return time.time_ns() // 1000

    def next(self, after: int = 0) -> int:
        """A fresh revision above ``after`` and above everything seen so far."""
        now = self._now_us()
        with self._lock:
            self._last = max(now, self._last + 1, after + 1)
            return self._last

    def observe(self, revision: int) -> None:
        """Remember a revision read from a store, so later revisions exceed it."""
        with self._lock:
            self._last = max(self._last, revision)
