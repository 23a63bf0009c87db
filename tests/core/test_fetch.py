"""Start, reconnect, fetching and selecting jobs, describing the selected one."""

from __future__ import annotations

import attrs

from tests.core.playbook import (
    FOREIGN,
    JOB,
    OTHER,
    Playbook,
    between,
    execution,
    failed,
    kinds,
    like,
    summary,
)
from upparat.core import machine
from upparat.core.commands import (
    AskHookInfo,
    CallHook,
    ConnectMqtt,
    DescribeJob,
    DiscardDownload,
    Persist,
    RequestPendingJobs,
    SetTimer,
    SignalReady,
    SubscribeJobTopics,
    UpdateJob,
)
from upparat.core.events import (
    HookSuccess,
    JobDescribed,
    JobsChanged,
    MqttConnected,
    MqttDisconnected,
    PendingJobsListed,
    ReplyUnusable,
    RequestKind,
    Started,
    SubscriptionsAcked,
    TimerFired,
)
from upparat.core.model import (
    ClientToken,
    HookKind,
    JobId,
    JobStatus,
    JournalRecord,
    LogLevel,
    Phase,
    RejectCode,
    Settings,
    SkippedEntry,
    TimerKind,
)


def test_start_subscribes_then_requests_pending_jobs_once_acknowledged() -> None:
    p = Playbook()
    assert p.feed(Started()) == [AskHookInfo(), ConnectMqtt()]
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert p.feed(SubscriptionsAcked()) == [
        like(RequestPendingJobs),
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=30.0),
    ]


def test_connection_before_started_waits_for_the_journal() -> None:
    p = Playbook()
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert p.feed(SubscriptionsAcked()) == []
    assert kinds(p.feed(Started())) == [AskHookInfo, RequestPendingJobs, SetTimer]


def test_nothing_is_published_before_the_subscription_is_acknowledged() -> None:
    p = Playbook()
    p.feed(Started())
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert p.feed(TimerFired(timer=TimerKind.REQUEST_RETRY, token=1)) == []


def test_every_reconnect_subscribes_and_fetches_again_with_a_new_token() -> None:
    p = Playbook()
    p.boot()
    first = p.last(RequestPendingJobs).client_token
    assert p.feed(MqttDisconnected(reason="keepalive")) == [
        like(SetTimer, timer=TimerKind.RECONNECT)
    ]
    assert p.fire(TimerKind.RECONNECT) == [ConnectMqtt()]
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert kinds(p.feed(SubscriptionsAcked())) == [RequestPendingJobs, SetTimer]
    second = p.last(RequestPendingJobs).client_token
    assert second != first
    # The reply to the request of the old session is stale now.
    stale = PendingJobsListed(in_progress=(), queued=(summary(),), client_token=first)
    assert p.feed(stale) == []
    assert isinstance(p.stage, machine.FetchingJobs)


def test_a_duplicate_suback_is_ignored() -> None:
    p = Playbook()
    p.boot()
    assert p.feed(SubscriptionsAcked()) == []


def test_the_first_completed_fetch_signals_ready_once() -> None:
    p = Playbook()
    p.boot()
    assert p.list_jobs() == [SignalReady()]
    assert isinstance(p.stage, machine.Idle)
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    p.feed(SubscriptionsAcked())
    assert p.list_jobs() == []


def test_no_pending_job_waits_for_notifications() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs()
    assert isinstance(p.stage, machine.Idle)
    assert p.notify(queued=[summary(FOREIGN)]) == []
    assert p.notify(queued=[summary(JOB)]) == [
        like(DescribeJob, job_id=JOB),
        like(SetTimer, timer=TimerKind.REQUEST_RETRY),
    ]


def test_reconnect_while_idle_fetches_again() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs()
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    assert kinds(p.feed(SubscriptionsAcked())) == [RequestPendingJobs, SetTimer]


