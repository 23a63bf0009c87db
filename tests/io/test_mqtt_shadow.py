"""The MQTT driver's `$package` part against a real mosquitto on loopback.

With `package_name` the driver subscribes to the shadow's answer topics, publishes the
core's get and update and hands back typed answers; without it there is no shadow
subscription and its commands are dropped. A `Peer` plays the Device Shadow service.
"""

from __future__ import annotations

from tests.io.test_mqtt import (
    THING,
    DriverFactory,
    Peer,
    Recorder,
    connect_and_subscribe,
    make_driver,
)
from tests.support.procs import Mosquitto
from upparat.core.commands import GetPackageShadow, UpdatePackageShadow
from upparat.core.events import (
    JobsChanged,
    PackageReportRefused,
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    PayloadIgnored,
    ShadowRejected,
)
from upparat.core.model import ClientToken, ReportedPackage, ShadowRejectReason

__all__ = ["make_driver"]  # the fixture

S = f"$aws/things/{THING}/shadow/name/$package/"


def test_gets_updates_and_their_answers_round_trip(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    peer = Peer(mosquitto.port)
    peer.subscribe(S + "get")
    peer.subscribe(S + "update")
    driver = make_driver(mosquitto.port, events, package_name="firmware")
    connect_and_subscribe(driver, events)

    assert driver.execute(GetPackageShadow(client_token=ClientToken("s-1")))
    assert peer.receive() == (S + "get", {"clientToken": "s-1"})
    peer.publish(S + "get/rejected", {"code": 404, "message": "No shadow", "clientToken": "s-1"})
    assert events.wait_for(PackageShadowMissing) == PackageShadowMissing(
        client_token=ClientToken("s-1")
    )

    running = ReportedPackage(version="2.0.0")
    update = UpdatePackageShadow(client_token=ClientToken("s-2"), running=running)
    assert driver.execute(update)
    topic, body = peer.receive()
    assert topic == S + "update"
    assert body == {
        "state": {"reported": {"firmware": {"version": "2.0.0", "attributes": {}}}},
        "clientToken": "s-2",
    }
    peer.publish(
        S + "update/accepted",
        {"state": body["state"], "version": 1, "timestamp": 7, "clientToken": "s-2"},
    )
    assert events.wait_for(PackageShadowUpdated).shadow_version == 1
    peer.publish(S + "update/rejected", {"code": 429, "message": "slow", "clientToken": "s-3"})
    assert events.wait_for(ShadowRejected).reason is ShadowRejectReason.TOO_MANY_REQUESTS
    peer.client.publish(S + "update/accepted", b"not json", qos=1).wait_for_publish(timeout=5)
    assert "not JSON" in events.wait_for(PayloadIgnored).reason
    peer.close()


def test_a_version_the_catalog_cannot_hold_is_refused_without_a_publish(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    driver = make_driver(mosquitto.port, events, package_name="firmware")
    connect_and_subscribe(driver, events)
    bad = UpdatePackageShadow(
        client_token=ClientToken("s-9"), running=ReportedPackage(version="2.0 beta")
    )
    assert not driver.execute(bad)
    refused = events.wait_for(PackageReportRefused)
    assert refused.client_token == "s-9"
    assert "Software Package Catalog" in refused.reason


def test_without_package_name_nothing_of_the_shadow_is_subscribed_or_sent(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    peer = Peer(mosquitto.port)
    peer.subscribe(S + "get")
    driver = make_driver(mosquitto.port, events)
    connect_and_subscribe(driver, events)
    assert not driver.execute(GetPackageShadow(client_token=ClientToken("s-1")))
    # An answer on the shadow's topics does not reach the driver: not subscribed.
    peer.publish(S + "get/accepted", {"version": 1, "clientToken": "s-1"})
    peer.publish(f"$aws/things/{THING}/jobs/notify", {"timestamp": 1, "jobs": {}})
    events.wait_for(JobsChanged)  # published after the shadow answer, delivered in order
    assert not [e for e in events.events if isinstance(e, PackageShadowRead | PayloadIgnored)]
    peer.close()
