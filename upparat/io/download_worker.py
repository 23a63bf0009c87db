"""The download side of the daemon's job worker (upparat.worker): upparat.io.download's
`Downloader` (used as it is) in a child process that runs only while it has work
(upparat.io.child), so the daemon never holds the driver, its TLS context (the CA store),
threads and buffers, before or after jobs.

Owns the parent's ledger of downloads: a download running when the child ends is owed
`DownloadInterrupted` (a transient failure: the core's backoff starts it again and the
partial file is resumed), and a cancel or discard keeps its meaning across the pipe. A
`DiscardDownload` with no child running removes the job's files here (upparat.io.folder);
one sent to a child that then dies is done here once it has exited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from upparat.core.commands import CancelDownload, DiscardDownload, StartDownload
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
)
from upparat.core.model import JobId
from upparat.io.child import Driver, Garbage, Unexpected
from upparat.io.folder import remove_job_files

if TYPE_CHECKING:
    from upparat.config import DownloadConfig  # the child never reads the config
    from upparat.signing import TrustedKeys  # the daemon loads it only with trusted_keys

log = logging.getLogger("upparat.download")

DownloadCommand = StartDownload | CancelDownload | DiscardDownload


@attrs.frozen(kw_only=True)
class DownloadSetup:
    """What the child's `Downloader` is built from: the daemon's `[service]` download
    values, not the file; plain values, so that the child need not import the config
    module (~80 ms of every start) to read them."""

    directory: Path
    allow_http: bool
    proxy: str | None
    min_speed: int
    min_speed_time: float
    max_speed: int | None
    min_free_space: int
    max_download_size: int | None
    trusted_keys: TrustedKeys | None

    @classmethod
    def of(cls, download: DownloadConfig, trusted_keys: TrustedKeys | None) -> DownloadSetup:
        return cls(
            directory=download.directory,
            allow_http=download.allow_http,
            proxy=download.proxy,
            min_speed=download.min_speed,
            min_speed_time=download.min_speed_time,
            max_speed=download.max_speed,
            min_free_space=download.min_free_space,
            max_download_size=download.max_download_size,
            trusted_keys=trusted_keys,
        )


@attrs.define
class DownloadLedger:
    """The download the child runs, and the discards it may not have done yet."""

    folder: Path
    running: StartDownload | None = None
    discarded: set[JobId] = attrs.field(factory=set)
    """Jobs whose files the child was told to remove: removed here too once it has exited
    (nothing writes them then), unless a download of the job was started after."""

    def sent(self, command: DownloadCommand, now: float, *, running: bool) -> bool:
        match command:
            case StartDownload(job_id=job_id):
                # One download at a time: the child's driver stops the one before, silently.
                self.running = command
                self.discarded.discard(job_id)
            case CancelDownload(download_id=download_id, discard=discard):
                current = self.running
                if current is None or current.download_id != download_id:
                    log.debug("download %s: cancel of a download that is not running", download_id)
                    return False
                self.running = None
                if discard:
                    self._discard(current.job_id, running=running)
            case DiscardDownload(job_id=job_id):
                if self.running is not None and self.running.job_id == job_id:
                    self.running = None
                self._discard(job_id, running=running)
                if not running:
                    return False
        return True

    def _discard(self, job_id: JobId, *, running: bool) -> None:
        """The job's files go now, before the runtime's next command (the core sends its
        terminal update after this: whoever sees the job end finds them gone, as with the
        driver in the daemon). A child's download of the job may still write its sidecar
        until the command reaches it: told too, it stops that and removes them again, and
        `ended` does once it has exited."""
        remove_job_files(self.folder, job_id)
        if running:
            self.discarded.add(job_id)

    def received(self, message: object) -> Event | Unexpected | None:
        match message:
            case DownloadProgressed(download_id=download_id):
                return message if self._is_running(download_id) else None
            case (
                DownloadCompleted(download_id=download_id)
                | DownloadFailed(download_id=download_id)
                | DownloadInterrupted(download_id=download_id)
            ):
                if not self._is_running(download_id):
                    return None
                self.running = None
                return message
            case _:
                return Unexpected(f"a {type(message).__name__} from the download driver")

    def _is_running(self, download_id: object) -> bool:
        return self.running is not None and self.running.download_id == download_id

    def busy(self) -> bool:
        return self.running is not None

    def deadline(self) -> float | None:
        return None  # a download takes as long as it takes; min_speed ends a stalled one

    def lost(self, why: str) -> list[Event]:
        running, self.running = self.running, None
        if running is None:
            return []
        try:
            done = (self.folder / running.job_id).stat().st_size
        except OSError:
            done = 0
        return [DownloadInterrupted(download_id=running.download_id, bytes_done=done, reason=why)]

    def ended(self) -> None:
        for job_id in sorted(self.discarded):
            remove_job_files(self.folder, job_id)
        self.discarded.clear()


# --- the child ---------------------------------------------------------------------------


def download_command(message: object) -> DownloadCommand:
    """`message` as a download command; `Garbage` if it is none."""
    if not isinstance(message, StartDownload | CancelDownload | DiscardDownload):
        raise Garbage(f"a {type(message).__name__}, not a download command")
    return message


def build_downloader(setup: object, on_event: Callable[[Event], None]) -> Driver[DownloadCommand]:
    """In the child: the download driver for `setup` (a `DownloadSetup`)."""
    if not isinstance(setup, DownloadSetup):
        raise TypeError(f"download worker: expected DownloadSetup, got {type(setup).__name__}")
    from upparat.io.download import Downloader, TlsContext

    return Downloader(
        setup.directory,
        on_event,
        # Starts loading now, not at the first download: a downloader is built in the child
        # only when a download follows, and then ahead of it (upparat.worker).
        ssl_context=TlsContext(),
        allow_http=setup.allow_http,
        proxy=setup.proxy,
        min_speed=setup.min_speed,
        min_speed_time=setup.min_speed_time,
        max_speed=setup.max_speed,
        min_free_space=setup.min_free_space,
        max_download_size=setup.max_download_size,
        trusted_keys=setup.trusted_keys,
    )
