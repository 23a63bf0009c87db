"""The status file of a real daemon, read by `upparat status` on a terminal and as JSON."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.e2e.device import NEW, Device, MiB, create_update, finished, outcome, wait_until
from upparat.devstack.procs import stop_process
from upparat.devstack.stack import Stack
from upparat.io import status

pytestmark = pytest.mark.slow

JOB = "upparat_status_2_0_0"
PERCENT = re.compile(rb"\]\s+(\d+)%")


def test_upparat_status_on_a_terminal_shows_the_download_moving_then_the_result(
    device: Device, stack: Stack
) -> None:
    path = stack.state_dir / "status.json"
    wait_until(
        lambda: (
            isinstance(found := status.read(path), status.StatusSnapshot)
            and found.connection is status.Connection.CONNECTED
        ),
        "the daemon's status file to say it is connected",
    )
    idle = status.read(path)
    assert isinstance(idle, status.StatusSnapshot)
    assert idle.phase is status.StatusPhase.IDLE
    assert idle.connection is status.Connection.CONNECTED
    assert idle.running_version is None  # not asked yet: no job has run

    master, slave = pty.openpty()
    os.set_blocking(master, False)
    watch = subprocess.Popen(
        [sys.executable, "-m", "upparat.cli", "status", "--file", str(path), "--watch",
         "--interval", "0.1"],
        stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    try:
        stack.files.rate = 1.5 * MiB  # about 4 s for the download
        create_update(stack, JOB, size=6 * MiB)
        screen = b""
        percents: set[int] = set()
        deadline = time.monotonic() + 30
        while len(percents) < 2 or b"downloading" not in screen:
            assert time.monotonic() < deadline, screen[-2000:]
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                screen += os.read(master, 65536)
                percents |= {int(p) for p in PERCENT.findall(screen) if 0 < int(p) < 100}
        assert f"downloading  {JOB}".encode() in screen
        stack.files.rate = None
        done = finished(stack, JOB)
        assert outcome(done) == ("SUCCEEDED", "complete_ready")
    finally:
        stop_process(watch)
        os.close(master)

    # The result is written with the terminal report: no wait beyond the job's end.
    final = json.loads(path.read_text())
    assert final["phase"] == "idle"
    assert final["jobId"] is None
    assert final["progress"] is None
    assert final["connection"] == "connected"
    assert final["lastResult"]["jobId"] == JOB
    assert final["lastResult"]["status"] == "SUCCEEDED"
    assert final["lastResult"]["state"] == "complete_ready"
    # The version hook's last answer: 2.0.0, asked after the soft restart.
    assert final["runningVersion"] == NEW
