"""``sessionstore repair``: drain the service's repair queue against the real stores.

The queue is the SQLite file the service's :class:`~sessionstore.SqliteRepairQueue`
writes. Each queued session is synced newest-wins between the two stores by
:class:`~sessionstore.RepairWorker`. What the worker must not settle by itself (an
equal-revision conflict, a possibly deleted session, a copy that failed
``--max-attempts`` times) becomes a dead letter, listed by session id.

Exit codes: 0 drained (nothing queued, no dead letter); 1 dead letters are left (they
are listed: settle them with ``verify --repair`` or by hand, then ``--requeue-dead``);
4 not drained yet (sessions wait out a back-off or are leased by another worker: run
again, or pass ``--wait``); 2 bad usage; 3 a store is unreachable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import sys
import time
import uuid
from typing import Any

from sessionstore.cli import _common as common
from sessionstore.cli import jobs
from sessionstore.phases import Store
from sessionstore.repair.queue import DeadLetter, QueueStats, RepairQueue
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.worker import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TOMBSTONE_GRACE,
    RepairReport,
    RepairWorker,
)

__all__ = ["EXIT_NOT_DRAINED", "add_parser", "command"]

#: Sessions are still queued (in back-off, or leased by another worker).
EXIT_NOT_DRAINED = 4
#: Dead letters listed in a report, at most.
_LISTED = 1000


def add_parser(sub: Any) -> None:
    """Register ``repair``."""
    parser = sub.add_parser(
        "repair",
        help="drain the repair queue: copy the newer record of each queued session across",
        epilog="exit codes: 0 drained, 1 dead letters left (listed), 4 sessions still "
        "queued (back-off or leased: run again or --wait), 2 bad input, 3 store unreachable",
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
    parser.add_argument(
        "--max-attempts",
        type=common.positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"failed attempts before a session becomes a dead letter ({DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--tombstone-grace-days",
        type=common.positive_float,
        default=DEFAULT_TOMBSTONE_GRACE / dt.timedelta(days=1),
        metavar="DAYS",
        help="a live copy older than this is never copied into a store that lacks the key",
    )
    parser.add_argument(
        "--wait",
        type=common.positive_float,
        metavar="SECONDS",
        help="keep draining until the queue is drained or this long has passed",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--dead-letters",
        action="store_true",
        help="only list the dead letters (touches no store)",
    )
    what.add_argument(
        "--requeue-dead",
        nargs="*",
        metavar="SESSION_ID",
        help="queue dead letters again (all, or these ids), then drain",
    )
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
    try:
        requeue = None if args.requeue_dead is None else [uuid.UUID(t) for t in args.requeue_dead]
    except ValueError:
        common.error("--requeue-dead takes session ids (UUIDs)")
        return common.EXIT_USAGE
    return common.run(_run(args, requeue), interrupted_hint="unfinished repairs stay queued")


async def _run(args: argparse.Namespace, requeue: list[uuid.UUID] | None) -> int:
    async with SqliteRepairQueue(args.queue) as queue:
        if args.dead_letters:
            return _finish(args, await queue.stats(), RepairReport(), await _dead(queue))
        return await _repair(args, queue, requeue)


async def _repair(
    args: argparse.Namespace, queue: RepairQueue, requeue: list[uuid.UUID] | None
) -> int:
    settings = common.connection_settings(args)
    cassandra = documentdb = None
    try:
        cassandra = jobs.make_backend(settings, Store.CASSANDRA)
        documentdb = jobs.make_backend(settings, Store.DOCUMENTDB)
        await common.probe(cassandra, "store", settings.describe(Store.CASSANDRA))
        await common.probe(documentdb, "store", settings.describe(Store.DOCUMENTDB))
        if requeue is not None:
            count = await queue.requeue_dead(requeue or None)
            common.info(f"repair: {count:,} dead letters queued again")
        before = await queue.stats()
        common.info(f"repair: {before.pending:,} sessions queued in {args.queue}")
        worker = RepairWorker(
            cassandra=cassandra,
            documentdb=documentdb,
            queue=queue,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            retry_delay_seconds=args.retry_delay,
            max_attempts=args.max_attempts,
            tombstone_grace=dt.timedelta(days=args.tombstone_grace_days),
        )
        total = await _drain(worker, queue, args, before.pending)
        after = await queue.stats()
    finally:
        await common.aclose_all(cassandra, documentdb)
    return _finish(args, after, total, await _dead(queue), before=before)


async def _dead(queue: RepairQueue) -> list[DeadLetter]:
    return await queue.dead_letters(_LISTED)


async def _drain(
    worker: RepairWorker, queue: RepairQueue, args: argparse.Namespace, depth: int
) -> RepairReport:
    bar: Any = None
    if not args.no_progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=depth, unit="session", desc="repair", file=sys.stderr)
        except ImportError:
            bar = None
    total = RepairReport()
    rounds = 0
    deadline = None if args.wait is None else time.monotonic() + args.wait
    try:
        while args.max_rounds is None or rounds < args.max_rounds:
            report = await worker.drain(max_rounds=1)
            if report.processed:
                rounds += 1
                total.merge(report)
                if bar is not None:
                    bar.update(report.processed)
                continue
            # Nothing ready: done, unless sessions wait out a back-off and --wait allows.
            if deadline is None or time.monotonic() >= deadline:
                break
            if (await queue.stats()).pending == 0:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        if bar is not None:
            bar.close()
    return total


def _finish(
    args: argparse.Namespace,
    after: QueueStats,
    total: RepairReport,
    dead: list[DeadLetter],
    *,
    before: QueueStats | None = None,
) -> int:
    if after.dead:
        code, result = common.EXIT_FAILED, "DEAD LETTERS LEFT: look at the sessions listed"
    elif after.pending:
        code, result = EXIT_NOT_DRAINED, "NOT DRAINED: sessions still queued; run again"
    else:
        code, result = common.EXIT_OK, "DRAINED"
    data: dict[str, Any] = dataclasses.asdict(total)
    data.update(
        queued_before=None if before is None else before.pending,
        processed=total.processed,
        remaining={"ready": after.ready, "waiting": after.waiting, "dead": after.dead},
        dead_letters=[
            {"session_id": str(d.session_id), "reason": d.reason, "attempts": d.attempts}
            for d in dead
        ],
        drained=after.drained,
        result=result,
    )
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        _print(data, after, dead)
    return code


def _print(data: dict[str, Any], after: QueueStats, dead: list[DeadLetter]) -> None:
    rows = [
        ("copied the newer record", data["copied"]),
        ("already in sync", data["in_sync"]),
        ("failed, queued again for a retry", data["failed"]),
        ("dead letters: equal-revision conflicts", data["conflicts"]),
        ("dead letters: possibly deleted, not copied", data["possibly_deleted"]),
        ("dead letters: gave up after max attempts", data["gave_up"]),
        ("still queued: ready", after.ready),
        ("still queued: back-off or leased", after.waiting),
        ("dead letters in the queue", after.dead),
    ]
    if data["queued_before"] is not None:
        rows.insert(0, ("queued before", data["queued_before"]))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10,}")
    for letter in dead:
        print(f"dead letter {letter.session_id}  {letter.reason}  ({letter.attempts} attempts)")
    if after.dead > len(dead):
        print(f"... and {after.dead - len(dead):,} more dead letters")
    print(f"result: {data['result']}")
