"""Items 1-3: what one call costs through the repository, against the raw drivers.

One table and one collection hold the same ``keys`` sessions (saved through the
repository in DUAL_WRITE). Calls run one at a time (closed loop, no concurrency), so a
latency is the cost of one call to the service that makes it.

1. Read: ``repo.get`` in CASSANDRA_ONLY / DOCDB_ONLY vs the prepared SELECT / find_one.
2. Write: ``repo.save`` in CASSANDRA_ONLY / DOCDB_ONLY / DUAL_WRITE vs the prepared INSERT
   ... USING TIMESTAMP / the conditional replace_one / both, in that order.
3. Shadow reads: ``repo.get`` in SHADOW vs DUAL_WRITE, and DOCDB_PRIMARY vs RAMPDOWN
   (the same reads, plus the other store read and compared in the background), with the
   default ``ShadowRead.PARALLEL`` and, as information, with ``AFTER_PRIMARY``. Calls run
   back to back, so each one shares the machine with the comparisons of the calls before
   it, as in a busy service. (Waiting for each comparison before the next call would not
   isolate the shadow read's cost: Cassandra answers a read that follows 10 ms of
   idleness in about twice the time; the ``cassandra.idle`` row measures that.)

Informational rows also split the read's cost (the raw SELECT plus the codec's decode
as baseline) and time the save of a session changed with ``model_copy(update=...)``,
which the repository validates in full (a session it returned is not validated again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._data import describe, sessions
from benchmarks._env import CONSISTENCY, KEYSPACE, Servers
from benchmarks._raw import RawCassandra, mongo_get, mongo_put
from benchmarks._stats import Op, interleave
from benchmarks.flags import TimedPhaseSource
from benchmarks.report import Row, latency_row
from sessionstore import (
    PHASE_PLANS,
    Phase,
    SessionStatus,
    ShadowRead,
    StaticPhaseSource,
    Store,
)
from sessionstore.backends._bson_codec import to_doc
from sessionstore.backends._cql_codec import record_from_row, to_row

READ_GOAL = 1.10
WRITE_GOAL = 1.10
SHADOW_GOAL = 1.15


class Revisions:
    """Revisions for the baselines' writes: wall-clock microseconds, strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(time.time_ns() // 1000, self._last + 1)
        return self._last


@dataclasses.dataclass
class Case:
    key: str
    item: str
    title: str
    library: tuple[Phase, str]
    baseline: tuple[Phase | None, str]
    goal: float | None
    #: Seconds the library side pauses after each call, outside the clock.
    library_pause: float = 0.0


