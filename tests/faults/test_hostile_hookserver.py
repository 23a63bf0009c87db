"""A hook server that sends garbage: each job FAILS with a clear reason, the daemon lives on.

The misbehaving server runs in the test (hostile_hooks.py); everything else is the real
stack. One daemon runs every job in turn, and a well-behaved job at the end still
SUCCEEDS, so no misbehaviour left anything stuck.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.faults.conftest import StackFactory
from tests.faults.device import create_update
from tests.faults.hostile_hooks import HostileHookServer
from tests.faults.observe import assert_ends_once, details, finished, outcome
from upparat.devstack.faults import vm_rss_kib, wait_until
from upparat.devstack.stack import Stack

INSTALL_TIMEOUT = 3
SIZE = 64 * 1024

# meta -> (statusDetails.state, reason, a text the message must contain)
CASES: dict[str, tuple[str, str, str]] = {
    "version-unspecified": ("version_hook_failed", "OUTCOME_UNSPECIFIED", "no outcome"),
    "version-unknown-outcome": ("version_hook_failed", "OUTCOME_UNSPECIFIED", "outcome 77"),
    "version-huge": ("version_hook_failed", "GRPC_RESOURCE_EXHAUSTED", "larger than max"),
    "download-garbage-bytes": ("download_hook_failed", "GRPC_INTERNAL", "deserializ"),
    "download-data-loss": ("download_hook_failed", "GRPC_DATA_LOSS", "red nulevil"),
    "install-never-ends": (
        "installation_hook_timed_out",
        "",
        f"did not answer within {INSTALL_TIMEOUT} s",
    ),
    "install-huge-progress": (
        "installation_hook_failed",
        "GRPC_RESOURCE_EXHAUSTED",
        "larger than max",
    ),
    "install-no-result": ("installation_hook_failed", "NO_RESULT", "without a result"),
    "install-after-result": (
        "installation_hook_failed",
        "PROTOCOL_VIOLATION",
        "after the result",
    ),
    "install-garbage-bytes": ("installation_hook_failed", "GRPC_INTERNAL", "deserializ"),
    "restart-unspecified": ("restart_hook_failed", "OUTCOME_UNSPECIFIED", "no outcome"),
    # The reason is made UPPER_SNAKE_CASE and cut to 64 characters.
    "ready-hostile-failure": ("ready_hook_failed", "_".join(["NOT_A_REASON"] * 5), "red nulevil"),
    "ready-retry-negative": ("ready_hook_failed", "", "gave up on the ready hook"),
}


@pytest.fixture
def hostile(make_stack: StackFactory) -> Iterator[tuple[Stack, HostileHookServer]]:
    stack = make_stack(
        None,
        config={"hooks": {"install_timeout": str(INSTALL_TIMEOUT), "max_retries": "2"}},
        start=False,
    )
    stack.broker.start()
    stack.files.start()
    stack.write_config()
    stack.start_emulator()
    server = HostileHookServer(stack.socket).start()
    try:
        stack.start_daemon()
        yield stack, server
    finally:
        stack.stop_daemon()
        server.stop()


def test_garbage_from_the_hook_server_fails_the_job_with_a_reason(
    hostile: tuple[Stack, HostileHookServer],
) -> None:
    stack, server = hostile
    for n, (meta, (state, reason, text)) in enumerate(CASES.items()):
        job_id = f"upparat_hostile_{n:02d}"
        server.version = "1.0.0"
        create_update(stack, job_id, size=SIZE, meta=meta)
        done = finished(stack, job_id)
        assert outcome(done) == ("FAILED", state), (meta, done)
        assert_ends_once(stack, job_id, "FAILED", state)
        found = details(done)
        assert found.get("reason", "") == reason, (meta, found)
        assert text in found["message"], (meta, found)
        # What reaches the cloud is one clean, short line.
        assert len(found["message"]) <= 1024, meta
        assert not re.search(r"[\x00-\x1f\x7f\u200b\u202e]", found["message"]), (meta, found)
        assert stack.daemon is not None
        assert stack.daemon.poll() is None, meta

    # The never-ending stream was cancelled at its deadline: its handler has returned.
    wait_until(lambda: server.streams_open == 0, "the install streams to end", 30)
    server.version = "1.0.0"
    create_update(stack, "upparat_hostile_good", size=SIZE, meta="good:2.0.0")
    done = finished(stack, "upparat_hostile_good")
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert server.version == "2.0.0"
    assert stack.daemon is not None
    assert stack.daemon.poll() is None
    assert stack.daemon_starts == 1
    assert vm_rss_kib(stack.daemon.pid) < 200 * 1024  # the 2 MiB messages were not kept
