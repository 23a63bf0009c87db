"""`make demo`: one upparat job end to end on the local AWS IoT Jobs emulator and a real
RAUC device.

Starts mosquitto, the emulator, a file server, the shell hook server with the example
RAUC scripts (examples/hooks) and the daemon, next to a RAUC test device
(upparat.devstack.rauc: Debian's `rauc service` on a private D-Bus bus, two file-backed
slots, a simulated bootloader). Creates a job for a 20 MB bundle built with `rauc bundle`,
whose sha256 is also signed with a fresh key the device trusts (`require_signature =
true`); prints every status change; reboots the device when the restart hook asks; exits 0
only when the job SUCCEEDED and RAUC booted the new slot.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from upparat import signing
from upparat.devstack.rauc import RaucDevice, check_host, power_cycle
from upparat.devstack.stack import Stack

THING = "demo-device"
JOB_ID = "upparat_demo_2_0_0"
OLD_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def make_signing_key(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A fresh EC P-256 key (`openssl ecparam -name prime256v1 -genkey`); returns it and
    the path of its public key, which the device's config trusts."""
    directory.mkdir(mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    (directory / "demo.key").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = directory / "demo.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def describe_change(execution: dict[str, object]) -> str:
    details = execution.get("statusDetails")
    parts = [str(execution.get("status"))]
    if isinstance(details, dict):
        state = details.get("state")
        if state:
            parts.append(str(state))
        if "progress" in details:
            parts.append(f"{details['progress']}%")
        message = details.get("message")
        if message:
            parts.append(f"({message})")
    return " ".join(parts)


def run(workdir: Path, *, size: int, rate: float | None, timeout: float) -> bool:
    private, public = make_signing_key(workdir / "keys")
    trust = {"service": {"trusted_keys": str(public), "require_signature": "true"}}
    started = time.monotonic()
    with (
        RaucDevice(workdir / "device", version=OLD_VERSION) as device,
        Stack(
            workdir, thing=THING, hooks=device.hooks(), config={**device.stack_config(), **trust}
        ) as stack,
    ):
        say("starting a RAUC device: real rauc service on a private D-Bus system bus,")
        say("  slots A and B in files, a simulated bootloader; rauc install puts 1.0.0 in A")
        device.start()
        say(f"device {THING} booted slot {device.booted}, version {device.bundle_version('A')}")
        stack.start()
        stack.files.rate = rate
        bundle = device.make_bundle(
            NEW_VERSION, name="bundle", directory=workdir / "files", image_size=size
        )
        # What `upparat-job create --sign-key keys/demo.key` puts in the document.
        signature = signing.sign_digest(private, bytes.fromhex(bundle.sha256))
        say(
            f"rauc bundle: version {NEW_VERSION}, {bundle.size // 1_000_000} MB, format=plain,"
            f" signed by the device's CA; sha256 {bundle.sha256[:16]}…"
        )
        say(f"the device trusts {public} for job signatures and requires them")
        say(f"creating job {JOB_ID}, its sha256 signed; broker on port {stack.broker.port}")
        stack.create_job(
            JOB_ID,
            url=stack.files.url(bundle.path.name),
            version=NEW_VERSION,
            sha256=bundle.sha256,
            size=bundle.size,
            meta="demo",
            signature=base64.b64encode(signature).decode("ascii"),
        )
        last = ""
        reboots = 0
        deadline = time.monotonic() + timeout
        final: dict[str, object] = {}
        while time.monotonic() < deadline:
            execution = stack.execution(JOB_ID)
            change = describe_change(execution)
            if change != last:
                say(f"job {JOB_ID}: {change}")
                last = change
            status = execution.get("status")
            if status not in ("QUEUED", "IN_PROGRESS"):
                final = execution
                break
            if device.reboot_requested and reboots == 0:
                say("the restart hook ran `systemctl reboot`: stopping the daemon, the hook")
                say("  server and rauc service; the bootloader boots RAUC's primary slot")
                booted = power_cycle(stack, device)
                reboots += 1
                say(f"device booted slot {booted}; the hook server and the daemon start again")
            time.sleep(0.1)
        else:
            say(f"the job did not finish within {timeout:.0f} s; logs are in {workdir}")
            return False
        details = final.get("statusDetails")
        state = details.get("state") if isinstance(details, dict) else None
        booted = str(device.status().get("booted"))
        version = device.bundle_version(booted)
        boot_status = device.slot_status(booted).get("boot_status")
        updates = stack.updates(JOB_ID)
        say("summary:")
        print(f"  result:          {final.get('status')} / {state}")
        print(f"  rauc status:     booted {booted} ({boot_status}), bundle version {version}")
        written = device.slot_holds(booted, bundle.image)
        print(
            f"  slot {booted}:          {'holds' if written else 'does NOT hold'} the bundle's image"
        )
        print(f"  cloud updates:   {len(updates)} UpdateJobExecution messages")
        print(f"  bytes served:    {stack.files.bytes_served} of {bundle.size}")
        print(f"  daemon starts:   {stack.daemon_starts} (one simulated reboot)")
        print(f"  took:            {time.monotonic() - started:.1f} s")
        ok = (
            final.get("status") == "SUCCEEDED"
            and state == "complete_ready"
            and version == NEW_VERSION
            and boot_status == "good"
            and written
        )
        if not ok:
            say(f"the job did not succeed; the daemon's log:\n{stack.daemon_log()[-4000:]}")
        return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upparat.demo", description=__doc__)
    parser.add_argument("--size", type=int, default=20_000_000, help="bundle size in bytes")
    parser.add_argument(
        "--rate", type=float, default=8_000_000, help="file server bytes/s (0: unlimited)"
    )
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    try:
        check_host()
    except RuntimeError as e:
        say(f"cannot run the RAUC device on this machine: {e}")
        say("FAILED")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="upparat-demo-"))
    ok = False
    try:
        ok = run(workdir, size=args.size, rate=args.rate or None, timeout=args.timeout)
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if args.keep or not ok:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say("SUCCEEDED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
