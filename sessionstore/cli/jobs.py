"""``sessionstore backfill`` and ``sessionstore verify``: the resumable whole-table jobs.

Every input is checked before any store is written: the id file, ranges, shard, job
name and checkpoint (a new job, or the one to resume: :mod:`sessionstore.cli.runs`),
the connection settings, then a read-only probe of both stores (reachability,
credentials, schema) and a check that the source is not empty (a mistyped keyspace or
database). Only then does the job start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from sessionstore.backends.base import SessionBackend
from sessionstore.cli import _common as common
from sessionstore.cli import enqueue, runs
from sessionstore.cli._common import CommandError
from sessionstore.cli.progress import ProgressBar
from sessionstore.jobs.backfill import BackfillJob
from sessionstore.jobs.checkpoint import CheckpointStore, SqliteCheckpointStore
from sessionstore.jobs.engine import DEFAULT_PAGE_BYTES, JobReport
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.jobs.throttle import RetryPolicy
from sessionstore.jobs.units import (
    STORE_KEY_SPACES,
    JobAction,
    WorkUnit,
    parse_range,
    parse_shard,
    plan_fingerprint,
    plan_ids,
    plan_ranges,
    read_id_file,
    shard,
)
from sessionstore.jobs.verify import VerifyJob
from sessionstore.phases import Store

__all__ = [
    "add_parsers",
    "add_run_flags",
    "command",
    "format_report",
    "job_options",
    "make_backend",
]

DEFAULT_CHECKPOINT = "sessionstore-checkpoints.db"
#: Ids per unit: in one process, and in a queue message (the original migration's 20).
DEFAULT_BATCH = 500
DEFAULT_QUEUE_BATCH = 20


def make_backend(
    settings: ConnectionSettings, store: Store, *, insert_first: bool = False
) -> SessionBackend:
    """The unopened backend of ``store`` (tests replace this to run on fakes).

    ``insert_first``: a backfill's target, where most keys are absent (DocumentDB then
    inserts before it tries the guarded replace: one round trip instead of two).
    """
    return settings.backend(store, insert_first=insert_first)


def add_parsers(sub: Any) -> None:
    """Register ``backfill`` and ``verify``."""
    backfill = sub.add_parser(
        "backfill",
        help="copy every session from one store to the other (resumable, throttled)",
        description="Copy every session (or the ids in a file) from --source to the other "
        "store, under the revision rule: never overwrites newer data, safe to re-run.",
    )
    verify = sub.add_parser(
        "verify",
        help="compare the two stores and report (or --repair) the differences",
        description="Compare every session (or a sample, or an id list) of --source with "
        "the other store; report counts by kind and the differing field names.",
    )
    for parser in (backfill, verify):
        _add_job_flags(parser)
    verify.add_argument(
        "--repair", action="store_true", help="fix differences from the source's side"
    )
    verify.add_argument(
        "--sample", type=common.ratio, default=1.0, metavar="RATIO", help="share of keys (1)"
    )
    verify.add_argument(
        "--no-target-scan",
        action="store_true",
        help="skip the pass that finds keys only the target holds",
    )
    verify.add_argument(
        "--strict", action="store_true", help="also fail on 'newer in target' (quiet writes)"
    )


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, type=common.store_choice, metavar="STORE")
    parser.add_argument(
        "--target", type=common.store_choice, metavar="STORE", help="the other store"
    )
    what = parser.add_argument_group("what to process (default: every key range)")
    inputs = what.add_mutually_exclusive_group()
    inputs.add_argument("--ids", metavar="FILE", help="session ids, one per line")
    inputs.add_argument(
        "--range",
        action="append",
        dest="ranges",
        metavar="START:END",
        help="only this key range of the source (repeatable; write --range=-5:9)",
    )
    what.add_argument(
        "--parts",
        type=common.positive_int,
        default=runs.DEFAULT_PARTS,
        help=f"units per range ({runs.DEFAULT_PARTS})",
    )
    what.add_argument(
        "--batch",
        type=common.positive_int,
        help=f"ids per unit ({DEFAULT_BATCH}; {DEFAULT_QUEUE_BATCH} with --enqueue)",
    )
    what.add_argument("--shard", metavar="i/N", help="run only shard i of N (0-based; needs --job)")
    run = add_run_flags(parser)
    run.add_argument(
        "--print-units", action="store_true", help="print the units as JSON lines and exit"
    )
    run.add_argument(
        "--enqueue",
        metavar="QUEUE_URL",
        help="send the units to this SQS queue for `sessionstore worker` or Lambda, and exit",
    )
    run.add_argument(
        "--sqs-endpoint",
        metavar="URL",
        help="with --enqueue: an SQS-compatible server (SESSIONSTORE_SQS_ENDPOINT)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="check inputs and stores, write nothing"
    )
    run.add_argument(
        "--allow-empty-source", action="store_true", help="run even if the source is empty"
    )
    common.add_output_flags(parser)
    common.add_connection_flags(parser)


def add_run_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The job, checkpoint and throttling flags of every job command; returns their group."""
    run = parser.add_argument_group("jobs, checkpoints and throttling")
    run.add_argument(
        "--job",
        metavar="NAME",
        help="name of the new job (default: the plan and the start time); "
        "with --resume, the job to continue",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="NAME",
        help="continue the job NAME, or the newest unfinished job of the same plan",
    )
    run.add_argument(
        "--checkpoint",
        metavar="FILE",
        default=str(common.env_path("SESSIONSTORE_CHECKPOINT_FILE", DEFAULT_CHECKPOINT)),
        help=f"SQLite checkpoint file ({DEFAULT_CHECKPOINT})",
    )
    run.add_argument(
        "--restart", action="store_true", help="forget the --job's progress and run it again"
    )
    run.add_argument("--concurrency", type=common.positive_int, default=4, help="units at once")
    run.add_argument(
        "--rate", type=common.positive_float, metavar="N", help="sessions/s ceiling (none)"
    )
    run.add_argument(
        "--page-size", type=common.positive_int, default=100, help="records per page, at most"
    )
    run.add_argument(
        "--page-mb",
        type=common.positive_int,
        default=DEFAULT_PAGE_BYTES // (1024 * 1024),
        help="about how many MB of sessions one page may hold "
        f"({DEFAULT_PAGE_BYTES // (1024 * 1024)}): memory is about concurrency x this",
    )
    run.add_argument("--max-in-flight", type=common.positive_int, default=32)
    run.add_argument(
        "--retries", type=common.positive_int, default=6, help="attempts per request (6)"
    )
    return run


