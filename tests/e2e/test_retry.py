"""AWS job retries end to end: a retried execution is a new attempt, downloaded afresh.

The emulator retries like AWS IoT's jobExecutionsRetryConfig: a FAILED or TIMED_OUT
execution is queued again with the next executionNumber.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    NEW,
    Device,
    create_update,
    details,
    finished,
    journal,
    outcome,
    wait_until,
)
from upparat.core.model import JournalRecord, Phase

pytestmark = pytest.mark.slow

JOB = "upparat_retry_2_0_0"


def test_a_failed_execution_retried_by_the_cloud_downloads_again_and_succeeds(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    device.hard_reboots()
    create_update(stack, JOB, retries={"FAILED": 1})
    wait_until(lambda: device.reboot_requested, "the restart hook to ask for a reboot")
    # Attempt 1: the device comes back in the old slot: FAILED rolled_back, which the
    # cloud retries as execution 2.
    device.power_cycle(stack, boots_into_new_slot=False)
    wait_until(lambda: device.reboot_requested, "the retry's restart hook")
    device.power_cycle(stack)

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert done["executionNumber"] == 2
    assert device.version == NEW
    # Downloaded twice: the retry did not take the first attempt's file for its own.
    assert [path for path, _, _ in stack.files.requests].count(f"{JOB}.bundle") == 2
    assert journal(stack) is None


def test_a_timed_out_execution_retried_while_the_device_was_down_does_not_inherit_its_journal(
    device: Device, make_stack: StackFactory
) -> None:
    # One emulated minute is 5 s: the in-progress timeout runs out while the device is off.
    stack = make_stack(device, seconds_per_minute=5)
    device.hard_reboots()
    create_update(stack, JOB, retries={"TIMED_OUT": 1}, in_progress_timeout_minutes=1)
    wait_until(lambda: device.reboot_requested, "the restart hook to ask for a reboot")
    stack.stop_daemon()
    stack.stop_hookserver()
    first = journal(stack)
    assert isinstance(first, JournalRecord)
    assert first.execution_number == 1
    assert first.phase is Phase.RESTARTING
    # While the device is off, AWS times attempt 1 out and queues execution 2.
    stack.control.wait_for_status(JOB, stack.thing, "QUEUED", timeout=30)
    assert stack.execution(JOB)["executionNumber"] == 2
    # It boots the old slot (the update never took) and starts again.
    (device.root / "reboot-requested").unlink()
    (device.root / "staged").unlink()
    stack.start_hookserver()
    stack.start_daemon()
    wait_until(lambda: device.reboot_requested, "the retry's restart hook")
    device.power_cycle(stack)

    done = finished(stack, JOB)
    # Not rolled_back, not a boot counted against attempt 1: a fresh attempt that worked.
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), details(done)
    assert done["executionNumber"] == 2
    assert "journal is of execution 1" in stack.daemon_log()
    assert [c[0] for c in device.calls()].count("install") == 2
