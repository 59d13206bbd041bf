"""Item 7: many concurrent callers, a realistic read/write mix, in every phase.

``workers`` callers each loop for ``seconds``: 80% ``get``, 20% ``save``, keys drawn
uniformly from ``keys`` sessions held by both stores. The baseline runs the same
sequence of operations (same seeds) on the raw drivers doing the phase's I/O: reads from
the phase's read store (plus, in compare phases, a background read of the other store),
writes to the authoritative store, then the secondary. Library and baseline alternate
(AB, BA, ...) each round; the figures are medians over rounds of sustained operations/s
and of each block's p99 latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import _servercpu
from benchmarks._data import sessions
from benchmarks._env import CONSISTENCY, KEYSPACE, Servers
from benchmarks._raw import RawCassandra, mongo_get, mongo_put
from benchmarks._stats import Block, Series, paired_ratio
from benchmarks.flags import TimedPhaseSource
from benchmarks.latency import Revisions
from benchmarks.report import Figure, Row
from sessionstore import (
    PHASE_PLANS,
    ConflictError,
    Phase,
    PhasePlan,
    StaticPhaseSource,
    Store,
    Timeouts,
)
from sessionstore.backends._bson_codec import to_doc
from sessionstore.backends._cql_codec import to_row

READ_SHARE = 0.8
GOAL = 0.90  # the issue sets none for item 7: the 1.10 overhead goal, as throughput

Call = Callable[[bool, int], Awaitable[Any]]


async def _block(
    call: Call, *, workers: int, seconds: float, seed: int, keys: int
) -> tuple[float, Block]:
    """Run ``workers`` closed-loop callers for ``seconds``: ops/s, and the latencies."""
    latencies: list[float] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)

    async def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while clock() < deadline:
            read = rng.random() < READ_SHARE
            key = rng.randrange(keys)
            t0 = clock()
            await call(read, key)
            latencies.append(clock() - t0)

    servers = _servercpu.cpu_ns()
    cpu = time.process_time_ns()
    started = clock()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = (clock() - started) / 1e9
    cpu = time.process_time_ns() - cpu
    block = Block(latencies, cpu, _servercpu.delta(servers, _servercpu.cpu_ns()))
    return len(latencies) / elapsed, block


def _library(
    repo: Any, ids: list[Any], saved: list[Any], conflicts: dict[Phase, int], phase: Phase
) -> Call:
    """The library's side of a block: reads, and saves of the seeded sessions."""

    async def library(read: bool, k: int) -> Any:
        if read:
            return await repo.get(ids[k])
        try:
            return await repo.save(saved[k])
        except ConflictError:
            # Two callers saved one key at once and this one's revision lost: a typed
            # answer, as the revision rule promises (docs/design.md).
            conflicts[phase] += 1
            return None

    return library


