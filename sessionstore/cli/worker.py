"""``sessionstore worker QUEUE_URL``: run the units of a queue, one process of a fleet.

The queue is filled by ``sessionstore backfill|verify ... --enqueue QUEUE_URL``. Before
the first receive the command checks its inputs, probes both stores (read-only) and
reads the queue's attributes, so bad settings end with exit 2 or 3 and no message is
touched. Both stores are opened once and shared by every unit of the process.

Stopping: the first SIGINT or SIGTERM stops receiving and gives the units in hand
``--grace`` seconds to finish, then releases the rest (visibility 0, so another worker
takes them at once); a second signal releases them right away. Exit codes
(docs/cli.md): 0 stopped with nothing failed (``--until-drained``: the queue is
empty); 1 units failed (their messages went back to the queue, and after its
``maxReceiveCount`` to the dead-letter queue) or the worker stopped on an error;
2 bad usage; 3 a store or the queue is unreachable or refused the credentials;
130 stopped by a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from sessionstore._errors import (
    ConfigurationError,
    InvalidSessionError,
)
from sessionstore.cli import _common as common
from sessionstore.cli import jobs
from sessionstore.cli._common import CommandError
from sessionstore.jobs.engine import DEFAULT_PAGE_BYTES
from sessionstore.jobs.handler import UnitRunner
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.unit_queue import SqsUnitQueue
from sessionstore.jobs.worker import QueueWorker, WorkerReport
from sessionstore.phases import Store

__all__ = ["add_parser", "command", "format_report"]


def add_parser(sub: Any) -> None:
    """Register ``worker``."""
    parser = sub.add_parser(
        "worker",
        help="run the work units of an SQS queue (filled by backfill/verify --enqueue)",
        description="Long-poll QUEUE_URL and run its units, --concurrency at a time; a "
        "message is deleted only when its unit succeeded.",
        epilog="exit codes: 0 ok, 1 units failed or stopped on an error, 2 bad input, "
        "3 store or queue unreachable, 130 stopped by a signal",
    )
    parser.add_argument("queue_url", metavar="QUEUE_URL")
    parser.add_argument("--concurrency", type=common.positive_int, default=4, help="units at once")
    parser.add_argument(
        "--rate", type=common.positive_float, metavar="N", help="sessions/s ceiling (none)"
    )
    parser.add_argument("--page-size", type=common.positive_int, default=100)
    parser.add_argument(
        "--page-mb", type=common.positive_int, default=DEFAULT_PAGE_BYTES // (1024 * 1024)
    )
    parser.add_argument("--max-in-flight", type=common.positive_int, default=32)
    parser.add_argument("--retries", type=common.positive_int, default=6)
    queue = parser.add_argument_group("queue")
    queue.add_argument(
        "--wait-seconds",
        type=_seconds(1, 20),
        default=10,
        help="long-poll wait (10; 1-20): also how long an idle worker takes to stop",
    )
    queue.add_argument(
        "--visibility-timeout",
        type=_seconds(1, 43200),
        metavar="SECONDS",
        help="how long a received message stays hidden, renewed while its unit runs "
        "(the queue's own setting)",
    )
    queue.add_argument(
        "--retry-delay",
        type=_seconds(0, 43200),
        default=10,
        metavar="SECONDS",
        help="a failed unit's message is delivered again after this (10)",
    )
    queue.add_argument(
        "--grace",
        type=_non_negative,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time the units in hand get to finish (30)",
    )
    queue.add_argument(
        "--until-drained",
        action="store_true",
        help="stop when the queue holds no message (visible, in flight or delayed)",
    )
    queue.add_argument("--max-failures", type=common.positive_int, default=10, metavar="N")
    queue.add_argument(
        "--sqs-endpoint",
        metavar="URL",
        help="an SQS-compatible server (SESSIONSTORE_SQS_ENDPOINT; default: AWS, or the "
        "queue URL's own origin for a non-AWS URL)",
    )
    common.add_output_flags(parser, progress=False)
    common.add_connection_flags(parser)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("must be a whole number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def command(args: argparse.Namespace) -> int:
    """Run ``worker``; returns the exit code."""
    common.setup_logging(args.verbose)
    logging.getLogger("botocore").setLevel(logging.WARNING)  # credential lookups at INFO
    try:
        return asyncio.run(_guarded(args))
    except CommandError as exc:
        common.error(str(exc))
        return exc.code
    except (ConfigurationError, InvalidSessionError) as exc:
        common.error(str(exc))
        return common.EXIT_USAGE


async def _guarded(args: argparse.Namespace) -> int:
    """The first signal stops the worker gracefully, a second one at once."""
    stop = asyncio.Event()
    message = "stopping: no new units; the units in hand finish (signal again: now)"
    try:
        with common.stop_on_signals(stop, message):
            return await _run(args, stop)
    except asyncio.CancelledError:
        common.error("interrupted; the units in hand were released to the queue")
        return common.EXIT_INTERRUPTED


async def _run(args: argparse.Namespace, stop: asyncio.Event) -> int:
    queue = SqsUnitQueue.from_url(args.queue_url, endpoint_url=args.sqs_endpoint)
    settings = common.connection_settings(args)
    stores = {s: jobs.make_backend(settings, s, insert_first=True) for s in Store}
    try:
        for store, backend in stores.items():
            await common.probe(backend, "store", settings.describe(store))
        counts = await common.probed(queue.counts(), "queue", args.queue_url)
        common.info(
            f"worker on {args.queue_url}: {args.concurrency} units at once; about "
            f"{counts.visible} units waiting, {counts.in_flight} in flight"
        )
        runner = UnitRunner(
            stores,
            rate=args.rate,
            page_size=args.page_size,
            page_bytes=args.page_mb * 1024 * 1024,
            max_in_flight=args.max_in_flight,
            retry=RetryPolicy(attempts=args.retries),
        )
        worker = QueueWorker(
            queue,
            runner,
            concurrency=args.concurrency,
            wait_seconds=args.wait_seconds,
            visibility_timeout=args.visibility_timeout or counts.visibility_timeout,
            retry_delay=args.retry_delay,
            grace_seconds=args.grace,
            until_drained=args.until_drained,
            max_consecutive_failures=args.max_failures,
        )
        report = await worker.run(stop)
    finally:
        await common.aclose_all(*stores.values())
    data = {"queue": args.queue_url, **report.to_dict()}
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        print(format_report(report, args.queue_url))
    if stop.is_set():
        return common.EXIT_INTERRUPTED
    if report.units_failed or (report.stopped and report.stopped != "queue drained"):
        return common.EXIT_FAILED
    return common.EXIT_OK


def format_report(report: WorkerReport, queue_url: str) -> str:
    """The readable summary of a worker's run."""
    jobs_text = ", ".join(repr(j) for j in sorted(report.jobs)) or "none"
    lines = [
        f"worker on {queue_url}, jobs {jobs_text}",
        f"units: {report.units_done} done, {report.units_failed} failed, "
        f"{report.released} released unfinished, {report.redelivered} redelivered",
        f"sessions: {report.sessions:,} in {report.elapsed_seconds:.1f} s "
        f"({report.sessions_per_second:,.0f} sessions/s)",
    ]
    for action, counts in sorted(report.counts.items()):
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        lines.append(f"{action}: {shown}")
    if report.fields:
        lines.append(
            "differing fields: " + ", ".join(f"{f} ({n})" for f, n in report.fields.items())
        )
    for what, reason in list(report.failures.items())[:10]:
        lines.append(f"failed {what}: {reason}")
    if report.units_failed > 10:
        lines.append(f"... {report.units_failed - 10} more failures (see --json)")
    lines.append(f"stopped: {report.stopped or 'no'}")
    return "\n".join(lines)