def command(args: argparse.Namespace) -> int:
    """Run ``backfill`` or ``verify``; returns the exit code."""
    common.setup_logging(args.verbose)
    hint = (
        f"completed units are checkpointed in {args.checkpoint}; "
        "add --resume to the same command to continue"
    )
    return common.run(_run(args), interrupted_hint=hint)


def _static_plan(
    args: argparse.Namespace, action: JobAction, name: str, ids: list[Any] | None
) -> list[WorkUnit]:
    """The plan from the stores' known key spaces, without connecting (--print-units)."""
    source: Store = args.source
    options: dict[str, Any] = {}
    if action is JobAction.VERIFY:
        options = {"repair": args.repair, "sample": args.sample}
    if ids:
        return plan_ids(ids, args.batch, job=name, action=action, source=source, **options)
    ranges = [parse_range(t) for t in args.ranges] if args.ranges else None
    units = plan_ranges(
        STORE_KEY_SPACES[source],
        args.parts,
        job=name,
        action=action,
        source=source,
        ranges=ranges,
        **options,
    )
    if action is JobAction.VERIFY and not args.no_target_scan and not ranges:
        units += plan_ranges(
            STORE_KEY_SPACES[source.other],
            args.parts,
            job=name,
            action=action,
            source=source,
            scan=source.other,
            **options,
        )
    return units


