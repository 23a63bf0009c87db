"""HTTP(S) download driver: carries out StartDownload / CancelDownload / DiscardDownload.

Owns the files in the download folder (`<job id>` plus its `<job id>.meta.json` sidecar),
one transfer thread at a time, and the one place where socket, TLS, HTTP and file system
errors become `Download*` events. One StartDownload is one attempt: it ends in
DownloadCompleted, DownloadFailed, or DownloadInterrupted (a transient error: the partial
file and its sidecar stay for the next attempt, which resumes them). Whether and when to
try again is the core's `Backoff`; the driver decides nothing about the job. It checks the file as it ends:
size and sha256 from the job document and, with trusted keys, the signature, on the digest
hashed while downloading (the file is not read again).
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import http.client
import json
import logging
import mmap
import os
import queue
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import assert_never

import attrs

import upparat
from upparat import urls
from upparat.aws.topics import JOB_ID_RE as _JOB_ID
from upparat.core.commands import CancelDownload, DiscardDownload, StartDownload
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
)
from upparat.core.model import DownloadFailure, DownloadId, JobId
from upparat.core.urls import redact
from upparat.io.folder import (
    SIDECAR_SUFFIX,
    FolderRefused,
    job_files,
    prepare_download_folder,
    remove_job_files,
)
from upparat.signing import NotVerified, TrustedKeys

log = logging.getLogger("upparat.download")

DownloadCommand = StartDownload | CancelDownload | DiscardDownload
StatVfs = Callable[[str], os.statvfs_result]


MAX_REDIRECTS = 5
PROGRESS_INTERVAL = 0.5
"""Seconds between two DownloadProgressed events of one download (plus one at the end)."""
FSYNC_INTERVAL = 8 * 1024 * 1024
SYNC_PERIOD = 1.0
"""A download fdatasyncs its file when FSYNC_INTERVAL bytes and SYNC_PERIOD seconds have
passed since the last: a power cut loses at most 8 MiB or a second of download, whichever
is more, and a fast download is not slowed by a sync (and a sidecar write) every 8 MiB."""
CANCEL_POLL = 0.2
"""Seconds between two looks at the cancel flag while a connect is pending."""

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,1024}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# The version the daemon logs as its own (importlib.metadata would cost an idle daemon
# ~1 MB of RSS for the same string).
_USER_AGENT = f"upparat/{upparat.__version__}"


def redact_url(url: str) -> str:
    """How a URL may appear in a log line or an event: the core's rule (`core.urls.redact`)."""
    return redact(url)


# --- values -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Url:
    """A URL that passed `_parse_url`: safe to put on a request line."""

    scheme: str
    host: str
    port: int
    path: str
    """Without the query: what identifies the object in the sidecar."""
    target: str
    """Path and query: the request target when talking to the origin."""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def absolute(self) -> str:
        """The absolute-URI form (RFC 9112 section 3.2.2), for requests through a proxy."""
        return f"{self.scheme}://{self.netloc}{self.target}"

    @property
    def redacted(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


@attrs.frozen(kw_only=True)
class _BadUrl:
    reason: str


@attrs.frozen(kw_only=True)
class _Proxy:
    host: str
    port: int
    headers: tuple[tuple[str, str], ...] = ()
    """Proxy-Authorization when the proxy URL carried credentials."""


@attrs.frozen(kw_only=True)
class _Sidecar:
    """What the partial file was started from: resuming needs the same object."""

    path: str
    etag: str | None = None
    last_modified: str | None = None
    synced: int = 0
    """Bytes of the partial file known to be on the disk (fdatasync'd): after a power
    cut, what follows may be garbage."""
    boot_id: str | None = None
    """The kernel's boot id when `synced` was written. The same boot: a crash of the
    daemon loses nothing the kernel was given, so the whole file counts."""

    @property
    def validator(self) -> str | None:
        """What goes into If-Range (RFC 9110 section 13.1.5 wants a strong validator)."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@attrs.frozen(kw_only=True)
class _Done:
    """The body ended and the file holds what the server says the object is."""


@attrs.frozen(kw_only=True)
class _Retry:
    reason: str
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class _Redirect:
    location: str


@attrs.frozen(kw_only=True)
class _Failed:
    failure: DownloadFailure
    message: str


_Outcome = _Done | _Retry | _Failed
_Response = _Outcome | _Redirect


class _Cancelled(Exception):
    """The download was cancelled; unwinds the transfer thread without an event."""


class _LocalError(Exception):
    """An OSError of the local file system (as opposed to the network)."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(f"{what}: {error.strerror or error}")
        self.error = error


def _parse_url(url: str, *, allow_http: bool) -> _Url | _BadUrl:
    # The rule is upparat.urls', the one the AWS edge applied to the job document.
    parsed = urls.parse_file_url(url)
    if isinstance(parsed, urls.BadUrl):
        return _BadUrl(reason=parsed.reason)
    problem = urls.scheme_problem(parsed, allow_http=allow_http)
    if problem is not None:
        return _BadUrl(reason=problem)
    port = parsed.port
    if port is None:
        port = 443 if parsed.scheme == "https" else 80
    path = parsed.path or "/"
    target = f"{path}?{parsed.query}" if parsed.query else path
    return _Url(scheme=parsed.scheme, host=parsed.host, port=port, path=path, target=target)


def _parse_proxy(proxy: str) -> _Proxy | _BadUrl:
    if "://" not in proxy:
        proxy = f"http://{proxy}"  # like curl: a bare host:port is an HTTP proxy
    # [service] proxy passed the same rule in the config.
    parsed = urls.parse_proxy_url(proxy)
    if isinstance(parsed, urls.BadUrl):
        return _BadUrl(reason=parsed.reason)
    headers: tuple[tuple[str, str], ...] = ()
    if parsed.username is not None:
        token = b64encode(f"{parsed.username}:{parsed.password or ''}".encode()).decode("ascii")
        headers = (("Proxy-Authorization", f"Basic {token}"),)
    return _Proxy(host=parsed.host, port=parsed.port, headers=headers)


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 section 10.2.3), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _read_sidecar(path: Path) -> _Sidecar | None:
    """The sidecar beside a partial file; None when absent or not ours (then start over)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    fields: dict[str, str | None] = {}
    for key in ("path", "etag", "last_modified", "boot_id"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and _HEADER_VALUE.fullmatch(value)):
            return None
        fields[key] = value
    obj_path = fields["path"]
    synced = raw.get("synced", 0)  # sidecars of earlier versions: nothing known durable
    if obj_path is None or type(synced) is not int or synced < 0:
        return None
    return _Sidecar(
        path=obj_path,
        etag=fields["etag"],
        last_modified=fields["last_modified"],
        synced=synced,
        boot_id=fields["boot_id"],
    )


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str | None:
    """Changes with every boot (random(4)); None where /proc does not tell it."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (rename(2) alone may be lost in a power cut)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header_value(value: str | None) -> str | None:
    if value is None or not _HEADER_VALUE.fullmatch(value):
        return None
    return value


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _write_some(fd: int, data: memoryview) -> int:
    """One write(2) of the partial file (a test makes it fail like a full disk)."""
    return os.write(fd, data)


