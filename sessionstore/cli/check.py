"""``sessionstore check``: is each store answering, is the repair queue readable, which phase.

On-call's first command when a circuit breaker opens (docs/runbook.md). It builds both
stores from the usual flags and ``SESSIONSTORE_*`` variables, the repair queue if
``--queue`` is given (the SQLite file or the SQS queue URL, as ``repair`` takes it), and
evaluates the LaunchDarkly flag if an SDK key is configured; then prints
:func:`~sessionstore.health.check_health`'s report. Every probe is read-only: one read of
a random session id per store, the queue's counts; nothing is written, no index or
table is created.

Exit codes: 0 healthy; 3 a store, the queue or LaunchDarkly cannot be reached; 2 bad
input (a missing setting, table or queue file; nothing was probed if it was found before).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

from sessionstore._telemetry import Telemetry
from sessionstore.backends.base import SessionBackend
from sessionstore.cli import _common as common
from sessionstore.cli import jobs, phase, repair
from sessionstore.health import HealthReport, check_health
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Operation, Phase, Store
from sessionstore.repair.queue import RepairQueue

__all__ = ["add_parser", "command"]

#: Errors of a probe that mean the settings are wrong (a missing table), not the store.
_USAGE_ERRORS = frozenset({"ConfigurationError", "InvalidSessionError"})


@dataclasses.dataclass(frozen=True)
class _PhaseNow:
    """The phase from LaunchDarkly for session id 0, or why there is none."""

    phase: Phase | None = None
    #: The flag could not be evaluated: ``phase`` is the default phase.
    fallback: bool = False
    #: Why LaunchDarkly was not asked or did not answer (None: it answered).
    note: str | None = "not configured (no LAUNCHDARKLY_SDK_KEY)"
    unreachable: bool = False


def add_parser(sub: Any) -> None:
    """Register ``check``."""
    parser = sub.add_parser(
        "check",
        help="probe both stores, the repair queue and the phase (read-only): are they healthy?",
        epilog="exit codes: 0 healthy, 3 a store, the queue or LaunchDarkly unreachable, "
        "2 bad input",
    )
    repair.add_queue_flag(parser)
    parser.add_argument(
        "--timeout",
        type=common.positive_float,
        default=10.0,
        metavar="SECONDS",
        help="deadline of each probe, connecting included (10)",
    )
    ld = parser.add_argument_group("LaunchDarkly (the phase; only with an SDK key)")
    ld.add_argument(
        "--flag",
        default=os.environ.get("SESSIONSTORE_LAUNCHDARKLY_FLAG", "session-store-migration"),
        help="migration flag key (SESSIONSTORE_LAUNCHDARKLY_FLAG)",
    )
    ld.add_argument("--sdk-key-file", metavar="FILE", help="or LAUNCHDARKLY_SDK_KEY")
    ld.add_argument(
        "--context-secret-file",
        metavar="FILE",
        help="or SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET",
    )
    ld.add_argument("--raw-session-ids", action="store_const", const=True)
    ld.add_argument(
        "--default-phase",
        type=phase._phase_choice,
        default=Phase.CASSANDRA_ONLY,
        metavar="PHASE",
        help="what the service falls back to if the flag cannot be evaluated",
    )
    common.add_output_flags(parser, progress=False)
    common.add_connection_flags(parser)


def command(args: argparse.Namespace) -> int:
    """Run ``check``; returns the exit code."""
    common.setup_logging(args.verbose)
    if args.queue and repair.queue_file_missing(args.queue):
        # Opening a missing file would create an empty queue: a typo would look healthy.
        common.error(f"repair queue {args.queue!r} does not exist")
        return common.EXIT_USAGE
    return common.run(_run(args))


def _sdk_key(args: argparse.Namespace) -> str:
    if args.sdk_key_file:
        return common.read_secret_file(Path(args.sdk_key_file), "SDK key")
    return os.environ.get("LAUNCHDARKLY_SDK_KEY", "")


def _evaluate(args: argparse.Namespace, sdk_key: str, keying: tuple[str | None, bool]) -> _PhaseNow:
    """The flag for session id 0, as the service evaluates it (blocking: in a thread)."""
    from sessionstore.launchdarkly import LaunchDarklyPhaseSource

    client = phase.make_ld_client(sdk_key, args.timeout)
    try:
        if not client.is_initialized():
            return _PhaseNow(
                note=f"LaunchDarkly did not initialize within {args.timeout:g} s "
                "(SDK key rejected, or the service unreachable)",
                unreachable=True,
            )
        telemetry = Telemetry()
        source = LaunchDarklyPhaseSource(
            client,
            flag_key=args.flag,
            context_key_secret=keying[0],
            raw_session_ids=keying[1],
            default_phase=args.default_phase,
            telemetry=telemetry,
        )
        now = source.decide(uuid.UUID(int=0), Operation.READ).phase
        return _PhaseNow(now, fallback=telemetry.stats.phase_fallbacks > 0, note=None)
    finally:
        client.close()


async def _run(args: argparse.Namespace) -> int:
    # Everything that can be wrong with the input is found before the first probe.
    settings = common.connection_settings(args)
    sdk_key = _sdk_key(args)
    keying = phase._context_keying(args) if sdk_key else None
    backends: dict[Store, SessionBackend] = {}
    queue: RepairQueue | None = None
    try:
        for store in Store:
            backends[store] = jobs.make_backend(settings, store)
        queue = repair.queue_at(args.queue) if args.queue else None
        if keying is not None:
            health, now = await asyncio.gather(
                check_health(backends, queue, within=args.timeout),
                asyncio.to_thread(_evaluate, args, sdk_key, keying),
            )
        else:
            health, now = await check_health(backends, queue, within=args.timeout), _PhaseNow()
    finally:
        await common.aclose_all(*backends.values())
        if queue is not None:
            await queue.aclose()
    report = HealthReport(health.stores, health.queue, health.queue_error, now.phase)
    return _finish(args, settings, report, now)


def _exit_code(report: HealthReport, now: _PhaseNow) -> int:
    errors = {h.error for h in report.stores.values()}
    if errors & _USAGE_ERRORS:
        return common.EXIT_USAGE
    if not report.healthy or now.unreachable:
        return common.EXIT_UNREACHABLE
    return common.EXIT_OK


def _finish(
    args: argparse.Namespace, settings: ConnectionSettings, report: HealthReport, now: _PhaseNow
) -> int:
    code = _exit_code(report, now)
    result = {common.EXIT_OK: "HEALTHY", common.EXIT_USAGE: "BAD SETTINGS"}.get(code, "UNREACHABLE")
    data = report.to_dict()
    data.update(
        phase_fallback=now.fallback,
        phase_note=now.note,
        where={s.value: settings.describe(s) for s in Store},
        repair_queue_at=args.queue,
        result=result,
    )
    common.write_json(data, to_stdout=args.json, path=args.report)
    if not args.json:
        _print(args, settings, report, now, result)
    return code


def _print(
    args: argparse.Namespace,
    settings: ConnectionSettings,
    report: HealthReport,
    now: _PhaseNow,
    result: str,
) -> None:
    if report.phase is None:
        phase_line = str(now.note)
    else:
        phase_line = f"{report.phase.name} ({report.phase.value}), flag {args.flag!r}"
        if now.fallback:
            phase_line += ": NOT EVALUATED, the default phase applies"
    print(f"{'phase':<13} {phase_line}")
    for store, health in report.stores.items():
        if health.reachable:
            state = f"answers in {health.latency_ms:.1f} ms"
        elif health.error in _USAGE_ERRORS:
            state = f"BAD SETTINGS ({health.error}: a missing table?)"
        else:
            state = f"UNREACHABLE ({health.error} after {health.latency_ms:.0f} ms)"
        print(f"{store.value:<13} {state:<40} {settings.describe(store)}")
    if args.queue is None:
        print(f"{'repair queue':<13} not checked (no --queue)")
    elif report.queue is None:
        print(f"{'repair queue':<13} UNREACHABLE ({report.queue_error})  {args.queue}")
    else:
        q = report.queue
        counts = f"{q.ready:,} ready, {q.waiting:,} waiting, {q.dead:,} dead letters"
        print(f"{'repair queue':<13} {counts:<40} {args.queue}")
    print(f"result: {result}")
