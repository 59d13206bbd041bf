"""A repository over the real Cassandra and FerretDB, with call recording and faults."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessionstore import InMemoryRepairQueue, Phase, PhaseSource, StaticPhaseSource
from sessionstore.repository import SessionRepository
from sessionstore.testing import Call, FaultInjectingBackend, MemoryStores
from tests.stores import open_store

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def real_repository(
    phases: PhaseSource | Phase, **options: Any
) -> AsyncIterator[tuple[SessionRepository, MemoryStores]]:
    """An open repository over fresh real stores (fresh table and collection)."""
    source = StaticPhaseSource(phases) if isinstance(phases, Phase) else phases
    # The tests drain right after their calls returned and cancel none mid-flight:
    # nothing can land late, so repairs need not wait.
    options.setdefault("repair_delay", 0.0)
    cassandra = await open_store("cassandra", role="cassandra")
    documentdb = await open_store("documentdb", role="documentdb")
    calls: list[Call] = []
    stores = MemoryStores(
        FaultInjectingBackend(cassandra.backend, calls=calls),
        FaultInjectingBackend(documentdb.backend, calls=calls),
        InMemoryRepairQueue(),
        calls,
    )
    repo = SessionRepository(
        cassandra=stores.cassandra,
        documentdb=stores.documentdb,
        phases=source,
        repairs=stores.repairs,
        **options,
    )
    async with repo:
        yield repo, stores


def servers(*args: str) -> None:
    """Run ``scripts/servers ARGS``; fail the test loudly if it fails."""
    if os.environ.get("SESSIONSTORE_EXTERNAL_SERVERS") == "1" and not os.environ.get("CI"):
        pytest.skip("servers are external: this test must stop and restart them itself")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "servers"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/servers {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
