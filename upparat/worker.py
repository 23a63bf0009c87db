"""The daemon's job worker: the hook client and the download driver together in the one
child process of the daemon (upparat.io.child) that runs while a job does.

Owns the composition only: which of the two ledgers (upparat.hooks.worker's and
upparat.io.download_worker's) a command or an event belongs to, and the child's driver that
hands each command to the client or the downloader. What each is owed when the child ends
is its ledger's rule; how the child lives and dies is upparat.io.child's.

Why one child for both: a job's calls come in order (the version hook, the download hook,
the download, Install, ...). With a child each, the download waited for a second Python to
start and import after the hooks' had (~0.15 s here, more on a small board, inside the
download's time), and every job paid a second process and its pipe threads. In one, the
download finds it running. It imports neither grpc nor the download stack outside `main`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, assert_never

import attrs

from upparat.core.commands import (
    AskHookInfo,
    CallHook,
    CancelDownload,
    CancelHook,
    DiscardDownload,
    StartDownload,
)
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
)
from upparat.hooks import RETRY_HOLD
from upparat.hooks.values import INFO_TIMEOUT
from upparat.hooks.worker import HookCommand, HookLedger, HookSetup, build_client, hook_command
from upparat.io.child import LINGER, ChildDriver, Driver, Garbage, Unexpected, serve
from upparat.io.download_worker import (
    DownloadCommand,
    DownloadLedger,
    DownloadSetup,
    build_downloader,
    download_command,
)

if TYPE_CHECKING:
    from upparat.config import DownloadConfig  # the child never reads the config
    from upparat.signing import TrustedKeys  # the daemon loads it only with trusted_keys

log = logging.getLogger("upparat.worker")

JobCommand = HookCommand | DownloadCommand


@attrs.frozen(kw_only=True)
class JobSetup:
    hooks: HookSetup
    download: DownloadSetup


def _is_download_event(message: object) -> bool:
    return isinstance(
        message, DownloadProgressed | DownloadCompleted | DownloadFailed | DownloadInterrupted
    )


@attrs.define
class JobLedger:
    """The hook calls and the download in flight, each in its own ledger."""

    hooks: HookLedger
    download: DownloadLedger

    def sent(self, command: JobCommand, now: float, *, running: bool) -> bool:
        match command:
            case AskHookInfo() | CallHook() | CancelHook():
                return self.hooks.sent(command, now, running=running)
            case StartDownload() | CancelDownload() | DiscardDownload():
                return self.download.sent(command, now, running=running)
            case _:
                assert_never(command)

    def received(self, message: object) -> Event | Unexpected | None:
        if _is_download_event(message):
            return self.download.received(message)
        return self.hooks.received(message)  # which finds anything else Unexpected

    def busy(self) -> bool:
        return self.hooks.busy() or self.download.busy()

    def deadline(self) -> float | None:
        deadlines = [d for d in (self.hooks.deadline(), self.download.deadline()) if d is not None]
        return min(deadlines, default=None)

    def lost(self, why: str) -> list[Event]:
        return self.hooks.lost(why) + self.download.lost(why)

    def ended(self) -> None:
        self.hooks.ended()
        self.download.ended()


def job_worker(
    endpoint: str,
    download: DownloadConfig,
    trusted_keys: TrustedKeys | None,
    on_event: Callable[[Event], None],
    *,
    info_timeout: float = INFO_TIMEOUT,
    linger: float = LINGER,
    python: str = sys.executable,
) -> ChildDriver[JobCommand]:
    """The runtime's hook driver and download driver: the hook server at `endpoint`, the
    `[service]` download settings."""
    return ChildDriver(
        name="job worker",
        module=__name__,
        setup=JobSetup(
            hooks=HookSetup(endpoint=endpoint, info_timeout=info_timeout),
            download=DownloadSetup.of(download, trusted_keys),
        ),
        ledger=JobLedger(
            hooks=HookLedger(info_timeout=info_timeout),
            download=DownloadLedger(folder=download.directory),
        ),
        on_event=on_event,
        linger=linger,
        hold=RETRY_HOLD,
        python=python,
    )


# --- the child ---------------------------------------------------------------------------


class _Both:
    """The child's driver: each command to the driver of its kind, built when first needed
    (a spell of hook calls only, the start-up GetInfo, never loads the download stack).

    The downloader is built ahead, in a thread, on the first hook call after which the core
    says a download follows (`CallHook.download_follows`: a fresh job's version check, or its
    download check): building it (importing the download stack: ~30 ms here, several times
    that on a small board; the TLS context loads in a thread of its own, `TlsContext`, and
    is waited for only at the first TLS handshake) then overlaps the hook calls, the hook
    server's start after a quiet spell and the cloud's answers instead of delaying the
    first byte. A job that ends at its version check has built it for nothing (once); the
    checks after a restart, and a download hook retried for hours, build nothing ahead."""

    def __init__(self, setup: JobSetup, on_event: Callable[[Event], None]) -> None:
        self._setup = setup
        self._on_event = on_event
        self._hooks: Driver[HookCommand] | None = None
        self._download: Driver[DownloadCommand] | None = None
        self._preparing: threading.Thread | None = None

    def execute(self, command: JobCommand) -> None:
        match command:
            case AskHookInfo() | CallHook() | CancelHook():
                if self._hooks is None:
                    self._hooks = build_client(self._setup.hooks, self._on_event)
                self._hooks.execute(command)
                if isinstance(command, CallHook) and command.download_follows:
                    self._prepare_downloader()
            case StartDownload() | CancelDownload() | DiscardDownload():
                self._downloader().execute(command)
            case _:
                assert_never(command)

    def _prepare_downloader(self) -> None:
        if self._download is not None or self._preparing is not None:
            return
        self._preparing = threading.Thread(
            target=self._build_downloader, name="download-prepare", daemon=True
        )
        self._preparing.start()

    def _build_downloader(self) -> None:
        try:
            self._download = build_downloader(self._setup.download, self._on_event)
        except Exception:  # built again by _downloader, which raises it
            log.debug("building the downloader ahead failed", exc_info=True)

    def _prepared(self) -> None:
        """Until a downloader building ahead is built (or failed)."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None

    def _downloader(self) -> Driver[DownloadCommand]:
        self._prepared()
        if self._download is None:
            self._download = build_downloader(self._setup.download, self._on_event)
        return self._download

    def close(self) -> None:
        self._prepared()
        for driver in (self._download, self._hooks):
            if driver is not None:
                driver.close()


def main() -> int:
    """The child: the hook client and the downloader on the commands the daemon sends."""
    return serve(
        _both,
        accepts=_job_command,
        reads={
            __name__,
            "upparat.hooks.worker",
            "upparat.io.download_worker",
            "upparat.signing",
            "pathlib",
        },
    )


def _job_command(message: object) -> JobCommand:
    try:
        return hook_command(message)
    except Garbage:
        pass
    try:
        return download_command(message)
    except Garbage:
        raise Garbage(f"a {type(message).__name__}, not a hook or download command") from None


def _both(setup: object, on_event: Callable[[Event], None]) -> Driver[JobCommand]:
    if not isinstance(setup, JobSetup):
        raise TypeError(f"job worker: expected JobSetup, got {type(setup).__name__}")
    return _Both(setup, on_event)
