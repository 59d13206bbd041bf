"""The rehearsal and the command line."""

from __future__ import annotations

import json

import pytest

from sessionstore.cli.main import main
from sessionstore.jobs import RehearsalConfig, run_rehearsal
from sessionstore.jobs.rehearsal import SCHEDULE
from sessionstore.phases import Phase
from sessionstore.repository import SessionRepository


def test_schedule_visits_every_phase_and_rolls_back() -> None:
    assert set(SCHEDULE) == set(Phase)
    top = SCHEDULE.index(Phase.DOCDB_ONLY)
    assert SCHEDULE[top + 1 :] == (
        Phase.RAMPDOWN,
        Phase.DOCDB_PRIMARY,
        Phase.SHADOW,
        Phase.DUAL_WRITE,
    )


async def test_rehearsal_converges() -> None:
    report = await run_rehearsal(RehearsalConfig(keys=80, ops_per_phase=150, fault_rate=0.2))
    assert report.ok
    assert report.faults_injected > 0
    assert report.repairs_enqueued > 0
    assert report.keys_checked > 0
    assert [p.phase for p in report.phases] == list(SCHEDULE)


async def test_rehearsal_detects_a_lost_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forget(self: SessionRepository, sid: object, *reason: object) -> None:
        return None

    monkeypatch.setattr(SessionRepository, "_enqueue", forget)
    report = await run_rehearsal(RehearsalConfig(keys=50, ops_per_phase=150, fault_rate=0.3))
    assert not report.ok
    assert report.diverged_keys > 0


def test_cli_rehearse_exits_zero_with_a_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rehearse", "--keys", "40", "--ops-per-phase", "60", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["diverged_keys"] == 0
    assert data["lost_writes"] == 0
    assert [p["phase"] for p in data["phases"]] == [p.value for p in SCHEDULE]


def test_cli_phase_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phases"]) == 0
    out = capsys.readouterr().out
    for phase in Phase:
        assert phase.name in out
        assert phase.value in out


@pytest.mark.parametrize(
    "argv", [["rehearse", "--writers", "0"], ["rehearse", "--fault-rate", "2"], ["nope"]]
)
def test_cli_bad_usage_exits_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
