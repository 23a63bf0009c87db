"""MQTT driver: one paho-mqtt 2.x client, its TLS setup, connect attempts and subscriptions.

Owns the connection and turns paho callbacks into core events; payloads are parsed and
built by `upparat.aws` only. It never decides anything about jobs, never waits to try
again (when to reconnect or resubscribe is the core's `Backoff`), and never logs
payloads (a job document holds pre-signed URLs) or key material.

Contract with the runtime (all calls from the runtime thread; `on_event` is called from
the driver's network thread and must only queue the event):

* `ConnectMqtt` makes one connect attempt in a network thread: it ends in
  `MqttConnected`, or in `MqttConnectFailed(reason)` (TCP, TLS or the broker's CONNACK).
  After `MqttConnected`, the end of that session emits `MqttDisconnected(reason)` and the
  thread ends; nothing reconnects by itself. One attempt at a time: a `ConnectMqtt`
  while one runs is ignored.
* `SubscribeJobTopics` is answered by `SubscriptionsAcked` once the broker granted every
  filter (SUBACK). Every connect resubscribes by itself (MQTT clean session) and emits
  `SubscriptionsAcked` again, after `MqttConnected`. A `SubscribeJobTopics` while a
  subscription is in flight shares its answer; one sent after the answer subscribes
  again and is answered again. Refused filters (SUBACK failure, e.g. the IoT policy
  lacks iot:Subscribe) are answered by one `SubscriptionsRefused` naming them.
* Requests are published at QoS 1 only while connected; otherwise `execute` drops them
  and returns False. Publishes still unacknowledged when the link broke are dropped on
  reconnect too (paho would re-send them). So after a reconnect only what the core
  sends goes out, in its order: it re-sends what is outstanding after
  `SubscriptionsAcked`, when the replies can no longer be missed.
* With `package_name` set, the `$package` shadow's four answer topics are subscribed to
  as well (their own SUBSCRIBE), `GetPackageShadow` / `UpdatePackageShadow` are published
  like the jobs requests, and their answers are parsed by `upparat.aws.shadow`. An update
  the edge cannot build is answered at once by `PackageReportRefused`. Without it, none
  of this: the shadow commands are dropped.
* `stop()` disconnects and returns within about `stop_timeout` seconds; no event is
  emitted after it returns.

The network thread waits in select() until the socket has something or paho's keepalive
check is due (`_keepalive_wait`): an idle session wakes at most twice per keepalive, to
send the PINGREQ when it is due and to read the PINGRESP, well before the broker's
1.5 x keepalive limit (paho's loop_forever wakes at a fixed interval, 1 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import assert_never

import attrs
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from upparat.aws import build, parse, shadow, topics
from upparat.core.commands import (
    ConnectMqtt,
    DescribeJob,
    GetPackageShadow,
    RequestPendingJobs,
    SubscribeJobTopics,
    UpdateJob,
    UpdatePackageShadow,
)
from upparat.core.events import (
    Event,
    MqttConnected,
    MqttConnectFailed,
    MqttDisconnected,
    PackageReportRefused,
    PayloadIgnored,
    SubscriptionsAcked,
    SubscriptionsRefused,
)
from upparat.core.model import ThingName

log = logging.getLogger(__name__)

MqttCommand = (
    ConnectMqtt
    | SubscribeJobTopics
    | RequestPendingJobs
    | DescribeJob
    | UpdateJob
    | GetPackageShadow
    | UpdatePackageShadow
)
"""The commands the runtime hands to this driver."""

AWS_ALPN_PORT = 443
AWS_ALPN_PROTOCOL = "x-amzn-mqtt-ca"
"""MQTT over TLS on port 443 needs this ALPN protocol name (AWS IoT, protocols doc)."""

QOS = 1
"""AWS IoT supports QoS 0 and 1; jobs requests and replies must not be lost silently."""

KEEPALIVE_LATE = 0.01
"""Seconds the network thread sleeps past the moment paho's keepalive check is due, so
that the wakeup finds it due rather than a hair early (and sleeps again at once)."""

StrPath = str | os.PathLike[str]


class MqttConfigError(ValueError):
    """The MQTT settings cannot work; the message names the setting and what is expected."""


@attrs.define
class _Round:
    """One set of SUBSCRIBE packets on one connection, waiting for its SUBACKs."""

    connection: int
    pending: dict[int, tuple[str, ...]] = attrs.Factory(dict)
    """mid → the filters of that SUBSCRIBE."""
    refused: list[tuple[str, str]] = attrs.Factory(list)
    """(filter, reason code) of every refused filter."""
    done: bool = False
    """Answered, with `SubscriptionsAcked` or `SubscriptionsRefused`."""


class MqttDriver:
    """The device's MQTT connection to AWS IoT Core (or any MQTT 3.1.1 broker)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        thing_name: str,
        on_event: Callable[[Event], None],
        keepalive: int = 60,
        cafile: StrPath | None = None,
        certfile: StrPath | None = None,
        keyfile: StrPath | None = None,
        alpn: Sequence[str] | None = None,
        connect_timeout: float = 5.0,
        stop_timeout: float = 2.0,
        package_name: str | None = None,
    ) -> None:
        """Check the settings and prepare the client; `ConnectMqtt` connects.

        keepalive: seconds (AWS IoT treats values below 30 as 30 and caps at 1200; a local
        broker honours any value). alpn: None picks `x-amzn-mqtt-ca` on port 443 and none
        elsewhere; `()` sends none. TLS is used when cafile, certfile and keyfile are all
        given (any port); plain TCP when none is. package_name: also subscribe to the
        `$package` shadow's answers and publish its requests (None: no shadow traffic).
        Raises `MqttConfigError`.
        """
        _check_settings(
            host=host,
            port=port,
            client_id=client_id,
            thing_name=thing_name,
        )
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._thing = ThingName(thing_name)
        self._package = package_name
        self._on_event = on_event
        self._stop_timeout = stop_timeout

        tls = _tls_context(cafile=cafile, certfile=certfile, keyfile=keyfile, alpn=alpn, port=port)
        self._tls = tls is not None
        self._client_id = client_id

        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
            # One attempt per ConnectMqtt: the core decides when to try again.
            reconnect_on_failure=False,
        )
        # Our callbacks catch everything themselves; this keeps paho's network thread alive
        # even if one day one does not.
        self._client.suppress_exceptions = True
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.connect_timeout = connect_timeout
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

        # Shared between the runtime thread (execute, stop) and paho's network thread.
        self._lock = threading.RLock()
        self._stopped = False
        self._connected = False
        self._connection = 0
        """Counts successful connects; stale SUBACKs of an old one are ignored."""
        self._subscribe_wanted = False
        self._round: _Round | None = None
        self._attempt: threading.Thread | None = None
        self._attempts = 0
        self._ended: str | None = None
        """Why the current attempt or session ended (the first reason paho gave)."""

    # --- runtime API ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def execute(self, command: MqttCommand) -> bool:
        """Carry out `command`; False when it was not sent because the connection is down.

        Raises `upparat.aws.InvalidCommandError` for a command no correct core produces.
        """
        match command:
            case ConnectMqtt():
                return self._connect_requested()
            case SubscribeJobTopics():
                return self._subscribe_requested()
            case RequestPendingJobs() | DescribeJob() | UpdateJob():
                topic, payload = build(self._thing, command)
                return self._publish(topic, payload)
            case GetPackageShadow() | UpdatePackageShadow():
                return self._shadow_request(command)
            case _:
                assert_never(command)

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread (bounded by `stop_timeout`)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            attempt = self._attempt
        if attempt is None:
            return
        self._client.disconnect()
        # The thread is a daemon: if a connect is still blocking (DNS, TCP, TLS) we return
        # on time and it dies with us; it emits nothing after `_stopped` is set.
        attempt.join(self._stop_timeout)
        if attempt.is_alive():
            log.warning("mqtt: network thread did not stop within %.1f s", self._stop_timeout)
        else:
            log.info("mqtt: stopped")

    # --- one connect attempt ----------------------------------------------------------

    def _connect_requested(self) -> bool:
        with self._lock:
            if self._stopped:
                return False
            if self._attempt is not None and self._attempt.is_alive():
                log.debug("mqtt: a connect attempt is running; ConnectMqtt ignored")
                return False
            self._attempts += 1
            self._ended = None
            thread = threading.Thread(
                target=self._run_attempt, name=f"mqtt-{self._attempts}", daemon=True
            )
            self._attempt = thread
        log.debug(
            "mqtt: connecting to %s:%d as %r (%s)",
            self._host,
            self._port,
            self._client_id,
            "TLS" if self._tls else "plain TCP",
        )
        thread.start()
        return True

    def _run_attempt(self) -> None:
        """The network thread of one attempt: connect, then serve the session until it ends;
        exactly one of MqttConnectFailed / MqttDisconnected at the end."""
        with self._lock:
            sessions = self._connection
        try:
            try:
                self._client.connect(self._host, self._port, keepalive=self._keepalive)
            except (OSError, ValueError) as err:  # ssl.SSLError and socket.timeout too
                reason = f"TCP or TLS connection failed: {_why(err)}"
                self._end_attempt(MqttConnectFailed(reason=reason))
                return
            self._serve()
            with self._lock:
                was_connected = self._connection != sessions
                self._connected = False
                self._round = None
                reason = self._ended or "the connection closed"
            if was_connected:
                log.warning("mqtt: %s", reason)
                self._end_attempt(MqttDisconnected(reason=reason))
            else:
                self._end_attempt(MqttConnectFailed(reason=reason))
        except Exception as err:  # a bug here must still end the attempt with an event
            log.exception("mqtt: the connect attempt failed")
            with self._lock:
                was_connected = self._connection != sessions
                self._connected = False
            ended: Event = (
                MqttDisconnected(reason=f"internal error: {err!r}")
                if was_connected
                else MqttConnectFailed(reason=f"internal error: {err!r}")
            )
            self._end_attempt(ended)

    def _serve(self) -> None:
        """paho's loop_forever without its reconnects (the core decides those): serve the
        session until it ends, each wait as long as the keepalive allows."""
        client = self._client
        while client.loop(timeout=self._keepalive_wait()) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            pass

    def _keepalive_wait(self) -> float:
        """Seconds until paho's keepalive check, which runs after every wait, has work: a
        PINGREQ once nothing went out or came in for `keepalive` seconds, or giving up on
        one left unanswered as long. paho keeps both times (its own attributes, read without
        its lock: a float is read whole); were they gone, a quarter keepalive at a time."""
        sent = getattr(self._client, "_last_msg_out", None)
        received = getattr(self._client, "_last_bytes_received", None)
        if not isinstance(sent, float) or not isinstance(received, float):
            return max(1.0, self._keepalive / 4)
        due = min(sent, received) + self._keepalive
        # paho's clock; a little after the moment, so that the check finds it due.
        return max(0.0, due - time.monotonic()) + KEEPALIVE_LATE

    def _end_attempt(self, event: Event) -> None:
        """The attempt's last event. The slot is freed first, under the same lock: the
        core may answer with ConnectMqtt at once (a jittered delay can be ~0 s), and that
        must start the next attempt, not be ignored as a second concurrent one."""
        with self._lock:
            if self._attempt is threading.current_thread():
                self._attempt = None
            self._emit(event)

    # --- publishing and subscribing -------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            if self._stopped or not self._connected:
                log.debug("mqtt: not connected, dropped publish to %s", topic)
                return False
        info = self._client.publish(topic, payload, qos=QOS)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("mqtt: publish to %s not sent: %s", topic, paho.error_string(info.rc))
            return False
        return True

    def _shadow_request(self, command: GetPackageShadow | UpdatePackageShadow) -> bool:
        if self._package is None:
            log.debug("mqtt: no [service] package_name; %s dropped", type(command).__name__)
            return False
        built = shadow.build(self._thing, self._package, command)
        if isinstance(built, shadow.Unreportable):
            self._emit(PackageReportRefused(client_token=command.client_token, reason=built.reason))
            return False
        return self._publish(*built)

    def _batches(self) -> tuple[tuple[str, ...], ...]:
        """The SUBSCRIBE packets: the jobs topics, and the shadow's answers when reporting."""
        batches = topics.subscription_batches(self._thing)
        if self._package is None:
            return batches
        return (*batches, shadow.subscription_filters(self._thing))

    def _subscribe_requested(self) -> bool:
        with self._lock:
            self._subscribe_wanted = True
            if self._stopped or not self._connected:
                return False  # the next connect subscribes and answers
            if self._round is not None and not self._round.done:
                return True  # in flight or waiting for a retry: its answer is ours
            return self._start_round_locked()

    def _start_round_locked(self) -> bool:
        """Send every SUBSCRIBE of the job topics; the caller holds `_lock`.

        Holding the lock across `subscribe()` matters: paho's thread may process the
        SUBACK before `subscribe()` returns the mid, and `_on_subscribe` waits for it.
        """
        round_ = _Round(connection=self._connection)
        self._round = round_
        for batch in self._batches():
            rc, mid = self._client.subscribe([(f, QOS) for f in batch])
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                # The link just went down; `_on_connect` subscribes again.
                log.debug("mqtt: subscribe not sent: %s", paho.error_string(rc))
                self._round = None
                return False
            round_.pending[mid] = batch
        return True

    # --- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                # paho closes the connection; the attempt ends in MqttConnectFailed.
                self._end(f"the broker refused the connection: {reason_code}")
                return
            # Requests and their replies are small and latency-bound: without TCP_NODELAY
            # each request waits ~40 ms for the broker's delayed ACK (Nagle).
            sock = client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Requests that were in flight when the link broke are not re-sent: like those
            # published while down, the core re-sends what is still outstanding, in its own
            # order. drop_out_messages() exists from paho-mqtt 2.2 on; with 2.1 paho
            # re-sends them (MQTT at-least-once) and the core sees a duplicate reply.
            if hasattr(client, "drop_out_messages"):
                dropped = client.drop_out_messages()
                if dropped:
                    log.debug("mqtt: dropped %d unacknowledged publishes", len(dropped))
            with self._lock:
                if self._stopped:
                    return
                self._connected = True
                self._connection += 1
                self._round = None
                if self._subscribe_wanted:
                    self._start_round_locked()
            log.info("mqtt: connected to %s:%d", self._host, self._port)
            self._emit(MqttConnected())
        except Exception:
            log.exception("mqtt: on_connect failed")

    def _end(self, why: str) -> None:
        """Remember why the attempt or session ends; the first reason counts."""
        with self._lock:
            if self._ended is None:
                self._ended = why

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                was_connected = self._connected
                # No publish from now on; the attempt's thread reports the end.
                self._connected = False
                self._round = None
            if not was_connected:
                # Lost before CONNACK: typically a TLS client certificate the broker rejected.
                self._end(f"connection closed during the handshake ({reason_code})")
                return
            by = " by the broker" if flags.is_disconnect_packet_from_server else ""
            self._end(f"connection lost{by} ({reason_code})")
        except Exception:
            log.exception("mqtt: on_disconnect failed")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            events: list[Event] = []
            with self._lock:
                round_ = self._round
                if round_ is None or round_.done or mid not in round_.pending:
                    return  # a SUBACK of an earlier connection or round
                batch = round_.pending.pop(mid)
                for topic_filter, code in zip(batch, reason_codes, strict=False):
                    if code.is_failure:
                        round_.refused.append((topic_filter, str(code)))
                if len(reason_codes) < len(batch):
                    round_.refused.extend(
                        (f, "no reason code in SUBACK") for f in batch[len(reason_codes) :]
                    )
                if round_.pending:
                    return
                round_.done = True
                if not round_.refused:
                    events.append(SubscriptionsAcked())
                else:
                    events.append(SubscriptionsRefused(refused=tuple(round_.refused)))
            for event in events:
                self._emit(event)
        except Exception:
            log.exception("mqtt: on_subscribe failed")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                self._emit(PayloadIgnored(topic="<not UTF-8>", reason="topic is not valid UTF-8"))
                return
            payload = bytes(message.payload)
            if self._package is not None:
                reply = shadow.parse(self._thing, self._package, topic, payload)
                if isinstance(reply, shadow.ShadowReplyIgnored):
                    self._emit(PayloadIgnored(topic=reply.topic, reason=reply.reason))
                    return
                if reply is not None:
                    self._emit(reply)
                    return
            self._emit(parse(self._thing, topic, payload))
        except Exception:
            log.exception("mqtt: on_message failed")

    def _emit(self, event: Event) -> None:
        # Under the lock, so that once stop() has set _stopped no event is being delivered.
        # on_event only queues the event, so holding the lock here is cheap.
        with self._lock:
            if self._stopped:
                return
            try:
                self._on_event(event)
            except Exception:
                log.exception("mqtt: on_event raised for %s", type(event).__name__)


