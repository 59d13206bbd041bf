"""Items 4 and 5: backfill and verify throughput, against raw-driver loops of the same shape.

Source: a Cassandra table seeded with the data set. Target, fresh and empty for every
backfill run (made before the clock starts):

- **DocumentDB** (FerretDB here), the migration itself. FerretDB 1.24 scans the whole
  collection for a lookup by binary ``_id`` and for every conditional write, so a copy
  into it costs O(n^2) server work whoever the client is: its data sets are small.
- **a second Cassandra table** (a backend named ``documentdb``): a target that is not
  the bottleneck, where the client's own cost shows; the concurrency scaling and the
  large-attachment mix are measured there too.

The library runs :class:`~sessionstore.jobs.BackfillJob` / :class:`~sessionstore.jobs.
VerifyJob` (in-memory checkpoints, no rate limit, default page size and in-flight limit).
The baselines are plain loops written here with the same structure: the same token-range
units, ``concurrency`` units at a time, pages of ``page_size`` rows, every row of a page
handled concurrently, at most ``max_in_flight`` requests in flight. Each row is written
with the same statements as the backend's (for DocumentDB, after converting the row to
the same document: insert_one, then the conditional replace_one on a duplicate key, the
order a backfill's target uses, ``insert_first``; the prepared INSERT ... USING
TIMESTAMP for Cassandra). Verify's baseline makes the same two passes: every
source row looked up in the target and compared, then every target record looked up in
the source.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pymongo import ASCENDING

from benchmarks._data import MB, describe, sessions, size
from benchmarks._env import CONSISTENCY, KEYSPACE, Servers
from benchmarks._raw import (
    BUSY_RETRIES,
    RawCassandra,
    bson_id,
    mongo_put,
    row_to_doc,
    row_to_values,
    same_content,
)
from benchmarks._seed import insert_rows, rows_of
from benchmarks.report import Figure, Row
from sessionstore import KeyRange, SessionBackend
from sessionstore.jobs import BackfillJob, VerifyJob

GOAL = 0.9
PAGE_SIZE = 100  # BackfillJob's and VerifyJob's defaults
MAX_IN_FLIGHT = 32
TOKENS = KeyRange(-(2**63), 2**63)
UUIDS = KeyRange(0, 2**128)

Each = Callable[[Any], Awaitable[None]]


# ----------------------------------------------------------------------------- baselines


async def _units(
    ranges: list[KeyRange], concurrency: int, unit: Callable[[KeyRange], Awaitable[None]]
) -> None:
    pending = collections.deque(ranges)

    async def worker() -> None:
        while pending:
            await unit(pending.popleft())

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(ranges)))))


async def _token_pages(
    raw: RawCassandra, key_range: KeyRange, in_flight: asyncio.Semaphore, each: Each
) -> int:
    """Call ``each`` on every row of a token range, a page at a time; return the count."""
    low, high = max(key_range.start, -(2**63)), min(key_range.end, 2**63) - 1
    if low > high or high == -(2**63):
        return 0
    state: bytes | None = None
    count = 0
    while True:
        async with in_flight:
            rows, state = await raw.scan_page(low, high, PAGE_SIZE, state)
        await asyncio.gather(*(each(row) for row in rows))
        count += len(rows)
        if not state:
            return count


class Target(Protocol):
    """What the benchmark needs from a target store, for the library and the baseline."""

    kind: str
    label: str

    async def reset(self) -> None:
        """Make the target empty."""

    async def backend(self) -> SessionBackend:
        """An opened library backend on the target, named ``documentdb``."""

    async def put(self, row: Any) -> None:
        """Baseline: copy one source row (as selected) with the backend's write."""

    async def holds(self, row: Any) -> bool:
        """Baseline: whether the target holds exactly this source row."""

    async def scan(
        self, concurrency: int, parts: int, in_flight: asyncio.Semaphore, each: Each
    ) -> None:
        """Baseline: call ``each(session_id)`` for every key of the target."""


