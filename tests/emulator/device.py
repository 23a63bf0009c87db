"""A tiny paho device for emulator tests: publish requests, collect answers and notifications.

It plays the device side of the AWS IoT Jobs MQTT API for one thing, with no job logic.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from types import TracebackType
from typing import Any

import attrs
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from upparat.emulator.control import no_delay

TIMEOUT = 3.0
_ids = itertools.count(1)


@attrs.frozen(kw_only=True)
class Message:
    topic: str
    suffix: str  # topic after $aws/things/<thing>/jobs/
    body: dict[str, Any]


class Device:
    def __init__(
        self,
        port: int,
        thing: str = "dev-1",
        host: str = "127.0.0.1",
        *,
        shadow: str | None = None,
    ) -> None:
        """`shadow`: talk to that named shadow of the thing instead of its jobs topics."""
        self.thing = thing
        self.prefix = (
            f"$aws/things/{thing}/jobs"
            if shadow is None
            else f"$aws/things/{thing}/shadow/name/{shadow}"
        )
        self._notifications = (
            ("notify", "notify-next") if shadow is None else ("update/documents", "update/delta")
        )
        self._messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-device-{thing}-{next(_ids)}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(TIMEOUT):
            self.close()
            raise TimeoutError(f"test device {thing}: no SUBACK from the broker on port {port}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        no_delay(client)
        client.subscribe(f"{self.prefix}/#", qos=1)

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        suffix = message.topic[len(self.prefix) + 1 :]
        answer = suffix.endswith(("/accepted", "/rejected")) or suffix in self._notifications
        if not answer:
            return  # our own requests, echoed by the broker
        body = json.loads(message.payload)
        with self._cond:
            self._messages.append(Message(topic=message.topic, suffix=suffix, body=body))
            self._cond.notify_all()

    # ---- sending -----------------------------------------------------------------------

    def publish(self, suffix: str, payload: dict[str, Any] | bytes | str) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        self._client.publish(f"{self.prefix}/{suffix}", data, qos=1).wait_for_publish(TIMEOUT)

    def publish_raw(self, topic: str, payload: bytes) -> None:
        """Publish anywhere (e.g. the emulator's control topics)."""
        self._client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)

    def request(
        self, suffix: str, payload: dict[str, Any] | bytes | str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Send a request; return ("accepted" | "rejected", body) of its answer.

        A dict payload gets a fresh clientToken (unless it has one) to match the answer;
        raw payloads are matched to the first answer on the topic after sending.
        """
        if payload is None:
            payload = {}
        token: str | None = None
        if isinstance(payload, dict):
            if "clientToken" not in payload:
                payload = {**payload, "clientToken": f"tok-{next(_ids)}"}
            token = payload["clientToken"] if isinstance(payload["clientToken"], str) else None
        start = self.mark()
        self.publish(suffix, payload)

        def match(m: Message) -> bool:
            if m.suffix not in (f"{suffix}/accepted", f"{suffix}/rejected"):
                return False
            return token is None or m.body.get("clientToken") == token

        found = self.wait(match, since=start)
        return found.suffix.rsplit("/", 1)[1], found.body

    def accepted(self, suffix: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        outcome, body = self.request(suffix, payload)
        assert outcome == "accepted", f"{suffix} rejected: {body}"
        return body

    def rejected(
        self, suffix: str, payload: dict[str, Any] | bytes | str | None = None
    ) -> dict[str, Any]:
        outcome, body = self.request(suffix, payload)
        assert outcome == "rejected", f"{suffix} accepted: {body}"
        return body

    def update(self, job_id: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return self.request(f"{job_id}/update", fields)

    def barrier(self) -> None:
        """Return once everything the emulator published before now has arrived here."""
        self.accepted("get")

    # ---- receiving ---------------------------------------------------------------------

    def checkpoint(self) -> int:
        """A mark after everything the emulator published so far has arrived."""
        self.barrier()
        return self.mark()

    def mark(self) -> int:
        with self._cond:
            return len(self._messages)

    def messages(self, suffix: str | None = None, since: int = 0) -> list[Message]:
        with self._cond:
            return [m for m in self._messages[since:] if suffix is None or m.suffix == suffix]

    def bodies(self, suffix: str, since: int = 0) -> list[dict[str, Any]]:
        return [m.body for m in self.messages(suffix, since)]

    def wait(self, match: Any, since: int = 0, timeout: float = TIMEOUT) -> Message:
        """First message after `since` for which match(message) is true (or suffix == match)."""
        test = (lambda m: m.suffix == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self._messages[since:]:
                    if test(m):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.suffix, m.body) for m in self._messages[since:]]
                    raise TimeoutError(f"no matching message within {timeout} s; seen: {seen}")
                self._cond.wait(remaining)
