"""``sessionstore rehearse``: the whole migration on in-memory stores, or on real ones.

``--real`` runs it on a fresh table and collection of the configured servers (never
the sessions table), dropped afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from sessionstore.cli import _common as common
from sessionstore.jobs.rehearsal import RehearsalConfig, RehearsalReport, run_rehearsal

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    """Register ``rehearse``."""
    r = sub.add_parser(
        "rehearse",
        help="rehearse the migration: history, backfill, every phase, a rollback, faults",
    )
    r.add_argument("--keys", type=common.positive_int, default=300, help="distinct sessions (300)")
    r.add_argument("--writers", type=common.positive_int, default=8, help="concurrent callers (8)")
    r.add_argument(
        "--ops-per-phase", type=common.positive_int, default=400, help="calls per phase (400)"
    )
    r.add_argument(
        "--fault-rate", type=common.ratio, default=0.05, help="secondary write failure rate"
    )
    r.add_argument("--history", type=int, default=500, help="sessions seeded before dual-write")
    r.add_argument("--parts", type=common.positive_int, default=32, help="job units per pass")
    r.add_argument("--seed", type=int, default=2026)
    r.add_argument(
        "--fleet-calls",
        type=int,
        default=150,
        metavar="N",
        help="calls per process and phase in the fleet stage (150); 0 skips the stage",
    )
    r.add_argument("--queue", type=Path, help="SQLite repair queue file (a temporary one)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    real = r.add_argument_group("real servers")
    real.add_argument(
        "--real", action="store_true", help="run on the configured servers (fresh table)"
    )
    real.add_argument("--keep", action="store_true", help="keep the rehearsal table/collection")
    real.add_argument(
        "--create-keyspace",
        action="store_true",
        help="create the keyspace if missing (SimpleStrategy, 1 replica: test clusters)",
    )
    common.add_connection_flags(r)


def command(args: argparse.Namespace) -> int:
    """Run the rehearsal; 0 if both stores converged, 1 if not."""
    if args.history < 0 or args.fleet_calls < 0:
        common.error("--history and --fleet-calls must not be negative")
        return common.EXIT_USAGE
    config = RehearsalConfig(
        keys=args.keys,
        writers=args.writers,
        ops_per_phase=args.ops_per_phase,
        fault_rate=args.fault_rate,
        seed=args.seed,
        history=args.history,
        parts=args.parts,
        queue_path=args.queue,
        serialize_documentdb_writes=args.real,
        fleet=args.fleet_calls > 0,
        fleet_calls=max(args.fleet_calls, 1),
    )
    common.setup_logging(False)
    return common.run(_run(args, config))


async def _run(args: argparse.Namespace, config: RehearsalConfig) -> int:
    if args.real:
        from sessionstore.jobs.scratch import scratch_stores

        settings = common.connection_settings(args)
        async with scratch_stores(
            settings, keep=args.keep, create_keyspace=args.create_keyspace
        ) as stores:
            common.info(f"rehearsal on real servers, table and collection {stores.name!r}")
            report = await run_rehearsal(
                config, cassandra=stores.cassandra, documentdb=stores.documentdb
            )
    else:
        report = await run_rehearsal(config)
    if args.json:
        print(_as_json(report))
    else:
        _print(report)
    return common.EXIT_OK if report.ok else common.EXIT_FAILED


def _print(report: RehearsalReport) -> None:
    print(f"{'phase':<10} {'ops':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for p in report.phases:
        p50, p99 = p.percentile(50), p.percentile(99)
        print(f"{p.phase.value:<10} {p.operations:>6} {p50:>8.2f} {p99:>8.2f}")
    rows: list[tuple[str, Any]] = [
        ("operations", report.operations),
        ("secondary faults injected", report.faults_injected),
        ("divergences seen by shadow reads", report.divergences_seen),
        ("repairs queued", report.repairs_enqueued),
        ("repairs that copied a record", report.repairs_copied),
        ("history seeded in Cassandra", report.history_seeded),
        ("copied by the backfill", report.history_copied),
        ("backfill sessions/s", f"{report.backfill_sessions_per_second:,.0f}"),
        ("copied back by the reverse backfill", report.reverse_copied),
    ]
    rows += [(f"verify {when}: differences", n) for when, n in report.verifications]
    rows += [
        ("keys checked at the end", report.keys_checked),
        ("keys diverged after repair", report.diverged_keys),
        ("acknowledged writes lost", report.lost_writes),
    ]
    fleet = report.fleet
    if fleet is not None:
        rows += [
            ("fleet: processes (clocks -4 s, 0 s, +4 s)", fleet.processes),
            ("fleet: calls", fleet.operations),
            ("fleet: callers cancelled", fleet.cancelled),
            ("fleet: conflicts raised to callers", fleet.conflicts_raised),
            ("fleet: tombstones purged after the grace", fleet.tombstones_purged),
            ("fleet: tombstones one store forgot", fleet.tombstones_forgotten),
            ("fleet: dead letters (reported, by id)", len(fleet.dead_letters)),
            ("fleet: acknowledged writes lost", fleet.lost_writes),
            ("fleet: deleted sessions readable again", fleet.resurrected),
        ]
    print()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}} {value:>8}")
    if fleet is not None:
        for sid, reason in sorted(fleet.dead_letters.items()):
            print(f"fleet: dead letter {sid}  {reason}")
    print("\nresult: " + ("OK, both stores converged" if report.ok else "FAILED"))


def _as_json(report: RehearsalReport) -> str:
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
    data["verifications"] = [{"when": w, "differences": n} for w, n in report.verifications]
    if report.fleet is not None:
        data["fleet"]["ok"] = report.fleet.ok
    data["ok"] = report.ok
    return json.dumps(data, indent=2)
