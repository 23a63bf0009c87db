"""A job cancelled in the cloud (`cancel_job(force=True)`) while the device works on it.

The daemon must stop the phase it is in (the download and its partial file, the install
script's processes, the blocking restart script) and take the next job as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.device import (
    Device,
    MiB,
    create_update,
    download_path,
    finished,
    journal,
    outcome,
    pid_gone,
    wait_until,
)
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

JOB = "upparat_fw_2_0_0"
NEXT = "upparat_fw_2_0_1"


def job_files(stack: Stack, job_id: str) -> list[Path]:
    folder = download_path(stack, job_id).parent
    return sorted(folder.glob(f"{job_id}*")) if folder.exists() else []


def cancel(stack: Stack, job_id: str) -> None:
    stack.control.cancel_job(job_id, force=True)
    assert stack.execution(job_id)["status"] == "CANCELED"


def next_job_succeeds(stack: Stack) -> None:
    create_update(stack, NEXT, version="2.0.1")
    assert outcome(finished(stack, NEXT)) == ("SUCCEEDED", "complete_ready")


def test_cancel_during_download_stops_it_and_removes_the_partial_file(
    device: Device, stack: Stack
) -> None:
    bundle = f"{JOB}.bundle"
    stack.files.rate = 512 * 1024  # 4 MiB would take 8 s
    create_update(stack, JOB, size=4 * MiB)
    wait_until(lambda: stack.files.served.get(bundle, 0) >= 512 * 1024, "the download to run")
    wait_until(lambda: job_files(stack, JOB), "the partial file")

    cancel(stack, JOB)
    wait_until(lambda: stack.files.active == 0, "the daemon to close the download connection")
    wait_until(lambda: not job_files(stack, JOB), "the partial file and sidecar to be removed")
    served = stack.files.served[bundle]
    assert served < 4 * MiB
    wait_until(lambda: journal(stack) is None, "the journal to be cleared")
    assert [c[0] for c in device.calls()] == ["version", "download"]

    stack.files.rate = None
    next_job_succeeds(stack)
    assert stack.files.served[bundle] == served  # the cancelled download never went on
    assert stack.execution(JOB)["status"] == "CANCELED"


def test_cancel_during_install_kills_the_install_script(device: Device, stack: Stack) -> None:
    device.script(
        "install",
        'echo $$ > "$ROOT/install.pid"\n'
        "sleep 60 &\n"
        'echo $! > "$ROOT/install-sleep.pid"\n'
        'echo "10% writing"\n'
        "wait\n",
    )
    create_update(stack, JOB)
    wait_until(lambda: (device.root / "install-sleep.pid").exists(), "the install script to run")
    script, child = device.pid("install"), device.pid("install-sleep")

    cancel(stack, JOB)
    wait_until(lambda: pid_gone(script) and pid_gone(child), "the install processes to end")
    wait_until(lambda: not job_files(stack, JOB), "the downloaded file to be removed")
    wait_until(lambda: journal(stack) is None, "the journal to be cleared")
    assert device.version == "1.0.0"

    device.default_script("install")
    next_job_succeeds(stack)
    assert device.version == "2.0.1"


def test_cancel_during_restart_stops_the_restart_script(device: Device, stack: Stack) -> None:
    device.hard_reboots()
    create_update(stack, JOB)
    wait_until(lambda: device.reboot_requested, "the restart hook to ask for a reboot")
    script, child = device.pid("restart"), device.pid("restart-sleep")

    cancel(stack, JOB)
    wait_until(lambda: pid_gone(script) and pid_gone(child), "the restart processes to end")
    wait_until(lambda: journal(stack) is None, "the journal to be cleared")
    assert not job_files(stack, JOB)

    device.soft_restarts()
    next_job_succeeds(stack)
    assert device.version == "2.0.1"


def test_job_cancelled_while_the_daemon_was_stopped_leaves_no_files(stack: Stack) -> None:
    stack.files.rate = 512 * 1024
    create_update(stack, JOB, size=4 * MiB)
    wait_until(lambda: stack.files.served.get(f"{JOB}.bundle", 0) >= 512 * 1024, "the download")
    assert stack.stop_daemon() == 0
    assert job_files(stack, JOB)  # kept for a resume

    cancel(stack, JOB)
    stack.start_daemon()
    wait_until(lambda: journal(stack) is None, "the journal to forget the cancelled job")
    wait_until(lambda: not job_files(stack, JOB), "the partial file to be removed", timeout=2)
