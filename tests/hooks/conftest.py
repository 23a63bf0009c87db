"""Fixtures shared by the shell hook server's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hooks.contract_cases import SHELL, HookServerFactory, hook_server_factory


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[HookServerFactory]:
    """Shell hook servers in the test's tmp_path/hs, killed when the test ends."""
    (tmp_path / "hs").mkdir()
    with hook_server_factory(SHELL, tmp_path / "hs") as made:
        yield made
