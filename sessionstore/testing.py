"""Fakes for users' own unit tests: in-memory stores, fault injection, LaunchDarkly TestData.

Example::

    from sessionstore.testing import FaultInjectingBackend, memory_repository

    repo, stores = memory_repository(Phase.DUAL_WRITE)
    stores.documentdb.fail_next(1, operation="save")     # the secondary write fails once
    async with repo:
        saved = await repo.save(session)                  # still succeeds
    assert stores.cassandra.inner.records()[saved.session_id].revision == saved.revision

Everything here is a real implementation of the library's protocols, checked by the same
contract suite as the production backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sessionstore._errors import BackendError, BackendUnavailableError, ConfigurationError
from sessionstore.backends.base import (
    KeyRange,
    LifecycleMixin,
    RecordHead,
    ScanPage,
    StoredRecord,
    WriteResult,
)
from sessionstore.backends.memory import InMemoryBackend
from sessionstore.model import StudentSession
from sessionstore.phases import Phase, PhaseSource, StaticPhaseSource
from sessionstore.repair.queue import InMemoryRepairQueue, RepairQueue
from sessionstore.repository import SessionRepository
from sessionstore.revision import DEFAULT_MAX_SKEW, HybridClock

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ldclient.client import LDClient
    from ldclient.integrations.test_data import TestData

    from sessionstore.launchdarkly import LaunchDarklyPhaseSource

__all__ = [
    "Call",
    "FaultInjectingBackend",
    "KeySerializingBackend",
    "MemoryStores",
    "SimulatedTime",
    "launchdarkly_test_client",
    "memory_repository",
    "set_launchdarkly_phase",
]

OPERATIONS = ("get", "head", "save", "delete", "purge", "scan")


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One call that reached a store (failed ones included)."""

    store: str
    operation: str
    session_id: uuid.UUID | None


@dataclasses.dataclass(slots=True)
class _Fault:
    remaining: int | None  # None = until healed
    operation: str | None
    error: type[BackendError] | None  # None: cancel the calling task instead
    after: bool = False  # fire once the inner call has applied
    rate: float = 1.0
    rng: random.Random | None = None

    def fires(self, operation: str, after: bool) -> bool:
        if self.after is not after or self.remaining == 0:
            return False
        if self.operation not in (None, operation):
            return False
        return self.rng is None or self.rng.random() < self.rate


class _WrappingBackend(LifecycleMixin):
    """What a wrapper of another backend shares: its name, key space and lifecycle."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lifecycle_name = f"backend {inner.name!r}"

    @property
    def name(self) -> str:
        """The wrapped backend's name."""
        return str(self.inner.name)

    @property
    def key_space(self) -> KeyRange:
        """The wrapped backend's key space."""
        result: KeyRange = self.inner.key_space
        return result

    async def _open(self) -> None:
        await self.inner.__aenter__()

    async def _close(self) -> None:
        await self.inner.aclose()


