"""A RAUC device for the demo and the end-to-end tests: Debian's real `rauc service` on a
private D-Bus system bus, two file-backed A/B slots, a throw-away CA, and a simulated
bootloader whose environment RAUC edits through its custom backend.

Everything lives under one directory (the bus socket under a short /tmp one), so devices
run side by side; processes are started and stopped by PID. The machine's own D-Bus,
/etc/rauc and boot loader are never touched. Needs root: RAUC loop-mounts every bundle.

What is simulated, and what a real board has instead:
- the bootloader: `boot.env` holds BOOT_ORDER and BOOT_<slot>_LEFT the way RAUC's U-Boot
  integration keeps them; `reboot()` picks a slot from it as U-Boot's boot script would;
- systemd: `bin/systemctl`, first on the hook scripts' PATH, turns `systemctl reboot` into
  a reboot request the test or the demo carries out, and answers `is-system-running`;
- bundles are `format=plain`: RAUC's recommended `format=verity` needs device-mapper
  (dm-verity), which the machines this runs on lack. Plain bundles are mounted with a
  loop device and their signature is checked over the whole file before installing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import attrs

from hookservers.shell.config import DEFAULT_SCRIPT_PATH
from upparat.devstack.dbus import PrivateBus
from upparat.devstack.procs import stop_process
from upparat.devstack.stack import HOOKS, Stack

EXAMPLE_HOOKS = Path(__file__).resolve().parents[2] / "examples" / "hooks"
COMPATIBLE = "upparat-test-device"
RAUC_BUS_NAME = "de.pengutronix.rauc"
SLOTS = {"A": "rootfs.0", "B": "rootfs.1"}
"""Bootname -> RAUC slot name."""
BOOT_ATTEMPTS = 3
"""Boot attempts a slot gets when RAUC makes it primary or marks it good (U-Boot's default)."""
MiB = 1024 * 1024


def rauc_binary() -> str:
    found = shutil.which("rauc") or ("/usr/bin/rauc" if os.path.exists("/usr/bin/rauc") else None)
    if found is None:
        raise RuntimeError("rauc is not installed: run `make test`, which installs it with apt-get")
    return found


def check_host() -> None:
    """Raise with the reason when this machine cannot run the RAUC device."""
    rauc_binary()
    if shutil.which("mksquashfs") is None and not os.path.exists("/usr/bin/mksquashfs"):
        raise RuntimeError(
            "mksquashfs (squashfs-tools) is not installed; `make test` installs it with apt-get"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the RAUC device needs root: rauc service loop-mounts bundles")
    if not os.path.exists("/dev/loop-control"):
        raise RuntimeError("no /dev/loop-control: rauc service cannot loop-mount bundles here")
    if "squashfs" not in Path("/proc/filesystems").read_text():
        raise RuntimeError("the kernel has no squashfs: RAUC bundles cannot be mounted here")


# --- certificates ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Signer:
    """A signing certificate and its key, and the CA that issued it (a keyring trusting it)."""

    cert: Path
    key: Path
    ca: Path


def make_ca(directory: Path, name: str) -> Signer:
    """A throw-away CA and one signing certificate it issued (EC P-256: quick to make)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / f"{name}-ca.key.pem", directory / f"{name}-ca.cert.pem"
    key, cert = directory / f"{name}-signer.key.pem", directory / f"{name}-signer.cert.pem"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        ["openssl", "req", "-x509", *new_key, "-keyout", str(ca_key), "-out", str(ca_cert)],
        ["-days", "3650", "-subj", f"/O=upparat tests/CN={name} CA"],
        ["-addext", "basicConstraints=critical,CA:TRUE"],
        ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )
    _run(
        ["openssl", "req", "-x509", *new_key, "-keyout", str(key), "-out", str(cert)],
        ["-CA", str(ca_cert), "-CAkey", str(ca_key)],
        ["-days", "3650", "-subj", f"/O=upparat tests/CN={name} bundle signer"],
        ["-addext", "basicConstraints=critical,CA:FALSE"],
        ["-addext", "keyUsage=critical,digitalSignature"],
    )
    return Signer(cert=cert, key=key, ca=ca_cert)


def _run(*parts: list[str], env: Mapping[str, str] | None = None) -> str:
    argv = [arg for part in parts for arg in part]
    done = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, check=False
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError(f"{shlex.join(argv)} exited with {done.returncode}: {output}")
    return done.stdout


# --- bundles ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Bundle:
    path: Path
    version: str
    image: Path
    """The slot image inside the bundle (a copy beside it), to compare a slot with."""
    sha256: str
    size: int


MANIFEST = """\
[update]
compatible={compatible}
version={version}

# format=verity, RAUC's recommended format, needs device-mapper (dm-verity), which the
# machines running the tests and the demo lack: plain bundles are loop-mounted instead.
[bundle]
format=plain

[image.rootfs]
filename=rootfs.img
"""


def image_bytes(version: str, size: int) -> bytes:
    """A slot image: a line naming the version, then bytes that differ per version."""
    head = f"upparat test image {version}\n".encode()
    return head + random.Random(version).randbytes(max(0, size - len(head)))


def build_bundle(
    path: Path,
    *,
    version: str,
    signer: Signer,
    compatible: str = COMPATIBLE,
    image_size: int = MiB,
) -> Bundle:
    """`rauc bundle` of one raw image for the slot class `rootfs`, signed by `signer`."""
    content = path.with_name(path.name + ".content")
    shutil.rmtree(content, ignore_errors=True)
    content.mkdir(parents=True)
    (content / "manifest.raucm").write_text(MANIFEST.format(compatible=compatible, version=version))
    image = content / "rootfs.img"
    image.write_bytes(image_bytes(version, image_size))
    path.unlink(missing_ok=True)
    _run(
        [rauc_binary(), "bundle", f"--cert={signer.cert}", f"--key={signer.key}"],
        # Checks the signature right away, as the device will.
        [f"--signing-keyring={signer.ca}"],
        # The images are random bytes: compressing them would only cost time.
        ["--mksquashfs-args=-noI -noD -noF -noX", str(content), str(path)],
    )
    kept = path.with_name(path.name + ".image")
    image.replace(kept)
    shutil.rmtree(content)
    data = path.read_bytes()
    return Bundle(
        path=path,
        version=version,
        image=kept,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


# --- the device's files -------------------------------------------------------------------

SYSTEM_CONF = """\
# RAUC's system.conf of the upparat test device (upparat/devstack/rauc.py).
[system]
compatible={compatible}
# A custom backend script stands in for the bootloader (see [handlers]).
bootloader=custom
# RAUC keeps its slot status here (central.raucs): the bundle version of each slot, which
# the example version hook reads.
data-directory={data}

[handlers]
bootloader-custom-backend={backend}

[keyring]
path={keyring}

[slot.rootfs.0]
device={slot_a}
type=raw
bootname=A

[slot.rootfs.1]
device={slot_b}
type=raw
bootname=B
"""

BACKEND = """\
#!/bin/sh
# RAUC's custom bootloader backend on the upparat test device ([handlers]
# bootloader-custom-backend in system.conf): RAUC runs it as
#   get-primary | set-primary SLOT | get-state SLOT | set-state SLOT good|bad
# The "bootloader environment" is boot.env, kept as RAUC's U-Boot integration keeps it:
# BOOT_ORDER lists the bootnames in boot order, BOOT_<slot>_LEFT counts the boot attempts
# left (0: the slot is bad). The simulated bootloader reads it at every simulated reboot.
set -eu
dir={dir}
attempts={attempts}
. "$dir/boot.env"

left() {{
    case $1 in
        A) echo "$BOOT_A_LEFT" ;;
        B) echo "$BOOT_B_LEFT" ;;
        *) echo "bootloader: no slot $1" >&2; exit 1 ;;
    esac
}}

