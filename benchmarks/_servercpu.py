"""CPU time of the server processes (when they run on this machine), per block.

On a 2-core machine the client and both servers share the CPUs, so a latency can grow
because a *server* worked more (a shadow read makes FerretDB parse a document while
Cassandra serves the primary read). Reading ``/proc/<pid>/stat`` before and after each
block shows that. The pids come from the pid files of ``scripts/servers``; when they
are missing (external servers), nothing is measured.
"""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _pids() -> dict[str, int]:
    servers = Path(os.environ.get("SESSIONSTORE_SERVERS_DIR", _ROOT / ".servers"))
    pids: dict[str, int] = {}
    for name in ("cassandra", "ferretdb"):
        try:
            pids[name] = int((servers / name / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


PIDS = {} if os.environ.get("SESSIONSTORE_EXTERNAL_SERVERS") == "1" else _pids()


def cpu_ns() -> dict[str, float]:
    """Each local server's CPU time so far (user + system), in ns."""
    out: dict[str, float] = {}
    for name, pid in PIDS.items():
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) * _TICK_NS
        except (OSError, IndexError, ValueError):
            continue
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU spent by each server between two readings, in ns."""
    return {k: after[k] - before[k] for k in before.keys() & after.keys()}
