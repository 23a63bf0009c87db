"""The job worker (upparat.worker): hook calls and the download share one child, each kept
by its own ledger. The ledgers' own rules: tests/hooks, tests/io/test_download_worker.py;
the whole daemon with its worker, killed or not: tests/e2e/test_process.py and
tests/faults/test_worker_crash.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
from upparat.hooks.worker import HookLedger
from upparat.io.child import Garbage, Unexpected
from upparat.io.download_worker import DownloadLedger
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
