"""Fixtures of the end-to-end suite: a simulated device and a `Stack` factory.

Every stack is closed after its test (by PID, never by name); when a test fails, the
tails of the daemon's and hook server's logs are printed with its report.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.e2e.device import Device
from tests.support.reports import close_stacks
from upparat.devstack.stack import Stack

THING = "device-1"
BASE_CONFIG: Mapping[str, Mapping[str, str]] = {
    "hooks": {"retry_interval": "1", "max_retries": "5"},
    "service": {"progress_interval": "1"},
}


class StackFactory(Protocol):
    def __call__(
        self,
        device: Device,
        *,
        config: Mapping[str, Mapping[str, str]] | None = None,
        daemon: bool = True,
        start: bool = True,
        seconds_per_minute: float = 60.0,
        thing: str = THING,
        env: Mapping[str, str] | None = None,
        file_tls: ssl.SSLContext | None = None,
    ) -> Stack: ...


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "device")


@pytest.fixture
def make_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    stacks: list[Stack] = []

    def make(
        device: Device,
        *,
        config: Mapping[str, Mapping[str, str]] | None = None,
        daemon: bool = True,
        start: bool = True,
        seconds_per_minute: float = 60.0,
        thing: str = THING,
        env: Mapping[str, str] | None = None,
        file_tls: ssl.SSLContext | None = None,
    ) -> Stack:
        merged = {section: dict(values) for section, values in BASE_CONFIG.items()}
        for section, values in (config or {}).items():
            merged.setdefault(section, {}).update(values)
        workdir = tmp_path / f"stack-{len(stacks)}"
        workdir.mkdir()
        stack = Stack(
            workdir,
            thing=thing,
            hooks=device.hooks(),
            config=merged,
            seconds_per_minute=seconds_per_minute,
            env=env,
            file_tls=file_tls,
        )
        stacks.append(stack)
        if start:
            stack.start(daemon=daemon)
        return stack

    yield make
    close_stacks(stacks, request, tail=6000)


@pytest.fixture
def stack(device: Device, make_stack: StackFactory) -> Stack:
    """A running stack with the device's five hooks and the suite's short settings."""
    return make_stack(device)
