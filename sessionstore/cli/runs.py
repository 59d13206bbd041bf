"""Which job a ``backfill``, ``verify`` or ``purge`` command runs: new, or resumed.

A job is one named run of a plan, checkpointed under its name. The rules (docs/cli.md):

- Without ``--resume`` every command starts a new job. Its default name is made of the
  plan and its start: ``backfill-cassandra-to-documentdb-20260301T101500Z-3f2a1c``, so
  the same command run again (after a rollback, say) copies everything again
  (``verify-cassandra-vs-documentdb-...``, ``purge-cassandra-and-documentdb-...``, or
  ``purge-documentdb-only-...`` when the other store is retired).
  ``--job NAME`` names it; a NAME the checkpoint file already holds is refused.
- ``--resume`` continues the newest unfinished job of the same plan (same direction,
  ids, ranges, parts and options) in the checkpoint file; ``--resume NAME`` (or
  ``--job NAME --resume``) continues that job.
- ``--restart --job NAME`` forgets NAME's progress and runs it again from the start.
- ``--shard i/N``: the N processes of one job share its name, so ``--job NAME`` (or
  ``--resume NAME``) is required. A shard may start in a job that other shards began,
  but a shard whose own units already ran needs ``--resume``.

Every refusal is a :class:`CommandError` with exit code 2, raised before any store is
touched. Example::

    name = check_run_flags(args) or new_job_name(args, action, ids)
    choice = await choose_job(args, checkpoints, name=name, ...)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sessionstore.cli import _common as common
from sessionstore.cli._common import CommandError
from sessionstore.jobs.checkpoint import CheckpointStore, JobRecord, UnitState
from sessionstore.jobs.units import JobAction, WorkUnit, check_job_name, shard
from sessionstore.phases import Store

__all__ = [
    "DEFAULT_PARTS",
    "JobChoice",
    "PlannedJob",
    "check_run_flags",
    "choose_job",
    "choose_planned",
    "new_job_name",
]

_J = TypeVar("_J")

#: Units per key range when ``--parts`` is not given.
DEFAULT_PARTS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class JobChoice:
    """The job a command runs: its name, whether it resumes one, units already done."""

    name: str
    resumed: bool
    #: Of the units this process runs (its shard), how many the checkpoint has as done.
    done: int = 0
    #: When a resumed job was begun.
    started_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedJob(Generic[_J]):
    """The job chosen, built under its name, with the units this process runs."""

    choice: JobChoice
    job: _J
    units: list[WorkUnit]
    #: Of the whole plan (and the job's options, for a purge), whatever the job's name.
    fingerprint: str


def check_run_flags(args: argparse.Namespace) -> str | None:
    """Check ``--job``, ``--resume``, ``--restart`` and ``--shard`` together.

    Returns the job name the flags give (None: a new job with a default name).
    """
    resume_name = args.resume or None
    if args.job and resume_name and args.job != resume_name:
        raise CommandError(common.EXIT_USAGE, "--job and --resume name different jobs")
    name = args.job or resume_name
    if name is not None:
        check_job_name(name)
    resuming = args.resume is not None
    if args.restart and resuming:
        raise CommandError(
            common.EXIT_USAGE,
            "--restart starts a job over and --resume continues one: give only one",
        )
    if args.restart and name is None:
        raise CommandError(
            common.EXIT_USAGE,
            "--restart needs --job NAME, the job to start over (without --job every run "
            "is a new job anyway)",
        )
    if args.print_units and (resuming or args.restart):
        raise CommandError(
            common.EXIT_USAGE, "--print-units reads no checkpoint: drop --resume and --restart"
        )
    if args.shard and name is None:
        raise CommandError(
            common.EXIT_USAGE,
            "--shard needs --job NAME: the N processes of one job must share its name",
        )
    if args.shard and args.restart:
        raise CommandError(
            common.EXIT_USAGE,
            "--restart with --shard would erase the other shards' progress: start the "
            "sharded job over under a new --job name",
        )
    return name


def new_job_name(
    args: argparse.Namespace, action: JobAction, ids: Sequence[uuid.UUID] | None
) -> str:
    """A new job's name: the plan (direction, a digest of its input) and its UTC start.

    A random suffix keeps two jobs started in the same second apart.
    """
    source: Store = args.source
    link = {JobAction.VERIFY: "vs", JobAction.PURGE: "and"}.get(action, "to")
    name = f"{action}-{source}-{link}-{source.other}"
    if getattr(args, "other_store_retired", False):
        name = f"{action}-{source}-only"
    if ids:
        name += f"-ids-{_digest(b''.join(i.bytes for i in ids))}"
    elif args.ranges:
        name += f"-ranges-{_digest(' '.join([*args.ranges, str(args.parts)]).encode())}"
    elif args.parts != DEFAULT_PARTS:
        name += f"-parts-{args.parts}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


async def choose_job(
    args: argparse.Namespace,
    checkpoints: CheckpointStore,
    *,
    name: str,
    named: bool,
    fingerprint: str,
    planned: int,
    unit_ids: Sequence[str],
) -> JobChoice:
    """The job to run, by this module's rules; refuses (exit 2) without writing anything.

    ``name``: the job the flags name (``named``), or a new job's name; ``planned``: the
    plan's size; ``unit_ids``: the units this process runs (its shard, or the plan).
    """
    where = str(args.checkpoint)
    if args.resume is None:
        if named and not args.restart:
            await _check_new(args, checkpoints, name, fingerprint, unit_ids)
        return JobChoice(name, resumed=False)
    if named:
        found = await checkpoints.job(name)
        if found is None:
            raise CommandError(common.EXIT_USAGE, f"nothing to resume: no job {name!r} in {where}")
        _check_plan(args, found, fingerprint)
    else:
        found = await _newest_unfinished(args, checkpoints, fingerprint, planned)
    recorded = await checkpoints.units(found.job)
    done = sum(1 for u in unit_ids if u in recorded and recorded[u].state is UnitState.DONE)
    return JobChoice(found.job, resumed=True, done=done, started_at=found.started_at)


async def choose_planned(
    args: argparse.Namespace,
    checkpoints: CheckpointStore,
    *,
    name: str,
    named: bool,
    planned: Callable[[str], tuple[_J, list[WorkUnit]]],
    first: tuple[_J, list[WorkUnit]],
    fingerprint: str,
    shard_spec: tuple[int, int] | None,
) -> PlannedJob[_J]:
    """:func:`choose_job` for ``first``, the job and plan ``planned(name)`` built, and that
    job under the chosen name (a resumed job runs the same plan under its own name).

    ``fingerprint`` identifies the plan; ``shard_spec`` (i, N) picks this process's
    share of the units. The caller builds ``first`` before it opens ``checkpoints``, so
    that a plan refused as bad input leaves no checkpoint file behind.
    """
    job, plan = first
    units = shard(plan, *shard_spec) if shard_spec else plan
    choice = await choose_job(
        args,
        checkpoints,
        name=name,
        named=named,
        fingerprint=fingerprint,
        planned=len(plan),
        unit_ids=[u.unit_id for u in units],
    )
    if choice.name != name:
        job, plan = planned(choice.name)
        units = shard(plan, *shard_spec) if shard_spec else plan
    return PlannedJob(choice, job, units, fingerprint)


async def _check_new(
    args: argparse.Namespace,
    checkpoints: CheckpointStore,
    name: str,
    fingerprint: str,
    unit_ids: Sequence[str],
) -> None:
    """A new job under ``--job NAME``: NAME must be free (a shard may join its job)."""
    found = await checkpoints.job(name)
    if found is None:
        return
    _check_plan(args, found, fingerprint)
    where = str(args.checkpoint)
    if not args.shard:
        raise CommandError(
            common.EXIT_USAGE,
            f"job {name!r} already exists in {where}: add --resume to continue it, "
            "--restart to run it again from the start, or drop --job to start a new job",
        )
    recorded = await checkpoints.units(name)
    if any(u in recorded for u in unit_ids):
        raise CommandError(
            common.EXIT_USAGE,
            f"shard {args.shard} of job {name!r} in {where} has already run: add --resume "
            "to continue it, or start the sharded job over under a new --job name",
        )


def _check_plan(args: argparse.Namespace, found: JobRecord, fingerprint: str) -> None:
    if found.fingerprint != fingerprint:
        raise CommandError(
            common.EXIT_USAGE,
            f"job {found.job!r} in {args.checkpoint} was planned with other input; resume "
            "it with the same arguments, add --restart, or choose another --job",
        )


async def _newest_unfinished(
    args: argparse.Namespace, checkpoints: CheckpointStore, fingerprint: str, planned: int
) -> JobRecord:
    same_plan = await checkpoints.jobs(fingerprint=fingerprint)
    for found in same_plan:
        if found.units_done < planned:
            return found
    source: Store = args.source
    message = (
        f"nothing to resume: no unfinished {args.command} {source} -> {source.other} job "
        f"of this plan (same ids, ranges, --parts and options) in {args.checkpoint}"
    )
    if same_plan:
        message += (
            f"; the newest, {same_plan[0].job!r}, is complete: run without --resume to "
            "start a new job"
        )
    raise CommandError(common.EXIT_USAGE, message)
