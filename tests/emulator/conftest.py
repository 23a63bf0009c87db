from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator.device import Device
from tests.support.procs import Mosquitto, running_mosquitto
from upparat.emulator import FakeClock, JobsEmulator

START = 1_700_000_000.0


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the emulator tests (each test's emulator and devices disconnect at
    its end, and sessions are clean, so nothing carries over). TCP_NODELAY: without it every
    request/answer round trip waits ~40 ms for a delayed ACK (Nagle).
    Tests that restart the broker use the per-test `mosquitto` fixture instead."""
    with running_mosquitto(
        tmp_path_factory.mktemp("broker"), extra_conf="set_tcp_nodelay true"
    ) as b:
        yield b


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def emulator(broker: Mosquitto, clock: FakeClock) -> Iterator[JobsEmulator]:
    """An in-process emulator on a fake clock; timeouts fire only on check_timeouts()."""
    em = JobsEmulator("127.0.0.1", broker.port, clock=clock, tick_interval=None)
    em.start()
    try:
        yield em
    finally:
        em.stop()


@pytest.fixture
def device(broker: Mosquitto, emulator: JobsEmulator) -> Iterator[Device]:
    with Device(broker.port, "dev-1") as d:
        yield d
