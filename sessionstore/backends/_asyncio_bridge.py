"""Await a cassandra-driver request from asyncio without a thread per call.

The driver runs its own I/O thread (libev or asyncore) and reports completion by calling
callbacks on that thread. :func:`execute` registers those callbacks and hands the result
to the asyncio loop with ``loop.call_soon_threadsafe``, so the loop never blocks and no
worker thread is spent waiting. Example::

    rows = (await execute(session, prepared.bind((key,)), request_timeout=10.0)).current_rows

Private to the Cassandra backend: callers use :class:`~sessionstore.backends.cassandra.
CassandraBackend`, which maps driver exceptions to the library's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cassandra.cluster import ResultSet

__all__ = ["execute"]


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    # Runs on the loop thread. The awaiting task may have been cancelled (or timed out)
    # while the request was in flight: the driver still completes it, and setting a
    # result on a cancelled future would raise InvalidStateError inside the loop.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _post(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    value: Any,
    error: BaseException | None,
) -> None:
    # Runs on the driver's I/O thread (or inline in add_callbacks when the response is
    # already there). Exceptions raised here would be swallowed by the driver, so the one
    # expected failure -- the loop was closed before the response arrived -- is ignored
    # on purpose: nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, future, value, error)


async def execute(
    session: Any,
    statement: Any,
    parameters: Any = None,
    *,
    request_timeout: float,
    paging_state: bytes | None = None,
) -> Any:
    """Run ``statement`` with ``session.execute_async`` and await its first page.

    ``parameters`` are for a non-prepared statement; the backend binds its prepared
    statements itself and passes None.

    Returns a :class:`cassandra.cluster.ResultSet`; read ``current_rows`` and
    ``paging_state`` only -- iterating past the first page would fetch the next page
    synchronously and block the loop. Driver exceptions are raised unchanged.

    Cancellation abandons the wait, not the request: a write that was already sent may
    still be applied, which the revision rule makes harmless (a replay is a no-op).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    response_future = session.execute_async(
        statement, parameters, timeout=request_timeout, paging_state=paging_state
    )

    # The callbacks must not refer to response_future: the driver keeps them in it after
    # it completes, and that reference cycle would keep the request and its result (a
    # page of sessions, or a write's multi-MB values) alive until the cyclic garbage
    # collector runs, which large binary values seldom trigger.
    def on_rows(rows: Any) -> None:
        _post(loop, future, rows, None)

    def on_error(exc: BaseException) -> None:
        _post(loop, future, None, exc)

    response_future.add_callbacks(on_rows, on_error)
    try:
        rows = await future
    except Exception:
        _drop_timer(response_future)
        raise
    _drop_timer(response_future)
    # Only the first page, already received: building the ResultSet is cheap.
    return ResultSet(response_future, rows)


def _drop_timer(response_future: Any) -> None:
    # The driver's own cycle: a finished ResponseFuture keeps its (cancelled) timeout
    # timer, whose callback is a bound method of the future. Dropping the reference once
    # the request is over frees the request and its result without the cyclic collector.
    # (Not on cancellation: the request is still running, and its timer must fire.)
    if getattr(response_future, "_timer", None) is not None:
        response_future._timer = None
