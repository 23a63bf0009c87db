"""One update from the cloud's point of view: success, the ways it is skipped, the ways it fails.

Each test runs mosquitto, the jobs emulator, the file server, the shell hook server and
the daemon as processes, and checks what the cloud saw, what was served and what is on disk.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    NEW,
    OLD,
    Device,
    MiB,
    assert_in_order,
    create_update,
    details,
    download_path,
    finished,
    journal,
    outcome,
    reported,
    states,
    wait_until,
)
from upparat.core.model import JobId, JournalRecord, Phase
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

JOB = "upparat_fw_2_0_0"


def test_update_with_a_reboot_succeeds_once_the_device_is_back(
    device: Device, stack: Stack
) -> None:
    device.hard_reboots()
    # A progress line, then longer than progress_interval (1 s) without one: it is reported.
    device.script(
        "install",
        'echo "40% unpacking"\nsleep 2\n'
        'IFS= read -r header < "$4"\nprintf "%s\\n" "${header#version=}" > "$ROOT/staged"\n'
        'echo "100% written"\n',
    )
    create_update(stack, JOB, size=2 * MiB, meta="slot-b")

    progress = stack.wait_state(JOB, "installation_progress")
    assert details(progress) == {
        "state": "installation_progress",
        "message": "40% unpacking",
        "progress": "40",
    }
    wait_until(lambda: device.reboot_requested, "the restart hook to ask for a reboot")
    assert outcome(stack.execution(JOB)) == ("IN_PROGRESS", "reboot_start")
    # What the next boot needs was written before Restart was called.
    assert journal(stack) == JournalRecord(
        job_id=JobId(JOB), phase=Phase.RESTARTING, previous_version=OLD, execution_number=1
    )
    device.power_cycle(stack)

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert details(done)["message"] == "system is up"
    assert device.version == NEW
    seen = reported(stack, JOB)
    assert seen[-1] == ("SUCCEEDED", "complete_ready")
    assert {status for status, _ in seen[:-1]} == {"IN_PROGRESS"}
    assert_in_order(
        [state for _, state in seen],
        [
            "download_start",
            "installation_start",
            "installation_progress",
            "reboot_start",
            "complete_ready",
        ],
    )
    # Downloaded once in one request, then removed; nothing left in the journal.
    assert stack.files.served == {f"{JOB}.bundle": 2 * MiB}
    assert len(stack.files.requests) == 1
    wait_until(lambda: not download_path(stack, JOB).exists(), "the file to be removed")
    wait_until(lambda: journal(stack) is None, "the journal to be cleared")
    # The hooks ran in order with upparat 1.12's arguments.
    calls = device.calls()
    assert [c[0] for c in calls] == [
        "version",
        "download",
        "install",
        "restart",
        "version",
        "ready",
    ]
    install, restart = device.calls("install")[0], device.calls("restart")[0]
    # $4: the download as the hook server checked it, in its state_dir (given back after).
    copy = stack.hookserver_state_dir / "verified" / JOB
    assert install[2:] == ["0", "slot-b", str(copy)]
    assert not copy.exists()
    assert restart[2:] == ["0", "slot-b", ""]  # $4: the force flag, "" when not forced
    assert stack.daemon_starts == 2


def test_installed_version_succeeds_without_downloading(
    device: Device, make_stack: StackFactory
) -> None:
    device.version_file.write_text(NEW + "\n")
    stack = make_stack(device)
    create_update(stack, JOB)

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "version_already_installed")
    assert details(done)["message"] == f"version '{NEW}' is installed"
    assert reported(stack, JOB) == [("SUCCEEDED", "version_already_installed")]
    assert stack.files.bytes_served == 0
    assert stack.files.requests == []
    assert [c[0] for c in device.calls()] == ["version"]


def test_force_installs_although_the_version_matches(
    device: Device, make_stack: StackFactory
) -> None:
    device.version_file.write_text(NEW + "\n")
    stack = make_stack(device)
    create_update(stack, JOB, force=True)

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    # Forced: no version check and no download permission asked before installing.
    assert [c[0] for c in device.calls()] == ["install", "restart", "version", "ready"]
    assert device.calls("restart")[0][4] == "True"
    assert stack.files.served == {f"{JOB}.bundle": MiB}
    assert_in_order(states(stack, JOB), ["download_start", "installation_start", "complete_ready"])


def test_booting_the_old_version_after_the_reboot_is_a_rollback(
    device: Device, stack: Stack
) -> None:
    device.hard_reboots()
    create_update(stack, JOB)
    wait_until(lambda: device.reboot_requested, "the restart hook to ask for a reboot")
    device.power_cycle(stack, boots_into_new_slot=False)

    done = finished(stack, JOB)
    assert outcome(done) == ("FAILED", "rolled_back")
    assert details(done)["message"] == (
        f"Rolled back: expected version '{NEW}', the previous version '1.0.0' runs"
    )
    assert [c[0] for c in device.calls()][-2:] == ["restart", "version"]  # no ready check
    wait_until(lambda: journal(stack) is None, "the journal to be cleared")


def test_install_failure_fails_the_job_with_the_scripts_message(
    device: Device, stack: Stack
) -> None:
    device.script("install", 'echo "10% writing"\necho "flash write error at block 42"\nexit 1\n')
    create_update(stack, JOB)

    done = finished(stack, JOB)
    assert outcome(done) == ("FAILED", "installation_hook_failed")
    found = details(done)
    assert found["message"].endswith("exited with status 1: flash write error at block 42")
    assert found["reason"] == "HOOK_EXIT_NONZERO"
    assert_in_order(
        states(stack, JOB), ["download_start", "installation_start", "installation_hook_failed"]
    )
    assert [c[0] for c in device.calls()] == ["version", "download", "install"]
    wait_until(lambda: not download_path(stack, JOB).exists(), "the file to be removed")
    assert device.version == "1.0.0"


def test_ready_failure_fails_the_job(device: Device, stack: Stack) -> None:
    device.script("ready", 'echo "watchdog: app did not come up"\nexit 2\n')
    create_update(stack, JOB)

    done = finished(stack, JOB)
    assert outcome(done) == ("FAILED", "ready_hook_failed")
    assert details(done)["message"].endswith("exited with status 2: watchdog: app did not come up")
    assert [c[0] for c in device.calls()][-3:] == ["restart", "version", "ready"]


def test_hook_asking_to_retry_twice_then_succeeding(device: Device, stack: Stack) -> None:
    device.counted_script("download", retries=2, then='echo "download allowed"\n')
    create_update(stack, JOB, meta="m")

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    calls = device.calls("download")
    assert [c[2] for c in calls] == ["0", "1", "2"]  # $2: the retry count
    assert [c[3] for c in calls] == ["m", "m", "m"]
    assert int(calls[2][1]) >= 2  # $1: seconds since the first call, retry_interval is 1
    assert stack.files.served == {f"{JOB}.bundle": MiB}


def test_retries_exhausted_fail_the_job(device: Device, make_stack: StackFactory) -> None:
    # The last line asks for no wait at all (instead of retry_interval, 1 s).
    retry = 'echo "battery low"; echo "retry-after=0"'
    device.counted_script("download", retries=1000, then="", retry_body=retry)
    stack = make_stack(device, config={"hooks": {"max_retries": "2"}})
    create_update(stack, JOB)

    done = finished(stack, JOB)
    assert outcome(done) == ("FAILED", "download_hook_failed")
    message = details(done)["message"]
    assert message.startswith("gave up on the download hook after 3 attempts"), message
    assert message.endswith(": battery low")  # the line before the retry-after hint
    calls = device.calls("download")
    assert [c[2] for c in calls] == ["0", "1", "2"]
    assert int(calls[2][1]) < 2  # the hint was followed: 2 s had passed otherwise
    assert stack.files.requests == []
