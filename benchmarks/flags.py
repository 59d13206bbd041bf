"""Phase-flag evaluation cost: ``decide()`` per call, static and LaunchDarkly (TestData).

:class:`TimedPhaseSource` wraps the source of every repository benchmark, so each of
them also reports what the phase evaluation cost per call during that benchmark.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from benchmarks._stats import Block, Series
from benchmarks.report import Figure, Row
from sessionstore import Operation, Phase, StaticPhaseSource, Store
from sessionstore.phases import PhaseDecision, PhaseSource


class TimedPhaseSource:
    """A phase source that times each ``decide()`` of the source it wraps (ns)."""

    def __init__(self, inner: PhaseSource) -> None:
        self.inner = inner
        self.samples: list[int] = []

    def decide(self, session_id: uuid.UUID, operation: Operation) -> PhaseDecision:
        t0 = time.perf_counter_ns()
        decision = self.inner.decide(session_id, operation)
        self.samples.append(time.perf_counter_ns() - t0)
        return decision

    def bind_telemetry(self, telemetry: Any) -> None:
        bind = getattr(self.inner, "bind_telemetry", None)
        if callable(bind):
            bind(telemetry)

    def take(self) -> dict[str, float]:
        """Median and p99 of the evaluations since the last call, in ns; then reset."""
        samples, self.samples = self.samples, []
        if not samples:
            return {}
        block = Block([float(s) for s in samples])
        return {"calls": len(samples), "median_ns": round(block.median), "p99_ns": round(block.p99)}


def _time_decide(source: PhaseSource, ids: list[uuid.UUID], full: bool) -> Block:
    clock = time.perf_counter_ns
    samples: list[float] = []
    for i, sid in enumerate(ids):
        op = Operation.READ if i % 5 else Operation.WRITE
        t0 = clock()
        decision = source.decide(sid, op)
        if full:
            # What the repository adds per call: report the store used, then finish.
            decision.record_invoked(Store.CASSANDRA)
            decision.record_latency(Store.CASSANDRA, 0.001)
            decision.finish()
        samples.append(clock() - t0)
    return Block(samples)


def run(calls: int = 20_000, rounds: int = 3, reference_us: float | None = None) -> list[Row]:
    """Rows for StaticPhaseSource and LaunchDarklyPhaseSource (decide, and decide+track)."""
    from sessionstore.launchdarkly import LaunchDarklyPhaseSource
    from sessionstore.testing import launchdarkly_test_client

    client, _ = launchdarkly_test_client("session-store-migration", Phase.SHADOW)
    try:
        sources: dict[str, PhaseSource] = {
            "static": StaticPhaseSource(Phase.SHADOW),
            # As the service runs it: context keys hashed with the fleet's secret.
            "launchdarkly": LaunchDarklyPhaseSource(
                client,
                flag_key="session-store-migration",
                context_key_secret=secrets.token_hex(16),
            ),
        }
        ids = [uuid.uuid4() for _ in range(calls)]
        results: dict[tuple[str, bool], Series] = {}
        for name, source in sources.items():
            for full in (False, True):
                _time_decide(source, ids[: calls // 10], full)  # warm-up
                results[name, full] = Series()
        for r in range(rounds):
            for name, source in sources.items():
                for full in (False, True) if r % 2 == 0 else (True, False):
                    results[name, full].blocks.append(_time_decide(source, ids, full))
    finally:
        client.close()  # type: ignore[no-untyped-call]
    rows = []
    for (name, full), series in results.items():
        what = "decide + track + finish" if full else "decide()"
        extra: dict[str, Any] = {"calls": series.count}
        if reference_us:
            extra["share_of_raw_cassandra_read"] = round(series.median / 1000 / reference_us, 4)
        rows.append(
            Row(
                f"flag.{name}{'.tracked' if full else ''}",
                "flag",
                f"phase eval {name}: {what}",
                "us",
                Figure(series.median / 1000, series.p99 / 1000),
                None,
                float("nan"),
                None,
                extra,
            )
        )
    return rows
