from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.procs import Mosquitto, running_mosquitto

# Timings belong in bench/, not in assertions: on a loaded 2-core CI machine a
# property example may take far longer than hypothesis's default 200 ms deadline.
settings.register_profile("upparat", deadline=None)
settings.load_profile("upparat")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker on a free loopback port, stopped after the test."""
    with running_mosquitto(tmp_path) as broker:
        yield broker
