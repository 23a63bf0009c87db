"""The runtime loop: its timers, and the real core driven through fake drivers.

The fakes answer commands the way the real drivers do (by posting events to the inbox,
never by calling back into the loop) and record everything in one shared log, so a
test can check the order in which commands reached the drivers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import assert_never

import attrs
import pytest

from upparat.core import commands as c
from upparat.core import events as e
from upparat.core.model import (
    CallId,
    DownloadId,
    HookKind,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    JournalRecord,
    Phase,
    Settings,
    TimerKind,
)
from upparat.io.journal import JournalError
from upparat.runtime import EventQueue, Runtime, StatusSink, Timers

JOB = JobId("upparat_fw_2")
TIMEOUT = 10.0

# --- Timers ---------------------------------------------------------------------------------


def test_timers_fire_in_time_order() -> None:
    timers = Timers()
    timers.set(TimerKind.HOOK_RETRY, 1, at=5.0)
    timers.set(TimerKind.UPDATE_RETRY, 2, at=3.0)
    timers.set(TimerKind.PROGRESS_FLUSH, 3, at=4.0)

    assert timers.next_deadline() == 3.0
    assert timers.due(2.9) == []
    assert timers.due(4.0) == [
        e.TimerFired(timer=TimerKind.UPDATE_RETRY, token=2),
        e.TimerFired(timer=TimerKind.PROGRESS_FLUSH, token=3),
    ]
    assert timers.next_deadline() == 5.0
    assert timers.due(100.0) == [e.TimerFired(timer=TimerKind.HOOK_RETRY, token=1)]
    assert timers.due(100.0) == []
    assert timers.next_deadline() is None


def test_timers_with_the_same_deadline_fire_in_token_order() -> None:
    timers = Timers()
    timers.set(TimerKind.SHUTDOWN, 9, at=1.0)
    timers.set(TimerKind.HOOK_RETRY, 4, at=1.0)
    assert [f.token for f in timers.due(1.0)] == [4, 9]


def test_setting_a_kind_again_replaces_its_timer() -> None:
    timers = Timers()
    timers.set(TimerKind.HOOK_RETRY, 1, at=5.0)
    timers.set(TimerKind.HOOK_RETRY, 2, at=10.0)  # later: the first never fires
    assert timers.next_deadline() == 10.0
    assert timers.due(9.0) == []
    assert timers.due(10.0) == [e.TimerFired(timer=TimerKind.HOOK_RETRY, token=2)]

    timers.set(TimerKind.HOOK_RETRY, 3, at=20.0)
    timers.set(TimerKind.HOOK_RETRY, 4, at=15.0)  # earlier: the later one is gone too
    assert timers.due(30.0) == [e.TimerFired(timer=TimerKind.HOOK_RETRY, token=4)]
    assert timers.next_deadline() is None


# --- fakes ----------------------------------------------------------------------------------


Log = list[tuple[str, object]]


@attrs.define
class Cloud:
    """The fake MQTT driver: AWS IoT Jobs with one job for this thing."""

    inbox: EventQueue
    log: Log
    status: JobStatus = JobStatus.QUEUED
    fail_on: type[c.Command] | None = None

    def execute(
        self,
        command: c.ConnectMqtt
        | c.SubscribeJobTopics
        | c.RequestPendingJobs
        | c.DescribeJob
        | c.UpdateJob
        | c.GetPackageShadow
        | c.UpdatePackageShadow,
    ) -> object:
        self.log.append(("mqtt", command))
        if self.fail_on is not None and isinstance(command, self.fail_on):
            raise RuntimeError("the MQTT driver has a bug")
        match command:
            case c.ConnectMqtt():
                self.inbox.post(e.MqttConnected())
            case c.SubscribeJobTopics():
                self.inbox.post(e.SubscriptionsAcked())
            case c.RequestPendingJobs(client_token=token):
                pending = self.status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)
                summary = JobSummary(job_id=JOB, queued_at=1)
                self.inbox.post(
                    e.PendingJobsListed(
                        in_progress=(summary,) if self.status is JobStatus.IN_PROGRESS else (),
                        queued=(summary,) if self.status is JobStatus.QUEUED else (),
                        client_token=token,
                    )
                    if pending
                    else e.PendingJobsListed(in_progress=(), queued=(), client_token=token)
                )
            case c.DescribeJob(job_id=job_id, client_token=token):
                execution = JobExecution(
                    job_id=job_id,
                    status=self.status,
                    document=JobDocument(file="https://files.example/fw.bin", version="2.0"),
                )
                self.inbox.post(e.JobDescribed(execution=execution, client_token=token))
            case c.UpdateJob(job_id=job_id, status=status, client_token=token):
                self.status = status
                self.inbox.post(e.UpdateAccepted(job_id=job_id, client_token=token))
            case c.GetPackageShadow() | c.UpdatePackageShadow():
                pass  # these tests run without [service] package_name
            case _:
                assert_never(command)
        return True

    def stop(self) -> None:
        self.log.append(("mqtt", "stop"))

    def updates(self) -> list[tuple[JobStatus, str]]:
        return [
            (cmd.status, dict(cmd.status_details).get("state", ""))
            for _, cmd in self.log
            if isinstance(cmd, c.UpdateJob)
        ]


@attrs.define
class Hooks:
    """The fake hook client: a device on version 1.0 that is on 2.0 after Restart."""

    inbox: EventQueue
    log: Log
    version: str = "1.0"
    results: dict[HookKind, list[e.HookResult]] = attrs.field(factory=dict)

    def execute(self, command: c.AskHookInfo | c.CallHook | c.CancelHook) -> None:
        self.log.append(("hooks", command))
        if isinstance(command, c.AskHookInfo):
            self.inbox.post(e.HookServerInfo(hooks=frozenset(HookKind)))
            return
        if isinstance(command, c.CancelHook):
            return
        queued = self.results.get(command.hook)
        if queued:
            result = queued.pop(0)
        elif command.hook is HookKind.VERSION:
            result = e.HookSuccess(value=self.version)
        else:
            result = e.HookSuccess(message="ok")
        if command.hook is HookKind.RESTART and isinstance(result, e.HookSuccess):
            self.version = "2.0"
        self.inbox.post(e.HookFinished(call_id=command.call_id, hook=command.hook, result=result))

    def expect(self, within: float) -> None:
        self.log.append(("hooks", ("expect", within)))

    def close(self) -> None:
        self.log.append(("hooks", "close"))


@attrs.define
class Downloads:
    inbox: EventQueue
    log: Log
    fail_on: type[c.Command] | None = None
    interruptions: int = 0
    """Attempts that end on a transient error before one completes."""

    def execute(self, command: c.StartDownload | c.CancelDownload | c.DiscardDownload) -> None:
        self.log.append(("download", command))
        if self.fail_on is not None and isinstance(command, self.fail_on):
            raise OSError("the download driver has a bug")
        if isinstance(command, c.StartDownload) and self.interruptions:
            self.interruptions -= 1
            self.inbox.post(
                e.DownloadInterrupted(
                    download_id=command.download_id, bytes_done=0, reason="reset", retry_after=0.05
                )
            )
        elif isinstance(command, c.StartDownload):
            self.inbox.post(
                e.DownloadCompleted(
                    download_id=command.download_id,
                    path=f"/var/cache/upparat/upparat/{command.job_id}",
                    size=3,
                    sha256="0" * 64,
                )
            )

    def expect(self, within: float) -> None:
        self.log.append(("download", ("expect", within)))

    def close(self) -> None:
        self.log.append(("download", "close"))


@attrs.define
class Store:
    log: Log
    saved: JournalRecord | None = None
    refuse: Phase | None = None
    """Raise JournalError (disk full, read-only) when asked to write this phase."""

    def load(self) -> JournalRecord | None:
        return self.saved

    def save(self, record: JournalRecord | None) -> None:
        self.log.append(("journal", record))
        if record is not None and record.phase is self.refuse:
            raise JournalError("journal: cannot write /var/lib/upparat/journal.json: disk full")
        self.saved = record


@attrs.define
class Services:
    log: Log
    watchdog: float | None = None

    def notify(self, message: str) -> None:
        self.log.append(("notify", message))

    def watchdog_interval(self) -> float | None:
        return self.watchdog

    def job_failed(self, job_id: str, state: str, message: str) -> None:
        self.log.append(("job_failed", (job_id, state, message)))


@attrs.define
class Rig:
    runtime: Runtime
    inbox: EventQueue
    log: Log
    cloud: Cloud
    hooks: Hooks
    downloads: Downloads
    store: Store
    services: Services
    result: list[int] = attrs.field(factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: self.result.append(self.runtime.run()))
        self.thread.start()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; log: {self.log}"
            time.sleep(0.01)

    def wait_for_status(self, status: JobStatus) -> None:
        self.wait(lambda: any(s is status for s, _ in self.cloud.updates()), status.value)

    def stop(self) -> int:
        self.inbox.post(e.ShutdownRequested())
        assert self.thread is not None
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the loop did not stop"
        (status,) = self.result
        return status


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(
        settings: Settings | None = None,
        journal: JournalRecord | None = None,
        status: Callable[[Log], StatusSink] | None = None,
    ) -> Rig:
        inbox = EventQueue()
        log: Log = []
        cloud = Cloud(inbox, log)
        hooks = Hooks(inbox, log)
        downloads = Downloads(inbox, log)
        store = Store(log, journal)
        services = Services(log)
        runtime = Runtime(
            settings=settings or Settings(),
            inbox=inbox,
            mqtt=cloud,
            hooks=hooks,
            downloader=downloads,
            journal=store,
            services=services,
            status=None if status is None else status(log),
        )
        rig = Rig(runtime, inbox, log, cloud, hooks, downloads, store, services)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:  # never leave a loop thread behind, even when a test failed
        if rig.thread is not None and rig.thread.is_alive():
            rig.inbox.post(e.ShutdownRequested())
            rig.thread.join(TIMEOUT)


def index(log: Log, predicate: Callable[[str, object], bool]) -> int:
    for i, (source, item) in enumerate(log):
        if predicate(source, item):
            return i
    raise AssertionError(f"not in the log: {log}")


def is_call(hook: HookKind) -> Callable[[str, object], bool]:
    return lambda source, item: isinstance(item, c.CallHook) and item.hook is hook


# --- the loop with the real core ------------------------------------------------------------


def test_a_job_runs_through_the_loop_and_shutdown_stops_it(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)

    assert rig.cloud.updates()[-1] == (JobStatus.SUCCEEDED, "complete_ready")
    assert ("notify", "READY=1") in rig.log
    assert rig.stop() == 0
    # Exit ended the loop; the drivers were closed in order, after systemd was told.
    closing = [entry for entry in rig.log if entry[1] in ("close", "stop", "STOPPING=1")]
    assert closing == [
        ("notify", "STOPPING=1"),
        ("hooks", "close"),
        ("download", "close"),
        ("mqtt", "stop"),
    ]
    assert rig.store.saved is None


def test_persist_reaches_the_journal_before_restart_is_called(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)
    rig.stop()

    restart = index(rig.log, is_call(HookKind.RESTART))
    journal_writes = [
        (i, item) for i, (source, item) in enumerate(rig.log) if source == "journal" and i < restart
    ]
    assert journal_writes, rig.log
    last_index, last = journal_writes[-1]
    assert last == JournalRecord(job_id=JOB, phase=Phase.RESTARTING, previous_version="1.0")
    # ...and the cloud had accepted reboot_start before that (the device reads it on boot).
    reboot_start = index(
        rig.log,
        lambda _, item: (
            isinstance(item, c.UpdateJob)
            and dict(item.status_details).get("state") == "reboot_start"
        ),
    )
    assert reboot_start < last_index < restart


def test_restart_is_not_called_when_its_journal_cannot_be_written(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.store.refuse = Phase.RESTARTING
    rig.start()
    rig.wait(
        lambda: any(
            item == JournalRecord(job_id=JOB, phase=Phase.RESTARTING, previous_version="1.0")
            for _, item in rig.log
        ),
        "the journal write before Restart",
    )
    rig.wait_for_status(JobStatus.FAILED)
    rig.stop()
    assert not any(is_call(HookKind.RESTART)(*entry) for entry in rig.log)


def test_a_raising_driver_does_not_stop_the_loop(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    rig.downloads.fail_on = c.DiscardDownload  # the first command of a finished job
    rig.start()
    with caplog.at_level(logging.ERROR, logger="upparat"):
        rig.wait_for_status(JobStatus.SUCCEEDED)
        # The commands after the failing one were carried out, and the loop went on.
        rig.wait(lambda: rig.store.saved is None, "the journal to be cleared")
        rig.wait(
            lambda: sum(isinstance(item, c.RequestPendingJobs) for _, item in rig.log) >= 2,
            "the next fetch of the pending jobs",
        )
        assert rig.stop() == 0
    assert "carrying out DiscardDownload failed" in caplog.text
    assert "the download driver has a bug" in caplog.text


def test_a_raising_mqtt_driver_is_survived_too(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    rig.cloud.fail_on = c.RequestPendingJobs
    rig.start()
    with caplog.at_level(logging.ERROR, logger="upparat"):
        rig.wait(lambda: "carrying out RequestPendingJobs failed" in caplog.text, "the error")
        assert rig.stop() == 0


def test_timers_fire_through_the_loop(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(Settings(retry_interval=0.05))
    rig.hooks.results[HookKind.DOWNLOAD] = [e.HookRetryLater(), e.HookRetryLater()]
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)
    rig.stop()

    calls = [item for _, item in rig.log if isinstance(item, c.CallHook)]
    downloads = [call.context.attempt for call in calls if call.hook is HookKind.DOWNLOAD]
    assert downloads == [1, 2, 3]
    # Each retry is announced to the hook driver (the job worker stays for it).
    expected = [(source, item) for source, item in rig.log if isinstance(item, tuple)]
    assert expected == [("hooks", ("expect", 0.05))] * 2


def test_a_download_retry_is_announced_to_the_download_driver(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.downloads.interruptions = 1
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)
    rig.stop()

    starts = [item for _, item in rig.log if isinstance(item, c.StartDownload)]
    assert len(starts) == 2
    [(source, (what, within))] = [(s, i) for s, i in rig.log if isinstance(i, tuple)]
    assert (source, what) == ("download", "expect")
    assert within >= 0.05  # the backoff's delay, at least the server's Retry-After


def test_a_failed_job_is_reported_to_the_services(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.hooks.results[HookKind.INSTALL] = [e.HookFailure(reason="BAD", message="disk on fire")]
    rig.start()
    rig.wait_for_status(JobStatus.FAILED)
    rig.stop()
    assert ("job_failed", (JOB, "installation_hook_failed", "disk on fire")) in rig.log


def test_the_watchdog_is_pinged_while_idle(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.cloud.status = JobStatus.SUCCEEDED  # nothing to do
    rig.services.watchdog = 0.1
    rig.start()
    rig.wait(lambda: rig.log.count(("notify", "WATCHDOG=1")) >= 3, "three watchdog pings")
    assert rig.stop() == 0


def test_the_journal_is_read_once_at_start(make_rig: Callable[..., Rig]) -> None:
    record = JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING)
    rig = make_rig(journal=record)
    rig.cloud.status = JobStatus.IN_PROGRESS
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)
    assert rig.stop() == 0
    # The job resumed from the cloud's list, and the journal followed it to the end.
    assert rig.store.saved is None


def test_feed_runs_the_core_synchronously(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.runtime.feed(e.Started())
    rig.runtime.feed(e.ShutdownRequested())
    assert rig.log[-1] == ("journal", None)
    assert type(rig.runtime.state.stage).__name__ == "Stopped"
    # Events after Exit change nothing and reach no driver.
    before = list(rig.log)
    rig.runtime.feed(
        e.HookFinished(call_id=CallId(1), hook=HookKind.VERSION, result=e.HookSuccess())
    )
    rig.runtime.feed(
        e.DownloadCompleted(download_id=DownloadId(1), path="/x", size=1, sha256="0" * 64)
    )
    assert rig.log == before


@attrs.define
class ResultShown:
    """A status sink that logs when it writes a job's result (as StatusTracker.flush does)."""

    log: Log
    unwritten: list[JobStatus] = attrs.Factory(list)

    def saw_event(self, event: e.Event) -> None:
        pass

    def saw_command(self, command: c.Command) -> None:
        if isinstance(command, c.UpdateJob) and command.status is not JobStatus.IN_PROGRESS:
            self.unwritten.append(command.status)

    def flush(self, now: float) -> None:
        for status in self.unwritten:
            self.log.append(("status", status))
        self.unwritten.clear()


def test_the_status_file_has_a_jobs_result_before_the_cloud_is_told(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(status=ResultShown)
    rig.start()
    rig.wait_for_status(JobStatus.SUCCEEDED)
    written = index(rig.log, lambda who, what: who == "status" and what is JobStatus.SUCCEEDED)
    told = index(
        rig.log,
        lambda who, what: (
            who == "mqtt" and isinstance(what, c.UpdateJob) and what.status is JobStatus.SUCCEEDED
        ),
    )
    assert written < told
    assert rig.stop() == 0
