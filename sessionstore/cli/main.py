"""``sessionstore``: the on-call command line.

Exit codes: 0 success; 1 the job ran and found divergence or lost writes; 2 bad usage or
configuration (nothing was changed).

Example::

    $ sessionstore rehearse --ops-per-phase 400 --writers 8
    $ sessionstore phases
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sessionstore._errors import SessionStoreError
from sessionstore.jobs.rehearsal import RehearsalConfig, RehearsalReport, run_rehearsal
from sessionstore.phases import PHASE_PLANS, Phase

__all__ = ["main"]

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessionstore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "rehearse",
        help="run a migration rehearsal on in-memory stores (every phase, a rollback, faults)",
    )
    r.add_argument("--keys", type=_positive, default=300, help="distinct sessions (300)")
    r.add_argument("--writers", type=_positive, default=8, help="concurrent callers (8)")
    r.add_argument("--ops-per-phase", type=_positive, default=400, help="calls per phase (400)")
    r.add_argument("--fault-rate", type=_rate, default=0.05, help="secondary write failure rate")
    r.add_argument("--seed", type=int, default=2026)
    r.add_argument("--queue", type=Path, help="SQLite repair queue file (a temporary one)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("phases", help="print the phase table")
    return parser


def _print_rehearsal(report: RehearsalReport) -> None:
    print(f"{'phase':<10} {'ops':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for p in report.phases:
        p50, p99 = p.percentile(50), p.percentile(99)
        print(f"{p.phase.value:<10} {p.operations:>6} {p50:>8.2f} {p99:>8.2f}")
    rows = [
        ("operations", report.operations),
        ("secondary faults injected", report.faults_injected),
        ("divergences seen by shadow reads", report.divergences_seen),
        ("repairs queued", report.repairs_enqueued),
        ("repairs that copied a record", report.repairs_copied),
        ("history copied before dual-write", report.history_copied),
        ("copied back before the rollback", report.reverse_copied),
        ("keys checked at the end", report.keys_checked),
        ("keys diverged after repair", report.diverged_keys),
        ("acknowledged writes lost", report.lost_writes),
    ]
    print()
    for label, value in rows:
        print(f"{label:<36} {value:>8}")
    print("\nresult: " + ("OK, both stores converged" if report.ok else "FAILED"))


def _rehearsal_json(report: RehearsalReport) -> str:
    data = dataclasses.asdict(report)
    data["phases"] = [
        {
            "phase": p.phase.value,
            "operations": p.operations,
            "p50_ms": p.percentile(50),
            "p99_ms": p.percentile(99),
        }
        for p in report.phases
    ]
    data["ok"] = report.ok
    return json.dumps(data, indent=2)


def _print_phases() -> None:
    print(f"{'phase':<16} {'LD stage':<10} {'writes, in order':<24} {'reads':<11} compare")
    for phase in Phase:
        plan = PHASE_PLANS[phase]
        writes = ", ".join(s.value for s in plan.writes)
        compare = plan.read.other.value if plan.compare else "-"
        print(f"{phase.name:<16} {phase.value:<10} {writes:<24} {plan.read.value:<11} {compare}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sessionstore`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "phases":
            _print_phases()
            return EXIT_OK
        config = RehearsalConfig(
            keys=args.keys,
            writers=args.writers,
            ops_per_phase=args.ops_per_phase,
            fault_rate=args.fault_rate,
            seed=args.seed,
            queue_path=args.queue,
        )
        report = asyncio.run(run_rehearsal(config))
    except SessionStoreError as exc:
        print(f"sessionstore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(_rehearsal_json(report))
    else:
        _print_rehearsal(report)
    return EXIT_OK if report.ok else EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
