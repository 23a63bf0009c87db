"""The broker-outage scenario, shared by tests/fleet/test_outage.py and bench/fleet.py.

Owns how the outage is run and measured. The reconnect is the core's own (issue 15 part 1):
`ConnectMqtt` is one attempt, and the core sets RECONNECT after `Settings.reconnect_backoff`
(capped, full jitter drawn from the seed the daemon draws per process). The baseline gives
every device the same seed: the same policy then draws the same jitter on every device.
"""

from __future__ import annotations

import attrs

from tests.fleet.sim import Fleet
from upparat.core.model import Settings

SIZE = 10_000
SEED = 600
DOWN_AT = 60.0
OUTAGE = 600.0
"""Ten minutes without a broker."""
BACK_AT = DOWN_AT + OUTAGE
WATCH = 300.0
"""How long after the broker is back the rates are recorded."""
RECONNECT = Settings().reconnect_backoff
"""The core's reconnect policy, as the daemon runs it."""


@attrs.frozen(kw_only=True)
class Policy:
    name: str
    shared_seed: int | None
    """None: each device its own seed (the daemon); else this one seed for all."""


OWN_SEEDS = Policy(
    name=f"core reconnect, own seed per device (1 s doubling to {RECONNECT.cap:g} s, full jitter)",
    shared_seed=None,
)
ONE_SEED = Policy(name="core reconnect, one seed for the whole fleet", shared_seed=1)


@attrs.frozen(kw_only=True)
class Rates:
    """Per simulated second from the broker's return: accepted CONNECTs and gets received."""

    policy: str
    connects: tuple[int, ...]
    gets: tuple[int, ...]

    @property
    def peak_connects(self) -> int:
        return max(self.connects)

    @property
    def peak_gets(self) -> int:
        return max(self.gets)


def run_outage(policy: Policy, size: int = SIZE) -> tuple[Fleet, Rates]:
    """An idle, connected fleet loses its broker for ten minutes; watch it come back."""
    fleet = Fleet(size=size, seed=SEED, shared_seed=policy.shared_seed)
    fleet.at(DOWN_AT, fleet.broker_down)
    fleet.at(BACK_AT, fleet.broker_back)
    fleet.run(until=BACK_AT + WATCH)
    start, end = int(BACK_AT), int(BACK_AT + WATCH)
    requests = fleet.cloud.requests
    rates = Rates(
        policy=policy.name,
        connects=tuple(fleet.metrics.connects.get(s, 0) for s in range(start, end)),
        gets=tuple(requests.get(("GetPending", s), 0) for s in range(start, end)),
    )
    return fleet, rates
