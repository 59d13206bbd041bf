"""Migration phases: an enum of the six LaunchDarkly stages and one table of behaviour.

Example::

    plan = PHASE_PLANS[Phase.DOCDB_PRIMARY]
    assert plan.writes == (Store.DOCUMENTDB, Store.CASSANDRA)
    assert plan.read == Store.DOCUMENTDB and plan.compare
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from typing import Protocol, runtime_checkable

__all__ = [
    "PHASE_PLANS",
    "Operation",
    "Phase",
    "PhaseDecision",
    "PhasePlan",
    "PhaseSource",
    "StaticPhaseSource",
    "Store",
]


class Store(enum.StrEnum):
    """The two stores. Cassandra is LaunchDarkly's *old* origin, DocumentDB the *new*."""

    CASSANDRA = "cassandra"
    DOCUMENTDB = "documentdb"

    @property
    def other(self) -> Store:
        """The other store."""
        return Store.DOCUMENTDB if self is Store.CASSANDRA else Store.CASSANDRA


class Operation(enum.StrEnum):
    """What a repository call does, as reported to metrics and LaunchDarkly."""

    READ = "read"
    WRITE = "write"


class Phase(enum.StrEnum):
    """The migration phase; values are LaunchDarkly's migration stage names."""

    #: Cassandra only. Reads and writes go to Cassandra.
    CASSANDRA_ONLY = "off"
    #: Writes go to Cassandra then DocumentDB; reads come from Cassandra.
    DUAL_WRITE = "dualwrite"
    #: As DUAL_WRITE, and reads also read DocumentDB in the background and compare.
    SHADOW = "shadow"
    #: Writes go to DocumentDB then Cassandra; reads from DocumentDB, compared to Cassandra.
    DOCDB_PRIMARY = "live"
    #: As DOCDB_PRIMARY without the comparison.
    RAMPDOWN = "rampdown"
    #: DocumentDB only. Cassandra is no longer touched.
    DOCDB_ONLY = "complete"


@dataclasses.dataclass(frozen=True, slots=True)
class PhasePlan:
    """What a phase does: writes in order (first is authoritative), read source, compare.

    ``fallback``: a failed authoritative read may be answered by the other store. Only
    where the runbook has proved the other store complete before entering the phase
    (verify after the backfill for SHADOW; Cassandra was authoritative, or the reverse
    backfill was verified, before DOCDB_PRIMARY). Not in DUAL_WRITE (DocumentDB may
    still lack the history) nor RAMPDOWN (entered back from DOCDB_ONLY, Cassandra lacks
    that phase's writes until the reverse backfill).
    """

    writes: tuple[Store, ...]
    read: Store
    compare: bool
    fallback: bool = False

    @property
    def authoritative(self) -> Store:
        """The store whose failure fails the call and whose answer is returned."""
        return self.writes[0]

    @property
    def secondary(self) -> Store | None:
        """The store written second, whose failure is only counted and repaired."""
        return self.writes[1] if len(self.writes) > 1 else None


_C, _D = Store.CASSANDRA, Store.DOCUMENTDB

#: The whole behaviour of the migration, one row per phase (see docs/phases.md).
PHASE_PLANS: dict[Phase, PhasePlan] = {
    Phase.CASSANDRA_ONLY: PhasePlan(writes=(_C,), read=_C, compare=False),
    Phase.DUAL_WRITE: PhasePlan(writes=(_C, _D), read=_C, compare=False),
    Phase.SHADOW: PhasePlan(writes=(_C, _D), read=_C, compare=True, fallback=True),
    Phase.DOCDB_PRIMARY: PhasePlan(writes=(_D, _C), read=_D, compare=True, fallback=True),
    Phase.RAMPDOWN: PhasePlan(writes=(_D, _C), read=_D, compare=False),
    Phase.DOCDB_ONLY: PhasePlan(writes=(_D,), read=_D, compare=False),
}


class PhaseDecision(Protocol):
    """One evaluation of the phase for one operation on one session.

    ``record_*`` calls feed LaunchDarkly's migration tracker (or nothing, for a static
    source); ``finish`` sends what was recorded.
    """

    @property
    def phase(self) -> Phase: ...

    def record_invoked(self, store: Store) -> None: ...

    def record_latency(self, store: Store, seconds: float) -> None: ...

    def record_error(self, store: Store) -> None: ...

    def record_consistent(self, consistent: bool) -> None: ...

    def finish(self) -> None: ...


@runtime_checkable
class PhaseSource(Protocol):
    """Decides the phase per operation and per session."""

    def decide(self, session_id: uuid.UUID, operation: Operation) -> PhaseDecision:
        """Evaluate the phase once for this call. Must not block on I/O."""
        ...


@dataclasses.dataclass(slots=True)
class _StaticDecision:
    phase: Phase

    def record_invoked(self, store: Store) -> None:
        """Nothing to report."""

    def record_latency(self, store: Store, seconds: float) -> None:
        """Nothing to report."""

    def record_error(self, store: Store) -> None:
        """Nothing to report."""

    def record_consistent(self, consistent: bool) -> None:
        """Nothing to report."""

    def finish(self) -> None:
        """Nothing to report."""


class StaticPhaseSource:
    """A fixed phase that can be changed at run time (``source.phase = ...``).

    >>> StaticPhaseSource(Phase.DUAL_WRITE).decide(uuid.uuid4(), Operation.READ).phase
    <Phase.DUAL_WRITE: 'dualwrite'>
    """

    def __init__(self, phase: Phase = Phase.CASSANDRA_ONLY) -> None:
        self.phase = Phase(phase)

    def decide(self, session_id: uuid.UUID, operation: Operation) -> PhaseDecision:
        """The current phase, for any session and operation."""
        return _StaticDecision(self.phase)
