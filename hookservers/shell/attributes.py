"""The version hook's attributes file: `$UPPARAT_ATTRIBUTES`, made before the run, read after.

Owns the convention, like GitHub Actions' `$GITHUB_OUTPUT`: the script may append
`key=value` lines to an empty file of its own, in a private directory; the server reads at
most MAX_BYTES of it once the script and its process group are gone, then removes it. A
1.12 script never looks at the variable and keeps working unchanged. Which attributes the
`$package` shadow can carry is the daemon's rule (upparat.core.package), not this module's.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

ENV = "UPPARAT_ATTRIBUTES"
MAX_BYTES = 16 * 1024
"""What is read of the file; the daemon reports at most 3 KiB of attributes anyway."""


def create() -> Path:
    """A new empty file, mode 0600, alone in a new directory of mode 0700."""
    directory = Path(tempfile.mkdtemp(prefix="upparat-version-"))
    path = directory / "attributes"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        remove(path)
        raise
    return path


def remove(path: Path) -> None:
    """The file and its directory, with whatever else the script left in there."""
    shutil.rmtree(path.parent, ignore_errors=True)


def read(path: Path) -> tuple[dict[str, str], list[str]]:
    """The attributes in the file, and what was wrong with it (one line per problem).

    Not following a symlink, and not blocking on anything but a regular file the script
    may have put in its place. A missing file has no attributes and no problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, []
    except OSError as e:
        return {}, [f"cannot read {ENV} ({e.strerror}); no attributes"]
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}, [f"{ENV} is no longer a regular file; no attributes"]
        data = os.read(fd, MAX_BYTES + 1)
    except OSError as e:
        return {}, [f"cannot read {ENV} ({e.strerror}); no attributes"]
    finally:
        os.close(fd)
    problems: list[str] = []
    if len(data) > MAX_BYTES:
        # Only whole lines count: the last, cut one is left out.
        data = data[:MAX_BYTES].rpartition(b"\n")[0]
        problems.append(f"{ENV} is over {MAX_BYTES} bytes; only its first lines were read")
    found, more = parse(data.decode("utf-8", "replace"))
    return found, problems + more


def parse(text: str) -> tuple[dict[str, str], list[str]]:
    """`key=value` lines: the key without surrounding blanks, the value as written up to
    the line end; blank lines skipped; a key given again replaces its earlier value."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            problems.append(f"{ENV} line {number} is not key=value: {line[:80]!r}")
            continue
        found[key.strip()] = value
    return found, problems
