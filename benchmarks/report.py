"""Results: one row per figure, printed as a table and written as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Any

from benchmarks._stats import Series, paired_ratio, round_ratios


@dataclasses.dataclass
class Figure:
    """A median and a p99 (p99 is NaN when it does not apply)."""

    median: float
    p99: float = math.nan

    def to_dict(self) -> dict[str, float | None]:
        return {"median": _num(self.median), "p99": _num(self.p99)}


@dataclasses.dataclass
class Row:
    """One line of the table.

    ``ratio`` is library / baseline. ``goal`` is ``("<=", 1.10)`` for costs (latency,
    memory) and ``(">=", 0.9)`` for throughputs; None for figures without a goal.
    """

    key: str
    item: str
    title: str
    unit: str
    library: Figure
    baseline: Figure | None
    ratio: float
    goal: tuple[str, float] | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.goal is None or math.isnan(self.ratio):
            return "info"
        op, value = self.goal
        ok = self.ratio <= value if op == "<=" else self.ratio >= value
        return "pass" if ok else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "item": self.item,
            "title": self.title,
            "unit": self.unit,
            "library": self.library.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "ratio": _num(self.ratio),
            "goal": None if self.goal is None else f"{self.goal[0]} {self.goal[1]}",
            "status": self.status,
            **({"extra": self.extra} if self.extra else {}),
        }


def latency_row(
    key: str,
    item: str,
    title: str,
    library: Series,
    baseline: Series,
    *,
    goal: float | None,
    extra: dict[str, Any] | None = None,
) -> Row:
    """A latency comparison (ns samples reported in microseconds)."""
    extra = dict(extra or {})
    extra.setdefault("p99_ratio", _num(paired_ratio(library, baseline, "p99")))
    # The spread of the per-round ratios whose median is the reported ratio.
    extra.setdefault("round_ratios", [_num(r) for r in round_ratios(library, baseline)])
    extra.setdefault("calls_per_side", library.count)
    extra.setdefault("rounds", len(library.blocks))
    cpu: dict[str, dict[str, float | None]] = {}
    for name, series in (("library", library), ("baseline", baseline)):
        cpu[name] = {"client": _num(series.cpu_per_call / 1000)}
        for server in ("cassandra", "ferretdb"):
            value = series.server_cpu_per_call(server)
            if not math.isnan(value):
                cpu[name][server] = _num(value / 1000)
    extra.setdefault("cpu_us_per_call", cpu)
    return Row(
        key,
        item,
        title,
        "us",
        Figure(library.median / 1000, library.p99 / 1000),
        Figure(baseline.median / 1000, baseline.p99 / 1000),
        paired_ratio(library, baseline),
        None if goal is None else ("<=", goal),
        extra,
    )


def _num(value: float) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 4)


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit in ("us", "ns") or value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _pair(figure: Figure | None, unit: str) -> str:
    if figure is None:
        return "-"
    if unit == "ops/s":  # throughput, and the p99 latency of its calls in ms
        return f"{figure.median:,.0f} ops/s, p99 {figure.p99:.1f} ms"
    if math.isnan(figure.p99):
        return _fmt(figure.median, unit)
    return f"{_fmt(figure.median, unit)} / {_fmt(figure.p99, unit)}"


def table(rows: list[Row]) -> str:
    """A fixed-width text table (also valid Markdown)."""
    header = (
        "#",
        "benchmark",
        "unit",
        "library median / p99",
        "baseline median / p99",
        "ratio",
        "rounds' range",
        "goal",
        "result",
    )
    lines = [header]
    for row in rows:
        goal = "-" if row.goal is None else f"{row.goal[0]} {row.goal[1]:g}"
        ratio = "-" if math.isnan(row.ratio) else f"{row.ratio:.3f}"
        spread = [r for r in row.extra.get("round_ratios", ()) if r is not None]
        span = f"{min(spread):.2f}-{max(spread):.2f}" if len(spread) > 1 else "-"
        lines.append(
            (
                row.item,
                row.title,
                row.unit,
                _pair(row.library, row.unit),
                _pair(row.baseline, row.unit),
                ratio,
                span,
                goal,
                row.status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    import os

    import cassandra
    import pymongo

    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "cassandra_driver": cassandra.__version__,
        "pymongo": pymongo.version,
    }


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    """Write the results (and how they were obtained) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "results": [r.to_dict() for r in rows]}
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
