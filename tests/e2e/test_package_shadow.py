"""The `$package` shadow from the cloud's side: what the emulator's shadow says, and how
often the daemon wrote it (issue 17 part 1).

With the shell device (its version in a file) and with the real RAUC device (the example
hooks, Debian's `rauc service`, A/B slots). The tests read the emulator's shadow document
and its request history: the version reported, and the shadow version number, which
only an accepted update moves.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import NEW, OLD, Device, create_update, finished, outcome, wait_until
from tests.e2e.test_rauc import JOB as RAUC_JOB
from tests.e2e.test_rauc import create_job, rauc, stack, wait_reboot_request
from upparat.devstack.rauc import BOOT_ATTEMPTS, RaucDevice, power_cycle
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

__all__ = ["rauc", "stack"]  # test_rauc's fixtures, here with package_name set

PACKAGE = "firmware"
REPORTING = {"service": {"package_name": PACKAGE}}
JOB = "upparat_pkg_2_0_0"
PROBED = "runs (the version hook)"
"""The daemon's log line when the version hook answered for the report (not for a job)."""
SETTLE = 2.0
"""Seconds to wait for an update that must not come: it would follow the last answer at
once, in the same step of the core."""

reporting_rauc = pytest.mark.parametrize("stack", [REPORTING], indirect=True)


def shadow_says(stack: Stack) -> tuple[str | None, int | None]:
    """(state.reported.firmware.version, the shadow version); (None, None) without a shadow."""
    document = stack.control.shadow(stack.thing)
    if document is None:
        return None, None
    state = document.get("state")
    reported = state.get("reported") if isinstance(state, dict) else None
    entry = reported.get(PACKAGE) if isinstance(reported, dict) else None
    version = entry.get("version") if isinstance(entry, dict) else None
    number = document.get("version")
    return (
        version if isinstance(version, str) else None,
        number if isinstance(number, int) else None,
    )


def shadow_attributes(stack: Stack) -> object:
    """state.reported.firmware.attributes (None without them)."""
    document = stack.control.shadow(stack.thing)
    state = document.get("state") if isinstance(document, dict) else None
    reported = state.get("reported") if isinstance(state, dict) else None
    entry = reported.get(PACKAGE) if isinstance(reported, dict) else None
    return entry.get("attributes") if isinstance(entry, dict) else None


def wait_reported(stack: Stack, version: str, timeout: float = 60.0) -> int:
    """Wait until the shadow says `version`; return its shadow version number."""

    def check() -> int | None:
        said, number = shadow_says(stack)
        return number if said == version else None

    return wait_until(check, f"the $package shadow to say {version}", timeout)


def requests(stack: Stack, operation: str) -> list[dict[str, object]]:
    """The `$package` requests of `operation` the emulator got over MQTT, oldest first."""
    return [
        dict(h)
        for h in stack.control.shadow_history(stack.thing, "$package")
        if h.get("operation") == operation and h.get("source") == "mqtt"
    ]


def reported_versions(stack: Stack) -> list[object]:
    """The version of every update the emulator accepted, oldest first."""
    found: list[object] = []
    for h in requests(stack, "update"):
        body = h.get("request")
        state = body.get("state") if isinstance(body, dict) else None
        reported = state.get("reported") if isinstance(state, dict) else None
        entry = reported.get(PACKAGE) if isinstance(reported, dict) else None
        if h.get("result") == "accepted" and isinstance(entry, dict):
            found.append(entry.get("version"))
    return found


def restart_daemon_and_settle(stack: Stack) -> None:
    """Restart the daemon and wait until it read the shadow and heard the version hook,
    then for SETTLE seconds more."""
    gets, probed = len(requests(stack, "get")), stack.daemon_log().count(PROBED)
    stack.stop_daemon()
    stack.start_daemon()
    wait_until(lambda: len(requests(stack, "get")) > gets, "the restarted daemon's get", 60)
    wait_until(lambda: stack.daemon_log().count(PROBED) > probed, "its version-hook answer", 60)
    time.sleep(SETTLE)


# --- the shell device ------------------------------------------------------------------


def test_the_shadow_follows_a_job_and_a_restart_with_the_same_version_writes_nothing(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device, config=REPORTING)
    first = wait_reported(stack, OLD)
    assert requests(stack, "get")[0]["code"] == 404, "at start the thing had no shadow"

    create_update(stack, JOB)
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    after_job = wait_reported(stack, NEW)
    assert after_job == first + 1
    assert reported_versions(stack) == [OLD, NEW]

    restart_daemon_and_settle(stack)
    assert shadow_says(stack) == (NEW, after_job), "the shadow version did not move"
    assert reported_versions(stack) == [OLD, NEW]