THREADS = "download-"
"""What the names of a download's threads start with, in Python and in the kernel: the
transfer thread's goes on with the download id, then the ones below."""
HASH_THREAD = THREADS + "hash"
WRITE_THREAD = THREADS + "write"
FSYNC_THREADS = THREADS + "fsync"
TLS_THREAD = THREADS + "tls"


def _name_os_thread() -> None:
    """Give the calling thread its Python name in the kernel too (15 bytes), so that
    `top -H`, `ps -L` and /proc show which of the download's threads uses the CPU
    (CPython before 3.14 leaves every thread named after the process)."""
    with contextlib.suppress(OSError), open("/proc/thread-self/comm", "w") as f:
        f.write(threading.current_thread().name[:15])


# --- the partial file ---------------------------------------------------------------------

SLOTS = 2
"""Buffers of `chunk_size` (4 MiB) between the receiving thread and the hashing and writing
ones: one is received into while the other is hashed and written. More or smaller ones
cost CPU (a hand-over and a direct write per buffer) and gained no time (bench/RESULTS.md)."""
HAND_ON_AFTER = 0.1
"""Seconds a buffer is received into before it goes to the hashing and writing threads even
when not full: on a slow link the file grows (and a crash loses) no later than this."""
DIRECT_ALIGN = 4096
"""File offsets, lengths and memory addresses of direct (O_DIRECT) writes are multiples of
this: the largest logical block size of the disks a device has (512 or 4096 bytes)."""


class _Lane:
    """One consumer thread of the partial file's buffers (hashing or writing): takes them in
    the order they were filled, hands each back when done. After an error it only hands
    them back, so the transfer thread never waits for a buffer that will not come; the
    error is raised there (`_PartFile._raise_lane_error`)."""

    def __init__(
        self,
        name: str,
        handle: Callable[[memoryview], None],
        done: Callable[[int], None],
        views: list[memoryview],
    ) -> None:
        self._handle = handle
        self._done = done
        self._views = views
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def put(self, item: tuple[int, int, int] | None) -> None:
        """(buffer, start, end) to handle, or None: stop once the earlier ones are done."""
        self._queue.put(item)

    def _run(self) -> None:
        _name_os_thread()
        while (item := self._queue.get()) is not None:
            slot, start, end = item
            try:
                if self.error is None:
                    self._handle(self._views[slot][start:end])
            except BaseException as e:  # noqa: BLE001 - raised in the transfer thread instead
                self.error = e
            finally:
                self._done(slot)


