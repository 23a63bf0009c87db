"""The broker goes away for more than 10 s in the middle of a download.

The download does not need MQTT and goes on; the reports made meanwhile wait in the
daemon and reach the cloud after the reconnect, in order (a report not sent yet is
replaced by a newer one of the same job); Restart waits until the cloud
has accepted reboot_start (what the device reads after a reboot); the job SUCCEEDS.
"""

from __future__ import annotations

import time

from tests.faults.conftest import StackFactory
from tests.faults.device import Device, MiB, create_update
from tests.faults.observe import assert_ends_once, finished, outcome, request_of, state_of
from upparat.devstack.faults import wait_until

JOB = "upparat_broker_outage"
BUNDLE = f"{JOB}.bundle"
SIZE = 4 * MiB
OUTAGE = 10.0
"""Seconds the broker stays down at least (the download ends while it is down)."""

_RANK = {
    "download_start": 1,
    "download_progress": 1,
    "download_retrying": 1,
    "installation_start": 2,
    "installation_progress": 2,
    "reboot_start": 3,
    "complete_ready": 4,
}


def test_broker_down_for_10_s_during_a_download(device: Device, make_stack: StackFactory) -> None:
    stack = make_stack(device)
    stack.files.rate = 512 * 1024  # 8 s for the whole file
    create_update(stack, JOB, size=SIZE)
    wait_until(lambda: stack.files.served.get(BUNDLE, 0) >= SIZE // 10, "the download to run")

    stack.broker.stop()
    down_at = time.monotonic()
    served_when_down = stack.files.served[BUNDLE]
    # Without the broker the download goes on to the end, and so does the install...
    wait_until(lambda: device.calls("install", JOB), "the install hook to run", 60)
    assert stack.files.served[BUNDLE] == SIZE > served_when_down
    # ...but Restart waits for the cloud to accept reboot_start.
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    assert device.calls("restart", JOB) == []

    stack.broker.start()
    back = time.time()
    stack.control.wait_ready(timeout=60)
    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert_ends_once(stack, JOB, "SUCCEEDED", "complete_ready")

    updates = stack.updates(JOB)
    assert all(u["result"] == "accepted" for u in updates), updates
    # In order: phases never go backwards, and every update was applied on the last one.
    ranks = [_RANK[state_of(u)] for u in updates]
    assert ranks == sorted(ranks), [state_of(u) for u in updates]
    versions = [u["versionNumber"] for u in updates]
    assert versions == list(range(2, 2 + len(updates))), versions
    # What happened while the broker was down reached the cloud after the reconnect. Reports
    # not sent yet are superseded by newer ones of the same job (installation_* by
    # reboot_start): the cloud gets the latest state, not a replay.
    after = [u for u in updates if isinstance(u["at"], float) and u["at"] >= back]
    assert [state_of(u) for u in after][-2:] == ["reboot_start", "complete_ready"], after
    # The restart hook ran only after the cloud had accepted reboot_start.
    restart_calls = device.calls("restart", JOB)
    assert len(restart_calls) == 1
    reboot_start = next(u for u in after if state_of(u) == "reboot_start")
    assert float(restart_calls[0][7]) >= float(str(reboot_start["at"])) - 0.5
    assert request_of(reboot_start)["status"] == "IN_PROGRESS"
    # One request, never restarted.
    assert stack.files.served == {BUNDLE: SIZE}
    assert len(stack.files.requests) == 1
