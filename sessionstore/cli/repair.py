"""``sessionstore repair``: drain the service's repair queue against the real stores.

The queue is the SQLite file the service's :class:`~sessionstore.SqliteRepairQueue`
writes. Each queued session is synced newest-wins between the two stores by
:class:`~sessionstore.RepairWorker`; equal-revision conflicts are left for
``sessionstore verify --repair``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from sessionstore.cli import _common as common
from sessionstore.cli import jobs
from sessionstore.phases import Store
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.worker import RepairReport, RepairWorker

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    """Register ``repair``."""
    parser = sub.add_parser(
        "repair",
        help="drain the repair queue: copy the newer record of each queued session across",
    )
    parser.add_argument(
        "--queue",
        metavar="FILE",
        default=os.environ.get("SESSIONSTORE_REPAIR_QUEUE"),
        help="the SQLite repair queue file (SESSIONSTORE_REPAIR_QUEUE)",
    )
    parser.add_argument("--batch-size", type=common.positive_int, default=100)
    parser.add_argument("--concurrency", type=common.positive_int, default=8)
    parser.add_argument("--max-rounds", type=common.positive_int, help="batches at most")
    parser.add_argument("--retry-delay", type=common.positive_float, default=1.0, metavar="SECONDS")
    common.add_output_flags(parser)
    common.add_connection_flags(parser)


def command(args: argparse.Namespace) -> int:
    """Run ``repair``; returns the exit code."""
    common.setup_logging(args.verbose)
    if not args.queue:
        common.error("--queue (or SESSIONSTORE_REPAIR_QUEUE) is required")
        return common.EXIT_USAGE
    if not os.path.isfile(args.queue):
        # Creating an empty queue would hide a mistyped path behind "nothing to repair".
        common.error(f"repair queue {args.queue!r} does not exist")
        return common.EXIT_USAGE
    return common.run(_run(args), interrupted_hint="unfinished repairs stay queued")


async def _run(args: argparse.Namespace) -> int:
    settings = common.connection_settings(args)
    cassandra = documentdb = None
    try:
        cassandra = jobs.make_backend(settings, Store.CASSANDRA)
        documentdb = jobs.make_backend(settings, Store.DOCUMENTDB)
        await common.probe(cassandra, "store", settings.describe(Store.CASSANDRA))
        await common.probe(documentdb, "store", settings.describe(Store.DOCUMENTDB))
        async with SqliteRepairQueue(args.queue) as queue:
            before = await queue.depth()
            common.info(f"repair: {before:,} sessions queued in {args.queue}")
            worker = RepairWorker(
                cassandra=cassandra,
                documentdb=documentdb,
                queue=queue,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                retry_delay_seconds=args.retry_delay,
            )
            total = await _drain(worker, args, before)
            remaining = await queue.depth()
    finally:
        await common.aclose_all(cassandra, documentdb)
    data: dict[str, Any] = dataclasses.asdict(total)
    data.update(queued_before=before, processed=total.processed, remaining=remaining)
    data["ok"] = total.failed == 0 and total.conflicts == 0
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        _print(data)
    return common.EXIT_OK if data["ok"] else common.EXIT_FAILED


async def _drain(worker: RepairWorker, args: argparse.Namespace, depth: int) -> RepairReport:
    bar: Any = None
    if not args.no_progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=depth, unit="session", desc="repair", file=sys.stderr)
        except ImportError:
            bar = None
    total = RepairReport()
    rounds = 0
    try:
        while args.max_rounds is None or rounds < args.max_rounds:
            report = await worker.drain(max_rounds=1)
            if report.processed == 0:
                break
            rounds += 1
            for field in dataclasses.fields(RepairReport):
                value = getattr(total, field.name) + getattr(report, field.name)
                setattr(total, field.name, value)
            if bar is not None:
                bar.update(report.processed)
    finally:
        if bar is not None:
            bar.close()
    return total


def _print(data: dict[str, Any]) -> None:
    rows = [
        ("queued before", data["queued_before"]),
        ("copied the newer record", data["copied"]),
        ("already in sync", data["in_sync"]),
        ("equal-revision conflicts (run verify --repair)", data["conflicts"]),
        ("failed, queued again for a retry", data["failed"]),
        ("still queued", data["remaining"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10,}")
    print("result: " + ("OK" if data["ok"] else "NOT ALL REPAIRED"))
