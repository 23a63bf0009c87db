"""Step and in-progress timeouts -> TIMED_OUT, with a fake clock and with the ticker."""

from __future__ import annotations

import pytest

from tests.emulator.conftest import START
from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import EmulatorError, ExecutionStatus, FakeClock, JobsEmulator

DOC = {"op": "install"}


def test_step_timeout_times_out_and_notifies(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", statusDetails={"s": "x"}, stepTimeoutInMinutes=2)
    clock.advance(119)
    assert emulator.check_timeouts() == 0
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.IN_PROGRESS

    start = device.checkpoint()
    clock.advance(1)
    assert emulator.check_timeouts() == 1
    found = emulator.describe("fw-1", "dev-1")
    assert found.status is ExecutionStatus.TIMED_OUT
    assert found.details == {"s": "x"}
    assert found.version_number == 2  # a service change is not a device update
    assert found.last_updated_at == int(START) + 120
    device.barrier()
    assert device.bodies("notify", since=start) == [{"timestamp": int(START) + 120, "jobs": {}}]
    assert device.bodies("notify-next", since=start) == [{"timestamp": int(START) + 120}]

    outcome, body = device.update("fw-1", status="SUCCEEDED")
    assert (outcome, body["code"]) == ("rejected", "TerminalStateReached")


def test_resending_in_progress_resets_the_step_timer(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=1)
    clock.advance(50)
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=1)
    clock.advance(50)
    assert emulator.check_timeouts() == 0
    device.update("fw-1", status="IN_PROGRESS")  # no new value: the timer keeps running
    clock.advance(10)
    assert emulator.check_timeouts() == 1
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.TIMED_OUT


def test_minus_one_cancels_the_step_timer(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=1)
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=-1)
    clock.advance(7 * 24 * 3600)
    assert emulator.check_timeouts() == 0
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.IN_PROGRESS


def test_start_next_arms_the_step_timer(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.accepted("start-next", {"stepTimeoutInMinutes": 3})
    clock.advance(180)
    assert emulator.check_timeouts() == 1


def test_in_progress_timeout_runs_from_start_whatever_the_steps(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"], in_progress_timeout_minutes=10)
    clock.advance(3600)  # queued time does not count
    assert emulator.check_timeouts() == 0
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=8)
    clock.advance(300)
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=8)
    clock.advance(299)
    assert emulator.check_timeouts() == 0
    clock.advance(1)
    assert emulator.check_timeouts() == 1
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.TIMED_OUT


def test_finished_and_queued_executions_do_not_time_out(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("done", DOC, ["dev-1"], in_progress_timeout_minutes=1)
    emulator.create_job("queued", DOC, ["dev-1"], in_progress_timeout_minutes=1)
    device.update("done", status="IN_PROGRESS", stepTimeoutInMinutes=1)
    device.update("done", status="SUCCEEDED")
    clock.advance(3600)
    assert emulator.check_timeouts() == 0
    assert emulator.describe("done", "dev-1").status is ExecutionStatus.SUCCEEDED
    assert emulator.describe("queued", "dev-1").status is ExecutionStatus.QUEUED


@pytest.mark.parametrize("minutes", [0, 10081, -1])
def test_in_progress_timeout_must_be_1_to_10080(emulator: JobsEmulator, minutes: int) -> None:
    with pytest.raises(EmulatorError, match="1-10080"):
        emulator.create_job("fw-1", DOC, ["dev-1"], in_progress_timeout_minutes=minutes)


def test_ticker_fires_scaled_minutes_on_the_real_clock(broker: Mosquitto) -> None:
    # One "minute" lasts 0.05 s here; e2e tests use seconds_per_minute=1 the same way.
    with (
        JobsEmulator("127.0.0.1", broker.port, seconds_per_minute=0.05, tick_interval=0.02) as em,
        Device(broker.port) as dev,
    ):
        em.create_job("fw-1", DOC, ["dev-1"])
        start = dev.checkpoint()
        dev.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=2)
        found = em.wait_for_status("fw-1", "dev-1", "TIMED_OUT", timeout=3)
        assert found.status is ExecutionStatus.TIMED_OUT
        dev.wait(lambda m: m.suffix == "notify" and m.body["jobs"] == {}, since=start)
