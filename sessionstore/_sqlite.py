"""The durable SQLite file behind the repair queue and the job checkpoints.

One connection per object, in autocommit mode (callers open their own ``BEGIN
IMMEDIATE`` transactions), WAL journal with ``synchronous=FULL`` so that a committed
change survives a crash, and a busy timeout so several processes can share the file.
Calls run one at a time in a worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import ClassVar, TypeVar

from sessionstore._errors import SessionStoreError
from sessionstore.backends.base import LifecycleMixin

__all__ = ["SqliteFile"]

_T = TypeVar("_T")


class SqliteFile(LifecycleMixin):
    """Base of the SQLite-backed stores: opens the file, runs calls, maps errors.

    Subclasses set ``_schema`` (run on open) and ``_busy_seconds``, and implement
    :meth:`_error`, which turns a ``sqlite3.Error`` into the library's own error.
    """

    _schema: ClassVar[str]
    _busy_seconds: ClassVar[float] = 10.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _error(self, exc: sqlite3.Error) -> SessionStoreError:
        raise NotImplementedError

    def _connect(self) -> None:
        conn = sqlite3.connect(
            self._path,
            check_same_thread=False,
            isolation_level=None,
            timeout=self._busy_seconds,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_seconds * 1000)}")
            conn.executescript(self._schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _open(self) -> None:
        await self._run(self._connect, opening=True)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return

        def close() -> None:
            # Under the lock: a call whose task was cancelled (Ctrl-C, SIGTERM) may still
            # run in its thread, and closing a connection in use crashes the process.
            with self._lock:
                conn.close()

        await asyncio.to_thread(close)

    async def _run(self, fn: Callable[[], _T], *, opening: bool = False) -> _T:
        """Run ``fn`` in a worker thread, alone; ``opening`` skips the open check."""
        if not opening:
            await self._ensure_open()

        def locked() -> _T:
            with self._lock:
                return fn()

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn
