"""Repair: the durable queue of sessions whose stores may differ, and its worker."""

from sessionstore.repair.queue import InMemoryRepairQueue, RepairQueue, RepairTask
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.worker import RepairOutcome, RepairReport, RepairWorker

__all__ = [
    "InMemoryRepairQueue",
    "RepairOutcome",
    "RepairQueue",
    "RepairReport",
    "RepairTask",
    "RepairWorker",
    "SqliteRepairQueue",
]
