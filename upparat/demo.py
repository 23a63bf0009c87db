"""`make demo`: one upparat job end to end on the local AWS IoT Jobs emulator.

Starts mosquitto, the emulator, a file server, the shell hook server with the
example RAUC-style scripts and the daemon; creates a job for a generated 20 MB
bundle, signed with a fresh key the device trusts (`require_signature = true`);
prints every status change; power-cycles the fake device when the restart hook
asks for a reboot; exits 0 only when the job SUCCEEDED.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from upparat import signing
from upparat.devstack.stack import Stack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hooks"
THING = "demo-device"
JOB_ID = "upparat_demo_2_0_0"
OLD_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def make_demo_bundle(path: Path, size: int) -> str:
    """A fake RAUC bundle: a `version=` line the example scripts read, then filler."""
    digest = hashlib.sha256()
    header = f"version={NEW_VERSION}\n".encode()
    block = hashlib.sha256(b"upparat demo").digest().replace(b"\n", b" ") * 4096
    with path.open("wb") as f:
        f.write(header)
        digest.update(header)
        left = size - len(header)
        while left > 0:
            chunk = block[: min(len(block), left)]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


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


def power_cycle(stack: Stack, root: Path) -> None:
    say("the restart hook asked for a reboot: stopping the daemon and the hook server")
    stack.stop_daemon()
    stack.stop_hookserver()
    (root / "run" / "reboot-requested").unlink(missing_ok=True)
    subprocess.run(
        [str(EXAMPLES / "fake-rauc"), "demo-reboot"],
        env={**os.environ, "UPPARAT_DEMO_ROOT": str(root)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    say("device booted into the new slot; starting the hook server and the daemon again")
    stack.start_hookserver()
    stack.start_daemon()


def run(workdir: Path, *, size: int, rate: float | None, timeout: float) -> bool:
    root = workdir / "device"
    setup = subprocess.run(
        [str(EXAMPLES / "demo-setup.sh"), str(root), OLD_VERSION],
        capture_output=True,
        text=True,
        check=True,
    )
    hooks = {
        name.strip(): Path(path.strip())
        for name, _, path in (line.partition("=") for line in setup.stdout.splitlines()[1:])
    }
    (root / "run" / "upparat" / "hard-reboot").touch()
    private, public = make_signing_key(workdir / "keys")
    trust = {"service": {"trusted_keys": str(public), "require_signature": "true"}}
    started = time.monotonic()
    with Stack(workdir, thing=THING, hooks=hooks, config=trust) as stack:
        stack.start()
        stack.files.rate = rate
        sha256 = make_demo_bundle(workdir / "files" / "bundle.raucb", size)
        # What `upparat-job create --sign-key keys/demo.key` puts in the document.
        signature = signing.sign_digest(private, bytes.fromhex(sha256))
        say(f"device {THING} runs version {OLD_VERSION}; broker on port {stack.broker.port}")
        say(f"the device trusts {public} and requires signed jobs")
        say(
            f"creating job {JOB_ID}: version {NEW_VERSION}, {size // 1_000_000} MB,"
            f" sha256 {sha256[:16]}…, signed"
        )
        stack.create_job(
            JOB_ID,
            url=stack.files.url("bundle.raucb"),
            version=NEW_VERSION,
            sha256=sha256,
            size=size,
            meta="demo",
            signature=base64.b64encode(signature).decode("ascii"),
        )
        last = ""
        rebooted = False
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
            if not rebooted and (root / "run" / "reboot-requested").exists():
                power_cycle(stack, root)
                rebooted = True
            time.sleep(0.1)
        else:
            say(f"the job did not finish within {timeout:.0f} s; logs are in {workdir}")
            return False
        details = final.get("statusDetails")
        state = details.get("state") if isinstance(details, dict) else None
        updates = stack.updates(JOB_ID)
        version = (root / "etc" / "os-release").read_text()
        say("summary:")
        print(f"  result:          {final.get('status')} / {state}")
        print(f"  device version:  {version.split('VERSION_ID=')[-1].strip().strip(chr(34))}")
        print(f"  cloud updates:   {len(updates)} UpdateJobExecution messages")
        print(f"  bytes served:    {stack.files.bytes_served} of {size}")
        print(f"  daemon starts:   {stack.daemon_starts} (one simulated reboot)")
        print(f"  took:            {time.monotonic() - started:.1f} s")
        ok = final.get("status") == "SUCCEEDED" and state == "complete_ready"
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