def test_jobs_without_the_prefix_are_never_touched() -> None:
    p = Playbook()
    p.boot()
    out = p.list_jobs(in_progress=[summary(FOREIGN)], queued=[summary(JobId("x_upparat_3"))])
    assert out == [SignalReady()]
    assert isinstance(p.stage, machine.Idle)


def test_the_prefix_comes_from_the_settings() -> None:
    p = Playbook(Settings(job_prefix="fw-"))
    p.boot()
    p.list_jobs(queued=[summary(JOB), summary(JobId("fw-7"))])
    assert p.last(DescribeJob).job_id == "fw-7"


def test_an_in_progress_job_is_selected_before_queued_ones() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(in_progress=[summary(OTHER, 500)], queued=[summary(JOB, 1)])
    assert p.last(DescribeJob).job_id == OTHER


def test_the_oldest_queued_job_is_selected() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary(OTHER, 300), summary(JOB, 200), summary(FOREIGN, 100)])
    assert p.last(DescribeJob).job_id == JOB


def test_more_than_one_job_in_progress_fails_all_of_them_and_starts_over() -> None:
    p = Playbook()
    p.boot()
    out = p.list_jobs(in_progress=[summary(JOB), summary(FOREIGN), summary(OTHER)])
    assert out == [
        SignalReady(),
        failed("error_multiple_in_progress", JOB),
        like(SetTimer, timer=TimerKind.UPDATE_RETRY),
    ]
    # Updates go one at a time; the fetch waits until the cloud took them.
    assert p.accept() == [failed("error_multiple_in_progress", OTHER), like(SetTimer)]
    assert p.accept() == [like(RequestPendingJobs), like(SetTimer)]
    assert FOREIGN not in {u.job_id for u in p.all(UpdateJob)}
    message = dict(p.all(UpdateJob)[0].status_details)["message"]
    assert "upparat_1, upparat_2" in message


def test_describe_rejected_starts_over() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    # Not at once: a service that keeps refusing must not be asked at network speed.
    assert p.reject(RejectCode.RESOURCE_NOT_FOUND, RequestKind.DESCRIBE) == [
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=30.0)
    ]
    assert p.fire(TimerKind.REQUEST_RETRY) == [
        like(RequestPendingJobs),
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=30.0),
    ]


def test_describe_throttled_is_sent_again_after_a_backoff() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    first = p.last(DescribeJob)
    assert p.reject(RejectCode.REQUEST_THROTTLED, RequestKind.DESCRIBE) == [
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=between(1.0, 2.0))
    ]
    assert p.fire(TimerKind.REQUEST_RETRY) == [
        like(DescribeJob, job_id=JOB),
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=30.0),
    ]
    assert p.last(DescribeJob).client_token != first.client_token
    assert p.reject(RejectCode.REQUEST_THROTTLED, RequestKind.DESCRIBE) == [
        like(SetTimer, delay=between(2.0, 4.0))
    ]


def test_get_pending_throttled_is_sent_again_after_a_backoff() -> None:
    p = Playbook()
    p.boot()
    assert p.reject(RejectCode.INTERNAL_ERROR, RequestKind.GET_PENDING) == [
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=between(1.0, 2.0))
    ]
    assert kinds(p.fire(TimerKind.REQUEST_RETRY)) == [RequestPendingJobs, SetTimer]


def test_a_request_without_a_reply_is_sent_again() -> None:
    p = Playbook()
    p.boot()
    first = p.last(RequestPendingJobs)
    assert kinds(p.fire(TimerKind.REQUEST_RETRY)) == [RequestPendingJobs, SetTimer]
    assert p.last(RequestPendingJobs) != first
    p.list_jobs(queued=[summary()])
    describe = p.last(DescribeJob)
    assert p.fire(TimerKind.REQUEST_RETRY) == [like(DescribeJob, job_id=JOB), like(SetTimer)]
    assert p.last(DescribeJob) != describe


