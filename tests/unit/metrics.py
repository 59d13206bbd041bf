"""Reading OpenTelemetry SDK metrics in tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def counter_points(
    reader: InMemoryMetricReader, name: str
) -> dict[tuple[tuple[str, Any], ...], int]:
    """Counter values by their sorted attribute pairs (zero-valued points dropped)."""
    return {tuple(sorted(p.attributes.items())): p.value for p in _points(reader, name) if p.value}


def histogram_counts(
    reader: InMemoryMetricReader, name: str
) -> dict[tuple[tuple[str, Any], ...], int]:
    """Histogram sample counts by their sorted attribute pairs."""
    return {tuple(sorted(p.attributes.items())): p.count for p in _points(reader, name)}


def histogram_max(
    reader: InMemoryMetricReader, name: str
) -> dict[tuple[tuple[str, Any], ...], float]:
    """The largest sample of a histogram by its sorted attribute pairs."""
    return {tuple(sorted(p.attributes.items())): p.max for p in _points(reader, name)}


def gauge_value(reader: InMemoryMetricReader, name: str) -> float | None:
    points = _points(reader, name)
    return points[-1].value if points else None


def gauge_points(
    reader: InMemoryMetricReader, name: str
) -> dict[tuple[tuple[str, Any], ...], float]:
    """A gauge's latest values by their sorted attribute pairs."""
    return {tuple(sorted(p.attributes.items())): p.value for p in _points(reader, name)}
