"""The `$package` shadow report (upparat.core.package) stepped through the whole core.

What runs is learnt from the version hook (asked once while idle, or from a job's own
check and verdict), the shadow is read once, and an update goes out only when the two
differ; shadow traffic never holds a job back.
"""

from __future__ import annotations

from tests.core.playbook import (
    JOB,
    Playbook,
    between,
    execution,
    failed,
    like,
    succeeded,
    summary,
)
from tests.core.test_job import at_restart
from upparat.core import machine, package
from upparat.core.commands import (
    CallHook,
    CancelHook,
    Command,
    DescribeJob,
    GetPackageShadow,
    RequestPendingJobs,
    SetTimer,
    SignalReady,
    UpdatePackageShadow,
)
from upparat.core.events import (
    HookFinished,
    HookServerInfo,
    HookSuccess,
    HookUnavailable,
    MqttConnected,
    MqttDisconnected,
    PackageReportRefused,
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    ShadowRejected,
    SubscriptionsAcked,
)
from upparat.core.model import (
    HookKind,
    LogLevel,
    ReportedPackage,
    Settings,
    ShadowOperation,
    ShadowRejectReason,
    TimerKind,
)

SETTINGS = Settings(package_name="firmware")
OLD, NEW = ReportedPackage(version="1.0"), ReportedPackage(version="2.0")


def shadow_commands(commands: list[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, GetPackageShadow | UpdatePackageShadow)]


def read(p: Playbook, held: ReportedPackage | None, version: int = 4) -> list[Command]:
    token = p.last(GetPackageShadow).client_token
    if held is None:
        return p.feed(PackageShadowMissing(client_token=token))
    return p.feed(
        PackageShadowRead(client_token=token, shadow_version=version, reported=held, timestamp=1)
    )


def updated(p: Playbook, version: int = 5) -> list[Command]:
    update = p.last(UpdatePackageShadow)
    return p.feed(
        PackageShadowUpdated(
            client_token=update.client_token,
            shadow_version=version,
            reported=update.running,
            timestamp=2,
        )
    )


def rejected(p: Playbook, reason: ShadowRejectReason, operation: ShadowOperation) -> list[Command]:
    if operation is ShadowOperation.UPDATE:
        token = p.last(UpdatePackageShadow).client_token
    else:
        token = p.last(GetPackageShadow).client_token
    return p.feed(
        ShadowRejected(
            client_token=token,
            operation=operation,
            reason=reason,
            code=reason.value,
            message="no",
        )
    )


def probe(p: Playbook) -> CallHook:
    call = p.last(CallHook)
    assert call.hook is HookKind.VERSION
    assert call.context.job_id == "", "a call for no job"
    return call


def idle(p: Playbook, held: ReportedPackage | None) -> list[Command]:
    """Boot, read the shadow, find no job: the version hook is asked for the report."""
    out = p.boot()
    assert shadow_commands(out) == [like(GetPackageShadow)]
    read(p, held)
    out = p.list_jobs()
    assert isinstance(p.stage, machine.Idle)
    assert out == [SignalReady(), like(CallHook, hook=HookKind.VERSION)]
    probe(p)
    return out


def test_at_start_the_running_version_is_reported_into_a_missing_shadow() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    out = p.answer(HookSuccess(value="1.0"))
    assert out == [
        UpdatePackageShadow(
            client_token=p.last(UpdatePackageShadow).client_token,
            running=OLD,
            held=None,
            expected_version=None,
        ),
        like(SetTimer, timer=TimerKind.PACKAGE_SHADOW_RETRY, delay=30.0),
    ]
    assert updated(p) == []
    assert p.state.package is not None
    assert p.state.package.shadow == package.Held(reported=OLD, version=5)
    # Nothing more: the timer of the answered update is stale.
    assert p.fire(TimerKind.PACKAGE_SHADOW_RETRY) == []


def test_nothing_is_sent_when_the_shadow_already_says_what_runs() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=OLD)
    assert p.answer(HookSuccess(value="1.0")) == []
    assert not p.all(UpdatePackageShadow)
    # A reconnect does not read again what is known, nor report it.
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    assert shadow_commands(p.feed(SubscriptionsAcked())) == []