def test_a_timer_with_a_stale_token_is_ignored() -> None:
    p = Playbook()
    p.boot()
    timer = p.last(SetTimer)
    p.fire(TimerKind.REQUEST_RETRY)
    assert p.feed(TimerFired(timer=TimerKind.REQUEST_RETRY, token=timer.token)) == []
    assert p.feed(TimerFired(timer=TimerKind.HOOK_RETRY, token=timer.token)) == []


def test_replies_are_correlated_by_client_token() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    token = p.last(DescribeJob).client_token
    # A second jobs list and a reply with a foreign token change nothing.
    second = PendingJobsListed(in_progress=(), queued=(summary(OTHER),), client_token=token)
    assert p.feed(second) == []
    wrong = JobDescribed(execution=execution(), client_token=ClientToken("someone-else"))
    assert p.feed(wrong) == []
    assert isinstance(p.stage, machine.Describing)


def test_a_describe_reply_for_another_job_is_ignored() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    assert p.describe(execution(OTHER)) == []
    assert isinstance(p.stage, machine.Describing)
    assert p.stage.job_id == JOB


def test_a_notification_while_describing_changes_nothing_if_the_job_is_listed() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    assert p.notify(queued=[summary(OTHER), summary()]) == []
    assert kinds(p.notify(queued=[summary(OTHER)])) == [RequestPendingJobs, SetTimer]


def test_a_notification_listing_our_jobs_answers_a_fetch() -> None:
    p = Playbook()
    p.boot()
    first = p.last(RequestPendingJobs).client_token
    assert p.notify(queued=[summary(FOREIGN)]) == []  # other services' churn: keep waiting
    assert p.notify(queued=[summary()]) == [
        SignalReady(),
        like(DescribeJob, job_id=JOB),
        like(SetTimer),
    ]
    stale = PendingJobsListed(in_progress=(), queued=(), client_token=first)
    assert p.feed(stale) == []
    assert isinstance(p.stage, machine.Describing)


def test_a_notification_does_not_preempt_waiting_for_the_last_report() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))  # SUCCEEDED sent, not yet accepted
    assert p.notify(in_progress=[summary()]) == []
    assert isinstance(p.stage, machine.FetchingJobs)


def test_a_described_job_that_is_no_longer_pending_starts_over() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    assert kinds(p.describe(execution(status=JobStatus.CANCELED))) == [
        RequestPendingJobs,
        SetTimer,
    ]


def test_a_journal_of_a_job_no_longer_pending_is_cleared() -> None:
    p = Playbook()
    p.boot(JournalRecord(job_id=OTHER, phase=Phase.DOWNLOADING))
    out = p.list_jobs(queued=[summary()])
    # It ended while the daemon was down: forget it and its partial download.
    assert Persist(record=None) in out
    assert DiscardDownload(job_id=OTHER) in out
    assert p.state.journal is None


def test_a_journal_of_a_pending_job_is_kept() -> None:
    record = JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING)
    p = Playbook()
    p.boot(record)
    out = p.list_jobs(in_progress=[summary()])
    assert Persist(record=None) not in out
    assert p.state.journal == record


def test_a_queued_job_starts_with_the_version_hook() -> None:
    p = Playbook()
    out = p.take()
    assert out == [
        like(CallHook, hook=HookKind.VERSION),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.CHECKING_VERSION)),
    ]


# --- a bad entry in a list, an unusable answer ------------------------------------------


def bad(
    job_id: JobId | None = None, reason: str = "jobs.QUEUED entry: jobId is missing"
) -> SkippedEntry:
    return SkippedEntry(job_id=job_id, reason=reason)


def test_a_bad_entry_next_to_valid_jobs_is_skipped_and_the_valid_job_runs() -> None:
    p = Playbook()
    p.boot()
    token = p.last(RequestPendingJobs).client_token
    listed = PendingJobsListed(
        in_progress=(), queued=(summary(),), client_token=token, skipped=(bad(),)
    )
    assert kinds(p.feed(listed)) == [SignalReady, DescribeJob, SetTimer]
    (warning,) = [log for log in p.logs if log.level is LogLevel.WARNING]
    assert "jobId is missing" in warning.message


