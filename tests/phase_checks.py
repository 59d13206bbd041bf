"""Phase routing checks shared by the in-memory and the real-server suites."""

from __future__ import annotations

from sessionstore import Phase, SessionRepository
from sessionstore.testing import MemoryStores
from tests.helpers import make_session

EXPECTED = {
    # phase: (writes in order, read from, compared against)
    Phase.CASSANDRA_ONLY: (["cassandra"], "cassandra", None),
    Phase.DUAL_WRITE: (["cassandra", "documentdb"], "cassandra", None),
    Phase.SHADOW: (["cassandra", "documentdb"], "cassandra", "documentdb"),
    Phase.DOCDB_PRIMARY: (["documentdb", "cassandra"], "documentdb", "cassandra"),
    Phase.RAMPDOWN: (["documentdb", "cassandra"], "documentdb", None),
    Phase.DOCDB_ONLY: (["documentdb"], "documentdb", None),
}


async def check_routing(phase: Phase, repo: SessionRepository, stores: MemoryStores) -> None:
    """Save, read and delete one session; assert which stores were touched, in order."""
    writes, read_from, compared = EXPECTED[phase]
    saved = await repo.save(make_session(attachment_bytes=1024))
    sid = saved.session_id
    assert [c.store for c in stores.calls if c.operation == "save"] == writes
    stores.calls.clear()
    assert await repo.get(sid) == saved
    await repo.wait_for_comparisons()
    gets = sorted(c.store for c in stores.calls if c.operation == "get")
    assert gets == sorted([read_from] + ([compared] if compared else []))
    stores.calls.clear()
    tombstone = await repo.delete(sid)
    assert [c.store for c in stores.calls if c.operation == "delete"] == writes
    assert await repo.get(sid) is None
    await repo.wait_for_comparisons()
    for name in ("cassandra", "documentdb"):
        record = await getattr(stores, name).inner.get(sid)
        if name in writes:
            assert record is not None and record.deleted and record.revision == tombstone
        else:
            assert record is None
    assert await stores.repairs.depth() == 0
