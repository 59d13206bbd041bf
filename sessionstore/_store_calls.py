"""How the repository calls a store: deadline, breaker, metrics, LaunchDarkly tracking.

Every store call of :class:`~sessionstore.SessionRepository` goes through
:meth:`StoreCalls.call`: it is refused at once while the store's breaker is open, cut at
its deadline, timed, reported to LaunchDarkly's tracker and to the metrics, and its
outcome feeds the breaker. Background work (shadow reads, comparisons, probes, repair
queueing) is tracked here so that closing the repository waits for it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sessionstore._errors import BackendTimeoutError, BackendUnavailableError
from sessionstore._telemetry import Telemetry
from sessionstore.backends.base import SessionBackend
from sessionstore.phases import PhaseDecision, Store
from sessionstore.resilience import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Timeouts,
)

__all__ = ["Deadline", "StoreCalls", "within"]

_T = TypeVar("_T")

# Store calls abandoned at their deadline that have not finished yet (see ``within``).
_abandoned: set[asyncio.Future[Any]] = set()


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's error is not logged as lost


async def within(call: Awaitable[_T], seconds: float) -> _T:
    """Await ``call`` for at most ``seconds``: past it, TimeoutError at once.

    The call runs in a task of its own, which is cancelled at the deadline (or when the
    caller is) and no longer waited for. A cancellation alone does not bound the wait:
    a driver may lose it and carry on until the server answers. PyMongo does on Python
    3.11, whose ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited
    condition is notified: a write to a frozen (SIGSTOPped) FerretDB then waited for its
    connection handshake, seconds past its deadline.
    """
    task = asyncio.ensure_future(call)
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            return await asyncio.shield(task)
    except BaseException:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
        raise


# Errors that say the store is unwell (they count towards its breaker). A refused
# request (BackendRejectedError), a conflict or bad input say nothing about its health.
_UNWELL = (BackendUnavailableError, BackendTimeoutError)


class Deadline:
    """The deadline of one repository call (``None``: none), on the monotonic clock."""

    __slots__ = ("at",)

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    def cut(self, limit: float) -> float:
        """``limit`` seconds, or less if the call's deadline comes first (may be <= 0)."""
        if self.at is None:
            return limit
        return min(limit, self.at - time.monotonic())


class StoreCalls:
    """The two stores with their breakers, and the repository's background tasks."""

    def __init__(
        self,
        backends: dict[Store, SessionBackend],
        *,
        telemetry: Telemetry,
        timeouts: Timeouts,
        policy: BreakerPolicy,
    ) -> None:
        self.backends = backends
        self.telemetry = telemetry
        self.timeouts = timeouts
        self.breakers = {
            store: CircuitBreaker(store.value, policy, on_change=self._breaker_changed)
            for store in backends
        }
        telemetry.watch_breakers(lambda: {s.value: b.state for s, b in self.breakers.items()})
        self.background: set[asyncio.Task[Any]] = set()

    def _breaker_changed(self, store: str, state: BreakerState) -> None:
        self.telemetry.breaker_changed(store, state.value)

    def available(self, store: Store) -> bool:
        """Whether calls may go to ``store`` now; starts a probe when one is due."""
        breaker = self.breakers[store]
        if breaker.allows_calls:
            return True
        if breaker.probe_due():
            self.spawn(self._probe(store))
        return False

    def refuse(self, store: Store, op: str, decision: PhaseDecision) -> CircuitOpenError:
        """The fail-fast error for a call to a store whose breaker is open."""
        decision.record_error(store)
        self.telemetry.operation(
            store.value, op, 0.0, decision.phase.value, CircuitOpenError.__name__
        )
        return CircuitOpenError(f"{op}: circuit breaker open, not sent", store=store.value)

    async def call(
        self,
        store: Store,
        op: str,
        make: Callable[[SessionBackend], Awaitable[_T]],
        decision: PhaseDecision,
        limit: float,
        *,
        deadline_counts: bool = True,
    ) -> _T:
        """Run ``make(backend)`` within ``limit`` seconds; the outcome feeds the breaker.

        ``deadline_counts=False`` (the background shadow reads): passing ``limit`` is not
        held against the store. Those reads queue up behind each other when the store is
        merely slow, and a breaker opened by them would fail the store's authoritative
        calls for the sessions of another phase.
        """
        decision.record_invoked(store)
        breaker = self.breakers[store]
        start = time.perf_counter()
        error: str | None = None
        try:
            result = await within(make(self.backends[store]), limit)
        except TimeoutError:
            error = "DeadlineExceeded"
            if deadline_counts:
                breaker.failed()
            raise BackendTimeoutError(
                f"{op} passed its {limit:.3g}s deadline", store=store.value
            ) from None
        except BaseException as exc:
            error = type(exc).__name__
            if isinstance(exc, _UNWELL):
                breaker.failed()
            raise
        else:
            breaker.succeeded()
            return result
        finally:
            elapsed = time.perf_counter() - start
            decision.record_latency(store, elapsed)
            if error is not None:
                decision.record_error(store)
            self.telemetry.operation(store.value, op, elapsed, decision.phase.value, error)

    async def _probe(self, store: Store) -> None:
        """One read-only call, off every caller's path: closes the breaker if it answers."""
        breaker = self.breakers[store]
        try:
            await within(self.backends[store].head(uuid.uuid4()), self.timeouts.read)
        except Exception:  # noqa: BLE001 - any failure keeps the breaker open
            breaker.failed()
        else:
            breaker.succeeded()

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``coro`` in the background; closing the repository waits for it."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def wait_background(self) -> None:
        """Wait until every background task started so far (and any they start) is done."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