def test_a_bad_entry_is_logged_once_not_with_every_notification() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs()
    for _ in range(5):
        p.feed(JobsChanged(in_progress=(), queued=(), skipped=(bad(),)))
    warnings = [log for log in p.logs if log.level is LogLevel.WARNING]
    assert len(warnings) == 1
    # Another broken entry is news.
    p.feed(JobsChanged(in_progress=(), queued=(), skipped=(bad(reason="other"),)))
    assert len([log for log in p.logs if log.level is LogLevel.WARNING]) == 2


def test_the_remembered_reasons_are_bounded() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs()
    for i in range(machine.SKIPPED_SEEN_KEPT * 3):
        p.feed(JobsChanged(in_progress=(), queued=(), skipped=(bad(reason=f"r{i}"),)))
    assert len(p.state.skipped_seen) == machine.SKIPPED_SEEN_KEPT


def test_a_running_job_whose_entry_broke_is_not_taken_for_ended() -> None:
    p = Playbook()
    p.take()
    assert isinstance(p.stage, machine.CheckingVersion)
    # The job's own entry no longer parses: it is still listed, so nothing is abandoned.
    out = p.feed(JobsChanged(in_progress=(), queued=(), skipped=(bad(JOB),)))
    assert out == []
    assert isinstance(p.stage, machine.CheckingVersion)
    # Without the entry at all, it ended.
    assert kinds(p.notify()) != []


def test_a_journal_whose_job_entry_broke_is_kept() -> None:
    record = JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING)
    p = Playbook()
    p.boot(record)
    token = p.last(RequestPendingJobs).client_token
    p.feed(PendingJobsListed(in_progress=(), queued=(), client_token=token, skipped=(bad(JOB),)))
    assert Persist(record=None) not in p.history
    assert p.state.journal == record


def test_an_unusable_describe_answer_is_asked_again_after_a_short_backoff() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(queued=[summary()])
    first = p.last(DescribeJob)
    unusable = ReplyUnusable(
        request=RequestKind.DESCRIBE,
        job_id=JOB,
        client_token=first.client_token,
        reason="execution.jobId 'upparat_2' differs from the job id",
    )
    assert p.feed(unusable) == [
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=between(1.0, 2.0))
    ]
    assert "differs from the job id" in p.logs[-1].message
    assert p.fire(TimerKind.REQUEST_RETRY) == [
        like(DescribeJob, job_id=JOB),
        like(SetTimer, timer=TimerKind.REQUEST_RETRY, delay=30.0),
    ]
    second = p.last(DescribeJob)
    assert second.client_token != first.client_token
    again = attrs.evolve(unusable, client_token=second.client_token)
    assert p.feed(again) == [like(SetTimer, delay=between(2.0, 4.0))]
    # The first request's token is stale now.
    assert p.feed(unusable) == []


def test_an_unusable_answer_to_nothing_we_asked_is_ignored() -> None:
    p = Playbook()
    p.boot()
    stray = ReplyUnusable(
        request=RequestKind.DESCRIBE, job_id=JOB, client_token=ClientToken("x"), reason="r"
    )
    assert p.feed(stray) == []
    assert isinstance(p.stage, machine.FetchingJobs)


def test_client_tokens_carry_the_processes_nonce() -> None:
    """The daemon draws a random nonce per process: tokens another client cannot guess."""
    p = Playbook(Settings(token_nonce="9f3ac0d1e2b4a567"))
    p.boot()
    first = p.last(RequestPendingJobs).client_token
    assert first.startswith("upparat-9f3ac0d1e2b4a567-")
    p.fire(TimerKind.REQUEST_RETRY)
    assert p.last(RequestPendingJobs).client_token not in (first, "")
    assert p.last(RequestPendingJobs).client_token.startswith("upparat-9f3ac0d1e2b4a567-")
