"""``sessionstore purge``: remove old tombstones from both stores (docs/cli.md#purge).

Every input is checked before any store is touched: the tombstone age (at least the
tombstone grace unless ``--allow-below-grace``), the shard, the job name and checkpoint
(a new job, or the one to resume: :mod:`sessionstore.cli.runs`), the connection
settings, then a read-only probe of both stores. With ``--other-store-retired`` the
other store is never configured, opened or touched. ``--dry-run`` runs the job, counting
what would be purged, and writes nothing: neither store, nor the checkpoint file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from sessionstore.cli import _common as common
from sessionstore.cli import jobs, runs
from sessionstore.cli._common import CommandError
from sessionstore.cli.progress import ProgressBar
from sessionstore.jobs.checkpoint import (
    CheckpointStore,
    MemoryCheckpointStore,
    SqliteCheckpointStore,
)
from sessionstore.jobs.engine import JobReport
from sessionstore.jobs.purge import PurgeJob, check_older_than
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.jobs.units import JobAction, WorkUnit, parse_shard
from sessionstore.phases import Store
from sessionstore.repair.worker import DEFAULT_TOMBSTONE_GRACE

__all__ = ["add_parser", "command"]

_GRACE_DAYS = DEFAULT_TOMBSTONE_GRACE / dt.timedelta(days=1)


def add_parser(sub: Any) -> None:
    """Register ``purge``."""
    parser = sub.add_parser(
        "purge",
        help="remove tombstones older than the grace period from both stores",
        description="Scan both stores (--source first) for tombstones older than "
        "--older-than-days and remove each from the other store, then from the scanned "
        "one; a key re-created in the other store is left alone.",
    )
    parser.add_argument(
        "--source",
        required=True,
        type=common.store_choice,
        metavar="STORE",
        help="the store scanned first; with --other-store-retired, the only one",
    )
    what = parser.add_argument_group("what to purge")
    what.add_argument(
        "--older-than-days",
        type=common.positive_float,
        default=_GRACE_DAYS,
        metavar="DAYS",
        help=f"least age of a purged tombstone ({_GRACE_DAYS:g}, also the minimum)",
    )
    what.add_argument(
        "--allow-below-grace",
        action="store_true",
        help=f"accept --older-than-days below {_GRACE_DAYS:g}: only if every repair "
        "worker runs with a tombstone grace no longer than it",
    )
    what.add_argument(
        "--other-store-retired",
        action="store_true",
        help="POINT OF NO RETURN: the other store's data is destroyed; purge --source "
        "alone and never touch the other store (no rollback to it is possible afterwards)",
    )
    what.add_argument(
        "--parts",
        type=common.positive_int,
        default=runs.DEFAULT_PARTS,
        help=f"units per store ({runs.DEFAULT_PARTS})",
    )
    what.add_argument("--shard", metavar="i/N", help="run only shard i of N (0-based; needs --job)")
    run = jobs.add_run_flags(parser)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be purged; write nothing (no checkpoint either)",
    )
    parser.set_defaults(ranges=None, print_units=False)  # what runs.py reads of other jobs
    common.add_output_flags(parser)
    common.add_connection_flags(parser)


def command(args: argparse.Namespace) -> int:
    """Run ``purge``; returns the exit code."""
    common.setup_logging(args.verbose)
    hint = (
        "completed units are checkpointed; add --resume to the same command to continue"
        if not args.dry_run
        else "a dry run keeps no checkpoint"
    )
    return common.run(_run(args), interrupted_hint=hint)


async def _run(args: argparse.Namespace) -> int:
    source_store: Store = args.source
    # Inputs first: nothing below this block runs on bad input.
    older_than = dt.timedelta(days=args.older_than_days)
    check_older_than(older_than, allow_below_grace=args.allow_below_grace)
    if args.dry_run and (args.resume is not None or args.restart):
        raise CommandError(
            common.EXIT_USAGE, "--dry-run keeps no checkpoint: drop --resume and --restart"
        )
    shard_spec = parse_shard(args.shard) if args.shard else None
    named = runs.check_run_flags(args)
    name = named or runs.new_job_name(args, JobAction.PURGE, None)
    settings = common.connection_settings(args)

    source = other = None
    try:
        source = jobs.make_backend(settings, source_store)
        if not args.other_store_retired:
            other = jobs.make_backend(settings, source_store.other)
        checkpoints: CheckpointStore = (
            MemoryCheckpointStore() if args.dry_run else SqliteCheckpointStore(args.checkpoint)
        )
        enabled = not args.no_progress and sys.stderr.isatty()
        bar = ProgressBar(f"purge {_stores(args)}", enabled=enabled)

        def planned(job_name: str) -> tuple[PurgeJob, list[WorkUnit]]:
            """The job and its whole plan (a shard runs part of it)."""
            job = PurgeJob(
                source,
                other,
                older_than=older_than,
                allow_below_grace=args.allow_below_grace,
                other_store_retired=args.other_store_retired,
                dry_run=args.dry_run,
                **jobs.job_options(args, name=job_name, checkpoints=checkpoints, progress=bar),
            )
            return job, job.plan(parts=args.parts)

        job, plan = planned(name)
        async with checkpoints:
            chosen = await runs.choose_planned(
                args,
                checkpoints,
                name=name,
                named=named is not None,
                planned=planned,
                first=(job, plan),
                fingerprint=job.fingerprint(plan),  # of the plan and options, whatever the name
                shard_spec=shard_spec,
            )
            choice, job, units = chosen.choice, chosen.job, chosen.units
            nothing_to_do = choice.resumed and choice.done == len(units)
            _header(args, choice, settings, units, older_than)
            if nothing_to_do:
                common.info(f"job {choice.name!r} is already complete: nothing is purged again")
            else:
                await common.probe(source, "source", settings.describe(source_store))
                if other is not None:
                    where = settings.describe(source_store.other)
                    await common.probe(other, "other store", where)
            try:
                report = await job.run(units, fingerprint=chosen.fingerprint, restart=args.restart)
            finally:
                bar.close()
    finally:
        await common.aclose_all(source, other)
    _output(args, report, settings)
    return common.EXIT_OK if report.ok() else common.EXIT_FAILED


def _stores(args: argparse.Namespace) -> str:
    if args.other_store_retired:
        return f"{args.source} only ({args.source.other} retired)"
    return f"{args.source} and {args.source.other}"


def _header(
    args: argparse.Namespace,
    choice: runs.JobChoice,
    settings: ConnectionSettings,
    units: list[WorkUnit],
    older_than: dt.timedelta,
) -> None:
    shard_note = f" (shard {args.shard})" if args.shard else ""
    what = f"new job {choice.name!r}: {len(units)} units{shard_note}"
    if choice.resumed:
        what = f"resuming job {choice.name!r}: {choice.done} of {len(units)} units{shard_note} done"
    kept = "no checkpoint (dry run)" if args.dry_run else f"checkpoints in {args.checkpoint}"
    common.info(f"purge {_stores(args)}: {what}, {kept}")
    common.info(f"  tombstones older than {older_than / dt.timedelta(days=1):g} days")
    common.info(f"  scanned first: {settings.describe(args.source)}")
    if args.other_store_retired:
        common.info(
            f"  {args.source.other} is RETIRED: never read or written; the purged "
            "tombstones are gone for good, no rollback to it is possible"
        )
    else:
        common.info(f"  scanned second: {settings.describe(args.source.other)}")
    if args.dry_run:
        common.info("  dry run: counts what would be purged, writes nothing")


def _output(args: argparse.Namespace, report: JobReport, settings: ConnectionSettings) -> None:
    data = report.to_dict()
    data["checkpoint"] = None if args.dry_run else str(args.checkpoint)
    data["source_location"] = settings.describe(report.source)
    data["target_location"] = (
        "retired" if args.other_store_retired else settings.describe(report.target)
    )
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        print(jobs.format_report(report))
