"""Item 4, fan-out: 1, 2 and 4 ``sessionstore worker`` processes against one in-process
``sessionstore backfill``, over the same plan, on the real pair and ElasticMQ.

The plan is the original migration's shape: a Cassandra table of small sessions (~4 KB,
benchmarks/_data.py) copied to DocumentDB (FerretDB) as id batches of 20, one batch per
message. Every variant is a command-line process, as an operator runs it, started on a
fresh, empty target collection:

- **in-process**: ``sessionstore backfill --ids FILE --batch 20 --concurrency C``; its
  rate is its report's (the job's run, without interpreter start and store probes);
- **N workers**: the plan is enqueued (``backfill --enqueue``, before the clock), then
  N ``sessionstore worker --concurrency C --until-drained`` start at once. The clock
  runs from the first worker ready (stores probed, about to receive) to the queue
  drained (its counts polled 10 times a second), so start-up is left out here too and
  reported apart.

Each figure is sessions/s; the ratio is fleet / in-process, measured in the same run.
Also reported: client CPU per session (every process of the variant: the worker's queue
calls and JSON against the in-process run's checkpoint writes) and, when the servers
run on this machine (their pid files under ``SESSIONSTORE_SERVERS_DIR``), their CPU per
session. The machine's cores are shared by Cassandra, FerretDB, ElasticMQ and every
client process: on 2 cores this shows the fan-out's overhead, not how it scales on AWS
(see docs/capacity.md).

Run alone: ``python -m benchmarks.fanout [--quick]``, or ``python -m benchmarks --only fanout``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import _servercpu
from benchmarks._data import KB, describe, sessions
from benchmarks._env import (
    CASSANDRA_HOSTS,
    CASSANDRA_PORT,
    CONSISTENCY,
    DATABASE,
    KEYSPACE,
    MONGODB_URI,
    Servers,
)
from benchmarks._raw import RawCassandra
from benchmarks._seed import insert_rows, rows_of
from benchmarks.report import Figure, Row
from sessionstore import Attachment, StudentSession

BATCH = 20  # sessions a message, as in the original migration
SQS_ENDPOINT = os.environ.get(
    "SESSIONSTORE_SQS_ENDPOINT",
    f"http://127.0.0.1:{os.environ.get('SESSIONSTORE_SQS_PORT', '19324')}",
)
_READY = re.compile(rb"^worker on ")


@dataclasses.dataclass
class Run:
    """One timed variant: sessions copied, seconds, client and server CPU seconds."""

    sessions: int
    seconds: float
    client_cpu: float
    server_cpu: dict[str, float]
    startup_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sessionstore", *args]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _queue() -> Iterator[tuple[Any, str]]:
    import boto3

    client = boto3.client(
        "sqs",
        endpoint_url=SQS_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - ElasticMQ checks no credentials
    )
    url = client.create_queue(
        QueueName=f"sessionstore-bench-{uuid.uuid4().hex[:12]}",
        Attributes={"VisibilityTimeout": "60"},
    )["QueueUrl"]
    try:
        yield client, url
    finally:
        client.delete_queue(QueueUrl=url)


class Bench:
    """A seeded source table, an id file, and the environment the commands need."""

    def __init__(self, servers: Servers, table: str, ids: Path, count: int) -> None:
        self.servers = servers
        self.table = table
        self.ids = ids
        self.count = count
        self.collection = ""

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SESSIONSTORE_CASSANDRA_HOSTS": ",".join(CASSANDRA_HOSTS),
            "SESSIONSTORE_CASSANDRA_PORT": str(CASSANDRA_PORT),
            "SESSIONSTORE_CASSANDRA_KEYSPACE": KEYSPACE,
            "SESSIONSTORE_CASSANDRA_TABLE": self.table,
            "SESSIONSTORE_CASSANDRA_PROTOCOL_VERSION": "5",
            "SESSIONSTORE_MONGODB_URI": MONGODB_URI,
            "SESSIONSTORE_DOCUMENTDB_TLS": "false",  # the loopback FerretDB has no TLS
            "SESSIONSTORE_DOCUMENTDB_DATABASE": DATABASE,
            "SESSIONSTORE_DOCUMENTDB_COLLECTION": self.collection,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    async def fresh_target(self) -> None:
        self.collection = self.servers.name("fot")
        await self.servers.new_collection("fot", self.collection)

    async def check_target(self) -> None:
        copied = await self.servers.db[self.collection].count_documents({})
        if copied != self.count:
            raise RuntimeError(f"the target holds {copied} of {self.count} sessions")
        await self.servers.db.drop_collection(self.collection)

    async def startup_cpu(self) -> dict[str, float]:
        """Client CPU seconds of each command doing no work: interpreter start, imports,
        store connections and probes (subtracted from the per-session figures)."""
        await self.fresh_target()
        found = {}
        with _queue() as (_, url), tempfile.TemporaryDirectory() as tmp:
            commands = {
                "in_process": _cli("backfill", "--source", "cassandra", "--ids", str(self.ids),
                                   "--batch", str(BATCH), "--dry-run", "--checkpoint",
                                   str(Path(tmp) / "cp.db")),
                "worker": _cli("worker", url, "--until-drained", "--wait-seconds", "1"),
            }  # fmt: skip
            for name, argv in commands.items():
                cpu = _children_cpu()
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=self.env(), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                if await proc.wait() != 0:
                    raise RuntimeError(f"{name} start-up run exited {proc.returncode}")
                found[name] = _children_cpu() - cpu
        await self.servers.db.drop_collection(self.collection)
        return found

    async def in_process(self, concurrency: int) -> Run:
        await self.fresh_target()
        with tempfile.TemporaryDirectory() as tmp:
            argv = _cli(
                "backfill", "--source", "cassandra", "--ids", str(self.ids),
                "--batch", str(BATCH), "--concurrency", str(concurrency), "--json",
                "--no-progress", "--checkpoint", str(Path(tmp) / "cp.db"),
            )  # fmt: skip
            cpu, server = _children_cpu(), _servercpu.cpu_ns()
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self.env(), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await proc.communicate()
            server_after = _servercpu.cpu_ns()
        if proc.returncode != 0:
            raise RuntimeError(f"backfill exited {proc.returncode}")
        report = json.loads(out)["this_run"]
        await self.check_target()
        return Run(
            sessions=report["counts"]["sessions"],
            seconds=report["elapsed_seconds"],
            client_cpu=_children_cpu() - cpu,
            server_cpu=_cpu_seconds(server, server_after),
        )

    async def fleet(self, workers: int, concurrency: int) -> Run:
        await self.fresh_target()
        with _queue() as (client, url):
            enqueue = await asyncio.create_subprocess_exec(
                *_cli("backfill", "--source", "cassandra", "--ids", str(self.ids), "--enqueue",
                      url),
                env=self.env(), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await enqueue.wait() != 0:
                raise RuntimeError("enqueue failed")
            argv = _cli(
                "worker", url, "--concurrency", str(concurrency), "--until-drained",
                "--wait-seconds", "1", "--json",
            )  # fmt: skip
            cpu, server = _children_cpu(), _servercpu.cpu_ns()
            spawned = time.perf_counter()
            procs = [
                await asyncio.create_subprocess_exec(
                    *argv, env=self.env(), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                for _ in range(workers)
            ]  # fmt: skip
            starts = [asyncio.ensure_future(_ready(p)) for p in procs]
            first, _ = await asyncio.wait(starts, return_when=asyncio.FIRST_COMPLETED)
            ready = min(s.result() for s in first)
            drained = await _drained(client, url)
            await asyncio.gather(*starts)
            outputs = [await p.communicate() for p in procs]
            server_after = _servercpu.cpu_ns()
        for proc, (_, err) in zip(procs, outputs, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"worker exited {proc.returncode}: {err.decode()[-500:]}")
        reports = [json.loads(out) for out, _ in outputs]
        await self.check_target()
        return Run(
            sessions=sum(r["counts"].get("backfill", {}).get("sessions", 0) for r in reports),
            seconds=drained - ready,
            client_cpu=_children_cpu() - cpu,
            server_cpu=_cpu_seconds(server, server_after),
            startup_seconds=ready - spawned,
        )


async def _ready(proc: asyncio.subprocess.Process) -> float:
    """When the worker printed its start line (stores probed, queue read)."""
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        if not line:
            raise RuntimeError("a worker ended before it was ready")
        if _READY.match(line):
            return time.perf_counter()


async def _drained(client: Any, url: str) -> float:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    while True:
        found = await asyncio.to_thread(
            client.get_queue_attributes, QueueUrl=url, AttributeNames=names
        )
        if all(v == "0" for v in found["Attributes"].values()):
            return time.perf_counter()
        await asyncio.sleep(0.1)


def _cpu_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v / 1e9 for k, v in _servercpu.delta(before, after).items()}


async def run(
    servers: Servers,
    *,
    count: int,
    large_count: int,
    large_kb: int,
    workers: tuple[int, ...],
    concurrency: int,
    rounds: int,
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Rows: per data set (small sessions, then large ones), one per fleet size, each
    against the in-process run of the same round."""
    options: dict[str, Any] = {
        "workers": workers,
        "concurrency": concurrency,
        "rounds": rounds,
        "log": log,
    }
    rows = await _measure(servers, "small", sessions(count, seed=61), **options)
    if large_count:
        items = sized_sessions(large_count, kb=large_kb, seed=62)
        rows += await _measure(servers, "large", items, **options)
    return rows


