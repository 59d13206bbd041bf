"""``sessionstore repair``: drain the service's repair queue against the real stores.

The queue is the SQLite file a service's :class:`~sessionstore.SqliteRepairQueue`
writes, or the URL of the SQS queue a fleet shares (:class:`~sessionstore.SqsRepairQueue`).
Each queued session is synced newest-wins between the two stores by
:class:`~sessionstore.RepairWorker`. What the worker must not settle by itself (an
equal-revision conflict, a possibly deleted session, a copy that failed
``--max-attempts`` times) becomes a dead letter, listed by session id.

Exit codes: 0 drained (nothing queued, no dead letter); 1 dead letters are left (they
are listed: settle them with ``verify --repair`` or by hand, then ``--requeue-dead``);
4 not drained yet (sessions wait out a back-off or are leased by another worker: run
again, or pass ``--wait``); 2 bad usage; 3 a store or the queue is unreachable; 130
interrupted.

``--follow`` runs until SIGTERM or SIGINT (a sidecar of the service, or any long-lived
worker): it long-polls the queue and repairs sessions as they arrive. A signal lets it
finish the tasks in hand and exit 0 (a second signal stops at once, 130). It exits 1,
listing the session, when a task becomes a dead letter after ``--max-attempts`` failed
attempts: a store that keeps failing would otherwise turn the whole queue into dead
letters, one session after another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sessionstore._errors import BackendError, BackendRejectedError
from sessionstore.backends.base import SessionBackend
from sessionstore.cli import _common as common
from sessionstore.cli import jobs
from sessionstore.phases import Store
from sessionstore.repair.queue import DeadLetter, QueueStats, RepairQueue
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.sqs import SqsRepairQueue
from sessionstore.repair.worker import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TOMBSTONE_GRACE,
    RepairReport,
    RepairWorker,
)

__all__ = [
    "EXIT_NOT_DRAINED",
    "add_parser",
    "add_queue_flag",
    "command",
    "queue_at",
    "queue_file_missing",
]

#: Sessions are still queued (in back-off, or leased by another worker).
EXIT_NOT_DRAINED = 4
#: Dead letters listed in a report, at most.
_LISTED = 1000
#: Seconds each claim of a one-off drain waits on SQS, whose short polls may answer
#: nothing while a small queue still holds messages.
_SQS_DRAIN_WAIT = 1.0


def add_parser(sub: Any) -> None:
    """Register ``repair``."""
    parser = sub.add_parser(
        "repair",
        help="drain the repair queue: copy the newer record of each queued session across",
        epilog="exit codes: 0 drained (--follow: stopped by a signal), 1 dead letters left "
        "(--follow: a session gave up after --max-attempts), 4 sessions still queued "
        "(back-off or leased: run again or --wait), 2 bad input, 3 store or queue unreachable",
    )
    add_queue_flag(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep repairing sessions as they are queued, until SIGTERM or SIGINT",
    )
    parser.add_argument(
        "--poll-seconds",
        type=common.positive_float,
        default=5.0,
        metavar="SECONDS",
        help="--follow: how long each claim waits for a task (a signal is noticed within it)",
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
    if args.follow and (args.dead_letters or args.wait is not None or args.max_rounds):
        common.error(
            "--follow runs until stopped: it takes no --dead-letters, --wait or --max-rounds"
        )
        return common.EXIT_USAGE
    if queue_file_missing(args.queue):
        # Creating an empty queue would hide a mistyped path behind "nothing to repair".
        common.error(f"repair queue {args.queue!r} does not exist")
        return common.EXIT_USAGE
    try:
        requeue = None if args.requeue_dead is None else [uuid.UUID(t) for t in args.requeue_dead]
    except ValueError:
        common.error("--requeue-dead takes session ids (UUIDs)")
        return common.EXIT_USAGE
    return common.run(_run(args, requeue), interrupted_hint="unfinished repairs stay queued")


def _is_url(queue: str) -> bool:
    return queue.startswith(("https://", "http://"))


def add_queue_flag(parser: argparse.ArgumentParser) -> None:
    """``--queue FILE_OR_URL`` (default ``SESSIONSTORE_REPAIR_QUEUE``)."""
    parser.add_argument(
        "--queue",
        metavar="FILE_OR_URL",
        default=os.environ.get("SESSIONSTORE_REPAIR_QUEUE"),
        help="the SQLite repair queue file, or the SQS queue URL (SESSIONSTORE_REPAIR_QUEUE)",
    )


def queue_file_missing(spec: str) -> bool:
    """Whether ``spec`` names a SQLite queue file that does not exist (opening it would
    create an empty queue)."""
    return not _is_url(spec) and not os.path.isfile(spec)


def queue_at(spec: str) -> RepairQueue:
    """The unopened queue: an SQS queue URL, or a SQLite file (checked settings)."""
    return SqsRepairQueue(spec) if _is_url(spec) else SqliteRepairQueue(spec)


async def _run(args: argparse.Namespace, requeue: list[uuid.UUID] | None) -> int:
    queue = queue_at(args.queue)
    try:
        await queue.__aenter__()
    except BackendRejectedError as exc:
        raise common.CommandError(
            common.EXIT_UNREACHABLE,
            f"the repair queue refused the request (credentials or permissions?): {exc}",
        ) from None
    except BackendError as exc:
        raise common.CommandError(
            common.EXIT_UNREACHABLE, f"cannot reach the repair queue: {exc}"
        ) from None
    try:
        if args.dead_letters:
            return _finish(args, await queue.stats(), RepairReport(), await _dead(queue))
        if args.follow:
            return await _follow(args, queue, requeue)
        return await _repair(args, queue, requeue)
    finally:
        await queue.aclose()


@contextlib.asynccontextmanager
async def _stores(args: argparse.Namespace) -> AsyncIterator[tuple[SessionBackend, SessionBackend]]:
    """Both stores, opened and probed (read-only); closed on exit."""
    settings = common.connection_settings(args)
    cassandra = documentdb = None
    try:
        cassandra = jobs.make_backend(settings, Store.CASSANDRA)
        documentdb = jobs.make_backend(settings, Store.DOCUMENTDB)
        await common.probe(cassandra, "store", settings.describe(Store.CASSANDRA))
        await common.probe(documentdb, "store", settings.describe(Store.DOCUMENTDB))
        yield cassandra, documentdb
    finally:
        await common.aclose_all(cassandra, documentdb)


def _worker(
    args: argparse.Namespace, stores: tuple[SessionBackend, SessionBackend], queue: RepairQueue
) -> RepairWorker:
    cassandra, documentdb = stores
    return RepairWorker(
        cassandra=cassandra,
        documentdb=documentdb,
        queue=queue,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        retry_delay_seconds=args.retry_delay,
        max_attempts=args.max_attempts,
        tombstone_grace=dt.timedelta(days=args.tombstone_grace_days),
    )


async def _requeue(queue: RepairQueue, requeue: list[uuid.UUID] | None) -> None:
    if requeue is not None:
        count = await queue.requeue_dead(requeue or None)
        common.info(f"repair: {count:,} dead letters queued again")


async def _repair(
    args: argparse.Namespace, queue: RepairQueue, requeue: list[uuid.UUID] | None
) -> int:
    async with _stores(args) as stores:
        await _requeue(queue, requeue)
        before = await queue.stats()
        common.info(f"repair: {before.pending:,} sessions queued in {args.queue}")
        worker = _worker(args, stores, queue)
        total = await _drain(worker, queue, args, before.pending)
        after = await queue.stats()
    return _finish(args, after, total, await _dead(queue), before=before)


async def _follow(
    args: argparse.Namespace, queue: RepairQueue, requeue: list[uuid.UUID] | None
) -> int:
    async with _stores(args) as stores:
        await _requeue(queue, requeue)
        worker = _worker(args, stores, queue)
        stop = asyncio.Event()
        with common.stop_on_signals(
            stop, "repair: stopping after the tasks in hand (signal again to stop now)"
        ):
            common.info(f"repair: following {args.queue} (SIGTERM or Ctrl-C to stop)")
            total = await worker.follow(
                stop,
                poll_seconds=args.poll_seconds,
                on_batch=lambda report: _log_batch(args, report),
            )
    dead = worker.dead_lettered()
    if total.gave_up:
        code, result = common.EXIT_FAILED, "GAVE UP: a session failed --max-attempts times"
    else:
        code, result = common.EXIT_OK, "STOPPED"
    data: dict[str, Any] = dataclasses.asdict(total)
    data.update(
        processed=total.processed,
        dead_letters=_letters(dead),
        result=result,
    )
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        _print_rows(_rows(data))
        _print_dead(dead)
        print(f"result: {result}")
    return code


def _log_batch(args: argparse.Namespace, report: RepairReport) -> None:
    if args.verbose or report.dead_lettered:
        common.info(
            f"repair: {report.copied} copied, {report.in_sync} in sync, {report.failed} "
            f"failed (retried later), {report.dead_lettered} dead letters"
        )


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
            report = await worker.drain(
                max_rounds=1, wait_seconds=_SQS_DRAIN_WAIT if _is_url(args.queue) else 0.0
            )
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
        dead_letters=_letters(dead),
        drained=after.drained,
        result=result,
    )
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        _print(data, after, dead)
    return code


def _letters(dead: list[DeadLetter]) -> list[dict[str, Any]]:
    return [
        {"session_id": str(d.session_id), "reason": d.reason, "attempts": d.attempts} for d in dead
    ]


def _rows(data: dict[str, Any]) -> list[tuple[str, int]]:
    """The report's table rows of what this run did."""
    return [
        ("copied the newer record", data["copied"]),
        ("already in sync", data["in_sync"]),
        ("failed, queued again for a retry", data["failed"]),
        ("dead letters: equal-revision conflicts", data["conflicts"]),
        ("dead letters: possibly deleted, not copied", data["possibly_deleted"]),
        ("dead letters: gave up after max attempts", data["gave_up"]),
    ]


def _print_rows(rows: list[tuple[str, int]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10,}")


def _print_dead(dead: list[DeadLetter]) -> None:
    for letter in dead:
        print(f"dead letter {letter.session_id}  {letter.reason}  ({letter.attempts} attempts)")


def _print(data: dict[str, Any], after: QueueStats, dead: list[DeadLetter]) -> None:
    rows = [
        *_rows(data),
        ("still queued: ready", after.ready),
        ("still queued: back-off or leased", after.waiting),
        ("dead letters in the queue", after.dead),
    ]
    if data["queued_before"] is not None:
        rows.insert(0, ("queued before", data["queued_before"]))
    _print_rows(rows)
    _print_dead(dead)
    if after.dead > len(dead):
        print(f"... and {after.dead - len(dead):,} more dead letters")
    print(f"result: {data['result']}")