class DocumentDBTarget:
    kind = "documentdb"
    label = "DocumentDB (FerretDB)"

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.name = servers.name("bft")
        self.collection: Any = None

    async def reset(self) -> None:
        self.collection = await self.servers.new_collection("bft", self.name)

    async def backend(self) -> SessionBackend:
        # As the command line builds a backfill's target.
        return await self.servers.documentdb_backend(self.collection, insert_first=True)

    async def put(self, row: Any) -> None:
        doc = row_to_doc(row)
        await mongo_put(self.collection, doc, doc["revision"], insert_first=True)

    async def holds(self, row: Any) -> bool:
        expected = row_to_doc(row)
        return same_content(expected, await self.collection.find_one({"_id": expected["_id"]}))

    async def scan(
        self, concurrency: int, parts: int, in_flight: asyncio.Semaphore, each: Each
    ) -> None:
        async def unit(key_range: KeyRange) -> None:
            low = key_range.start
            while True:
                bounds: dict[str, Any] = {"$gte": bson_id(uuid.UUID(int=low))}
                if key_range.end < UUIDS.end:
                    bounds["$lt"] = bson_id(uuid.UUID(int=key_range.end))
                query = {"_id": bounds}
                async with in_flight:
                    docs = [
                        d
                        async for d in self.collection.find(
                            query, sort=[("_id", ASCENDING)], limit=PAGE_SIZE
                        )
                    ]
                await asyncio.gather(*(each(d["_id"]) for d in docs))
                if len(docs) < PAGE_SIZE:
                    return
                low = docs[-1]["_id"].int + 1

        await _units(UUIDS.split(parts), concurrency, unit)


class CassandraTarget:
    kind = "cassandra"
    label = "a Cassandra table"

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.table = ""
        self.raw: RawCassandra | None = None

    async def reset(self) -> None:
        # TRUNCATE keeps the table (and the prepared statements of its open backend).
        if self.table:
            await self.servers.execute(f"TRUNCATE {KEYSPACE}.{self.table}")
            return
        self.table = await self.servers.new_table("bct")
        self.raw = RawCassandra(self.servers.session, KEYSPACE, self.table, CONSISTENCY)

    async def backend(self) -> SessionBackend:
        return await self.servers.cassandra_backend(self.table, name="documentdb")

    async def put(self, row: Any) -> None:
        assert self.raw is not None
        values, revision = row_to_values(row)
        await self.raw.put(values, revision)

    async def holds(self, row: Any) -> bool:
        assert self.raw is not None
        found = await self.raw.get(row[0])
        return found is not None and tuple(found[:11]) == tuple(row[:11])

    async def scan(
        self, concurrency: int, parts: int, in_flight: asyncio.Semaphore, each: Each
    ) -> None:
        raw = self.raw
        assert raw is not None

        async def unit(key_range: KeyRange) -> None:
            await _token_pages(raw, key_range, in_flight, lambda row: each(row[0]))

        await _units(TOKENS.split(parts), concurrency, unit)


async def raw_backfill(
    source: RawCassandra, target: Target, *, concurrency: int, parts: int
) -> int:
    """Copy every row of the source table into ``target``; returns the number copied."""
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    copied = 0

    async def copy(row: Any) -> None:
        async with in_flight:
            await target.put(row)

    async def unit(key_range: KeyRange) -> None:
        nonlocal copied
        n = await _token_pages(source, key_range, in_flight, copy)
        copied += n  # not "copied += await ...": that reads copied before the await

    await _units(TOKENS.split(parts), concurrency, unit)
    return copied


async def raw_verify(
    source: RawCassandra, target: Target, *, concurrency: int, parts: int
) -> collections.Counter[str]:
    """Both passes of verify with the raw drivers; returns counts by outcome."""
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    counts: collections.Counter[str] = collections.Counter()

    async def check(row: Any) -> None:
        async with in_flight:
            same = await target.holds(row)
        counts["consistent" if same else "different"] += 1

    async def source_unit(key_range: KeyRange) -> None:
        n = await _token_pages(source, key_range, in_flight, check)
        counts["records"] += n

    async def back(session_id: Any) -> None:
        async with in_flight:
            row = await source.get(session_id)
        if row is None:
            counts["only_in_target"] += 1

    await _units(TOKENS.split(parts), concurrency, source_unit)
    await target.scan(concurrency, parts, in_flight, back)
    return counts


# ----------------------------------------------------------------------------- the runs


