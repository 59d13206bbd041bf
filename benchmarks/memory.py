"""Item 6: peak RSS of a backfill of 10k vs 100k sessions, each in a fresh process.

Also (information) the same for a table of large sessions (1 MB each), with the job's
page budget (``page_bytes``) against none: the budget is what keeps a page of
``page_size`` multi-MB sessions from holding hundreds of MB per unit.

The parent seeds a Cassandra table per size (raw driver, many requests in flight) and
runs :func:`child` in a new interpreter (``python -m benchmarks.memory TABLE TARGET``),
which opens the backends, runs :class:`~sessionstore.jobs.BackfillJob` over the whole
table, and prints its peak RSS (``VmHWM``) and its RSS before the job as JSON.

The target is a second Cassandra table (a backend named ``documentdb``), not FerretDB:
FerretDB 1.24's SQLite engine evaluates a filtered update by scanning the collection
(no ``_id`` push-down for updates; measured 0.6 ms at 100 documents, 25 ms at 2,000),
so each conditional write costs O(collection size) and a 10k-session backfill into it
takes tens of minutes. The job, its paging and its in-flight limits are the same code
whatever the target; a Cassandra target keeps the run inside the time budget.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks._data import MB, small_session
from benchmarks._env import CONSISTENCY, KEYSPACE, Servers
from benchmarks._raw import RawCassandra
from benchmarks._seed import cloned_rows, insert_rows
from benchmarks.report import Figure, Row
from sessionstore import Attachment

GOAL = 1.2
CONCURRENCY = 16
# Units of the plan. Peak memory is set by what is in flight: ``concurrency`` units, each
# holding one page of up to ``page_size`` (100) sessions. With 64 units, pages are full
# from 6,400 sessions on, so 10k and 100k compare equal work in flight. (With the
# default 256 units a 10k table fills only 39% of each page, and its peak is lower for
# that reason alone: see docs/performance.md.)
PARTS = 64


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# The large-session runs: few units of many 1 MB sessions, so that a page could hold up
# to ``page_size`` (100) of them; the budget is set low enough to show in the figures.
LARGE_SESSIONS = 200
LARGE_PARTS = 4
LARGE_CONCURRENCY = 4
LARGE_BUDGET = 8 * MB
UNBOUNDED = 2**62


async def _child(
    table: str,
    target: str,
    expected: int,
    *,
    page_bytes: int | None = None,
    parts: int = PARTS,
    concurrency: int = CONCURRENCY,
) -> dict[str, Any]:
    from sessionstore.jobs import BackfillJob

    servers = Servers()
    async with servers:
        source = await servers.cassandra_backend(table)
        sink = await servers.cassandra_backend(target, name="documentdb")
        before = _status_kb("VmRSS")
        budget = {} if page_bytes is None else {"page_bytes": page_bytes}
        job = BackfillJob(source, sink, name="bench-memory", concurrency=concurrency, **budget)
        samples: list[int] = []

        async def sample() -> None:
            while True:
                samples.append(_status_kb("VmRSS"))
                await asyncio.sleep(0.25)

        sampler = asyncio.ensure_future(sample())
        t0 = time.perf_counter()
        report = await job.run(job.plan(parts=parts))
        elapsed = time.perf_counter() - t0
        sampler.cancel()
        await source.aclose()
        await sink.aclose()
    if not report.ok() or report.counts["sessions"] != expected:
        raise RuntimeError(f"memory backfill incomplete: {report.to_dict()}")
    return {
        "sessions": report.counts["sessions"],
        "seconds": round(elapsed, 2),
        "rss_before_job_mb": round(before / 1024, 1),
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # RSS at each tenth of the run: flat once warm, or growing with the sessions read?
        "rss_by_tenth_mb": [
            round(samples[min(len(samples) - 1, i * len(samples) // 10)] / 1024, 1)
            for i in range(1, 11)
        ]
        if samples
        else [],
    }


async def _seed(servers: Servers, n: int, *, large: bool = False) -> tuple[str, str, float]:
    table = await servers.new_table("mem")
    target = await servers.new_table("memt")
    raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
    import random

    template = small_session(random.Random(7), questions=6)
    if large:
        drawing = Attachment(content_type="image/png", data=random.Random(8).randbytes(MB))
        first = template.answers[0].model_copy(update={"attachments": (drawing,)})
        template = template.model_copy(update={"answers": (first, *template.answers[1:])})
    t0 = time.perf_counter()
    await insert_rows(raw, cloned_rows(template, n), window=16 if large else 256)
    return table, target, time.perf_counter() - t0


async def _run_child(table: str, target: str, n: int, *options: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.memory",
        table,
        target,
        str(n),
        *options,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {n} sessions failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def run(servers: Servers, sizes: tuple[int, ...]) -> list[Row]:
    """One row: peak RSS of the largest size over the smallest."""
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        table, target, seeded = await _seed(servers, n)
        results[n] = {**await _run_child(table, target, n), "seed_seconds": round(seeded, 1)}
        await servers.drop_table(table)
        await servers.drop_table(target)
    small, large = min(sizes), max(sizes)
    lib, base = results[large], results[small]
    return [
        Row(
            "memory.backfill",
            "6",
            f"backfill peak RSS, {large // 1000}k vs {small // 1000}k sessions (MB)",
            "MB",
            Figure(lib["peak_rss_mb"]),
            Figure(base["peak_rss_mb"]),
            lib["peak_rss_mb"] / base["peak_rss_mb"],
            ("<=", GOAL),
            {
                "runs": {str(k): v for k, v in results.items()},
                "concurrency": CONCURRENCY,
                "parts": PARTS,
                "growth_mb": round(lib["peak_rss_mb"] - base["peak_rss_mb"], 1),
            },
        ),
        await _large(servers),
    ]


async def _large(servers: Servers) -> Row:
    """Peak RSS of a backfill of 1 MB sessions with the page budget, and without one."""
    n = LARGE_SESSIONS
    table, target, seeded = await _seed(servers, n, large=True)
    shape = (str(LARGE_PARTS), str(LARGE_CONCURRENCY))
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, budget in (("budget", LARGE_BUDGET), ("unbounded", UNBOUNDED)):
            await servers.execute(f"TRUNCATE {KEYSPACE}.{target}")
            runs[name] = await _run_child(table, target, n, str(budget), *shape)
    finally:
        await servers.drop_table(table)
        await servers.drop_table(target)
    lib, base = runs["budget"], runs["unbounded"]
    return Row(
        "memory.large_sessions",
        "6 (info)",
        f"backfill peak RSS, {n} sessions of 1 MB, page_bytes {LARGE_BUDGET // MB} MB vs none (MB)",
        "MB",
        Figure(lib["peak_rss_mb"]),
        Figure(base["peak_rss_mb"]),
        lib["peak_rss_mb"] / base["peak_rss_mb"],
        None,
        {
            "runs": runs,
            "parts": LARGE_PARTS,
            "concurrency": LARGE_CONCURRENCY,
            "page_bytes": LARGE_BUDGET,
            "seed_seconds": round(seeded, 1),
        },
    )


if __name__ == "__main__":
    # TABLE TARGET COUNT [PAGE_BYTES PARTS CONCURRENCY]
    table_arg, target_arg, count, *rest = sys.argv[1:]
    options = dict(zip(("page_bytes", "parts", "concurrency"), map(int, rest), strict=False))
    print(json.dumps(asyncio.run(_child(table_arg, target_arg, int(count), **options))))
