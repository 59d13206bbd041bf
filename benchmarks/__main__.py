"""``python -m benchmarks``: run the benchmarks, print the table, write the JSON.

Options: ``--out PATH`` (default bench-results/bench.json), ``--only a,b`` (sections:
latency, flags, load, backfill, verify, memory, fanout, resilience), ``--quick`` (a smoke
run with small sizes; its figures mean little), ``--memory-sizes 10000,100000``.

``resilience`` runs on a Cassandra and a FerretDB of its own (it freezes them), which it
starts and removes itself; the other sections use the servers ``scripts/servers up``
started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._env import Servers

SECTIONS = ("latency", "flags", "load", "backfill", "verify", "memory", "fanout", "resilience")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each section does. FerretDB scans a whole collection for a lookup by
    binary ``_id`` and for every conditional write (about 0.2 ms per stored session),
    so the collections it serves are kept small: see docs/performance.md."""

    latency_keys: int = 20
    latency_rounds: int = 12
    latency_ops: int = 100
    latency_warmup: int = 100
    flag_calls: int = 20_000
    load_keys: int = 32
    load_workers: int = 32
    load_seconds: float = 3.0
    load_rounds: int = 2
    docdb_small: int = 60
    docdb_mixed: int = 12
    cassandra_small: int = 3000
    cassandra_mixed: int = 200
    large_every: int = 4
    docdb_rounds: int = 4
    cassandra_rounds: int = 2
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    fanout_sessions: int = 4000
    fanout_large: int = 320
    fanout_large_kb: int = 400
    fanout_workers: tuple[int, ...] = (1, 2, 4)
    fanout_concurrency: int = 4
    fanout_rounds: int = 2
    resilience_ops: int = 100
    resilience_rounds: int = 4
    enqueue_seeded: int = 500_000
    enqueue_rounds: int = 6


QUICK = Sizes(
    latency_keys=10,
    latency_rounds=2,
    latency_ops=30,
    latency_warmup=10,
    flag_calls=2_000,
    load_keys=16,
    load_seconds=1.0,
    docdb_small=20,
    docdb_mixed=4,
    cassandra_small=300,
    cassandra_mixed=20,
    docdb_rounds=1,
    cassandra_rounds=1,
    fanout_sessions=400,
    fanout_large=20,
    fanout_rounds=1,
    resilience_ops=40,
    resilience_rounds=1,
    enqueue_seeded=50_000,
    enqueue_rounds=2,
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-sizes", default="10000,100000")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace, sizes: Sizes) -> tuple[list[report.Row], dict[str, Any]]:
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    rows: list[report.Row] = []
    timings: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        if only - {"resilience"}:  # resilience alone needs no shared servers: it has its own
            servers = await stack.enter_async_context(Servers())
        if "latency" in only:
            from benchmarks import latency

            _log("items 1-3: latency of one call, library vs raw drivers")
            t0 = time.perf_counter()
            rows += await latency.run(
                servers,
                keys=sizes.latency_keys,
                rounds=sizes.latency_rounds,
                ops=sizes.latency_ops,
                warmup=sizes.latency_warmup,
                log=_log,
            )
            timings["latency"] = time.perf_counter() - t0
        if "flags" in only:
            from benchmarks import flags

            _log("phase-flag evaluation cost")
            t0 = time.perf_counter()
            reference = next(
                (r.baseline.median for r in rows if r.key == "read.cassandra" and r.baseline),
                None,
            )
            rows += flags.run(calls=sizes.flag_calls, reference_us=reference)
            timings["flags"] = time.perf_counter() - t0
        if "load" in only:
            from benchmarks import load

            _log("item 7: concurrent service load in every phase")
            t0 = time.perf_counter()
            rows += await load.run(
                servers,
                keys=sizes.load_keys,
                workers=sizes.load_workers,
                seconds=sizes.load_seconds,
                rounds=sizes.load_rounds,
                log=_log,
            )
            timings["load"] = time.perf_counter() - t0
        if only & {"backfill", "verify"}:
            from benchmarks import backfill

            _log("items 4-5: backfill and verify throughput")
            t0 = time.perf_counter()
            rows += await backfill.run(
                servers,
                docdb_small=sizes.docdb_small,
                docdb_mixed=sizes.docdb_mixed,
                cassandra_small=sizes.cassandra_small,
                cassandra_mixed=sizes.cassandra_mixed,
                large_every=sizes.large_every,
                concurrencies=sizes.concurrencies,
                docdb_concurrency=4,
                mixed_concurrency=16,
                docdb_rounds=sizes.docdb_rounds,
                cassandra_rounds=sizes.cassandra_rounds,
                parts=256,
                verify_parts=16,
                sections=only,
                log=_log,
            )
            timings["backfill+verify"] = time.perf_counter() - t0
        if "memory" in only:
            t0 = time.perf_counter()
            rows += await _memory(servers, args)
            timings["memory"] = time.perf_counter() - t0
        if "fanout" in only:
            _log("item 4, fan-out: worker processes over an SQS queue vs one backfill")
            t0 = time.perf_counter()
            rows += await _fanout(servers, sizes)
            timings["fanout"] = time.perf_counter() - t0
    if "resilience" in only:
        _log("issue 10: a frozen secondary store, and the repair enqueue")
        t0 = time.perf_counter()
        rows += await _resilience(sizes)
        timings["resilience"] = time.perf_counter() - t0
    return rows, {"section_seconds": {k: round(v, 1) for k, v in timings.items()}}


async def _memory(servers: Servers, args: argparse.Namespace) -> list[report.Row]:
    from benchmarks import memory

    counts = (1000, 3000) if args.quick else tuple(int(x) for x in args.memory_sizes.split(","))
    _log(f"item 6: peak RSS of backfills of {' and '.join(map(str, counts))} sessions")
    return await memory.run(servers, counts)


async def _fanout(servers: Servers, sizes: Sizes) -> list[report.Row]:
    from benchmarks import fanout

    return await fanout.run(
        servers,
        count=sizes.fanout_sessions,
        large_count=sizes.fanout_large,
        large_kb=sizes.fanout_large_kb,
        workers=sizes.fanout_workers,
        concurrency=sizes.fanout_concurrency,
        rounds=sizes.fanout_rounds,
        log=_log,
    )


async def _resilience(sizes: Sizes) -> list[report.Row]:
    from benchmarks import resilience

    return await resilience.run(
        ops=sizes.resilience_ops,
        rounds=sizes.resilience_rounds,
        enqueue_seeded=sizes.enqueue_seeded,
        enqueue_rounds=sizes.enqueue_rounds,
        log=_log,
    )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sizes = QUICK if args.quick else Sizes()
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": report.environment(),
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
    }
    rows, extra = asyncio.run(_run(args, sizes))
    meta.update(extra)
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    report.write_json(args.out, rows, meta)
    print(report.table(rows))
    print(f"\ntotal {meta['total_seconds']} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
