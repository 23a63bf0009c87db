"""The network misbehaves: expired URLs, HTTP errors, a killed daemon, a broker restart.

The device must end the job as if nothing happened, download no byte twice beyond one
chunk, and report to the cloud once it can reach it again.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    Device,
    MiB,
    assert_in_order,
    create_update,
    details,
    download_path,
    finished,
    outcome,
    states,
    wait_until,
)
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

JOB = "upparat_fw_2_0_0"
BUNDLE = f"{JOB}.bundle"


def describes(stack: Stack, job_id: str) -> int:
    return len(stack.control.history(job_id, stack.thing, operation="describe"))


def test_expired_url_is_refreshed_with_a_new_describe(stack: Stack) -> None:
    stack.files.fail_next = [403]  # S3's answer to an expired pre-signed URL
    create_update(stack, JOB)

    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    assert [status for _, _, status in stack.files.requests] == [403, 200]
    # Each URL comes from its own describe: the second one asked for a fresh URL.
    assert describes(stack, JOB) == 2
    assert_in_order(states(stack, JOB), ["download_interrupt", "download_start", "complete_ready"])
    assert stack.files.served == {BUNDLE: MiB}


def test_url_expiring_mid_download_is_refreshed_and_the_download_resumes(
    device: Device, make_stack: StackFactory
) -> None:
    size = 3 * MiB
    stack = make_stack(device, seconds_per_minute=2)  # the job's 60 s URLs live 2 s
    stack.files.expire_urls = True
    stack.files.rate = 1 * MiB
    stack.files.drop_after = 2 * MiB + MiB // 2  # 2.5 s in: the URL has expired by then
    create_update(stack, JOB, size=size, presigned_expires_in=60)

    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    first, *refused, resumed = stack.files.requests
    assert (first[1], first[2]) == (None, 200)
    # One refusal, or more if a fresh URL (valid 1-2 s) expired too under heavy load.
    assert refused
    assert {status for _, _, status in refused} == {403}
    assert resumed[1] is not None
    assert resumed[1].startswith("bytes=")
    assert resumed[2] == 206
    assert describes(stack, JOB) == 1 + len(refused)  # a fresh URL per refusal
    assert_in_order(states(stack, JOB), ["download_interrupt", "download_start", "complete_ready"])
    assert stack.files.served[BUNDLE] <= size + MiB


def test_flaky_http_is_retried_and_the_retry_reported(stack: Stack) -> None:
    stack.files.fail_next = [500, 503]
    # Retry-After keeps the driver waiting past progress_interval (1 s), so the
    # throttled download_retrying report goes out before the next attempt.
    stack.files.fail_headers = {"Retry-After": "1"}
    create_update(stack, JOB)

    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    assert [status for _, _, status in stack.files.requests] == [500, 503, 200]
    assert_in_order(states(stack, JOB), ["download_start", "download_retrying", "complete_ready"])
    assert stack.files.served == {BUNDLE: MiB}


def test_daemon_killed_mid_download_resumes_where_it_stopped(stack: Stack) -> None:
    size = 4 * MiB
    stack.files.rate = 1 * MiB
    create_update(stack, JOB, size=size)
    partial = download_path(stack, JOB)
    progress = stack.wait_state(JOB, "download_progress")
    wait_until(
        lambda: partial.exists() and partial.stat().st_size >= MiB + MiB // 2,
        "1.5 MiB on disk",
    )
    reported_bytes = int(details(progress)["bytes"])
    assert 0 < reported_bytes < size
    assert details(progress)["progress"] == str(reported_bytes * 100 // size)
    assert details(progress)["message"] == f"{reported_bytes} of {size} bytes"

    assert stack.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
    kept = partial.stat().st_size
    stack.files.rate = None
    stack.start_daemon()

    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    ranges = [rng for _, rng, _ in stack.files.requests]
    assert ranges[0] is None
    assert ranges[-1] is not None
    resumed_from = int(ranges[-1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= kept
    assert [status for _, _, status in stack.files.requests][-1] == 206
    assert stack.files.served[BUNDLE] <= size + MiB  # at most one chunk downloaded twice
    assert stack.daemon_starts == 2


def test_broker_restart_while_idle(stack: Stack) -> None:
    wait_until(
        lambda: stack.control.history(thing=stack.thing, operation="get-pending"),
        "the daemon to ask for its jobs",
    )
    stack.broker.restart(down_for=0.5)
    stack.control.wait_ready(timeout=30)

    create_update(stack, JOB)
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")


def test_broker_restart_while_downloading(stack: Stack) -> None:
    stack.files.rate = 1 * MiB
    create_update(stack, JOB, size=4 * MiB)
    wait_until(lambda: stack.files.served.get(BUNDLE, 0) >= MiB // 2, "the download to run")

    # The restart cuts the emulator off too. AWS never goes away with the broker, so the
    # daemon is held until the emulator is back: else the first reports after the
    # reconnect may reach a broker nobody listens on yet (then they are sent again after
    # the 30 s request timeout; correct, but slow).
    daemon = stack.daemon
    assert daemon is not None
    daemon.send_signal(signal.SIGSTOP)
    try:
        stack.broker.restart(down_for=1.5)
        stack.control.wait_ready(timeout=30)
    finally:
        daemon.send_signal(signal.SIGCONT)
    back = time.time()

    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert "MQTT disconnected" in stack.daemon_log()
    # Reports reached the cloud after the reconnect; the download was never restarted.
    later = [u for u in stack.updates(JOB) if isinstance(u["at"], float) and u["at"] >= back]
    assert any(u["status"] == "IN_PROGRESS" and u["result"] == "accepted" for u in later), later
    # (installation_start may be merged into reboot_start while the link is down)
    assert_in_order(states(stack, JOB), ["download_start", "reboot_start", "complete_ready"])
    assert stack.files.served == {BUNDLE: 4 * MiB}
    assert len(stack.files.requests) == 1
