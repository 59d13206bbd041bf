"""The LaunchDarkly phase source, driven by the SDK's own TestData source."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from ldclient.client import LDClient
from ldclient.config import Config
from ldclient.integrations.test_data import TestData
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sessionstore import LaunchDarklyPhaseSource, Operation, Phase
from sessionstore.testing import launchdarkly_test_client, memory_repository, set_launchdarkly_phase
from tests.helpers import make_session
from tests.unit.metrics import counter_points

FLAG = "session-store-migration"


@pytest.fixture
def ld() -> Iterator[tuple[LDClient, TestData]]:
    client, td = launchdarkly_test_client(FLAG)
    yield client, td
    client.close()


@pytest.mark.parametrize("phase", list(Phase))
def test_flag_stage_maps_to_phase(ld: tuple[LDClient, TestData], phase: Phase) -> None:
    client, td = ld
    set_launchdarkly_phase(td, phase, flag_key=FLAG)
    source = LaunchDarklyPhaseSource(client, flag_key=FLAG)
    assert source.decide(uuid.uuid4(), Operation.READ).phase is phase


def test_percentage_rollout_keeps_each_session_in_one_phase(ld: tuple[LDClient, TestData]) -> None:
    client, td = ld
    stages = [p.value for p in Phase]
    # Sessions whose key is listed get DOCDB_PRIMARY, the rest DUAL_WRITE.
    chosen = [uuid.uuid4() for _ in range(5)]
    flag = td.flag(FLAG).variations(*stages).fallthrough_variation(stages.index("dualwrite"))
    for sid in chosen:
        flag = flag.variation_for_key("session", str(sid), stages.index("live"))
    td.update(flag)
    source = LaunchDarklyPhaseSource(client, flag_key=FLAG)
    for _ in range(3):
        for sid in chosen:
            assert source.decide(sid, Operation.WRITE).phase is Phase.DOCDB_PRIMARY
        assert source.decide(uuid.uuid4(), Operation.WRITE).phase is Phase.DUAL_WRITE


def test_missing_flag_falls_back_and_is_counted(ld: tuple[LDClient, TestData]) -> None:
    client, _ = ld
    reader = InMemoryMetricReader()
    source = LaunchDarklyPhaseSource(
        client, flag_key="no-such-flag", default_phase=Phase.DUAL_WRITE
    )
    repo, _stores = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
    assert repo.phase_of(uuid.uuid4(), Operation.READ) is Phase.DUAL_WRITE
    points = counter_points(reader, "sessionstore.phase.fallbacks")
    assert points == {(("sessionstore.reason", "FLAG_NOT_FOUND"),): 1}


def test_uninitialized_client_falls_back_and_is_counted() -> None:
    reader = InMemoryMetricReader()
    client = LDClient(Config("k", offline=True))
    try:
        source = LaunchDarklyPhaseSource(client, flag_key=FLAG, default_phase=Phase.SHADOW)
        repo, _ = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
        assert repo.phase_of(uuid.uuid4(), Operation.WRITE) is Phase.SHADOW
        assert counter_points(reader, "sessionstore.phase.fallbacks") == {
            (("sessionstore.reason", "CLIENT_NOT_READY"),): 1
        }
    finally:
        client.close()


def test_a_served_flag_is_not_a_fallback(ld: tuple[LDClient, TestData]) -> None:
    client, td = ld
    reader = InMemoryMetricReader()
    set_launchdarkly_phase(td, Phase.DOCDB_ONLY, flag_key=FLAG)
    source = LaunchDarklyPhaseSource(client, flag_key=FLAG)
    repo, _ = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
    assert repo.phase_of(uuid.uuid4(), Operation.READ) is Phase.DOCDB_ONLY
    assert counter_points(reader, "sessionstore.phase.fallbacks") == {}


class _Recorder:
    """Captures the migration op events the client would send."""

    def __init__(self, client: LDClient) -> None:
        self.events: list[Any] = []
        original = client.track_migration_op

        def track(tracker: Any) -> None:
            event = tracker.build()
            assert not isinstance(event, str), event
            self.events.append(event)
            original(tracker)

        client.track_migration_op = track  # type: ignore[method-assign]


async def test_operations_are_reported_to_the_migration_tracker(
    ld: tuple[LDClient, TestData],
) -> None:
    client, td = ld
    set_launchdarkly_phase(td, Phase.DOCDB_PRIMARY, flag_key=FLAG)
    recorder = _Recorder(client)
    repo, stores = memory_repository(LaunchDarklyPhaseSource(client, flag_key=FLAG))
    async with repo:
        stores.cassandra.fail_next(1, operation="save")
        saved = await repo.save(make_session())
        await repo.get(saved.session_id)
        await repo.wait_for_comparisons()
    write, read = recorder.events
    assert write.operation.value == "write"
    assert {o.value for o in write.invoked} == {"old", "new"}
    assert {o.value for o in write.errors} == {"old"}  # Cassandra (old) failed as secondary
    assert set(write.latencies) == write.invoked
    assert read.operation.value == "read"
    assert {o.value for o in read.invoked} == {"old", "new"}
    assert read.consistent is False  # Cassandra missed the write: the comparison saw it


def test_a_flag_of_the_wrong_type_falls_back(ld: tuple[LDClient, TestData]) -> None:
    client, td = ld
    td.update(td.flag(FLAG).variation_for_all(True))  # a boolean flag, not a migration flag
    reader = InMemoryMetricReader()
    source = LaunchDarklyPhaseSource(client, flag_key=FLAG, default_phase=Phase.DUAL_WRITE)
    repo, _ = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
    assert repo.phase_of(uuid.uuid4(), Operation.READ) is Phase.DUAL_WRITE
    assert counter_points(reader, "sessionstore.phase.fallbacks") == {
        (("sessionstore.reason", "WRONG_TYPE"),): 1
    }
