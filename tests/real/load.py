"""Concurrent callers of a repository on the real pair, and the checks after a fault.

:class:`Load` runs writers (and readers) through one repository, times every call and
remembers the newest acknowledged revision of each key; :func:`drain` and
:func:`assert_converged` then check that every acknowledged write is in both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sessionstore import (
    BackendError,
    CircuitOpenError,
    ConflictError,
    RepairQueue,
    RepairWorker,
)
from sessionstore.repository import SessionRepository
from tests.helpers import make_session


@dataclasses.dataclass(frozen=True, slots=True)
class Timed:
    """One call of the load: what, when (monotonic), how long, and how it ended."""

    kind: str  # "save", "delete" or "get"
    sid: uuid.UUID
    start: float
    seconds: float
    #: "ok", "conflict", or the class name of the BackendError it raised.
    outcome: str
    #: Length of the watched call log when the call ended (see ``Load(call_log=...)``).
    log_index: int = 0

    @property
    def end(self) -> float:
        return self.start + self.seconds


class Load:
    """Concurrent writers (and readers) through the repository.

    Remembers the newest acknowledged revision of each key, and every call with its
    latency. A write that raised ConflictError lost to another writer's newer revision
    of the key: not acknowledged. A write that raised a BackendError is not
    acknowledged either, but may have landed (a timeout): its key is ``unsure``, unless
    the error was a CircuitOpenError (nothing was sent).
    """

    def __init__(
        self, repo: SessionRepository, keys: int = 60, *, call_log: Sequence[Any] = ()
    ) -> None:
        self.repo = repo
        self.keys = [uuid.uuid4() for _ in range(keys)]
        self.acked: dict[uuid.UUID, tuple[int, bool]] = {}
        self.unsure: set[uuid.UUID] = set()
        self.timed: list[Timed] = []
        self.conflicts = 0
        self.rng = random.Random(11)
        self._call_log = call_log

    def _record(self, kind: str, sid: uuid.UUID, start: float, outcome: str) -> None:
        seconds = time.monotonic() - start
        self.timed.append(Timed(kind, sid, start, seconds, outcome, len(self._call_log)))

    async def writer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sid = self.rng.choice(self.keys)
            kind = "save" if self.rng.random() < 0.85 else "delete"
            start = time.monotonic()
            try:
                if kind == "save":
                    result = ((await self.repo.save(make_session(session_id=sid))).revision, False)
                else:
                    result = (await self.repo.delete(sid), True)
            except ConflictError:
                # Another writer's newer revision of the key was stored by the time this
                # one read its write back: not acknowledged (the newer one is).
                self._record(kind, sid, start, "conflict")
                self.conflicts += 1
                continue
            except BackendError as exc:
                self._record(kind, sid, start, type(exc).__name__)
                if not isinstance(exc, CircuitOpenError):  # that one sent nothing
                    self.unsure.add(sid)
                await asyncio.sleep(0.05)
                continue
            self._record(kind, sid, start, "ok")
            if sid not in self.acked or self.acked[sid][0] < result[0]:
                self.acked[sid] = result
            await asyncio.sleep(0)

    async def reader(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sid = self.rng.choice(self.keys)
            start = time.monotonic()
            try:
                await self.repo.get(sid)
            except BackendError as exc:
                self._record("get", sid, start, type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            self._record("get", sid, start, "ok")
            await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def running(self, writers: int = 6, readers: int = 0) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.writer(stop)) for _ in range(writers)]
        tasks += [asyncio.create_task(self.reader(stop)) for _ in range(readers)]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    def calls(
        self, kinds: tuple[str, ...], *, since: float = 0.0, until: float = float("inf")
    ) -> list[Timed]:
        """The calls of these kinds that started in ``[since, until)``."""
        return [t for t in self.timed if t.kind in kinds and since <= t.start < until]


async def wait_until_answers(store: Any, deadline_s: float = 120) -> None:
    """Poll a restarted store with real reads until it answers (drivers reconnect)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await store.get(uuid.uuid4())
            return
        except BackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def drain(
    cassandra: Any, documentdb: Any, queue: RepairQueue, *, within: float = 10.0
) -> None:
    """Run a RepairWorker until the queue is empty, for at most ``within`` seconds.

    Sessions may wait out a back-off, or the repository's ``repair_delay`` (give
    ``within`` above it when the repository keeps the default).
    """
    worker = RepairWorker(
        cassandra=cassandra, documentdb=documentdb, queue=queue, retry_delay_seconds=0.2
    )
    deadline = time.monotonic() + within
    while True:
        await worker.drain()
        if await queue.depth() == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert await queue.depth() == 0


async def assert_converged(load: Load, cassandra: Any, documentdb: Any) -> None:
    """Every acknowledged write (newest per key) is in both stores.

    A key with a failed write (``load.unsure``) may hold that newer write instead: it
    must then be the same in both stores.
    """
    assert load.acked, "the load acknowledged no write"
    for sid in load.keys:
        records = [await store.get(sid) for store in (cassandra, documentdb)]
        heads = [None if r is None else (r.revision, r.deleted) for r in records]
        assert heads[0] == heads[1], (sid, heads)
        acked = load.acked.get(sid)
        if acked is None:
            continue
        if sid in load.unsure:
            assert heads[0] is not None and heads[0][0] >= acked[0], (sid, heads, acked)
        else:
            assert heads[0] == acked, (sid, heads, acked)