class _PartFile:
    """The file of one job: appended to, hashed as it grows, fdatasynced every few MiB.

    Three threads share the work, so that the download takes as long as the slowest of
    receiving, hashing and writing instead of their sum: the transfer thread receives into
    one of SLOTS buffers (`space`, `filled`) and hands each full one (`commit`) to a hashing
    and a writing thread, which take them in order; a buffer is received into again once
    both are done with it. sha256 takes more time than the network or the disk of most
    devices, and on the bench's 2 cores this pipeline halved the download (bench/RESULTS.md).

    The writer writes with O_DIRECT where the file system allows it (ext4, XFS, btrfs,
    f2fs, tmpfs; not UBIFS, where it falls back to the page cache): no copy of every byte
    into the page cache, so neither that CPU nor the product's cached files evicted by a
    bundle nobody reads again soon. Only aligned blocks go direct (see DIRECT_ALIGN); a
    head or tail that is not goes through the page cache, and both are coherent.

    The periodic fdatasync, and the sidecar update that records its offset as durable, run
    in a helper (see FSYNC_INTERVAL and SYNC_PERIOD), started by the writer after the bytes it covers
    were written: an offset is reported only after the fdatasync that covers it returned.
    Every OSError leaves here as `_LocalError`, so a full disk is never mistaken for a
    network error; an error of the writer reaches the transfer thread at its next call.
    """

    def __init__(self, path: Path, on_durable: Callable[[int], None], chunk_size: int) -> None:
        self.path = path
        self._on_durable = on_durable
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o600)
            self.size = os.fstat(self._fd).st_size
        except OSError as e:
            raise _LocalError(f"cannot open {path}", e) from e
        self._direct = _open_direct(self._fd)
        self._written = self.size
        """Bytes in the file (the writer's view); `size` counts what was received too."""
        self._hasher: hashlib._Hash | None = hashlib.sha256() if self.size == 0 else None
        self._unsynced = 0
        self._next_sync = time.monotonic() + SYNC_PERIOD
        self._syncing = ThreadPoolExecutor(
            1, thread_name_prefix=FSYNC_THREADS, initializer=_name_os_thread
        )
        self._sync_pending: Future[None] | None = None
        # Anonymous mappings: page-aligned, as direct writes need, and given back at close.
        self._memory = [mmap.mmap(-1, chunk_size) for _ in range(SLOTS)]
        self._views = [memoryview(m) for m in self._memory]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(SLOTS):
            self._free.put(slot)
        self._users = [0] * SLOTS
        self._users_lock = threading.Lock()
        self._in_flight = 0
        self._settled = threading.Condition(self._users_lock)
        self._slot: int | None = None
        self._start = 0
        self._fill = 0
        self._hand_on = 0.0
        self._lanes = (
            _Lane(HASH_THREAD, self._hash, self._done_with, self._views),
            _Lane(WRITE_THREAD, self._write, self._done_with, self._views),
        )

    # -- the transfer thread --

    def space(self, cancel: threading.Event) -> memoryview:
        """Where the next bytes received go: the rest of the current buffer, or a free one."""
        self._raise_lane_error()
        if self._slot is None:
            while True:
                try:
                    slot = self._free.get(timeout=CANCEL_POLL)
                    break
                except queue.Empty:
                    if cancel.is_set():
                        raise _Cancelled from None
                    self._raise_lane_error()
            # Where the data starts in the buffer has the same alignment as where it goes
            # in the file, so the writer can write the aligned part of it directly.
            self._slot = slot
            self._start = self._fill = self.size % DIRECT_ALIGN
            self._hand_on = time.monotonic() + HAND_ON_AFTER
        return self._views[self._slot][self._fill :]

    def holding(self) -> float | None:
        """When bytes received and not handed on yet must be handed on (monotonic), or None."""
        if self._slot is None or self._fill == self._start:
            return None
        return self._hand_on

    def filled(self, n: int, now: float) -> None:
        """`n` bytes were received into what `space` returned, at `now` (monotonic)."""
        self._fill += n
        self.size += n
        if self._fill == len(self._views[0]) or now >= self._hand_on:
            self.commit()

    def commit(self) -> None:
        """Hand the current buffer, as far as it is filled, to the hashing and writing threads."""
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        if self._fill == self._start:
            self._free.put(slot)
            return
        assert self._hasher is not None, "hasher() must be called before appending"
        item = (slot, self._start, self._fill)
        with self._users_lock:
            self._users[slot] = len(self._lanes)
            self._in_flight += 1
        for lane in self._lanes:
            lane.put(item)

    def settle(self) -> None:
        """Commit, and wait until every byte received is hashed and in the file."""
        self.commit()
        with self._settled:
            while self._in_flight:
                self._settled.wait()
        self._raise_lane_error()

    @property
    def unwritten(self) -> int:
        """Bytes received that the writer has not written yet (at most SLOTS buffers)."""
        return self.size - self._written

    def _raise_lane_error(self) -> None:
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error

    # -- the lanes --

    def _done_with(self, slot: int) -> None:
        with self._users_lock:
            self._users[slot] -= 1
            if self._users[slot] == 0:
                self._in_flight -= 1
                self._free.put(slot)
                if self._in_flight == 0:
                    self._settled.notify_all()

    def _hash(self, data: memoryview) -> None:
        hasher = self._hasher
        assert hasher is not None
        hasher.update(data)

    def _write(self, data: memoryview) -> None:
        """In the writer: append `data`, its aligned blocks directly where possible."""
        while data:
            misaligned = self._written % DIRECT_ALIGN
            whole = len(data) - len(data) % DIRECT_ALIGN
            if self._direct >= 0 and not misaligned and whole:
                fd, piece = self._direct, data[:whole]
            else:  # up to the next block boundary, or a tail shorter than a block
                fd, piece = self._fd, data[: DIRECT_ALIGN - misaligned] if misaligned else data
            try:
                n = _write_some(fd, piece)
            except OSError as e:
                if fd == self._direct and e.errno == errno.EINVAL:
                    self._direct_refused(e)
                    continue  # nothing was written: again, through the page cache
                raise _LocalError(f"cannot write {self.path}", e) from e
            data = data[n:]
            self._written += n
            self._unsynced += n
        if self._unsynced >= FSYNC_INTERVAL and time.monotonic() >= self._next_sync:
            self._start_sync()

    def _direct_refused(self, error: OSError) -> None:
        log.info(
            "%s: direct writes refused (%s): writing through the page cache",
            self.path,
            error.strerror,
        )
        os.close(self._direct)
        self._direct = -1

    # -- whole-file operations, from the transfer thread --

    def hasher(self, cancel: threading.Event) -> hashlib._Hash:
        """The sha256 of what the file holds, re-reading an earlier prefix once."""
        self.settle()
        if self._hasher is None:
            hasher = hashlib.sha256()
            view = self._views[0]
            offset = 0
            try:
                while offset < self.size:
                    if cancel.is_set():
                        raise _Cancelled
                    n = os.preadv(self._fd, [view[: min(len(view), self.size - offset)]], offset)
                    if n == 0:
                        break
                    hasher.update(view[:n])
                    offset += n
            except OSError as e:
                raise _LocalError(f"cannot read {self.path}", e) from e
            self._hasher = hasher
        return self._hasher

    def _start_sync(self) -> None:
        pending = self._sync_pending
        if pending is not None:
            if not pending.done():
                return  # still flushing the last interval; the next write tries again
            self._wait_sync()  # raises what the last one met
        self._unsynced = 0
        self._next_sync = time.monotonic() + SYNC_PERIOD
        self._sync_pending = self._syncing.submit(self._sync_to, self._written)

    def _sync_to(self, offset: int) -> None:
        """In the helper: the first `offset` bytes were written; make them durable, say so."""
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise _LocalError(f"cannot fdatasync {self.path}", e) from e
        self._on_durable(offset)

    def _wait_sync(self) -> None:
        if self._sync_pending is not None:
            pending, self._sync_pending = self._sync_pending, None
            pending.result()

    def truncate(self, size: int) -> None:
        """Drop what follows `size` (bytes that may not have reached the disk)."""
        self.settle()
        self._wait_sync()
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            raise _LocalError(f"cannot truncate {self.path}", e) from e
        self.size = self._written = size
        self._hasher = hashlib.sha256() if size == 0 else None

    def reset(self) -> None:
        self.truncate(0)
        self._unsynced = 0

    def close(self) -> None:
        """Writes what was received (a later attempt resumes after it), then lets go of
        the threads, the descriptors and the buffers. Again: nothing."""
        if self._fd < 0:
            return
        self.commit()
        for lane in self._lanes:
            lane.put(None)
        for lane in self._lanes:
            lane.thread.join()
        # The helper finishes before the descriptor it uses is closed (and maybe reused).
        self._syncing.shutdown(wait=True)
        self._sync_pending = None
        for fd in (self._direct, self._fd):
            if fd >= 0:
                os.close(fd)
        self._direct = self._fd = -1
        for view in self._views:
            view.release()
        for memory in self._memory:
            # A slice may still live in a traceback: then it is unmapped with the last one.
            with contextlib.suppress(BufferError):
                memory.close()
        self._views, self._memory = [], []


def _open_direct(fd: int) -> int:
    """A second descriptor of the file open at `fd`, for direct writes; -1 where the file
    system has none (UBIFS, JFFS2, FUSE without them...)."""
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_DIRECT | os.O_CLOEXEC
        return os.open(f"/proc/self/fd/{fd}", flags)
    except OSError as e:
        log.debug("no direct writes: %s", e.strerror)
        return -1


# --- connections --------------------------------------------------------------------------

_Opener = Callable[[tuple[str, int], float | None, tuple[str, int] | None], socket.socket]


_SockAddr = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, opener: _Opener) -> None:
        super().__init__(host, port)
        # CPython's hook for how the TCP connection is made (used by its own tests); ours
        # connects without blocking so that a cancel is seen while a SYN goes unanswered.
        self._create_connection = opener


class _TLSConnection(http.client.HTTPConnection):
    """What CPython's HTTPSConnection does (TLS on the TCP connection, or on a proxy's
    tunnel, checking the certificate for the host asked for), except that it asks for the
    TLS context only once the TCP connection stands: the context may still be loading
    (`TlsContext`), and its CA store then loads while the SYN goes out."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server_hostname: str,
        tls: Callable[[], ssl.SSLContext],
        opener: _Opener,
    ) -> None:
        super().__init__(host, port)
        self._server_hostname = server_hostname
        """The origin's host: `host` itself, or the host a proxy tunnels to."""
        self._tls = tls
        self._create_connection = opener

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls().wrap_socket(self.sock, server_hostname=self._server_hostname)