def test_a_report_is_based_on_the_shadow_version_read_and_removes_old_attributes() -> None:
    p = Playbook(SETTINGS)
    held = ReportedPackage(version="0.9", attributes=(("slot", "A"),))
    idle(p, held=held)
    p.answer(HookSuccess(value="1.0"))
    update = p.last(UpdatePackageShadow)
    assert (update.running, update.held, update.expected_version) == (OLD, held, 4)


def test_a_throttled_update_is_sent_again_after_the_backoff() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    p.answer(HookSuccess(value="1.0"))
    first = p.last(UpdatePackageShadow)
    out = rejected(p, ShadowRejectReason.TOO_MANY_REQUESTS, ShadowOperation.UPDATE)
    # request_backoff: 2 s with half jitter.
    assert out == [like(SetTimer, timer=TimerKind.PACKAGE_SHADOW_RETRY, delay=between(1.0, 2.0))]
    again = p.fire(TimerKind.PACKAGE_SHADOW_RETRY)
    assert again[0] == like(UpdatePackageShadow, running=OLD)
    assert p.last(UpdatePackageShadow).client_token != first.client_token
    rejected(p, ShadowRejectReason.INTERNAL_ERROR, ShadowOperation.UPDATE)
    assert p.last(SetTimer).delay == between(2.0, 4.0)


def test_an_unanswered_get_is_sent_again_after_the_request_timeout() -> None:
    p = Playbook(SETTINGS)
    p.boot()
    first = p.last(GetPackageShadow)
    out = p.fire(TimerKind.PACKAGE_SHADOW_RETRY)
    assert shadow_commands(out) == [like(GetPackageShadow)]
    assert p.last(GetPackageShadow) != first


def test_a_version_conflict_reads_the_shadow_again_and_reports_only_if_still_needed() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    p.answer(HookSuccess(value="1.0"))
    out = rejected(p, ShadowRejectReason.VERSION_CONFLICT, ShadowOperation.UPDATE)
    assert shadow_commands(out) == [like(GetPackageShadow)]
    # Someone reported the same version meanwhile: nothing left to send.
    assert read(p, OLD, version=9) == []
    assert len(p.all(UpdatePackageShadow)) == 1


def test_a_refusal_for_good_is_logged_once_and_given_up_until_the_version_changes() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    p.answer(HookSuccess(value="1.0"))
    assert rejected(p, ShadowRejectReason.FORBIDDEN, ShadowOperation.UPDATE) == []
    warnings = [log for log in p.logs if log.level is LogLevel.WARNING]
    assert len(warnings) == 1
    assert "403" in warnings[0].message
    assert "IoT policy" in warnings[0].message
    # Nothing more, however long it runs or however often it reconnects.
    assert p.tick(3600).fire(TimerKind.PACKAGE_SHADOW_RETRY) == []
    p.feed(MqttDisconnected(reason="x"))
    p.feed(MqttConnected())
    assert shadow_commands(p.feed(SubscriptionsAcked())) == []
    assert len(p.all(UpdatePackageShadow)) == 1
    # A job changes what runs: worth one more try (read first).
    p.list_jobs(queued=[summary()])
    p.describe(execution())
    out = p.answer(HookSuccess(value="1.5"))
    assert like(GetPackageShadow) in out


def test_a_version_the_edge_cannot_report_is_given_up() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    p.answer(HookSuccess(value="1.0 beta"))
    token = p.last(UpdatePackageShadow).client_token
    assert p.feed(PackageReportRefused(client_token=token, reason="not a version name")) == []
    assert p.state.package is not None
    assert isinstance(p.state.package.shadow, package.GaveUp)
    assert "not a version name" in p.logs[-1].message


