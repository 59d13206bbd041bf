"""``backfill|verify ... --enqueue QUEUE_URL``: send a job's units to an SQS queue.

The plan is the one ``--print-units`` prints (no store is touched: workers probe the
stores when they start); the queue is checked (``GetQueueAttributes``) before the first
message is sent. Messages carry ids and key ranges only. Sending the same plan twice is
harmless (units are idempotent), so a send that failed half-way can simply be repeated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sessionstore._errors import BackendError
from sessionstore.cli import _common as common
from sessionstore.cli._common import CommandError
from sessionstore.jobs.unit_queue import SqsUnitQueue
from sessionstore.jobs.units import JobAction, WorkUnit

__all__ = ["enqueue_units"]


async def enqueue_units(
    args: argparse.Namespace, action: JobAction, name: str, units: Sequence[WorkUnit]
) -> int:
    """Send ``units`` to ``args.enqueue``; prints the job name and the count."""
    queue = SqsUnitQueue.from_url(args.enqueue, endpoint_url=args.sqs_endpoint)
    counts = await common.probed(queue.counts(), "queue", args.enqueue)
    source = args.source
    common.info(f"{action} {source} -> {source.other}: job {name!r}, {len(units)} units")
    if counts.visible or counts.in_flight or counts.delayed:
        common.info(
            f"  the queue already holds about {counts.visible + counts.delayed} waiting and "
            f"{counts.in_flight} in-flight messages"
        )
    if args.dry_run:
        common.info("dry run: the queue is reachable; nothing was sent")
        return common.EXIT_OK
    try:
        sent = await queue.enqueue(units)
    except BackendError as exc:
        raise CommandError(
            common.EXIT_FAILED,
            f"sending stopped: {exc}; send the same plan again (--job {name}): "
            "a unit delivered twice changes nothing",
        ) from None
    sized = [u.size_hint for u in units]
    data = {
        "job": name,
        "action": action.value,
        "source": source.value,
        "target": source.other.value,
        "queue": args.enqueue,
        "units": sent,
        "sessions": sum(n for n in sized if n is not None) if units and None not in sized else None,
        "visibility_timeout": counts.visibility_timeout,
    }
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        print(f"enqueued {sent} units of job {name!r} to {args.enqueue}")
    after = "; then `sessionstore verify` proves the copy complete"
    common.info(
        f"run `sessionstore worker {args.enqueue}` (or the Lambda) to process them"
        + (after if action is JobAction.BACKFILL else "")
    )
    return common.EXIT_OK
