"""Root checks the file it is asked to install, and installs only what it checked.

Owns the checks upparat-hookserver makes before the install script runs, and the copy the
script gets. The daemon (user upparat) downloaded and verified the file, but root must not
take its word for it: a compromised daemon, or anyone who can write where it downloads,
could ask root to install something else. So, for every Install:

- the path must be `<download_location>/upparat/<job id>`, the name the daemon gives it;
  from the download folder on nothing is opened through a symlink (O_NOFOLLOW at every
  component), the folder and the file must belong to the daemon's user (the folder's
  owner: the daemon creates it) and must not be writable by group or others;
- the file is read once, from the descriptor opened there, and copied into a root-only
  directory (`[hookserver] state_dir`/verified, 0700) while it is hashed: what is hashed
  is what is copied, so size, sha256 (the daemon's) and signature (with trusted keys) are
  checked on exactly the bytes the script gets.

Why a copy, and not the file itself, a hard link or /proc/self/fd/N: the daemon's user
owns that inode and may hold it open for writing, so every name of it could change after
the check; an installer in another process (rauc-service over D-Bus) cannot use our
descriptor. The copy costs the disk space of one bundle in state_dir, for the length of
the install; it is removed when the script ends, and leftovers of a crash at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from upparat import signing
from upparat.aws.topics import JOB_ID_RE as _JOB_ID

log = logging.getLogger("upparat.hookserver")

COPY_DIR = "verified"
"""The subdirectory of state_dir that holds the checked copies."""
CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# The reasons of a refusal (HookResult.reason), one per cause.
FILE_NOT_IN_DOWNLOAD_FOLDER = "FILE_NOT_IN_DOWNLOAD_FOLDER"
FILE_NOT_REGULAR = "FILE_NOT_REGULAR"
FILE_WRONG_OWNER = "FILE_WRONG_OWNER"
FILE_WRITABLE_BY_OTHERS = "FILE_WRITABLE_BY_OTHERS"
FILE_UNREADABLE = "FILE_UNREADABLE"
FILE_SIZE_MISMATCH = "FILE_SIZE_MISMATCH"
FILE_SHA256_MISSING = "FILE_SHA256_MISSING"
FILE_CHANGED = "FILE_CHANGED"
SIGNATURE_MISSING = "SIGNATURE_MISSING"
SIGNATURE_INVALID = "SIGNATURE_INVALID"
COPY_FAILED = "COPY_FAILED"


class StateDirError(Exception):
    """The state directory cannot be used; the message says why and what to do."""


class Interrupted(Exception):
    """The call went away (cancelled, deadline) while the file was being copied."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refused:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checked:
    copy: Path
    """The verified copy the script gets."""
    size: int
    sha256: str
    key: signing.TrustedKey | None
    """The trusted key the signature verified with; None when not checked."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstallRequest:
    """What the daemon asks to have installed (the fields of hooks.proto InstallRequest)."""

    job_id: str
    file_path: str
    sha256: str
    size: int | None
    signature: bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileGate:
    """The checks, configured: where downloads are, where copies go, which keys count."""

    download_dir: Path
    """`<download_location>/upparat`, as in the daemon's config."""
    state_dir: Path
    trusted_keys: signing.TrustedKeys | None = None
    require_signature: bool = False

    @property
    def copy_dir(self) -> Path:
        return self.state_dir / COPY_DIR

    def copy_path(self, job_id: str) -> Path:
        """Where the checked copy of `job_id`'s file goes (a path only; nothing is opened)."""
        return self.copy_dir / job_id

    # -- at start -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Creates state_dir and its copy directory (0700) and removes leftover copies.

        Refuses a state_dir that is a symlink, not ours, or open to group or others: the
        script is handed a path in it, so nobody else may be able to change what it names.
        """
        for directory in (self.state_dir, self.copy_dir):
            try:
                directory.mkdir(mode=0o700, exist_ok=True)
                st = os.lstat(directory)
            except OSError as e:
                raise StateDirError(
                    f"[hookserver] state_dir: cannot create {directory}: {e.strerror or e}"
                    " (set [hookserver] state_dir to a directory root can write)"
                ) from None
            problem = _private_dir_problem(st)
            if problem is not None:
                raise StateDirError(f"[hookserver] state_dir: {directory} {problem}")
        for entry in os.scandir(self.copy_dir):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
                log.info("removed %s, left over from an earlier install", entry.path)

    # -- per install --------------------------------------------------------------------

    def check(self, request: InstallRequest, keep_going: Callable[[], bool]) -> Checked | Refused:
        """The checked copy of the file `request` names, or why it is refused. Raises
        `Interrupted` when `keep_going()` turns false while copying (the copy is removed)."""
        refused = self._check_request(request)
        if refused is not None:
            return refused
        try:
            folder = self._open_download_dir()
        except _Refusal as r:
            return r.refused
        try:
            return self._check_file(folder, request, keep_going)
        except _Refusal as r:
            return r.refused
        finally:
            os.close(folder)

    def discard(self, copy: Path) -> None:
        """Removes a checked copy once its script has ended."""
        try:
            copy.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", copy, e.strerror)

    def _check_request(self, request: InstallRequest) -> Refused | None:
        job_id, expected = request.job_id, self.download_dir / request.job_id
        if not _JOB_ID.fullmatch(job_id) or request.file_path != str(expected):
            return Refused(
                reason=FILE_NOT_IN_DOWNLOAD_FOLDER,
                message=f"install: refusing {request.file_path!r}: only the download file of"
                f" job {job_id!r} in {self.download_dir} ([service] download_location) is"
                " installed",
            )
        if not _SHA256.fullmatch(request.sha256):
            return Refused(
                reason=FILE_SHA256_MISSING,
                message="install: the request carries no sha256 of the file to check it"
                " against (the daemon sends one since upparat 2)",
            )
        if self.require_signature and not request.signature:
            return Refused(
                reason=SIGNATURE_MISSING,
                message=f"install: job {job_id} has no signature and [service]"
                " require_signature is set",
            )
        return None

    def _open_download_dir(self) -> int:
        """A descriptor of the download folder, reached without following a symlink below
        download_location (whose own path may contain root's links, e.g. /var/cache on
        Yocto). The folder must be the daemon's and closed to group and others."""
        location = os.path.realpath(self.download_dir.parent)
        fd = os.open("/", _OPEN_DIR)
        try:
            for part in [*Path(location).parts[1:], self.download_dir.name]:
                try:
                    next_fd = os.open(part, _OPEN_DIR, dir_fd=fd)
                except OSError as e:
                    raise _Refusal(
                        FILE_NOT_IN_DOWNLOAD_FOLDER,
                        f"install: download folder {self.download_dir}: {part}"
                        f" {_not_a_directory(fd, part, e)}",
                    ) from None
                os.close(fd)
                fd = next_fd
            st = os.fstat(fd)
            if st.st_mode & 0o022:
                raise _Refusal(
                    FILE_WRITABLE_BY_OTHERS,
                    f"install: download folder {self.download_dir} is writable by group or"
                    f" others (mode {stat.S_IMODE(st.st_mode):04o}); only the daemon may write"
                    " there",
                )
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _check_file(
        self, folder: int, request: InstallRequest, keep_going: Callable[[], bool]
    ) -> Checked | Refused:
        name, shown = request.job_id, f"{self.download_dir}/{request.job_id}"
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=folder)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _Refusal(FILE_NOT_REGULAR, f"install: {shown} is a symlink") from None
            if e.errno == errno.ENOENT:
                raise _Refusal(FILE_NOT_IN_DOWNLOAD_FOLDER, f"install: no file {shown}") from None
            raise _Refusal(FILE_UNREADABLE, f"install: cannot open {shown}: {e.strerror}") from None
        try:
            st, owner = os.fstat(fd), os.fstat(folder).st_uid
            if not stat.S_ISREG(st.st_mode):
                raise _Refusal(FILE_NOT_REGULAR, f"install: {shown} is not a regular file")
            if st.st_uid != owner:
                raise _Refusal(
                    FILE_WRONG_OWNER,
                    f"install: {shown} belongs to uid {st.st_uid}, not to the daemon's user"
                    f" (uid {owner}, the owner of {self.download_dir})",
                )
            if st.st_mode & 0o022:
                raise _Refusal(
                    FILE_WRITABLE_BY_OTHERS,
                    f"install: {shown} is writable by group or others (mode"
                    f" {stat.S_IMODE(st.st_mode):04o})",
                )
            if request.size is not None and st.st_size != request.size:
                raise _Refusal(
                    FILE_SIZE_MISMATCH,
                    f"install: {shown} has {st.st_size} bytes, the daemon downloaded"
                    f" {request.size}",
                )
            limit = st.st_size if request.size is None else request.size
            return self._copy(fd, request, limit, keep_going)
        finally:
            os.close(fd)

    def _copy(
        self, source: int, request: InstallRequest, limit: int, keep_going: Callable[[], bool]
    ) -> Checked | Refused:
        copy = self.copy_path(request.job_id)
        try:
            copies = os.open(self.copy_dir, _OPEN_DIR)
        except OSError as e:
            raise _Refusal(
                COPY_FAILED, f"install: cannot open {self.copy_dir}: {e.strerror}"
            ) from None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request.job_id, dir_fd=copies)  # a copy whose script never ended
            target = os.open(request.job_id, _CREATE, 0o600, dir_fd=copies)
        except OSError as e:
            os.close(copies)
            raise _Refusal(COPY_FAILED, f"install: cannot create {copy}: {e.strerror}") from None
        done = False
        try:
            hasher, copied = hashlib.sha256(), 0
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            # One byte past the size the daemon reported: a file that grows is caught.
            while copied <= limit:
                if not keep_going():
                    raise Interrupted
                n = os.readv(source, [view[: min(CHUNK, limit + 1 - copied)]])
                if n == 0:
                    break
                hasher.update(view[:n])
                _write_all(target, view[:n])
                copied += n
            judged = self._judge(request, copied, hasher.digest())
            if isinstance(judged, Refused):
                return judged
            done = True
            return Checked(copy=copy, size=copied, sha256=hasher.hexdigest(), key=judged)
        except OSError as e:
            raise _Refusal(
                COPY_FAILED, f"install: copying to {copy} failed: {e.strerror or e}"
            ) from None
        finally:
            os.close(target)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(request.job_id, dir_fd=copies)
            os.close(copies)

    def _judge(
        self, request: InstallRequest, copied: int, digest: bytes
    ) -> Refused | signing.TrustedKey | None:
        """Why the copied bytes are refused, else the key their signature verified with."""
        shown = f"{self.download_dir}/{request.job_id}"
        if request.size is not None and copied != request.size:
            return Refused(
                reason=FILE_SIZE_MISMATCH,
                message=f"install: {shown} changed size while it was read ({copied} bytes, the"
                f" daemon downloaded {request.size})",
            )
        if digest.hex() != request.sha256:
            return Refused(
                reason=FILE_CHANGED,
                message=f"install: {shown} has sha256 {digest.hex()}, the daemon downloaded"
                f" {request.sha256}: the file changed after the daemon checked it",
            )
        if not request.signature or self.trusted_keys is None:
            return None
        result = self.trusted_keys.verify(digest, request.signature)
        if isinstance(result, signing.NotVerified):
            return Refused(reason=SIGNATURE_INVALID, message=f"install: {shown}: {result.reason}")
        return result.key


class _Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.refused = Refused(reason=reason, message=message)


def _not_a_directory(parent: int, name: str, error: OSError) -> str:
    """Why `name` in `parent` could not be opened as a directory without following links
    (Linux says ENOTDIR for a symlink opened with O_DIRECTORY | O_NOFOLLOW)."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
                return "is a symlink"
        return "is not a directory"
    return error.strerror or str(error)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _private_dir_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink; name the directory itself"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to the hook server (uid {os.geteuid()})"
    if st.st_mode & 0o077:
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        return f"is open to group or others (mode {mode}); chmod 0700 it"
    return None