def test_an_unreachable_hook_server_is_asked_again_with_the_hook_backoff() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=OLD)
    out = p.answer(HookUnavailable(detail="no socket"))
    assert out == [like(SetTimer, timer=TimerKind.PACKAGE_VERSION_RETRY, delay=1.0)]
    assert p.fire(TimerKind.PACKAGE_VERSION_RETRY) == [like(CallHook, hook=HookKind.VERSION)]
    p.answer(HookUnavailable(detail="no socket"))
    assert p.last(SetTimer).delay == 2.0
    p.fire(TimerKind.PACKAGE_VERSION_RETRY)
    assert shadow_commands(p.answer(HookSuccess(value="1.5"))) == [like(UpdatePackageShadow)]


def test_a_server_without_version_hook_is_not_asked() -> None:
    p = Playbook(SETTINGS)
    p.boot()
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL})))
    read(p, None)
    assert p.list_jobs() == [SignalReady()]
    assert not p.all(CallHook)


def test_a_job_selected_while_the_version_hook_runs_cancels_it_and_its_check_serves() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=OLD)
    call = probe(p)
    out = p.notify(queued=[summary()])
    assert CancelHook(call_id=call.call_id) in out
    assert like(DescribeJob) in out
    # The late answer of the cancelled call changes nothing.
    late = p.feed(
        HookFinished(call_id=call.call_id, hook=HookKind.VERSION, result=HookSuccess(value="9"))
    )
    assert shadow_commands(late) == []
    # The job's own check: what runs before the update.
    p.describe(execution())
    job_call = p.last(CallHook)
    assert job_call.context.job_id == JOB
    assert p.answer(HookSuccess(value="1.5"))[-1] != like(UpdatePackageShadow)
    assert p.last(UpdatePackageShadow).running == ReportedPackage(version="1.5")


def test_after_a_verified_job_the_new_version_is_reported() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    assert not p.all(UpdatePackageShadow)  # the job's check said 1.0, as the shadow does
    p.answer(HookSuccess())  # restart: a soft restart
    p.answer(HookSuccess(value="2.0"))  # the version hook: verified
    assert not p.all(UpdatePackageShadow), "not before the ready hook confirmed it"
    out = p.answer(HookSuccess())  # ready
    assert like(UpdatePackageShadow, running=NEW, held=OLD, expected_version=4) in out


def test_after_a_rollback_the_shadow_keeps_saying_the_old_version() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    p.answer(HookSuccess())
    out = p.answer(HookSuccess(value="1.0"))
    assert failed("rolled_back") in out
    assert not p.all(UpdatePackageShadow)
    assert p.state.package is not None
    assert p.state.package.running == OLD


def test_after_a_version_mismatch_the_version_that_runs_is_reported() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    p.answer(HookSuccess())
    out = p.answer(HookSuccess(value="1.5"))
    assert failed("version_mismatch") in out
    assert like(UpdatePackageShadow, running=ReportedPackage(version="1.5"), held=OLD) in out


def test_a_job_that_fails_after_its_verification_reports_nothing_new() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    p.answer(HookSuccess())
    p.answer(HookSuccess(value="2.0"))
    out = p.answer(HookUnavailable(detail="x"))  # ready: retried, not a verdict
    assert shadow_commands(out) == []
    p.feed(HookServerInfo(hooks=frozenset(HookKind)))
    assert not p.all(UpdatePackageShadow)


def test_shadow_traffic_never_holds_a_job_back() -> None:
    """A shadow that never answers: the job goes through every phase all the same."""
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)  # the get was never answered
    p.answer(HookSuccess())
    p.answer(HookSuccess(value="2.0"))
    out = p.answer(HookSuccess())
    assert succeeded("complete_ready") in out
    assert like(RequestPendingJobs) in out, "the next fetch went out"
    assert shadow_commands(out) == []  # the report waits for the read


def test_without_package_name_there_is_no_shadow_traffic_nor_extra_hook_call() -> None:
    p = Playbook()
    assert p.state.package is None
    p.boot()
    p.list_jobs()
    assert isinstance(p.stage, machine.Idle)
    assert not p.all(CallHook)
    assert shadow_commands(p.history) == []


# --- attributes beside the version (the version hook's GetVersionResponse.attributes) --------