save() {{  # save SLOT ATTEMPTS_LEFT [ORDER]
    case $1 in
        A) BOOT_A_LEFT=$2 ;;
        B) BOOT_B_LEFT=$2 ;;
        *) echo "bootloader: no slot $1" >&2; exit 1 ;;
    esac
    BOOT_ORDER=${{3:-$BOOT_ORDER}}
    printf 'BOOT_ORDER="%s"\\nBOOT_A_LEFT=%s\\nBOOT_B_LEFT=%s\\n' \\
        "$BOOT_ORDER" "$BOOT_A_LEFT" "$BOOT_B_LEFT" > "$dir/boot.env.tmp"
    mv "$dir/boot.env.tmp" "$dir/boot.env"
}}

# A test holds RAUC at its next change of the environment by creating the file "hold".
case $1 in set-*)
    while [ -e "$dir/hold" ]; do : > "$dir/held"; sleep 0.05; done
    rm -f "$dir/held" ;;
esac

case $1 in
    get-primary)  # what the bootloader boots next: the first slot with attempts left
        for slot in $BOOT_ORDER; do
            if [ "$(left "$slot")" -gt 0 ]; then echo "$slot"; exit 0; fi
        done
        echo "${{BOOT_ORDER%% *}}" ;;
    set-primary)
        if [ "$2" = A ]; then order="A B"; else order="B A"; fi
        save "$2" "$attempts" "$order" ;;
    get-state)
        if [ "$(left "$2")" -gt 0 ]; then echo good; else echo bad; fi ;;
    set-state)
        if [ "$3" = good ]; then save "$2" "$attempts"; else save "$2" 0; fi ;;
    *)
        echo "bootloader: unknown command $1" >&2
        exit 1 ;;