# --- settings -------------------------------------------------------------------------


def _check_settings(
    *,
    host: str,
    port: int,
    client_id: str,
    thing_name: str,
) -> None:
    if not host:
        raise MqttConfigError("mqtt: host must not be empty")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise MqttConfigError(f"mqtt: port must be an integer 1-65535, got {port!r}")
    # The same rules as the config's (upparat.aws.topics); keepalive is taken as the
    # config checked it.
    if not topics.is_client_id(client_id):
        raise MqttConfigError(
            f"mqtt: client_id must be 1-128 bytes (AWS IoT limit), got {len(client_id)} characters"
        )
    if not topics.is_thing_name(thing_name):
        raise MqttConfigError(
            f"mqtt: thing_name must match {topics.THING_NAME_PATTERN} (AWS IoT), got {thing_name!r}"
        )


def _tls_context(
    *,
    cafile: StrPath | None,
    certfile: StrPath | None,
    keyfile: StrPath | None,
    alpn: Sequence[str] | None,
    port: int,
) -> ssl.SSLContext | None:
    """The TLS context for mutual TLS, or None for plain TCP. Never reads a password."""
    given = {"cafile": cafile, "certfile": certfile, "keyfile": keyfile}
    missing = [name for name, path in given.items() if not path]
    if len(missing) == 3:
        if alpn:
            raise MqttConfigError("mqtt: alpn needs TLS; set cafile, certfile and keyfile too")
        return None
    if missing:
        raise MqttConfigError(
            "mqtt: TLS needs cafile, certfile and keyfile together; missing: "
            f"{', '.join(missing)} (set all three, or none for plain TCP)"
        )
    # Narrowing for mypy: `missing` is empty, so all three are set.
    assert cafile
    assert certfile
    assert keyfile
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(cafile))
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise MqttConfigError(
            f"mqtt: cafile {os.fspath(cafile)!r} is not readable PEM CA certificates: {_why(err)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A password callback that gives nothing: an encrypted key fails here instead of
        # OpenSSL prompting on a terminal the daemon does not have.
        context.load_cert_chain(os.fspath(certfile), os.fspath(keyfile), password=_no_password)
    except (OSError, ValueError) as err:
        raise MqttConfigError(
            f"mqtt: certfile {os.fspath(certfile)!r} with keyfile {os.fspath(keyfile)!r} cannot "
            f"be loaded: {_why(err)} (PEM, unencrypted key, matching the certificate?)"
        ) from None
    protocols = alpn_protocols(port, alpn)
    if protocols:
        context.set_alpn_protocols(protocols)
    return context


def alpn_protocols(port: int, alpn: Sequence[str] | None) -> list[str]:
    """The ALPN protocols to offer: `alpn` as given, else `x-amzn-mqtt-ca` on port 443 only."""
    if alpn is not None:
        return list(alpn)
    return [AWS_ALPN_PROTOCOL] if port == AWS_ALPN_PORT else []


def _no_password() -> bytes:
    return b""


def _why(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
