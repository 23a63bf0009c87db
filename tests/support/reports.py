"""Shared teardown of end-to-end stacks: stop them, and show their logs when a test failed."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from upparat.devstack.stack import Stack

CALL_REPORT = pytest.StashKey[pytest.TestReport]()
"""The call-phase report of a test, stored by the root conftest's makereport hook."""


def close_stacks(stacks: Iterable[Stack], request: pytest.FixtureRequest, tail: int) -> None:
    report = request.node.stash.get(CALL_REPORT, None)
    for stack in stacks:
        stack.close()
        if report is not None and report.failed:
            for name in ("daemon", "hookserver", "emulator"):
                log = stack.workdir / f"{name}.log"
                if log.exists():
                    text = log.read_text(errors="replace")[-tail:]
                    print(f"\n----- {log} (tail) -----\n{text}")
