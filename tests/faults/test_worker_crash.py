"""kill -9 of the daemon's job worker (upparat.worker, a child process: upparat.io.child)
in the middle of its work; the daemon lives on.

The worker killed during Install: the call ends as a call to an unreachable hook
server does (hooks.proto: the daemon waits and calls again, without spending a retry),
so Install runs again and the job SUCCEEDS. The worker killed mid-download: the
attempt ends interrupted, the core's backoff starts it again, and the new worker resumes
the partial file. Each kill is triggered by something observable (the held hook, the
file server's byte count), never by a sleep.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.faults.conftest import StackFactory
from tests.faults.device import Device, MiB, create_update
from tests.faults.observe import assert_ends_once, download_path, finished, journal, outcome
from upparat.devstack.faults import LogWatch, pid_alive, stalled_at, wait_until
from upparat.devstack.procs import child_pids
from upparat.devstack.stack import Stack


def worker_of(stack: Stack, module: str) -> int:
    """The PID of the daemon's worker running `module` (upparat.worker)."""
    assert stack.daemon is not None
    daemon = stack.daemon.pid

    def find() -> int | None:
        for pid in child_pids(daemon):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if module.encode() in argv:
                return pid
        return None

    return wait_until(find, f"the daemon's {module} process", 30)


def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), f"process {pid} to be gone", 30)


def test_the_hook_worker_killed_mid_install_the_job_calls_install_again_and_succeeds(
    device: Device, make_stack: StackFactory
) -> None:
    job = "upparat_worker_hook"
    stack = make_stack(device)
    log = LogWatch(stack.workdir / "daemon.log")
    device.hold("install")
    _, sha = create_update(stack, job, size=MiB)
    script = device.wait_held("install")
    worker = worker_of(stack, "upparat.worker")
    log.skip_to_end()
    kill_9(worker)
    # Its gRPC connection died with it: the hook server cancels the call and ends the
    # script; only then is the hook let go, so the next call is a clean second run.
    device.wait_gone(script)
    device.release("install")

    done = finished(stack, job)
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), stack.describe_for_humans(job)
    assert_ends_once(stack, job, "SUCCEEDED", "complete_ready")
    # The core's handling of an unreachable hook server, naming why.
    assert log.count("hook server unreachable") >= 1, log.read()
    assert f"job worker (pid {worker}) was killed by signal 9 (SIGKILL)" in log.read()
    # Install was called again for the same attempt (not a retry of the job's budget).
    installs = device.calls("install", job)
    assert [row[4] for row in installs] == ["0", "0"], installs
    runs = device.install_log()
    assert [row[0] for row in runs] == ["start", "start", "done"], runs
    assert device.overlaps() == []
    assert device.slot_sha256() == sha
    assert stack.files.served == {f"{job}.bundle": MiB}
    assert stack.daemon_starts == 1
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
    assert not download_path(stack, job).exists()
    assert journal(stack) is None


def test_the_download_worker_killed_mid_download_the_download_resumes(
    device: Device, make_stack: StackFactory
) -> None:
    job = "upparat_worker_download"
    bundle = f"{job}.bundle"
    size = 4 * MiB
    stack = make_stack(device)
    log = LogWatch(stack.workdir / "daemon.log")
    stack.files.rate = 4 * MiB
    _, sha = create_update(stack, job, size=size)
    path = download_path(stack, job)
    # The file server stands still from 1.5 MiB on until the worker is dead.
    with stalled_at(stack.files, bundle, 3 * MiB // 2):
        wait_until(lambda: path.exists() and path.stat().st_size > 0, "bytes on disk")
        worker = worker_of(stack, "upparat.worker")
        kill_9(worker)
        partial = path.stat().st_size
    assert 0 < partial < size

    done = finished(stack, job)
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), stack.describe_for_humans(job)
    assert_ends_once(stack, job, "SUCCEEDED", "complete_ready")
    reason = f"job worker (pid {worker}) was killed by signal 9 (SIGKILL)"
    assert f"download interrupted after {partial} bytes ({reason})" in log.read()
    # Resumed where the killed worker's file ended.
    ranges = [r for name, r, _ in stack.files.requests if name == bundle]
    assert ranges == [None, f"bytes={partial}-"], ranges
    assert device.slot_sha256() == sha
    assert stack.daemon_starts == 1
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
