"""Open an isolated, empty backend of each kind for a test.

The in-memory kind needs nothing; the real kinds connect to the servers that
``scripts/servers up`` started (or those named by the SESSIONSTORE_* variables) and use a
fresh table or collection per test, so tests never see each other's data.
"""

from __future__ import annotations

import dataclasses

import pytest

from sessionstore.backends import InMemoryBackend, SessionBackend

BACKEND_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("cassandra", id="cassandra", marks=pytest.mark.real),
    pytest.param("documentdb", id="documentdb", marks=pytest.mark.real),
    # The same store with the write order a backfill's target uses.
    pytest.param("documentdb-insert-first", id="documentdb-insert-first", marks=pytest.mark.real),
]


@dataclasses.dataclass
class StoreHandle:
    """A backend plus what the test may rely on for it."""

    backend: SessionBackend
    kind: str
    #: True when a conditional write is atomic against concurrent writers to the same key.
    #: FerretDB's conditional update is read-then-write, so it is False there.
    atomic_conditional_writes: bool = True


async def open_store(kind: str, *, role: str) -> StoreHandle:
    if kind == "memory":
        backend = InMemoryBackend(name=role)
        await backend.__aenter__()
        return StoreHandle(backend, kind)
    from tests.real import servers

    return await servers.open_real_store(kind)
