"""A fleet on one SQS repair queue: two service processes write in DUAL_WRITE while the
secondary (FerretDB) is down, then one ``sessionstore repair --follow`` process drains
the repairs of both once it is back. Not one acknowledged write may be lost: each must
be in both stores with its revision.

The test stops FerretDB: against shared servers, run it on a private set (docs/servers.md), e.g.
``SESSIONSTORE_FERRETDB_PORT=28117 SESSIONSTORE_MONGODB_URI=mongodb://127.0.0.1:28117/``
after ``SESSIONSTORE_FERRETDB_PORT=28117 scripts/servers up ferretdb``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from tests.real.jobs_support import Names, create_names, drop_names, open_pair
from tests.real.pair import ROOT, servers
from tests.real.sqs import SqsQueue, fresh_queue

pytestmark = pytest.mark.real

#: Sessions each service process creates, then saves once more.
SESSIONS_PER_WRITER = 40
WRITER = [sys.executable, "-m", "tests.real.fleet_writer"]
FOLLOWER = [sys.executable, "-m", "sessionstore", "repair", "--follow"]


def _env(names: Names, sqs: SqsQueue) -> dict[str, str]:
    return {
        **os.environ,
        **names.env(),
        "PYTHONPATH": str(ROOT),
        **sqs.env(),
    }


def _counts(sqs: SqsQueue) -> tuple[int, int]:
    """(messages still to repair, dead letters)."""
    names: Any = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    main = sqs.client.get_queue_attributes(QueueUrl=sqs.url, AttributeNames=names)
    dead = sqs.client.get_queue_attributes(QueueUrl=sqs.dlq_url, AttributeNames=names)
    return (
        sum(int(v) for v in main["Attributes"].values()),
        sum(int(v) for v in dead["Attributes"].values()),
    )


def _write_while_documentdb_is_down(
    env: dict[str, str], sqs: SqsQueue
) -> tuple[dict[uuid.UUID, int], list[dict[str, int]]]:
    """Run two writers with FerretDB stopped; the last acknowledged revision per session."""
    # A stopped secondary fails each write after this many seconds (server selection).
    writer_env = {**env, "SESSIONSTORE_REQUEST_TIMEOUT": "2"}
    servers("stop", "ferretdb")
    try:
        writers = [
            subprocess.Popen(
                [*WRITER, sqs.url, str(writer_id), str(SESSIONS_PER_WRITER)],
                cwd=ROOT,
                env=writer_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for writer_id in (1, 2)
        ]
        outputs = [writer.communicate(timeout=300) for writer in writers]
    finally:
        servers("start", "ferretdb")
    acked: dict[uuid.UUID, int] = {}
    summaries = []
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
        *lines, summary = out.splitlines()
        summaries.append(json.loads(summary))
        for line in lines:
            ack = json.loads(line)
            sid = uuid.UUID(ack["session_id"])
            acked[sid] = max(acked.get(sid, 0), ack["revision"])
    return acked, summaries


async def _both_stores(names: Names, ids: list[uuid.UUID]) -> list[tuple[int | None, int | None]]:
    """Each session's (Cassandra revision, DocumentDB revision); None where absent."""
    async with open_pair(names) as pair:
        out = []
        for sid in ids:
            c, d = await pair.cassandra.get(sid), await pair.documentdb.get(sid)
            out.append((c and c.revision, d and d.revision))
    return out


def test_one_follower_drains_the_repairs_of_two_writers_and_no_write_is_lost() -> None:
    names = asyncio.run(create_names())
    try:
        with fresh_queue(max_receive_count=10, visibility_timeout=30) as sqs:
            env = _env(names, sqs)
            acked, summaries = _write_while_documentdb_is_down(env, sqs)

            # Every acknowledged save reached Cassandra, and its DocumentDB half is queued:
            # failed at first, then skipped at once by the open circuit breaker.
            assert len(acked) == 2 * SESSIONS_PER_WRITER
            enqueued = sum(s["repairs_enqueued"] for s in summaries)
            failed = sum(s["secondary_failures"] for s in summaries)
            assert failed > 0
            assert enqueued == failed + sum(s["secondary_skipped"] for s in summaries)
            assert enqueued == 4 * SESSIONS_PER_WRITER  # two saves per session failed
            assert _counts(sqs) == (enqueued, 0)

            started = time.monotonic()
            follower = subprocess.Popen(
                [*FOLLOWER, "--poll-seconds", "1", "--json", "--no-progress"],
                cwd=ROOT,
                env=env,  # the queue comes from SESSIONSTORE_REPAIR_QUEUE
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                while _counts(sqs) != (0, 0):
                    assert follower.poll() is None, follower.communicate()[1]
                    assert time.monotonic() - started < 120, "the queue was not drained"
                    time.sleep(0.5)
                drained_after = time.monotonic() - started
                follower.send_signal(signal.SIGTERM)
                out, err = follower.communicate(timeout=60)
            finally:
                if follower.poll() is None:
                    follower.kill()
                    follower.communicate()
            assert follower.returncode == 0, err
            report = json.loads(out)
            assert report["result"] == "STOPPED"
            assert report["copied"] + report["in_sync"] == enqueued
            assert report["copied"] >= len(acked)
            assert (report["failed"], report["dead_letters"]) == (0, [])

        ids = sorted(acked)
        stored = asyncio.run(_both_stores(names, ids))
        lost = [
            sid
            for sid, (c, d) in zip(ids, stored, strict=True)
            if (c, d) != (acked[sid], acked[sid])
        ]
        assert lost == [], f"{len(lost)} of {len(ids)} acknowledged writes lost"
        print(f"{enqueued} repairs of {len(ids)} sessions drained in {drained_after:.1f} s")
    finally:
        asyncio.run(drop_names(names))