class FaultInjectingBackend(_WrappingBackend):
    """Wraps a backend to fail, cancel, hang or slow calls, and record them in order.

    Faults fire *before* the call reaches the store (nothing applied) or, with
    ``after=True``, once the store has applied it: the caller then sees an error (a
    timeout whose write landed) or is cancelled although the write is stored. Several
    wrappers may share one ``calls`` list to assert the order of writes across stores::

        stores.documentdb.fail_next(1, operation="save", error=BackendTimeoutError, after=True)
        stores.cassandra.cancel_next(operation="save", after=True)   # cancelled between writes
        stores.documentdb.freeze()                                   # hangs until thaw()
    """

    def __init__(self, inner: Any, *, calls: list[Call] | None = None) -> None:
        super().__init__(inner)
        self.calls: list[Call] = calls if calls is not None else []
        self._faults: list[_Fault] = []
        self._latency: dict[str | None, float] = {}
        self._frozen: dict[str | None, asyncio.Event] = {}
        #: How many calls an injected fault has failed or cancelled so far.
        self.injected = 0

    def fail_next(
        self,
        count: int = 1,
        *,
        operation: str | None = None,
        error: type[BackendError] = BackendUnavailableError,
        after: bool = False,
    ) -> None:
        """Make the next ``count`` calls (of ``operation``, or any) raise ``error``.

        ``after=True`` raises once the wrapped store has applied the call.
        """
        self._faults.append(_Fault(count, _check_op(operation), error, after))

    def cancel_next(
        self, count: int = 1, *, operation: str | None = None, after: bool = False
    ) -> None:
        """Cancel the calling task at the next ``count`` calls, before or ``after`` applying."""
        self._faults.append(_Fault(count, _check_op(operation), None, after))

    def go_down(
        self,
        *,
        operation: str | None = None,
        error: type[BackendError] = BackendUnavailableError,
    ) -> None:
        """Fail every call (of ``operation``, or any) until :meth:`heal`."""
        self._faults.append(_Fault(None, _check_op(operation), error))

    def fail_randomly(
        self,
        rate: float,
        *,
        operation: str | None = None,
        seed: int | None = None,
        error: type[BackendError] = BackendUnavailableError,
        after: bool = False,
    ) -> None:
        """Fail each call (of ``operation``, or any) with probability ``rate`` until healed."""
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError("rate must be between 0 and 1")
        fault = _Fault(None, _check_op(operation), error, after, rate, random.Random(seed))
        self._faults.append(fault)

    def add_latency(self, seconds: float, *, operation: str | None = None) -> None:
        """Delay each call (of ``operation``, or any) by ``seconds`` before it runs."""
        self._latency[_check_op(operation)] = seconds

    def freeze(self, *, operation: str | None = None) -> None:
        """Make calls (of ``operation``, or any) hang until :meth:`thaw` (a stopped server).

        A hung call can still be cancelled, by a deadline for instance.
        """
        self._frozen.setdefault(_check_op(operation), asyncio.Event())

    def thaw(self) -> None:
        """Let every hung call go on."""
        for event in self._frozen.values():
            event.set()
        self._frozen.clear()

    def heal(self) -> None:
        """Remove every fault and added latency, and thaw."""
        self._faults.clear()
        self._latency.clear()
        self.thaw()

    async def _fire(self, operation: str, *, after: bool) -> None:
        for fault in self._faults:
            if fault.fires(operation, after):
                if fault.remaining is not None:
                    fault.remaining -= 1
                self.injected += 1
                if fault.error is not None:
                    raise fault.error(f"injected fault on {operation}", store=self.name)
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await asyncio.sleep(0)  # the CancelledError is delivered here

    async def _call(self, operation: str, sid: uuid.UUID | None, call: Callable[[], Any]) -> Any:
        await self._ensure_open()
        self.calls.append(Call(self.name, operation, sid))
        delay = self._latency.get(operation, self._latency.get(None, 0.0))
        if delay:
            await asyncio.sleep(delay)
        for key in (operation, None):
            event = self._frozen.get(key)
            if event is not None:
                await event.wait()
        await self._fire(operation, after=False)
        # A real store call suspends the caller; so does this one, before and after, so
        # that a test cancelling the caller after n loop steps reaches every await point.
        await asyncio.sleep(0)
        result = await call()
        await asyncio.sleep(0)
        await self._fire(operation, after=True)
        return result

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """Forwarded, with any injected fault or latency."""
        result: StoredRecord | None = await self._call(
            "get", session_id, lambda: self.inner.get(session_id)
        )
        return result

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """Forwarded, with any injected fault or latency."""
        result: RecordHead | None = await self._call(
            "head", session_id, lambda: self.inner.head(session_id)
        )
        return result

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Forwarded, with any injected fault or latency."""
        result: WriteResult = await self._call(
            "save",
            session.session_id,
            lambda: self.inner.save(session, expected_revision=expected_revision),
        )
        return result

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Forwarded, with any injected fault or latency."""
        result: WriteResult = await self._call(
            "delete",
            session_id,
            lambda: self.inner.delete(session_id, revision, expected_revision=expected_revision),
        )
        return result

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Forwarded, with any injected fault or latency."""
        await self._call("purge", session_id, lambda: self.inner.purge(session_id, revision))

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Forwarded, with any injected fault or latency."""
        page: ScanPage = await self._call(
            "scan", None, lambda: self.inner.scan(key_range, cursor=cursor, limit=limit)
        )
        return page