class _Bench:
    """A seeded source table and a target."""

    def __init__(self, servers: Servers, table: str, target: Target, data: list[Any]) -> None:
        self.servers = servers
        self.table = table
        self.target = target
        self.count = len(data)
        self.nbytes = sum(size(s) for s in data)
        self.data = describe(data)
        self.raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
        #: Requests the library's jobs retried (timeouts, busy connections).
        self.library_retries = 0
        self._backends: tuple[SessionBackend, SessionBackend] | None = None

    @classmethod
    async def seed(
        cls, servers: Servers, target: Target, n: int, *, seed: int, large_every: int = 0
    ) -> _Bench:
        data = sessions(n, seed=seed, large_every=large_every)
        bench = cls(servers, await servers.new_table("bfs"), target, data)
        await insert_rows(bench.raw, rows_of(data), window=16 if large_every else 128)
        # Warm the baselines' PyMongo pool as the library's is warmed (see _library).
        await asyncio.gather(
            *(servers.db["bench_warm"].find_one({"_id": i}) for i in range(MAX_IN_FLIGHT))
        )
        return bench

    async def _library(self) -> tuple[SessionBackend, SessionBackend]:
        """The library's two backends, opened once and warmed (as in a long-lived worker).

        The baselines' connections are warm too: a cold pool would charge the library
        for opening the connections its concurrent requests need.
        """
        if self._backends is None:
            source = await self.servers.cassandra_backend(self.table)
            target = await self.target.backend()
            self._backends = (source, target)
            for backend in self._backends:
                await asyncio.gather(*(backend.get(uuid.uuid4()) for _ in range(MAX_IN_FLIGHT)))
        return self._backends

    async def library_backfill(self, concurrency: int, parts: int) -> float:
        await self.target.reset()
        source, target = await self._library()
        job = BackfillJob(source, target, name="bench-backfill", concurrency=concurrency)
        t0 = time.perf_counter()
        report = await job.run(job.plan(parts=parts), restart=True)
        elapsed = time.perf_counter() - t0
        self.library_retries += report.retries
        if not report.ok() or report.counts["sessions"] != self.count:
            raise RuntimeError(f"library backfill incomplete: {report.to_dict()}")
        return elapsed

    async def raw_backfill(self, concurrency: int, parts: int) -> float:
        await self.target.reset()
        t0 = time.perf_counter()
        copied = await raw_backfill(self.raw, self.target, concurrency=concurrency, parts=parts)
        elapsed = time.perf_counter() - t0
        if copied != self.count:
            raise RuntimeError(f"raw backfill copied {copied} of {self.count}")
        return elapsed

    async def library_verify(self, concurrency: int, parts: int) -> float:
        source, target = await self._library()
        job = VerifyJob(source, target, name="bench-verify", concurrency=concurrency)
        t0 = time.perf_counter()
        report = await job.run(job.plan(parts=parts), restart=True)
        elapsed = time.perf_counter() - t0
        self.library_retries += report.retries
        if not report.ok(strict=True) or report.counts["consistent"] != self.count:
            raise RuntimeError(f"library verify found differences: {report.to_dict()}")
        return elapsed

    async def raw_verify(self, concurrency: int, parts: int) -> float:
        t0 = time.perf_counter()
        counts = await raw_verify(self.raw, self.target, concurrency=concurrency, parts=parts)
        elapsed = time.perf_counter() - t0
        if counts["consistent"] != self.count or counts["different"] or counts["only_in_target"]:
            raise RuntimeError(f"raw verify found differences: {dict(counts)}")
        return elapsed

    async def drop(self) -> None:
        if self._backends is not None:
            for backend in self._backends:
                await backend.aclose()
        await self.servers.drop_table(self.table)
        if isinstance(self.target, CassandraTarget) and self.target.table:
            await self.servers.drop_table(self.target.table)


Runner = Callable[[int, int], Awaitable[float]]


async def _compare(
    library: Runner, baseline: Runner, *, concurrency: int, parts: int, rounds: int
) -> dict[str, list[float]]:
    """Elapsed seconds of each run, library and baseline alternating (AB, BA, ...)."""
    runs: dict[str, list[float]] = {"library": [], "baseline": []}
    variants = {"library": library, "baseline": baseline}
    for r in range(rounds):
        for name in ("library", "baseline") if r % 2 == 0 else ("baseline", "library"):
            runs[name].append(await variants[name](concurrency, parts))
    return runs


