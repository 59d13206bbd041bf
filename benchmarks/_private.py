"""A Cassandra and a FerretDB of the benchmark's own, which it may freeze.

Freezing (SIGSTOP) a server that others use would fail their calls, so the resilience
section starts its own pair with ``scripts/servers``, in a directory and on ports of its
own, and removes it at the end::

    async with PrivateServers() as private:
        servers = Servers(cassandra_port=private.cassandra_port,
                          mongodb_uri=private.mongodb_uri)
        await private.freeze("ferretdb")
        ...
        await private.thaw("ferretdb")

Ports: ``SESSIONSTORE_BENCH_CASSANDRA_PORT`` (39042), ``..._STORAGE_PORT`` (37000),
``SESSIONSTORE_BENCH_FERRETDB_PORT`` (38117). The servers live in
``bench-results/servers/`` (git-ignored) and are wiped when the section ends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

_ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = _ROOT / "scripts" / "servers"
NAMES = ("cassandra", "ferretdb")


class PrivateServers:
    """Start, freeze, thaw and remove the benchmark's own pair (``scripts/servers``)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.cassandra_port = int(os.environ.get("SESSIONSTORE_BENCH_CASSANDRA_PORT", "39042"))
        storage = os.environ.get("SESSIONSTORE_BENCH_CASSANDRA_STORAGE_PORT", "37000")
        ferretdb = int(os.environ.get("SESSIONSTORE_BENCH_FERRETDB_PORT", "38117"))
        self.mongodb_uri = f"mongodb://127.0.0.1:{ferretdb}/"
        self.directory = directory or _ROOT / "bench-results" / "servers"
        env = dict(os.environ)
        # These servers are this process's own, whatever the shared ones are.
        env.pop("SESSIONSTORE_EXTERNAL_SERVERS", None)
        env.update(
            SESSIONSTORE_SERVERS_DIR=str(self.directory),
            SESSIONSTORE_CASSANDRA_PORT=str(self.cassandra_port),
            SESSIONSTORE_CASSANDRA_STORAGE_PORT=storage,
            SESSIONSTORE_FERRETDB_PORT=str(ferretdb),
        )
        self._env = env

    def _run(self, *args: str) -> None:
        proc = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [sys.executable, str(_SCRIPT), *args],
            env=self._env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/servers {' '.join(args)} failed:\n{proc.stderr}")

    async def freeze(self, name: str) -> None:
        """SIGSTOP one server (in a thread: the event loop keeps running)."""
        await asyncio.to_thread(self._run, "freeze", name)

    async def thaw(self, name: str) -> None:
        """SIGCONT it and wait until it answers."""
        await asyncio.to_thread(self._run, "thaw", name)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._run, "up", *NAMES)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._run, "down", "--wipe", *NAMES)
