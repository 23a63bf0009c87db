"""Cancellation, update rejections, the link going down, and shutdown."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.core.playbook import (
    JOB,
    OTHER,
    Playbook,
    between,
    execution,
    failed,
    kinds,
    like,
    reported,
    succeeded,
    summary,
)
from upparat.core import machine
from upparat.core.commands import (
    CallHook,
    CancelDownload,
    CancelHook,
    Command,
    DescribeJob,
    DiscardDownload,
    Exit,
    Persist,
    RequestPendingJobs,
    SetTimer,
    StartDownload,
    SubscribeJobTopics,
    UpdateJob,
)
from upparat.core.events import (
    HookRetryLater,
    HookSuccess,
    HookUnavailable,
    MqttConnected,
    MqttDisconnected,
    ShutdownRequested,
    Started,
    SubscriptionsAcked,
    TimerFired,
    UpdateAccepted,
)
from upparat.core.model import (
    DownloadFailure,
    HookKind,
    JobStatus,
    JournalRecord,
    Phase,
    RejectCode,
    Settings,
    TimerKind,
)


def version_check(p: Playbook) -> None:
    p.take()


def download_check(p: Playbook) -> None:
    p.take()
    p.answer(HookSuccess(value="1.0"))


def downloading(p: Playbook) -> None:
    download_check(p)
    p.answer(HookSuccess())


def refreshing_url(p: Playbook) -> None:
    downloading(p)
    p.download_failed(DownloadFailure.URL_EXPIRED)


def installing(p: Playbook) -> None:
    downloading(p)
    p.downloaded()


def reporting_reboot(p: Playbook) -> None:
    p.auto_accept = False
    installing(p)
    p.answer(HookSuccess())


def restarting(p: Playbook) -> None:
    installing(p)
    p.answer(HookSuccess())


def awaiting_reboot(p: Playbook) -> None:
    restarting(p)
    p.answer(HookUnavailable())


def verifying_version(p: Playbook) -> None:
    p.boot()
    p.list_jobs(in_progress=[summary()])
    p.describe(execution(status=JobStatus.IN_PROGRESS, state="reboot_start"))


def verifying_ready(p: Playbook) -> None:
    verifying_version(p)
    p.answer(HookSuccess(value="2.0"))


def sleeping_hook(p: Playbook) -> None:
    installing(p)
    p.answer(HookRetryLater())


STAGES: dict[str, tuple[Callable[[Playbook], None], type[machine.Stage]]] = {
    "version check": (version_check, machine.CheckingVersion),
    "download check": (download_check, machine.CheckingDownload),
    "downloading": (downloading, machine.Downloading),
    "refreshing url": (refreshing_url, machine.RefreshingUrl),
    "installing": (installing, machine.Installing),
    "hook retry wait": (sleeping_hook, machine.Installing),
    "reporting reboot": (reporting_reboot, machine.ReportingReboot),
    "restarting": (restarting, machine.Restarting),
    "awaiting reboot": (awaiting_reboot, machine.AwaitingReboot),
    "verifying version": (verifying_version, machine.VerifyingVersion),
    "verifying ready": (verifying_ready, machine.VerifyingReady),
}


def in_stage(name: str) -> Playbook:
    arrange, stage = STAGES[name]
    p = Playbook(auto_accept=True)
    arrange(p)
    assert isinstance(p.stage, stage)
    p.auto_accept = True
    return p


def running_work(p: Playbook) -> list[Command]:
    """What must be cancelled: the call or download started last, unless it ended."""
    stage = p.stage
    if isinstance(stage, machine.Downloading):
        return [CancelDownload(download_id=stage.download_id, discard=True)]
    if isinstance(stage, machine.HookStage) and isinstance(stage.call.pending, machine.Running):
        return [CancelHook(call_id=stage.call.pending.call_id)]
    return []


@pytest.mark.parametrize("name", list(STAGES))
def test_a_cancelled_job_stops_at_once_in_every_phase(name: str) -> None:
    p = in_stage(name)
    expected_cancel = running_work(p)
    out = p.notify(queued=[summary(OTHER)])
    cleanup = (
        []
        if expected_cancel and isinstance(expected_cancel[0], CancelDownload)
        else [DiscardDownload(job_id=JOB)]
    )
    assert out[: len(expected_cancel) + len(cleanup) + 1] == [
        *expected_cancel,
        *cleanup,
        Persist(record=None),
    ]
    if p.state.outbox.head is not None:
        # reboot_start is still in flight: the fetch waits for its answer.
        assert out == [*expected_cancel, *cleanup, Persist(record=None)]
        out = p.accept()
    else:
        out = out[len(expected_cancel) + len(cleanup) + 1 :]
    assert out == [like(RequestPendingJobs), like(SetTimer)]
    assert isinstance(p.stage, machine.FetchingJobs)


@pytest.mark.parametrize("name", list(STAGES))
def test_a_notification_still_listing_the_job_changes_nothing(name: str) -> None:
    p = in_stage(name)
    before = p.stage
    assert p.notify(in_progress=[summary()], queued=[summary(OTHER)]) == []
    assert p.stage == before


@pytest.mark.parametrize(
    "code", [RejectCode.TERMINAL_STATE_REACHED, RejectCode.INVALID_STATE_TRANSITION]
)
def test_an_update_rejected_as_final_stops_the_job(code: RejectCode) -> None:
    p = Playbook()
    downloading(p)
    download = p.last(StartDownload).download_id
    assert p.reject(code) == [
        CancelDownload(download_id=download, discard=True),
        Persist(record=None),
        like(RequestPendingJobs),
        like(SetTimer),
    ]


def test_an_update_rejected_otherwise_fetches_again_keeping_the_partial_file() -> None:
    p = Playbook()
    downloading(p)
    download = p.last(StartDownload).download_id
    assert p.reject(RejectCode.INVALID_REQUEST) == [
        CancelDownload(download_id=download, discard=False),
        like(RequestPendingJobs),
        like(SetTimer),
    ]
    assert p.state.journal == JournalRecord(
        job_id=JOB, phase=Phase.DOWNLOADING, previous_version="1.0"
    )


def throttled_delays(seed: int) -> list[float]:
    p = Playbook(Settings(seed=seed))
    downloading(p)
    delays = []
    for _ in range(8):
        p.reject(RejectCode.REQUEST_THROTTLED)
        delays.append(p.last(SetTimer).delay)
        assert p.fire(TimerKind.UPDATE_RETRY) == [reported("download_start"), like(SetTimer)]
    return delays


def test_a_throttled_update_is_sent_again_with_backoff() -> None:
    # Doubling from 2 s up to 60 s, of which up to half is jitter (issue 15: one jittered
    # Backoff for cloud requests), so never less than 1 s: no hot loop.
    delays = throttled_delays(seed=1)
    windows = [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (30, 60), (30, 60), (30, 60)]
    assert delays == [between(low, high) for low, high in windows]
    # The jitter comes from the seed: the same seed, the same delays; another, others.
    assert throttled_delays(seed=1) == delays
    assert throttled_delays(seed=2) != delays


def test_a_terminal_update_is_sent_until_accepted_then_jobs_are_fetched() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))
    p.reject(RejectCode.INTERNAL_ERROR)
    assert p.fire(TimerKind.UPDATE_RETRY) == [
        succeeded("version_already_installed"),
        like(SetTimer),
    ]
    # No reply at all within request_timeout: sent again.
    assert p.fire(TimerKind.UPDATE_RETRY) == [
        succeeded("version_already_installed"),
        like(SetTimer),
    ]
    first = p.all(UpdateJob)[0]
    # A late reply to an earlier send counts.
    late = UpdateAccepted(job_id=first.job_id, client_token=first.client_token)
    assert p.feed(late) == [like(RequestPendingJobs), like(SetTimer)]


def test_a_reconnect_checks_that_the_job_is_still_pending() -> None:
    p = Playbook(auto_accept=True)
    installing(p)
    call = p.last(CallHook)
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    assert kinds(p.feed(SubscriptionsAcked())) == [RequestPendingJobs, SetTimer]
    assert p.list_jobs(in_progress=[summary()]) == []
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    p.feed(SubscriptionsAcked())
    assert p.list_jobs(queued=[summary(OTHER)]) == [
        CancelHook(call_id=call.call_id),
        DiscardDownload(job_id=JOB),
        Persist(record=None),
        like(RequestPendingJobs),
        like(SetTimer),
    ]


def test_while_disconnected_updates_wait_and_go_out_in_order_after_the_suback() -> None:
    p = Playbook()
    p.take()
    p.feed(MqttDisconnected(reason="x"))
    assert p.answer(HookSuccess(value="2.0")) == [
        DiscardDownload(job_id=JOB),
        Persist(record=None),
    ]
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert p.feed(SubscriptionsAcked()) == [
        succeeded("version_already_installed"),
        like(SetTimer),
    ]
    # The fetch waits until the final report was accepted.
    assert p.accept() == [like(RequestPendingJobs), like(SetTimer)]


def test_an_update_in_flight_when_the_link_drops_is_sent_again() -> None:
    p = Playbook()
    downloading(p)
    first = p.last(UpdateJob)
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    out = p.feed(SubscriptionsAcked())
    assert out[0] == reported("download_start")
    assert p.last(UpdateJob).client_token != first.client_token


def test_shutdown_cancels_work_keeps_the_download_persists_and_exits() -> None:
    p = Playbook(auto_accept=True)
    downloading(p)
    download = p.last(StartDownload).download_id
    assert p.feed(ShutdownRequested()) == [
        CancelDownload(download_id=download, discard=False),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING, previous_version="1.0")),
        Exit(),
    ]
    assert isinstance(p.stage, machine.Stopped)
    assert p.feed(Started()) == []


def test_shutdown_cancels_a_running_hook() -> None:
    p = Playbook(auto_accept=True)
    installing(p)
    call = p.last(CallHook).call_id
    out = p.feed(ShutdownRequested())
    assert out == [
        CancelHook(call_id=call),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.INSTALLING, previous_version="1.0")),
        Exit(),
    ]


def test_shutdown_waits_for_a_final_report_for_a_while() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))
    out = p.feed(ShutdownRequested())
    assert out == [Persist(record=None), like(SetTimer, timer=TimerKind.SHUTDOWN)]
    assert p.accept() == [Exit()]


def test_shutdown_gives_up_waiting_when_the_timer_fires() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))
    p.feed(MqttDisconnected(reason="x"))
    p.feed(ShutdownRequested())
    assert p.fire(TimerKind.SHUTDOWN) == [Exit()]


def test_a_second_shutdown_request_exits_at_once() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))
    p.feed(ShutdownRequested())
    assert p.feed(ShutdownRequested()) == [Exit()]


def test_shutdown_before_started_does_not_erase_the_journal() -> None:
    p = Playbook()
    assert p.feed(ShutdownRequested()) == [Exit()]


def test_a_failed_job_is_reported_even_if_the_link_was_down_meanwhile() -> None:
    p = Playbook()
    downloading(p)
    p.accept()
    p.feed(MqttDisconnected(reason="x"))
    p.download_failed(DownloadFailure.IO_ERROR, "read-only file system")
    p.feed(MqttConnected())
    assert p.feed(SubscriptionsAcked())[0] == failed("download_failed")


def test_timers_of_a_cancelled_job_are_ignored() -> None:
    p = Playbook(auto_accept=True)
    sleeping_hook(p)
    timer = p.last(SetTimer)
    assert timer.timer is TimerKind.HOOK_RETRY
    p.notify()
    assert p.feed(TimerFired(timer=TimerKind.HOOK_RETRY, token=timer.token)) == []
    assert p.all(CallHook)[-1].hook is HookKind.INSTALL


def test_a_describe_after_an_expired_url_that_shows_the_job_gone_stops() -> None:
    p = Playbook(auto_accept=True)
    refreshing_url(p)
    assert p.last(DescribeJob).job_id == JOB
    out = p.describe(execution(status=JobStatus.CANCELED))
    assert out == [
        DiscardDownload(job_id=JOB),
        Persist(record=None),
        like(RequestPendingJobs),
        like(SetTimer),
    ]
