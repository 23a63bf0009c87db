"""Fixtures of the fault suite: a simulated device and a factory of whole stacks.

Every stack is closed after its test (processes by PID); when a test fails, the tails
of the daemon's, hook server's and emulator's logs are printed with its report.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.faults.device import Device
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
        device: Device | None,
        *,
        config: Mapping[str, Mapping[str, str]] | None = None,
        workdir: Path | None = None,
        start: bool = True,
        daemon: bool = True,
    ) -> Stack: ...


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "device")


@pytest.fixture
def make_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    stacks: list[Stack] = []

    def make(
        device: Device | None,
        *,
        config: Mapping[str, Mapping[str, str]] | None = None,
        workdir: Path | None = None,
        start: bool = True,
        daemon: bool = True,
    ) -> Stack:
        merged = {section: dict(values) for section, values in BASE_CONFIG.items()}
        for section, values in (config or {}).items():
            merged.setdefault(section, {}).update(values)
        if workdir is None:
            workdir = tmp_path / f"stack-{len(stacks)}"
            workdir.mkdir()
        stack = Stack(
            workdir,
            thing=THING,
            hooks=device.scripts if device is not None else {},
            config=merged,
        )
        stacks.append(stack)
        if start:
            stack.start(daemon=daemon)
        return stack

    yield make
    close_stacks(stacks, request, tail=8000)


@pytest.fixture
def stack(device: Device, make_stack: StackFactory) -> Stack:
    """A running stack with the device's five hooks and the suite's short settings."""
    return make_stack(device)
