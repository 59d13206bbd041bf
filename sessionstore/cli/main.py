"""``sessionstore``: the on-call command line.

Commands: ``backfill``, ``verify``, ``purge``, ``repair``, ``phase`` (and ``phases``),
``rehearse``, ``check``. Stores are configured by flags and ``SESSIONSTORE_*`` environment
variables; secrets are never printed. See docs/cli.md.

Exit codes: 0 success; 1 the job ran and found differences, or units failed;
2 bad usage or input (nothing was changed); 3 a store or LaunchDarkly is unreachable
or refused the credentials (nothing was changed); 130 interrupted (completed units
are checkpointed).

Example::

    $ sessionstore backfill --source cassandra --rate 2000 --concurrency 8
    $ sessionstore verify --source cassandra --json --report verify.json
    $ sessionstore phase 0b7e8a5c-3f0e-4b7a-9a55-0c2f0f3f5d11
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sessionstore.cli import check, jobs, phase, purge, rehearse, repair, worker

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionstore",
        description="Move student sessions from Cassandra to DocumentDB: jobs for on-call.",
        epilog="exit codes: 0 ok, 1 differences or failed units, 2 bad input, "
        "3 store unreachable or credentials refused, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jobs.add_parsers(sub)
    purge.add_parser(sub)
    repair.add_parser(sub)
    phase.add_parsers(sub)
    rehearse.add_parser(sub)
    worker.add_parser(sub)
    check.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sessionstore`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in ("backfill", "verify"):
        return jobs.command(args)
    if args.command == "purge":
        return purge.command(args)
    if args.command == "repair":
        return repair.command(args)
    if args.command in ("phase", "phases"):
        return phase.command(args)
    if args.command == "worker":
        return worker.command(args)
    if args.command == "check":
        return check.command(args)
    return rehearse.command(args)


if __name__ == "__main__":
    sys.exit(main())