CASES = (
    Case(
        "read.cassandra",
        "1",
        "read CASSANDRA_ONLY vs raw prepared SELECT",
        (Phase.CASSANDRA_ONLY, "get"),
        (None, "raw_get_c"),
        READ_GOAL,
    ),
    Case(
        "read.documentdb",
        "1",
        "read DOCDB_ONLY vs raw find_one",
        (Phase.DOCDB_ONLY, "get"),
        (None, "raw_get_d"),
        READ_GOAL,
    ),
    Case(
        "write.cassandra",
        "2",
        "write CASSANDRA_ONLY vs raw INSERT",
        (Phase.CASSANDRA_ONLY, "save"),
        (None, "raw_put_c"),
        WRITE_GOAL,
    ),
    Case(
        "write.documentdb",
        "2",
        "write DOCDB_ONLY vs raw replace_one",
        (Phase.DOCDB_ONLY, "save"),
        (None, "raw_put_d"),
        WRITE_GOAL,
    ),
    Case(
        "write.dual",
        "2",
        "write DUAL_WRITE vs raw INSERT + replace_one",
        (Phase.DUAL_WRITE, "save"),
        (None, "raw_put_cd"),
        WRITE_GOAL,
    ),
    Case(
        "shadow.cassandra",
        "3",
        "read SHADOW vs DUAL_WRITE",
        (Phase.SHADOW, "get"),
        (Phase.DUAL_WRITE, "get"),
        SHADOW_GOAL,
    ),
    Case(
        "shadow.documentdb",
        "3",
        "read DOCDB_PRIMARY vs RAMPDOWN",
        (Phase.DOCDB_PRIMARY, "get"),
        (Phase.RAMPDOWN, "get"),
        SHADOW_GOAL,
    ),
    Case(
        "shadow.cassandra.after_primary",
        "3 (info)",
        "read SHADOW vs DUAL_WRITE, AFTER_PRIMARY",
        (Phase.SHADOW, "get_after"),
        (Phase.DUAL_WRITE, "get"),
        None,
    ),
    Case(
        "shadow.documentdb.after_primary",
        "3 (info)",
        "read DOCDB_PRIMARY vs RAMPDOWN, AFTER_PRIMARY",
        (Phase.DOCDB_PRIMARY, "get_after"),
        (Phase.RAMPDOWN, "get"),
        None,
    ),
    Case(
        "cassandra.idle",
        "info",
        "raw SELECT after 10 ms idle vs back to back (the server, not the library)",
        (Phase.CASSANDRA_ONLY, "raw_get_c"),
        (None, "raw_get_c"),
        None,
        library_pause=0.010,
    ),
    Case(
        "read.cassandra.decoded",
        "1 (info)",
        "read CASSANDRA_ONLY vs raw SELECT + the codec's decode",
        (Phase.CASSANDRA_ONLY, "get"),
        (None, "raw_get_c_decoded"),
        None,
    ),
    Case(
        "write.cassandra.changed",
        "2 (info)",
        "write CASSANDRA_ONLY of a model_copy(update=...) vs raw INSERT",
        (Phase.CASSANDRA_ONLY, "save_changed"),
        (None, "raw_put_c"),
        None,
    ),
)


