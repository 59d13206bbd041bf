"""Whole-store comparison of two backends, optionally repairing by newest revision.

This is the in-process core that the rehearsal uses to copy history and to prove
convergence: it scans each store's whole key space in pages, looks every key up in the
other store, and classifies the pair. With ``repair=True`` each differing key is synced
newest-wins by :meth:`RepairWorker.sync`. It is not checkpointed or throttled; the
resumable, rate-limited backfill and verify jobs build on it.

Example::

    report = await reconcile(cassandra, documentdb, repair=True)
    assert report.differences == 0
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid

from sessionstore.backends.base import SessionBackend, StoredRecord
from sessionstore.divergence import DivergenceKind, compare_records
from sessionstore.repair.queue import InMemoryRepairQueue
from sessionstore.repair.worker import RepairOutcome, RepairWorker

__all__ = ["ReconcileReport", "reconcile"]


@dataclasses.dataclass
class ReconcileReport:
    """Counts by divergence kind (first store as the reference) and repair outcomes."""

    keys: int = 0
    kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    fields: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    repaired: int = 0
    unrepaired: int = 0

    @property
    def differences(self) -> int:
        """Keys whose two records differ."""
        return sum(n for kind, n in self.kinds.items() if kind != DivergenceKind.CONSISTENT)


async def _all_records(store: SessionBackend, page_size: int) -> dict[uuid.UUID, StoredRecord]:
    records: dict[uuid.UUID, StoredRecord] = {}
    cursor: str | None = None
    while True:
        page = await store.scan(store.key_space, cursor=cursor, limit=page_size)
        records.update((r.session_id, r) for r in page)
        cursor = page.cursor
        if cursor is None:
            return records


async def reconcile(
    first: SessionBackend,
    second: SessionBackend,
    *,
    repair: bool = False,
    concurrency: int = 16,
    page_size: int = 500,
) -> ReconcileReport:
    """Compare every key of both stores; with ``repair``, copy the newer record across.

    Scans both stores fully into memory, so it suits rehearsals and tests; the backfill
    and verify jobs stream range by range instead.
    """
    a, b = await asyncio.gather(_all_records(first, page_size), _all_records(second, page_size))
    report = ReconcileReport()
    differing: list[uuid.UUID] = []
    for sid in a.keys() | b.keys():
        divergence = compare_records(a.get(sid), b.get(sid))
        report.keys += 1
        report.kinds[divergence.kind.value] += 1
        report.fields.update(divergence.fields)
        if not divergence.consistent:
            differing.append(sid)
    if repair and differing:
        worker = RepairWorker(cassandra=first, documentdb=second, queue=InMemoryRepairQueue())
        limit = asyncio.Semaphore(concurrency)

        async def sync(sid: uuid.UUID) -> str:
            async with limit:
                return await worker.sync(sid)

        outcomes = await asyncio.gather(*(sync(sid) for sid in differing))
        report.repaired = sum(o == RepairOutcome.COPIED for o in outcomes)
        report.unrepaired = len(outcomes) - report.repaired
    return report
