"""Metrics are recorded through the OpenTelemetry API, with names and never values."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sessionstore import Phase
from sessionstore.testing import memory_repository
from tests.helpers import make_session
from tests.unit.metrics import counter_points, gauge_value, histogram_counts


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


async def test_operation_durations_use_semantic_convention_names(
    reader: InMemoryMetricReader,
) -> None:
    repo, stores = memory_repository(
        Phase.DUAL_WRITE, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with repo:
        stores.documentdb.fail_next(1, operation="save")
        saved = await repo.save(make_session())
        await repo.get(saved.session_id)
    counts = histogram_counts(reader, "db.client.operation.duration")
    base = {"sessionstore.phase": "dualwrite"}

    def key(**attrs: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((base | attrs).items()))

    assert counts == {
        key(
            **{
                "db.system.name": "cassandra",
                "db.operation.name": "save",
                "sessionstore.store": "cassandra",
            }
        ): 1,
        key(
            **{
                "db.system.name": "mongodb",
                "db.operation.name": "save",
                "sessionstore.store": "documentdb",
                "error.type": "BackendUnavailableError",
            }
        ): 1,
        key(
            **{
                "db.system.name": "cassandra",
                "db.operation.name": "get",
                "sessionstore.store": "cassandra",
            }
        ): 1,
    }
    assert counter_points(reader, "sessionstore.secondary.failures") == {
        (
            ("db.operation.name", "save"),
            ("error.type", "BackendUnavailableError"),
            ("sessionstore.store", "documentdb"),
        ): 1
    }
    assert counter_points(reader, "sessionstore.repairs.enqueued") == {
        (("sessionstore.reason", "secondary_write_failed"),): 1
    }
    assert gauge_value(reader, "sessionstore.repair.queue.depth") == 1
    assert sum(histogram_counts(reader, "sessionstore.phase.evaluation.duration").values()) == 2


async def test_mismatches_are_counted_by_field_name_only(reader: InMemoryMetricReader) -> None:
    secret = "the student's private essay"
    repo, stores = memory_repository(
        Phase.SHADOW, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with repo:
        saved = await repo.save(make_session(metadata={"essay": secret}))
        # Make DocumentDB hold different content at the same revision (a bug elsewhere).
        await stores.documentdb.inner.delete(saved.session_id, saved.revision + 1)
        assert await repo.get(saved.session_id) == saved
        await repo.wait_for_comparisons()
    outcomes = counter_points(reader, "sessionstore.comparisons")
    assert outcomes == {(("sessionstore.outcome", "newer"), ("sessionstore.phase", "shadow")): 1}
    fields = counter_points(reader, "sessionstore.divergence.fields")
    assert fields == {(("sessionstore.field", "deleted"), ("sessionstore.phase", "shadow")): 1}
    data = reader.get_metrics_data()
    assert secret not in repr(data)


async def test_consistent_reads_are_counted(reader: InMemoryMetricReader) -> None:
    repo, _ = memory_repository(
        Phase.DOCDB_PRIMARY, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with repo:
        saved = await repo.save(make_session())
        for _ in range(3):
            await repo.get(saved.session_id)
        await repo.wait_for_comparisons()
    assert counter_points(reader, "sessionstore.comparisons") == {
        (("sessionstore.outcome", "consistent"), ("sessionstore.phase", "live")): 3
    }
