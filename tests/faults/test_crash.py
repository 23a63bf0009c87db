"""kill -9 of the daemon in every phase of a job, then a fresh start: nothing is lost.

Each kill is triggered by something observable (the daemon's describe request on the
broker, a hook script blocking where the test holds it, the file server's byte count,
at which the server is stalled until the kill), never by a sleep. After the restart the job must end in the status that is true for the
device, a download must resume (re-fetching at most one 1 MiB chunk), and a hook that
was interrupted is simply called again: hooks are idempotent per job id (hooks.proto).
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.conftest import THING, StackFactory
from tests.faults.device import NEW, OLD, Device, MiB, create_update
from tests.faults.observe import (
    assert_ends_once,
    details,
    download_path,
    finished,
    journal,
    outcome,
)
from upparat.devstack.faults import MqttSpy, crash_hookserver, stalled_at, wait_until
from upparat.devstack.stack import Stack

JOB = "upparat_crash_2_0_0"
BUNDLE = f"{JOB}.bundle"
SIZE = 4 * MiB
RATE = 4 * MiB
"""Bytes per second the file server sends: the download lasts a second."""

PHASES = (
    "selecting",
    "version_check",
    "download_10",
    "download_50",
    "download_90",
    "install",
    "reboot_start_then_reboot",
    "reboot_start_no_reboot",
    "verifying",
)


def kill_daemon(stack: Stack) -> None:
    assert stack.daemon is not None
    assert stack.daemon.poll() is None, "the daemon died early"
    assert stack.stop_daemon(signal.SIGKILL) == -signal.SIGKILL


def wait_idle(stack: Stack) -> None:
    """The daemon has asked for its jobs once (it is up and subscribed)."""
    wait_until(
        lambda: stack.control.history(thing=THING, operation="get-pending"),
        "the daemon to ask for its pending jobs",
        60,
    )


def kill_in_hook(stack: Stack, device: Device, hook: str) -> int:
    """Wait until the held `hook` blocks, kill -9 the daemon there; returns the script's PID.

    The hook server sees the call end and stops the script; only then is the hook let go,
    so the next daemon's call is a clean second run.
    """
    pid = device.wait_held(hook)
    kill_daemon(stack)
    device.wait_gone(pid)
    device.release(hook)
    return pid


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_in_every_phase_then_restart(
    phase: str, device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    size = SIZE if phase.startswith("download") else MiB
    expected = ("SUCCEEDED", "complete_ready")
    partial = served_at_kill = 0

    match phase:
        case "selecting":
            wait_idle(stack)
            with MqttSpy(stack.broker.port, f"$aws/things/{THING}/jobs/#") as spy:
                stack.control.pause()  # hold the describe, so the kill lands while selecting
                _, sha = create_update(stack, JOB, size=size)
                spy.wait_for_topic(f"$aws/things/{THING}/jobs/{JOB}/get")
                kill_daemon(stack)
                stack.control.resume()
            assert device.calls() == []
        case "version_check":
            device.hold("version")
            _, sha = create_update(stack, JOB, size=size)
            kill_in_hook(stack, device, "version")
        case "download_10" | "download_50" | "download_90":
            stack.files.rate = RATE
            _, sha = create_update(stack, JOB, size=size)
            threshold = size * int(phase.removeprefix("download_")) // 100
            # The file server stands still from the threshold on until the daemon is dead.
            with stalled_at(stack.files, BUNDLE, threshold) as served_at_kill:
                # What arrived reaches the file within download.HAND_ON_AFTER of the stall.
                path = download_path(stack, JOB)
                wait_until(lambda: path.exists() and path.stat().st_size > 0, "bytes on disk")
                kill_daemon(stack)
            partial = download_path(stack, JOB).stat().st_size
            assert 0 < partial < size
        case "install":
            device.hold("install")
            _, sha = create_update(stack, JOB, size=size)
            kill_in_hook(stack, device, "install")
        case "reboot_start_then_reboot":
            device.hold("restart")
            _, sha = create_update(stack, JOB, size=size)
            pid = device.wait_held("restart")
            # Restart is called only once the cloud accepted reboot_start.
            assert outcome(stack.execution(JOB)) == ("IN_PROGRESS", "reboot_start")
            kill_daemon(stack)
            # The reboot the hook started goes on without the daemon: everything stops and
            # the device comes back in the new slot.
            crash_hookserver(stack)
            device.kill_script(pid)
            device.boot_new_slot()
            device.release("restart")
            stack.start_hookserver()
        case "reboot_start_no_reboot":
            device.hold("restart")
            _, sha = create_update(stack, JOB, size=size)
            device.wait_held("restart")
            assert outcome(stack.execution(JOB)) == ("IN_PROGRESS", "reboot_start")
            kill_in_hook(stack, device, "restart")
            # No reboot happened: the device still runs the old version, and the daemon
            # cannot tell this from a reboot into the old slot: a rollback.
            expected = ("FAILED", "rolled_back")
        case "verifying":
            device.hold("ready")
            _, sha = create_update(stack, JOB, size=size)
            kill_in_hook(stack, device, "ready")
        case _:
            raise AssertionError(phase)

    stack.start_daemon()
    done = finished(stack, JOB)
    assert outcome(done) == expected, stack.describe_for_humans(JOB)
    assert_ends_once(stack, JOB, *expected)
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
    assert stack.daemon_starts == 2
    # Nothing of the job is left on the device but what it installed.
    assert not download_path(stack, JOB).exists()
    assert journal(stack) is None
    assert device.overlaps() == []

    if expected[0] == "SUCCEEDED":
        assert device.version == NEW
        assert device.slot_sha256() == sha
    else:
        assert device.version == OLD
        assert details(done)["message"] == (
            f"Rolled back: expected version '{NEW}', the previous version '{OLD}' runs"
        )

    served = stack.files.bytes_served
    assert stack.files.served == {BUNDLE: served}
    if phase.startswith("download"):
        # Resumed where the file on disk ended: at most one chunk was fetched twice.
        ranges = [r for path, r, _ in stack.files.requests if path == BUNDLE]
        assert ranges == [None, f"bytes={partial}-"], ranges
        assert served_at_kill - partial <= MiB
        assert served - size <= MiB
    else:
        # Killed before or after the download: the file was fetched exactly once.
        assert served == size, stack.files.requests

    installs = device.install_log()
    match phase:
        case "selecting":
            assert len(device.calls("version", JOB)) == 2  # before the update, and verifying
        case "version_check":
            assert len(device.calls("version", JOB)) == 3  # the killed call was made again
        case "install":
            # The interrupted run never finished; the run started again did, alone.
            starts = [row[2] for row in installs if row[0] == "start"]
            dones = [row[2] for row in installs if row[0] == "done"]
            assert len(starts) == 2, installs
            assert dones == starts[1:], installs
        case "reboot_start_then_reboot":
            assert len(device.calls("restart", JOB)) == 1  # never called again after the boot
        case "reboot_start_no_reboot":
            assert len(device.calls("restart", JOB)) == 1
            assert len(device.calls("ready", JOB)) == 0
        case "verifying":
            assert len(device.calls("ready", JOB)) == 2
        case _:
            pass
    if phase != "install":
        assert [row[0] for row in installs] == ["start", "done"], installs
