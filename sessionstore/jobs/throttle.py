"""Throttling for jobs that run beside production traffic.

- :class:`RateLimiter`: a token bucket in sessions per second. It is *adaptive*: every
  timeout or overload answer halves the current rate (down to a floor), and the rate
  then climbs back linearly to the configured ceiling over ``recovery_seconds``. A
  struggling cluster thus sees the job's load drop at once, and return gradually.
- :class:`RetryPolicy` and :class:`Throttle.call`: bounded retries with exponential
  back-off and jitter on :class:`~sessionstore.BackendTimeoutError` and
  :class:`~sessionstore.BackendUnavailableError` only; any other error is not retried.

Example::

    throttle = Throttle(RateLimiter(500.0), RetryPolicy(attempts=6))
    await throttle.limiter.acquire(100)              # before reading 100 sessions
    page = await throttle.call(lambda: store.scan(rng, limit=100))
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sessionstore._errors import BackendTimeoutError, BackendUnavailableError, ConfigurationError

__all__ = ["RETRYABLE", "RateLimiter", "RetryPolicy", "Throttle"]

_T = TypeVar("_T")

#: The errors that mean "the store is struggling": back off and retry.
RETRYABLE: tuple[type[Exception], ...] = (BackendTimeoutError, BackendUnavailableError)


class RateLimiter:
    """An adaptive token bucket; ``rate=None`` means unlimited.

    ``acquire(n)`` waits until the bucket is not in debt, then takes ``n`` tokens (the
    bucket may go into debt, so a page larger than one second's worth still passes, and
    the long-run rate stays exact). The bucket holds at most one second of tokens.

    >>> import asyncio
    >>> limiter = RateLimiter(1000.0)
    >>> asyncio.run(limiter.acquire(10)); limiter.current_rate
    1000.0
    >>> limiter.back_off(); round(limiter.current_rate)
    500
    """

    def __init__(
        self,
        rate: float | None,
        *,
        floor_ratio: float = 0.05,
        recovery_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ConfigurationError("rate must be positive (sessions per second)")
        if not 0 < floor_ratio <= 1 or recovery_seconds <= 0:
            raise ConfigurationError("floor_ratio must be in (0, 1], recovery_seconds positive")
        self._max = rate
        self._floor = None if rate is None else rate * floor_ratio
        self._recovery = recovery_seconds
        self._clock = clock
        self._current = rate
        self._tokens = 0.0 if rate is None else rate
        self._stamp = clock()
        self._lock = asyncio.Lock()
        #: How many times back_off() lowered the rate.
        self.back_offs = 0

    @property
    def rate(self) -> float | None:
        """The configured ceiling (sessions/s), or None for unlimited."""
        return self._max

    @property
    def current_rate(self) -> float | None:
        """The rate in force now, after back-offs and recovery."""
        self._refill()
        return self._current

    def _refill(self) -> None:
        if self._max is None or self._current is None:
            return
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._current = min(self._max, self._current + self._max * elapsed / self._recovery)
        self._tokens = min(self._current, self._tokens + elapsed * self._current)

    def back_off(self) -> None:
        """Halve the current rate (not below the floor): the store answered "too busy"."""
        self.back_offs += 1
        if self._current is None or self._floor is None:
            return
        self._refill()
        self._current = max(self._floor, self._current / 2)
        self._tokens = min(self._tokens, self._current)

    async def acquire(self, n: int = 1) -> None:
        """Take ``n`` tokens, waiting while the bucket is in debt."""
        if self._max is None or n <= 0:
            return
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 0:
                    self._tokens -= n
                    return
                assert self._current is not None
                await asyncio.sleep(-self._tokens / self._current)

    def refund(self, n: int) -> None:
        """Give back tokens taken for sessions that did not exist (a short last page)."""
        if self._max is not None and n > 0:
            self._tokens = min(self._tokens + n, self._current or 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries: delay ``d = min(max_delay, base_delay * 2**attempt)``, then a
    random wait in ``[d/2, d]`` (equal jitter, so retrying workers spread out).

    >>> RetryPolicy(attempts=3, base_delay=1.0).delay(2, random.Random(0)) <= 4.0
    True
    """

    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigurationError("retry policy needs attempts >= 1, 0 <= base <= max")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Throttle:
    """A rate limiter and a retry policy shared by every worker of one job.

    ``retries`` counts retried calls (for reports).
    """

    def __init__(
        self,
        limiter: RateLimiter | None = None,
        policy: RetryPolicy | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.limiter = limiter or RateLimiter(None)
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self.retries = 0

    async def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``fn()``, retrying timeouts and overloads with back-off; re-raise the last.

        ``fn`` is called anew for every attempt (pass a lambda, not a coroutine).
        """
        attempt = 0
        while True:
            try:
                return await fn()
            except RETRYABLE:
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise
                self.retries += 1
                self.limiter.back_off()
                await asyncio.sleep(self.policy.delay(attempt - 1, self._rng))
