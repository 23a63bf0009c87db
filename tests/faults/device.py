"""A simulated device whose hooks a test can stop in the middle, for the fault suite.

The hook scripts (sh, upparat 1.12 style) log every call to `calls.log`. While the file
`hold-<hook>` exists, a hook writes its PID to `at-<hook>` and blocks there, so a test
can kill a process at an observable point and let the next call through. The install
script is idempotent per job id, as hooks.proto asks: it always rewrites the whole
inactive slot, and it records when two runs overlap (which the contract forbids).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shlex
from pathlib import Path

from upparat.devstack.faults import kill_group, pid_alive, wait_until
from upparat.devstack.stack import Stack

OLD = "1.0.0"
NEW = "2.0.0"
MiB = 1024 * 1024
HOOK_NAMES = ("version", "download", "install", "restart", "ready")

_PRELUDE = """\
HOOK={hook}
printf '%s|%s|%s|%s|%s|%s|%s|%s\\n' "$HOOK" "$$" "$UPPARAT_JOB_ID" "$1" "$2" "$3" "$4" \\
  "$(date +%s.%N)" >> "$ROOT/calls.log"
hold() {{
  # The test holds this hook: say where we are, then wait (at most 60 s) to be let go.
  if [ -e "$ROOT/hold-$HOOK" ]; then
    echo "$$" > "$ROOT/at-$HOOK.tmp" && mv "$ROOT/at-$HOOK.tmp" "$ROOT/at-$HOOK"
    n=0
    while [ -e "$ROOT/hold-$HOOK" ] && [ "$n" -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done
  fi
}}
"""

_BODIES = {
    "version": 'hold\ncat "$ROOT/version"\n',
    "download": 'hold\necho "download allowed"\n',
    # Idempotent per job id: every run writes the whole inactive slot from the start, so a
    # run started again after an interrupted one leaves the same slot as one clean run.
    "install": """\
test -f "$4" || { echo "no bundle at $4"; exit 1; }
if [ -e "$ROOT/install.pid" ] && kill -0 "$(cat "$ROOT/install.pid")" 2>/dev/null; then
  echo "$UPPARAT_JOB_ID $$ $(cat "$ROOT/install.pid")" >> "$ROOT/overlaps"
fi
echo "$$" > "$ROOT/install.pid"
echo "start $UPPARAT_JOB_ID $$ $(id -u) $(stat -c %u "$4")" >> "$ROOT/install.log"
echo "10% writing the inactive slot"
head -c 1048576 "$4" > "$ROOT/slot"
hold
cat "$4" > "$ROOT/slot"
IFS= read -r header < "$4"
printf '%s\\n' "${header#version=}" > "$ROOT/staged"
echo "done $UPPARAT_JOB_ID $$" >> "$ROOT/install.log"
echo "100% slot written"
""",
    # A service restart: the staged version becomes the running one.
    "restart": """\
hold
if [ -e "$ROOT/staged" ]; then mv "$ROOT/staged" "$ROOT/version"; fi
echo "service restarted"
""",
    "ready": 'hold\necho "system is up"\n',
}


class Device:
    """The device's files and hook scripts under `root`."""

    def __init__(self, root: Path, version: str = OLD) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "version").write_text(version + "\n")
        self.scripts: dict[str, Path] = {}
        for hook in HOOK_NAMES:
            path = root / f"{hook}.sh"
            path.write_text(
                f"#!/bin/sh\nROOT={shlex.quote(str(root))}\n"
                + _PRELUDE.format(hook=hook)
                + _BODIES[hook]
            )
            path.chmod(0o755)
            self.scripts[hook] = path

    @property
    def version(self) -> str:
        return (self.root / "version").read_text().strip()

    # -- holding a hook --

    def hold(self, hook: str) -> None:
        (self.root / f"hold-{hook}").touch()
        (self.root / f"at-{hook}").unlink(missing_ok=True)

    def release(self, hook: str) -> None:
        (self.root / f"hold-{hook}").unlink(missing_ok=True)

    def wait_held(self, hook: str, timeout: float = 60.0) -> int:
        """Wait until `hook` runs and blocks; returns its PID (also its process group)."""

        def pid() -> int | None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int((self.root / f"at-{hook}").read_text())
            return None

        return wait_until(pid, f"the {hook} hook to block", timeout)

    def wait_gone(self, pid: int, timeout: float = 30.0) -> None:
        wait_until(lambda: not pid_alive(pid), f"hook script {pid} to end", timeout)

    def kill_script(self, pid: int) -> None:
        """What a reboot (or systemd's cgroup kill) does to a script left behind."""
        kill_group(pid)
        self.wait_gone(pid)

    # -- what happened --

    def calls(self, hook: str | None = None, job_id: str | None = None) -> list[list[str]]:
        """[hook, pid, job id, $1, $2, $3, $4, epoch seconds] per call, oldest first."""
        log = self.root / "calls.log"
        if not log.exists():
            return []
        rows = [line.split("|") for line in log.read_text().splitlines()]
        return [
            r for r in rows if (hook is None or r[0] == hook) and (job_id is None or r[2] == job_id)
        ]

    def install_log(self) -> list[list[str]]:
        log = self.root / "install.log"
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def overlaps(self) -> list[str]:
        path = self.root / "overlaps"
        return path.read_text().splitlines() if path.exists() else []

    def slot_sha256(self) -> str:
        return hashlib.sha256((self.root / "slot").read_bytes()).hexdigest()

    def boot_new_slot(self) -> None:
        """The reboot the restart hook started finishes: the device runs the staged version."""
        os.replace(self.root / "staged", self.root / "version")


def publish_bundle(stack: Stack, name: str, size: int, version: str = NEW) -> tuple[str, str]:
    """A bundle whose first line is `version=<version>`; returns (URL, sha256)."""
    header = f"version={version}\n".encode()
    data = header + random.Random(name).randbytes(size - len(header))
    (stack.workdir / "files" / name).write_bytes(data)
    return stack.files.url(name), hashlib.sha256(data).hexdigest()


def create_update(
    stack: Stack, job_id: str, *, size: int = MiB, version: str = NEW, **document: object
) -> tuple[str, str]:
    """Publish `<job_id>.bundle` and create a job for it (pre-signed URL, sha256, size)."""
    url, sha = publish_bundle(stack, f"{job_id}.bundle", size, version)
    doc: dict[str, object] = {
        "file": f"${{aws:iot:s3-presigned-url:{url}}}",
        "version": version,
        "sha256": sha,
        "size": size,
        **document,
    }
    stack.control.create_job(job_id, doc, [stack.thing])
    return url, sha
