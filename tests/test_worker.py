"""The job worker (upparat.worker): hook calls and the download share one child, each kept
by its own ledger. The ledgers' own rules: tests/hooks, tests/io/test_download_worker.py;
the whole daemon with its worker, killed or not: tests/e2e/test_process.py and
tests/faults/test_worker_crash.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from upparat import worker
from upparat.config import DownloadConfig
from upparat.core.commands import AskHookInfo, CallHook, CancelDownload, StartDownload
from upparat.core.events import (
    DownloadInterrupted,
    DownloadProgressed,
    HookFinished,
    HookInfoFailed,
    HookProgressed,
    HookUnavailable,
)
from upparat.core.model import CallId, DownloadId, HookContext, HookKind, JobId
from upparat.hooks.worker import HookLedger, HookSetup
from upparat.io.child import Garbage, Unexpected
from upparat.io.download_worker import DownloadLedger, DownloadSetup
from upparat.worker import JobLedger, _job_command

JOB = JobId("upparat_fw_2")
WHY = "job worker (pid 7) was killed by signal 9 (SIGKILL)"


def ledger(folder: Path) -> JobLedger:
    return JobLedger(hooks=HookLedger(info_timeout=5.0), download=DownloadLedger(folder=folder))


def call(call_id: int, timeout: float = 60.0) -> CallHook:
    context = HookContext(job_id=JOB, meta="", attempt=1, elapsed=0.0, force=False)
    return CallHook(
        call_id=CallId(call_id), hook=HookKind.INSTALL, context=context, timeout=timeout
    )


def start() -> StartDownload:
    return StartDownload(download_id=DownloadId(4), job_id=JOB, url="http://127.0.0.1:1/f")


def test_a_child_lost_with_a_call_and_a_download_in_flight_owes_each_its_event(
    tmp_path: Path,
) -> None:
    jobs = ledger(tmp_path)
    assert jobs.sent(call(1), 0.0, running=False)
    assert jobs.sent(AskHookInfo(), 0.0, running=True)
    assert jobs.sent(start(), 0.0, running=True)
    (tmp_path / JOB).write_bytes(b"x" * 99)

    assert jobs.lost(WHY) == [
        HookFinished(call_id=CallId(1), hook=HookKind.INSTALL, result=HookUnavailable(detail=WHY)),
        HookInfoFailed(detail=WHY),
        DownloadInterrupted(download_id=DownloadId(4), bytes_done=99, reason=WHY),
    ]
    assert not jobs.busy()


def test_each_event_goes_to_the_ledger_of_its_kind(tmp_path: Path) -> None:
    jobs = ledger(tmp_path)
    jobs.sent(call(1), 0.0, running=False)
    jobs.sent(start(), 0.0, running=True)
    progressed = DownloadProgressed(download_id=DownloadId(4), bytes_done=5)
    hook_progress = HookProgressed(call_id=CallId(1), line="50%", percent=50)
    assert jobs.received(progressed) == progressed
    assert jobs.received(hook_progress) == hook_progress
    # The download's end leaves the call in flight, and the other way round.
    assert jobs.sent(CancelDownload(download_id=DownloadId(4), discard=False), 0.0, running=True)
    assert jobs.received(progressed) is None
    assert jobs.busy()
    assert isinstance(jobs.received("garbage"), Unexpected)


def test_the_deadline_is_the_earliest_of_both(tmp_path: Path) -> None:
    jobs = ledger(tmp_path)
    assert jobs.deadline() is None
    jobs.sent(start(), 0.0, running=False)
    assert jobs.deadline() is None  # a download has no deadline: its driver watches it
    jobs.sent(call(1, timeout=30.0), 100.0, running=True)
    hooks_only = HookLedger(info_timeout=5.0)
    hooks_only.sent(call(1, timeout=30.0), 100.0, running=True)
    assert jobs.deadline() == hooks_only.deadline()


def test_the_child_takes_hook_and_download_commands_only() -> None:
    assert _job_command(start()) == start()
    assert _job_command(call(3)) == call(3)
    with pytest.raises(Garbage, match="not a hook or download command"):
        _job_command(JOB)


class _Fake:
    """A driver that records its commands, and the thread it was built in."""

    def __init__(self) -> None:
        self.built_in = threading.current_thread().name
        self.commands: list[object] = []
        self.closed = False

    def execute(self, command: object) -> None:
        self.commands.append(command)

    def close(self) -> None:
        self.closed = True


class _Builds:
    """The drivers `_Both` built, and how many downloader builds are still to fail."""

    def __init__(self) -> None:
        self.hooks: list[_Fake] = []
        self.download: list[_Fake] = []
        self.failures = 0

    def client(self, setup: object, on_event: object) -> _Fake:
        self.hooks.append(_Fake())
        return self.hooks[-1]

    def downloader(self, setup: object, on_event: object) -> _Fake:
        if self.failures:
            self.failures -= 1
            raise OSError("no CA store")
        self.download.append(_Fake())
        return self.download[-1]


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> _Builds:
    builds = _Builds()
    monkeypatch.setattr(worker, "build_client", builds.client)
    monkeypatch.setattr(worker, "build_downloader", builds.downloader)
    return builds


def both(tmp_path: Path) -> worker._Both:
    setup = worker.JobSetup(
        hooks=HookSetup(endpoint="unix:///nonexistent", info_timeout=5.0),
        download=DownloadSetup.of(DownloadConfig(location=tmp_path), None),
    )
    return worker._Both(setup, lambda event: None)


def hook(kind: HookKind, *, download_follows: bool = False) -> CallHook:
    context = HookContext(job_id=JOB, meta="", attempt=1, elapsed=0.0, force=False)
    return CallHook(
        call_id=CallId(1),
        hook=kind,
        context=context,
        timeout=60.0,
        download_follows=download_follows,
    )


def test_a_call_a_download_follows_has_the_downloader_built_ahead_in_a_thread(
    tmp_path: Path, built: _Builds
) -> None:
    driver = both(tmp_path)
    driver.execute(hook(HookKind.VERSION, download_follows=True))
    driver.execute(hook(HookKind.DOWNLOAD, download_follows=True))
    driver.execute(start())

    [downloader] = built.download  # built once
    assert downloader.built_in == "download-prepare"
    assert downloader.commands == [start()]
    driver.close()
    assert downloader.closed


def test_a_call_no_download_follows_builds_nothing_ahead(tmp_path: Path, built: _Builds) -> None:
    driver = both(tmp_path)
    driver.execute(hook(HookKind.VERSION))
    driver.execute(hook(HookKind.DOWNLOAD))
    assert built.download == []
    driver.execute(start())
    [downloader] = built.download
    assert downloader.built_in == threading.current_thread().name
    driver.close()


def test_a_downloader_that_fails_ahead_is_built_again_when_needed(
    tmp_path: Path, built: _Builds
) -> None:
    built.failures = 1
    driver = both(tmp_path)
    driver.execute(hook(HookKind.DOWNLOAD, download_follows=True))
    driver.execute(start())
    [downloader] = built.download
    assert downloader.built_in == threading.current_thread().name
    assert downloader.commands == [start()]
    driver.close()
