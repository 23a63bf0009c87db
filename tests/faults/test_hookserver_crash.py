"""The hook server killed with SIGKILL in the middle of an install, then started again.

hooks.proto: UNAVAILABLE means "the hook server is down or restarting; the daemon waits
and calls again; this does not spend one of the job's retries". So the job waits (it does
not fail), and once the server is back Install is called again, with the same attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

from hookservers.shell.main import PRIVATE_RECORD
from tests.faults.conftest import StackFactory
from tests.faults.device import Device, MiB, create_update
from tests.faults.observe import assert_ends_once, download_path, finished, journal, outcome
from upparat.devstack.faults import LogWatch, crash_hookserver, wait_connectable, wait_until

JOB = "upparat_hookserver_crash"


def test_hook_server_killed_mid_install_the_daemon_waits_and_installs_again(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    daemon_log = LogWatch(stack.workdir / "daemon.log")
    device.hold("install")
    _, sha = create_update(stack, JOB, size=MiB)
    pid = device.wait_held("install")
    daemon_log.skip_to_end()
    # The gRPC server runs (a call is in flight): its private directory is recorded.
    private = Path((stack.hookserver_state_dir / PRIVATE_RECORD).read_text().strip())
    assert (private / "grpc.sock").exists()

    crash_hookserver(stack)
    # A script outlives its server unless something ends it: under systemd the unit's
    # cgroup is killed with the server (KillMode=control-group). Do what systemd does.
    device.kill_script(pid)
    device.release("install")

    # The daemon calls again and again with a growing delay; the job stays IN_PROGRESS.
    wait_until(
        lambda: daemon_log.count("hook server unreachable") >= 2,
        "the daemon to call the absent hook server twice",
        60,
    )
    delays = [
        int(d) for d in re.findall(r"unreachable .*; calling again in (\d+) s", daemon_log.read())
    ]
    assert delays[:2] == [1, 2], delays  # backing off, not failing
    status, state = outcome(stack.execution(JOB))
    assert status == "IN_PROGRESS", state
    assert state.startswith("installation_"), state

    assert private.exists()  # nobody could remove it
    stack.start_hookserver()
    wait_connectable(stack.socket)
    assert not private.exists()  # the new hook server did, from the record
    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert_ends_once(stack, JOB, "SUCCEEDED", "complete_ready")

    # Install was called again for the same attempt: the retry count ($2) stayed 0, and
    # the elapsed seconds ($1) count from the first call.
    installs = device.calls("install", JOB)
    assert [row[4] for row in installs] == ["0", "0"], installs
    assert int(installs[1][3]) >= 1
    # The second run did the whole install alone; the file was downloaded once.
    runs = device.install_log()
    assert [row[0] for row in runs] == ["start", "start", "done"], runs
    assert device.overlaps() == []
    assert device.slot_sha256() == sha
    assert stack.files.served == {f"{JOB}.bundle": MiB}
    assert stack.daemon_starts == 1
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
    assert not download_path(stack, JOB).exists()
    assert journal(stack) is None
