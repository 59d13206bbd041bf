"""Every phase: which stores are written, in which order, which is read, what is compared."""

from __future__ import annotations

import pytest

from sessionstore import PHASE_PLANS, BackendUnavailableError, Phase, Store
from sessionstore.testing import memory_repository
from tests.helpers import make_session
from tests.phase_checks import EXPECTED, check_routing


def test_every_phase_has_a_plan_and_an_expectation() -> None:
    assert set(PHASE_PLANS) == set(Phase) == set(EXPECTED)


def test_phase_values_are_launchdarkly_stages() -> None:
    from ldclient.migrations import Stage

    assert {p.value for p in Phase} == {s.value for s in Stage}


@pytest.mark.parametrize("phase", list(Phase))
async def test_writes_go_in_order_and_reads_from_the_right_store(phase: Phase) -> None:
    repo, stores = memory_repository(phase)
    async with repo:
        await check_routing(phase, repo, stores)


@pytest.mark.parametrize("phase", list(Phase))
async def test_authoritative_failure_fails_the_call_and_skips_the_secondary(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    repo, stores = memory_repository(phase)
    auth = getattr(stores, plan.authoritative.value)
    async with repo:
        auth.fail_next(1, operation="save")
        with pytest.raises(BackendUnavailableError):
            await repo.save(make_session())
        assert [c.store for c in stores.calls] == [plan.authoritative.value]
        assert stores.cassandra.inner.records() == {} == stores.documentdb.inner.records()
        # The failure may have come after the write landed: where both stores are
        # written, the key is queued so that the repair worker settles it.
        claimed = await stores.repairs.claim(10)
        if plan.secondary is None:
            assert claimed == []
        else:
            assert [t.reason for t in claimed] == ["authoritative_failed"]


@pytest.mark.parametrize("phase", [p for p in Phase if PHASE_PLANS[p].secondary is not None])
async def test_secondary_failure_is_queued_and_the_call_succeeds(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    assert plan.secondary is not None
    repo, stores = memory_repository(phase)
    async with repo:
        getattr(stores, plan.secondary.value).fail_next(1, operation="save")
        saved = await repo.save(make_session())
        assert await repo.get(saved.session_id) == saved
        claimed = await stores.repairs.claim(10)
        assert [t.session_id for t in claimed] == [saved.session_id]
        assert claimed[0].reason == "secondary_write_failed"


@pytest.mark.parametrize("phase", [p for p in Phase if PHASE_PLANS[p].compare])
async def test_compare_phases_queue_a_stale_secondary(phase: Phase) -> None:
    plan = PHASE_PLANS[phase]
    repo, stores = memory_repository(phase)
    other = getattr(stores, plan.read.other.value)
    async with repo:
        other.fail_next(1, operation="save")
        saved = await repo.save(make_session())
        await stores.repairs.ack((await stores.repairs.claim(1))[0])  # forget the write failure
        stores.calls.clear()
        assert await repo.get(saved.session_id) == saved
        await repo.wait_for_comparisons()
        claimed = await stores.repairs.claim(10)
        assert [(t.session_id, t.reason) for t in claimed] == [(saved.session_id, "read_missing")]


def test_plans_name_each_store_once() -> None:
    for plan in PHASE_PLANS.values():
        assert len(set(plan.writes)) == len(plan.writes)
        assert plan.read is plan.authoritative
        assert (plan.secondary is None) or plan.secondary is plan.authoritative.other
        assert isinstance(plan.read, Store)
