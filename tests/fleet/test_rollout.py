"""A rollout to 10,000 simulated devices: every one ends in the state its faults call for.

One job for the whole fleet, rolled out at the service's 1000 executions a minute. Each
device runs the real core and reboots into the new version through its journal; 500 have a
flaky link that drops once or twice during the rollout; 30 are faulty on purpose (the
install hook refuses the bundle, the download never verifies, the bootloader falls back to
the old slot) and must end FAILED with the reason that says so.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.fleet.limits import ROLLOUT_PER_MINUTE
from tests.fleet.sim import Fault, Fleet, Job, Link
from upparat.core.machine import Idle

SIZE = 10_000
SEED = 15
JOB = Job(job_id="upparat_fw_2_0", version="2.0", size=80_000_000, sha256="ab" * 32)
START = 60.0
FAULTS = (Fault.INSTALL_FAILS, Fault.CORRUPT_DOWNLOAD, Fault.BOOTS_OLD_SLOT)
PER_FAULT = 10
FLAKY = 500


def _fleet() -> tuple[Fleet, dict[int, str], set[int]]:
    rng = random.Random(SEED)
    chosen = rng.sample(range(SIZE), len(FAULTS) * PER_FAULT + FLAKY)
    faults = {index: FAULTS[i // PER_FAULT] for i, index in enumerate(chosen[: 3 * PER_FAULT])}
    flaky = set(chosen[3 * PER_FAULT :])
    last_queued = START + SIZE * 60.0 / ROLLOUT_PER_MINUTE
    links = {
        index: Link(
            drops=tuple(
                sorted(
                    (rng.uniform(START, last_queued + 300.0), rng.uniform(5.0, 180.0))
                    for _ in range(rng.randint(1, 2))
                )
            )
        )
        for index in flaky
    }
    fleet = Fleet(
        size=SIZE,
        seed=SEED,
        faults=faults,
        links=links,
    )
    fleet.create_job(JOB, per_minute=ROLLOUT_PER_MINUTE, start=START)
    return fleet, faults, flaky


@pytest.mark.timeout(600)
def test_every_device_ends_in_the_state_its_faults_call_for() -> None:
    fleet, faults, flaky = _fleet()
    fleet.run(until=3 * 3600.0)

    ok = SIZE - len(faults)
    assert fleet.statuses(JOB.job_id) == Counter(
        {
            ("SUCCEEDED", "complete_ready"): ok,
            ("FAILED", "installation_hook_failed"): PER_FAULT,
            ("FAILED", "download_verification_failed"): PER_FAULT,
            ("FAILED", "rolled_back"): PER_FAULT,
        }
    )
    expected = {
        Fault.INSTALL_FAILS: ("installation_hook_failed", "reason", "BUNDLE_REJECTED"),
        Fault.CORRUPT_DOWNLOAD: ("download_verification_failed", "message", "sha256"),
        Fault.BOOTS_OLD_SLOT: (
            "rolled_back",
            "message",
            "Rolled back: expected version '2.0', the previous version '1.0' runs",
        ),
    }
    for index, execution in fleet.by_device(JOB.job_id, faults).items():
        state, key, text = expected[faults[index]]
        assert execution is not None
        assert execution.status.value == "FAILED", index
        assert execution.details["state"] == state, index
        assert text in execution.details[key], (index, execution.details)

    # Every daemon is back to waiting, with its journal cleared and nothing half done.
    for device in fleet.devices:
        assert device.alive, device.index
        assert isinstance(device.state.stage, Idle), (device.index, device.state.stage)
        assert device.journal is None, device.index
        assert device.running == ("1.0" if device.index in faults else "2.0"), device.index
    # One reboot per device that installed (the fallback too), none for the others.
    installed = SIZE - 2 * PER_FAULT
    assert fleet.metrics.reboots == installed
    # The flaky links dropped hundreds of connections; each came back exactly once, as
    # did each rebooted device.
    assert fleet.metrics.drops > len(flaky) // 2
    assert fleet.metrics.connects.total() == fleet.metrics.reboots + fleet.metrics.drops
    # Nobody retried a CONNECT within the second AWS IoT allows per client id.
    assert fleet.metrics.min_connect_gap >= 1.0