def _row(
    key: str,
    item: str,
    title: str,
    *,
    bench: _Bench,
    runs: dict[str, list[float]],
    concurrency: int,
    parts: int,
) -> Row:
    lib = [bench.count / s for s in runs["library"]]
    base = [bench.count / s for s in runs["baseline"]]
    mb = bench.nbytes / MB
    return Row(
        key,
        item,
        title,
        "sessions/s",
        Figure(statistics.median(lib)),
        Figure(statistics.median(base)),
        statistics.median(a / b for a, b in zip(lib, base, strict=True)),
        (">=", GOAL),
        {
            "target": bench.target.kind,
            "mb_per_s": {
                "library": round(statistics.median(lib) * mb / bench.count, 2),
                "baseline": round(statistics.median(base) * mb / bench.count, 2),
            },
            "runs_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
            "round_ratios": [round(a / b, 4) for a, b in zip(lib, base, strict=True)],
            "retries": {"library": bench.library_retries, "baseline": sum(BUSY_RETRIES.values())},
            "data": bench.data,
            "concurrency": concurrency,
            "parts": parts,
        },
    )


async def _series(
    bench: _Bench,
    *,
    label: str,
    concurrencies: tuple[int, ...],
    verify_concurrency: int | None,
    rounds: int,
    parts: int,
    verify_parts: int,
    log: Callable[[str], None],
) -> list[Row]:
    rows = []
    kind = bench.target.kind
    for c in concurrencies:
        log(f"  backfill -> {kind}: {bench.count} {label}, concurrency {c}")
        bench.library_retries = 0
        BUSY_RETRIES.clear()
        runs = await _compare(
            bench.library_backfill, bench.raw_backfill, concurrency=c, parts=parts, rounds=rounds
        )
        rows.append(
            _row(
                f"backfill.{kind}.{label.split(maxsplit=1)[0]}.c{c}",
                "4",
                f"backfill -> {bench.target.label}: {bench.count} {label}, concurrency {c}",
                bench=bench,
                runs=runs,
                concurrency=c,
                parts=parts,
            )
        )
    if verify_concurrency is not None:
        c = verify_concurrency
        log(f"  verify {kind}: {bench.count} {label}, concurrency {c}")
        bench.library_retries = 0
        BUSY_RETRIES.clear()
        runs = await _compare(
            bench.library_verify, bench.raw_verify, concurrency=c, parts=verify_parts, rounds=rounds
        )
        rows.append(
            _row(
                f"verify.{kind}.{label.split(maxsplit=1)[0]}.c{c}",
                "5",
                f"verify {bench.target.label}: {bench.count} {label}, concurrency {c}",
                bench=bench,
                runs=runs,
                concurrency=c,
                parts=verify_parts,
            )
        )
    return rows


async def run(
    servers: Servers,
    *,
    docdb_small: int,
    docdb_mixed: int,
    cassandra_small: int,
    cassandra_mixed: int,
    large_every: int,
    concurrencies: tuple[int, ...],
    docdb_concurrency: int,
    mixed_concurrency: int,
    docdb_rounds: int,
    cassandra_rounds: int,
    parts: int,
    verify_parts: int,
    sections: set[str],
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Rows of items 4 and 5, for both targets."""
    backfill = "backfill" in sections
    verify = "verify" in sections
    mixed_label = f"mixed (1 in {large_every} with 0.5-2 MB)"
    plans: list[tuple[Callable[[Servers], Target], int, int, tuple[int, ...], int | None]] = [
        # target, sessions, 1-in-N large, backfill concurrencies, verify concurrency
        (DocumentDBTarget, docdb_small, 0, concurrencies, docdb_concurrency),
        (DocumentDBTarget, docdb_mixed, large_every, (docdb_concurrency,), None),
        (CassandraTarget, cassandra_small, 0, concurrencies, mixed_concurrency),
        (CassandraTarget, cassandra_mixed, large_every, (mixed_concurrency,), None),
    ]
    rows: list[Row] = []
    for make, n, large, levels, verify_c in plans:
        if not n or not (backfill or (verify and verify_c is not None)):
            continue
        bench = await _Bench.seed(servers, make(servers), n, seed=41 + large, large_every=large)
        try:
            if not backfill:  # verify alone: fill the target once with the baseline
                await bench.raw_backfill(verify_c or 4, parts)
            rows += await _series(
                bench,
                label=mixed_label if large else "small sessions (~4 KB)",
                concurrencies=levels if backfill else (),
                rounds=docdb_rounds if make is DocumentDBTarget else cassandra_rounds,
                parts=parts,
                verify_concurrency=verify_c if verify else None,
                verify_parts=verify_parts,
                log=log,
            )
        finally:
            await bench.drop()
    return rows