esac
"""

SYSTEMCTL = """\
#!/bin/sh
# systemd as the example hooks meet it on the upparat test device (first on the hook
# scripts' PATH): "reboot" asks the test or the demo to reboot the device, as the real one
# asks systemd, and returns; "is-system-running" answers from the file system-state.
set -eu
dir={dir}
case ${{1:-}} in
    reboot)
        : > "$dir/reboot-requested" ;;
    is-system-running)
        state=$(cat "$dir/system-state")
        echo "$state"
        [ "$state" = running ] ;;
    *)
        echo "systemctl on the test device: $* is not simulated" >&2
        exit 1 ;;
esac
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


_ENV_LINE = re.compile(r'^(BOOT_ORDER|BOOT_A_LEFT|BOOT_B_LEFT)="?([^"]*)"?$')


class RaucDevice:
    """A device whose updates RAUC installs; start() gives it `version` in slot A, booted."""

    def __init__(self, root: Path, *, version: str = "1.0.0", slot_size: int = 64 * MiB) -> None:
        self.root = root
        self.factory_version = version
        self.slot_size = slot_size
        self.pki = root / "pki"
        self.bundles = root / "bundles"
        self.data = root / "data"
        self.mount = root / "mnt"
        self.run_dir = root / "run"
        """The example hooks' flag files (FLAG_DIR): metered, install.lock, busy."""
        self.bin = root / "bin"
        self.system_conf = root / "system.conf"
        self.boot_env = root / "boot.env"
        self.service_log = root / "rauc-service.log"
        # unix socket paths are limited to 108 bytes: keep the bus socket short.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="upr-", dir="/tmp"))
        self.bus = PrivateBus(root, self._sock_dir, [RAUC_BUS_NAME])
        self.service: subprocess.Popen[bytes] | None = None
        self.booted: str | None = None
        self.boots: list[str] = []
        """Every slot the simulated bootloader started, failed attempts included."""
        self.ca: Signer | None = None
        self.foreign_ca: Signer | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> RaucDevice:
        check_host()
        for d in (self.root, self.bundles, self.data, self.mount, self.run_dir, self.bin):
            d.mkdir(parents=True, exist_ok=True)
        self.ca = make_ca(self.pki, "device")
        self.foreign_ca = make_ca(self.pki, "foreign")
        for bootname in SLOTS:
            with self.slot_path(bootname).open("wb") as f:
                f.truncate(self.slot_size)  # sparse: costs no disk
        _write(
            self.system_conf,
            SYSTEM_CONF.format(
                compatible=COMPATIBLE,
                data=self.data,
                backend=self.root / "bootloader.sh",
                keyring=self.ca.ca,
                slot_a=self.slot_path("A"),
                slot_b=self.slot_path("B"),
            ),
        )
        quoted = shlex.quote(str(self.root))
        _write(
            self.root / "bootloader.sh",
            BACKEND.format(dir=quoted, attempts=BOOT_ATTEMPTS),
            0o755,
        )
        _write(self.bin / "systemctl", SYSTEMCTL.format(dir=quoted), 0o755)
        self.system_state = "running"
        self.bus.start()
        self._provision()
        return self

    def _provision(self) -> None:
        """The factory: `rauc install` of the first version into A, as from a recovery
        system in B, so RAUC records A's bundle version; then A boots, B (empty) is bad."""
        self._save_env(["B", "A"], {"A": 0, "B": 1})
        self._start_service("B")
        factory = self.make_bundle(self.factory_version, name="factory")
        self.rauc("install", str(factory.path))
        self.reboot()
        self.rauc("status", "mark-good", "booted")
        self.rauc("status", "mark-bad", "other")
        self.boots.clear()

    def close(self) -> None:
        self._stop_service()
        self.bus.stop()
        self._unmount_leftovers()
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> RaucDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unmount_leftovers(self) -> None:
        # A rauc service killed mid-install leaves its bundle mounted (on a loop device,
        # which the unmount frees).
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1].replace("\\040", " ")
            if target == str(self.mount) or target.startswith(f"{self.mount}/"):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)

    # --- rauc service ------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment of a RAUC client on this device's bus."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address
        return env

    def rauc(self, *args: str) -> str:
        """Run the rauc client (on this device's bus); its stdout, or RuntimeError."""
        return _run([rauc_binary(), *args], env=self.env)

    def _start_service(self, bootname: str, timeout: float = 15.0) -> None:
        with self.service_log.open("ab") as log:
            log.write(f"--- rauc service, booted from {bootname}\n".encode())
            log.flush()
            self.service = subprocess.Popen(
                [
                    rauc_binary(),
                    "service",
                    f"--conf={self.system_conf}",
                    f"--mount={self.mount}",
                    # RAUC learns the booted slot from the kernel command line (rauc.slot=)
                    # on a real board; here the simulated bootloader tells it.
                    f"--override-boot-slot={bootname}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.status()
                return
            except RuntimeError:
                if self.service.poll() is not None:
                    raise RuntimeError(
                        f"rauc service exited with {self.service.returncode}; see"
                        f" {self.service_log}"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"rauc service was not on the bus after {timeout} s"
                    ) from None
                time.sleep(0.05)

    def _stop_service(self, sig: int = signal.SIGTERM) -> None:
        proc, self.service = self.service, None
        if proc is None:
            return
        if sig != signal.SIGTERM and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        stop_process(proc)

    # --- the simulated bootloader --------------------------------------------------------

    def boot_environment(self) -> tuple[list[str], dict[str, int]]:
        """BOOT_ORDER and the boot attempts left per slot, from boot.env."""
        values: dict[str, str] = {}
        for line in self.boot_env.read_text().splitlines():
            m = _ENV_LINE.match(line)
            if m is not None:
                values[m.group(1)] = m.group(2)
        order = values["BOOT_ORDER"].split()
        return order, {slot: int(values[f"BOOT_{slot}_LEFT"]) for slot in SLOTS}

    def _save_env(self, order: list[str], left: Mapping[str, int]) -> None:
        tmp = self.boot_env.with_name("boot.env.tmp")
        tmp.write_text(
            f'BOOT_ORDER="{" ".join(order)}"\n'
            + "".join(f"BOOT_{slot}_LEFT={left[slot]}\n" for slot in SLOTS)
        )
        tmp.replace(self.boot_env)

    def reboot(self, *, failing: Collection[str] = (), power_cut: bool = False) -> str:
        """Stop rauc service (SIGKILL for a power cut), boot as U-Boot's RAUC script does
        (the first slot in BOOT_ORDER with attempts left, one attempt spent), start the
        service as booted from it; returns its bootname. A slot in `failing` does not come
        up (say, a kernel panic): its attempt is spent and the bootloader tries again."""
        self._stop_service(signal.SIGKILL if power_cut else signal.SIGTERM)
        order, left = self.boot_environment()
        while True:
            slot = next((s for s in order if left[s] > 0), None)
            if slot is None:
                raise RuntimeError(f"no slot has boot attempts left ({self.boot_env})")
            left[slot] -= 1
            self._save_env(order, left)
            self.boots.append(slot)
            if slot not in failing:
                break
        self.booted = slot
        self._start_service(slot)
        return slot

    @property
    def reboot_requested(self) -> bool:
        """`systemctl reboot` ran (the restart hook) since the last reboot()."""
        return (self.root / "reboot-requested").exists()

    def clear_reboot_request(self) -> None:
        (self.root / "reboot-requested").unlink(missing_ok=True)

    def hold_bootloader(self) -> None:
        """RAUC's next change of the bootloader environment waits until release_bootloader():
        `rauc install` changes it first when it starts to write the slot."""
        (self.root / "hold").touch()

    @property
    def bootloader_held(self) -> bool:
        return (self.root / "held").exists()

    def release_bootloader(self) -> None:
        (self.root / "hold").unlink(missing_ok=True)

    # --- what the device's systemd says ----------------------------------------------

    @property
    def system_state(self) -> str:
        return (self.root / "system-state").read_text().strip()

    @system_state.setter
    def system_state(self, state: str) -> None:
        """What `systemctl is-system-running` prints: running, starting, degraded, ..."""
        (self.root / "system-state").write_text(state + "\n")

    # --- bundles and slots -----------------------------------------------------------

    def make_bundle(
        self,
        version: str,
        *,
        name: str | None = None,
        directory: Path | None = None,
        foreign: bool = False,
        image_size: int = MiB,
    ) -> Bundle:
        """A bundle of `version` signed by the device's CA (or one the device does not trust)."""
        signer = self.foreign_ca if foreign else self.ca
        assert signer is not None, "start() the device first"
        where = directory or self.bundles
        where.mkdir(parents=True, exist_ok=True)
        return build_bundle(
            where / f"{name or version}.raucb",
            version=version,
            signer=signer,
            image_size=image_size,
        )

    def slot_path(self, bootname: str) -> Path:
        return self.root / f"{SLOTS[bootname]}.img"

    def slot_holds(self, bootname: str, image: Path) -> bool:
        """The slot starts with the image's bytes (the rest of a raw slot is left as it was)."""
        want = image.read_bytes()
        with self.slot_path(bootname).open("rb") as f:
            return f.read(len(want)) == want

    # --- what RAUC says ------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """`rauc status --detailed --output-format=json`."""
        parsed = json.loads(self.rauc("status", "--detailed", "--output-format=json"))
        assert isinstance(parsed, dict)
        return parsed

    def slot_status(self, bootname: str) -> dict[str, object]:
        """RAUC's entry for the slot: state, boot_status, slot_status.bundle.version, ..."""
        slots = self.status()["slots"]
        assert isinstance(slots, list)
        for entry in slots:
            found = entry.get(SLOTS[bootname])
            if isinstance(found, dict):
                return found
        raise KeyError(bootname)

    def bundle_version(self, bootname: str) -> str | None:
        """The version of the bundle RAUC last installed into the slot."""
        detail = self.slot_status(bootname).get("slot_status")
        bundle = detail.get("bundle") if isinstance(detail, dict) else None
        version = bundle.get("version") if isinstance(bundle, dict) else None
        return version if isinstance(version, str) else None

    # --- the example hooks ---------------------------------------------------------------

    def hooks(self) -> dict[str, Path]:
        """examples/hooks/*.sh, unchanged: what a device team copies."""
        return {hook: EXAMPLE_HOOKS / f"{hook}.sh" for hook in HOOKS}

    def hookserver_options(self) -> dict[str, str]:
        """[hookserver] keys: the scripts reach RAUC on this device's bus, find its
        systemctl first, and keep their flag files in run/."""
        environment = [
            f"DBUS_SYSTEM_BUS_ADDRESS={self.bus.address}",
            f"FLAG_DIR={self.run_dir}",
        ]
        return {
            "environment": " ".join(shlex.quote(item) for item in environment),
            "script_path": f"{self.bin}:{DEFAULT_SCRIPT_PATH}",
        }

    def stack_config(self) -> dict[str, dict[str, str]]:
        return {"hookserver": self.hookserver_options()}


def power_cycle(
    stack: Stack, device: RaucDevice, *, power_cut: bool = False, failing: Collection[str] = ()
) -> str:
    """Reboot the whole device: the daemon, the hook server (its running script with it)
    and rauc service stop, SIGTERM as systemd stops them or SIGKILL for a power cut; the
    bootloader picks a slot; all start again. Returns the booted slot's bootname.

    A power cut kills the hook server alone, not a script it runs: cut only while none runs.
    """
    sig = signal.SIGKILL if power_cut else signal.SIGTERM
    stack.stop_daemon(sig)
    stack.stop_hookserver(sig)
    device.clear_reboot_request()
    booted = device.reboot(power_cut=power_cut, failing=failing)
    stack.start_hookserver()
    stack.start_daemon()
    return booted