class KeySerializingBackend(_WrappingBackend):
    """Wraps a backend so that writes to one session id never overlap (in this process).

    For engines whose conditional write is a read followed by a write, not one atomic
    step: FerretDB (standing in for DocumentDB in this repository's tests) can let an
    older write overtake a newer one when two writers hit the same key at once, which
    the revision rule cannot prevent. DocumentDB's single-document writes are atomic and
    need no such wrapper. Reads and scans pass straight through. Example::

        documentdb = KeySerializingBackend(ferretdb_backend)
        repo = SessionRepository(cassandra=c, documentdb=documentdb, ...)
        job = BackfillJob(c, documentdb)   # shares the per-key locks with the repository
    """

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _lock(self, session_id: uuid.UUID) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    async def get(self, session_id: uuid.UUID) -> StoredRecord | None:
        """Forwarded."""
        await self._ensure_open()
        result: StoredRecord | None = await self.inner.get(session_id)
        return result

    async def head(self, session_id: uuid.UUID) -> RecordHead | None:
        """Forwarded."""
        await self._ensure_open()
        result: RecordHead | None = await self.inner.head(session_id)
        return result

    async def save(
        self, session: StudentSession, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Forwarded while holding the session id's lock."""
        await self._ensure_open()
        async with self._lock(session.session_id):
            result: WriteResult = await self.inner.save(
                session, expected_revision=expected_revision
            )
            return result

    async def delete(
        self, session_id: uuid.UUID, revision: int, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Forwarded while holding the session id's lock."""
        await self._ensure_open()
        async with self._lock(session_id):
            result: WriteResult = await self.inner.delete(
                session_id, revision, expected_revision=expected_revision
            )
            return result

    async def purge(self, session_id: uuid.UUID, revision: int) -> None:
        """Forwarded while holding the session id's lock."""
        await self._ensure_open()
        async with self._lock(session_id):
            await self.inner.purge(session_id, revision)

    async def scan(
        self, key_range: KeyRange, *, cursor: str | None = None, limit: int = 500
    ) -> ScanPage:
        """Forwarded."""
        await self._ensure_open()
        page: ScanPage = await self.inner.scan(key_range, cursor=cursor, limit=limit)
        return page


class SimulatedTime:
    """A shared, manually advanced wall clock, and skewed revision clocks reading it.

    For tests of a fleet: each repository gets its own :class:`~sessionstore.HybridClock`
    whose wall time is this one plus a skew, and time can leap days ahead at once::

        time = SimulatedTime()
        repo_a = SessionRepository(..., clock=time.clock(skew=5.0, writer_id=1))
        repo_b = SessionRepository(..., clock=time.clock(skew=-2.0, writer_id=2))
        time.advance(dt.timedelta(days=40))
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        when = start or dt.datetime.now(dt.UTC)
        self.now_us = (when - _EPOCH) // dt.timedelta(microseconds=1)

    def __call__(self) -> int:
        """The current simulated time, in microseconds since the epoch."""
        return self.now_us

    def advance(self, by: dt.timedelta | float) -> None:
        """Move time forward by ``by`` (a timedelta, or seconds)."""
        step = by if isinstance(by, dt.timedelta) else dt.timedelta(seconds=by)
        if step < dt.timedelta(0):
            raise ConfigurationError("time only moves forward")
        self.now_us += step // dt.timedelta(microseconds=1)

    def clock(
        self,
        *,
        skew: float = 0.0,
        writer_id: int | None = None,
        max_skew: dt.timedelta = DEFAULT_MAX_SKEW,
    ) -> HybridClock:
        """A revision clock reading this time plus ``skew`` seconds."""
        offset = round(skew * 1_000_000)
        return HybridClock(
            writer_id=writer_id, max_skew=max_skew, time_source=lambda: self.now_us + offset
        )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _check_op(operation: str | None) -> str | None:
    if operation is not None and operation not in OPERATIONS:
        raise ConfigurationError(f"operation must be one of {OPERATIONS}")
    return operation


@dataclasses.dataclass(frozen=True)
class MemoryStores:
    """The fakes behind a repository built by :func:`memory_repository`."""

    cassandra: FaultInjectingBackend
    documentdb: FaultInjectingBackend
    repairs: RepairQueue
    calls: list[Call]


def memory_repository(
    phases: PhaseSource | Phase = Phase.CASSANDRA_ONLY,
    *,
    repairs: RepairQueue | None = None,
    **options: Any,
) -> tuple[SessionRepository, MemoryStores]:
    """A repository over two fault-injecting in-memory stores sharing one call log.

    ``repair_delay`` defaults to 0 here: an in-memory write never lands late, so a test
    may drain the repairs at once.
    """
    source = StaticPhaseSource(phases) if isinstance(phases, Phase) else phases
    options.setdefault("repair_delay", 0.0)
    calls: list[Call] = []
    cassandra = FaultInjectingBackend(InMemoryBackend(name="cassandra"), calls=calls)
    documentdb = FaultInjectingBackend(InMemoryBackend(name="documentdb"), calls=calls)
    queue = repairs if repairs is not None else InMemoryRepairQueue()
    repo = SessionRepository(
        cassandra=cassandra, documentdb=documentdb, phases=source, repairs=queue, **options
    )
    return repo, MemoryStores(cassandra, documentdb, queue, calls)


def launchdarkly_test_client(
    flag_key: str = "session-store-migration", phase: Phase = Phase.CASSANDRA_ONLY
) -> tuple[LDClient, TestData]:
    """A real LaunchDarkly client fed by the SDK's TestData source, events disabled.

    Build the phase source on it as the service does, with a test secret::

        client, td = launchdarkly_test_client(phase=Phase.SHADOW)
        source = LaunchDarklyPhaseSource(
            client, flag_key="session-store-migration", context_key_secret="test-secret-16bytes"
        )
    """
    from ldclient.client import LDClient
    from ldclient.config import Config
    from ldclient.integrations.test_data import TestData

    td = TestData.data_source()
    set_launchdarkly_phase(td, phase, flag_key=flag_key)
    client = LDClient(Config("test-sdk-key", update_processor_class=td, send_events=False))
    return client, td


def set_launchdarkly_phase(
    td: TestData,
    phase: Phase,
    *,
    flag_key: str = "session-store-migration",
    targets: Mapping[uuid.UUID, Phase] | None = None,
    source: LaunchDarklyPhaseSource | None = None,
) -> None:
    """Serve ``phase`` to every session from the TestData migration flag.

    Sessions in ``targets`` get their own phase instead, targeted by the context key
    ``source`` sends for them (a keyed hash of the session id by default), as an
    operator targets single sessions in the LaunchDarkly dashboard::

        set_launchdarkly_phase(td, Phase.DUAL_WRITE, targets={sid: Phase.DOCDB_PRIMARY},
                               source=source)
    """
    stages = [p.value for p in Phase]
    flag = td.flag(flag_key).variations(*stages).variation_for_all(stages.index(Phase(phase).value))
    if targets:
        if source is None:
            raise ConfigurationError("targets need the source whose context keys they use")
        for sid, target in targets.items():
            variation = stages.index(Phase(target).value)
            flag = flag.variation_for_key(source.context_kind, source.context_key(sid), variation)
    td.update(flag)
