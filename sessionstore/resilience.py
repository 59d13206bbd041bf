"""Deadlines and circuit breakers: a slow or stopped store never holds the caller for long.

:class:`Timeouts` gives every kind of store call the repository makes its own deadline,
separate from the drivers' timeouts; one :class:`CircuitBreaker` per store stops
calling a store that keeps failing, until a background probe finds it answering again.

Example::

    repo = SessionRepository(..., timeouts=Timeouts(secondary_write=0.2),
                             breaker=BreakerPolicy(failures=5, open_seconds=10))
    await repo.get(session_id, timeout=1.5)      # a deadline for this whole call
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable

from sessionstore._errors import BackendUnavailableError, ConfigurationError

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "CircuitOpenError", "Timeouts"]

log = logging.getLogger(__name__)


def _check_seconds(value: float | None, what: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{what} must be a positive number of seconds")


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines of the repository's store calls, in seconds.

    - ``read``: the authoritative read. Past it the read answers from the other store
      where the phase allows a fallback, or fails with BackendTimeoutError.
    - ``write``: the authoritative write (and its read-back). Past it the call fails
      with BackendTimeoutError; the write may still land, so the key is queued.
    - ``secondary_write``: the secondary write. Past it the call returns the
      authoritative result and the key is queued for repair.
    - ``shadow_read``: the background read of the other store in compare phases.
      Past it the comparison is dropped (counted); the caller never waits for it.
    - ``call``: the whole call, None for no overall deadline (the per-call
      ``timeout=`` argument sets it for one call). Every step above is cut to what is
      left of it.

    The drivers' own timeouts (seconds by default) still apply underneath; these are
    what the caller can count on.
    """

    read: float = 2.0
    write: float = 5.0
    secondary_write: float = 0.5
    shadow_read: float = 0.5
    call: float | None = None

    def __post_init__(self) -> None:
        for name in ("read", "write", "secondary_write", "shadow_read"):
            _check_seconds(getattr(self, name), f"Timeouts.{name}", optional=False)
        _check_seconds(self.call, "Timeouts.call", optional=True)


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a store's breaker opens and how long it stays open before a probe.

    ``failures`` consecutive failures or deadlines (unavailable, timed out) open it;
    after ``open_seconds`` a background probe (a read of one key) runs, and the breaker
    closes when a probe succeeds. ``enabled=False`` never opens it.
    """

    failures: int = 5
    open_seconds: float = 5.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise ConfigurationError("BreakerPolicy.failures must be an int")
        if self.failures < 1:
            raise ConfigurationError("BreakerPolicy.failures must be at least 1")
        _check_seconds(self.open_seconds, "BreakerPolicy.open_seconds", optional=False)


class BreakerState(enum.StrEnum):
    """A circuit breaker's state."""

    #: Calls go to the store.
    CLOSED = "closed"
    #: The store is skipped (secondary) or fails fast (authoritative).
    OPEN = "open"
    #: A probe is running; calls are still skipped until it succeeds.
    PROBING = "probing"


class CircuitOpenError(BackendUnavailableError):
    """The store's circuit breaker is open: the call failed fast, nothing was sent."""


class CircuitBreaker:
    """Counts one store's consecutive failures and says whether to call it.

    Not thread-safe: one per repository, used from its event loop. ``on_change`` is
    called with each new state (the repository turns it into a metric and a log line).
    """

    def __init__(
        self,
        store: str,
        policy: BreakerPolicy,
        *,
        on_change: Callable[[str, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._on_change = on_change
        self._clock = clock

    @property
    def allows_calls(self) -> bool:
        """True while closed: calls go to the store."""
        return self.state is BreakerState.CLOSED

    def probe_due(self) -> bool:
        """True when open for ``open_seconds``: time for a probe (marks it as running)."""
        if self.state is not BreakerState.OPEN:
            return False
        if self._clock() - self._opened_at < self.policy.open_seconds:
            return False
        self._set(BreakerState.PROBING)
        return True

    def succeeded(self) -> None:
        """A call or a probe succeeded: close."""
        self.failures = 0
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failed(self) -> None:
        """A call or a probe failed with unavailability or a deadline."""
        self.failures += 1
        if not self.policy.enabled:
            return
        if self.state is BreakerState.PROBING or (
            self.state is BreakerState.CLOSED and self.failures >= self.policy.failures
        ):
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        self.state = state
        level = {BreakerState.OPEN: logging.WARNING, BreakerState.CLOSED: logging.INFO}
        log.log(level.get(state, logging.DEBUG), "circuit breaker of %s: %s", self.store, state)
        if self._on_change is not None:
            self._on_change(self.store, state)