class TlsContext:
    """The downloads' TLS context (ssl.create_default_context), loaded in a thread of its
    own from construction: the CA store takes ~25 ms here, more on a small board, and the
    load mostly runs without the GIL. Calling it waits for it; a plain-HTTP download never
    does, an HTTPS one only at its first handshake. A load that failed raises again."""

    def __init__(self, load: Callable[[], ssl.SSLContext] = ssl.create_default_context) -> None:
        self._load = load
        self._context: ssl.SSLContext | None = None
        self._error: BaseException | None = None
        self._loaded = threading.Event()
        threading.Thread(target=self._run, name=TLS_THREAD, daemon=True).start()

    def _run(self) -> None:
        try:
            self._context = self._load()
        except BaseException as e:  # noqa: BLE001 - raised where the context is needed
            self._error = e
        finally:
            self._loaded.set()

    def __call__(self) -> ssl.SSLContext:
        self._loaded.wait()
        if self._error is not None:
            raise self._error
        assert self._context is not None
        return self._context


# --- one download -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Options:
    allow_http: bool
    proxy: str | None
    min_speed: int
    min_speed_time: float
    max_speed: int | None
    chunk_size: int
    connect_timeout: float
    read_timeout: float
    min_free_space: int
    max_download_size: int | None
    trusted_keys: TrustedKeys | None = None
    env_proxies: dict[str, str] = attrs.field(factory=dict)
    """The proxy variables of the environment, read once: the process's environment does
    not change, and reading it (every variable, twice) cost each download milliseconds."""


SPACE_CHECK_BYTES = 1024 * 1024
"""A download of unknown size checks the free space after each this many bytes."""


