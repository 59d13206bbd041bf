"""Timing: per-call latencies with ``perf_counter_ns``, interleaved A/B blocks, summaries.

A comparison runs ``rounds`` rounds; each round runs one block of the library variant
and one of the baseline, in alternating order (AB, BA, AB, ...), so drift and noise on
this shared machine hit both sides alike. Each block's median and p99 are computed, and
the reported figure is the median over rounds. The ratio is the median of the per-round
ratios (each round's two blocks ran back to back, under the same conditions).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks import _servercpu

Op = Callable[[int], Awaitable[Any]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclasses.dataclass
class Block:
    """One block of one variant: per-call latencies in ns, and this process's CPU time.

    ``cpu_ns`` is the process CPU (every thread: the event loop and the drivers' I/O
    threads) spent during the block; what the servers spend is not in it.
    """

    samples: list[float]
    cpu_ns: float = math.nan
    server_cpu_ns: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples)) if self.samples else math.nan

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def cpu_per_call(self) -> float:
        return self.cpu_ns / len(self.samples) if self.samples else math.nan

    def server_cpu_per_call(self, server: str) -> float:
        spent = self.server_cpu_ns.get(server)
        return spent / len(self.samples) if spent is not None and self.samples else math.nan


@dataclasses.dataclass
class Series:
    """The blocks of one variant over all rounds."""

    blocks: list[Block] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(b.median for b in self.blocks))

    @property
    def p99(self) -> float:
        return float(statistics.median(b.p99 for b in self.blocks))

    @property
    def count(self) -> int:
        return sum(len(b.samples) for b in self.blocks)

    @property
    def cpu_per_call(self) -> float:
        """Median over blocks of the process CPU per call, in ns."""
        return float(statistics.median(b.cpu_per_call for b in self.blocks))

    def server_cpu_per_call(self, server: str) -> float:
        """Median over blocks of a server's CPU per call, in ns (NaN if not measured)."""
        values = [b.server_cpu_per_call(server) for b in self.blocks]
        values = [v for v in values if not math.isnan(v)]
        return float(statistics.median(values)) if values else math.nan


def round_ratios(a: Series, b: Series, stat: str = "median") -> list[float]:
    """Per round, ``a``'s statistic divided by ``b``'s of the same round."""
    return [
        getattr(x, stat) / getattr(y, stat)
        for x, y in zip(a.blocks, b.blocks, strict=True)
        if getattr(y, stat) > 0
    ]


def paired_ratio(a: Series, b: Series, stat: str = "median") -> float:
    """Median over rounds of ``a``'s statistic divided by ``b``'s of the same round."""
    ratios = round_ratios(a, b, stat)
    return float(statistics.median(ratios)) if ratios else math.nan


async def time_block(
    op: Op, n: int, start: int = 0, between: Callable[[], Awaitable[None]] | None = None
) -> Block:
    """Run ``op(i)`` for ``n`` consecutive i, one at a time; each call timed.

    ``between()``, when given, is awaited after every call, outside the clock (e.g.
    waiting for the call's background comparison, so that the next call starts alone).
    """
    clock = time.perf_counter_ns
    samples: list[float] = []
    append = samples.append
    servers = _servercpu.cpu_ns()
    cpu = time.process_time_ns()
    for i in range(start, start + n):
        t0 = clock()
        await op(i)
        append(clock() - t0)
        if between is not None:
            await between()
    cpu = time.process_time_ns() - cpu
    return Block(samples, cpu, _servercpu.delta(servers, _servercpu.cpu_ns()))


async def interleave(
    variants: dict[str, Op],
    *,
    rounds: int,
    ops: int,
    warmup: int,
    before: Callable[[str], None] | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
    between: dict[str, Callable[[], Awaitable[None]]] | None = None,
) -> dict[str, Series]:
    """Warm every variant up, then run ``rounds`` rounds of one block per variant.

    The order of the variants is reversed every other round. ``before(name)`` runs before
    each block and ``after()`` after it, ``between[name]()`` after each call of that
    variant, all outside the clock (e.g. setting the phase, and waiting for background
    comparisons to finish).
    """
    names = list(variants)

    async def block(name: str, n: int, start: int) -> Block:
        if before is not None:
            before(name)
        result = await time_block(variants[name], n, start, (between or {}).get(name))
        if after is not None:
            await after()
        return result

    for name in names:
        await block(name, warmup, 0)
    result = {name: Series() for name in names}
    position = warmup
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            result[name].blocks.append(await block(name, ops, position))
        position += ops
    return result


async def settle(seconds: float = 0.05) -> None:
    """Let the event loop drain stray callbacks between blocks."""
    await asyncio.sleep(seconds)
