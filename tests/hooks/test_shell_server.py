"""upparat-hookserver (hookservers/shell) as a real subprocess on a unix socket.

The shared contract cases run against it here; the cases below them cover what only this
implementation promises (its config keys, --help, TCP listening, percent parsing).
"""

from __future__ import annotations

import pytest

from tests.hooks.contract_cases import SHELL, HookServerContract, Implementation


class TestShellHookServerContract(HookServerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def implementation(cls) -> Implementation:
        return SHELL
