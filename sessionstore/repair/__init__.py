"""Repair: the durable queue of sessions whose stores may differ, and its worker."""

from sessionstore.repair.queue import (
    DeadLetter,
    InMemoryRepairQueue,
    QueueStats,
    RepairQueue,
    RepairTask,
)
from sessionstore.repair.sqlite import SqliteRepairQueue
from sessionstore.repair.sqs import SqsRepairQueue
from sessionstore.repair.worker import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TOMBSTONE_GRACE,
    RepairOutcome,
    RepairReport,
    RepairWorker,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TOMBSTONE_GRACE",
    "DeadLetter",
    "InMemoryRepairQueue",
    "QueueStats",
    "RepairOutcome",
    "RepairQueue",
    "RepairReport",
    "RepairTask",
    "RepairWorker",
    "SqliteRepairQueue",
    "SqsRepairQueue",
]