def sized_sessions(n: int, *, kb: int, seed: int) -> list[StudentSession]:
    """``n`` small sessions, each with one drawing of ``kb`` KB (incompressible)."""
    rng = random.Random(seed)
    out = []
    for base in sessions(n, seed=seed):
        drawing = Attachment(
            content_type="image/png", filename="d.png", data=rng.randbytes(kb * KB)
        )
        first = base.answers[0].model_copy(
            update={"attachments": (*base.answers[0].attachments, drawing)}
        )
        out.append(StudentSession.parse({**dict(base), "answers": (first, *base.answers[1:])}))
    return out


async def _measure(
    servers: Servers,
    label: str,
    items: list[StudentSession],
    *,
    workers: tuple[int, ...],
    concurrency: int,
    rounds: int,
    log: Callable[[str], None],
) -> list[Row]:
    table = await servers.new_table("fos")
    data = describe(items)
    await insert_rows(RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY), rows_of(items))
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.txt"
        ids.write_text("\n".join(str(s.session_id) for s in items) + "\n")
        bench = Bench(servers, table, ids, len(items))
        startup = await bench.startup_cpu()
        runs: dict[str, list[Run]] = {"in-process": [], **{f"w{n}": [] for n in workers}}
        names = list(runs)
        for r in range(rounds):
            # alternate the order, so that a slow drift of the shared box hits both sides
            for name in names if r % 2 == 0 else names[::-1]:
                log(f"  fan-out, {label} sessions, round {r + 1}/{rounds}: {name}")
                if name == "in-process":
                    runs[name].append(await bench.in_process(concurrency))
                else:
                    runs[name].append(await bench.fleet(int(name[1:]), concurrency))
    await servers.drop_table(table)
    for name, measured in runs.items():
        processes = 1 if name == "in-process" else int(name[1:])
        per_process = startup["in_process" if name == "in-process" else "worker"]
        for one in measured:
            one.client_cpu -= processes * per_process
    return _rows(
        runs, label=label, workers=workers, concurrency=concurrency, data=data, startup=startup
    )