def _build_job(
    *,
    args: argparse.Namespace,
    action: JobAction,
    name: str,
    source: SessionBackend,
    target: SessionBackend,
    checkpoints: SqliteCheckpointStore,
    progress: ProgressBar,
) -> BackfillJob | VerifyJob:
    options = job_options(args, name=name, checkpoints=checkpoints, progress=progress)
    if action is JobAction.BACKFILL:
        return BackfillJob(source, target, **options)
    return VerifyJob(
        source,
        target,
        repair=args.repair,
        sample=args.sample,
        scan_target=not args.no_target_scan,
        strict=args.strict,
        **options,
    )


async def _run(args: argparse.Namespace) -> int:
    action = JobAction(args.command)
    source_store: Store = args.source
    target_store = source_store.other
    # Inputs first: nothing below this block runs on bad input.
    _check_options(args, action)
    ids = read_id_file(args.ids) if args.ids else None
    shard_spec = parse_shard(args.shard) if args.shard else None
    named = runs.check_run_flags(args)
    name = named or runs.new_job_name(args, action, ids)
    static_plan = _static_plan(args, action, name, ids)  # validates --range, --parts
    if args.print_units or args.enqueue:
        units = shard(static_plan, *shard_spec) if shard_spec else static_plan
        if args.enqueue:
            return await enqueue.enqueue_units(args, action, name, units)
        _print_units(units)
        return common.EXIT_OK

    settings = common.connection_settings(args)
    source = target = None
    try:
        source = make_backend(settings, source_store)
        target = make_backend(settings, target_store, insert_first=action is JobAction.BACKFILL)
        checkpoints = SqliteCheckpointStore(args.checkpoint)
        enabled = not args.no_progress and sys.stderr.isatty()
        bar = ProgressBar(f"{action} {source_store}->{target_store}", enabled=enabled)

        def planned(job_name: str) -> tuple[BackfillJob | VerifyJob, list[WorkUnit]]:
            """The job and its whole plan (a shard runs part of it)."""
            job = _build_job(
                args=args,
                action=action,
                name=job_name,
                source=source,
                target=target,
                checkpoints=checkpoints,
                progress=bar,
            )
            return job, _plan(args, job, ids)

        job, plan = planned(name)
        async with checkpoints:
            chosen = await runs.choose_planned(
                args,
                checkpoints,
                name=name,
                named=named is not None,
                planned=planned,
                first=(job, plan),
                fingerprint=plan_fingerprint(plan),  # of the plan, whatever the job's name
                shard_spec=shard_spec,
            )
            choice, job, units = chosen.choice, chosen.job, chosen.units
            nothing_to_do = choice.resumed and choice.done == len(units)
            _header(args=args, action=action, choice=choice, settings=settings, units=units)
            if nothing_to_do:
                common.info(
                    f"job {choice.name!r} is already complete: all its units are done, "
                    "nothing is copied or compared again"
                )
            if not nothing_to_do:
                await _check_stores(args, source, target, settings)
            if args.dry_run:
                common.info("dry run: inputs and stores are fine; nothing was written")
                return common.EXIT_OK
            try:
                # A complete job's run touches no store: it reads its totals back.
                report = await job.run(units, fingerprint=chosen.fingerprint, restart=args.restart)
            finally:
                bar.close()
    finally:
        await common.aclose_all(source, target)
    _output(args, report, settings)
    strict = action is JobAction.VERIFY and args.strict
    return common.EXIT_OK if report.ok(strict=strict) else common.EXIT_FAILED


def job_options(
    args: argparse.Namespace, *, name: str, checkpoints: CheckpointStore, progress: ProgressBar
) -> dict[str, Any]:
    """The keyword arguments every job takes, from the flags of :func:`add_run_flags`."""
    return {
        "name": name,
        "checkpoints": checkpoints,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "page_size": args.page_size,
        "page_bytes": args.page_mb * 1024 * 1024,
        "max_in_flight": args.max_in_flight,
        "retry": RetryPolicy(attempts=args.retries),
        "source_store": args.source,
        "progress": progress,
    }


