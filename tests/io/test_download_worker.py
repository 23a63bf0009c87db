"""The download side of the job worker: its ledger keeps the download driver's promises across the pipe
(cancel and discard keep their meaning, a download lost with its child is interrupted,
not failed), and the real `Downloader` in a child process downloads and resumes.
The kill -9 of a child mid-download with the whole stack: tests/faults/test_worker_crash.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs
import pytest

from tests.hooks.test_client import Recorder
from tests.io.httpserver import Blob, Reply, ScriptedServer, serving
from upparat.config import DownloadConfig
from upparat.core.commands import CancelDownload, DiscardDownload, StartDownload
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    HookServerInfo,
)
from upparat.core.model import DownloadFailure, DownloadId, JobId
from upparat.devstack.faults import pid_alive, wait_until
from upparat.io.child import Unexpected
from upparat.io.download_worker import DownloadLedger
from upparat.io.folder import SIDECAR_SUFFIX
from upparat.worker import job_worker

JOB = JobId("upparat_fw_2")


def start(download_id: int = 1, job_id: JobId = JOB) -> StartDownload:
    return StartDownload(
        download_id=DownloadId(download_id), job_id=job_id, url="http://127.0.0.1:1/f"
    )


def files_of(folder: Path, job_id: JobId = JOB) -> list[Path]:
    paths = [folder / job_id, folder / (job_id + SIDECAR_SUFFIX)]
    for path in paths:
        path.write_bytes(b"partial")
    return paths


# --- the ledger --------------------------------------------------------------------------


def test_a_download_lost_with_its_child_is_interrupted_with_the_bytes_on_disk(
    tmp_path: Path,
) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    assert ledger.sent(start(), 0.0, running=False)
    assert ledger.busy()
    (tmp_path / JOB).write_bytes(b"x" * 1234)
    assert ledger.lost("download worker (pid 7) was killed by signal 9 (SIGKILL)") == [
        DownloadInterrupted(
            download_id=DownloadId(1),
            bytes_done=1234,
            reason="download worker (pid 7) was killed by signal 9 (SIGKILL)",
        )
    ]
    assert not ledger.busy()
    assert ledger.lost("again") == []
    assert (tmp_path / JOB).exists()  # kept for the resume


def test_events_of_a_cancelled_or_superseded_download_are_dropped(tmp_path: Path) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    ledger.sent(start(1), 0.0, running=False)
    ledger.sent(start(2), 0.0, running=True)  # supersedes 1, as the driver does
    assert ledger.received(DownloadProgressed(download_id=DownloadId(1), bytes_done=5)) is None
    progressed = DownloadProgressed(download_id=DownloadId(2), bytes_done=5)
    assert ledger.received(progressed) == progressed
    assert ledger.sent(CancelDownload(download_id=DownloadId(2), discard=False), 0.0, running=True)
    assert not ledger.busy()
    done = DownloadCompleted(download_id=DownloadId(2), path="p", size=1, sha256="0" * 64)
    assert ledger.received(done) is None
    # A cancel of what does not run sends nothing (and starts no child).
    assert not ledger.sent(CancelDownload(download_id=DownloadId(2)), 0.0, running=True)


def test_a_download_ends_with_its_one_final_event(tmp_path: Path) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    ledger.sent(start(3), 0.0, running=False)
    failed = DownloadFailed(
        download_id=DownloadId(3), failure=DownloadFailure.IO_ERROR, message="m"
    )
    assert ledger.received(failed) == failed
    assert not ledger.busy()
    assert ledger.received(failed) is None
    assert isinstance(ledger.received(HookServerInfo(hooks=frozenset())), Unexpected)


def test_a_discard_with_no_child_removes_the_files_here(tmp_path: Path) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    paths = files_of(tmp_path)
    assert not ledger.sent(DiscardDownload(job_id=JOB), 0.0, running=False)
    assert not any(p.exists() for p in paths)
    # Not a job id: nothing is touched (the driver's rule).
    evil = tmp_path / "upparat_x"
    evil.write_bytes(b"keep")
    assert not ledger.sent(DiscardDownload(job_id=JobId("../upparat_x")), 0.0, running=False)
    assert evil.exists()


@pytest.mark.parametrize("how", ["discard", "cancel"])
def test_a_discard_with_a_child_running_removes_the_files_at_once(tmp_path: Path, how: str) -> None:
    # The core sends its terminal update right after: whoever sees the job end must find
    # the files gone, not wait for the child to get to the command.
    ledger = DownloadLedger(folder=tmp_path)
    ledger.sent(start(), 0.0, running=False)
    paths = files_of(tmp_path)
    command = (
        DiscardDownload(job_id=JOB)
        if how == "discard"
        else CancelDownload(download_id=DownloadId(1), discard=True)
    )
    assert ledger.sent(command, 0.0, running=True)  # the child is told too
    assert not any(p.exists() for p in paths)


def test_a_discard_sent_to_a_child_is_done_here_too_once_it_exited(tmp_path: Path) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    ledger.sent(start(), 0.0, running=False)
    assert ledger.sent(DiscardDownload(job_id=JOB), 0.0, running=True)
    assert not ledger.busy()  # the download was running: it is stopped, no event comes
    paths = files_of(tmp_path)  # the child died before it removed them
    ledger.ended()
    assert not any(p.exists() for p in paths)


def test_a_download_started_after_a_discard_keeps_its_files(tmp_path: Path) -> None:
    ledger = DownloadLedger(folder=tmp_path)
    ledger.sent(start(1), 0.0, running=False)
    ledger.sent(CancelDownload(download_id=DownloadId(1), discard=True), 0.0, running=True)
    ledger.sent(start(2), 0.0, running=True)  # the child removes first, then downloads anew
    paths = files_of(tmp_path)
    ledger.ended()
    assert all(p.exists() for p in paths)


# --- the real driver in a child ------------------------------------------------------------


def test_a_download_in_a_child_resumes_after_the_child_was_killed(tmp_path: Path) -> None:
    blob = Blob(size=3 * 1024 * 1024 + 17)
    server = ScriptedServer(blob)
    server.default = Reply(rate=512 * 1024)
    recorder = Recorder()
    config = DownloadConfig(location=tmp_path, allow_http=True, min_free_space=0)
    folder = config.directory
    folder.mkdir(mode=0o700)
    # The daemon's job worker, given download commands only here.
    driver = job_worker(f"unix://{tmp_path}/no-hook-server.sock", config, None, recorder)
    first = StartDownload(
        download_id=DownloadId(1),
        job_id=JOB,
        url=server.url(),
        sha256=blob.sha256(),
        size=blob.size,
    )
    with serving(server):
        try:
            driver.execute(first)
            path = folder / JOB
            # The driver writes what it received a little later: wait for bytes on disk.
            wait_until(lambda: path.exists() and path.stat().st_size > 0, "bytes on disk")
            pid = driver.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            interrupted = recorder.wait_for(DownloadInterrupted)
            assert interrupted.download_id == first.download_id
            assert interrupted.reason == (
                f"job worker (pid {pid}) was killed by signal 9 (SIGKILL)"
            )
            partial = path.stat().st_size
            assert interrupted.bytes_done == partial
            assert 0 < partial < blob.size
            wait_until(lambda: not pid_alive(pid), "the killed child to be reaped")

            server.default = Reply()
            driver.execute(attrs.evolve(first, download_id=DownloadId(2)))
            done = recorder.wait_for(DownloadCompleted)
            assert done.sha256 == blob.sha256()
            assert driver.pid != pid
            # Resumed where the killed child left the file.
            assert [seen.header("Range") for seen in server.requests] == [
                None,
                f"bytes={partial}-",
            ]
        finally:
            driver.close()
