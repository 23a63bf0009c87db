"""The example RAUC hooks end to end on a real RAUC device (upparat.devstack.rauc).

Signed bundles built with `rauc bundle`, installed by Debian's `rauc service` (on a
private D-Bus system bus) into file-backed A/B slots; the bootloader and the reboot are
simulated. The hooks are examples/hooks/*.sh as a device team copies them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_CONFIG, THING
from tests.e2e.device import assert_in_order, details, finished, outcome, reported, wait_until
from tests.support.reports import CALL_REPORT, close_stacks
from upparat.devstack.rauc import BOOT_ATTEMPTS, Bundle, RaucDevice, power_cycle
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

JOB = "upparat_rauc_2_0_0"
OLD, NEW = "1.0.0", "2.0.0"


@pytest.fixture
def rauc(tmp_path: Path) -> Iterator[RaucDevice]:
    """A RAUC device running 1.0.0 from slot A (marked good); slot B is empty and bad."""
    device = RaucDevice(tmp_path / "rauc", version=OLD)
    try:
        yield device.start()
    finally:
        device.close()


@pytest.fixture
def stack(rauc: RaucDevice, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The whole product with the example hooks on the RAUC device (plus the config of an
    indirect parametrization, if any)."""
    config = {section: dict(values) for section, values in BASE_CONFIG.items()}
    extra: dict[str, dict[str, str]] = getattr(request, "param", {})
    for section, values in (*rauc.stack_config().items(), *extra.items()):
        config.setdefault(section, {}).update(values)
    workdir = tmp_path / "stack"
    workdir.mkdir()
    stack = Stack(workdir, thing=THING, hooks=rauc.hooks(), config=config)
    try:
        stack.start()
        yield stack
    finally:
        close_stacks([stack], request, tail=6000)
        report = request.node.stash.get(CALL_REPORT, None)
        if report is not None and report.failed and rauc.service_log.exists():
            tail = rauc.service_log.read_text(errors="replace")[-6000:]
            print(f"\n----- {rauc.service_log} (tail) -----\n{tail}")


def create_job(stack: Stack, rauc: RaucDevice, *, foreign: bool = False) -> Bundle:
    bundle = rauc.make_bundle(NEW, name=JOB, directory=stack.workdir / "files", foreign=foreign)
    stack.create_job(
        JOB,
        url=stack.files.url(bundle.path.name),
        version=NEW,
        sha256=bundle.sha256,
        size=bundle.size,
    )
    return bundle


def wait_reboot_request(stack: Stack, rauc: RaucDevice) -> None:
    wait_until(lambda: rauc.reboot_requested, "the restart hook to run systemctl reboot", 60)
    assert outcome(stack.execution(JOB)) == ("IN_PROGRESS", "reboot_start")


def test_a_signed_bundle_installs_into_b_boots_it_and_marks_it_good(
    rauc: RaucDevice, stack: Stack
) -> None:
    bundle = create_job(stack, rauc)

    wait_reboot_request(stack, rauc)
    assert rauc.slot_holds("B", bundle.image)
    assert rauc.bundle_version("B") == NEW
    order, _ = rauc.boot_environment()
    assert order[0] == "B", "rauc install made B the primary"
    assert rauc.status()["booted"] == "A"

    assert power_cycle(stack, rauc) == "B"

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert "marked slot rootfs.1 as good" in details(done)["message"]
    status = rauc.status()
    assert status["booted"] == "B"
    assert rauc.slot_status("B")["boot_status"] == "good"
    assert rauc.bundle_version("B") == NEW
    # The boot spent an attempt; mark-good gave them back.
    assert rauc.boot_environment()[1]["B"] == BOOT_ATTEMPTS
    assert_in_order(
        [state for _, state in reported(stack, JOB)],
        ["installation_start", "reboot_start", "complete_ready"],
    )


