"""Migration jobs on whole stores: backfill, verify, purge, reconcile and the rehearsal.

The backfill, verify and purge jobs split a store into small, serializable units
(:class:`WorkUnit`), checkpoint each unit's completion (:class:`SqliteCheckpointStore`),
throttle themselves (:class:`RateLimiter`, :class:`RetryPolicy`) and return a
:class:`JobReport`. See docs/jobs.md. Example::

    from sessionstore.jobs import BackfillJob, SqliteCheckpointStore, VerifyJob

    async with SqliteCheckpointStore("checkpoints.db") as checkpoints:
        job = BackfillJob(cassandra, documentdb, name="backfill-1", checkpoints=checkpoints,
                          rate=2000)
        report = await job.run(job.plan(parts=1024))
        verified = await VerifyJob(cassandra, documentdb, name="verify-1").run()
"""

from sessionstore.jobs.backfill import BackfillJob, RecordsRejectedError
from sessionstore.jobs.checkpoint import (
    CheckpointError,
    CheckpointStore,
    JobRecord,
    MemoryCheckpointStore,
    SqliteCheckpointStore,
    UnitRecord,
    UnitState,
)
from sessionstore.jobs.engine import (
    DEFAULT_PAGE_BYTES,
    JobProgress,
    JobReport,
    PageBudget,
    UnitResult,
)
from sessionstore.jobs.handler import UnitRunner
from sessionstore.jobs.purge import PurgeJob
from sessionstore.jobs.reconcile import ReconcileReport, reconcile
from sessionstore.jobs.rehearsal import RehearsalConfig, RehearsalReport, run_rehearsal
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.jobs.throttle import RateLimiter, RetryPolicy, Throttle
from sessionstore.jobs.unit_queue import InMemoryUnitQueue, QueuedMessage, SqsUnitQueue
from sessionstore.jobs.units import (
    JobAction,
    UnitKind,
    WorkUnit,
    parse_range,
    parse_shard,
    plan_fingerprint,
    plan_ids,
    plan_ranges,
    read_id_file,
    shard,
)
from sessionstore.jobs.verify import VerifyJob
from sessionstore.jobs.worker import QueueWorker, WorkerReport

__all__ = [
    "DEFAULT_PAGE_BYTES",
    "BackfillJob",
    "CheckpointError",
    "CheckpointStore",
    "ConnectionSettings",
    "InMemoryUnitQueue",
    "JobAction",
    "JobProgress",
    "JobRecord",
    "JobReport",
    "MemoryCheckpointStore",
    "PageBudget",
    "PurgeJob",
    "QueueWorker",
    "QueuedMessage",
    "RateLimiter",
    "ReconcileReport",
    "RecordsRejectedError",
    "RehearsalConfig",
    "RehearsalReport",
    "RetryPolicy",
    "SqliteCheckpointStore",
    "SqsUnitQueue",
    "Throttle",
    "UnitKind",
    "UnitRecord",
    "UnitResult",
    "UnitRunner",
    "UnitState",
    "VerifyJob",
    "WorkUnit",
    "WorkerReport",
    "parse_range",
    "parse_shard",
    "plan_fingerprint",
    "plan_ids",
    "plan_ranges",
    "read_id_file",
    "reconcile",
    "run_rehearsal",
    "shard",
]
