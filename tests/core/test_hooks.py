"""How every hook answer is handled: retry later, failure, unavailable, deadline, absent."""

from __future__ import annotations

import pytest

from tests.core.playbook import (
    JOB,
    Playbook,
    execution,
    failed,
    like,
    summary,
)
from upparat.core import machine
from upparat.core.commands import CallHook, Persist, SetTimer, UpdateJob
from upparat.core.events import (
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookRetryLater,
    HookSuccess,
    HookUnavailable,
)
from upparat.core.model import (
    CallId,
    HookKind,
    JobStatus,
    LogLevel,
    Phase,
    Settings,
    TimerKind,
)


def at_hook(hook: HookKind, settings: Settings | None = None) -> Playbook:
    """A playbook whose last command is a first call of `hook`."""
    p = Playbook(settings, auto_accept=True)
    if hook is HookKind.VERSION:
        p.take()
    elif hook is HookKind.READY:
        p.boot()
        p.list_jobs(in_progress=[summary()])
        p.describe(execution(status=JobStatus.IN_PROGRESS, state="reboot_start"))
        p.answer(HookSuccess(value="2.0"))
    else:
        p.take()
        p.answer(HookSuccess(value="1.0"))
        if hook is not HookKind.DOWNLOAD:
            p.answer(HookSuccess())
            p.downloaded()
            if hook is HookKind.RESTART:
                p.answer(HookSuccess())
    assert p.last(CallHook).hook is hook
    return p


ALL_HOOKS = list(HookKind)


@pytest.mark.parametrize("hook", ALL_HOOKS)
def test_retry_later_calls_again_after_the_retry_interval(hook: HookKind) -> None:
    p = at_hook(hook, Settings(retry_interval=5))
    first = p.last(CallHook)
    assert first.context.attempt == 1
    assert p.answer(HookRetryLater(message="battery low")) == [
        like(SetTimer, timer=TimerKind.HOOK_RETRY, delay=5)
    ]
    out = p.fire(TimerKind.HOOK_RETRY)
    again = p.last(CallHook)
    assert again.hook is hook
    assert again.call_id != first.call_id
    assert again.context.attempt == 2
    assert again.context.elapsed == 5
    if hook is HookKind.RESTART:
        # The journal is written before every call that may end the process.
        assert isinstance(out[0], Persist)
        assert out[0].record is not None
        assert out[0].record.phase is Phase.RESTARTING
    assert out[-1] == again


def test_retry_after_is_honoured_and_capped() -> None:
    p = at_hook(HookKind.DOWNLOAD, Settings(retry_interval=2))
    assert p.answer(HookRetryLater(retry_after=7)) == [like(SetTimer, delay=7)]
    p.fire(TimerKind.HOOK_RETRY)
    assert p.answer(HookRetryLater(retry_after=1000)) == [like(SetTimer, delay=20)]


@pytest.mark.parametrize(
    ("hook", "state"),
    [
        (HookKind.VERSION, "version_hook_failed"),
        (HookKind.DOWNLOAD, "download_hook_failed"),
        (HookKind.INSTALL, "installation_hook_failed"),
        (HookKind.RESTART, "restart_hook_failed"),
        (HookKind.READY, "ready_hook_failed"),
    ],
)
def test_retries_exhausted_fail_with_the_hooks_state(hook: HookKind, state: str) -> None:
    p = at_hook(hook, Settings(retry_interval=3, max_retries=2))
    p.answer(HookRetryLater())
    p.fire(TimerKind.HOOK_RETRY)
    p.answer(HookRetryLater())
    p.fire(TimerKind.HOOK_RETRY)
    assert p.last(CallHook).context.attempt == 3
    out = p.answer(HookRetryLater(message="not yet"))
    assert failed(state) in out
    message = dict(p.last(UpdateJob).status_details)["message"]
    assert "after 3 attempts in 6 s" in message
    assert "not yet" in message


@pytest.mark.parametrize(
    ("hook", "state"),
    [
        (HookKind.VERSION, "version_hook_failed"),
        (HookKind.DOWNLOAD, "download_hook_failed"),
        (HookKind.INSTALL, "installation_hook_failed"),
        (HookKind.RESTART, "restart_hook_failed"),
        (HookKind.READY, "ready_hook_failed"),
    ],
)
def test_failure_fails_with_the_hooks_message(hook: HookKind, state: str) -> None:
    p = at_hook(hook)
    out = p.answer(HookFailure(reason="BATTERY_LOW", message="battery at 3 %"))
    assert failed(state, message="battery at 3 %", reason="BATTERY_LOW") in out


def test_a_failures_detail_reaches_the_log_not_the_cloud() -> None:
    p = at_hook(HookKind.INSTALL)
    detail = "rauc: error: bundle signature check failed"
    out = p.answer(HookFailure(reason="RAUC_FAILED", message="rauc failed", detail=detail))
    assert failed("installation_hook_failed", message="rauc failed", reason="RAUC_FAILED") in out
    logged = [log for log in p.logs if detail in log.message]
    assert [(log.level, log.job_id) for log in logged] == [(LogLevel.ERROR, JOB)]
    assert "the install hook failed" in logged[0].message
    assert not any(detail in str(c) for c in out if isinstance(c, UpdateJob))


