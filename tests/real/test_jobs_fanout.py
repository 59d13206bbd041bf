"""The backfill fan-out on the real servers: units on an SQS queue (ElasticMQ), run by
``sessionstore worker`` processes and by the Lambda handler, on the real pair.

- 6,000 sessions DocumentDB -> Cassandra through ``backfill --enqueue`` and two worker
  processes, one SIGKILLed in the middle of a unit: its messages come back after their
  visibility timeout, the other worker runs them again, and ``sessionstore verify``
  then finds no difference; the target equals the source record for record.
- A worker stopped by SIGTERM hands its unfinished unit back at once (visibility 0).
- The Lambda handler on id batches of 20 enqueued from an id file: two warm invocations
  share one set of stores (opened once), and a malformed message is reported alone.

Why DocumentDB is the source of the large test: FerretDB answers per-key reads and
conditional writes with a collection scan (see tests/real/jobs_support.py), so the
test keeps it where it is scanned by ranges; the per-key work falls on Cassandra.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionstore.backends.cassandra import CassandraBackend
from sessionstore.backends.documentdb import DocumentDBBackend
from sessionstore.cli.main import main
from sessionstore.jobs import JobAction, handler, plan_ranges
from sessionstore.jobs.units import STORE_KEY_SPACES
from sessionstore.phases import Store
from tests.real.jobs_support import (
    Names,
    all_records,
    create_names,
    drop_names,
    history,
    open_pair,
    seed_cassandra,
    seed_documentdb,
)
from tests.real.servers import SQS_REGION
from tests.real.sqs import SqsQueue, fresh_queue

pytestmark = pytest.mark.real

SESSIONS = 6000
# Few, large units: FerretDB answers every range query with a scan of the whole
# collection (about 1 s at 6,000 sessions), so the query count sets the test's time.
PARTS = 12
JOB = "fanout-kill"
_LOG = re.compile(r"unit (\S+) of job \S+ (started|done)")


def _env(names: Names) -> dict[str, str]:
    return {
        **os.environ,
        **names.env(),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": SQS_REGION,
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sessionstore", *args]


async def _spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _finish(proc: asyncio.subprocess.Process, seconds: float = 180) -> tuple[str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), seconds)
    return out.decode(), err.decode()


def _units(log: str, state: str) -> set[str]:
    return {m[1] for m in _LOG.finditer(log) if m[2] == state}


def _drained(queue: SqsQueue) -> dict[str, int]:
    counts = {}
    for name, url in (("queue", queue.url), ("dlq", queue.dlq_url)):
        attributes = queue.client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        counts[name] = sum(int(v) for v in attributes.values())
    return counts


async def test_backfill_through_the_queue_survives_a_sigkilled_worker(tmp_path: Path) -> None:
    started = time.perf_counter()
    names = await create_names()
    try:
        async with open_pair(names) as pair:
            await seed_documentdb(pair.collection, history(SESSIONS, seed=11, tombstone_every=40))
        env = _env(names)
        # Visibility timeout 3 s: the killed worker's units come back within seconds.
        with fresh_queue(visibility_timeout=3, max_receive_count=5) as queue:
            await _run_fleet(queue, env)
        await _verify(names, env, tmp_path)
    finally:
        await drop_names(names)
    print(f"\nfan-out test: {SESSIONS} sessions in {time.perf_counter() - started:.1f} s")


async def _run_fleet(queue: SqsQueue, env: dict[str, str]) -> None:
    enqueue = await _spawn(
        _cli("backfill", "--source", "documentdb", "--parts", str(PARTS), "--job", JOB,
             "--enqueue", queue.url, "--json"),
        env,
    )  # fmt: skip
    out, err = await _finish(enqueue)
    assert enqueue.returncode == 0, err
    assert json.loads(out)["units"] == PARTS
    planned = {
        u.unit_id
        for u in plan_ranges(
            STORE_KEY_SPACES[Store.DOCUMENTDB], PARTS, job=JOB, action=JobAction.BACKFILL,
            source=Store.DOCUMENTDB,
        )
    }  # fmt: skip

    worker = _cli("worker", queue.url, "--concurrency", "2", "--until-drained",
                  "--wait-seconds", "1", "--page-size", "1000", "--json", "-v")  # fmt: skip
    doomed, survivor = await _spawn(worker, env), await _spawn(worker, env)
    doomed_log = await _kill_mid_unit(doomed)
    assert doomed.returncode == -signal.SIGKILL
    in_hand = _units(doomed_log, "started") - _units(doomed_log, "done")
    assert in_hand, "the worker was not killed in the middle of a unit"

    out, err = await _finish(survivor)
    assert survivor.returncode == 0, err
    report = json.loads(out)
    assert report["stopped"] == "queue drained"
    assert report["units"]["failed"] == 0
    assert report["units"]["redelivered"] >= 1  # the killed worker's unit(s), run again
    assert in_hand <= _units(err, "done")
    assert _units(doomed_log, "done") | _units(err, "done") == planned
    assert _drained(queue) == {"queue": 0, "dlq": 0}


async def _kill_mid_unit(proc: asyncio.subprocess.Process) -> str:
    """SIGKILL ``proc`` right after it starts a unit, once it has finished one."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(proc.stderr.readline(), deadline - time.monotonic())
        if not raw:
            break
        lines.append(raw.decode())
        if "started" in lines[-1] and _units("".join(lines), "done"):
            proc.kill()
            break
    else:
        proc.kill()
    rest = (await proc.communicate())[1].decode()
    log = "".join(lines) + rest
    assert proc.returncode == -signal.SIGKILL, f"the worker ended by itself:\n{log}"
    return log


