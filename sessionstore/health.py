"""Health: is each store answering, are the breakers closed, is the repair queue draining.

:meth:`SessionRepository.health` builds a :class:`HealthReport` with read-only probes:
one read of a random key per store and the queue's counts, each within a deadline.
Nothing is written, no index is created.

Example::

    report = await repo.health()
    if not report.healthy:
        log.warning("sessionstore: %s", report.to_dict())
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any

from sessionstore._store_calls import within as bounded
from sessionstore.backends.base import SessionBackend
from sessionstore.phases import Phase, Store
from sessionstore.repair.queue import QueueStats, RepairQueue
from sessionstore.resilience import BreakerState

__all__ = ["HealthReport", "StoreHealth", "check_health", "probe_store"]


@dataclasses.dataclass(frozen=True, slots=True)
class StoreHealth:
    """One store's probe: whether it answered, how fast, and its breaker."""

    reachable: bool
    latency_ms: float
    #: The error class of a failed probe (never its message), None if it answered.
    error: str | None = None
    breaker: BreakerState | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    """What :meth:`SessionRepository.health` found."""

    stores: Mapping[Store, StoreHealth]
    queue: QueueStats | None
    #: The error class if the queue could not be read.
    queue_error: str | None
    #: The phase a call would run in now (for a session id of all zeros).
    phase: Phase | None

    @property
    def healthy(self) -> bool:
        """Every store answered, every breaker is closed and the queue could be read."""
        return self.queue_error is None and all(
            h.reachable and h.breaker in (None, BreakerState.CLOSED) for h in self.stores.values()
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (names and counts only)."""
        return {
            "healthy": self.healthy,
            "phase": None if self.phase is None else self.phase.value,
            "stores": {
                store.value: {
                    "reachable": h.reachable,
                    "latency_ms": round(h.latency_ms, 2),
                    "error": h.error,
                    "breaker": None if h.breaker is None else h.breaker.value,
                }
                for store, h in self.stores.items()
            },
            "repair_queue": None
            if self.queue is None
            else {
                "ready": self.queue.ready,
                "waiting": self.queue.waiting,
                "dead": self.queue.dead,
            },
            "repair_queue_error": self.queue_error,
        }


async def probe_store(
    backend: SessionBackend, *, within: float, breaker: BreakerState | None = None
) -> StoreHealth:
    """Read one random key (a cheap ``head``) within ``within`` seconds."""
    start = time.perf_counter()
    try:
        await bounded(backend.head(uuid.uuid4()), within)
    except Exception as exc:  # noqa: BLE001 - the probe reports any failure
        return StoreHealth(False, (time.perf_counter() - start) * 1000, _error_name(exc), breaker)
    return StoreHealth(True, (time.perf_counter() - start) * 1000, None, breaker)


async def check_health(
    backends: Mapping[Store, SessionBackend],
    queue: RepairQueue | None,
    *,
    within: float,
    breakers: Mapping[Store, BreakerState] | None = None,
    phase: Phase | None = None,
) -> HealthReport:
    """Probe both stores and the queue, each within ``within`` seconds."""
    states = breakers or {}
    probes = [probe_store(b, within=within, breaker=states.get(s)) for s, b in backends.items()]
    results = await asyncio.gather(*probes)
    stats: QueueStats | None = None
    queue_error: str | None = None
    if queue is not None:
        try:
            stats = await bounded(queue.stats(), within)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            queue_error = _error_name(exc)
    return HealthReport(dict(zip(backends, results, strict=True)), stats, queue_error, phase)


def _error_name(exc: BaseException) -> str:
    return "DeadlineExceeded" if isinstance(exc, TimeoutError) else type(exc).__name__