async def run(
    servers: Servers,
    *,
    keys: int,
    rounds: int,
    ops: int,
    warmup: int,
    launchdarkly: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """The rows of items 1-3 (and one informational row with the LaunchDarkly source)."""
    table = await servers.new_table("lat")
    collection = await servers.new_collection("lat")
    static = StaticPhaseSource(Phase.DUAL_WRITE)
    source = TimedPhaseSource(static)
    repo = await servers.repository(table, collection, source)
    # The same, but reading the other store only once the authoritative one answered.
    repo_after = await servers.repository(
        table, collection, source, shadow_read=ShadowRead.AFTER_PRIMARY
    )

    def pause(seconds: float) -> Callable[[], Awaitable[None]]:
        return lambda: asyncio.sleep(seconds)

    async def settle() -> None:
        await repo.wait_for_comparisons()
        await repo_after.wait_for_comparisons()

    raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
    revisions = Revisions()
    rows: list[Row] = []
    async with repo, repo_after:
        data = sessions(keys, seed=11)
        saved = [await repo.save(s) for s in data]
        ids = [s.session_id for s in saved]
        cql_rows = [to_row(s) for s in saved]
        docs = [to_doc(s) for s in saved]
        n = len(saved)

        async def raw_put_cd(i: int) -> None:
            revision = revisions.next()
            await raw.put(cql_rows[i % n], revision)
            await mongo_put(collection, docs[i % n], revision)

        # What a service saves after changing a session: a copy that skipped validation,
        # so the repository validates it in full (a session it returned is not
        # validated again). Made before the clock starts, like the baselines' rows.
        changed = [
            s.model_copy(update={"status": SessionStatus.GRADED, "metadata": dict(s.metadata)})
            for s in saved
        ]

        async def raw_get_c_decoded(i: int) -> None:
            row = await raw.get(ids[i % n])
            record_from_row(row)

        ops_by_name: dict[str, Op] = {
            "get": lambda i: repo.get(ids[i % n]),
            "get_after": lambda i: repo_after.get(ids[i % n]),
            "save": lambda i: repo.save(saved[i % n]),
            "save_changed": lambda i: repo.save(changed[i % n]),
            "raw_get_c_decoded": raw_get_c_decoded,
            "raw_get_c": lambda i: raw.get(ids[i % n]),
            "raw_get_d": lambda i: mongo_get(collection, ids[i % n]),
            "raw_put_c": lambda i: raw.put(cql_rows[i % n], revisions.next()),
            "raw_put_d": lambda i: mongo_put(collection, docs[i % n], revisions.next()),
            "raw_put_cd": raw_put_cd,
        }
        for case in CASES:
            log(f"  {case.title}")
            phases = {"library": case.library[0], "baseline": case.baseline[0]}

            def before(name: str, phases: dict[str, Phase | None] = phases) -> None:
                phase = phases[name]
                if phase is not None:
                    static.phase = phase

            source.take()
            # FerretDB answers in 10-20 ms (it scans the collection): half the calls.
            slow = Store.DOCUMENTDB in PHASE_PLANS[case.library[0]].writes and (
                case.library[1] == "save" or PHASE_PLANS[case.library[0]].read is Store.DOCUMENTDB
            )
            series = await interleave(
                {
                    "library": ops_by_name[case.library[1]],
                    "baseline": ops_by_name[case.baseline[1]],
                },
                rounds=rounds,
                ops=ops // 2 if slow else ops,
                warmup=warmup // 2 if slow else warmup,
                before=before,
                after=settle,
                between={"library": pause(case.library_pause)} if case.library_pause else None,
            )
            extra: dict[str, Any] = {"phase_eval": source.take(), "data": describe(data[:1])}
            if case.item.startswith("3"):
                stats = (repo_after if case.library[1] == "get_after" else repo).stats
                extra["comparisons"] = stats.comparisons
                extra["divergences"] = stats.divergences
            rows.append(
                latency_row(
                    case.key,
                    case.item,
                    case.title,
                    series["library"],
                    series["baseline"],
                    goal=case.goal,
                    extra=extra,
                )
            )
    if launchdarkly:
        log("  read CASSANDRA_ONLY with the LaunchDarkly source (informational)")
        rows.append(
            await _launchdarkly_read(
                servers, table, collection, ids, rounds=rounds, ops=ops, warmup=warmup
            )
        )
    return rows


async def _launchdarkly_read(
    servers: Servers,
    table: str,
    collection: Any,
    ids: list[Any],
    *,
    rounds: int,
    ops: int,
    warmup: int,
) -> Row:
    """Informational: the read of item 1 with the phase from a LaunchDarkly flag."""
    from sessionstore.launchdarkly import LaunchDarklyPhaseSource
    from sessionstore.testing import launchdarkly_test_client

    client, _ = launchdarkly_test_client("session-store-migration", Phase.CASSANDRA_ONLY)
    source = TimedPhaseSource(
        LaunchDarklyPhaseSource(
            client,
            flag_key="session-store-migration",
            context_key_secret=secrets.token_hex(16),
        )
    )
    repo = await servers.repository(table, collection, source)
    raw = RawCassandra(servers.session, KEYSPACE, table, CONSISTENCY)
    n = len(ids)
    try:
        async with repo:
            get: Callable[[int], Awaitable[Any]] = lambda i: repo.get(ids[i % n])  # noqa: E731
            series = await interleave(
                {"library": get, "baseline": lambda i: raw.get(ids[i % n])},
                rounds=rounds,
                ops=ops,
                warmup=warmup,
            )
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return latency_row(
        "read.cassandra.launchdarkly",
        "1 (info)",
        "read CASSANDRA_ONLY, LaunchDarkly flag, vs raw SELECT",
        series["library"],
        series["baseline"],
        goal=None,
        extra={"phase_eval": source.take()},
    )
