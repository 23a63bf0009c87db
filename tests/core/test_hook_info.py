"""GetInfo as the core drives it: asked at start and when a job begins, asked again with
backoff while it fails, never while the device is idle."""

from __future__ import annotations

from tests.core.playbook import OTHER, Playbook, like, summary
from upparat.core import machine
from upparat.core.commands import AskHookInfo, DescribeJob, SetTimer
from upparat.core.events import (
    HookInfoFailed,
    HookServerInfo,
    MqttConnected,
    Started,
    SubscriptionsAcked,
)
from upparat.core.model import HookKind, LogLevel, TimerKind


def boot(p: Playbook) -> None:
    assert AskHookInfo() in p.feed(Started())
    p.feed(MqttConnected())
    p.feed(SubscriptionsAcked())


def test_info_is_asked_at_start_and_again_when_a_job_begins() -> None:
    p = Playbook()
    boot(p)
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL})))
    assert p.state.absent_hooks == frozenset(HookKind) - {HookKind.INSTALL}
    assert p.state.hook_info is None
    p.list_jobs()
    assert isinstance(p.stage, machine.Idle)
    # A job begins: the hook server may have been restarted or upgraded meanwhile.
    out = p.notify(queued=[summary()])
    assert AskHookInfo() in out
    assert like(DescribeJob) in out
    p.feed(HookServerInfo(hooks=frozenset(HookKind)))
    assert p.state.absent_hooks == frozenset()


def test_a_failing_get_info_is_asked_again_with_backoff_until_idle() -> None:
    p = Playbook()
    boot(p)
    delays = []
    for _ in range(4):
        assert p.feed(HookInfoFailed(detail="UNAVAILABLE: connection refused")) == [
            like(SetTimer, timer=TimerKind.HOOK_INFO_RETRY)
        ]
        delays.append(p.last(SetTimer).delay)
        assert p.fire(TimerKind.HOOK_INFO_RETRY) == [AskHookInfo()]
    assert delays == [1, 2, 4, 8]
    failures = [log for log in p.logs if "GetInfo failed" in log.message]
    assert [log.level for log in failures] == [LogLevel.WARNING] + [LogLevel.DEBUG] * 3
    # Idle: the retry that comes due asks nothing; the device waits for free.
    p.feed(HookInfoFailed(detail="UNAVAILABLE"))
    p.list_jobs()
    assert isinstance(p.stage, machine.Idle)
    assert p.fire(TimerKind.HOOK_INFO_RETRY) == []
    assert p.state.hook_info is None
    # The next job asks again.
    assert AskHookInfo() in p.notify(queued=[summary(OTHER)])


def test_a_server_without_get_info_is_not_asked_again() -> None:
    p = Playbook()
    boot(p)
    assert p.feed(HookInfoFailed(detail="UNIMPLEMENTED", unimplemented=True)) == []
    assert "learnt per call" in p.logs[-1].message
    assert p.state.hook_info is None


def test_an_answer_nobody_asked_for_is_ignored() -> None:
    p = Playbook()
    boot(p)
    p.feed(HookServerInfo(hooks=frozenset(HookKind)))
    before = p.state
    assert p.feed(HookInfoFailed(detail="late")) == []
    assert p.state == before
