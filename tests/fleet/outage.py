"""The broker-outage scenario, shared by tests/fleet/test_outage.py and bench/fleet.py.

Owns the reconnect policies the scenario compares and how the outage is run and measured.
The reconnect still lives in the MQTT driver here (paho's `reconnect_delay_set`, no jitter):
`SIMULATED_RECONNECT` is the jittered, capped policy the core is getting (issue 15 part 1),
simulated by the harness until the core's own reconnect commands can be driven instead.
"""

from __future__ import annotations

import inspect

import attrs

from tests.fleet.sim import Fleet, FullJitterBackoff, PahoBackoff, ReconnectPolicy
from upparat.core.model import Settings
from upparat.io.mqtt import MqttDriver

SIZE = 10_000
SEED = 600
DOWN_AT = 60.0
OUTAGE = 600.0
"""Ten minutes without a broker."""
BACK_AT = DOWN_AT + OUTAGE
WATCH = 300.0
"""How long after the broker is back the rates are recorded."""


def _driver_default(name: str) -> float:
    # The driver's own defaults, read from it so that this stays what the daemon does.
    default = inspect.signature(MqttDriver.__init__).parameters[name].default
    assert isinstance(default, int | float), name
    return float(default)


DRIVER_RECONNECT = PahoBackoff(
    minimum=_driver_default("reconnect_min_delay"),
    maximum=_driver_default("reconnect_max_delay"),
)
"""What the daemon does today: paho doubles the wait from 1 s up to 120 s, all devices alike."""


def _setting(names: tuple[str, ...], fallback: float) -> float:
    """A reconnect parameter from the core's Settings once it has one, else `fallback`."""
    fields = {f.name: f.default for f in attrs.fields(Settings)}
    for name in names:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return fallback


SIMULATED_RECONNECT = FullJitterBackoff(
    base=_setting(("reconnect_base", "reconnect_min_delay", "reconnect_initial_delay"), 1.0),
    cap=_setting(("reconnect_cap", "reconnect_max_delay"), DRIVER_RECONNECT.maximum),
    name="simulated core reconnect: capped exponential backoff, full jitter",
)
"""The jittered, capped reconnect issue 15 asks of the core, simulated by the harness: the
same base and cap as the driver (or the core's Settings once they hold them), full jitter."""


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


def run_outage(policy: ReconnectPolicy, size: int = SIZE) -> tuple[Fleet, Rates]:
    """An idle, connected fleet loses its broker for ten minutes; watch it come back."""
    fleet = Fleet(size=size, seed=SEED, reconnect=policy)
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
