"""The fleet property once more, on the real Cassandra and FerretDB (fewer examples).

The same steps and checks as tests/unit/test_fleet_property.py: several repositories
with skewed clocks over one pair of real stores, faults before and after a write
applied, callers cancelled at any await, weeks of simulated time, purges, one-sided
tombstone loss and phase moves both ways. Each example gets a fresh table and
collection. FerretDB's conditional write is a read then a write (DocumentDB's is
atomic), so writes to one key are serialized in this process, as in the other
real-server tests.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionstore import Phase
from sessionstore.testing import KeySerializingBackend
from tests.stores import open_store
from tests.unit.test_fleet_property import KEYS, PHASES, run, step

pytestmark = pytest.mark.real

EXAMPLES = int(os.environ.get("FLEET_REAL_EXAMPLES", "15"))


async def run_on_real_stores(skews: list[float], steps: list[Any], start: Phase) -> None:
    cassandra = await open_store("cassandra", role="cassandra")
    documentdb = await open_store("documentdb", role="documentdb")
    try:
        keys = [uuid.uuid4() for _ in KEYS]
        stores = (cassandra.backend, KeySerializingBackend(documentdb.backend))
        await run(skews, steps, start, stores=stores, keys=keys)
    finally:
        await cassandra.backend.aclose()
        await documentdb.backend.aclose()
        # A cancelled call can leave PyMongo 4.x's half-made connection unclosed
        # (PYTHON-5867, fixed upstream later); collect it here, not in a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    skews=st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=3),
    steps=st.lists(step, min_size=10, max_size=40),
    start=st.sampled_from(PHASES),
)
def test_a_fleet_on_the_real_pair_loses_nothing_resurrects_nothing_and_hides_no_conflict(
    skews: list[float], steps: list[Any], start: Phase
) -> None:
    asyncio.run(run_on_real_stores(skews, steps, start))
