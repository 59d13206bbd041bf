"""``sessionstore phase``: the phase table, and which phase given sessions are in now.

With session ids, the LaunchDarkly migration flag is evaluated for each of them exactly
as the service does (a ``session`` context keyed by the keyed hash of the id, from the
same ``SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET``), so the on-call team can check that a
flip, or a percentage rollout, took effect; each session's context key is printed too,
to target it in the dashboard. No events are sent.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sessionstore._errors import ConfigurationError, InvalidSessionError
from sessionstore._telemetry import Telemetry
from sessionstore.cli import _common as common
from sessionstore.cli._common import CommandError
from sessionstore.model import validate_session_id
from sessionstore.phases import PHASE_PLANS, Operation, Phase

__all__ = ["add_parsers", "command", "make_ld_client", "phase_rows"]

#: The service's explicit opt-in to raw session ids as context keys (docs/cli.md).
_RAW_IDS_VARIABLE = "SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS"


def make_ld_client(sdk_key: str, timeout: float) -> Any:
    """A LaunchDarkly client that waits up to ``timeout`` s to initialize (tests replace it)."""
    try:
        from ldclient.client import LDClient
        from ldclient.config import Config
    except ImportError:
        raise ConfigurationError("install the 'launchdarkly' extra to evaluate the flag") from None
    return LDClient(Config(sdk_key, send_events=False), start_wait=timeout)


def add_parsers(sub: Any) -> None:
    """Register ``phase`` (and ``phases``, its table-only alias)."""
    parser = sub.add_parser(
        "phase",
        help="print the phase table, and the phase of given session ids now (LaunchDarkly)",
    )
    parser.add_argument("session_ids", nargs="*", metavar="SESSION_ID")
    parser.add_argument(
        "--flag",
        default=os.environ.get("SESSIONSTORE_LAUNCHDARKLY_FLAG", "session-store-migration"),
        help="migration flag key (SESSIONSTORE_LAUNCHDARKLY_FLAG)",
    )
    parser.add_argument(
        "--sdk-key-file", metavar="FILE", help="file holding the SDK key (or LAUNCHDARKLY_SDK_KEY)"
    )
    parser.add_argument(
        "--context-secret-file",
        metavar="FILE",
        help="file holding the context key secret (or SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET)",
    )
    parser.add_argument(
        "--raw-session-ids",
        action="store_const",
        const=True,
        help="key contexts by the session ids themselves, for a service that opted into "
        "raw_session_ids (or SESSIONSTORE_LAUNCHDARKLY_RAW_SESSION_IDS=true)",
    )
    parser.add_argument(
        "--default-phase",
        type=_phase_choice,
        default=Phase.CASSANDRA_ONLY,
        metavar="PHASE",
        help="what the service falls back to if the flag cannot be evaluated",
    )
    parser.add_argument("--timeout", type=common.positive_float, default=10.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("phases", help="print the phase table (as 'phase' without session ids)")


def _phase_choice(text: str) -> Phase:
    for phase in Phase:
        if text in (phase.name, phase.name.lower(), phase.value):
            return phase
    raise argparse.ArgumentTypeError(f"unknown phase; one of {', '.join(p.name for p in Phase)}")


def phase_rows() -> list[dict[str, str]]:
    """The phase table as data: phase, LD stage, writes in order, reads, compared against."""
    rows = []
    for phase in Phase:
        plan = PHASE_PLANS[phase]
        rows.append(
            {
                "phase": phase.name,
                "stage": phase.value,
                "writes": ", ".join(s.value for s in plan.writes),
                "reads": plan.read.value,
                "compare": plan.read.other.value if plan.compare else "-",
            }
        )
    return rows


def _print_table() -> None:
    print(f"{'phase':<16} {'LD stage':<10} {'writes, in order':<24} {'reads':<11} compare")
    for r in phase_rows():
        print(
            f"{r['phase']:<16} {r['stage']:<10} {r['writes']:<24} {r['reads']:<11} {r['compare']}"
        )


def command(args: argparse.Namespace) -> int:
    """Run ``phase`` / ``phases``; returns the exit code."""
    ids_given = list(getattr(args, "session_ids", []) or [])
    try:
        ids = [validate_session_id(text) for text in ids_given]
    except InvalidSessionError:
        common.error("every SESSION_ID must be a UUID")
        return common.EXIT_USAGE
    try:
        sessions = _evaluate(args, ids) if ids else []
    except CommandError as exc:
        common.error(str(exc))
        return exc.code
    except ConfigurationError as exc:
        common.error(str(exc))
        return common.EXIT_USAGE
    if getattr(args, "json", False):
        common.write_json({"phases": phase_rows(), "sessions": sessions}, to_stdout=True, path=None)
        return common.EXIT_OK
    _print_table()
    if sessions:
        print()
        for s in sessions:
            plan = PHASE_PLANS[Phase(s["stage"])]
            writes = " then ".join(w.value for w in plan.writes)
            note = "  (flag not evaluated: default phase)" if s["fallback"] else ""
            print(
                f"{s['session_id']}  {s['phase']:<14} reads {plan.read.value}, "
                f"writes {writes}{note}  (context key {s['context_key']})"
            )
    return common.EXIT_OK


def _evaluate(args: argparse.Namespace, ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    from sessionstore.launchdarkly import LaunchDarklyPhaseSource

    if args.sdk_key_file:
        sdk_key = common.read_secret_file(Path(args.sdk_key_file), "SDK key")
    else:
        sdk_key = os.environ.get("LAUNCHDARKLY_SDK_KEY", "")
    if not sdk_key:
        raise CommandError(
            common.EXIT_USAGE,
            "evaluating the flag needs LAUNCHDARKLY_SDK_KEY (or --sdk-key-file)",
        )
    secret, raw_ids = _context_keying(args)
    client = make_ld_client(sdk_key, args.timeout)
    try:
        if not client.is_initialized():
            raise CommandError(
                common.EXIT_UNREACHABLE,
                f"LaunchDarkly did not initialize within {args.timeout:g} s "
                "(SDK key rejected, or the service unreachable)",
            )
        telemetry = Telemetry()
        source = LaunchDarklyPhaseSource(
            client,
            flag_key=args.flag,
            context_key_secret=secret,
            raw_session_ids=raw_ids,
            default_phase=args.default_phase,
            telemetry=telemetry,
        )
        sessions = []
        for sid in ids:
            before = telemetry.stats.phase_fallbacks
            phase = source.decide(sid, Operation.READ).phase
            sessions.append(
                {
                    "session_id": str(sid),
                    "phase": phase.name,
                    "stage": phase.value,
                    "context_key": source.context_key(sid),
                    "fallback": telemetry.stats.phase_fallbacks > before,
                }
            )
        return sessions
    finally:
        client.close()


def _context_keying(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The service's context keying: its secret, or its raw-session-ids opt-in."""
    from sessionstore.launchdarkly import CONTEXT_KEY_SECRET_VARIABLE, _keyed_hash

    raw_ids = args.raw_session_ids
    if raw_ids is None:
        text = os.environ.get(_RAW_IDS_VARIABLE, "").strip() or "false"
        try:
            raw_ids = TypeAdapter(bool).validate_python(text)
        except ValidationError:
            raise ConfigurationError(f"{_RAW_IDS_VARIABLE} must be true or false") from None
    secret: str | None
    if args.context_secret_file:
        secret = common.read_secret_file(Path(args.context_secret_file), "context key secret")
    else:
        secret = os.environ.get(CONTEXT_KEY_SECRET_VARIABLE) or None
    if secret is None and not raw_ids:
        raise CommandError(
            common.EXIT_USAGE,
            f"evaluating the flag as the service does needs its {CONTEXT_KEY_SECRET_VARIABLE} "
            "(or --context-secret-file), or --raw-session-ids if the service sends raw ids",
        )
    # Raw ids win over a secret in the environment only when asked for explicitly.
    secret = None if raw_ids else secret
    _keyed_hash(secret, raw_session_ids=bool(raw_ids))  # validated before LaunchDarkly connects
    return secret, bool(raw_ids)
