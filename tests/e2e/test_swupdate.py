"""The SWUpdate example hooks end to end, with Debian's real `swupdate` (2022.12).

A signed `.swu` goes from the file server through the daemon and the hook server to
`examples/hooks/swupdate/install.sh`, which runs `swupdate -i` into a file-backed raw
"device"; bundles signed by a stranger, tampered with or built for other hardware fail
with SWUpdate's own reason. swupdate gets private paths only (its TMPDIR, a private
swupdate.cfg, `-B none`), so tests run in parallel and the machine's state is untouched.
"""

from __future__ import annotations

import hashlib
import random
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    NEW,
    OLD,
    Device,
    MiB,
    details,
    finished,
    outcome,
    presigned,
    wait_until,
)
from upparat.devstack.stack import Stack
from upparat.devstack.swupdate import HARDWARE_REVISION, Bundles

pytestmark = pytest.mark.slow

JOB = "upparat_swu_2_0_0"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hooks" / "swupdate"
BOARD = "test-board"
SLOT_SIZE = 2 * MiB


@attrs.frozen(kw_only=True)
class SwuDevice:
    """The test device's SWUpdate side: a raw slot file, sw-versions, private paths."""

    device: Device
    slot: Path
    versions: Path
    scratch: Path
    """swupdate's TMPDIR (sockets, copies of images): short, private, removed after."""
    bundles: Bundles

    def environment(self) -> str:
        """`[hookserver] environment`: what the example scripts read instead of /etc."""
        config = self.device.root / "swupdate.cfg"
        # An empty swupdate.cfg of our own: the machine's /etc/swupdate.cfg (if any) must
        # not choose a bootloader; -B none keeps the bootloader environment in memory.
        config.write_text("globals :\n{\n};\n")
        values = {
            "SWUPDATE_CERT": str(self.bundles.trusted.ca_cert),
            "SWUPDATE_HWREVISION": f"{BOARD}:{HARDWARE_REVISION}",
            "SWUPDATE_ARGS": f"-f {config} -B none",
            "SWUPDATE_VERSIONS": str(self.versions),
            "TMPDIR": str(self.scratch),
        }
        return " ".join(shlex.quote(f"{name}={value}") for name, value in values.items())

    def installed_version(self) -> str:
        return self.versions.read_text().split()[1]


@pytest.fixture
def swu(device: Device, tmp_path: Path) -> Iterator[SwuDevice]:
    slot = device.root / "rootfs-b.img"
    slot.write_bytes(bytes(SLOT_SIZE))
    versions = device.root / "sw-versions"
    versions.write_text(f"rootfs {OLD}\n")
    # The real example scripts, behind Device's wrappers (which log every call).
    device.script("version", f'exec {shlex.quote(str(EXAMPLES / "version.sh"))} "$@"\n')
    device.script("install", f'exec {shlex.quote(str(EXAMPLES / "install.sh"))} "$@"\n')
    # A simulated reboot into the new slot: the booted image brings its own sw-versions,
    # here the image's first line (see `image`).
    device.script(
        "restart",
        f'head -n 1 {shlex.quote(str(slot))} > "$ROOT/sw-versions"\necho "booted rootfs-b"\n',
    )
    # Unix socket paths are short (108 bytes): swupdate's sockets live under /tmp.
    scratch = Path(tempfile.mkdtemp(prefix="swu-", dir="/tmp"))
    try:
        yield SwuDevice(
            device=device,
            slot=slot,
            versions=versions,
            scratch=scratch,
            bundles=Bundles.create(tmp_path / "swu", slot),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def image(version: str) -> bytes:
    """A root file system image whose first line is its sw-versions entry."""
    header = f"rootfs {version}\n".encode()
    return header + random.Random(version).randbytes(MiB - len(header))


def start(swu: SwuDevice, make_stack: StackFactory) -> Stack:
    return make_stack(swu.device, config={"hookserver": {"environment": swu.environment()}})


def create_job(stack: Stack, bundle: Path, version: str = NEW) -> None:
    """Serve the bundle and create a job for it (sha256 and size in the document)."""
    served = stack.workdir / "files" / bundle.name
    shutil.copyfile(bundle, served)
    data = served.read_bytes()
    document = {
        "file": presigned(stack.files.url(bundle.name)),
        "version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    stack.control.create_job(JOB, document, [stack.thing])


def test_a_signed_swu_installs_through_swupdate(swu: SwuDevice, make_stack: StackFactory) -> None:
    new = image(NEW)
    bundle = swu.bundles.good("fw-2.0.0.swu", version=NEW, image=new)
    stack = start(swu, make_stack)
    create_job(stack, bundle)

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), stack.describe_for_humans(JOB)
    # swupdate wrote the image into the raw device, and nothing after it.
    written = swu.slot.read_bytes()
    assert written[: len(new)] == new
    assert written[len(new) :] == bytes(SLOT_SIZE - len(new))
    assert swu.installed_version() == NEW
    calls = [c[0] for c in swu.device.calls()]
    assert calls == ["version", "download", "install", "restart", "version", "ready"]
    # The hook removed its private TMPDIR (swupdate's sockets and image copies).
    wait_until(lambda: not any(swu.scratch.iterdir()), "swupdate's scratch files to go")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("foreign", "swupdate failed: Authentication of all signatures failed"),
        ("tampered", "swupdate failed: HASH mismatch"),
        ("wrong-hardware", "swupdate failed: SW not compatible with hardware"),
    ],
)
def test_a_bad_swu_fails_with_swupdates_reason(
    swu: SwuDevice, make_stack: StackFactory, kind: str, reason: str
) -> None:
    new = image(NEW)
    name = f"fw-{kind}.swu"
    match kind:
        case "foreign":
            bundle = swu.bundles.foreign_signed(name, version=NEW, image=new)
        case "tampered":
            bundle = swu.bundles.tampered(name, version=NEW, image=new)
        case _:
            bundle = swu.bundles.wrong_hardware(name, version=NEW, image=new, revision="2.0")
    stack = start(swu, make_stack)
    create_job(stack, bundle)

    done = finished(stack, JOB, timeout=60)
    assert outcome(done) == ("FAILED", "installation_hook_failed"), stack.describe_for_humans(JOB)
    found = details(done)
    assert found["reason"] == "HOOK_EXIT_NONZERO"
    # The hook server's message ends with the script's last line.
    assert f"exited with status 1: {reason}" in found["message"], found
    # Nothing was written and nothing restarted: the device runs what it ran.
    assert swu.slot.read_bytes() == bytes(SLOT_SIZE)
    assert swu.installed_version() == OLD
    assert "restart" not in [c[0] for c in swu.device.calls()]
