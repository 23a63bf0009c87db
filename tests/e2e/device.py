"""A simulated device for the end-to-end tests: its firmware version lives in a file.

`Device` writes upparat 1.12-style hook scripts (sh) into the test's tmp_path with every
path baked in (the hook server gives scripts a clean environment), records each call in
`calls.log`, and simulates the reboot a restart hook asks for. Helpers read the outcome
back from the emulator, the file server and the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from upparat.devstack.stack import Stack
from upparat.io.journal import Journal

T = TypeVar("T")

OLD = "1.0.0"
NEW = "2.0.0"
TIMEOUT = 30.0
"""Generous: the suite shares two cores with other suites."""
MiB = 1024 * 1024

_DEFAULT_BODIES = {
    "version": 'cat "$ROOT/version"\n',
    "download": 'echo "download allowed"\n',
    # The bundle's first line says which version it holds (like a RAUC manifest).
    "install": (
        'echo $$ > "$ROOT/install.pid"\n'
        'test -f "$4" || { echo "no bundle at $4"; exit 1; }\n'
        'IFS= read -r header < "$4"\n'
        'echo "40% unpacking"\n'
        'printf "%s\\n" "${header#version=}" > "$ROOT/staged"\n'
        'echo "100% written to the other slot"\n'
    ),
    # hard-reboot: block like a real reboot until the test power-cycles the device.
    # Otherwise a soft restart: the service comes back at once with the staged version.
    "restart": (
        'if [ -e "$ROOT/hard-reboot" ]; then\n'
        '  echo $$ > "$ROOT/restart.pid"\n'
        "  sleep 60 &\n"
        '  echo $! > "$ROOT/restart-sleep.pid"\n'
        '  touch "$ROOT/reboot-requested"\n'
        "  wait\n"
        "  exit 0\n"
        "fi\n"
        'if [ -e "$ROOT/staged" ]; then mv "$ROOT/staged" "$ROOT/version"; fi\n'
        'echo "service restarted"\n'
    ),
    "ready": 'echo "system is up"\n',
}


class Device:
    """The device's files and hook scripts under `root`."""

    def __init__(self, root: Path, version: str = OLD) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.version_file.write_text(version + "\n")
        self.scripts: dict[str, Path] = {}
        for hook, body in _DEFAULT_BODIES.items():
            self.script(hook, body)

    @property
    def version_file(self) -> Path:
        return self.root / "version"

    @property
    def version(self) -> str:
        return self.version_file.read_text().strip()

    def script(self, hook: str, body: str) -> Path:
        """(Re)write the hook's script; every call appends `hook|$1|$2|$3|$4` to calls.log."""
        path = self.root / f"{hook}.sh"
        root = shlex.quote(str(self.root))
        path.write_text(
            "#!/bin/sh\n"
            f"ROOT={root}\n"
            f'printf "%s|%s|%s|%s|%s\\n" {hook} "$1" "$2" "$3" "$4" >> "$ROOT/calls.log"\n' + body
        )
        path.chmod(0o755)
        self.scripts[hook] = path
        return path

    def default_script(self, hook: str) -> Path:
        """Put the hook's default script back."""
        return self.script(hook, _DEFAULT_BODIES[hook])

    def counted_script(self, hook: str, *, retries: int, then: str, retry_body: str = "") -> Path:
        """A script that exits 3 (retry later) on its first `retries` calls, then runs `then`."""
        counter = f'"$ROOT/{hook}.count"'
        return self.script(
            hook,
            f"n=$(cat {counter} 2>/dev/null || echo 0)\n"
            f"echo $((n + 1)) > {counter}\n"
            f'if [ "$n" -lt {retries} ]; then {retry_body or "echo not now"}; exit 3; fi\n' + then,
        )

    def hooks(self, *names: str) -> dict[str, Path]:
        """The scripts for the config (all by default)."""
        return {n: p for n, p in self.scripts.items() if not names or n in names}

    def calls(self, hook: str | None = None) -> list[list[str]]:
        """[hook, $1, $2, $3, $4] per recorded call, oldest first."""
        log = self.root / "calls.log"
        if not log.exists():
            return []
        rows = [line.split("|") for line in log.read_text().splitlines()]
        return [r for r in rows if hook is None or r[0] == hook]

    def pid(self, name: str) -> int:
        return int((self.root / f"{name}.pid").read_text())

    def hard_reboots(self) -> None:
        (self.root / "hard-reboot").touch()

    def soft_restarts(self) -> None:
        (self.root / "hard-reboot").unlink(missing_ok=True)

    @property
    def reboot_requested(self) -> bool:
        return (self.root / "reboot-requested").exists()

    def power_cycle(self, stack: Stack, *, boots_into_new_slot: bool = True) -> None:
        """The restart hook asked for a reboot: everything stops, the device comes back."""
        stack.stop_daemon()
        stack.stop_hookserver()
        (self.root / "reboot-requested").unlink()
        staged = self.root / "staged"
        if boots_into_new_slot:
            staged.replace(self.version_file)
        else:
            staged.unlink()
        stack.start_hookserver()
        stack.start_daemon()


