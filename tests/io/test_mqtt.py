"""The MQTT driver against a real mosquitto on loopback: plain TCP, mutual TLS, restarts.

A second paho client (`Peer`) plays AWS IoT Jobs: it sees what the driver publishes and
publishes the replies. Certificates are made with the openssl CLI in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypedDict, TypeVar, Unpack

import attrs
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.procs import Mosquitto, free_port, running_mosquitto
from upparat.core.commands import (
    ConnectMqtt,
    DescribeJob,
    RequestPendingJobs,
    SubscribeJobTopics,
    UpdateJob,
)
from upparat.core.events import (
    Event,
    JobDescribed,
    JobsChanged,
    MqttConnected,
    MqttConnectFailed,
    MqttDisconnected,
    PayloadIgnored,
    PendingJobsListed,
    SubscriptionsAcked,
    SubscriptionsRefused,
)
from upparat.core.model import ClientToken, JobDocument, JobId, JobStatus
from upparat.io.mqtt import AWS_ALPN_PROTOCOL, MqttConfigError, MqttDriver, StrPath, alpn_protocols

THING = "dev-1"
P = f"$aws/things/{THING}/jobs/"
E = TypeVar("E", bound=Event)
STAY_ROOT = "user root\n"
"""Started as root, mosquitto switches to user `mosquitto`, who cannot read files in
tmp_path (mode 0700). It ignores this line when started as another user."""


# --- helpers ---------------------------------------------------------------------------


class Recorder:
    """The runtime's side of `on_event`: every event, in order, with waiting helpers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: type[E], timeout: float = 5.0, after: int = 0) -> E:
        """The first event of `kind` at index >= `after`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if isinstance(event, kind):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {kind.__name__} within {timeout} s; got {self.events}"
                    )
                self._cond.wait(remaining)

    def index_of(self, kind: type[Event], after: int = 0) -> int:
        with self._cond:
            for i, event in enumerate(self.events[after:], start=after):
                if isinstance(event, kind):
                    return i
        raise AssertionError(f"no {kind.__name__} in {self.events}")

    def count(self, kind: type[Event]) -> int:
        with self._cond:
            return sum(isinstance(e, kind) for e in self.events)

    def __len__(self) -> int:
        with self._cond:
            return len(self.events)


class Peer:
    """A plain paho client standing in for the AWS IoT Jobs service."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: queue.Queue[int] = queue.Queue()
        self._connected = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"peer-{port}"
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._connected.wait(5), "peer could not connect"

    def _on_connect(
        self, c: paho.Client, u: object, f: paho.ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        self._connected.set()

    def _on_subscribe(
        self, c: paho.Client, u: object, mid: int, rcs: list[ReasonCode], p: Properties | None
    ) -> None:
        self._acks.put(mid)

    def _on_message(self, c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def subscribe(self, topic_filter: str) -> None:
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert self._acks.get(timeout=5) == mid

    def publish(self, topic: str, body: object) -> None:
        info = self.client.publish(topic, json.dumps(body).encode(), qos=1)
        info.wait_for_publish(timeout=5)

    def receive(self, timeout: float = 5.0) -> tuple[str, dict[str, object]]:
        topic, payload = self.messages.get(timeout=timeout)
        body = json.loads(payload)
        assert isinstance(body, dict)
        return topic, body

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@attrs.frozen(kw_only=True)
class Pki:
    """PEM files of one test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    """A client certificate signed by `other_ca`: the broker must refuse it."""
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30
    )


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    return cert, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (
        d / f"{name}.key",
        d / f"{name}.csr",
        d / f"{name}.crt",
        d / f"{name}.ext",
    )
    extfile.write_text(
        "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        + ext
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(abs(hash(name)) % 10**9),
        "-out", cert, "-days", "2", "-extfile", extfile,
        cwd=d,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "test-ca")
    other = _make_ca(d, "other-ca")
    server = _make_leaf(
        d, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    client = _make_leaf(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    rogue = _make_leaf(d, "rogue", other, "extendedKeyUsage=clientAuth\n")
    return Pki(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca=other[0],
        rogue_cert=rogue[0],
        rogue_key=rogue[1],
    )


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    conf = (
        f"{STAY_ROOT}cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )
    with running_mosquitto(tmp_path, extra_conf=conf) as broker:
        yield broker


class Options(TypedDict, total=False):
    """The optional settings of `MqttDriver`, for the test factories."""

    keepalive: int
    cafile: StrPath | None
    certfile: StrPath | None
    keyfile: StrPath | None
    alpn: Sequence[str] | None
    connect_timeout: float
    package_name: str | None


class DriverFactory(Protocol):
    def __call__(
        self,
        port: int,
        on_event: Callable[[Event], None],
        *,
        redial: float | None = 0.5,
        **options: Unpack[Options],
    ) -> MqttDriver: ...


@pytest.fixture
def make_driver() -> Iterator[DriverFactory]:
    """Builds drivers with test timings and makes their first connect attempt; stops them
    all afterwards. `redial` stands in for the core: so many seconds after an attempt or
    a session ended, it sends the next `ConnectMqtt` (None: never)."""
    drivers: list[MqttDriver] = []
    timers: list[threading.Timer] = []

    def make(
        port: int,
        on_event: Callable[[Event], None],
        *,
        redial: float | None = 0.5,
        **options: Unpack[Options],
    ) -> MqttDriver:
        options.setdefault("keepalive", 5)
        options.setdefault("connect_timeout", 2.0)

        def core(event: Event) -> None:
            on_event(event)
            if redial is not None and isinstance(event, MqttConnectFailed | MqttDisconnected):
                timer = threading.Timer(redial, driver.execute, args=(ConnectMqtt(),))
                timer.daemon = True
                timers.append(timer)
                timer.start()

        driver = MqttDriver(
            host="127.0.0.1",
            port=port,
            client_id=f"upparat-test-{len(drivers)}",
            thing_name=THING,
            on_event=core,
            **options,
        )
        drivers.append(driver)
        assert driver.execute(ConnectMqtt())
        return driver

    yield make
    for timer in timers:
        timer.cancel()
    for driver in drivers:
        driver.stop()


def summary(job_id: str) -> dict[str, object]:
    return {
        "jobId": job_id,
        "queuedAt": 1,
        "lastUpdatedAt": 2,
        "versionNumber": 1,
        "executionNumber": 1,
    }


def connect_and_subscribe(driver: MqttDriver, events: Recorder) -> None:
    events.wait_for(MqttConnected)
    assert driver.execute(SubscribeJobTopics())
    events.wait_for(SubscriptionsAcked)


# --- plain TCP ------------------------------------------------------------------------


def test_requests_and_replies_round_trip(mosquitto: Mosquitto, make_driver: DriverFactory) -> None:
    events = Recorder()
    peer = Peer(mosquitto.port)
    peer.subscribe(P + "+/update")
    peer.subscribe(P + "+/get")
    peer.subscribe(P + "get")
    driver = make_driver(mosquitto.port, events)
    connect_and_subscribe(driver, events)
    assert driver.connected

    assert driver.execute(RequestPendingJobs(client_token=ClientToken("g-1")))
    assert peer.receive() == (P + "get", {"clientToken": "g-1"})
    peer.publish(
        P + "get/accepted",
        {
            "inProgressJobs": [],
            "queuedJobs": [summary("upparat_1")],
            "timestamp": 5,
            "clientToken": "g-1",
        },
    )
    listed = events.wait_for(PendingJobsListed)
    assert [s.job_id for s in listed.queued] == ["upparat_1"]
    assert listed.client_token == "g-1"

    assert driver.execute(DescribeJob(job_id=JobId("upparat_1"), client_token=ClientToken("d-1")))
    assert peer.receive() == (P + "upparat_1/get", {"clientToken": "d-1"})
    execution = {
        "jobId": "upparat_1",
        "status": "QUEUED",
        "jobDocument": {"file": "https://example.com/fw.bin", "version": "2"},
        "queuedAt": 1,
        "lastUpdatedAt": 1,
        "versionNumber": 1,
        "executionNumber": 1,
    }
    peer.publish(
        P + "upparat_1/get/accepted", {"execution": execution, "timestamp": 6, "clientToken": "d-1"}
    )
    described = events.wait_for(JobDescribed)
    assert described.execution.document == JobDocument(
        file="https://example.com/fw.bin", version="2"
    )

    update = UpdateJob(
        job_id=JobId("upparat_1"),
        status=JobStatus.IN_PROGRESS,
        status_details=(("state", "download_start"),),
        client_token=ClientToken("u-1"),
    )
    assert driver.execute(update)
    assert peer.receive() == (
        P + "upparat_1/update",
        {
            "status": "IN_PROGRESS",
            "statusDetails": {"state": "download_start"},
            "clientToken": "u-1",
        },
    )

    # A message of another shape on a subscribed topic is reported, not raised.
    peer.publish(P + "notify", {"jobs": "garbage"})
    ignored = events.wait_for(PayloadIgnored)
    assert ignored.topic == P + "notify"
    peer.close()


def test_broker_restart_reconnects_and_resubscribes(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    # redial 2: the peer below is subscribed before the driver is back.
    driver = make_driver(mosquitto.port, events, redial=2)
    connect_and_subscribe(driver, events)
    assert driver.execute(RequestPendingJobs(client_token=ClientToken("before")))

    mark = len(events)
    mosquitto.stop()
    events.wait_for(MqttDisconnected, after=mark)
    assert not driver.connected
    # Published while down: dropped, not queued for later.
    assert not driver.execute(RequestPendingJobs(client_token=ClientToken("while-down")))

    mosquitto.start()
    peer = Peer(mosquitto.port)
    peer.subscribe(P + "get")
    peer_ready = len(events)
    events.wait_for(MqttConnected, timeout=8, after=mark + 1)
    assert events.count(MqttConnected) == 2
    assert events.index_of(MqttConnected, after=mark) >= peer_ready, (
        "peer subscribed too late to be a witness"
    )
    # The driver resubscribed by itself: no SubscribeJobTopics was executed again.
    events.wait_for(SubscriptionsAcked, after=events.index_of(MqttConnected, after=mark))
    assert events.count(SubscriptionsAcked) == 2

    assert driver.execute(RequestPendingJobs(client_token=ClientToken("after")))
    assert peer.receive() == (P + "get", {"clientToken": "after"})  # "while-down" never went out

    peer.publish(P + "notify", {"timestamp": 9, "jobs": {"IN_PROGRESS": [summary("upparat_2")]}})
    changed = events.wait_for(JobsChanged)
    assert [s.job_id for s in changed.in_progress] == ["upparat_2"]
    peer.close()


def test_publishes_in_flight_when_the_link_breaks_are_not_resent(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    driver = make_driver(mosquitto.port, events, redial=2)
    connect_and_subscribe(driver, events)
    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)  # the broker stops reading: no PUBACK
    mark = len(events)
    assert driver.execute(RequestPendingJobs(client_token=ClientToken("in-flight")))
    mosquitto.proc.send_signal(signal.SIGKILL)
    mosquitto.proc.wait(timeout=5)
    mosquitto.proc = None
    events.wait_for(MqttDisconnected, after=mark)

    mosquitto.start()
    peer = Peer(mosquitto.port)
    peer.subscribe(P + "get")
    peer_ready = len(events)
    events.wait_for(SubscriptionsAcked, timeout=8, after=mark)
    assert events.index_of(MqttConnected, after=mark) >= peer_ready, (
        "peer subscribed too late to be a witness"
    )
    assert driver.execute(RequestPendingJobs(client_token=ClientToken("after")))
    assert peer.receive() == (
        P + "get",
        {"clientToken": "after"},
    )  # paho did not re-send "in-flight"
    peer.close()


def test_a_broker_down_at_start_is_fine(tmp_path: Path, make_driver: DriverFactory) -> None:
    broker = Mosquitto(tmp_path)  # not started yet
    events = Recorder()
    driver = make_driver(broker.port, events)
    assert not driver.execute(SubscribeJobTopics())  # remembered for the first connect
    # Each attempt ends in one MqttConnectFailed; the next one is the core's (here:
    # the factory's) decision.
    failed = events.wait_for(MqttConnectFailed)
    assert "connection failed" in failed.reason
    assert "Connection refused" in failed.reason
    broker.start()
    try:
        events.wait_for(MqttConnected, timeout=6)
        events.wait_for(SubscriptionsAcked)
        assert events.count(MqttDisconnected) == 0
        assert {type(e) for e in events.events[: events.index_of(MqttConnected)]} == {
            MqttConnectFailed
        }
    finally:
        broker.stop()


def test_a_connect_asked_for_right_after_a_failure_is_made(
    tmp_path: Path, make_driver: DriverFactory
) -> None:
    # The core's jittered delay can be ~0 s: the ConnectMqtt that answers a failure may
    # come before the failed attempt's thread has returned. Here it comes at the
    # earliest possible moment, from inside the failure's own callback: it must start
    # the next attempt, not be taken for a second concurrent one and dropped.
    events = Recorder()
    drivers: list[MqttDriver] = []
    built = threading.Event()

    def core(event: Event) -> None:
        events(event)
        if isinstance(event, MqttConnectFailed) and events.count(MqttConnectFailed) < 5:
            built.wait(5)  # the first attempt may fail before make_driver returns
            assert drivers[0].execute(ConnectMqtt())

    drivers.append(make_driver(free_port(), core, redial=None))
    built.set()
    deadline = time.monotonic() + 10
    while events.count(MqttConnectFailed) < 5:
        assert time.monotonic() < deadline, events.events
        time.sleep(0.05)


def test_subscribe_while_subscribing_is_answered_once(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    events = Recorder()
    driver = make_driver(mosquitto.port, events)
    events.wait_for(MqttConnected)
    # Hold the broker (ours, by PID) so the first SUBACK cannot overtake the second call
    # on a loaded machine.
    assert mosquitto.proc is not None
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)
    try:
        assert driver.execute(SubscribeJobTopics())
        assert driver.execute(SubscribeJobTopics())  # in flight: shares the answer
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
    events.wait_for(SubscriptionsAcked)
    time.sleep(0.3)
    assert events.count(SubscriptionsAcked) == 1
    assert driver.execute(SubscribeJobTopics())  # after the answer: subscribes again
    events.wait_for(SubscriptionsAcked, after=events.index_of(SubscriptionsAcked) + 1)


def _dynamic_security_plugin() -> Path | None:
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
    ):
        for found in sorted(Path("/").glob(pattern.lstrip("/"))):
            return found
    return None


def test_a_refused_subscription_is_reported_and_subscribed_again_on_request(
    tmp_path: Path, make_driver: DriverFactory
) -> None:
    # mosquitto's acl_file never refuses a SUBSCRIBE (it filters on delivery); its dynamic
    # security plugin does, with SUBACK 0x80 like AWS IoT when the policy lacks iot:Subscribe.
    plugin = _dynamic_security_plugin()
    if plugin is None:
        pytest.skip("mosquitto_dynamic_security.so is not installed")
    allowed = [
        "notify",
        "get/accepted",
        "get/rejected",
        "+/get/accepted",
        "+/get/rejected",
        "+/update/accepted",
    ]
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": True,
                    "publishClientReceive": True,
                    "subscribe": False,
                    "unsubscribe": True,
                },
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "jobs"}]}],
                "roles": [
                    {
                        "rolename": "jobs",
                        "acls": [
                            {
                                "acltype": "subscribePattern",
                                "topic": P + f,
                                "priority": 0,
                                "allow": True,
                            }
                            for f in allowed
                        ],
                    }
                ],
                "anonymousGroup": "anonymous",
            }
        )
    )
    conf = f"{STAY_ROOT}plugin {plugin}\nplugin_opt_config_file {dynsec}\n"
    with running_mosquitto(tmp_path, extra_conf=conf) as broker:
        events = Recorder()
        driver = make_driver(broker.port, events)
        events.wait_for(MqttConnected)
        assert driver.execute(SubscribeJobTopics())
        refused = events.wait_for(SubscriptionsRefused)
        # Only the filter the policy lacks; the six granted ones are fine.
        assert [f for f, _ in refused.refused] == [P + "+/update/rejected"]
        assert events.count(SubscriptionsRefused) == 1
        # The driver does not retry by itself (the core's backoff does): silence...
        time.sleep(1.0)
        assert events.count(SubscriptionsRefused) == 1
        # ...until asked: that subscribes again and is answered again.
        assert driver.execute(SubscribeJobTopics())
        retried = events.wait_for(
            SubscriptionsRefused, timeout=4, after=events.index_of(SubscriptionsRefused) + 1
        )
        assert [f for f, _ in retried.refused] == [P + "+/update/rejected"]
        assert events.count(SubscriptionsAcked) == 0


def _voluntary_switches(thread_name: str) -> int:
    (thread,) = [t for t in threading.enumerate() if t.name == thread_name]
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_session_wakes_only_to_ping_and_read_the_answer(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    # mosquitto drops a client silent for 1.5 x keepalive (4.5 s here): the session living
    # through 10 s shows every PINGREQ went out in time. A wait of a fixed quarter keepalive
    # (at least 1 s, as paho's loop_forever was given) woke 10 times in those 10 s.
    events = Recorder()
    driver = make_driver(mosquitto.port, events, keepalive=3)
    connect_and_subscribe(driver, events)
    time.sleep(0.5)
    before = _voluntary_switches("mqtt-1")
    time.sleep(10)
    woke = _voluntary_switches("mqtt-1") - before

    assert not [e for e in events.events if isinstance(e, MqttDisconnected)]
    assert 3 <= woke <= 9  # a PINGREQ per 3 s, its PINGRESP if it comes later, some slack


def test_a_broker_gone_silent_is_noticed_within_two_keepalives(
    mosquitto: Mosquitto, make_driver: DriverFactory
) -> None:
    # The broker (ours, by PID) stops answering while the session idles: no FIN, no RST,
    # as when a mobile link goes away. The PINGREQ at keepalive goes unanswered, and paho
    # gives up keepalive later: at most 2 x keepalive after the last PINGRESP.
    events = Recorder()
    driver = make_driver(mosquitto.port, events, keepalive=2, redial=None)
    connect_and_subscribe(driver, events)
    assert mosquitto.proc is not None
    mark = len(events)
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        events.wait_for(MqttDisconnected, timeout=10, after=mark)
        silent_for = time.monotonic() - stopped
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
    assert silent_for <= 2 * 2 + 1.0


def test_stop_is_quick_and_silent(mosquitto: Mosquitto, make_driver: DriverFactory) -> None:
    events = Recorder()
    driver = make_driver(mosquitto.port, events)
    connect_and_subscribe(driver, events)
    before = len(events)
    started = time.monotonic()
    driver.stop()
    assert time.monotonic() - started < 2.0
    mosquitto.stop()
    time.sleep(0.3)
    assert len(events) == before
    assert not driver.execute(RequestPendingJobs(client_token=ClientToken("late")))


def test_stop_while_reconnecting_is_quick(tmp_path: Path, make_driver: DriverFactory) -> None:
    driver = make_driver(free_port(), Recorder(), redial=30)
    time.sleep(0.3)
    started = time.monotonic()
    driver.stop()
    assert time.monotonic() - started < 2.5


# --- TLS ----------------------------------------------------------------------------------


def test_mutual_tls(tls_broker: Mosquitto, pki: Pki, make_driver: DriverFactory) -> None:
    events = Recorder()
    driver = make_driver(
        tls_broker.port,
        events,
        cafile=pki.ca,
        certfile=pki.client_cert,
        keyfile=str(pki.client_key),
    )
    connect_and_subscribe(driver, events)

    peer_tls = ssl.create_default_context(cafile=str(pki.ca))
    peer_tls.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    peer = Peer(tls_broker.port, tls=peer_tls)
    peer.subscribe(P + "get")
    assert driver.execute(RequestPendingJobs(client_token=ClientToken("tls-1")))
    assert peer.receive() == (P + "get", {"clientToken": "tls-1"})
    peer.publish(
        P + "get/accepted", {"inProgressJobs": [], "queuedJobs": [], "clientToken": "tls-1"}
    )
    assert events.wait_for(PendingJobsListed).client_token == "tls-1"
    peer.close()


def test_a_client_certificate_from_another_ca_is_refused(
    tls_broker: Mosquitto, pki: Pki, make_driver: DriverFactory
) -> None:
    events = Recorder()
    driver = make_driver(
        tls_broker.port, events, cafile=pki.ca, certfile=pki.rogue_cert, keyfile=pki.rogue_key
    )
    failed = events.wait_for(MqttConnectFailed, timeout=5)
    time.sleep(1.0)
    # Only failed attempts: never MqttConnected, nor a MqttDisconnected for an attempt.
    assert {type(e) for e in events.events} == {MqttConnectFailed}
    assert failed.reason
    assert not driver.connected


def test_a_server_certificate_from_another_ca_is_refused(
    tls_broker: Mosquitto, pki: Pki, make_driver: DriverFactory
) -> None:
    events = Recorder()
    driver = make_driver(
        tls_broker.port,
        events,
        cafile=pki.other_ca,
        certfile=pki.client_cert,
        keyfile=pki.client_key,
    )
    failed = events.wait_for(MqttConnectFailed, timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in failed.reason
    time.sleep(1.0)
    assert {type(e) for e in events.events} == {MqttConnectFailed}
    assert not driver.connected


def test_alpn_is_offered_in_the_tls_handshake(pki: Pki, make_driver: DriverFactory) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server.set_alpn_protocols([AWS_ALPN_PROTOCOL])
    offered: queue.Queue[str | None] = queue.Queue()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                offered.put(tls.selected_alpn_protocol())

        threading.Thread(target=serve, daemon=True).start()
        make_driver(
            port,
            Recorder(),
            cafile=pki.ca,
            certfile=pki.client_cert,
            keyfile=pki.client_key,
            alpn=[AWS_ALPN_PROTOCOL],
        )
        assert offered.get(timeout=5) == AWS_ALPN_PROTOCOL


def test_alpn_defaults_to_the_aws_protocol_on_port_443_only() -> None:
    assert alpn_protocols(443, None) == ["x-amzn-mqtt-ca"]
    assert alpn_protocols(8883, None) == []
    assert alpn_protocols(443, ()) == []
    assert alpn_protocols(1883, ["mqtt"]) == ["mqtt"]


# --- configuration errors ----------------------------------------------------------------


def _driver(
    *,
    host: str = "127.0.0.1",
    port: int = 8883,
    client_id: str = "c",
    thing_name: str = THING,
    **options: Unpack[Options],
) -> MqttDriver:
    """A driver that is built but never started."""
    return MqttDriver(
        host=host,
        port=port,
        client_id=client_id,
        thing_name=thing_name,
        on_event=Recorder(),
        **options,
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"cafile"}, "certfile, keyfile"),
        ({"certfile"}, "cafile, keyfile"),
        ({"keyfile"}, "cafile, certfile"),
        ({"cafile", "certfile"}, "keyfile"),
        ({"cafile", "keyfile"}, "certfile"),
        ({"certfile", "keyfile"}, "cafile"),
    ],
)
def test_tls_needs_all_three_files(pki: Pki, given: set[str], missing: str) -> None:
    with pytest.raises(MqttConfigError, match=f"missing: {missing} "):
        _driver(
            cafile=pki.ca if "cafile" in given else None,
            certfile=pki.client_cert if "certfile" in given else None,
            keyfile=pki.client_key if "keyfile" in given else None,
        )


def test_unreadable_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(MqttConfigError, match="cafile"):
        _driver(cafile=tmp_path / "nope.crt", certfile=pki.client_cert, keyfile=pki.client_key)
    with pytest.raises(MqttConfigError, match="certfile"):
        _driver(
            cafile=pki.ca, certfile=pki.client_cert, keyfile=pki.rogue_key
        )  # key of another cert
    encrypted = tmp_path / "encrypted.key"
    _openssl(
        "pkey",
        "-in",
        pki.client_key,
        "-out",
        encrypted,
        "-aes256",
        "-passout",
        "pass:secret",
        cwd=tmp_path,
    )
    with pytest.raises(MqttConfigError, match="cannot be loaded") as err:
        _driver(cafile=pki.ca, certfile=pki.client_cert, keyfile=encrypted)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _driver(port=0), "port must be an integer 1-65535"),
        (lambda: _driver(port=70000), "port must be an integer 1-65535"),
        (lambda: _driver(host=""), "host"),
        (lambda: _driver(client_id=""), "client_id"),
        (lambda: _driver(client_id="x" * 129), "client_id"),
        (lambda: _driver(thing_name="dev/1"), "thing_name"),
        (lambda: _driver(alpn=["x-amzn-mqtt-ca"]), "alpn needs TLS"),
    ],
)
def test_bad_settings_are_config_errors(build: Callable[[], MqttDriver], message: str) -> None:
    with pytest.raises(MqttConfigError, match=message):
        build()


def test_any_port_is_fine_with_tls(pki: Pki) -> None:
    _driver(port=1884, cafile=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key).stop()
