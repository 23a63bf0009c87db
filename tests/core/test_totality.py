"""Every state class x every event type: `step` returns and keeps its promises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.playbook import check_declared
from tests.core.strategies import (
    EVENT_CLASSES,
    EVENTS,
    STAGE_CLASSES,
    STATE_IN,
    aligned,
    harvest,
    now,
)
from upparat.core import machine
from upparat.core.commands import CallHook, Exit, Persist, UpdateJob
from upparat.core.events import Event, HookFinished, UpdateAccepted
from upparat.core.model import HookKind, Phase, Settings


def test_the_strategies_cover_every_state_and_event_class() -> None:
    assert len(STAGE_CLASSES) == 16
    assert set(EVENTS) == set(EVENT_CLASSES)


@pytest.mark.parametrize("stage_class", STAGE_CLASSES, ids=lambda c: c.__name__)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), at=now)
def test_every_event_in_every_state_returns(
    stage_class: type[machine.Stage], data: st.DataObject, at: float
) -> None:
    state = data.draw(STATE_IN[stage_class])
    pool = harvest(state)
    # One event of every type against the same state: every pair, every example.
    for event_class in EVENT_CLASSES:
        event = aligned(data, data.draw(EVENTS[event_class], label=event_class.__name__), pool)
        after, commands = machine.step(state, event, at)
        assert isinstance(after, machine.State)
        assert isinstance(after.stage, STAGE_CLASSES)
        check_declared(state, event, after)
        check_promises(state, after, commands)


def check_promises(
    before: machine.State, after: machine.State, commands: tuple[object, ...]
) -> None:
    if isinstance(before.stage, machine.Stopped):
        assert commands == ()
        assert after == before
    for i, command in enumerate(commands):
        if isinstance(command, UpdateJob):
            for key, value in command.status_details:
                assert key in {"state", "message", "progress", "bytes", "reason"}
                assert 1 <= len(value) <= 1024
        if isinstance(command, CallHook) and command.hook is HookKind.RESTART:
            previous = commands[i - 1] if i else None
            assert isinstance(previous, Persist)
            assert previous.record is not None
            assert previous.record.phase is Phase.RESTARTING
            assert previous.record.job_id == command.context.job_id
        if isinstance(command, Exit):
            assert i == len(commands) - 1
            assert isinstance(after.stage, machine.Stopped)


def test_the_initial_state_waits_for_started() -> None:
    state = machine.initial_state(Settings())
    assert state.stage == machine.Booting()
    assert state.settings == Settings()


def test_the_table_has_one_row_per_event_type() -> None:
    assert [row.event for row in machine.ROWS] == list(EVENT_CLASSES)
    assert set(machine.TABLE) == set(EVENT_CLASSES)


@pytest.mark.parametrize("row", machine.ROWS, ids=lambda r: r.event.__name__)
def test_every_row_places_every_stage_once(row: machine.Row[Event]) -> None:
    """Each stage is either declared unmoved by the event or a source of its arrows."""
    sources = {s for arrow in row.arrows for s in arrow.sources}
    assert not sources & set(row.stays), "a stage both stays and moves"
    assert sources | set(row.stays) == set(STAGE_CLASSES), "a stage the row does not place"
    assert len(row.stays) == len(set(row.stays))


def test_stopped_stays_stopped() -> None:
    for row in machine.ROWS:
        assert machine.Stopped in row.stays
        assert machine.reachable(machine.Stopped, row.event) == {machine.Stopped}


def test_reachable_follows_the_arrows_and_what_comes_after_every_event() -> None:
    reach = machine.reachable(machine.Installing, HookFinished)
    assert {machine.Installing, machine.ReportingReboot, machine.Restarting} <= reach
    assert machine.Downloading not in reach
    assert machine.reachable(machine.Idle, UpdateAccepted) == {machine.Idle}
