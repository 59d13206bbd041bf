"""``SessionRepository``: the facade the session service calls.

Example::

    repo = SessionRepository(
        cassandra=InMemoryBackend(name="cassandra"),
        documentdb=InMemoryBackend(name="documentdb"),
        phases=StaticPhaseSource(Phase.DUAL_WRITE),
        repairs=SqliteRepairQueue("repairs.db"),
    )
    async with repo:
        saved = await repo.save(StudentSession.create(student_id="s", assessment_id="a"))
        assert (await repo.get(saved.session_id)) == saved
        await repo.delete(saved.session_id)

Per call the phase is evaluated once (see :data:`~sessionstore.phases.PHASE_PLANS`):
writes go to the authoritative store, then the secondary; an authoritative failure
raises and the secondary is not attempted; a secondary failure is counted and the call
succeeds. Reads return the authoritative answer; in compare phases the other store is
read at the same time and compared in the background, off the caller's latency path,
and a differing pair is queued for repair.

In the phases that write both stores, every write that does not end with both stores
acknowledging it is queued for repair: a secondary failure or deadline, an
authoritative error (a timeout may mean the write landed), a conflict, and a call
cancelled at any point. The queueing is shielded from the cancellation. A save or
delete either is the newest version stored when it returns, or raises
:class:`~sessionstore.ConflictError`.

The other store never holds the caller for long: each store call has its own deadline
(:class:`~sessionstore.Timeouts`), and a store that keeps failing has its circuit
breaker opened (:class:`~sessionstore.BreakerPolicy`): as the secondary it is skipped
(the session is queued at once), as the authoritative store it fails fast, and in the
phases that allow it (:attr:`~sessionstore.PhasePlan.fallback`) a failed authoritative
read is answered by the other store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from opentelemetry.metrics import MeterProvider

from sessionstore._errors import (
    BackendError,
    ConfigurationError,
    ConflictError,
    RepositoryClosedError,
    SessionStoreError,
)
from sessionstore._store_calls import Deadline, StoreCalls
from sessionstore._telemetry import RepositoryStats, Telemetry
from sessionstore.backends.base import SessionBackend, StoredRecord, WriteResult
from sessionstore.divergence import compare_records
from sessionstore.health import HealthReport, check_health
from sessionstore.model import StudentSession, ensure_session, validate_session_id, with_revision
from sessionstore.phases import (
    PHASE_PLANS,
    Operation,
    Phase,
    PhaseDecision,
    PhasePlan,
    PhaseSource,
    Store,
)
from sessionstore.repair.queue import RepairQueue, check_delay
from sessionstore.resilience import BreakerPolicy, Timeouts
from sessionstore.revision import HybridClock

__all__ = [
    "DEFAULT_MAX_COMPARISONS",
    "DEFAULT_REPAIR_DELAY",
    "RepositoryState",
    "SessionRepository",
    "ShadowRead",
]

log = logging.getLogger(__name__)

#: Background comparisons in flight at most, by default (``max_comparisons``).
DEFAULT_MAX_COMPARISONS = 64
#: Seconds a write given up on may still take to land (``repair_delay``): above the
#: drivers' own request timeouts (Cassandra's is 10 s by default).
DEFAULT_REPAIR_DELAY = 15.0

# Why a write is queued when nothing of it can still be in flight: no delay needed.
_SETTLED = frozenset({"secondary_skipped", "secondary_not_applied"})

_Send = Callable[[SessionBackend, int | None], Awaitable[WriteResult]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Write:
    """One save or delete on its way through the write path."""

    op: str
    sid: uuid.UUID
    revision: int
    expected: int | None
    send: _Send
    decision: PhaseDecision
    plan: PhasePlan
    deadline: Deadline

    def conflict(self, current: int | None) -> ConflictError:
        """The error for this write losing to ``current``."""
        return ConflictError(
            self.sid,
            attempted_revision=self.revision,
            current_revision=current,
            expected_revision=self.expected,
        )


class RepositoryState(enum.Enum):
    """Lifecycle of a repository: calls are allowed only while OPEN."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class ShadowRead(enum.Enum):
    """When a compare phase starts its read of the other store.

    ``PARALLEL`` (the default) starts it together with the authoritative read, so both
    stores are read at nearly the same instant. ``AFTER_PRIMARY`` starts it once the
    authoritative store has answered, so that sending it (client CPU in this process)
    and the other store's work cannot delay the caller's answer; the two reads are then
    a round trip apart, so a write landing in between may be counted as a difference
    (and queued for a repair that changes nothing).
    """

    PARALLEL = "parallel"
    AFTER_PRIMARY = "after_primary"