def test_no_detail_no_extra_line() -> None:
    p = at_hook(HookKind.INSTALL)
    p.answer(HookFailure(reason="RAUC_FAILED", message="rauc failed"))
    assert not any("hook failed:" in log.message for log in p.logs)


def test_a_failure_without_a_message_reports_the_reason() -> None:
    p = at_hook(HookKind.VERSION)
    assert failed("version_hook_failed", message="OUTCOME_UNSPECIFIED") in p.answer(
        HookFailure(reason="OUTCOME_UNSPECIFIED")
    )


@pytest.mark.parametrize(
    ("hook", "state"),
    [
        (HookKind.VERSION, "version_hook_timed_out"),
        (HookKind.DOWNLOAD, "download_hook_timed_out"),
        (HookKind.INSTALL, "installation_hook_timed_out"),
        (HookKind.RESTART, "restart_hook_timed_out"),
        (HookKind.READY, "ready_hook_timed_out"),
    ],
)
def test_deadline_exceeded_fails_timed_out(hook: HookKind, state: str) -> None:
    p = at_hook(hook, Settings(hook_timeout=100, install_timeout=900))
    timeout = 900 if hook is HookKind.INSTALL else 100
    assert p.last(CallHook).timeout == timeout
    assert failed(state) in p.answer(HookDeadlineExceeded())
    assert f"within {timeout} s" in dict(p.last(UpdateJob).status_details)["message"]


@pytest.mark.parametrize("hook", [h for h in ALL_HOOKS if h is not HookKind.RESTART])
def test_an_unreachable_hook_server_is_retried_with_backoff(hook: HookKind) -> None:
    p = at_hook(hook, Settings(hook_unavailable_timeout=200, max_retries=0))
    delays = []
    for _ in range(8):
        p.answer(HookUnavailable(detail="connection refused"))
        delays.append(p.last(SetTimer).delay)
        p.fire(TimerKind.HOOK_RETRY)
        # Unavailable does not spend a retry (max_retries is 0 here).
        assert p.last(CallHook).context.attempt == 1
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert p.now == 183  # not yet 200 s unreachable: still retrying
    p.tick(20)
    out = p.answer(HookUnavailable(detail="connection refused"))
    assert failed("hook_server_unavailable") in out


def test_an_answer_ends_an_outage() -> None:
    p = at_hook(HookKind.DOWNLOAD)
    p.answer(HookUnavailable())
    p.fire(TimerKind.HOOK_RETRY)
    p.answer(HookUnavailable())
    assert p.last(SetTimer).delay == 2
    p.fire(TimerKind.HOOK_RETRY)
    p.answer(HookRetryLater())
    p.fire(TimerKind.HOOK_RETRY)
    p.answer(HookUnavailable())
    assert p.last(SetTimer).delay == 1


def test_results_of_unknown_or_cancelled_calls_are_ignored() -> None:
    p = at_hook(HookKind.VERSION)
    call = p.last(CallHook)
    before = p.state
    stranger = HookFinished(call_id=CallId(999), hook=HookKind.VERSION, result=HookSuccess())
    assert p.feed(stranger) == []
    wrong_hook = HookFinished(call_id=call.call_id, hook=HookKind.READY, result=HookSuccess())
    assert p.feed(wrong_hook) == []
    assert p.state == before
    # While waiting for the retry timer, the old call's late answer is ignored too.
    p.answer(HookRetryLater())
    late = HookFinished(call_id=call.call_id, hook=HookKind.VERSION, result=HookSuccess())
    assert p.feed(late) == []
    assert isinstance(p.stage, machine.CheckingVersion)


def test_the_hook_context_carries_job_meta_and_force() -> None:
    p = at_hook(HookKind.VERSION)
    context = p.last(CallHook).context
    assert (context.job_id, context.meta, context.force) == (JOB, "m", False)


@pytest.mark.parametrize("hook", ALL_HOOKS)
def test_only_a_fresh_jobs_first_version_and_download_checks_say_a_download_follows(
    hook: HookKind,
) -> None:
    p = at_hook(hook, Settings(retry_interval=5))
    follows = hook in (HookKind.VERSION, HookKind.DOWNLOAD)
    assert p.last(CallHook).download_follows is follows
    # Not on a retry: a download hook saying "not yet" for hours gets nothing ready.
    p.answer(HookRetryLater())
    p.fire(TimerKind.HOOK_RETRY)
    assert p.last(CallHook).download_follows is False


def test_the_version_checks_after_a_restart_or_an_interrupted_install_say_no_download() -> None:
    p = Playbook(auto_accept=True)
    p.boot()
    p.list_jobs(in_progress=[summary()])
    p.describe(execution(status=JobStatus.IN_PROGRESS, state="reboot_start"))
    assert like(CallHook, hook=HookKind.VERSION, download_follows=False) in p.history

    p = Playbook(auto_accept=True)
    p.boot()
    p.list_jobs(in_progress=[summary()])
    p.describe(execution(status=JobStatus.IN_PROGRESS, state="installation_progress"))
    assert like(CallHook, hook=HookKind.VERSION, download_follows=False) in p.history
