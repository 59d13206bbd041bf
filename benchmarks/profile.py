"""Profile one scenario with pyinstrument (the ``bench`` extra): where the library's time goes.

::

    .venv/bin/python -m benchmarks.profile read     # repo.get, CASSANDRA_ONLY
    .venv/bin/python -m benchmarks.profile write    # repo.save, CASSANDRA_ONLY
    .venv/bin/python -m benchmarks.profile shadow   # repo.get, SHADOW
    .venv/bin/python -m benchmarks.profile backfill # BackfillJob into a Cassandra table

Prints the client CPU per call of the library and of the raw-driver baseline (measured
without the profiler), then pyinstrument's call tree of the library calls. For a view of
every thread, ``py-spy record --gil --format raw -o out.txt -- python -m benchmarks.profile
read`` samples only the thread holding the GIL, i.e. Python work.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._data import sessions
from benchmarks._env import CONSISTENCY, KEYSPACE, Servers
from benchmarks._raw import RawCassandra
from benchmarks.backfill import CassandraTarget, _Bench
from benchmarks.latency import Revisions
from sessionstore import Phase, StaticPhaseSource
from sessionstore.backends._cql_codec import to_row

SCENARIOS = ("read", "write", "shadow", "backfill")


async def _cpu_per_call(fn: Callable[[], Awaitable[Any]], calls: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            await fn()
        best = min(best, (time.process_time() - t0) / calls * 1e6)
    return best


async def _repository(servers: Servers, scenario: str) -> None:
    from pyinstrument import Profiler

    table = await servers.new_table("prof")
    collection = await servers.new_collection("prof")
    phase = {"shadow": Phase.SHADOW}.get(scenario, Phase.CASSANDRA_ONLY)
    static = StaticPhaseSource(Phase.DUAL_WRITE)  # both stores hold the sessions
    repo = await servers.repository(table, collection, static)
    raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
    revisions = Revisions()
    async with repo:
        saved = [await repo.save(s) for s in sessions(20, seed=3)]
        static.phase = phase
        rows = [to_row(s) for s in saved]
        n = len(saved)
        state = {"i": 0}

        def key() -> int:
            state["i"] += 1
            return state["i"] % n

        library: Callable[[], Awaitable[Any]]
        baseline: Callable[[], Awaitable[Any]]
        if scenario == "write":
            library = lambda: repo.save(saved[key()])  # noqa: E731
            baseline = lambda: raw.put(rows[key()], revisions.next())  # noqa: E731
        else:
            library = lambda: repo.get(saved[key()].session_id)  # noqa: E731
            baseline = lambda: raw.get(saved[key()].session_id)  # noqa: E731
        lib_cpu = await _cpu_per_call(library, 200)
        await repo.wait_for_comparisons()
        raw_cpu = await _cpu_per_call(baseline, 200)
        print(f"client CPU per call: library {lib_cpu:.0f} us, raw driver {raw_cpu:.0f} us")
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(2000):
            await library()
        await repo.wait_for_comparisons()
        profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


async def _backfill(servers: Servers) -> None:
    from pyinstrument import Profiler

    bench = await _Bench.seed(servers, CassandraTarget(servers), 3000, seed=41)
    try:
        print(f"raw loop: {bench.count / await bench.raw_backfill(16, 256):.0f} sessions/s")
        print(f"library:  {bench.count / await bench.library_backfill(16, 256):.0f} sessions/s")
        profiler = Profiler(interval=0.0005)
        profiler.start()
        await bench.library_backfill(16, 256)
        profiler.stop()
    finally:
        await bench.drop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


async def _main(scenario: str) -> None:
    async with Servers() as servers:
        if scenario == "backfill":
            await _backfill(servers)
        else:
            await _repository(servers, scenario)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "read"
    if which not in SCENARIOS:
        raise SystemExit(f"usage: python -m benchmarks.profile [{'|'.join(SCENARIOS)}]")
    asyncio.run(_main(which))