async def _verify(names: Names, env: dict[str, str], tmp_path: Path) -> None:
    # The target pass would read FerretDB once per Cassandra key (a scan each): the same
    # question, are the key sets equal, is answered by the full comparison below.
    proc = await _spawn(
        _cli("verify", "--source", "documentdb", "--parts", "2", "--page-size", "5000",
             "--no-target-scan", "--strict", "--json", "--checkpoint",
             str(tmp_path / "verify.db")),
        env,
    )  # fmt: skip
    out, err = await _finish(proc)
    assert proc.returncode == 0, err
    verified = json.loads(out)
    assert verified["counts"]["checked"] == SESSIONS
    assert verified["differences"] == dict.fromkeys(verified["differences"], 0)
    async with open_pair(names) as pair:
        source = await all_records(pair.documentdb)
        target = await all_records(pair.cassandra)
    assert len(source) == SESSIONS
    assert target == source


async def test_a_sigtermed_worker_hands_its_unit_back_at_once(tmp_path: Path) -> None:
    names = await create_names()
    try:
        records = history(20, seed=12)
        async with open_pair(names) as pair:
            await seed_cassandra(pair.table, records)
        ids = tmp_path / "ids.txt"
        ids.write_text("\n".join(str(r.session_id) for r in records))
        env = _env(names)
        with fresh_queue(visibility_timeout=60) as queue:
            enqueue = await _spawn(
                _cli("backfill", "--source", "cassandra", "--ids", str(ids), "--enqueue",
                     queue.url),
                env,
            )  # fmt: skip
            _, err = await _finish(enqueue)
            assert enqueue.returncode == 0, err
            # 20 sessions at 4 per second: the unit takes about 5 s.
            proc = await _spawn(
                _cli("worker", queue.url, "--rate", "4", "--grace", "0", "--wait-seconds", "1",
                     "--json", "-v"),
                env,
            )  # fmt: skip
            assert proc.stderr is not None
            while b"started" not in await asyncio.wait_for(proc.stderr.readline(), 60):
                pass
            proc.send_signal(signal.SIGTERM)
            out, err = await _finish(proc, 60)
            assert proc.returncode == 130, err
            assert json.loads(out)["units"] == {
                "done": 0, "failed": 0, "released": 1, "redelivered": 0,
            }  # fmt: skip
            # Back at once, not after the 60 s visibility timeout.
            [message] = queue.client.receive_message(
                QueueUrl=queue.url, WaitTimeSeconds=1,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )["Messages"]  # fmt: skip
            assert message["Attributes"]["ApproximateReceiveCount"] == "2"
    finally:
        await drop_names(names)


@pytest.fixture
def names_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Names]:
    names = asyncio.run(create_names())
    for key, value in _env(names).items():
        monkeypatch.setenv(key, value)
    try:
        yield names
    finally:
        handler.close_warm_stores()
        asyncio.run(drop_names(names))


def test_the_lambda_handler_keeps_its_stores_across_warm_invocations(
    names_env: Names, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    records = history(200, seed=13, tombstone_every=25)

    async def seed() -> None:
        async with open_pair(names_env) as pair:
            await seed_cassandra(pair.table, records)

    asyncio.run(seed())
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(r.session_id) for r in records))
    opened: list[str] = []
    for backend in (CassandraBackend, DocumentDBBackend):
        monkeypatch.setattr(backend, "_open", _counting(backend._open, opened))

    with fresh_queue(visibility_timeout=30) as queue:
        assert main(["backfill", "--source", "cassandra", "--ids", str(ids),
                     "--enqueue", queue.url]) == 0  # fmt: skip
        queue.client.send_message(QueueUrl=queue.url, MessageBody='{"job": "x"}')
        failures, invocations = [], 0
        while True:  # 11 messages, in batches of at most 10 as Lambda receives them
            batch = queue.client.receive_message(
                QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            if not batch:
                break
            invocations += 1
            event = {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in batch]}
            answer = handler.sqs_handler(event, None)
            failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
            failures += [m["Body"] for m in batch if m["MessageId"] in failed]
            for m in batch:  # what the event source mapping does with the partial response
                if m["MessageId"] not in failed:
                    queue.client.delete_message(
                        QueueUrl=queue.url, ReceiptHandle=m["ReceiptHandle"]
                    )

    assert invocations >= 2
    assert failures == ['{"job": "x"}']
    assert sorted(opened) == ["CassandraBackend", "DocumentDBBackend"]  # once each
    warm = handler._Container.warm
    assert warm is not None

    async def read_back() -> dict[uuid.UUID, Any]:
        return await all_records(warm.stores[Store.DOCUMENTDB])

    copied = warm.loop.run(read_back())  # on the container's loop and stores
    assert copied == {r.session_id: r for r in records}


def _counting(opener: Any, opened: list[str]) -> Any:
    async def counted(self: Any) -> None:
        opened.append(type(self).__name__)
        await opener(self)

    return counted
