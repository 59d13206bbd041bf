"""One process of a service fleet, for tests/real/test_repair_fleet.py.

    python -m tests.real.fleet_writer QUEUE_URL WRITER_ID COUNT

Opens a :class:`SessionRepository` in ``DUAL_WRITE`` on the stores of the
``SESSIONSTORE_*`` variables, with the SQS repair queue at QUEUE_URL and its own
``HybridClock(writer_id=WRITER_ID)``; creates COUNT sessions, then saves each once more.
Prints one JSON line per acknowledged save (``session_id``, ``revision``) and, last, a
summary line (``secondary_failures``, ``secondary_skipped``, ``repairs_enqueued``).
"""

from __future__ import annotations

import asyncio
import json
import sys

from sessionstore import (
    HybridClock,
    Phase,
    SessionRepository,
    SessionStatus,
    SqsRepairQueue,
    StaticPhaseSource,
    StudentSession,
)
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store


async def main(queue_url: str, writer_id: int, count: int) -> None:
    settings = ConnectionSettings.from_env()
    repo = SessionRepository(
        cassandra=settings.backend(Store.CASSANDRA),
        documentdb=settings.backend(Store.DOCUMENTDB),
        phases=StaticPhaseSource(Phase.DUAL_WRITE),
        repairs=SqsRepairQueue(queue_url),
        clock=HybridClock(writer_id=writer_id),
        # FerretDB is stopped, not frozen: nothing lands late; a short delay still
        # exercises the SQS message delay.
        repair_delay=1.0,
    )
    limit = asyncio.Semaphore(16)

    async def save(session: StudentSession) -> StudentSession:
        async with limit:
            saved = await repo.save(session)
        print(json.dumps({"session_id": str(saved.session_id), "revision": saved.revision}))
        return saved

    async with repo:
        created = await asyncio.gather(
            *(
                save(StudentSession.create(student_id=f"w{writer_id}-{i}", assessment_id="a"))
                for i in range(count)
            )
        )
        await asyncio.gather(
            *(save(s.model_copy(update={"status": SessionStatus.SUBMITTED})) for s in created)
        )
        stats = repo.stats
    print(
        json.dumps(
            {
                "secondary_failures": stats.secondary_failures,
                "secondary_skipped": stats.secondary_skipped,
                "repairs_enqueued": stats.repairs_enqueued,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