# --- bundles ------------------------------------------------------------------------------


def publish_bundle(stack: Stack, name: str, version: str, size: int) -> tuple[str, str]:
    """A bundle of `size` bytes whose first line is `version=<version>`; returns (URL, sha256)."""
    header = f"version={version}\n".encode()
    body = random.Random(name).randbytes(size - len(header))
    data = header + body
    (stack.workdir / "files" / name).write_bytes(data)
    return stack.files.url(name), hashlib.sha256(data).hexdigest()


def create_update(
    stack: Stack,
    job_id: str,
    *,
    version: str = NEW,
    size: int = MiB,
    name: str | None = None,
    presigned_expires_in: int = 3600,
    retries: Mapping[str, int] | None = None,
    in_progress_timeout_minutes: int | None = None,
    **document: object,
) -> tuple[str, str]:
    """Publish a bundle and create a job for it (sha256 and size in the document);
    `retries` and `in_progress_timeout_minutes` are the job's, as in AWS CreateJob."""
    url, sha = publish_bundle(stack, name or f"{job_id}.bundle", version, size)
    doc = {"file": presigned(url), "version": version, "sha256": sha, "size": size, **document}
    stack.control.create_job(
        job_id,
        doc,
        [stack.thing],
        presigned_expires_in=presigned_expires_in,
        retries=retries,
        in_progress_timeout_minutes=in_progress_timeout_minutes,
    )
    return url, sha


def presigned(url: str) -> str:
    """The placeholder the cloud replaces with a pre-signed URL in every document it sends."""
    return f"${{aws:iot:s3-presigned-url:{url}}}"


# --- observing ----------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T | None], what: str, timeout: float = TIMEOUT, interval: float = 0.05
) -> T:
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def finished(stack: Stack, job_id: str, timeout: float = TIMEOUT) -> dict[str, object]:
    """Wait for a terminal status; return the execution."""
    return stack.wait_status(
        job_id, "SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", timeout=timeout
    )


def details(execution: dict[str, object]) -> dict[str, str]:
    found = execution.get("statusDetails")
    assert isinstance(found, dict), execution
    return {str(k): str(v) for k, v in found.items()}


def outcome(execution: dict[str, object]) -> tuple[object, str]:
    """(status, statusDetails.state)."""
    return execution.get("status"), details(execution).get("state", "")


def accepted_updates(stack: Stack, job_id: str) -> list[dict[str, object]]:
    """The job's updates the emulator accepted, oldest first."""
    return [u for u in stack.updates(job_id) if u.get("result") == "accepted"]


def reported(stack: Stack, job_id: str) -> list[tuple[str, str]]:
    """(status, statusDetails.state) of every accepted update of the job, oldest first."""
    out: list[tuple[str, str]] = []
    for update in accepted_updates(stack, job_id):
        request = update.get("request")
        assert isinstance(request, dict), update
        found = request.get("statusDetails")
        state = found.get("state", "") if isinstance(found, dict) else ""
        out.append((str(request.get("status")), str(state)))
    return out


def states(stack: Stack, job_id: str) -> list[str]:
    return [state for _, state in reported(stack, job_id)]


def assert_in_order(seen: Sequence[str], expected: Iterable[str]) -> None:
    """`expected` occurs in `seen` in this order (other items may come in between)."""
    rest = iter(seen)
    for item in expected:
        assert any(s == item for s in rest), f"{item!r} missing (in order) from {list(seen)}"


def pid_gone(pid: int) -> bool:
    """The process is gone; a zombie (dead, not reaped yet) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead too
    return True


def journal(stack: Stack) -> object:
    return Journal(stack.state_dir).load()


def download_path(stack: Stack, job_id: str) -> Path:
    """Where the daemon downloads a job's file (`<download_location>/upparat/<job id>`)."""
    return stack.download_dir / "upparat" / job_id
