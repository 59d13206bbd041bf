"""Metrics through the OpenTelemetry API only. Attributes carry names, never values.

Instruments (all on the meter ``sessionstore``):

=========================================  =========  ======================================
name                                       kind       attributes
=========================================  =========  ======================================
``db.client.operation.duration`` (s)       histogram  db.system.name, db.operation.name,
                                                      sessionstore.store, sessionstore.phase,
                                                      error.type (on failure)
``sessionstore.comparisons``               counter    sessionstore.phase, sessionstore.outcome
``sessionstore.divergence.fields``         counter    sessionstore.phase, sessionstore.field
``sessionstore.secondary.failures``        counter    sessionstore.store, db.operation.name,
                                                      error.type
``sessionstore.repairs.enqueued``          counter    sessionstore.reason
``sessionstore.repairs.completed``         counter    sessionstore.outcome
``sessionstore.repairs.enqueue_failures``  counter    error.type
``sessionstore.phase.fallbacks``           counter    sessionstore.reason
``sessionstore.phase.evaluation.duration`` histogram  (none), seconds
``sessionstore.repair.queue.depth``        gauge      (none)
``sessionstore.read.fallbacks``            counter    sessionstore.store (the failed one),
                                                      error.type
``sessionstore.secondary.skipped``         counter    sessionstore.store, db.operation.name
``sessionstore.comparisons.skipped``       counter    sessionstore.phase, sessionstore.reason
``sessionstore.breaker.transitions``       counter    sessionstore.store, sessionstore.state
``sessionstore.breaker.state``             gauge      sessionstore.store; 0 closed, 1 open,
                                                      2 probing
=========================================  =========  ======================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["RepositoryStats", "Telemetry"]

_DB_SYSTEM = {"cassandra": "cassandra", "documentdb": "mongodb"}


@dataclasses.dataclass
class RepositoryStats:
    """Plain counters kept beside the metrics, for summaries and tests (no values)."""

    operations: int = 0
    operation_errors: int = 0
    comparisons: int = 0
    divergences: int = 0
    secondary_failures: int = 0
    repairs_enqueued: int = 0
    repairs_completed: int = 0
    phase_fallbacks: int = 0
    read_fallbacks: int = 0
    secondary_skipped: int = 0
    comparisons_skipped: int = 0
    breaker_transitions: int = 0


class Telemetry:
    """The library's instruments, created once per repository.

    Pass ``meter_provider`` to record somewhere other than the global provider (tests use
    the SDK's ``InMemoryMetricReader``).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter("sessionstore", "0.1.0", meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "db.client.operation.duration", unit="s", description="Duration of store operations"
        )
        self._eval = meter.create_histogram(
            "sessionstore.phase.evaluation.duration",
            unit="s",
            description="Time to evaluate the migration phase for one call",
        )
        self._comparisons = meter.create_counter(
            "sessionstore.comparisons", description="Reads compared between the two stores"
        )
        self._fields = meter.create_counter(
            "sessionstore.divergence.fields", description="Differing fields, by field name"
        )
        self._secondary = meter.create_counter(
            "sessionstore.secondary.failures", description="Failed writes to the secondary store"
        )
        self._enqueued = meter.create_counter(
            "sessionstore.repairs.enqueued", description="Sessions queued for repair"
        )
        self._completed = meter.create_counter(
            "sessionstore.repairs.completed", description="Repairs finished, by outcome"
        )
        self._enqueue_failures = meter.create_counter(
            "sessionstore.repairs.enqueue_failures",
            description="Repairs that could not be queued",
        )
        self._fallbacks = meter.create_counter(
            "sessionstore.phase.fallbacks",
            description="Phase evaluations that fell back to the default phase",
        )
        self._read_fallbacks = meter.create_counter(
            "sessionstore.read.fallbacks",
            description="Reads answered by the other store because the authoritative one failed",
        )
        self._secondary_skipped = meter.create_counter(
            "sessionstore.secondary.skipped",
            description="Secondary writes not sent because the store's breaker was open",
        )
        self._comparisons_skipped = meter.create_counter(
            "sessionstore.comparisons.skipped",
            description="Reads of a compare phase that were not compared",
        )
        self._transitions = meter.create_counter(
            "sessionstore.breaker.transitions", description="Circuit breaker state changes"
        )
        meter.create_observable_gauge(
            "sessionstore.breaker.state",
            callbacks=[self._observe_breakers],
            description="Circuit breaker state per store: 0 closed, 1 open, 2 probing",
        )
        self._breaker_sources: list[Callable[[], dict[str, str]]] = []
        self.stats = RepositoryStats()
        self._depth_sources: list[Callable[[], int]] = []
        meter.create_observable_gauge(
            "sessionstore.repair.queue.depth",
            callbacks=[self._observe_depth],
            description="Sessions waiting in the repair queue",
        )

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(source()) for source in self._depth_sources]

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        codes = {"closed": 0, "open": 1, "probing": 2}
        return [
            Observation(codes.get(state, -1), {"sessionstore.store": store})
            for source in self._breaker_sources
            for store, state in source().items()
        ]

    def watch_breakers(self, source: Callable[[], dict[str, str]]) -> None:
        """Report ``source()`` (store name -> breaker state, no I/O) as the breaker gauge."""
        self._breaker_sources.append(source)

    def breaker_changed(self, store: str, state: str) -> None:
        """Count a circuit breaker's change of state."""
        self.stats.breaker_transitions += 1
        self._transitions.add(1, {"sessionstore.store": store, "sessionstore.state": state})

    def read_fallback(self, store: str, error: str) -> None:
        """Count a read answered by the other store because ``store`` failed."""
        self.stats.read_fallbacks += 1
        self._read_fallbacks.add(1, {"sessionstore.store": store, "error.type": error})

    def secondary_skipped(self, store: str, operation: str) -> None:
        """Count a secondary write not sent (breaker open); the session is queued."""
        self.stats.secondary_skipped += 1
        self._secondary_skipped.add(
            1, {"sessionstore.store": store, "db.operation.name": operation}
        )

    def comparison_skipped(self, phase: str, reason: str) -> None:
        """Count a read of a compare phase that was not compared, and why."""
        self.stats.comparisons_skipped += 1
        self._comparisons_skipped.add(
            1, {"sessionstore.phase": phase, "sessionstore.reason": reason}
        )

    def watch_queue_depth(self, source: Callable[[], int]) -> None:
        """Report ``source()`` (a cheap, non-blocking read) as the queue depth gauge."""
        self._depth_sources.append(source)

    def operation(
        self, store: str, operation: str, seconds: float, phase: str, error: str | None = None
    ) -> None:
        """Record one store call's duration."""
        attrs = {
            "db.system.name": _DB_SYSTEM.get(store, store),
            "db.operation.name": operation,
            "sessionstore.store": store,
            "sessionstore.phase": phase,
        }
        self.stats.operations += 1
        if error is not None:
            attrs["error.type"] = error
            self.stats.operation_errors += 1
        self._duration.record(seconds, attrs)

    def phase_evaluation(self, seconds: float) -> None:
        """Record the cost of one phase evaluation."""
        self._eval.record(seconds)

    def comparison(self, phase: str, outcome: str, fields: Iterable[str] = ()) -> None:
        """Count one comparison and each differing field name."""
        self.stats.comparisons += 1
        self.stats.divergences += outcome != "consistent"
        self._comparisons.add(1, {"sessionstore.phase": phase, "sessionstore.outcome": outcome})
        for field in fields:
            self._fields.add(1, {"sessionstore.phase": phase, "sessionstore.field": field})

    def secondary_failure(self, store: str, operation: str, error: str) -> None:
        """Count a failed secondary write (the call itself succeeded)."""
        self.stats.secondary_failures += 1
        self._secondary.add(
            1, {"sessionstore.store": store, "db.operation.name": operation, "error.type": error}
        )

    def repair_enqueued(self, reason: str) -> None:
        """Count a session queued for repair."""
        self.stats.repairs_enqueued += 1
        self._enqueued.add(1, {"sessionstore.reason": reason})

    def repair_enqueue_failed(self, error: str) -> None:
        """Count a repair that could not be queued (verify will still find it)."""
        self._enqueue_failures.add(1, {"error.type": error})

    def repair_completed(self, outcome: str) -> None:
        """Count a finished repair, by :class:`~sessionstore.RepairOutcome` value."""
        self.stats.repairs_completed += 1
        self._completed.add(1, {"sessionstore.outcome": outcome})

    def phase_fallback(self, reason: str) -> None:
        """Count a phase evaluation that used the default phase."""
        self.stats.phase_fallbacks += 1
        self._fallbacks.add(1, {"sessionstore.reason": reason})
