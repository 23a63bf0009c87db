"""A throttling cloud slows 10,000 devices down, and not one of them fails its job.

For the first five minutes of the rollout the service answers 30 % of all device requests
(get, describe, update) with `RequestThrottled`, the code AWS IoT Jobs sends on the MQTT
`/rejected` topics when a rate limit is hit (AWS-IOT-JOBS.md; the HTTP data plane calls it
`ThrottlingException`). The core retries those with backoff. The devices queued while the
cloud throttles take longer than those queued after it stopped, in the same run, and every
device still ends SUCCEEDED. The devices restart softly (the restart hook returns and the
daemon verifies at once): test_rollout.py covers the reboot, and a soft restart keeps this
second 10,000-device run within the test suite's time.
"""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from tests.fleet.limits import ROLLOUT_PER_MINUTE
from tests.fleet.sim import Fleet, Job, Timing
from upparat.core.machine import Idle

SIZE = 10_000
SEED = 30
JOB = Job(job_id="upparat_fw_2_1", version="2.1", size=80_000_000, sha256="cd" * 32)
START = 60.0
SHARE = 0.3
THROTTLED_FOR = 300.0
GAP = 60.0 / ROLLOUT_PER_MINUTE


@pytest.mark.timeout(600)
def test_a_throttling_cloud_slows_the_fleet_down_and_fails_no_job() -> None:
    fleet = Fleet(size=SIZE, seed=SEED, throttle=SHARE, timing=Timing(reboots=False))
    fleet.cloud.throttle_until = START + THROTTLED_FOR
    fleet.create_job(JOB, per_minute=ROLLOUT_PER_MINUTE, start=START)
    fleet.run(until=3 * 3600.0)

    assert fleet.statuses(JOB.job_id) == Counter({("SUCCEEDED", "complete_ready"): SIZE})
    for device in fleet.devices:
        assert isinstance(device.state.stage, Idle), (device.index, device.state.stage)
        assert device.journal is None, device.index
        assert device.running == JOB.version, device.index

    throttled = fleet.cloud.throttled
    received = fleet.cloud.requests
    window = range(int(START), int(START + THROTTLED_FOR))
    in_window = sum(n for (_, second), n in received.items() if second in window)
    refused = throttled.total()
    # The share asked for, and every kind of request met it.
    assert abs(refused / in_window - SHARE) < 0.02
    assert {operation for operation, _ in throttled} == {"GetPending", "Describe", "Update"}
    assert all(second in window for _, second in throttled)

    # Devices queued in the first two minutes worked while the cloud throttled; those queued
    # after it stopped met none of it. Same fleet, same drivers, same run.
    durations = {
        index: execution.last_updated_at - execution.queued_at
        for index, execution in fleet.by_device(JOB.job_id, range(SIZE)).items()
        if execution is not None
    }
    early = [durations[i] for i in range(int(120.0 / GAP))]
    late = [durations[i] for i in range(int((THROTTLED_FOR + 60.0) / GAP), SIZE)]
    slowdown = statistics.median(early) - statistics.median(late)
    # Three requests are on each job's critical path: the describe, reboot_start (Restart
    # waits for its acceptance) and the final report (its acceptance is the end). At 30 %
    # each is refused 0.43 times on average and then waits 1-2 s (Settings.request_backoff:
    # 2 s, half of it jitter) before it is sent again: about 2 s more per job. (Seed 30:
    # 139.5 s against 135.0 s.)
    assert slowdown >= 2.0, (statistics.median(early), statistics.median(late))
