"""The MQTT connection as the core drives it: one connect attempt per `ConnectMqtt`, the
jittered, capped reconnect backoff, refused subscriptions. No real time: the playbook's
clock moves by the delays the core asks for."""

from __future__ import annotations

import collections

from tests.core.playbook import Playbook, between, kinds, like
from upparat.core import machine
from upparat.core.commands import (
    AskHookInfo,
    ConnectMqtt,
    RequestPendingJobs,
    SetTimer,
    SubscribeJobTopics,
)
from upparat.core.events import (
    MqttConnected,
    MqttConnectFailed,
    MqttDisconnected,
    Started,
    SubscriptionsAcked,
    SubscriptionsRefused,
    TimerFired,
)
from upparat.core.model import LogLevel, Settings, TimerKind


def dial(p: Playbook) -> machine.Dialing | machine.Redialing | None:
    return p.state.dial


def failing_broker(p: Playbook, attempts: int) -> list[float]:
    """Let `attempts` connect attempts fail in a row; the delays the core waited."""
    delays = []
    for _ in range(attempts):
        assert p.last(ConnectMqtt) == ConnectMqtt()
        out = p.feed(MqttConnectFailed(reason="connection refused"))
        assert out == [like(SetTimer, timer=TimerKind.RECONNECT)]
        delays.append(p.last(SetTimer).delay)
        assert p.fire(TimerKind.RECONNECT) == [ConnectMqtt()]
    return delays


def test_a_broker_down_at_start_is_tried_again_with_a_capped_jittered_backoff() -> None:
    p = Playbook(Settings(seed=7, reconnect_max_delay=120))
    assert p.feed(Started()) == [AskHookInfo(), ConnectMqtt()]
    delays = failing_broker(p, 12)
    # Full jitter: anywhere from 0 to 1, 2, 4 ... s, never more than the cap, and never
    # under 1 s (AWS IoT Core takes one CONNECT per second per client id).
    ceilings = [1, 2, 4, 8, 16, 32, 64, 120, 120, 120, 120, 120]
    assert delays == [between(1, c) for c in ceilings]
    jittered = [d for d in delays if d > 1]
    assert len(set(jittered)) == len(jittered) > 6  # jittered, not a fixed schedule
    # One warning for the outage, the repeats at debug level.
    failures = [log for log in p.logs if "cannot connect" in log.message]
    assert [log.level for log in failures] == [LogLevel.WARNING] + [LogLevel.DEBUG] * 11
    assert "connection refused" in failures[0].message
    # Nothing is published while down; the attempt that succeeds subscribes.
    assert all(not isinstance(c, RequestPendingJobs) for c in p.history)
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert kinds(p.feed(SubscriptionsAcked())) == [RequestPendingJobs, SetTimer]


def test_the_seed_decides_the_jitter() -> None:
    def delays(seed: int) -> list[float]:
        p = Playbook(Settings(seed=seed))
        p.feed(Started())
        return failing_broker(p, 6)

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


def test_a_lost_session_reconnects_and_the_backoff_starts_over() -> None:
    p = Playbook(Settings(seed=3))
    p.boot()
    assert p.feed(MqttDisconnected(reason="keepalive timeout")) == [
        like(SetTimer, timer=TimerKind.RECONNECT, delay=between(0, 1))
    ]
    assert isinstance(dial(p), machine.Redialing)
    assert p.fire(TimerKind.RECONNECT) == [ConnectMqtt()]
    # The broker is still away: the next wait is up to 2 s.
    assert p.feed(MqttConnectFailed(reason="refused")) == [
        like(SetTimer, timer=TimerKind.RECONNECT, delay=between(0, 2))
    ]
    p.fire(TimerKind.RECONNECT)
    p.feed(MqttConnected())
    p.feed(SubscriptionsAcked())
    assert dial(p) is None
    p.feed(MqttDisconnected(reason="broker restart"))
    assert p.last(SetTimer).delay == between(0, 1)  # a new outage: from the start again


def test_stale_reconnect_timers_and_connect_failures_are_ignored() -> None:
    p = Playbook()
    p.boot()
    p.feed(MqttDisconnected(reason="x"))
    timer = p.last(SetTimer)
    # Only one attempt at a time: a failure report while none runs changes nothing.
    before = p.state
    assert p.feed(MqttConnectFailed(reason="late")) == []
    assert p.feed(TimerFired(timer=TimerKind.RECONNECT, token=timer.token + 100)) == []
    assert p.state == before
    assert p.fire(TimerKind.RECONNECT) == [ConnectMqtt()]
    # The timer fired once: firing the same token again starts no second attempt.
    assert p.feed(TimerFired(timer=TimerKind.RECONNECT, token=timer.token)) == []


def test_a_refused_subscription_is_tried_again_with_backoff() -> None:
    p = Playbook(Settings(seed=5))
    p.feed(Started())
    p.feed(MqttConnected())
    refused = SubscriptionsRefused(refused=(("$aws/things/t/jobs/notify", "Not authorized"),))
    assert p.feed(refused) == [like(SetTimer, timer=TimerKind.SUBSCRIBE_RETRY)]
    assert "iot:Subscribe" in p.logs[-1].message
    assert "$aws/things/t/jobs/notify" in p.logs[-1].message
    assert p.fire(TimerKind.SUBSCRIBE_RETRY) == [SubscribeJobTopics()]
    p.feed(refused)
    assert p.last(SetTimer).delay == between(0, 2)  # the second refusal in a row
    assert p.fire(TimerKind.SUBSCRIBE_RETRY) == [SubscribeJobTopics()]
    assert kinds(p.feed(SubscriptionsAcked())) == [RequestPendingJobs, SetTimer]


def test_a_subscribe_retry_of_a_lost_session_is_dropped() -> None:
    p = Playbook()
    p.feed(Started())
    p.feed(MqttConnected())
    p.feed(SubscriptionsRefused(refused=(("f", "Not authorized"),)))
    retry = next(c for c in reversed(p.history) if isinstance(c, SetTimer))
    p.feed(MqttDisconnected(reason="x"))
    assert p.feed(TimerFired(timer=TimerKind.SUBSCRIBE_RETRY, token=retry.token)) == []
    # The next session subscribes itself (MqttConnected) and starts a new count.
    p.fire(TimerKind.RECONNECT)
    assert p.feed(MqttConnected()) == [SubscribeJobTopics()]
    assert p.state.resubscribe is None


def test_a_fleet_does_not_come_back_in_lockstep_after_a_broker_outage() -> None:
    """1,000 devices lose the broker at the same instant; it is back 10 minutes later.
    With one seed each, their first attempts after it is back spread over the cap."""
    outage = 600.0
    back_at: list[float] = []
    for seed in range(1000):
        p = Playbook(Settings(seed=seed * 7919 + 1, reconnect_max_delay=120))
        p.boot()
        p.feed(MqttDisconnected(reason="broker gone"))
        p.fire(TimerKind.RECONNECT)
        while p.now < outage:
            p.feed(MqttConnectFailed(reason="connection refused"))
            p.fire(TimerKind.RECONNECT)
        back_at.append(p.now)
    assert max(back_at) <= outage + 120
    per_second = collections.Counter(int(t) for t in back_at)
    # Spread over ~two minutes: no second sees more than 3 % of the fleet
    # (in lockstep, all of it would come in the same second).
    assert max(per_second.values()) <= 30, per_second.most_common(3)
    assert len(per_second) >= 60