async def run(
    servers: Servers,
    *,
    keys: int,
    workers: int,
    seconds: float,
    rounds: int,
    phases: tuple[Phase, ...] = tuple(Phase),
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """One row per phase: library vs raw drivers under concurrent load."""
    table = await servers.new_table("load")
    collection = await servers.new_collection("load")
    static = StaticPhaseSource(Phase.DUAL_WRITE)
    source = TimedPhaseSource(static)
    # Saturation, not a hung store: 32 callers queue behind FerretDB for seconds (its
    # p99 is 1-2 s here, a burst longer), and the raw baseline waits as long as it takes.
    # The default deadlines (5 s writes) and the breaker they feed would turn that queue
    # into CircuitOpenErrors: the resilience section measures those.
    repo = await servers.repository(
        table, collection, source, timeouts=Timeouts(read=120, write=120, secondary_write=120)
    )
    raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
    revisions = Revisions()
    background: set[asyncio.Task[Any]] = set()
    rows: list[Row] = []
    conflicts = dict.fromkeys(phases, 0)
    async with repo:
        limit = asyncio.Semaphore(16)

        async def seed(s: Any) -> Any:
            async with limit:
                return await repo.save(s)

        saved = await asyncio.gather(*(seed(s) for s in sessions(keys, seed=23)))
        ids = [s.session_id for s in saved]
        cql_rows = [to_row(s) for s in saved]
        docs = [to_doc(s) for s in saved]
        raw_get: dict[Store, Callable[[int], Awaitable[Any]]] = {
            Store.CASSANDRA: lambda k: raw.get(ids[k]),
            Store.DOCUMENTDB: lambda k: mongo_get(collection, ids[k]),
        }

        async def raw_put(store: Store, k: int, revision: int) -> None:
            if store is Store.CASSANDRA:
                await raw.put(cql_rows[k], revision)
            else:
                await mongo_put(collection, docs[k], revision)

        async def drain() -> None:
            await repo.wait_for_comparisons()
            while background:
                await asyncio.gather(*list(background), return_exceptions=True)

        for phase in phases:
            log(f"  {phase.name}")
            plan = PHASE_PLANS[phase]

            library = _library(repo, ids, saved, conflicts, phase)

            async def baseline(read: bool, k: int, plan: PhasePlan = plan) -> Any:
                if read:
                    if plan.compare:
                        task = asyncio.ensure_future(raw_get[plan.read.other](k))
                        background.add(task)
                        task.add_done_callback(background.discard)
                    return await raw_get[plan.read](k)
                revision = revisions.next()
                for store in plan.writes:
                    await raw_put(store, k, revision)
                return None

            static.phase = phase
            variants: dict[str, Call] = {"library": library, "baseline": baseline}
            for call in variants.values():  # warm-up
                await _block(call, workers=workers, seconds=min(1.0, seconds), seed=99, keys=keys)
                await drain()
            source.take()
            results: dict[str, list[tuple[float, Block]]] = {k: [] for k in variants}
            for r in range(rounds):
                for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
                    results[name].append(
                        await _block(
                            variants[name], workers=workers, seconds=seconds, seed=r, keys=keys
                        )
                    )
                    await drain()
            rows.append(_row(phase, workers, results, source.take(), conflicts[phase]))
    return rows


def _row(
    phase: Phase,
    workers: int,
    results: dict[str, list[tuple[float, Block]]],
    phase_eval: dict[str, float],
    conflicts: int,
) -> Row:
    series = {name: Series([b for _, b in runs]) for name, runs in results.items()}
    ops = {name: [x for x, _ in runs] for name, runs in results.items()}

    def figure(name: str) -> Figure:
        return Figure(statistics.median(ops[name]), series[name].p99 / 1e6)

    def cpu(name: str) -> dict[str, float]:
        out = {"client": round(series[name].cpu_per_call / 1000, 1)}
        for server in ("cassandra", "ferretdb"):
            value = series[name].server_cpu_per_call(server)
            if not math.isnan(value):
                out[server] = round(value / 1000, 1)
        return out

    lib, base = figure("library"), figure("baseline")
    return Row(
        f"load.{phase.value}",
        "7",
        f"load {phase.name}, {workers} callers, 80/20 read/write",
        "ops/s",
        lib,
        base,
        statistics.median(a / b for a, b in zip(ops["library"], ops["baseline"], strict=True)),
        (">=", GOAL),
        {
            "p99_ms": {"library": round(lib.p99, 2), "baseline": round(base.p99, 2)},
            "p99_ratio": round(paired_ratio(series["library"], series["baseline"], "p99"), 4),
            "round_ratios": [
                round(a / b, 4) for a, b in zip(ops["library"], ops["baseline"], strict=True)
            ],
            "median_ms": {name: round(s.median / 1e6, 3) for name, s in series.items()},
            "cpu_us_per_op": {name: cpu(name) for name in series},
            "phase_eval": phase_eval,
            # Library saves that lost to a concurrent save of the same key (ConflictError).
            "conflicts": conflicts,
        },
    )
