"""The download folder must be the daemon's alone, and visible to the hook server.

Root installs what lands in `<download_location>/upparat`. Whoever else can write that
folder, or point it elsewhere with a symlink, chooses what root installs; and a folder
under a private `/tmp` (the shipped unit's `PrivateTmp=yes`) is one the hook server
cannot see, so every install would look in the host's shared `/tmp` instead. Both are
refused at start, with the fix, here and nowhere else. Also names a job's files in the
folder, and removes them where no download runs (the daemon's `DiscardDownload`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from upparat.aws.topics import JOB_ID_RE
from upparat.core.model import JobId

log = logging.getLogger("upparat.download")

SIDECAR_SUFFIX = ".meta.json"
"""`<job id>` + this, beside the job's file in the folder: the download's resume record
(upparat.io.download), there for as long as the daemon keeps the download. The hook server
gives a file it took over back only while it is there (hookservers/shell/verify.py)."""
MOUNTINFO = Path("/proc/self/mountinfo")
SHARED_TEMP_DIRS = (Path("/tmp"), Path("/var/tmp"))
_FIX = (
    "set [service] download_location = /var/cache/upparat (the unit's CacheDirectory),"
    " or leave it unset under systemd: it then defaults to $CACHE_DIRECTORY"
)


class FolderRefused(Exception):
    """The download folder is unsafe or unusable; the message names it and the fix."""


def job_files(directory: Path, job_id: JobId) -> tuple[Path, ...]:
    """A job's files in the download folder: the download, its sidecar, the sidecar's temp."""
    return tuple(
        directory / name
        for name in (job_id, job_id + SIDECAR_SUFFIX, job_id + SIDECAR_SUFFIX + ".tmp")
    )


def remove_job_files(directory: Path, job_id: JobId) -> None:
    """`DiscardDownload` where no download runs: the daemon removes a job's files itself
    (upparat.io.download_worker, in upparat.worker), with the download driver's log
    lines, without its imports."""
    if not JOB_ID_RE.fullmatch(job_id):
        log.warning("download: not removing files of job id %r: not a valid job id", job_id)
        return
    for path in job_files(directory, job_id):
        try:
            path.unlink()
            log.info("download: removed %s", path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("download: cannot remove %s: %s", path, e.strerror)


def prepare_download_folder(directory: Path, *, uid: int | None = None) -> None:
    """Create `directory` (mode 0700) if missing; refuse one another user controls.

    Never follows a symlink at `directory` and never changes or deletes anything that is
    refused: a planted folder stays as it was found, for the operator to look at.
    """
    uid = os.geteuid() if uid is None else uid
    _check_parent(directory.parent, uid)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise FolderRefused(f"cannot create the download folder {directory}: {e.strerror}") from e
    problem = folder_problem(directory, uid=uid)
    if problem is not None:
        raise FolderRefused(problem)


def folder_problem(directory: Path, *, uid: int | None) -> str | None:
    """Why `directory` must not hold downloads, or None. `uid` None: skip the owner check
    (check-config runs as whoever calls it)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot inspect the download folder {directory}: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(directory)
        return (
            f"the download folder {directory} is a symlink (to {target}): whoever planted it"
            " chooses what root installs; remove it (upparat creates the folder itself)"
        )
    if not stat.S_ISDIR(st.st_mode):
        return f"the download folder {directory} exists and is not a directory; remove it"
    if uid is not None and st.st_uid != uid:
        return (
            f"the download folder {directory} belongs to uid {st.st_uid}, not to the daemon's"
            f" user (uid {uid}): remove it, or chown it to the daemon's user"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"the download folder {directory} is writable by group or others"
            f" (mode {mode:04o}): chmod 0700 {directory}"
        )
    return None


def _check_parent(parent: Path, uid: int) -> None:
    """Anyone who may rename entries of the parent may swap the folder for their own."""
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        try:
            os.makedirs(parent, 0o700)
        except OSError as e:
            raise FolderRefused(f"cannot create download_location {parent}: {e.strerror}") from e
        return
    except OSError as e:
        raise FolderRefused(f"cannot inspect download_location {parent}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise FolderRefused(f"download_location {parent} is not a directory")
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        mode = stat.S_IMODE(st.st_mode)
        raise FolderRefused(
            f"download_location {parent} is writable by group or others without the sticky"
            f" bit (mode {mode:04o}): they could replace the download folder; use a folder"
            " only the daemon can write"
        )


def shared_temp_dir(location: Path) -> Path | None:
    """The shared temp directory `location` lies in (/tmp, /var/tmp), if any."""
    for temp in SHARED_TEMP_DIRS:
        if location == temp or temp in location.parents:
            return temp
    return None


def private_temp_trap(location: Path, mountinfo: Iterable[str]) -> str | None:
    """The problem when `location` is under a /tmp that systemd made private to this
    process (PrivateTmp=yes), which the root hook server, outside it, cannot see."""
    temp = shared_temp_dir(location)
    if temp is None:
        return None
    for line in mountinfo:
        # mountinfo(5): id parent major:minor root mount-point options ...
        fields = line.split()
        if len(fields) < 5 or _unescape(fields[4]) != str(temp):
            continue
        if "/systemd-private-" in _unescape(fields[3]):
            return (
                f"download_location {location} is under {temp}, which systemd made private"
                " to upparat (PrivateTmp=yes in upparat.service): upparat-hookserver would"
                f" look for the files in the host's shared {temp} and install nothing, or"
                f" what another user put there; {_FIX}"
            )
    return None


def shared_temp_warning(location: Path) -> str | None:
    """check-config's note for a download folder in a shared temp directory."""
    temp = shared_temp_dir(location)
    if temp is None:
        return None
    return (
        f"download_location {location} is under {temp}: the shipped upparat.service has"
        " PrivateTmp=yes, so there the hook server cannot see the downloads (the daemon"
        f" refuses to start); {_FIX}"
    )


def read_mountinfo() -> list[str]:
    try:
        return MOUNTINFO.read_text().splitlines()
    except OSError:
        return []


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
