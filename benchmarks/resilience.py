"""Issue 10: what a frozen secondary store costs the caller, and what a repair enqueue costs.

**Freeze.** On servers of the section's own (:mod:`benchmarks._private`: freezing shared
ones would fail other people's calls), a repository as a service builds it (the backends'
``connect``, the default :class:`~sessionstore.Timeouts` and
:class:`~sessionstore.BreakerPolicy`, a :class:`~sessionstore.SqliteRepairQueue` on disk)
saves sessions one at a time, in DUAL_WRITE (FerretDB is the secondary) and in
DOCDB_PRIMARY (Cassandra is). Each round:

1. both servers up, breaker closed: a block of saves in the phase (*normal*) and one in
   its single-store phase (CASSANDRA_ONLY or DOCDB_ONLY), in alternating order;
2. the secondary frozen (SIGSTOP): a block of saves from the freeze on (*frozen*: the
   first ``BreakerPolicy.failures`` wait for the secondary deadline, then the breaker
   opens);
3. still frozen, breaker open: a block in the phase (*open*), one in the single-store
   phase, and one in the phase with the repairs queued in memory instead of SQLite
   (information: what the enqueue's commit and fsync cost), in alternating order;
4. thawed (SIGCONT); saves outside the clock until a probe has closed the breaker.

The rows: *frozen* p99 against *normal* p99 plus the secondary deadline (the goal: at
most 1, "within the secondary deadline of its normal p99"); *open* p99 against the
single-store phase's p99 measured in the same rounds (goal 1.2). Every enqueue's own
time is recorded too (``enqueue_ms`` in the JSON).

**Enqueue.** ``SqliteRepairQueue.enqueue`` timed through its public API on a queue
seeded with 500,000 entries (one ``executemany`` in one transaction, on the queue's own
schema) and on an empty one (it grows to a few hundred entries), interleaved: a new
session (the insert) and a session already queued (the update).

Alone: ``python -m benchmarks.resilience [--quick]`` (or ``python -m benchmarks --only
resilience``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._data import sessions
from benchmarks._env import Servers
from benchmarks._private import PrivateServers
from benchmarks._stats import Block, Op, Series, interleave, paired_ratio, round_ratios, time_block
from benchmarks.report import Figure, Row, environment, table, write_json
from sessionstore import (
    PHASE_PLANS,
    BreakerPolicy,
    BreakerState,
    InMemoryRepairQueue,
    Phase,
    SessionRepository,
    SqliteRepairQueue,
    StaticPhaseSource,
    Store,
    Timeouts,
)

TIMEOUTS = Timeouts()
BREAKER = BreakerPolicy()
OPEN_GOAL = 1.2
#: (phase, its single-store phase): the secondary of each is frozen.
CASES = ((Phase.DUAL_WRITE, Phase.CASSANDRA_ONLY), (Phase.DOCDB_PRIMARY, Phase.DOCDB_ONLY))
SERVER = {Store.CASSANDRA: "cassandra", Store.DOCUMENTDB: "ferretdb"}
LABEL = {Store.CASSANDRA: "Cassandra", Store.DOCUMENTDB: "FerretDB"}


class TimedQueue(SqliteRepairQueue):
    """The SQLite repair queue, recording how long each enqueue took (ns).

    With ``in_memory`` set, enqueues go to an in-memory queue instead: what the write
    path costs without the SQLite commit and its fsync (information only: a process
    crash would lose such a repair).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.samples: list[int] = []
        self.in_memory = False
        self._memory = InMemoryRepairQueue()

    async def enqueue(
        self, session_id: uuid.UUID, reason: str, *, delay_seconds: float = 0.0
    ) -> None:
        start = time.perf_counter_ns()
        if self.in_memory:
            await self._memory.enqueue(session_id, reason, delay_seconds=delay_seconds)
        else:
            await super().enqueue(session_id, reason, delay_seconds=delay_seconds)
        self.samples.append(time.perf_counter_ns() - start)

    def take(self) -> list[int]:
        samples, self.samples = self.samples, []
        return samples


def _ms(block: Block) -> Figure:
    return Figure(block.median / 1e6, block.p99 / 1e6)


def _series_ms(series: Series) -> Figure:
    return Figure(series.median / 1e6, series.p99 / 1e6)


async def _closed_again(repo: SessionRepository, store: Store, save: Op) -> None:
    """Save (outside any clock) until a probe has closed ``store``'s breaker."""
    deadline = time.monotonic() + BREAKER.open_seconds * 6
    i = 0
    while True:
        await save(i)
        await repo.wait_for_comparisons()  # the probe a save started, if one was due
        if (await repo.health()).stores[store].breaker is BreakerState.CLOSED:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the breaker of {store} did not close after the thaw")
        i += 1
        await asyncio.sleep(0.2)


