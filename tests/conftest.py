from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.procs import Mosquitto, running_mosquitto
from tests.support.reports import CALL_REPORT

# Timings belong in bench/, not in assertions: on a loaded 2-core CI machine a
# property example may take far longer than hypothesis's default 200 ms deadline.
settings.register_profile("upparat", deadline=None)
settings.load_profile("upparat")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker on a free loopback port, stopped after the test."""
    with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call-phase report, so fixtures can show logs of a failed test."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report
