"""StatusTracker: what the loop sees becomes the status file, written only on change."""

from __future__ import annotations

import json
from pathlib import Path

from upparat.core import commands as c
from upparat.core import events as e
from upparat.core.model import (
    CallId,
    ClientToken,
    DownloadId,
    HookKind,
    JobId,
    JobStatus,
    JournalRecord,
    Phase,
    ReportedPackage,
    TimerKind,
)
from upparat.io import status
from upparat.io.status import Connection, StatusFile, StatusPhase, StatusTracker, StatusWriteFailed

JOB = JobId("upparat_fw_2")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def update(state: str, status_: JobStatus = JobStatus.IN_PROGRESS) -> c.UpdateJob:
    return c.UpdateJob(
        job_id=JOB,
        status=status_,
        status_details=(("message", "m"), ("state", state)),
        client_token=ClientToken("t"),
    )


def tracker(tmp_path: Path, failures: list[StatusWriteFailed] | None = None) -> StatusTracker:
    sink = failures if failures is not None else []
    return StatusTracker(
        StatusFile(tmp_path / "status.json"), wall_clock=Clock(), on_write_failed=sink.append
    )


def shown(tmp_path: Path) -> status.StatusSnapshot:
    found = status.read(tmp_path / "status.json")
    assert isinstance(found, status.StatusSnapshot), found
    return found


def test_a_job_goes_through_the_phases_and_ends_in_its_result(tmp_path: Path) -> None:
    t = tracker(tmp_path)
    t.saw_event(e.MqttConnected())
    t.flush(0.0)
    assert shown(tmp_path).connection is Connection.CONNECTED
    t.saw_event(
        e.HookFinished(call_id=CallId(1), hook=HookKind.VERSION, result=e.HookSuccess(value="1.0"))
    )
    t.saw_command(c.Persist(record=JournalRecord(job_id=JOB, phase=Phase.CHECKING_VERSION)))
    t.flush(1.0)
    assert (shown(tmp_path).phase, shown(tmp_path).job_id) == (StatusPhase.CHECKING_VERSION, JOB)
    assert shown(tmp_path).running_version == "1.0"
    t.saw_command(update("download_start"))
    t.saw_event(e.DownloadProgressed(download_id=DownloadId(1), bytes_done=50, total=200))
    t.flush(2.0)
    progress = shown(tmp_path).progress
    assert shown(tmp_path).phase is StatusPhase.DOWNLOADING
    assert progress is not None
    assert progress.shown_percent == 25
    t.saw_command(update("installation_start"))
    t.saw_event(e.HookProgressed(call_id=CallId(2), line="Copying", percent=40))
    t.flush(3.0)
    installing = shown(tmp_path)
    assert installing.phase is StatusPhase.INSTALLING
    assert installing.progress is not None
    assert (installing.progress.percent, installing.progress.message) == (40, "Copying")
    t.saw_command(update("rolled_back", JobStatus.FAILED))
    t.saw_command(c.Persist(record=None))
    t.flush(4.0)
    done = shown(tmp_path)
    assert (done.phase, done.job_id, done.progress) == (StatusPhase.IDLE, None, None)
    assert done.last_result is not None
    assert (done.last_result.status, done.last_result.state) == ("FAILED", "rolled_back")


def test_progress_alone_is_written_at_most_once_a_second(tmp_path: Path) -> None:
    t = tracker(tmp_path)
    t.saw_command(update("download_start"))
    t.flush(10.0)
    for done, now in ((10, 10.2), (20, 10.5), (30, 10.9)):
        t.saw_event(e.DownloadProgressed(download_id=DownloadId(1), bytes_done=done, total=100))
        t.flush(now)
        progress = shown(tmp_path).progress
        assert progress is None or progress.done_bytes is None  # not yet: under a second
    t.saw_event(e.DownloadProgressed(download_id=DownloadId(1), bytes_done=40, total=100))
    t.flush(11.1)
    progress = shown(tmp_path).progress
    assert progress is not None
    assert progress.done_bytes == 40
    # A phase change is written at once, however soon.
    t.saw_command(update("installation_start"))
    t.flush(11.2)
    assert shown(tmp_path).phase is StatusPhase.INSTALLING


def test_nothing_is_written_when_nothing_changed(tmp_path: Path) -> None:
    t = tracker(tmp_path)
    t.flush(0.0)
    path = tmp_path / "status.json"
    first = path.stat().st_mtime_ns, path.stat().st_ino
    t.saw_event(e.TimerFired(timer=TimerKind.UPDATE_RETRY, token=1))
    t.flush(5.0)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == first


def test_a_failed_write_is_reported_once_and_the_next_success_resets_it(tmp_path: Path) -> None:
    failures: list[StatusWriteFailed] = []
    blocked = tmp_path / "file"
    blocked.write_text("")  # the status directory cannot be created below a file
    t = StatusTracker(
        StatusFile(blocked / "status.json"), wall_clock=Clock(), on_write_failed=failures.append
    )
    t.flush(0.0)
    t.saw_event(e.MqttConnected())
    t.flush(1.0)
    assert len(failures) == 1
    assert failures[0].path == blocked / "status.json"


def test_the_status_shows_what_the_package_shadow_says(tmp_path: Path) -> None:
    t = tracker(tmp_path)
    t.saw_event(
        e.HookFinished(call_id=CallId(1), hook=HookKind.VERSION, result=e.HookSuccess(value="2.0"))
    )
    old = ReportedPackage(version="1.0")
    t.saw_event(e.PackageShadowRead(client_token=None, shadow_version=3, reported=old, timestamp=1))
    t.flush(0.0)
    assert (shown(tmp_path).running_version, shown(tmp_path).reported_version) == ("2.0", "1.0")
    assert "running 2.0 (the shadow says 1.0)" in status.render_tty(shown(tmp_path))
    assert shown(tmp_path).reported_attributes == ()
    new = ReportedPackage(version="2.0", attributes=(("booted_slot", "B"),))
    t.saw_event(
        e.PackageShadowUpdated(client_token=None, shadow_version=4, reported=new, timestamp=2)
    )
    t.flush(1.0)
    assert shown(tmp_path).reported_version == "2.0"
    assert shown(tmp_path).reported_attributes == (("booted_slot", "B"),)
    document = json.loads((tmp_path / "status.json").read_bytes())
    assert document["reportedAttributes"] == {"booted_slot": "B"}
    assert "running 2.0 (reported)" in status.render_tty(shown(tmp_path))
    assert "reported=2.0" in status.render_plain(shown(tmp_path))