async def _case(
    private: PrivateServers,
    servers: Servers,
    phase: Phase,
    single: Phase,
    *,
    keys: int,
    ops: int,
    rounds: int,
    directory: Path,
    log: Callable[[str], None],
) -> list[Row]:
    secondary = PHASE_PLANS[phase].secondary
    assert secondary is not None
    name = SERVER[secondary]
    source = StaticPhaseSource(phase)
    queue = TimedQueue(directory / f"repairs-{phase.value}.db")
    table_name = await servers.new_table("res")
    collection = await servers.new_collection("res")
    repo = await servers.repository(
        table_name, collection, source, repairs=queue, timeouts=TIMEOUTS, breaker=BREAKER
    )
    blocks: dict[str, list[Block]] = {
        k: [] for k in ("normal", "single", "frozen", "open", "single_frozen", "open_memory")
    }
    enqueue_open: list[int] = []
    async with repo:
        saved = [await repo.save(s) for s in sessions(keys, seed=17)]
        n = len(saved)

        def save(i: int) -> Any:
            return repo.save(saved[i % n])

        async def timed(kind: str, phase_now: Phase, start: int) -> None:
            source.phase = phase_now
            queue.in_memory = kind == "open_memory"
            blocks[kind].append(await time_block(save, ops, start))
            queue.in_memory = False

        for _ in range(ops):  # warm-up: connections, prepared statements, the JIT
            await save(0)
        for r in range(rounds):
            log(f"    {phase.name}, {LABEL[secondary]} frozen: round {r + 1}/{rounds}")
            base = r * 6 * ops
            pair = [("normal", phase), ("single", single)]
            for k, (kind, p) in enumerate(pair if r % 2 == 0 else pair[::-1]):
                await timed(kind, p, base + k * ops)
            queue.take()
            await private.freeze(name)
            try:
                await timed("frozen", phase, base + 2 * ops)
                three = [("open", phase), ("single_frozen", single), ("open_memory", phase)]
                for k, (kind, p) in enumerate(three if r % 2 == 0 else three[::-1]):
                    queue.take()
                    await timed(kind, p, base + (3 + k) * ops)
                    if kind == "open":
                        enqueue_open += queue.take()
            finally:
                await private.thaw(name)
            source.phase = phase
            await _closed_again(repo, secondary, save)
            for i in range(ops // 4):  # new connections to the thawed server, off the clock
                await save(i)
        stats = repo.stats
        counts = {
            "secondary_skipped": stats.secondary_skipped,
            "breaker_transitions": stats.breaker_transitions,
            "repairs_enqueued": stats.repairs_enqueued,
        }

    s = {k: Series(v) for k, v in blocks.items()}
    deadline_ns = TIMEOUTS.secondary_write * 1e9
    within = [
        f.p99 / (nb.p99 + deadline_ns)
        for f, nb in zip(blocks["frozen"], blocks["normal"], strict=True)
    ]
    label, server = phase.name, LABEL[secondary]
    common = {"calls_per_block": ops, "rounds": rounds, **counts}
    enqueue = Block(list(enqueue_open))
    enqueue_ms = {
        "median": round(enqueue.median / 1e6, 3) if enqueue.samples else None,
        "p99": round(enqueue.p99 / 1e6, 3) if enqueue.samples else None,
        "count": len(enqueue.samples),
    }
    return [
        Row(
            f"resilience.{phase.value}.normal",
            "10 (info)",
            f"save {label} vs {single.name}, both up",
            "ms",
            _series_ms(s["normal"]),
            _series_ms(s["single"]),
            paired_ratio(s["normal"], s["single"], "p99"),
            None,
            {"round_ratios": round_ratios(s["normal"], s["single"], "p99"), **common},
        ),
        Row(
            f"resilience.{phase.value}.frozen",
            "10",
            f"save {label} p99 from a {server} freeze on vs normal p99 + "
            f"{TIMEOUTS.secondary_write:g} s",
            "ms",
            _series_ms(s["frozen"]),
            Figure(s["normal"].median / 1e6, s["normal"].p99 / 1e6 + deadline_ns / 1e6),
            float(statistics.median(within)),
            ("<=", 1.0),
            {
                "round_ratios": within,
                "max_ms": [round(max(b.samples) / 1e6, 1) for b in blocks["frozen"]],
                **common,
            },
        ),
        Row(
            f"resilience.{phase.value}.open",
            "10",
            f"save {label}, {server} frozen, breaker open, vs {single.name} p99",
            "ms",
            _series_ms(s["open"]),
            _series_ms(s["single_frozen"]),
            paired_ratio(s["open"], s["single_frozen"], "p99"),
            ("<=", OPEN_GOAL),
            {
                "round_ratios": round_ratios(s["open"], s["single_frozen"], "p99"),
                "median_ratio": paired_ratio(s["open"], s["single_frozen"]),
                "enqueue_ms": enqueue_ms,
                **common,
            },
        ),
        Row(
            f"resilience.{phase.value}.open.in_memory_queue",
            "10 (info)",
            f"the same with an in-memory repair queue (no fsync) vs {single.name} p99",
            "ms",
            _series_ms(s["open_memory"]),
            _series_ms(s["single_frozen"]),
            paired_ratio(s["open_memory"], s["single_frozen"], "p99"),
            None,
            {
                "round_ratios": round_ratios(s["open_memory"], s["single_frozen"], "p99"),
                "median_ratio": paired_ratio(s["open_memory"], s["single_frozen"]),
                **common,
            },
        ),
    ]


def _seed(path: Path, entries: int) -> None:
    """``entries`` pending sessions in one transaction, on the queue's own schema."""
    now = time.time()
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO repair_queue (session_id, reason, generation, visible_at) "
                "VALUES (?, 'secondary_write_failed', 1, ?)",
                ((str(uuid.uuid4()), now) for _ in range(entries)),
            )
    finally:
        db.close()