def test_a_shadow_another_writer_changed_is_corrected_at_start(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device, config=REPORTING, daemon=False)
    stack.control.update_shadow(
        stack.thing,
        {"state": {"reported": {PACKAGE: {"version": "0.9"}, "other": {"version": "7"}}}},
    )
    stack.start_daemon()
    wait_reported(stack, OLD)
    document = stack.control.shadow(stack.thing)
    assert document is not None
    assert document["state"]["reported"]["other"] == {"version": "7"}  # type: ignore[index,call-overload]
    assert reported_versions(stack) == [OLD]


def test_without_package_name_the_daemon_sends_no_shadow_request(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    create_update(stack, JOB)
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    assert stack.control.shadow_history(stack.thing) == []
    assert len(device.calls("version")) == 2, "the job's check and verification only"


def test_a_boot_into_the_other_slot_with_the_same_version_updates_only_the_attributes(
    device: Device, make_stack: StackFactory
) -> None:
    """The version hook's attributes ($UPPARAT_ATTRIBUTES) travel with the version; one the
    catalog cannot hold is left out with a warning, and the rest is reported all the same."""
    slot = device.root / "slot"
    slot.write_text("A")
    device.script(
        "version",
        'printf "booted_slot=%s\\nbad key=x\\n" "$(cat "$ROOT/slot")" >> "$UPPARAT_ATTRIBUTES"\n'
        'cat "$ROOT/version"\n',
    )
    stack = make_stack(device, config=REPORTING)
    first = wait_reported(stack, OLD)
    assert shadow_attributes(stack) == {"booted_slot": "A"}
    wait_until(
        lambda: "attribute name 'bad key'" in stack.daemon_log() or None,
        "the daemon's warning about the bad attribute",
        30,
    )

    slot.write_text("B")  # the same version, booted from the other slot
    restart_daemon_and_settle(stack)
    assert shadow_says(stack) == (OLD, first + 1)
    assert shadow_attributes(stack) == {"booted_slot": "B"}
    assert reported_versions(stack) == [OLD, OLD]

    restart_daemon_and_settle(stack)  # nothing changed: nothing sent
    assert shadow_says(stack) == (OLD, first + 1)


# --- the real RAUC device --------------------------------------------------------------


@reporting_rauc
def test_rauc_after_a_successful_job_the_shadow_says_the_new_version(
    rauc: RaucDevice, stack: Stack
) -> None:
    first = wait_reported(stack, OLD)
    # examples/hooks/version.sh tells the booted slot through $UPPARAT_ATTRIBUTES.
    assert shadow_attributes(stack) == {"booted_slot": "A"}
    create_job(stack, rauc)
    wait_reboot_request(stack, rauc)
    assert shadow_says(stack) == (OLD, first), "nothing is reported before the verdict"

    assert power_cycle(stack, rauc) == "B"

    assert outcome(finished(stack, RAUC_JOB, timeout=60)) == ("SUCCEEDED", "complete_ready")
    assert wait_reported(stack, NEW) == first + 1
    assert rauc.status()["booted"] == "B"
    assert shadow_attributes(stack) == {"booted_slot": "B"}

    # A daemon restart with the version unchanged sends no update.
    restart_daemon_and_settle(stack)
    assert shadow_says(stack) == (NEW, first + 1)
    assert reported_versions(stack) == [OLD, NEW]


@reporting_rauc
def test_rauc_after_a_rollback_the_job_fails_and_the_shadow_says_the_old_version(
    rauc: RaucDevice, stack: Stack
) -> None:
    first = wait_reported(stack, OLD)
    create_job(stack, rauc)
    wait_reboot_request(stack, rauc)

    assert power_cycle(stack, rauc, failing={"B"}) == "A"

    assert outcome(finished(stack, RAUC_JOB, timeout=60)) == ("FAILED", "rolled_back")
    assert rauc.boots == ["B"] * BOOT_ATTEMPTS + ["A"]
    time.sleep(SETTLE)
    assert shadow_says(stack) == (OLD, first)
    assert shadow_attributes(stack) == {"booted_slot": "A"}
    assert reported_versions(stack) == [OLD], "2.0.0 was never reported"


@reporting_rauc
def test_rauc_a_daemon_restart_with_the_version_unchanged_sends_no_update(
    rauc: RaucDevice, stack: Stack
) -> None:
    first = wait_reported(stack, OLD)
    restart_daemon_and_settle(stack)
    assert shadow_says(stack) == (OLD, first)
    assert reported_versions(stack) == [OLD]
    assert len(requests(stack, "get")) == 2
