"""sessionstore: move student sessions from Cassandra to DocumentDB with zero downtime."""

from sessionstore._errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InvalidRevisionError,
    InvalidSessionError,
    RepairQueueError,
    RepositoryClosedError,
    SessionStoreError,
    SessionTooLargeError,
)
from sessionstore.backends import (
    InMemoryBackend,
    KeyRange,
    RecordHead,
    SessionBackend,
    StoredRecord,
    WriteResult,
)
from sessionstore.divergence import Divergence, DivergenceKind, compare_records
from sessionstore.health import HealthReport, StoreHealth
from sessionstore.model import (
    MAX_ENCODED_SIZE,
    Answer,
    Attachment,
    SessionStatus,
    StudentSession,
)
from sessionstore.phases import (
    PHASE_PLANS,
    Operation,
    Phase,
    PhasePlan,
    PhaseSource,
    StaticPhaseSource,
    Store,
)
from sessionstore.repair import (
    DeadLetter,
    InMemoryRepairQueue,
    QueueStats,
    RepairOutcome,
    RepairQueue,
    RepairReport,
    RepairWorker,
    SqliteRepairQueue,
    SqsRepairQueue,
)
from sessionstore.repository import RepositoryState, SessionRepository, ShadowRead
from sessionstore.resilience import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Timeouts,
)
from sessionstore.revision import HybridClock, Revision

__all__ = [
    "MAX_ENCODED_SIZE",
    "PHASE_PLANS",
    "Answer",
    "Attachment",
    "BackendError",
    "BackendRejectedError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "DeadLetter",
    "Divergence",
    "DivergenceKind",
    "HealthReport",
    "HybridClock",
    "InMemoryBackend",
    "InMemoryRepairQueue",
    "InvalidRevisionError",
    "InvalidSessionError",
    "KeyRange",
    "LaunchDarklyPhaseSource",
    "Operation",
    "Phase",
    "PhasePlan",
    "PhaseSource",
    "QueueStats",
    "RecordHead",
    "RepairOutcome",
    "RepairQueue",
    "RepairQueueError",
    "RepairReport",
    "RepairWorker",
    "RepositoryClosedError",
    "RepositoryState",
    "Revision",
    "SessionBackend",
    "SessionRepository",
    "SessionStatus",
    "SessionStoreError",
    "SessionTooLargeError",
    "ShadowRead",
    "SqliteRepairQueue",
    "SqsRepairQueue",
    "StaticPhaseSource",
    "Store",
    "StoreHealth",
    "StoredRecord",
    "StudentSession",
    "Timeouts",
    "WriteResult",
    "compare_records",
]


def __getattr__(name: str) -> object:
    # LaunchDarklyPhaseSource needs the optional launchdarkly extra: import it on use.
    if name == "LaunchDarklyPhaseSource":
        from sessionstore.launchdarkly import LaunchDarklyPhaseSource

        return LaunchDarklyPhaseSource
    raise AttributeError(f"module 'sessionstore' has no attribute {name!r}")