class _Transfer:
    """One download in its own thread, from StartDownload to its last event or a cancel."""

    def __init__(
        self,
        command: StartDownload,
        folder: Path,
        options: _Options,
        on_event: Callable[[Event], None],
        statvfs: StatVfs,
        tls: Callable[[], ssl.SSLContext],
        boot_id: str | None,
    ) -> None:
        self.command = command
        self._boot_id = boot_id
        self.download_id: DownloadId = command.download_id
        self.job_id: JobId = command.job_id
        self._folder = folder
        self._opt = options
        self._on_event = on_event
        self._statvfs = statvfs
        self._tls = tls
        # Guards `cancelled`, the event callback and the creation of files, so that after
        # cancel() returns no event is sent and no file of this job is created.
        self._lock = threading.RLock()
        self._cancel = threading.Event()
        self._wake: socket.socket | None = None
        self._part: _PartFile | None = None
        self._sidecar: _Sidecar | None = None
        self._total: int | None = command.size
        self.thread = threading.Thread(
            target=self._run, name=f"{THREADS}{command.download_id}", daemon=True
        )

    # -- control, from the runtime's thread --

    def cancel(self) -> None:
        with self._lock:
            self._cancel.set()
            wake = self._wake
        if wake is not None:
            # shutdown() on a dup of the socket wakes a recv() blocked in the transfer
            # thread, TLS or not, without touching objects that thread is using.
            # OSError: not connected (yet or any more), so nothing blocks on it.
            with contextlib.suppress(OSError):
                wake.shutdown(socket.SHUT_RDWR)
        if self.thread.ident is not None and threading.current_thread() is not self.thread:
            self.thread.join(timeout=1.0)
            if self.thread.is_alive():
                log.warning(
                    "download %s of job %s: cancelled, its thread is still in a blocking call"
                    " (DNS?); it will send nothing more",
                    self.download_id,
                    self.job_id,
                )

    # -- the thread --

    def _run(self) -> None:
        _name_os_thread()
        try:
            outcome = self._download()
            match outcome:
                case _Done():
                    pass  # _finish sent DownloadCompleted itself, after the fsync
                case _Retry(reason=reason, retry_after=retry_after):
                    done = self._part.size if self._part is not None else 0
                    log.warning(
                        "download %s of job %s: %s after %d bytes on disk",
                        self.download_id,
                        self.job_id,
                        reason,
                        done,
                    )
                    self._emit(
                        DownloadInterrupted(
                            download_id=self.download_id,
                            bytes_done=done,
                            reason=reason,
                            retry_after=retry_after,
                        )
                    )
                case _Failed(failure=failure, message=message):
                    log.error("download %s of job %s: %s", self.download_id, self.job_id, message)
                    self._emit(
                        DownloadFailed(
                            download_id=self.download_id, failure=failure, message=message
                        )
                    )
                case _:
                    assert_never(outcome)
        except _Cancelled:
            log.info("download %s of job %s: cancelled", self.download_id, self.job_id)
        except Exception as e:  # a bug here must still end the download with an event
            log.exception("download %s of job %s: internal error", self.download_id, self.job_id)
            failed = DownloadFailed(
                download_id=self.download_id,
                failure=DownloadFailure.IO_ERROR,
                message=f"internal error in the download driver: {e!r}",
            )
            with self._lock:
                if not self._cancel.is_set():
                    self._on_event(failed)
        finally:
            if self._part is not None:
                self._part.close()
            self._release_wake()

    def _emit(self, event: Event) -> None:
        with self._lock:
            if self._cancel.is_set():
                raise _Cancelled
            self._on_event(event)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled

    def _download(self) -> _Done | _Failed | _Retry:
        cmd = self.command
        url = _parse_url(cmd.url, allow_http=self._opt.allow_http)
        if isinstance(url, _BadUrl):
            return _Failed(
                failure=DownloadFailure.BAD_URL, message=f"{redact_url(cmd.url)}: {url.reason}"
            )
        if self._opt.proxy is not None:
            proxy = _parse_proxy(self._opt.proxy)
            if isinstance(proxy, _BadUrl):
                return _Failed(failure=DownloadFailure.BAD_URL, message=proxy.reason)
        if not _JOB_ID.fullmatch(cmd.job_id):
            # The AWS edge checked it already; it becomes a file name here, so check again.
            return _Failed(
                failure=DownloadFailure.IO_ERROR,
                message=f"refusing job id {cmd.job_id!r} as a file name: expected [a-zA-Z0-9_-]{{1,64}}",
            )
        log.info(
            "download %s of job %s: starting from %s", self.download_id, self.job_id, url.redacted
        )
        try:
            self._prepare_folder()
            return self._once(url)
        except _LocalError as e:
            return self._local_failure(e)
        except FolderRefused as e:
            return _Failed(failure=DownloadFailure.IO_ERROR, message=str(e))

    def _prepare_folder(self) -> None:
        folder = self._folder
        with self._lock:
            self._check_cancel()
            # Checked at start too; again here, before anything is written or removed in it.
            prepare_download_folder(folder)
        keep = {self.job_id, self.job_id + SIDECAR_SUFFIX}
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise _LocalError(f"cannot list {folder}", e) from e
        for entry in entries:
            # Like upparat 1.12: leftovers of earlier jobs go. Only regular files right here;
            # a symlink is not followed, a directory not entered.
            if entry.name in keep or not entry.is_file(follow_symlinks=False):
                continue
            try:
                os.unlink(entry.path)
                log.info("removed %s, left over from an earlier job", entry.path)
            except OSError as e:
                log.warning("cannot remove %s: %s", entry.path, e.strerror)

    @property
    def _path(self) -> Path:
        return self._folder / self.job_id

    @property
    def _sidecar_path(self) -> Path:
        return self._folder / (self.job_id + SIDECAR_SUFFIX)

    def _open_part(self, url: _Url) -> _PartFile:
        with self._lock:
            self._check_cancel()
            part = _PartFile(self._path, self._durable, self._opt.chunk_size)
        self._part = part
        if part.size > 0:
            sidecar = _read_sidecar(self._sidecar_path)
            if sidecar is None or not self._may_resume(sidecar) or sidecar.path != url.path:
                why = (
                    "it has no usable sidecar"
                    if sidecar is None or not self._may_resume(sidecar)
                    else f"it was started from {sidecar.path}"
                )
                log.info(
                    "download %s of job %s: discarding %d bytes of an earlier attempt: %s",
                    self.download_id,
                    self.job_id,
                    part.size,
                    why,
                )
                part.reset()
            else:
                self._sidecar = sidecar
                self._drop_torn_tail(part, sidecar)
        return part

    def _drop_torn_tail(self, part: _PartFile, sidecar: _Sidecar) -> None:
        """After a reboot (a power cut, maybe), only bytes fdatasync'd before it are
        trusted: the file system may keep garbage after them."""
        if self._boot_id is not None and sidecar.boot_id == self._boot_id:
            return  # only the daemon stopped: the kernel kept every byte it was given
        if part.size <= sidecar.synced:
            return
        log.info(
            "download %s of job %s: the device restarted since the last write; keeping the"
            " %d bytes synced to disk, dropping the %d after them",
            self.download_id,
            self.job_id,
            sidecar.synced,
            part.size - sidecar.synced,
        )
        part.truncate(sidecar.synced)

    def _durable(self, offset: int) -> None:
        """The file's first `offset` bytes are on the disk: say so beside it."""
        sidecar = self._sidecar
        if sidecar is not None and offset > sidecar.synced:
            self._write_sidecar(attrs.evolve(sidecar, synced=offset, boot_id=self._boot_id))

    def _may_resume(self, sidecar: _Sidecar) -> bool:
        """Resume only what is known to be the same object: by its validator (If-Range), or,
        when the server gave none, by the document's sha256 checked at the end."""
        return sidecar.validator is not None or self.command.sha256 is not None

    def _write_sidecar(self, sidecar: _Sidecar) -> None:
        """Replaces the sidecar, on the disk (fsync, and of the folder) before this returns
        when it says bytes are synced. One that says none are (`synced` 0) is lost in a
        power cut at no cost: after a reboot the download starts over from what it says
        anyway, and a daemon that only restarted finds it in the page cache."""
        durable = sidecar.synced > 0
        data = json.dumps(attrs.asdict(sidecar)).encode()
        tmp = self._sidecar_path.with_name(self._sidecar_path.name + ".tmp")
        with self._lock:
            self._check_cancel()
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    _write_all(fd, memoryview(data))
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self._sidecar_path)
                if durable:
                    _fsync_directory(self._folder)
            except OSError as e:
                raise _LocalError(f"cannot write {self._sidecar_path}", e) from e
        self._sidecar = sidecar

    def _remove_files(self) -> None:
        for path in job_files(self._folder, self.job_id):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot remove %s: %s", path, e.strerror)

    def _local_failure(self, e: _LocalError) -> _Failed:
        if e.error.errno in (errno.ENOSPC, errno.EDQUOT):
            done = self._part.size if self._part is not None else 0
            self._remove_files()
            return _Failed(
                failure=DownloadFailure.INSUFFICIENT_DISK_SPACE,
                message=f"disk full in {self._folder} after {done} of "
                f"{self._total if self._total is not None else 'unknown'} bytes "
                f"({self._free_space_text()}); the partial file was removed",
            )
        return _Failed(failure=DownloadFailure.IO_ERROR, message=str(e))

    def _free_space(self) -> int:
        try:
            st = self._statvfs(str(self._folder))
        except OSError as e:
            raise _LocalError(f"cannot statvfs {self._folder}", e) from e
        return st.f_bavail * st.f_frsize

    def _free_space_text(self) -> str:
        try:
            return f"{self._free_space()} bytes free"
        except _LocalError:
            return "free space unknown"

    def _check_space(self, total: int, done: int) -> _Failed | None:
        """A file of `total` bytes fits under both limits (announced size: checked first)."""
        limit = self._opt.max_download_size
        if limit is not None and total > limit:
            return _Failed(
                failure=DownloadFailure.INSUFFICIENT_DISK_SPACE,
                message=f"the file has {total} bytes, more than max_download_size ({limit})",
            )
        need = total - done
        free = self._free_space()
        reserve = self._opt.min_free_space
        if need + reserve <= free:
            return None
        return _Failed(
            failure=DownloadFailure.INSUFFICIENT_DISK_SPACE,
            message=f"need {need} more bytes in {self._folder} for {total} bytes and"
            f" min_free_space keeps {reserve} free; only {free} available: free space or"
            " use another download location",
        )

    def _check_growth(self, done: int) -> _Failed | int:
        """A file of unknown size, `done` bytes so far: stop at either limit, or the bytes
        it may still grow by."""
        limit = self._opt.max_download_size
        if limit is not None and done > limit:
            return _Failed(
                failure=DownloadFailure.INSUFFICIENT_DISK_SPACE,
                message=f"stopped after {done} bytes of a file of unknown size: more than"
                f" max_download_size ({limit})",
            )
        # Bytes received but not written yet take their room soon.
        unwritten = self._part.unwritten if self._part is not None else 0
        free = self._free_space() - unwritten
        reserve = self._opt.min_free_space
        if free >= reserve:
            return free - reserve
        return _Failed(
            failure=DownloadFailure.INSUFFICIENT_DISK_SPACE,
            message=f"stopped after {done} bytes of a file of unknown size: {free} bytes"
            f" left in {self._folder}, min_free_space keeps {reserve} free",
        )

    # -- one attempt --

    def _once(self, url: _Url) -> _Done | _Failed | _Retry:
        part = self._open_part(url)
        if self.command.size is not None:
            if part.size > self.command.size:
                part.reset()
            short = self._check_space(self.command.size, part.size)
            if short is not None:
                self._remove_files()
                return short
        self._check_cancel()
        try:
            outcome = self._attempt(url, part)
        except (OSError, http.client.HTTPException) as e:
            # A cancel shuts the socket down: that error is the cancel, not the network.
            self._check_cancel()
            outcome = _Retry(reason=_describe(e))
        # Every byte received is in the file before the attempt's outcome counts: a retry
        # resumes after them, and a disk error met meanwhile is what the attempt ends in.
        part.settle()
        match outcome:
            case _Done():
                return self._finish(part)
            case _Failed(
                failure=DownloadFailure.VERIFICATION_FAILED
                | DownloadFailure.INSUFFICIENT_DISK_SPACE
            ):
                # Nothing to resume: a wrong file, or one that does not fit.
                self._remove_files()
                return outcome
            case _Failed() | _Retry():
                # _Retry: the partial file and its sidecar stay; the next attempt resumes.
                return outcome
            case _:
                assert_never(outcome)

    def _finish(self, part: _PartFile) -> _Done | _Failed:
        cmd = self.command
        actual = part.hasher(self._cancel).hexdigest()
        if cmd.size is not None and part.size != cmd.size:
            self._remove_files()
            return _Failed(
                failure=DownloadFailure.VERIFICATION_FAILED,
                message=f"size: expected {cmd.size} bytes, got {part.size}",
            )
        if cmd.sha256 is not None and actual != cmd.sha256.lower():
            self._remove_files()
            return _Failed(
                failure=DownloadFailure.VERIFICATION_FAILED,
                message=f"sha256: expected {cmd.sha256.lower()}, got {actual}",
            )
        signature = self._check_signature(bytes.fromhex(actual))
        if signature is not None:
            self._remove_files()
            return signature
        try:
            reader = os.open(part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise _LocalError(f"cannot open {part.path}", e) from e
        try:
            # Closed before anyone hears of it: the hook server takes the file over for the
            # install only while no descriptor has it open for writing.
            part.close()
            self._emit(
                DownloadProgressed(
                    download_id=self.download_id, bytes_done=part.size, total=part.size
                )
            )
            log.info(
                "download %s of job %s: complete, %d bytes, sha256 %s",
                self.download_id,
                self.job_id,
                part.size,
                actual,
            )
            self._emit(
                DownloadCompleted(
                    download_id=self.download_id, path=str(part.path), size=part.size, sha256=actual
                )
            )
            self._sync_completed(reader, part.size)
        finally:
            os.close(reader)
        return _Done()

    def _sync_completed(self, reader: int, size: int) -> None:
        """The reported file to the disk, and then the sidecar says so, while the job goes
        on: Install does not need the bytes on the disk (the installer reads them from the
        page cache or was given them directly), and a power cut before this is the one any
        download may meet: the sidecar still holds the last durable offset, so the restart
        re-fetches what follows it and checks the whole file again. `reader` is read-only,
        opened while the name was ours: the hook server may have taken the file meanwhile."""
        try:
            os.fsync(reader)
            self._durable(size)
        except OSError as e:
            log.warning(
                "download %s of job %s: cannot fsync the finished file (%s); after a power cut"
                " it is fetched again",
                self.download_id,
                self.job_id,
                e.strerror,
            )
        except _LocalError as e:
            log.warning("download %s of job %s: %s", self.download_id, self.job_id, e)
        except _Cancelled:
            pass  # the job moved on (cancelled, discarded): its sidecar is not ours to write

    def _check_signature(self, digest: bytes) -> _Failed | None:
        keys, signature = self._opt.trusted_keys, self.command.signature
        if signature is None:
            return None
        if keys is None:
            log.info(
                "download %s of job %s: signature not checked here: no [service] trusted_keys",
                self.download_id,
                self.job_id,
            )
            return None
        result = keys.verify(digest, signature)
        if isinstance(result, NotVerified):
            return _Failed(failure=DownloadFailure.VERIFICATION_FAILED, message=result.reason)
        log.info(
            "download %s of job %s: signature verified with %s",
            self.download_id,
            self.job_id,
            result.key,
        )
        return None

    # -- one request (and its redirects) --

    def _attempt(self, url: _Url, part: _PartFile) -> _Outcome:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            conn, target, headers = self._connection(current)
            try:
                if part.size > 0:
                    if self._sidecar is not None and self._may_resume(self._sidecar):
                        headers["Range"] = f"bytes={part.size}-"
                        validator = self._sidecar.validator
                        if validator is not None:
                            headers["If-Range"] = validator
                    else:
                        part.reset()
                conn.request("GET", target, headers=headers)
                response = self._response(conn.getresponse(), url, part)
            finally:
                conn.close()
                self._release_wake()
            match response:
                case _Redirect(location=location):
                    joined = urllib.parse.urljoin(current.absolute, location)
                    parsed = _parse_url(joined, allow_http=self._opt.allow_http)
                    if isinstance(parsed, _BadUrl):
                        return _Failed(
                            failure=DownloadFailure.BAD_URL,
                            message=f"redirect to {redact_url(joined)} refused: {parsed.reason}",
                        )
                    log.info(
                        "download %s of job %s: redirected to %s",
                        self.download_id,
                        self.job_id,
                        parsed.redacted,
                    )
                    current = parsed
                case _:
                    return response
        return _Failed(
            failure=DownloadFailure.HTTP_ERROR,
            message=f"more than {MAX_REDIRECTS} redirects from {url.redacted}",
        )

    def _connection(self, url: _Url) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        proxy = self._proxy_for(url)
        headers = {"User-Agent": _USER_AGENT}
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            host, port = (url.host, url.port) if proxy is None else (proxy.host, proxy.port)
            conn = _TLSConnection(
                host, port, server_hostname=url.host, tls=self._tls, opener=self._open_socket
            )
            if proxy is not None:
                conn.set_tunnel(url.host, url.port, headers=dict(proxy.headers))
            return conn, url.target, headers
        if proxy is None:
            return _Connection(url.host, url.port, opener=self._open_socket), url.target, headers
        headers.update(proxy.headers)
        conn = _Connection(proxy.host, proxy.port, opener=self._open_socket)
        return conn, url.absolute, headers

    def _proxy_for(self, url: _Url) -> _Proxy | None:
        # NO_PROXY applies to the explicit proxy too, as it does for curl's --proxy.
        from_env = self._opt.env_proxies  # HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
        # What urllib.request.proxy_bypass does on Linux, with the variables read once.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
        if bypass(f"{url.host}:{url.port}", from_env):
            return None
        configured = self._opt.proxy or from_env.get(url.scheme) or from_env.get("all")
        if not configured:
            return None
        proxy = _parse_proxy(configured)
        if isinstance(proxy, _BadUrl):
            log.warning("ignoring the %s proxy from the environment: %s", url.scheme, proxy.reason)
            return None
        return proxy

    def _open_socket(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """Connect like socket.create_connection, but see a cancel while a connect waits."""
        host, port = address
        # getaddrinfo cannot be interrupted: a cancel during a slow DNS lookup is seen after it.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, sockaddr in infos:
            self._check_cancel()
            sock = socket.socket(family, kind, proto)
            try:
                self._connect(sock, sockaddr)
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:
                sock.close()
                raise
            sock.settimeout(self._io_timeout)
            with self._lock:
                if self._cancel.is_set():
                    sock.close()
                    raise _Cancelled
                self._wake = sock.dup()
            return sock
        raise error

    def _connect(self, sock: socket.socket, sockaddr: _SockAddr) -> None:
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        deadline = time.monotonic() + self._opt.connect_timeout
        while code != 0:
            self._check_cancel()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"connect timed out after {self._opt.connect_timeout:g} s")
            _, writable, _ = select.select([], [sock], [], min(left, CANCEL_POLL))
            if writable:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code != 0:
                    raise OSError(code, os.strerror(code))
                break

    @property
    def _io_timeout(self) -> float:
        if self._opt.min_speed > 0:
            return min(self._opt.read_timeout, self._opt.min_speed_time)
        return self._opt.read_timeout

    def _readable(self, timeout: float) -> bool:
        """Whether the connection has bytes for us within `timeout` seconds. Yes may be
        wrong (a TLS record not complete yet); no is right unless bytes wait in a buffer
        above the socket, and then they are read right after anyway."""
        wake = self._wake
        if wake is None:
            return True
        readable, _, _ = select.select([wake], [], [], max(0.0, timeout))
        return bool(readable)

    def _release_wake(self) -> None:
        with self._lock:
            wake, self._wake = self._wake, None
        if wake is not None:
            wake.close()

    def _response(self, resp: http.client.HTTPResponse, url: _Url, part: _PartFile) -> _Response:
        status = resp.status
        what = f"HTTP {status} {resp.reason}".strip()
        if status in _REDIRECTS:
            location = resp.getheader("Location")
            if location:
                return _Redirect(location=location)
            return _Failed(
                failure=DownloadFailure.HTTP_ERROR,
                message=f"{what} without a Location from {url.redacted}",
            )
        if status == 403:
            return _Failed(
                failure=DownloadFailure.URL_EXPIRED,
                message=f"{what} from {url.redacted}: the pre-signed URL expired or is not valid;"
                " describe the job again for a fresh one",
            )
        if status in (408, 429) or 500 <= status <= 599:
            retry_after = _parse_retry_after(resp.getheader("Retry-After"), time.time())
            return _Retry(reason=what, retry_after=retry_after)
        if status == 416:
            return self._unsatisfiable(resp, part)
        if status == 200:
            return self._full(resp, url, part)
        if status == 206:
            return self._partial(resp, url, part)
        return _Failed(failure=DownloadFailure.HTTP_ERROR, message=f"{what} from {url.redacted}")

    def _unsatisfiable(self, resp: http.client.HTTPResponse, part: _PartFile) -> _Outcome:
        """416 to our Range: the file may be complete already (RFC 9110 section 15.5.17)."""
        match = _UNSATISFIED_RANGE.fullmatch(resp.getheader("Content-Range", "").strip())
        total = int(match.group(1)) if match else self.command.size
        offset = part.size
        if offset > 0 and total == offset:
            return _Done()
        part.reset()
        held = total if total is not None else "an unknown number of"
        return _Retry(
            reason=f"HTTP 416 for a range from {offset}, the server holds {held} bytes:"
            " starting over"
        )

    def _full(self, resp: http.client.HTTPResponse, url: _Url, part: _PartFile) -> _Outcome:
        if part.size > 0:
            log.info(
                "download %s of job %s: the server sent the whole object (Range ignored or object"
                " changed): starting over",
                self.download_id,
                self.job_id,
            )
            part.reset()
        total = None if resp.chunked else resp.length
        early = self._check_total(total, part)
        if early is not None:
            return early
        self._write_sidecar(self._sidecar_from(resp, url))
        return self._stream(resp, part)

    def _partial(self, resp: http.client.HTTPResponse, url: _Url, part: _PartFile) -> _Outcome:
        match = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range", "").strip())
        if match is None:
            part.reset()
            return _Retry(reason="HTTP 206 without a usable Content-Range: starting over")
        start, end = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        length = None if resp.chunked else resp.length
        offset = part.size
        if start != offset or end < start or (length is not None and length != end - start + 1):
            part.reset()
            return _Retry(
                reason=f"HTTP 206 with Content-Range {match.group(0)!r} and Content-Length"
                f" {length} for a range from {offset}: starting over"
            )
        seen = self._sidecar_from(resp, url)
        if self._sidecar is not None and seen.etag and self._sidecar.etag not in (None, seen.etag):
            # A server that ignores If-Range: never splice two objects together.
            part.reset()
            return _Retry(reason=f"the object changed (ETag {seen.etag}): starting over")
        early = self._check_total(total, part)
        if early is not None:
            return early
        # Re-hash the prefix before appending to it.
        part.hasher(self._cancel)
        outcome = self._stream(resp, part)
        if isinstance(outcome, _Done) and total is not None and part.size < total:
            # A server may send less than the open range asked for (RFC 9110 section 14.1.2).
            return _Retry(reason=f"the server sent bytes {start}-{end} of {total}: continuing")
        return outcome

    def _sidecar_from(self, resp: http.client.HTTPResponse, url: _Url) -> _Sidecar:
        return _Sidecar(
            path=url.path,
            etag=_header_value(resp.getheader("ETag")),
            last_modified=_header_value(resp.getheader("Last-Modified")),
            boot_id=self._boot_id,
        )

    def _check_total(self, total: int | None, part: _PartFile) -> _Failed | None:
        size = self.command.size
        if total is not None and size is not None and total != size:
            return _Failed(
                failure=DownloadFailure.VERIFICATION_FAILED,
                message=f"size: expected {size} bytes (job document), the server sends {total}",
            )
        if total is not None:
            self._total = total
            return self._check_space(total, part.size)
        return None

    def _stream(self, resp: http.client.HTTPResponse, part: _PartFile) -> _Outcome:
        """Append the body to the file; constant memory (the partial file's few buffers)."""
        opt = self._opt
        chunk = opt.chunk_size
        if opt.max_speed is not None:
            chunk = min(chunk, max(4096, opt.max_speed // 8))
        read: Callable[[memoryview], int]
        if resp.chunked:

            def read(into: memoryview) -> int:
                data = resp.read1(len(into))
                into[: len(data)] = data
                return len(data)

        else:
            # One recv() straight into the partial file's buffer (HTTPResponse.readinto
            # would wait for it to fill, hiding a slow or stalled server).
            read = resp.fp.readinto1
        remaining = None if resp.chunked else resp.length
        limit = self.command.size
        next_space_check = part.size if self._total is None else None
        growth_limit = self._opt.max_download_size or sys.maxsize
        monotonic = time.monotonic
        cancel = self._cancel
        start = monotonic()
        received = 0
        next_progress = start + PROGRESS_INTERVAL
        sample_start, sample_bytes = start, 0
        sample_len = min(1.0, opt.min_speed_time / 2)
        low_since: float | None = None
        while remaining is None or remaining > 0:
            space = part.space(cancel)
            hold_until = part.holding()
            if hold_until is not None and not self._readable(hold_until - monotonic()):
                # The link is slow or stalls: what came so far goes to the file now.
                part.commit()
                space = part.space(cancel)
            n = read(space[: chunk if remaining is None else min(chunk, remaining)])
            if cancel.is_set():
                raise _Cancelled
            if not n:
                break
            now = monotonic()
            part.filled(n, now)
            self._failures = 0  # a successful chunk resets the backoff
            received += n
            sample_bytes += n
            if remaining is not None:
                remaining -= n
            if limit is not None and part.size > limit:
                return _Failed(
                    failure=DownloadFailure.VERIFICATION_FAILED,
                    message=f"size: expected {limit} bytes, the server sent more",
                )
            if next_space_check is not None and (
                part.size >= next_space_check or part.size > growth_limit
            ):
                room = self._check_growth(part.size)
                if isinstance(room, _Failed):
                    return room
                # Look again before the reserve could be reached, and at least every MiB
                # (other writers share the file system).
                next_space_check = part.size + min(SPACE_CHECK_BYTES, room + 1)
            if now >= next_progress:
                next_progress = now + PROGRESS_INTERVAL
                self._emit(
                    DownloadProgressed(
                        download_id=self.download_id, bytes_done=part.size, total=self._total
                    )
                )
            if opt.min_speed > 0 and now - sample_start >= sample_len:
                # Like curl --speed-limit/--speed-time: slow for a whole period → reconnect.
                if sample_bytes / (now - sample_start) < opt.min_speed:
                    low_since = sample_start if low_since is None else low_since
                    if now - low_since >= opt.min_speed_time:
                        return _Retry(
                            reason=f"slower than {opt.min_speed} B/s for"
                            f" {opt.min_speed_time:g} s: reconnecting"
                        )
                else:
                    low_since = None
                sample_start, sample_bytes = now, 0
            if opt.max_speed is not None:
                ahead = start + received / opt.max_speed - now
                if ahead > 0 and cancel.wait(ahead):
                    raise _Cancelled
        if remaining:
            return _Retry(
                reason=f"connection closed after {received} of {received + remaining} bytes"
            )
        return _Done()


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"timed out ({e})" if str(e) else "timed out"
    text = str(e) or "no detail"
    return f"{type(e).__name__}: {text}"


# --- the driver ---------------------------------------------------------------------------


class Downloader:
    """Executes the download commands; one download at a time, each in its own thread.

    Events go to `on_event` from the download's thread. After `execute(CancelDownload)`
    returns, nothing more is sent for that download; to guarantee that, `on_event` runs
    under a lock that cancelling takes too, so it must hand the event over (a queue) and
    never wait for the thread that calls `execute`. `NO_PROXY` applies to `proxy` as well.
    """

    def __init__(
        self,
        download_location: Path,
        on_event: Callable[[Event], None],
        *,
        allow_http: bool = False,
        proxy: str | None = None,
        min_speed: int = 1024,
        min_speed_time: float = 60.0,
        max_speed: int | None = None,
        chunk_size: int = 4 * 1024 * 1024,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        min_free_space: int = 0,
        max_download_size: int | None = None,
        statvfs: StatVfs = os.statvfs,
        boot_id: Callable[[], str | None] = current_boot_id,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        trusted_keys: TrustedKeys | None = None,
    ) -> None:
        if chunk_size < 4096:
            raise ValueError(f"download: chunk_size must be at least 4096 bytes, got {chunk_size}")
        if max_speed is not None and max_speed <= 0:
            raise ValueError(f"download: max_speed must be positive, got {max_speed}")
        if max_speed is not None and min_speed > max_speed:
            raise ValueError(
                f"download: min_speed ({min_speed} B/s) above max_speed ({max_speed} B/s)"
                " would reconnect forever"
            )
        if min_speed > 0 and min_speed_time <= 0:
            raise ValueError(f"download: min_speed_time must be positive, got {min_speed_time}")
        self._folder = download_location
        self._on_event = on_event
        self._options = _Options(
            allow_http=allow_http,
            proxy=proxy,
            min_speed=min_speed,
            min_speed_time=min_speed_time,
            max_speed=max_speed,
            chunk_size=chunk_size,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            min_free_space=min_free_space,
            max_download_size=max_download_size,
            trusted_keys=trusted_keys,
            env_proxies=urllib.request.getproxies_environment(),
        )
        self._statvfs = statvfs
        self._boot_id = boot_id
        # Without one, a TlsContext starts loading at the first download.
        self._tls: Callable[[], ssl.SSLContext] | None = (
            (lambda: ssl_context) if isinstance(ssl_context, ssl.SSLContext) else ssl_context
        )
        self._lock = threading.Lock()
        self._current: _Transfer | None = None
        self._closed = False

    def execute(self, command: DownloadCommand) -> None:
        match command:
            case StartDownload():
                self._start(command)
            case CancelDownload(download_id=download_id, discard=discard):
                self._cancel(download_id, discard)
            case DiscardDownload(job_id=job_id):
                self._discard(job_id)
            case _:
                assert_never(command)

    def close(self) -> None:
        """Stop any download, keeping its partial file for a resume."""
        with self._lock:
            self._closed = True
            current, self._current = self._current, None
        if current is not None:
            current.cancel()

    def _start(self, command: StartDownload) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("download: StartDownload after close()")
            previous, self._current = self._current, None
        if previous is not None:
            log.info(
                "download %s of job %s: superseded by download %s",
                previous.download_id,
                previous.job_id,
                command.download_id,
            )
            previous.cancel()
        if self._tls is None:
            self._tls = TlsContext()
        transfer = _Transfer(
            command,
            self._folder,
            self._options,
            self._on_event,
            self._statvfs,
            self._tls,
            self._boot_id(),
        )
        with self._lock:
            self._current = transfer
        transfer.thread.start()

    def _cancel(self, download_id: DownloadId, discard: bool) -> None:
        with self._lock:
            current = self._current
            if current is None or current.download_id != download_id:
                log.debug("download %s: cancel of a download that is not running", download_id)
                return
            self._current = None
        current.cancel()
        if discard:
            remove_job_files(self._folder, current.job_id)

    def _discard(self, job_id: JobId) -> None:
        if not _JOB_ID.fullmatch(job_id):
            remove_job_files(self._folder, job_id)  # which refuses it, with the log line
            return
        with self._lock:
            current = self._current
            if current is not None and current.job_id == job_id:
                self._current = None
            else:
                current = None
        if current is not None:
            current.cancel()
        remove_job_files(self._folder, job_id)