def _rows(
    runs: dict[str, list[Run]],
    *,
    label: str,
    workers: tuple[int, ...],
    concurrency: int,
    data: dict[str, Any],
    startup: dict[str, float],
) -> list[Row]:
    base = runs["in-process"]
    rows = []
    for n in workers:
        fleet = runs[f"w{n}"]
        ratios = [f.rate / b.rate for f, b in zip(fleet, base, strict=True)]
        rows.append(
            Row(
                f"fanout.{label}.workers{n}",
                "4",
                f"fan-out: {n} worker{'s' if n > 1 else ''} x {concurrency} vs one backfill "
                f"x {concurrency}: {data['sessions']} {label} sessions (median "
                f"{data['median_kb']:,.0f} KB) -> DocumentDB, {BATCH} a message",
                "sessions/s",
                Figure(statistics.median(f.rate for f in fleet)),
                Figure(statistics.median(b.rate for b in base)),
                statistics.median(ratios),
                None,  # information: on a shared 2-core box, scaling is not measurable
                {
                    "round_ratios": [round(x, 4) for x in ratios],
                    "cpus": os.cpu_count(),
                    "workers": n,
                    "concurrency_per_worker": concurrency,
                    "batch": BATCH,
                    "data": data,
                    "mb_per_s": round(statistics.median(f.rate for f in fleet) * _mb(data), 2),
                    "startup_seconds": [round(f.startup_seconds, 2) for f in fleet],
                    "startup_cpu_seconds_per_process": {k: round(v, 2) for k, v in startup.items()},
                    "seconds": {
                        "fleet": [round(f.seconds, 2) for f in fleet],
                        "in_process": [round(b.seconds, 2) for b in base],
                    },
                    # start-up (interpreter, imports, connections) excluded
                    "client_cpu_ms_per_session": {
                        "fleet": _per_session(fleet, lambda r: r.client_cpu),
                        "in_process": _per_session(base, lambda r: r.client_cpu),
                    },
                    "server_cpu_ms_per_session": {
                        server: {
                            "fleet": _per_session(fleet, lambda r, s=server: r.server_cpu[s]),
                            "in_process": _per_session(base, lambda r, s=server: r.server_cpu[s]),
                        }
                        for server in (base[0].server_cpu.keys() & fleet[0].server_cpu.keys())
                    },
                },
            )
        )
    return rows


def _mb(data: dict[str, Any]) -> float:
    return float(data["total_mb"]) / float(data["sessions"])


def _per_session(runs: list[Run], cpu: Callable[[Run], float]) -> float:
    return round(statistics.median(cpu(r) / r.sessions * 1000 for r in runs), 3)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.fanout``: this section alone, printed as a table."""
    from benchmarks import report

    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout")
    parser.add_argument("--quick", action="store_true", help="a smoke run (small sizes)")
    parser.add_argument("--sessions", type=int, default=4000)
    parser.add_argument("--large", type=int, default=320, help="sessions of --large-kb")
    parser.add_argument("--large-kb", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    count, large, rounds = (400, 20, 1) if args.quick else (args.sessions, args.large, args.rounds)

    async def go() -> list[Row]:
        async with Servers() as servers:
            return await run(
                servers,
                count=count,
                large_count=large,
                large_kb=args.large_kb,
                workers=(1, 2, 4),
                concurrency=args.concurrency,
                rounds=rounds,
                log=lambda m: print(m, file=sys.stderr, flush=True),
            )

    rows = asyncio.run(go())
    print(report.table(rows))
    for row in rows:
        print(row.key, json.dumps(row.extra, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