async def _enqueue_rows(
    directory: Path, *, seeded: int, ops: int, rounds: int, log: Callable[[str], None]
) -> list[Row]:
    full, empty = directory / "full.db", directory / "empty.db"
    async with SqliteRepairQueue(full):
        pass  # creates the file and its schema
    t0 = time.perf_counter()
    await asyncio.to_thread(_seed, full, seeded)
    log(f"    seeded {seeded:,} entries in {time.perf_counter() - t0:.1f} s")
    rows = []
    async with SqliteRepairQueue(full) as big, SqliteRepairQueue(empty) as small:
        for what, new in (("a new session", True), ("a session already queued", False)):
            queued = [uuid.uuid4() for _ in range(ops)]
            for queue in (big, small):
                for sid in queued:
                    await queue.enqueue(sid, "secondary_write_failed")

            def op(queue: SqliteRepairQueue, new: bool = new, queued: list[Any] = queued) -> Op:
                if new:
                    return lambda i: queue.enqueue(uuid.uuid4(), "secondary_write_failed")
                return lambda i: queue.enqueue(queued[i % len(queued)], "secondary_write_failed")

            series = await interleave(
                {"library": op(big), "baseline": op(small)},
                rounds=rounds,
                ops=ops,
                warmup=ops // 4,
            )
            lib, base = series["library"], series["baseline"]
            rows.append(
                Row(
                    f"resilience.enqueue.{'new' if new else 'again'}",
                    "10",
                    f"repair enqueue (SQLite, fsync) of {what}: {seeded:,} queued vs empty",
                    "us",
                    Figure(lib.median / 1000, lib.p99 / 1000),
                    Figure(base.median / 1000, base.p99 / 1000),
                    paired_ratio(lib, base),
                    None,
                    {
                        "round_ratios": round_ratios(lib, base),
                        "p99_ratio": paired_ratio(lib, base, "p99"),
                        "calls_per_side": lib.count,
                        "rounds": rounds,
                        "queued": seeded,
                    },
                )
            )
    return rows


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    # On the disk the service's queue would use (not tmpfs): the fsync is the point.
    root = Path(__file__).resolve().parents[1] / "bench-results"
    root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resilience-", dir=root) as directory:
        yield Path(directory)


async def run(
    *,
    keys: int = 20,
    ops: int = 100,
    rounds: int = 4,
    enqueue_seeded: int = 500_000,
    enqueue_ops: int = 200,
    enqueue_rounds: int = 6,
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """The rows of issue 10: freeze cases on private servers, then the enqueue cost."""
    rows: list[Row] = []
    with _scratch() as directory:
        log("  repair enqueue at 0 and at 500k entries")
        rows += await _enqueue_rows(
            directory, seeded=enqueue_seeded, ops=enqueue_ops, rounds=enqueue_rounds, log=log
        )
        log("  starting the section's own Cassandra and FerretDB (scripts/servers)")
        t0 = time.perf_counter()
        async with PrivateServers() as private:
            log(f"  up in {time.perf_counter() - t0:.0f} s")
            async with Servers(
                cassandra_port=private.cassandra_port, mongodb_uri=private.mongodb_uri
            ) as servers:
                for phase, single in CASES:
                    rows += await _case(
                        private,
                        servers,
                        phase,
                        single,
                        keys=keys,
                        ops=ops,
                        rounds=rounds,
                        directory=directory,
                        log=log,
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resilience", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run (figures mean little)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/resilience.json"))
    args = parser.parse_args(argv)
    sizes: dict[str, Any] = {}
    if args.quick:
        sizes = {"ops": 40, "rounds": 1, "enqueue_seeded": 50_000, "enqueue_rounds": 2}

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    meta: dict[str, Any] = {"environment": environment(), "quick": args.quick, "sizes": sizes}
    started = time.perf_counter()
    rows = asyncio.run(run(log=log, **sizes))
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, rows, meta)
    print(table(rows))
    print(f"\ntotal {meta['total_seconds']} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
