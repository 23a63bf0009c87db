"""The cloud rejects a job's updates: throttled, then an internal error, then the job is over.

AWS IoT Jobs: RequestThrottled and InternalError are retried with backoff; the same
update is sent again (a new clientToken each time). TerminalStateReached means the job
ended in the cloud (here: an operator cancelled it meanwhile): work on it stops, nothing
more is sent for it, and the daemon waits for the next job, which runs as usual.
"""

from __future__ import annotations

import itertools

from tests.faults.conftest import THING, StackFactory
from tests.faults.device import Device, MiB, create_update
from tests.faults.observe import (
    assert_ends_once,
    download_path,
    finished,
    journal,
    outcome,
    request_of,
    state_of,
)
from upparat.devstack.faults import LogWatch, wait_until

JOB = "upparat_rejected"
NEXT = "upparat_after_rejected"
CODES = ["RequestThrottled", "RequestThrottled", "InternalError", "TerminalStateReached"]


def test_throttled_then_internal_error_then_terminal_state_stops_the_job(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    daemon_log = LogWatch(stack.workdir / "daemon.log")
    stack.files.rate = 256 * 1024  # still downloading while the cloud says no
    stack.control.inject_fault("RequestThrottled", 2, job_id=JOB)
    stack.control.inject_fault("InternalError", 1, job_id=JOB)
    stack.control.inject_fault("TerminalStateReached", 1, job_id=JOB)
    create_update(stack, JOB, size=2 * MiB)

    def codes() -> list[object]:
        return [u.get("code") for u in stack.updates(JOB)]

    wait_until(lambda: "InternalError" in codes(), "the internal error", 60)
    # The job ends in the cloud while the daemon backs off; TerminalStateReached follows.
    stack.control.cancel_execution(JOB, THING, force=True)
    wait_until(lambda: "TerminalStateReached" in codes(), "the terminal state", 60)

    stack.files.rate = None
    create_update(stack, NEXT, size=MiB)
    assert outcome(finished(stack, NEXT)) == ("SUCCEEDED", "complete_ready")
    assert_ends_once(stack, NEXT, "SUCCEEDED", "complete_ready")

    # The same update, sent four times with fresh tokens, with a growing pause in between;
    # nothing was sent for the job after TerminalStateReached.
    updates = stack.updates(JOB)
    assert codes() == CODES, updates
    assert all(u["result"] == "rejected" for u in updates)
    assert {(request_of(u)["status"], state_of(u)) for u in updates} == {
        ("IN_PROGRESS", "download_start")
    }
    tokens = [request_of(u)["clientToken"] for u in updates]
    assert len(set(tokens)) == len(tokens), tokens
    at = [float(str(u["at"])) for u in updates]
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert gaps[0] >= 0.9, gaps  # backoff 1 s, 2 s, 4 s: never a hot loop
    assert gaps[1] >= 1.8, gaps
    assert outcome(stack.execution(JOB))[0] == "CANCELED"

    # Work on the job stopped: its download was cancelled and removed, nothing journalled.
    assert stack.files.served[f"{JOB}.bundle"] < 2 * MiB
    assert not download_path(stack, JOB).exists()
    assert journal(stack) is None
    assert device.calls("install", JOB) == []
    assert "no pending upparat job; waiting for notifications" in daemon_log.read()
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
    assert stack.daemon_starts == 1
