"""Root checks the file it is asked to install, and installs only what it checked.

Owns the checks upparat-hookserver makes before the install script runs, and the root-only
file the script gets. The daemon (user upparat) downloaded and verified the file, but root
must not take its word for it: a compromised daemon, or anyone who can write where it
downloads, could ask root to install something else. So, for every Install:

- the path must be `<download_location>/upparat/<job id>`, the name the daemon gives it;
  from the download folder on nothing is opened through a symlink (O_NOFOLLOW at every
  component), the folder and the file must belong to the daemon's user (the folder's
  owner: the daemon creates it) and must not be writable by group or others;
- the file is taken over, not copied, when that can be proven safe: renamed into a
  root-only directory (`[hookserver] state_dir`/verified, 0700; a rename, no byte is
  written), its write permission dropped and its owner made root, and then a read lease
  (F_SETLEASE F_RDLCK), which Linux grants only while no descriptor anywhere has the inode
  open for writing (a writable shared mapping counts). From then on nobody but root can
  open it for writing (permissions are checked at open; a link made later or
  /proc/<pid>/fd leads to the same root-owned inode), so the bytes hashed are the bytes
  the script reads;
- where that cannot be proven (state_dir on another file system, a writer still open,
  other hard links, whose names would change owner and mode too,
  no leases), the file is copied, as before: read once from the descriptor opened in the
  download folder and copied into the same directory while it is hashed;
- either way size, sha256 (the daemon's) and signature (with trusted keys) are checked on
  exactly the bytes the script gets.

A taken file is given back when its script ends (its owner again, its write permission,
its name in the download folder): the daemon may call Install again (retry later, a hook
server restarted mid-install) and removes its download itself when the job ends. Only
while the daemon keeps that download, though (the sidecar beside it, upparat.io.folder):
one it removed meanwhile (a job cancelled during its install) is removed here too. A copy
is removed. At start, leftovers of a crash are sorted by the same rule (`_is_copy`): copies
go, taken files go back.

Why not the daemon's file as it is, a hard link or /proc/self/fd/N: the daemon's user
owns that inode and may hold it open for writing, so every name of it could change after
the check; an installer in another process (rauc-service over D-Bus) cannot use our
descriptor. Taking it over costs nothing; the copy costs the disk space of one bundle in
state_dir for the length of the install, and a second write of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from upparat import signing
from upparat.aws.topics import JOB_ID_RE as _JOB_ID
from upparat.io.folder import SIDECAR_SUFFIX

log = logging.getLogger("upparat.hookserver")

COPY_DIR = "verified"
"""The subdirectory of state_dir that holds the checked files (taken over or copied)."""
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
    """The verified file the script gets (root-only; `release` it when the script ends)."""
    taken: bool
    """True: the daemon's own inode, taken over (no byte copied); False: a copy."""
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
        """Where the checked file of `job_id` goes, taken over or copied (a path only;
        nothing is opened)."""
        return self.copy_dir / job_id

    # -- at start -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Creates state_dir and its copy directory (0700) and clears what an earlier
        run left there: copies are removed, taken files given back to the daemon.

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
                self.release(entry.name, leftover=True)

    def release(self, job_id: str, *, leftover: bool = False) -> None:
        """Ends the life of `job_id`'s checked file once its script has ended: a copy is
        removed, a taken file goes back to the daemon (`_give_back`)."""
        path = self.copy_path(job_id)
        since = ", left over from an earlier install" if leftover else ""
        try:
            copies = os.open(self.copy_dir, _OPEN_DIR)
        except OSError as e:
            log.warning("cannot open %s: %s", self.copy_dir, e.strerror)
            return
        try:
            try:
                st = os.lstat(job_id, dir_fd=copies)
            except FileNotFoundError:
                return
            if not _JOB_ID.fullmatch(job_id) or not stat.S_ISREG(st.st_mode) or _is_copy(st):
                os.unlink(job_id, dir_fd=copies)
                log.info("removed %s%s", path, since)
                return
            back = self._give_back(copies, job_id, while_kept=True)
            if back is None:
                log.info(
                    "gave %s back to the daemon as %s/%s%s", path, self.download_dir, job_id, since
                )
            elif back is _DISCARDED:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job_id, dir_fd=copies)
                log.info("removed %s%s: the daemon no longer keeps that download", path, since)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job_id, dir_fd=copies)
                log.warning(
                    "removed %s%s: cannot give it back to the daemon: %s", path, since, back
                )
        except OSError as e:
            log.warning("cannot release %s: %s", path, e.strerror or e)
        finally:
            os.close(copies)

    # -- per install --------------------------------------------------------------------

    def check(self, request: InstallRequest, keep_going: Callable[[], bool]) -> Checked | Refused:
        """The checked file `request` names, in the copy directory, or why it is refused.
        Raises `Interrupted` when `keep_going()` turns false while it is read (a copy is
        removed, a taken file given back). After a Checked, `release` the job's file."""
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
            try:
                copies = os.open(self.copy_dir, _OPEN_DIR)
            except OSError as e:
                raise _Refusal(
                    COPY_FAILED, f"install: cannot open {self.copy_dir}: {e.strerror}"
                ) from None
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=copies)  # a file whose script never ended
                why_not = self._take(folder, copies, fd, st, name)
                if why_not is None:
                    return self._read(copies, fd, None, request, limit, keep_going)
                log.info("install job=%s: copying %s: %s", name, shown, why_not)
                return self._copy(copies, fd, request, limit, keep_going)
            finally:
                os.close(copies)
        finally:
            os.close(fd)

    def _take(
        self, folder: int, copies: int, source: int, st: os.stat_result, name: str
    ) -> str | None:
        """Takes the daemon's file over into the copy directory: None when done (root owns
        it, nobody can write it), else why not, with everything as it was (then it is
        copied). `source` is the descriptor opened in the download folder, `st` its fstat."""
        if st.st_nlink != 1:
            # Owner and mode belong to the inode: taking it over would change them under
            # its other names too (a file of the daemon's own, linked there, say).
            return f"it has {st.st_nlink - 1} other name(s) (hard links)"
        try:
            os.rename(name, name, src_dir_fd=folder, dst_dir_fd=copies)
        except OSError as e:
            if e.errno == errno.EXDEV:
                return f"{self.copy_dir} is on another file system than {self.download_dir}"
            return f"cannot move it into {self.copy_dir}: {e.strerror}"
        moved = os.lstat(name, dir_fd=copies)
        if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
            # The name was given to something else since the file was opened: put that
            # back untouched and copy from the descriptor, whose bytes are the ones checked.
            try:
                os.rename(name, name, src_dir_fd=copies, dst_dir_fd=folder)
            except OSError as e:
                raise _Refusal(
                    COPY_FAILED,
                    f"install: {self.download_dir}/{name} was replaced while it was opened,"
                    f" and what replaced it cannot be put back: {e.strerror}",
                ) from None
            return "the file was replaced while it was opened"
        try:
            # Write permission first, owner second: a crash in between leaves a file that
            # `_is_copy` still tells from a copy.
            os.fchmod(source, stat.S_IMODE(st.st_mode) & 0o444)
            os.fchown(source, os.geteuid(), -1)
        except OSError as e:
            return self._untake(copies, name, f"cannot take it over ({e.strerror})")
        try:
            # Granted only while no descriptor has the inode open for writing.
            fcntl.fcntl(source, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return self._untake(copies, name, "a process still has it open for writing")
            return self._untake(
                copies, name, f"no read lease to prove nobody writes it ({e.strerror})"
            )
        fcntl.fcntl(source, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return None

    def _untake(self, copies: int, name: str, why: str) -> str:
        back = self._give_back(copies, name)
        if back is not None:
            raise _Refusal(
                COPY_FAILED,
                f"install: {self.download_dir}/{name} could not be taken over ({why}) nor"
                f" given back: {back}",
            )
        return why

    def _give_back(self, copies: int, name: str, *, while_kept: bool = False) -> str | None:
        """Returns a taken file to the daemon: the download folder's owner, write
        permission for that owner, its name in the download folder. None when done, else
        why not (the file is then still in the copy directory). `while_kept`: only while
        the daemon keeps its download, i.e. its sidecar is beside the name (`_DISCARDED`
        otherwise): a job cancelled during its install has had its files removed, and the
        file must not come back after that."""
        try:
            folder = self._open_download_dir()
        except _Refusal as r:
            return r.refused.message
        sidecar = name + SIDECAR_SUFFIX
        try:
            if while_kept and not _is_file(folder, sidecar):
                return _DISCARDED
            fd = os.open(name, _OPEN_FILE, dir_fd=copies)
            try:
                st = os.fstat(fd)
                os.fchown(fd, os.fstat(folder).st_uid, -1)
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o200)
            finally:
                os.close(fd)
            back = _relink(copies, folder, name)
            if back is None and while_kept and not _is_file(folder, sidecar):
                # The daemon removed its download while the name was put back: so do we.
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(name, dir_fd=folder).st_ino == st.st_ino:
                        os.unlink(name, dir_fd=folder)
                return _DISCARDED
            return back
        except OSError as e:
            return e.strerror or str(e)
        finally:
            os.close(folder)

    def _copy(
        self,
        copies: int,
        source: int,
        request: InstallRequest,
        limit: int,
        keep_going: Callable[[], bool],
    ) -> Checked | Refused:
        copy = self.copy_path(request.job_id)
        try:
            target = os.open(request.job_id, _CREATE, 0o600, dir_fd=copies)
        except OSError as e:
            raise _Refusal(COPY_FAILED, f"install: cannot create {copy}: {e.strerror}") from None
        try:
            return self._read(copies, source, target, request, limit, keep_going)
        finally:
            os.close(target)

    def _read(
        self,
        copies: int,
        source: int,
        target: int | None,
        request: InstallRequest,
        limit: int,
        keep_going: Callable[[], bool],
    ) -> Checked | Refused:
        """Reads `source` once, hashing it (and writing it to `target`, a copy), and judges
        it. Unless the answer is Checked, the job's file leaves the copy directory."""
        copy = self.copy_path(request.job_id)
        done = False
        try:
            hasher, read = hashlib.sha256(), 0
            # The daemon writes its downloads around the page cache (O_DIRECT): read from the
            # disk, a large readahead keeps it busy.
            with contextlib.suppress(OSError):
                os.posix_fadvise(source, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            # One byte past the size the daemon reported: a file that grows is caught.
            with _ReadAhead(source, limit + 1) as chunks:
                for chunk in chunks:
                    if not keep_going():
                        raise Interrupted
                    hasher.update(chunk)
                    if target is not None:
                        _write_all(target, chunk)
                    read += len(chunk)
            judged = self._judge(request, read, hasher.digest())
            if isinstance(judged, Refused):
                return judged
            done = True
            return Checked(
                copy=copy, taken=target is None, size=read, sha256=hasher.hexdigest(), key=judged
            )
        except OSError as e:
            what = "copying to" if target is not None else "reading"
            raise _Refusal(
                COPY_FAILED, f"install: {what} {copy} failed: {e.strerror or e}"
            ) from None
        finally:
            if not done:
                self.release(request.job_id)

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


class _ReadAhead:
    """The first `limit` bytes of `fd`, CHUNK at a time, read by a thread of its own into
    one of SLOTS buffers while the caller hashes (and copies) the chunk before: the check
    takes about as long as the slower of reading and sha256, not their sum (both let go
    of the GIL). A chunk is the caller's until it asks for the next one. The reader's
    OSError is raised to the caller in its turn; leaving the `with` stops the reader and
    waits for it, so the descriptor may be closed after."""

    SLOTS = 4

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        # Anonymous mappings: a page costs only once it is read into, so a small file
        # (a 1 MB bundle, a test's) pays for what it fills, not for four zeroed MiB.
        self._buffers = [memoryview(mmap.mmap(-1, CHUNK)) for _ in range(self.SLOTS)]
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[int, int] | OSError] = queue.SimpleQueue()
        for slot in range(self.SLOTS):
            self._free.put(slot)
        self._thread = threading.Thread(target=self._read, name="verify-read", daemon=True)

    def __enter__(self) -> Iterator[memoryview]:
        self._thread.start()
        return self._chunks()

    def __exit__(self, *exc: object) -> None:
        self._free.put(None)  # behind at most SLOTS slots: the reader stops soon
        self._thread.join()

    def _read(self) -> None:
        done = 0
        while (slot := self._free.get()) is not None:
            try:
                n = os.readv(self._fd, [self._buffers[slot][: min(CHUNK, self._limit - done)]])
            except OSError as e:
                self._full.put(e)
                return
            self._full.put((slot, n))
            done += n
            if n == 0:
                return  # that was the end
            if done >= self._limit:
                self._full.put((slot, 0))
                return

    def _chunks(self) -> Iterator[memoryview]:
        while True:
            got = self._full.get()
            if isinstance(got, OSError):
                raise got
            slot, n = got
            if n == 0:
                return
            yield self._buffers[slot][:n]
            self._free.put(slot)


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


def _is_copy(st: os.stat_result) -> bool:
    """A copy in the copy directory is root's and writable by it (created 0600); a taken
    file has lost its write permission, or still belongs to the daemon's user."""
    return st.st_uid == os.geteuid() and bool(st.st_mode & stat.S_IWUSR)


_DISCARDED = "the daemon no longer keeps that download"


def _is_file(folder: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(name, dir_fd=folder).st_mode)
    except FileNotFoundError:
        return False


def _relink(src_dir: int, dst_dir: int, name: str) -> str | None:
    """Moves `name` from one directory to the other without replacing a file of that name
    in the target (link, then unlink); None when done, else why not."""
    try:
        os.link(name, name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except FileExistsError:
        return "the download folder has a new file of that name"
    except OSError as e:
        return e.strerror or str(e)
    os.unlink(name, dir_fd=src_dir)
    return None


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
