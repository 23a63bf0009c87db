"""A 10-minute broker outage over 10,000 idle devices: they come back under the ceilings.

The broker goes away at once for every device (it resets the connections) and stays away
for ten minutes; each device retries with its reconnect policy, and after the SUBACK the core
asks for its pending jobs again (notifications sent meanwhile are lost). What AWS IoT would
see is measured per second: accepted CONNECTs, and gets (GetPendingJobExecutions).

The reconnect is the core's own (merged from the core branch, issue 15 part 1): the
simulated driver answers each `ConnectMqtt` with one attempt, and the core waits
`Settings.reconnect_backoff` (1 s doubling to 120 s, full jitter from its seed) between
attempts. The daemon draws the seed per process; the baseline gives the whole fleet one
seed, so that the very same policy draws the same jitter everywhere and the fleet comes
back in lockstep: the jitter, not the cap, is what keeps it under the ceiling.
"""

from __future__ import annotations

import pytest

from tests.fleet.limits import (
    CONNECT_CEILING,
    CONNECTS_PER_SECOND_PER_ACCOUNT,
    CONNECTS_PER_SECOND_PER_CLIENT_ID,
    GET_CEILING,
)
from tests.fleet.outage import ONE_SEED, OWN_SEEDS, RECONNECT, SIZE, run_outage
from upparat.core.machine import Idle, Link

BASELINE = SIZE // 5


@pytest.mark.timeout(600)
def test_jittered_reconnect_stays_under_the_connect_and_get_ceilings() -> None:
    fleet, rates = run_outage(OWN_SEEDS)

    assert rates.peak_connects <= CONNECT_CEILING, rates.connects[:60]
    assert rates.peak_gets <= GET_CEILING, rates.gets[:60]
    # ... and the fleet is not slowed to a trickle: all back within the cap plus a second.
    cap = int(RECONNECT.cap) + 1
    assert sum(rates.connects[:cap]) == SIZE
    # Each device came back exactly once and asked for its jobs exactly once.
    assert sum(rates.connects) == SIZE
    assert sum(rates.gets) == SIZE
    assert fleet.metrics.min_connect_gap >= 1.0 / CONNECTS_PER_SECOND_PER_CLIENT_ID
    for device in fleet.devices:
        assert device.connected, device.index
        assert device.subscribed, device.index
        assert device.state.link is Link.UP, device.index
        assert isinstance(device.state.stage, Idle), (device.index, device.state.stage)


@pytest.mark.timeout(600)
def test_with_one_seed_for_all_the_fleet_reconnects_in_lockstep_above_the_quota() -> None:
    """The baseline that shows what the jitter does: the same policy, the same draws."""
    fleet, rates = run_outage(ONE_SEED, size=BASELINE)

    # Every device draws the same waits from the same instant (the broker reset every
    # connection within a second): they all come back within two seconds. A fifth of the
    # fleet is enough to show it above the account's whole connect quota.
    assert rates.peak_connects > CONNECTS_PER_SECOND_PER_ACCOUNT
    assert rates.peak_gets > CONNECTS_PER_SECOND_PER_ACCOUNT
    busiest = max(a + b for a, b in zip(rates.connects, rates.connects[1:], strict=False))
    assert busiest == sum(rates.connects) == BASELINE
    assert all(device.state.link is Link.UP for device in fleet.devices)
