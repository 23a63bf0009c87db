"""Instant hook scripts in upparat 1.12's calling convention, which log when they are called.

Owns the five scripts both daemons run (1.12 directly, upparat through the shell hook
server) and the parsing of their call log. The scripts fork nothing: bash builtins only,
with `$EPOCHREALTIME` as the clock, so "the install hook was called" is a wall-clock time
comparable with the emulator's history. install makes the job's `meta` the installed
version, so version checks after a soft restart succeed when the job's version == meta.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import attrs

HOOK_NAMES = ("version", "download", "install", "restart", "ready")


@attrs.frozen(kw_only=True)
class HookCall:
    at: float
    """Epoch seconds (bash $EPOCHREALTIME)."""
    hook: str
    meta: str
    """$3: the job document's meta (the benchmark sets it to the job's version)."""


@attrs.frozen(kw_only=True)
class HookScripts:
    folder: Path

    @property
    def calls_log(self) -> Path:
        return self.folder / "calls.log"

    @property
    def version_file(self) -> Path:
        return self.folder / "installed-version"

    @property
    def not_yet(self) -> Path:
        """While this file exists, the download hook says "not yet" (exit 3): the
        maintenance window is closed."""
        return self.folder / "not-yet"

    def paths(self) -> dict[str, Path]:
        return {name: self.folder / name for name in HOOK_NAMES}

    def calls(self) -> list[HookCall]:
        if not self.calls_log.exists():
            return []
        found = []
        for line in self.calls_log.read_text().splitlines():
            at, _, rest = line.partition(" ")
            hook, _, meta = rest.partition(" ")
            found.append(HookCall(at=float(at), hook=hook, meta=meta))
        return found

    def first_call(self, hook: str, meta: str) -> HookCall | None:
        return next((c for c in self.calls() if c.hook == hook and c.meta == meta), None)


def write_hook_scripts(folder: Path, installed_version: str) -> HookScripts:
    folder.mkdir(parents=True, exist_ok=True)
    scripts = HookScripts(folder=folder)
    scripts.version_file.write_text(installed_version + "\n")
    log = shlex.quote(str(scripts.calls_log))
    version = shlex.quote(str(scripts.version_file))
    not_yet = shlex.quote(str(scripts.not_yet))
    bodies = {
        "version": f'v=0\nread -r v < {version}\nprintf "%s\\n" "$v"\n',
        "download": f"if [[ -e {not_yet} ]]; then echo 'window closed' >&2; exit 3; fi\n",
        "install": f'printf "%s\\n" "$3" > {version}\n',
        "restart": "",
        "ready": "",
    }
    for name, body in bodies.items():
        path = folder / name
        path.write_text(
            f'#!/bin/bash\nprintf "%s {name} %s\\n" "$EPOCHREALTIME" "$3" >> {log}\n{body}exit 0\n'
        )
        path.chmod(0o755)
    return scripts