class SessionRepository:
    """Reads and writes sessions in whichever stores the migration phase says.

    Args:
        cassandra: the Cassandra backend (LaunchDarkly's *old* origin).
        documentdb: the DocumentDB backend (the *new* origin).
        phases: decides the phase per call (LaunchDarkly flag or static).
        repairs: where sessions whose stores may differ are queued.
        meter_provider: OpenTelemetry meter provider; the global one if None.
        compare_sample_ratio: share of reads in compare phases that read both stores.
        shadow_read: when compare phases start their read of the other store.
        clock: the revision clock; give each process its own ``writer_id`` (see
            :class:`~sessionstore.HybridClock`) and a ``max_skew`` above the largest
            clock difference in the fleet.
        timeouts: the deadline of each kind of store call (:class:`~sessionstore.Timeouts`).
        breaker: when a store's circuit breaker opens (:class:`~sessionstore.BreakerPolicy`).
        read_fallback: answer a failed authoritative read from the other store in the
            phases that allow it (SHADOW, DOCDB_PRIMARY).
        max_comparisons: background comparisons in flight at most; reads beyond it are
            not compared (counted as ``sessionstore.comparisons.skipped``).
        repair_delay: seconds before a write this repository gave up on (a deadline, a
            failure, a cancelled call) may be repaired: the write can still land in the
            store meanwhile, and a repair that ran first would miss it.
    """

    def __init__(
        self,
        *,
        cassandra: SessionBackend,
        documentdb: SessionBackend,
        phases: PhaseSource,
        repairs: RepairQueue,
        meter_provider: MeterProvider | None = None,
        compare_sample_ratio: float = 1.0,
        shadow_read: ShadowRead = ShadowRead.PARALLEL,
        clock: HybridClock | None = None,
        rng: random.Random | None = None,
        timeouts: Timeouts | None = None,
        breaker: BreakerPolicy | None = None,
        read_fallback: bool = True,
        max_comparisons: int = DEFAULT_MAX_COMPARISONS,
        repair_delay: float = DEFAULT_REPAIR_DELAY,
    ) -> None:
        if not 0.0 <= compare_sample_ratio <= 1.0:
            raise ConfigurationError("compare_sample_ratio must be between 0 and 1")
        if not isinstance(shadow_read, ShadowRead):
            raise ConfigurationError("shadow_read must be a ShadowRead")
        if isinstance(max_comparisons, bool) or not isinstance(max_comparisons, int):
            raise ConfigurationError("max_comparisons must be an int")
        if max_comparisons < 0:
            raise ConfigurationError("max_comparisons must not be negative")
        if not isinstance(timeouts, Timeouts | None):
            raise ConfigurationError("timeouts must be a Timeouts")
        if not isinstance(breaker, BreakerPolicy | None):
            raise ConfigurationError("breaker must be a BreakerPolicy")
        self._repair_delay = check_delay(repair_delay)
        self._phases = phases
        self._repairs = repairs
        self._telemetry = Telemetry(meter_provider)
        self._telemetry.watch_queue_depth(repairs.cached_depth)
        bind = getattr(phases, "bind_telemetry", None)
        if callable(bind):
            bind(self._telemetry)
        self._timeouts = timeouts or Timeouts()
        self._stores = StoreCalls(
            {Store.CASSANDRA: cassandra, Store.DOCUMENTDB: documentdb},
            telemetry=self._telemetry,
            timeouts=self._timeouts,
            policy=breaker or BreakerPolicy(),
        )
        self._ratio = compare_sample_ratio
        self._shadow_read = shadow_read
        self._read_fallback = bool(read_fallback)
        self._max_comparisons = max_comparisons
        self._comparisons = 0
        self._clock = clock or HybridClock()
        self._rng = rng or random.Random()
        self.state = RepositoryState.UNOPENED

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not RepositoryState.UNOPENED:
            raise RepositoryClosedError(f"repository cannot be opened when {self.state.value}")
        opened: list[SessionBackend | RepairQueue] = []
        resources: list[SessionBackend | RepairQueue] = [
            *self._stores.backends.values(),
            self._repairs,
        ]
        try:
            for resource in resources:
                await resource.__aenter__()
                opened.append(resource)
        except BaseException:
            # Do not leak the connections that did open.
            self.state = RepositoryState.CLOSED
            for resource in opened:
                await resource.aclose()
            raise
        self.state = RepositoryState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish background work (comparisons, repair queueing), then close everything."""
        if self.state is RepositoryState.CLOSED:
            return
        if self.state is RepositoryState.OPEN:
            await self.wait_for_comparisons()
        self.state = RepositoryState.CLOSED
        for backend in self._stores.backends.values():
            await backend.aclose()
        await self._repairs.aclose()

    def _check_open(self) -> None:
        if self.state is not RepositoryState.OPEN:
            raise RepositoryClosedError(
                f"repository is {self.state.value}; use 'async with SessionRepository(...)'"
            )

    async def wait_for_comparisons(self) -> None:
        """Wait until every background task started so far has finished.

        Comparisons, the shadow reads they wait for, breaker probes, and repairs being
        queued for calls that were cancelled.
        """
        await self._stores.wait_background()

    # -- public operations -----------------------------------------------------------

    # ASYNC109: unlike an asyncio.timeout around the call, ``timeout`` is shared out among
    # the call's steps: past it during the secondary write, the call still returns the
    # authoritative result (and queues the session) instead of failing.
    async def get(
        self,
        session_id: uuid.UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> StudentSession | None:
        """The session, or None if it was never saved or is deleted.

        ``timeout`` is a deadline for this whole call, in seconds (default:
        ``Timeouts.call``). Raises BackendError (BackendTimeoutError past a deadline,
        CircuitOpenError while the store's breaker is open) when neither the
        authoritative store nor, where the phase allows it, the other store answers.
        """
        self._check_open()
        sid = validate_session_id(session_id)
        deadline = self._deadline(timeout)
        decision, plan = self._decide(sid, Operation.READ)
        auth, other = plan.read, plan.read.other
        compare = plan.compare and self._take_comparison(decision.phase, other)
        shadow = None
        if compare and self._shadow_read is ShadowRead.PARALLEL:
            shadow = self._start_shadow(other, sid, decision)
        try:
            record = await self._read(auth, sid, decision, deadline)
        except BaseException as exc:
            if shadow is not None:
                shadow.cancel()
            if compare:
                self._comparisons -= 1
            if not (isinstance(exc, BackendError) and plan.fallback and self._read_fallback):
                decision.finish()
                raise
            failure: BackendError | None = exc
        else:
            failure = None
        if failure is not None:
            try:
                record = await self._fall_back(other, sid, decision, deadline, failure)
            finally:
                decision.finish()
            return None if record is None else record.session
        if record is not None:
            self._clock.observe(record.revision)
        if not compare:
            decision.finish()
        else:
            if shadow is None:
                shadow = self._start_shadow(other, sid, decision)
            self._stores.spawn(self._compare(sid, record, shadow, decision))
        return None if record is None else record.session

    async def save(
        self,
        session: StudentSession,
        *,
        expected_revision: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> StudentSession:
        """Save ``session``; returns it with its new revision.

        The new revision is above ``session.revision`` (the copy you read), so a
        read-modify-write outranks what it read even if another writer's clock runs
        ahead. With ``expected_revision`` (the revision you read, 0 for "no live session
        stored") the save lands only if the stored session is still that one
        (optimistic concurrency; atomic on DocumentDB, see docs/api.md for Cassandra).
        ``timeout`` is a deadline for this whole call, in seconds.

        Raises InvalidSessionError (including SessionTooLargeError and
        InvalidRevisionError) before any store is touched, ConflictError if a newer
        revision (or not the expected one) is stored, and a BackendError if the
        authoritative store fails (CircuitOpenError, before any I/O, while its breaker
        is open).
        """
        self._check_open()
        checked = ensure_session(session)
        after = self._clock.check_input(checked.revision)
        expected = self._check_expected(expected_revision)
        deadline = self._deadline(timeout)
        decision, plan = self._decide(checked.session_id, Operation.WRITE)
        stored = with_revision(checked, self._clock.next(after=max(after, expected or 0)))

        def send(backend: SessionBackend, expect: int | None) -> Awaitable[WriteResult]:
            return backend.save(stored, expected_revision=expect)

        write = _Write(
            "save", stored.session_id, stored.revision, expected, send, decision, plan, deadline
        )
        await self._write(write)
        return stored

    async def delete(
        self,
        session_id: uuid.UUID | str,
        *,
        revision: int = 0,
        expected_revision: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> int:
        """Delete the session (a tombstone in each store); returns the tombstone's revision.

        Pass the ``revision`` of the copy you read to guarantee the delete outranks it
        even if another writer's clock runs ahead of this process's; pass it as
        ``expected_revision`` to delete only that very copy. Raises like :meth:`save`.
        """
        self._check_open()
        sid = validate_session_id(session_id)
        after = self._clock.check_input(revision)
        expected = self._check_expected(expected_revision)
        deadline = self._deadline(timeout)
        decision, plan = self._decide(sid, Operation.WRITE)
        tombstone = self._clock.next(after=max(after, expected or 0))

        def send(backend: SessionBackend, expect: int | None) -> Awaitable[WriteResult]:
            return backend.delete(sid, tombstone, expected_revision=expect)

        await self._write(
            _Write("delete", sid, tombstone, expected, send, decision, plan, deadline)
        )
        return tombstone

    async def health(self) -> HealthReport:
        """Probe each store read-only, and report breakers, the queue and the phase.

        Writes nothing and creates nothing: one read of a random key per store, and the
        queue's counts, each within ``Timeouts.read``. Breakers are reported, not changed.
        """
        self._check_open()
        return await check_health(
            self._stores.backends,
            self._repairs,
            breakers={s: b.state for s, b in self._stores.breakers.items()},
            phase=self.phase_of(uuid.UUID(int=0), Operation.READ),
            within=self._timeouts.read,
        )

    @property
    def stats(self) -> RepositoryStats:
        """Running counts of operations, comparisons, divergences and repairs."""
        return self._telemetry.stats

    @property
    def telemetry(self) -> Telemetry:
        """The repository's instruments (share them with a RepairWorker)."""
        return self._telemetry

    def phase_of(self, session_id: uuid.UUID | str, operation: Operation) -> Phase:
        """The phase a call for this session would run in now (for diagnostics)."""
        return self._phases.decide(validate_session_id(session_id), operation).phase

    # -- internals: reads --------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        if timeout is None:
            return Deadline(self._timeouts.call)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        return Deadline(timeout)

    def _decide(self, sid: uuid.UUID, operation: Operation) -> tuple[PhaseDecision, PhasePlan]:
        start = time.perf_counter()
        decision = self._phases.decide(sid, operation)
        self._telemetry.phase_evaluation(time.perf_counter() - start)
        return decision, PHASE_PLANS[decision.phase]

    async def _read(
        self, store: Store, sid: uuid.UUID, decision: PhaseDecision, deadline: Deadline
    ) -> StoredRecord | None:
        if not self._stores.available(store):
            raise self._stores.refuse(store, "get", decision)
        limit = deadline.cut(self._timeouts.read)
        return await self._stores.call(store, "get", lambda b: b.get(sid), decision, limit)

    async def _fall_back(
        self,
        store: Store,
        sid: uuid.UUID,
        decision: PhaseDecision,
        deadline: Deadline,
        failure: BackendError,
    ) -> StoredRecord | None:
        """Answer from ``store`` because the authoritative read failed with ``failure``."""
        try:
            record = await self._read(store, sid, decision, deadline)
        except BackendError:
            raise failure from None
        self._telemetry.read_fallback(store.other.value, type(failure).__name__)
        if record is not None:
            self._clock.observe(record.revision)
        return record

    def _take_comparison(self, phase: Phase, other: Store) -> bool:
        """Whether this read is compared; reserves a background slot if so."""
        if self._ratio < 1.0 and self._rng.random() >= self._ratio:
            return False
        if self._comparisons >= self._max_comparisons:
            self._telemetry.comparison_skipped(phase.value, "overload")
            return False
        if not self._stores.available(other):
            self._telemetry.comparison_skipped(phase.value, "breaker_open")
            return False
        self._comparisons += 1
        return True

    def _start_shadow(
        self, store: Store, sid: uuid.UUID, decision: PhaseDecision
    ) -> asyncio.Task[StoredRecord | None]:
        read = self._stores.call(
            store,
            "get",
            lambda b: b.get(sid),
            decision,
            self._timeouts.shadow_read,
            deadline_counts=False,
        )
        return self._stores.spawn(read)

    async def _compare(
        self,
        sid: uuid.UUID,
        primary: StoredRecord | None,
        shadow: asyncio.Task[StoredRecord | None],
        decision: PhaseDecision,
    ) -> None:
        phase = decision.phase.value
        try:
            try:
                other = await shadow
            except Exception as exc:  # noqa: BLE001 - a failed shadow read is only counted
                self._telemetry.comparison(phase, f"shadow_error:{type(exc).__name__}")
                return
            divergence = compare_records(primary, other)
            self._telemetry.comparison(phase, divergence.kind.value, divergence.fields)
            decision.record_consistent(divergence.consistent)
            if divergence.needs_repair:
                await self._enqueue(sid, f"read_{divergence.kind.value}")
        finally:
            self._comparisons -= 1
            decision.finish()

    # -- internals: writes -------------------------------------------------------------

    def _check_expected(self, expected_revision: int | None) -> int | None:
        if expected_revision is None:
            return None
        return self._clock.check_input(expected_revision, field="expected_revision")

    async def _write(self, write: _Write) -> None:
        auth, secondary = write.plan.authoritative, write.plan.secondary
        if not self._stores.available(auth):
            # Rejected before any I/O: nothing to repair.
            refused = self._stores.refuse(auth, write.op, write.decision)
            write.decision.finish()
            raise refused
        # Why the key is queued, unless the write ends with both stores acknowledging it.
        reason: str | None = "authoritative_failed"
        try:
            result = await self._stores.call(
                auth,
                write.op,
                lambda b: write.send(b, write.expected),
                write.decision,
                write.deadline.cut(self._timeouts.write),
            )
            if result.applied is False:
                reason = "write_conflict"
                current = result.current_revision
                if current is None:
                    current = await self._stored_revision(auth, write)
                raise write.conflict(current)
            reason = "write_interrupted"
            steps: list[Awaitable[object]] = []
            if secondary is not None:
                steps.append(self._write_secondary(secondary, write))
            if result.applied is None:
                # The store cannot tell whether the write won (Cassandra): read the stored
                # revision back, at the same time as the secondary write.
                steps.append(self._stored_revision(auth, write))
            outcomes = await asyncio.gather(*steps, return_exceptions=True)
            if secondary is not None:
                second = outcomes.pop(0)
                if isinstance(second, BaseException):
                    raise second
                reason = second if isinstance(second, str) else None
            if result.applied is None:
                stored = outcomes.pop(0)
                if isinstance(stored, BaseException):
                    reason = reason or "authoritative_failed"
                    raise stored
                if stored != write.revision:
                    reason = "write_conflict"
                    raise write.conflict(stored if isinstance(stored, int) else None)
        finally:
            if secondary is not None and reason is not None:
                await self._queue_repair(write.sid, reason)
            write.decision.finish()

    async def _write_secondary(self, store: Store, write: _Write) -> str | None:
        """The secondary write; returns why the key needs a repair, None if it landed."""
        if not self._stores.available(store):
            self._telemetry.secondary_skipped(store.value, write.op)
            return "secondary_skipped"
        try:
            result = await self._stores.call(
                store,
                write.op,
                lambda b: write.send(b, None),
                write.decision,
                write.deadline.cut(self._timeouts.secondary_write),
            )
        except Exception as exc:  # noqa: BLE001 - the secondary never fails the call
            self._telemetry.secondary_failure(store.value, write.op, type(exc).__name__)
            return "secondary_write_failed"
        if result.applied is False:
            # The secondary holds an equal or newer revision: the stores differ.
            return "secondary_not_applied"
        return None

    async def _stored_revision(self, store: Store, write: _Write) -> int:
        """The revision now stored in ``store`` (0 if nothing), to tell who won a write."""
        head = await self._stores.call(
            store,
            "head",
            lambda b: b.head(write.sid),
            write.decision,
            write.deadline.cut(self._timeouts.write),
        )
        return 0 if head is None else head.revision

    async def _queue_repair(self, sid: uuid.UUID, reason: str) -> None:
        """Queue the key, shielded: a cancelled caller does not cancel the queueing.

        Delayed by ``repair_delay`` unless nothing of the write can still be in flight.
        """
        delay = 0.0 if reason in _SETTLED else self._repair_delay
        await asyncio.shield(self._stores.spawn(self._enqueue(sid, reason, delay)))

    async def _enqueue(self, sid: uuid.UUID, reason: str, delay: float = 0.0) -> None:
        try:
            await self._repairs.enqueue(sid, reason, delay_seconds=delay)
        except SessionStoreError as exc:
            # The write itself succeeded; verify will still find this difference.
            self._telemetry.repair_enqueue_failed(type(exc).__name__)
            log.error("could not queue a repair: %s", type(exc).__name__)
            return
        self._telemetry.repair_enqueued(reason)
