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
acknowledging it is queued for repair: a secondary failure, an authoritative error (a
timeout may mean the write landed), a conflict, and a call cancelled at any point. The
queueing is shielded from the cancellation. A save or delete either is the newest
version stored when it returns, or raises :class:`~sessionstore.ConflictError`.
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
from typing import Self, TypeVar

from opentelemetry.metrics import MeterProvider

from sessionstore._errors import (
    ConfigurationError,
    ConflictError,
    RepositoryClosedError,
    SessionStoreError,
)
from sessionstore._telemetry import RepositoryStats, Telemetry
from sessionstore.backends.base import SessionBackend, StoredRecord, WriteResult
from sessionstore.divergence import compare_records
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
from sessionstore.repair.queue import RepairQueue
from sessionstore.revision import HybridClock

__all__ = ["RepositoryState", "SessionRepository", "ShadowRead"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class _Write:
    """One save or delete on its way through the write path."""

    op: str
    sid: uuid.UUID
    revision: int
    expected: int | None
    send: Callable[[SessionBackend, int | None], Awaitable[WriteResult]]
    decision: PhaseDecision
    plan: PhasePlan

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
        shadow_timeout: seconds the background comparison waits for the other store.
        shadow_read: when compare phases start their read of the other store.
        clock: the revision clock; give each process its own ``writer_id`` (see
            :class:`~sessionstore.HybridClock`) and a ``max_skew`` above the largest
            clock difference in the fleet.
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
        shadow_timeout: float = 2.0,
        shadow_read: ShadowRead = ShadowRead.PARALLEL,
        clock: HybridClock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= compare_sample_ratio <= 1.0:
            raise ConfigurationError("compare_sample_ratio must be between 0 and 1")
        if shadow_timeout <= 0:
            raise ConfigurationError("shadow_timeout must be positive")
        if not isinstance(shadow_read, ShadowRead):
            raise ConfigurationError("shadow_read must be a ShadowRead")
        self._backends = {Store.CASSANDRA: cassandra, Store.DOCUMENTDB: documentdb}
        self._phases = phases
        self._repairs = repairs
        self._telemetry = Telemetry(meter_provider)
        self._telemetry.watch_queue_depth(repairs.cached_depth)
        bind = getattr(phases, "bind_telemetry", None)
        if callable(bind):
            bind(self._telemetry)
        self._ratio = compare_sample_ratio
        self._shadow_timeout = shadow_timeout
        self._shadow_read = shadow_read
        self._clock = clock or HybridClock()
        self._rng = rng or random.Random()
        self._background: set[asyncio.Task[None]] = set()
        self.state = RepositoryState.UNOPENED

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not RepositoryState.UNOPENED:
            raise RepositoryClosedError(f"repository cannot be opened when {self.state.value}")
        opened: list[SessionBackend | RepairQueue] = []
        resources: list[SessionBackend | RepairQueue] = [*self._backends.values(), self._repairs]
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
        """Finish background comparisons, then close both stores and the queue."""
        if self.state is RepositoryState.CLOSED:
            return
        if self.state is RepositoryState.OPEN:
            await self.wait_for_comparisons()
        self.state = RepositoryState.CLOSED
        for backend in self._backends.values():
            await backend.aclose()
        await self._repairs.aclose()

    def _check_open(self) -> None:
        if self.state is not RepositoryState.OPEN:
            raise RepositoryClosedError(
                f"repository is {self.state.value}; use 'async with SessionRepository(...)'"
            )

    async def wait_for_comparisons(self) -> None:
        """Wait until every background comparison started so far has finished."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- public operations -----------------------------------------------------------

    async def get(self, session_id: uuid.UUID | str) -> StudentSession | None:
        """The session, or None if it was never saved or is deleted."""
        self._check_open()
        sid = validate_session_id(session_id)
        decision, plan = self._decide(sid, Operation.READ)
        phase = decision.phase
        other = plan.read.other
        compare = plan.compare and (self._ratio >= 1.0 or self._rng.random() < self._ratio)
        shadow: asyncio.Task[StoredRecord | None] | None = None
        if compare and self._shadow_read is ShadowRead.PARALLEL:
            shadow = self._shadow(other, sid, decision)
        decision.record_invoked(plan.read)
        try:
            record = await self._timed(
                plan.read, "get", self._backends[plan.read].get(sid), decision
            )
        except BaseException:
            if shadow is not None:
                shadow.cancel()
            decision.finish()
            raise
        if record is not None:
            self._clock.observe(record.revision)
        if compare and shadow is None:
            shadow = self._shadow(other, sid, decision)
        if shadow is None:
            decision.finish()
        else:
            self._spawn(self._compare(sid, record, shadow, decision, phase))
        return None if record is None else record.session

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> StudentSession:
        """Save ``session``; returns it with its new revision.

        The new revision is above ``session.revision`` (the copy you read), so a
        read-modify-write outranks what it read even if another writer's clock runs
        ahead. With ``expected_revision`` (the revision you read, 0 for "no live session
        stored") the save lands only if the stored session is still that one
        (optimistic concurrency; atomic on DocumentDB, see docs/api.md for Cassandra).

        Raises InvalidSessionError (including SessionTooLargeError and
        InvalidRevisionError) before any store is touched, ConflictError if a newer
        revision (or not the expected one) is stored, and a BackendError if the
        authoritative store fails.
        """
        self._check_open()
        checked = ensure_session(session)
        after = self._clock.check_input(checked.revision)
        expected = self._check_expected(expected_revision)
        decision, plan = self._decide(checked.session_id, Operation.WRITE)
        stored = with_revision(checked, self._clock.next(after=max(after, expected or 0)))

        def send(backend: SessionBackend, expect: int | None) -> Awaitable[WriteResult]:
            return backend.save(stored, expected_revision=expect)

        await self._write(
            _Write("save", stored.session_id, stored.revision, expected, send, decision, plan)
        )
        return stored

    async def delete(
        self,
        session_id: uuid.UUID | str,
        *,
        revision: int = 0,
        expected_revision: int | None = None,
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
        decision, plan = self._decide(sid, Operation.WRITE)
        tombstone = self._clock.next(after=max(after, expected or 0))

        def send(backend: SessionBackend, expect: int | None) -> Awaitable[WriteResult]:
            return backend.delete(sid, tombstone, expected_revision=expect)

        await self._write(_Write("delete", sid, tombstone, expected, send, decision, plan))
        return tombstone

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

    # -- internals -------------------------------------------------------------------

    def _decide(self, sid: uuid.UUID, operation: Operation) -> tuple[PhaseDecision, PhasePlan]:
        start = time.perf_counter()
        decision = self._phases.decide(sid, operation)
        self._telemetry.phase_evaluation(time.perf_counter() - start)
        return decision, PHASE_PLANS[decision.phase]

    async def _timed(
        self, store: Store, op: str, call: Awaitable[_T], decision: PhaseDecision
    ) -> _T:
        start = time.perf_counter()
        error: str | None = None
        try:
            return await call
        except BaseException as exc:
            error = type(exc).__name__
            decision.record_error(store)
            raise
        finally:
            elapsed = time.perf_counter() - start
            decision.record_latency(store, elapsed)
            self._telemetry.operation(store.value, op, elapsed, decision.phase.value, error)

    def _check_expected(self, expected_revision: int | None) -> int | None:
        if expected_revision is None:
            return None
        return self._clock.check_input(expected_revision, field="expected_revision")

    async def _write(self, write: _Write) -> None:
        plan, sid = write.plan, write.sid
        auth, secondary = plan.authoritative, plan.secondary
        # Why the key is queued, unless the write ends with both stores acknowledging it.
        reason: str | None = "authoritative_failed"
        try:
            write.decision.record_invoked(auth)
            result = await self._timed(
                auth, write.op, write.send(self._backends[auth], write.expected), write.decision
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
                await self._queue_repair(sid, reason)
            write.decision.finish()

    async def _write_secondary(self, store: Store, write: _Write) -> str | None:
        """The secondary write; returns why the key needs a repair, None if it landed."""
        write.decision.record_invoked(store)
        try:
            result = await self._timed(
                store, write.op, write.send(self._backends[store], None), write.decision
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
        backend = self._backends[store]
        head = await self._timed(store, "head", backend.head(write.sid), write.decision)
        return 0 if head is None else head.revision

    async def _queue_repair(self, sid: uuid.UUID, reason: str) -> None:
        """Queue the key, shielded: a cancelled caller does not cancel the queueing."""
        task = asyncio.ensure_future(self._enqueue(sid, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def _enqueue(self, sid: uuid.UUID, reason: str) -> None:
        try:
            await self._repairs.enqueue(sid, reason)
        except SessionStoreError as exc:
            # The write itself succeeded; verify will still find this difference.
            self._telemetry.repair_enqueue_failed(type(exc).__name__)
            log.error("could not queue a repair: %s", type(exc).__name__)
            return
        self._telemetry.repair_enqueued(reason)

    def _shadow(
        self, store: Store, sid: uuid.UUID, decision: PhaseDecision
    ) -> asyncio.Task[StoredRecord | None]:
        decision.record_invoked(store)
        return asyncio.create_task(
            self._timed(store, "get", self._backends[store].get(sid), decision)
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _compare(
        self,
        sid: uuid.UUID,
        primary: StoredRecord | None,
        shadow: asyncio.Task[StoredRecord | None],
        decision: PhaseDecision,
        phase: Phase,
    ) -> None:
        try:
            try:
                # Cancelling this task on the timeout cancels the awaited read too.
                async with asyncio.timeout(self._shadow_timeout):
                    other = await shadow
            except Exception as exc:  # noqa: BLE001 - a failed shadow read is only counted
                self._telemetry.comparison(phase.value, f"shadow_error:{type(exc).__name__}")
                return
            divergence = compare_records(primary, other)
            self._telemetry.comparison(phase.value, divergence.kind.value, divergence.fields)
            decision.record_consistent(divergence.consistent)
            if divergence.needs_repair:
                await self._enqueue(sid, f"read_{divergence.kind.value}")
        finally:
            decision.finish()
