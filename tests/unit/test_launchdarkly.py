"""The LaunchDarkly phase source, driven by the SDK's own TestData (and file) sources."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldclient.client import LDClient
from ldclient.config import Config
from ldclient.hook import EvaluationSeriesContext, Hook, Metadata
from ldclient.integrations import Files
from ldclient.integrations.test_data import TestData
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr

from sessionstore import ConfigurationError, LaunchDarklyPhaseSource, Operation, Phase
from sessionstore.testing import launchdarkly_test_client, memory_repository, set_launchdarkly_phase
from tests.helpers import make_session
from tests.unit.metrics import counter_points

FLAG = "session-store-migration"
SECRET = "fleet-wide-context-key-secret"
STAGES = [p.value for p in Phase]


def _source(client: LDClient, **options: Any) -> LaunchDarklyPhaseSource:
    """The phase source as the service builds it (with the fleet's context key secret)."""
    options.setdefault("flag_key", FLAG)
    if not options.get("raw_session_ids"):
        options.setdefault("context_key_secret", SECRET)
    return LaunchDarklyPhaseSource(client, **options)


class _SeenContexts(Hook):
    """Every context LaunchDarkly evaluates a flag for, as the SDK hands it to hooks."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.kinds: list[str] = []

    @property
    def metadata(self) -> Metadata:
        return Metadata(name="test-seen-contexts")

    def before_evaluation(
        self, series_context: EvaluationSeriesContext, data: dict[str, Any]
    ) -> dict[str, Any]:
        self.keys.append(series_context.context.key)
        self.kinds.append(series_context.context.kind)
        return data

    def after_evaluation(
        self, series_context: EvaluationSeriesContext, data: dict[str, Any], detail: Any
    ) -> dict[str, Any]:
        return data


@pytest.fixture
def ld() -> Iterator[tuple[LDClient, TestData]]:
    client, td = launchdarkly_test_client(FLAG)
    yield client, td
    client.close()


@pytest.mark.parametrize("phase", list(Phase))
def test_flag_stage_maps_to_phase(ld: tuple[LDClient, TestData], phase: Phase) -> None:
    client, td = ld
    set_launchdarkly_phase(td, phase, flag_key=FLAG)
    source = _source(client)
    assert source.decide(uuid.uuid4(), Operation.READ).phase is phase


def test_targeted_sessions_keep_their_phase(ld: tuple[LDClient, TestData]) -> None:
    client, td = ld
    source = _source(client)
    # Sessions targeted by their context key get DOCDB_PRIMARY, the rest DUAL_WRITE.
    chosen = [uuid.uuid4() for _ in range(5)]
    set_launchdarkly_phase(
        td,
        Phase.DUAL_WRITE,
        flag_key=FLAG,
        targets=dict.fromkeys(chosen, Phase.DOCDB_PRIMARY),
        source=source,
    )
    for _ in range(3):
        for sid in chosen:
            assert source.decide(sid, Operation.WRITE).phase is Phase.DOCDB_PRIMARY
        assert source.decide(uuid.uuid4(), Operation.WRITE).phase is Phase.DUAL_WRITE


def test_the_context_key_is_a_keyed_hash_not_the_session_id(
    ld: tuple[LDClient, TestData],
) -> None:
    client, _ = ld
    seen = _SeenContexts()
    client.add_hook(seen)
    source = _source(client)
    sessions = [uuid.uuid4() for _ in range(20)]
    for sid in sessions:
        source.decide(sid, Operation.READ)
    assert seen.kinds == ["session"] * len(sessions)
    for sid, key in zip(sessions, seen.keys, strict=True):
        for form in (str(sid), sid.hex, str(sid).upper(), sid.hex.upper()):
            assert form not in key
        # The documented formula, so that another service can compute the same key.
        assert key == hmac.new(SECRET.encode(), str(sid).encode(), hashlib.sha256).hexdigest()
        assert key == source.context_key(sid) == source.context_key(str(sid))  # type: ignore[arg-type]
    # Keyed: another secret gives other keys; the same secret in any form, the same ones.
    other = _source(client, context_key_secret="another-secret-of-the-fleet")
    assert all(other.context_key(sid) != source.context_key(sid) for sid in sessions)
    for same in (SECRET.encode(), SecretStr(SECRET)):
        again = _source(client, context_key_secret=same)
        assert [again.context_key(sid) for sid in sessions] == seen.keys


async def test_migration_events_carry_the_hashed_key_only(ld: tuple[LDClient, TestData]) -> None:
    client, td = ld
    set_launchdarkly_phase(td, Phase.SHADOW, flag_key=FLAG)
    recorder = _Recorder(client)
    source = _source(client)
    repo, _ = memory_repository(source)
    async with repo:
        saved = await repo.save(make_session())
    (event,) = recorder.events
    assert event.context.key == source.context_key(saved.session_id)
    assert str(saved.session_id) not in json.dumps(event.context.to_dict())


def test_a_secret_is_required_unless_raw_ids_are_opted_into(
    ld: tuple[LDClient, TestData],
) -> None:
    client, _ = ld
    with pytest.raises(ConfigurationError, match="context_key_secret") as missing:
        LaunchDarklyPhaseSource(client, flag_key=FLAG)
    assert "SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET" in str(missing.value)
    for short in ("", "fifteen-bytes!!", b"0" * 15, SecretStr("tiny")):
        with pytest.raises(ConfigurationError, match="at least 16 bytes") as too_short:
            LaunchDarklyPhaseSource(client, flag_key=FLAG, context_key_secret=short)
        assert "fifteen-bytes" not in str(too_short.value)
    with pytest.raises(ConfigurationError, match="not both"):
        LaunchDarklyPhaseSource(
            client, flag_key=FLAG, context_key_secret=SECRET, raw_session_ids=True
        )


def test_raw_session_ids_is_an_explicit_opt_in(ld: tuple[LDClient, TestData]) -> None:
    client, _ = ld
    seen = _SeenContexts()
    client.add_hook(seen)
    source = _source(client, raw_session_ids=True)
    sid = uuid.uuid4()
    source.decide(sid, Operation.READ)
    assert seen.keys == [str(sid)] == [source.context_key(sid)]


def test_targets_need_the_source_whose_keys_they_use(ld: tuple[LDClient, TestData]) -> None:
    _, td = ld
    with pytest.raises(ConfigurationError, match="source"):
        set_launchdarkly_phase(td, Phase.SHADOW, targets={uuid.uuid4(): Phase.DOCDB_ONLY})


def _rollout_flag_file(path: Path) -> Path:
    """A migration flag serving DUAL_WRITE to 50% of sessions and DOCDB_PRIMARY to the rest.

    TestData cannot express a percentage rollout, so the flag is given to the SDK's file
    data source in LaunchDarkly's own flag format; the SDK's evaluator buckets it.
    """
    flag = {
        "key": FLAG,
        "version": 1,
        "on": True,
        "salt": "rollout-salt",
        "variations": STAGES,
        "offVariation": STAGES.index("off"),
        "fallthrough": {
            "rollout": {
                "contextKind": "session",
                "variations": [
                    {"variation": STAGES.index("dualwrite"), "weight": 50_000},
                    {"variation": STAGES.index("live"), "weight": 50_000},
                ],
            }
        },
        "targets": [],
        "contextTargets": [],
        "rules": [],
        "prerequisites": [],
    }
    path.write_text(json.dumps({"flags": {FLAG: flag}}), encoding="utf-8")
    return path


def _file_client(flag_file: Path) -> LDClient:
    source = Files.new_data_source(paths=[str(flag_file)])
    return LDClient(Config("test-sdk-key", update_processor_class=source, send_events=False))


# Run in a second interpreter: the phases of the given sessions under the rollout.
_OTHER_PROCESS = """
import sys, uuid
from ldclient.client import LDClient
from ldclient.config import Config
from ldclient.integrations import Files
from sessionstore import LaunchDarklyPhaseSource, Operation
config = Config("k", update_processor_class=Files.new_data_source(paths=[sys.argv[1]]),
                send_events=False)
client = LDClient(config)
source = LaunchDarklyPhaseSource(client, flag_key=sys.argv[2],
                                 context_key_secret=sys.stdin.readline().strip())
for line in sys.stdin:
    print(source.decide(uuid.UUID(line.strip()), Operation.READ).phase.name)
client.close()
"""


def test_a_percentage_rollout_keeps_each_session_in_one_phase_everywhere(tmp_path: Path) -> None:
    flag_file = _rollout_flag_file(tmp_path / "flags.json")
    sessions = [uuid.uuid4() for _ in range(200)]
    first, second = _file_client(flag_file), _file_client(flag_file)
    try:
        seen = _SeenContexts()
        first.add_hook(seen)
        source = _source(first)
        phases = [source.decide(sid, Operation.WRITE).phase for sid in sessions]
        # A real rollout: both phases are served (each session has 1 in 2**200 to differ).
        assert set(phases) == {Phase.DUAL_WRITE, Phase.DOCDB_PRIMARY}
        assert not set(seen.keys) & {str(sid) for sid in sessions}
        # Every call, and another client (another instance of the fleet), agree.
        for _ in range(3):
            assert [source.decide(s, Operation.READ).phase for s in sessions] == phases
        other = _source(second)
        assert [other.decide(s, Operation.READ).phase for s in sessions] == phases
    finally:
        first.close()
        second.close()
    # And so does a new process (a restart), given the same secret.
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(flag_file), FLAG],
        input="\n".join([SECRET, *map(str, sessions)]) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert run.stdout.split() == [p.name for p in phases]


def test_missing_flag_falls_back_and_is_counted(ld: tuple[LDClient, TestData]) -> None:
    client, _ = ld
    reader = InMemoryMetricReader()
    source = _source(client, flag_key="no-such-flag", default_phase=Phase.DUAL_WRITE)
    repo, _stores = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
    assert repo.phase_of(uuid.uuid4(), Operation.READ) is Phase.DUAL_WRITE
    points = counter_points(reader, "sessionstore.phase.fallbacks")
    assert points == {(("sessionstore.reason", "FLAG_NOT_FOUND"),): 1}


def test_uninitialized_client_falls_back_and_is_counted() -> None:
    reader = InMemoryMetricReader()
    client = LDClient(Config("k", offline=True))
    try:
        source = _source(client, default_phase=Phase.SHADOW)
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
    source = _source(client)
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
    repo, stores = memory_repository(_source(client))
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
    source = _source(client, default_phase=Phase.DUAL_WRITE)
    repo, _ = memory_repository(source, meter_provider=MeterProvider(metric_readers=[reader]))
    assert repo.phase_of(uuid.uuid4(), Operation.READ) is Phase.DUAL_WRITE
    assert counter_points(reader, "sessionstore.phase.fallbacks") == {
        (("sessionstore.reason", "WRONG_TYPE"),): 1
    }