def _check_options(args: argparse.Namespace, action: JobAction) -> None:
    if args.target is not None and args.target is not args.source.other:
        raise CommandError(common.EXIT_USAGE, "--target must be the other store than --source")
    if action is JobAction.VERIFY and args.sample <= 0:
        raise CommandError(common.EXIT_USAGE, "--sample must be above 0")
    if args.enqueue:
        clashing = [
            flag
            for flag, given in (
                ("--print-units", args.print_units),
                ("--resume", args.resume is not None),
                ("--restart", args.restart),
            )
            if given
        ]
        if clashing:
            raise CommandError(
                common.EXIT_USAGE,
                f"--enqueue reads no checkpoint and prints no units: drop {', '.join(clashing)}",
            )
    elif args.sqs_endpoint:
        raise CommandError(common.EXIT_USAGE, "--sqs-endpoint goes with --enqueue")
    if args.batch is None:
        args.batch = DEFAULT_QUEUE_BATCH if args.enqueue else DEFAULT_BATCH


def _print_units(units: list[WorkUnit]) -> None:
    for unit in units:
        print(unit.to_json())


def _plan(
    args: argparse.Namespace, job: BackfillJob | VerifyJob, ids: list[Any] | None
) -> list[WorkUnit]:
    if ids:
        return job.plan_ids(ids, batch=args.batch)
    ranges = [parse_range(t) for t in args.ranges] if args.ranges else None
    return job.plan(parts=args.parts, ranges=ranges)


def _header(
    *,
    args: argparse.Namespace,
    action: JobAction,
    choice: runs.JobChoice,
    settings: ConnectionSettings,
    units: list[WorkUnit],
) -> None:
    shard_note = f" (shard {args.shard})" if args.shard else ""
    what = f"new job {choice.name!r}: {len(units)} units{shard_note}"
    if choice.resumed:
        what = (
            f"resuming job {choice.name!r}, begun {_when(choice.started_at)}: "
            f"{choice.done} of {len(units)} units{shard_note} done"
        )
    common.info(
        f"{action} {args.source} -> {args.source.other}: {what}, checkpoints in {args.checkpoint}"
    )
    common.info(f"  source: {settings.describe(args.source)}")
    common.info(f"  target: {settings.describe(args.source.other)}")


def _when(moment: dt.datetime | None) -> str:
    return "at an unknown time" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


async def _check_stores(
    args: argparse.Namespace,
    source: SessionBackend,
    target: SessionBackend,
    settings: ConnectionSettings,
) -> None:
    """Open both stores read-only (reachable, credentials, schema); the source not empty."""
    where = settings.describe(args.source)
    await common.probe(source, "source", where)
    await common.probe(target, "target", settings.describe(args.source.other))
    if args.allow_empty_source:
        return
    page = await source.scan(source.key_space, limit=1)
    if not page.records and page.cursor is None:
        raise CommandError(
            common.EXIT_USAGE,
            f"the source {where} holds no sessions: check the keyspace/table or "
            "database/collection names (or pass --allow-empty-source); nothing was changed",
        )


def _output(args: argparse.Namespace, report: JobReport, settings: ConnectionSettings) -> None:
    data = report.to_dict()
    data["checkpoint"] = str(args.checkpoint)
    data["source_location"] = settings.describe(report.source)
    data["target_location"] = settings.describe(report.target)
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        print(format_report(report))