SLOT_A = (("booted_slot", "A"),)
SLOT_B = (("booted_slot", "B"),)


def test_the_version_hooks_attributes_are_reported_with_the_version() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    p.answer(HookSuccess(value="1.0", attributes=SLOT_A))
    assert p.last(UpdatePackageShadow).running == ReportedPackage(version="1.0", attributes=SLOT_A)


def test_equal_version_and_attributes_send_nothing() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=ReportedPackage(version="1.0", attributes=SLOT_A))
    assert p.answer(HookSuccess(value="1.0", attributes=SLOT_A)) == []
    assert not p.all(UpdatePackageShadow)


def test_a_change_of_only_the_attributes_sends_an_update() -> None:
    """Same version, another slot booted (say a rollback to an A that has the same version)."""
    p = Playbook(SETTINGS)
    held = ReportedPackage(version="1.0", attributes=SLOT_A)
    idle(p, held=held)
    out = p.answer(HookSuccess(value="1.0", attributes=SLOT_B))
    assert like(
        UpdatePackageShadow,
        running=ReportedPackage(version="1.0", attributes=SLOT_B),
        held=held,
        expected_version=4,
    ) in shadow_commands(out)


def test_bad_attributes_are_dropped_with_a_warning_and_the_rest_is_reported() -> None:
    p = Playbook(SETTINGS)
    idle(p, held=None)
    bad = (("bad key", "x"), ("booted_slot", "A"), ("empty", ""), ("nl", "a\nb"))
    out = p.answer(HookSuccess(value="1.0", attributes=bad))
    assert like(
        UpdatePackageShadow, running=ReportedPackage(version="1.0", attributes=SLOT_A)
    ) in shadow_commands(out)
    warnings = [log.message for log in p.logs if log.level is LogLevel.WARNING]
    assert len(warnings) == 3, warnings
    assert "attribute name 'bad key'" in warnings[0]
    assert "attribute empty must be 1-256 characters" in warnings[1]
    assert "attribute nl 'a\\nb' has control" in warnings[2]
    assert all("reporting '1.0' without it" in w for w in warnings)


def test_attributes_past_the_count_limit_are_dropped_by_key_order() -> None:
    many = tuple((f"k{i:02}", "v") for i in reversed(range(package.MAX_ATTRIBUTES + 2)))
    kept, problems = package.clean_attributes(many)
    assert [k for k, _ in kept] == [f"k{i:02}" for i in range(package.MAX_ATTRIBUTES)]
    assert len(problems) == 2
    assert "k16 is one more than the 16" in problems[0]


def test_attributes_past_3_kb_together_are_dropped() -> None:
    big = tuple((f"k{i}", "x" * 250) for i in range(13))
    kept, problems = package.clean_attributes(big)
    assert sum(len(k) + len(v) for k, v in kept) <= package.MAX_ATTRIBUTES_BYTES
    assert (len(kept), len(problems)) == (12, 1)
    assert "past 3072 bytes" in problems[0]


def test_a_job_reports_the_attributes_its_verification_found() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    p.answer(HookSuccess())  # restart: a soft restart
    p.answer(HookSuccess(value="2.0", attributes=SLOT_B))  # verified
    out = p.answer(HookSuccess())  # ready
    assert succeeded("complete_ready") in out
    running = ReportedPackage(version="2.0", attributes=SLOT_B)
    assert like(UpdatePackageShadow, running=running, held=OLD) in out


def test_bad_attributes_never_hold_a_job_back() -> None:
    p = Playbook(SETTINGS, auto_accept=True)
    at_restart(p)
    read(p, OLD)
    p.answer(HookSuccess())
    out = p.answer(HookSuccess(value="2.0", attributes=(("bad key", "x"),)))
    assert like(CallHook, hook=HookKind.READY) in out
    assert any("attribute name 'bad key'" in log.message for log in p.logs)
    out = p.answer(HookSuccess())
    assert succeeded("complete_ready") in out
    assert like(UpdatePackageShadow, running=NEW) in out
