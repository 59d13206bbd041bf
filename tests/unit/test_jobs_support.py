"""Checkpoint stores, the throttle, connection settings."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessionstore import (
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    Store,
)
from sessionstore.jobs import (
    CheckpointError,
    CheckpointStore,
    ConnectionSettings,
    MemoryCheckpointStore,
    RateLimiter,
    RetryPolicy,
    SqliteCheckpointStore,
    Throttle,
    UnitState,
)
from sessionstore.jobs.settings import mask_uri

# -- checkpoints -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def checkpoints(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[CheckpointStore]:
    store: CheckpointStore = (
        MemoryCheckpointStore()
        if request.param == "memory"
        else SqliteCheckpointStore(tmp_path / "cp.db")
    )
    async with store:
        yield store


async def test_checkpoint_records_unit_lifecycle(checkpoints: CheckpointStore) -> None:
    await checkpoints.begin_job("j", "plan-a")
    await checkpoints.unit_started("j", "u1")
    await checkpoints.unit_failed("j", "u1", "BackendTimeoutError: slow")
    await checkpoints.unit_started("j", "u1")
    await checkpoints.unit_done("j", "u1", {"sessions": 3}, {"status": 1})
    await checkpoints.unit_started("j", "u2")
    units = await checkpoints.units("j")
    assert units["u1"].state is UnitState.DONE
    assert units["u1"].starts == 2
    assert dict(units["u1"].counts) == {"sessions": 3}
    assert dict(units["u1"].fields) == {"status": 1}
    assert units["u2"].state is UnitState.RUNNING
    assert await checkpoints.units("other") == {}
    assert await checkpoints.job_fingerprint("j") == "plan-a"


async def test_checkpoint_refuses_another_plan_unless_restarted(
    checkpoints: CheckpointStore,
) -> None:
    await checkpoints.begin_job("j", "plan-a")
    await checkpoints.unit_done("j", "u1", {}, {})
    await checkpoints.begin_job("j", "plan-a")  # resume: fine
    with pytest.raises(ConfigurationError, match="different plan"):
        await checkpoints.begin_job("j", "plan-b")
    await checkpoints.begin_job("j", "plan-b", restart=True)
    assert await checkpoints.units("j") == {}
    assert await checkpoints.job_fingerprint("j") == "plan-b"


async def test_checkpoint_lists_jobs_of_a_plan_newest_first(
    checkpoints: CheckpointStore,
) -> None:
    await checkpoints.begin_job("old", "plan-a")
    await checkpoints.unit_done("old", "u1", {}, {})
    await checkpoints.unit_done("old", "u2", {}, {})
    await asyncio.sleep(0.01)
    await checkpoints.begin_job("other", "plan-b")
    await asyncio.sleep(0.01)
    await checkpoints.begin_job("new", "plan-a")
    await checkpoints.unit_done("new", "u1", {}, {})
    await checkpoints.unit_failed("new", "u2", "BackendTimeoutError: slow")
    same_plan = await checkpoints.jobs(fingerprint="plan-a")
    assert [(j.job, j.units_done) for j in same_plan] == [("new", 1), ("old", 2)]
    assert same_plan[0].started_at > same_plan[1].started_at
    assert same_plan[0].started_at.tzinfo is dt.UTC
    assert [j.job for j in await checkpoints.jobs()] == ["new", "other", "old"]
    assert await checkpoints.job("other") == (await checkpoints.jobs(fingerprint="plan-b"))[0]
    assert await checkpoints.job("missing") is None
    await asyncio.sleep(0.01)
    await checkpoints.begin_job("old", "plan-a", restart=True)  # begun again, from nothing
    restarted = await checkpoints.job("old")
    assert restarted is not None and restarted.units_done == 0
    assert restarted.started_at > same_plan[0].started_at


async def test_sqlite_checkpoints_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    async with SqliteCheckpointStore(path) as first:
        await first.begin_job("j", "p")
        await first.unit_done("j", "u", {"records": 7}, {})
    async with SqliteCheckpointStore(path) as second:
        assert (await second.units("j"))["u"].counts["records"] == 7


async def test_unusable_checkpoint_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint file"):
        async with SqliteCheckpointStore(tmp_path):  # a directory
            pass


# -- throttle --------------------------------------------------------------------------


async def test_rate_limiter_holds_the_long_run_rate() -> None:
    limiter = RateLimiter(2000.0)
    start = time.monotonic()
    for _ in range(10):
        await limiter.acquire(300)  # 3000 tokens: 2000 of burst, then 1000 at 2000/s
    # The last acquire may leave the bucket in debt: (3000 - 2000 - 300) / 2000 s at least.
    assert time.monotonic() - start >= 0.33


async def test_unlimited_rate_limiter_never_waits() -> None:
    limiter = RateLimiter(None)
    await limiter.acquire(10**9)
    limiter.back_off()
    assert limiter.current_rate is None


def test_back_off_halves_to_a_floor_then_recovers_linearly() -> None:
    now = [0.0]
    limiter = RateLimiter(1000.0, floor_ratio=0.1, recovery_seconds=10.0, clock=lambda: now[0])
    for _ in range(10):
        limiter.back_off()
    assert limiter.current_rate == pytest.approx(100.0)
    now[0] += 5.0  # half the recovery time: +500/s
    assert limiter.current_rate == pytest.approx(600.0)
    now[0] += 100.0
    assert limiter.current_rate == pytest.approx(1000.0)
    assert limiter.back_offs == 10


def test_retry_delays_grow_and_stay_bounded() -> None:
    policy = RetryPolicy(attempts=8, base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    for attempt in range(8):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize("error", [BackendTimeoutError, BackendUnavailableError])
async def test_throttle_retries_timeouts_and_overloads(error: type[Exception]) -> None:
    throttle = Throttle(
        RateLimiter(1e6), RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002)
    )
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise error("busy", store="cassandra")  # type: ignore[call-arg]
        return "ok"

    assert await throttle.call(flaky) == "ok"
    assert (calls, throttle.retries, throttle.limiter.back_offs) == (4, 3, 3)
    assert throttle.limiter.current_rate is not None and throttle.limiter.current_rate < 1e6


async def test_throttle_gives_up_after_its_attempts_and_never_retries_rejections() -> None:
    throttle = Throttle(policy=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001))
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise BackendUnavailableError("down", store="documentdb")

    with pytest.raises(BackendUnavailableError):
        await throttle.call(down)
    assert calls == 3

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise BackendRejectedError("auth", store="documentdb")

    calls = 0
    with pytest.raises(BackendRejectedError):
        await throttle.call(refused)
    assert calls == 1


async def test_concurrent_acquirers_share_one_bucket() -> None:
    limiter = RateLimiter(1000.0)
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire(100) for _ in range(15)))  # 1500 tokens
    assert time.monotonic() - start >= 0.37  # (1500 - 1000 - 100) / 1000 s


# -- connection settings ---------------------------------------------------------------

SECRET = "hunter2-s3cret"


def test_settings_from_environment_and_flags(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "SESSIONSTORE_TLS_CA_FILE": str(ca),
        "SESSIONSTORE_CASSANDRA_HOSTS": "10.0.0.1, 10.0.0.2",
        "SESSIONSTORE_CASSANDRA_PORT": "9142",
        "SESSIONSTORE_CASSANDRA_KEYSPACE": "exams",
        "SESSIONSTORE_CASSANDRA_PASSWORD": SECRET,
        "SESSIONSTORE_CASSANDRA_USERNAME": "svc",
        "SESSIONSTORE_MONGODB_URI": f"mongodb://app:{SECRET}@docdb:27017/?tls=true",
        "SESSIONSTORE_DOCUMENTDB_DATABASE": "assessments",
        "LAUNCHDARKLY_SDK_KEY": SECRET,
    }
    settings = ConnectionSettings.from_env(env, cassandra_port=9043, cassandra_table=None)
    assert settings.cassandra_hosts == ("10.0.0.1", "10.0.0.2")
    assert settings.cassandra_port == 9043  # the flag wins
    assert settings.cassandra_table == "sessions"  # None flags do not override
    cassandra = settings.cassandra_settings()
    assert cassandra.keyspace == "exams"
    assert cassandra.password.get_secret_value() == SECRET
    assert cassandra.ssl_ca_file == ca
    documentdb = settings.documentdb_settings()
    assert documentdb.database == "assessments"
    assert documentdb.tls and documentdb.tls_ca_file == ca
    assert "(TLS)" in settings.describe(Store.DOCUMENTDB)
    shown = repr(settings) + str(settings) + settings.describe(Store.CASSANDRA)
    shown += settings.describe(Store.DOCUMENTDB) + repr(cassandra) + repr(documentdb)
    assert SECRET not in shown
    assert "mongodb://app:***@docdb:27017/ (options hidden)" in settings.describe(Store.DOCUMENTDB)


def test_settings_errors_name_the_variable_never_the_value() -> None:
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_CASSANDRA_PORT") as info:
        ConnectionSettings.from_env({"SESSIONSTORE_CASSANDRA_PORT": SECRET})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_CASSANDRA_KEYSPACE"):
        ConnectionSettings.from_env({}).cassandra_settings()
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_MONGODB_URI"):
        ConnectionSettings.from_env({}).documentdb_settings()
    bad_uri = {
        "SESSIONSTORE_MONGODB_URI": f"http://u:{SECRET}@x",
        "SESSIONSTORE_DOCUMENTDB_DATABASE": "d",
    }
    with pytest.raises(ConfigurationError) as info:
        ConnectionSettings.from_env(bad_uri).documentdb_settings()
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match="keyspace"):
        ConnectionSettings.from_env(
            {"SESSIONSTORE_CASSANDRA_KEYSPACE": "no-dashes"}
        ).cassandra_settings()


def test_plaintext_needs_an_explicit_opt_out_in_the_environment_or_flags() -> None:
    env = {
        "SESSIONSTORE_CASSANDRA_KEYSPACE": "exams",
        "SESSIONSTORE_CASSANDRA_USERNAME": "svc",
        "SESSIONSTORE_CASSANDRA_PASSWORD": SECRET,
        "SESSIONSTORE_MONGODB_URI": f"mongodb://app:{SECRET}@127.0.0.1:27117/?tls=false",
        "SESSIONSTORE_DOCUMENTDB_DATABASE": "assessments",
    }
    settings = ConnectionSettings.from_env(env)
    with pytest.raises(
        ConfigurationError, match="SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS"
    ) as cassandra_error:
        settings.cassandra_settings()
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_DOCUMENTDB_TLS") as documentdb_error:
        settings.documentdb_settings()
    for error in (cassandra_error.value, documentdb_error.value):
        assert SECRET not in str(error) and "127.0.0.1" not in str(error)

    opted_out = {
        **env,
        "SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS": "true",
        "SESSIONSTORE_DOCUMENTDB_TLS": "false",
    }
    for settings in (
        ConnectionSettings.from_env(opted_out),
        ConnectionSettings.from_env(
            env, cassandra_allow_plaintext_credentials=True, documentdb_tls=False
        ),
    ):
        assert settings.cassandra_settings().allow_plaintext_credentials
        assert settings.documentdb_settings().tls is False
        assert "(plaintext)" in settings.describe(Store.DOCUMENTDB)
        assert "plaintext credentials" in settings.describe(Store.CASSANDRA)
    with pytest.raises(ConfigurationError, match="SESSIONSTORE_DOCUMENTDB_TLS"):
        ConnectionSettings.from_env({**env, "SESSIONSTORE_DOCUMENTDB_TLS": "maybe"})


def test_the_shared_ca_file_does_not_contradict_the_documentdb_opt_out(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "SESSIONSTORE_TLS_CA_FILE": str(ca),
        "SESSIONSTORE_DOCUMENTDB_TLS": "false",
        "SESSIONSTORE_MONGODB_URI": "mongodb://127.0.0.1:27117/",
        "SESSIONSTORE_DOCUMENTDB_DATABASE": "assessments",
    }
    documentdb = ConnectionSettings.from_env(env).documentdb_settings()
    assert (documentdb.tls, documentdb.tls_ca_file) == (False, None)
    own_ca = {**env, "SESSIONSTORE_DOCUMENTDB_TLS_CA_FILE": str(ca)}
    with pytest.raises(ConfigurationError, match="tls_ca_file"):
        ConnectionSettings.from_env(own_ca).documentdb_settings()


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    env = {
        "SESSIONSTORE_CASSANDRA_KEYSPACE": "k",
        "SESSIONSTORE_TLS_CA_FILE": str(tmp_path / "missing.pem"),
        "SESSIONSTORE_MONGODB_URI": "mongodb://h/",
        "SESSIONSTORE_DOCUMENTDB_DATABASE": "d",
    }
    settings = ConnectionSettings.from_env(env)
    with pytest.raises(ConfigurationError, match="CA file"):
        settings.cassandra_settings()
    with pytest.raises(ConfigurationError, match="CA file"):
        settings.documentdb_settings()


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("mongodb://h:27017/", "mongodb://h:27017/"),
        ("mongodb://user@h/", "mongodb://user@h/"),
        (
            "mongodb+srv://u:p%40ss@cluster.example/db?authSource=admin",
            "mongodb+srv://u:***@cluster.example/db (options hidden)",
        ),
    ],
)
def test_mask_uri(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


def test_jobs_public_surface_is_sorted_and_documented() -> None:
    import sessionstore.jobs

    names = list(sessionstore.jobs.__all__)
    style = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    assert names == style
    for name in names:
        obj = getattr(sessionstore.jobs, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name