def test_a_bundle_signed_by_a_foreign_ca_fails_with_raucs_reason(
    rauc: RaucDevice, stack: Stack
) -> None:
    create_job(stack, rauc, foreign=True)

    done = finished(stack, JOB, timeout=60)

    assert outcome(done) == ("FAILED", "installation_hook_failed")
    message = details(done)["message"]
    # RAUC's own reason, the last line of the install hook (as the example prints it).
    assert message.endswith(
        ": LastError: signature verification failed:"
        " Verify error: unable to get local issuer certificate"
    ), message
    assert rauc.slot_path("B").read_bytes().count(0) == rauc.slot_size, "slot B was written"
    assert rauc.bundle_version("B") is None
    assert rauc.status()["booted"] == "A"
    assert rauc.boot_environment()[0][0] == "A"
    assert rauc.slot_status("B")["boot_status"] == "bad"
    assert not rauc.reboot_requested


def test_when_b_does_not_come_up_the_bootloader_rolls_back_and_the_job_fails(
    rauc: RaucDevice, stack: Stack
) -> None:
    create_job(stack, rauc)
    wait_reboot_request(stack, rauc)

    # B panics on every boot attempt: the bootloader spends them all, then boots A.
    assert power_cycle(stack, rauc, failing={"B"}) == "A"

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("FAILED", "rolled_back")
    assert details(done)["message"] == (
        f"Rolled back: expected version '{NEW}', the previous version '{OLD}' runs"
    )
    assert rauc.boots == ["B"] * BOOT_ATTEMPTS + ["A"]
    assert rauc.status()["booted"] == "A"
    assert rauc.slot_status("B")["boot_status"] == "bad"
    assert all(status != "SUCCEEDED" for status, _ in reported(stack, JOB))


def test_a_degraded_new_system_is_not_marked_good_and_the_bootloader_falls_back(
    rauc: RaucDevice, stack: Stack
) -> None:
    create_job(stack, rauc)
    wait_reboot_request(stack, rauc)
    rauc.system_state = "degraded"  # B boots, but a service of the product failed

    assert power_cycle(stack, rauc) == "B"

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("FAILED", "ready_hook_failed")
    assert details(done)["message"].endswith("system is degraded")
    # Not marked good: each further reboot spends one of B's attempts, then A boots.
    assert rauc.boot_environment()[1]["B"] == BOOT_ATTEMPTS - 1
    booted = [rauc.reboot() for _ in range(BOOT_ATTEMPTS)]
    assert booted == ["B"] * (BOOT_ATTEMPTS - 1) + ["A"]
    assert rauc.bundle_version("A") == OLD
    assert rauc.slot_status("B")["boot_status"] == "bad"


def test_a_power_cut_between_install_and_reboot_start_ends_with_the_ready_check(
    rauc: RaucDevice, stack: Stack
) -> None:
    # Hold RAUC while it writes slot B, so the cloud stops listening before the install ends.
    rauc.hold_bootloader()
    bundle = create_job(stack, rauc)
    wait_until(lambda: rauc.bootloader_held, "rauc install to start writing slot B", 60)
    wait_until(
        lambda: details(stack.execution(JOB)).get("state", "").startswith("installation_"),
        "the cloud to hold installation_start",
        60,
    )
    stack.control.pause(drop=True)  # reboot_start will never be accepted
    rauc.release_bootloader()
    daemon_saw_the_install_end = f"job {JOB}: installed: Installing"
    wait_until(lambda: daemon_saw_the_install_end in stack.daemon_log(), "the install to end", 60)
    assert rauc.bundle_version("B") == NEW

    # The power goes: daemon, hook server and rauc service die at once; the device boots B.
    stack.stop_daemon(signal.SIGKILL)
    stack.stop_hookserver(signal.SIGKILL)
    stack.control.resume()
    assert outcome(stack.execution(JOB))[1].startswith("installation_")
    assert rauc.reboot(power_cut=True) == "B"
    stack.start_hookserver()
    stack.start_daemon()

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    states = [state for _, state in reported(stack, JOB)]
    assert "version_already_installed" not in states
    assert rauc.slot_status("B")["boot_status"] == "good"
    assert rauc.boot_environment()[1]["B"] == BOOT_ATTEMPTS, "the ready hook marked B good"
    assert rauc.slot_holds("B", bundle.image)
    slot = rauc.slot_status("B")["slot_status"]
    installed = slot.get("installed") if isinstance(slot, dict) else None
    assert isinstance(installed, dict), slot
    assert installed.get("count") == 1, "RAUC installed the bundle once"