def format_report(report: JobReport) -> str:
    """The readable summary of a job's report: this run, and the job's totals."""
    lines = [
        f"{report.action} {_stores(report)}, job {report.job!r}",
        _run_line(report),
        f"units: {report.units_planned} planned, {report.units_run} run now, "
        f"{report.units_skipped} already done, {len(report.failed_units)} failed, "
        f"{report.units_not_run} not run",
    ]
    if report.resumed and report.complete and report.units_run == 0:
        verb = {JobAction.BACKFILL: "copied", JobAction.PURGE: "purged"}.get(
            report.action, "compared"
        )
        lines.append(f"nothing to do: every unit was already done; this run {verb} nothing")
    counted: list[tuple[str, str]]
    if report.action is JobAction.BACKFILL:
        counted = [
            ("sessions copied", "sessions"),
            ("tombstones copied", "tombstones"),
            ("ids absent from the source", "absent"),
            ("records read", "records"),
        ]
    elif report.action is JobAction.PURGE:
        lines += _purge_options(report.options)
        counted = _purge_lines(dry_run=bool(report.options.get("dry_run")))
    else:
        options = report.options
        lines.append(
            f"sample {options.get('sample', 1.0):.0%}, repair "
            f"{'on' if options.get('repair') else 'off'}, target scanned for extra keys: "
            f"{'yes' if options.get('scan_target') else 'no'}"
        )
        counted = [
            ("sessions compared", "checked"),
            ("missing in target", "missing"),
            ("stale in target", "stale"),
            ("newer in target (expected while dual-writing)", "newer"),
            ("  of which only in target", "only_in_target"),
            ("same revision, different content", "content_mismatch"),
            ("deleted in one store only", "deleted_in_one"),
        ]
        if options.get("repair"):
            counted += [
                ("repaired", "repaired"),
                ("fixed meanwhile by other writes", "resolved"),
                ("repair refused by a store", "repair_failed"),
            ]
    rate = f"{report.elapsed_seconds:.1f} s ({report.sessions_per_second:,.0f} sessions/s)"
    texts = [
        ("elapsed this run", rate),
        ("retried requests", f"{report.retries} (rate lowered {report.back_offs} times)"),
    ]
    width = max(len(label) for label, _ in counted + texts)
    lines.append(f"{'':<{width}}  {'this run':>12}  {'job total':>12}")
    for label, key in counted:
        lines.append(f"{label:<{width}}  {report.run_counts[key]:>12,}  {report.counts[key]:>12,}")
    lines += [f"{label:<{width}}  {text:>26}" for label, text in texts]
    if report.action is JobAction.VERIFY and report.fields:
        fields = ", ".join(f"{f} ({n:,})" for f, n in report.fields.most_common())
        lines.append(f"differing fields (job total): {fields}")
    for unit_id, reason in sorted(report.failed_units.items())[:10]:
        lines.append(f"failed unit {unit_id}: {reason}")
    if len(report.failed_units) > 10:
        lines.append(f"... and {len(report.failed_units) - 10} more failed units")
    if report.stopped:
        lines.append(report.stopped)
    lines.append("result: " + _verdict(report))
    return "\n".join(lines)


def _stores(report: JobReport) -> str:
    if report.action is not JobAction.PURGE:
        return f"{report.source} -> {report.target}"
    if report.options.get("other_store_retired"):
        return f"{report.source} only ({report.target} retired)"
    return f"{report.source} and {report.target}"


def _purge_lines(*, dry_run: bool) -> list[tuple[str, str]]:
    would = "would be " if dry_run else ""
    return [
        ("records scanned", "records"),
        ("tombstones seen", "tombstones"),
        (f"tombstones {would}purged", "purged"),
        ("too young, kept", "too_young"),
        ("re-created in the other store, kept", "recreated"),
        ("live at the same revision elsewhere, kept", "conflicts"),
        (f"stale live copies {would}removed", "stale_copies_removed"),
    ]


def _purge_options(options: dict[str, Any]) -> list[str]:
    lines = [f"tombstones older than {options.get('older_than_days', 0.0):g} days"]
    if options.get("other_store_retired"):
        lines.append("the other store is retired: purged from the scanned store alone")
    if options.get("dry_run"):
        lines.append("DRY RUN: counts what would be purged; nothing was written")
    return lines


def _run_line(report: JobReport) -> str:
    this_run = f"this run started {_when(report.started_at)}"
    if report.resumed:
        return f"resumed job, begun {_when(report.job_started_at)}; {this_run}"
    return f"new job; {this_run}"


def _verdict(report: JobReport) -> str:
    strict = bool(report.options.get("strict"))
    if report.ok(strict=strict):
        return "OK"
    if not report.complete:
        return f"INCOMPLETE: add --resume {report.job} to the same command to continue"
    if report.action is JobAction.VERIFY:
        remaining = report.unresolved + (report.counts["newer"] if strict else 0)
        return f"DIFFERENCES: {remaining:,} not resolved"
    return "FAILED"
