"""Out-of-process control of a running jobs emulator, over MQTT on the same broker.

Owns the control protocol: a request `{"requestId", "replyTo", "args"}` on
`<prefix>/control/<verb>` (prefix `upparat-emulator` by default) is answered on its
`replyTo` topic (which must lie under `<prefix>/reply/`) with
`{"requestId", "ok": true, "result": ...}` or `{"requestId", "ok": false, "error": "..."}`.
`EmulatorControl` is the client side; `serve_control` the emulator side. No job rule lives here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from upparat.emulator.model import EmulatorError
from upparat.emulator.presign import MAX_EXPIRES_IN
from upparat.emulator.shadow import PACKAGE_SHADOW
from upparat.emulator.wire import ExecutionStatus, JsonObject, JsonValue

if TYPE_CHECKING:
    from upparat.emulator.server import JobsEmulator


def no_delay(client: Client) -> None:
    """Disable Nagle: an answer written right after a PUBACK would otherwise wait ~40 ms
    for the peer's delayed ACK on every request."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


log = logging.getLogger("upparat.emulator.control")

DEFAULT_PREFIX = "upparat-emulator"

VERBS = (
    "ping",
    "create-job",
    "cancel-job",
    "cancel-execution",
    "delete-job",
    "describe",
    "list",
    "pending",
    "history",
    "inject-fault",
    "clear-faults",
    "pause",
    "resume",
    "check-timeouts",
    "shadow-get",
    "shadow-update",
    "shadow-history",
    "inject-shadow-fault",
)


# ---- emulator side ---------------------------------------------------------------------


def serve_control(emulator: JobsEmulator, topic: str, payload: bytes) -> None:
    """Answer one control request; a malformed one is logged (and answered if possible)."""
    verb = topic.rsplit("/", 1)[-1]
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as e:
        log.warning("control %s: payload is not JSON (%s); ignored", verb, e)
        return
    if not isinstance(body, dict):
        log.warning("control %s: payload is not a JSON object; ignored", verb)
        return
    reply_to = body.get("replyTo")
    request_id = body.get("requestId")
    reply_base = f"{emulator.control_prefix}/reply/"
    if (
        not isinstance(reply_to, str)
        or not reply_to.startswith(reply_base)
        or "+" in reply_to
        or "#" in reply_to
    ):
        log.warning("control %s: replyTo must be a topic under %s; ignored", verb, reply_base)
        return
    reply: JsonObject = {"requestId": request_id if isinstance(request_id, str) else None}
    try:
        args = body.get("args") or {}
        if not isinstance(args, dict):
            raise EmulatorError("args must be a JSON object")
        reply["ok"] = True
        reply["result"] = dispatch(emulator, verb, args)
    except (EmulatorError, ValueError, TypeError, KeyError) as e:
        reply["ok"] = False
        reply["error"] = str(e) if not isinstance(e, KeyError) else f"missing argument {e}"
        reply.pop("result", None)
    emulator.send(reply_to, json.dumps(reply))


def dispatch(emulator: JobsEmulator, verb: str, args: Mapping[str, JsonValue]) -> JsonValue:
    """Run one control verb against the emulator and return its JSON result."""
    a = _Args(verb, args)
    match verb:
        case "ping":
            return {
                "clientId": emulator.client_id,
                "now": emulator.clock.now(),
                "jobs": len(emulator.list_jobs()),
                "s3Endpoint": emulator.s3_endpoint,
            }
        case "create-job":
            document = a.obj("document")
            timeout = a.opt_int("inProgressTimeoutMinutes")
            retries = a.opt_obj("retries")
            job = emulator.create_job(
                a.text("jobId"),
                document,
                a.texts("targets"),
                presigned_expires_in=a.opt_int("presignedExpiresIn") or MAX_EXPIRES_IN,
                in_progress_timeout_minutes=timeout,
                retries=None if retries is None else _retry_counts(retries),
            )
            return _job_info(emulator, job.job_id)
        case "cancel-job":
            emulator.cancel_job(a.text("jobId"), force=a.flag("force"))
            return _job_info(emulator, a.text("jobId"))
        case "cancel-execution":
            emulator.cancel_execution(a.text("jobId"), a.text("thing"), force=a.flag("force"))
            return emulator.describe(a.text("jobId"), a.text("thing")).to_json()
        case "delete-job":
            emulator.delete_job(a.text("jobId"), force=a.flag("force"))
            return {"deleted": a.text("jobId")}
        case "describe":
            found = emulator.describe(a.text("jobId"), a.text("thing")).to_json()
            found["jobDocument"] = emulator.job(a.text("jobId")).document_json()
            return found
        case "list":
            return [info.to_json() for info in emulator.list_jobs()]
        case "pending":
            return [e.to_json() for e in emulator.pending(a.text("thing"))]
        case "history":
            operation = a.opt_text("operation") or "update"
            return [
                h.to_json()
                for h in emulator.history(
                    job_id=a.opt_text("jobId"),
                    thing=a.opt_text("thing"),
                    operation=None if operation == "all" else operation,
                )
            ]
        case "inject-fault":
            emulator.inject_fault(
                a.text("code"),
                a.opt_int("count") or 1,
                job_id=a.opt_text("jobId"),
                thing=a.opt_text("thing"),
                operation=a.opt_text("operation") or "update",
            )
            return {"injected": a.text("code")}
        case "clear-faults":
            emulator.clear_faults()
            return {}
        case "pause":
            emulator.pause(drop=a.flag("drop"))
            return {"paused": "drop" if a.flag("drop") else "hold"}
        case "resume":
            emulator.resume()
            return {}
        case "check-timeouts":
            return {"timedOut": emulator.check_timeouts()}
        case "shadow-get":
            # null: the thing has no such shadow (GetThingShadow's 404).
            return emulator.shadow(a.text("thing"), a.opt_text("name") or PACKAGE_SHADOW)
        case "shadow-update":
            return emulator.update_shadow(
                a.text("thing"), a.obj("document"), a.opt_text("name") or PACKAGE_SHADOW
            )
        case "inject-shadow-fault":
            code = a.opt_int("code")
            if code is None:
                raise EmulatorError("inject-shadow-fault: code must be 429 or 500")
            emulator.inject_shadow_fault(
                code,
                a.opt_int("count") or 1,
                thing=a.opt_text("thing"),
                operation=a.opt_text("operation"),
            )
            return {"injected": code}
        case "shadow-history":
            return [
                h.to_json()
                for h in emulator.shadow_history(a.opt_text("thing"), a.opt_text("name"))
            ]
        case _:
            raise EmulatorError(f"unknown control verb {verb!r}; known: {', '.join(VERBS)}")


def _job_info(emulator: JobsEmulator, job_id: str) -> JsonObject:
    for info in emulator.list_jobs():
        if info.job.job_id == job_id:
            return info.to_json()
    raise EmulatorError(f"job {job_id} does not exist")


class _Args:
    def __init__(self, verb: str, args: Mapping[str, JsonValue]) -> None:
        self._verb = verb
        self._args = args

    def _fail(self, name: str, what: str) -> EmulatorError:
        return EmulatorError(f"{self._verb}: {name} must be {what}, got {self._args.get(name)!r}")

    def text(self, name: str) -> str:
        value = self._args.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        return None if self._args.get(name) is None else self.text(name)

    def opt_int(self, name: str) -> int | None:
        value = self._args.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer")
        return value

    def flag(self, name: str) -> bool:
        value = self._args.get(name, False)
        if not isinstance(value, bool):
            raise self._fail(name, "true or false")
        return value

    def obj(self, name: str) -> JsonObject:
        value = self._args.get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "a JSON object")
        return value

    def opt_obj(self, name: str) -> JsonObject | None:
        return None if self._args.get(name) is None else self.obj(name)

    def texts(self, name: str) -> list[str]:
        value = self._args.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "a list of strings")
        return [v for v in value if isinstance(v, str)]


def _retry_counts(retries: JsonObject) -> dict[str, int]:
    """{failureType: numberOfRetries}; the model checks names and ranges."""
    counts: dict[str, int] = {}
    for kind, count in retries.items():
        if not isinstance(count, int) or isinstance(count, bool):
            raise EmulatorError(f"create-job: retries.{kind} must be an integer, got {count!r}")
        counts[kind] = count
    return counts


# ---- client side ----------------------------------------------------------------------


class EmulatorControl:
    """Drive a jobs emulator running in another process, through the broker it serves.

    Methods mirror `JobsEmulator` but take and return JSON (dicts), like the CLI.
    Raises EmulatorError when the emulator refuses a call, TimeoutError when it does
    not answer, ConnectionError when there is no broker.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.timeout = timeout
        self.client_id = f"upparat-emulator-ctl-{secrets.token_hex(6)}"
        self._reply_base = f"{prefix}/reply/{self.client_id}"
        self._cond = threading.Condition()
        self._replies: dict[str, JsonObject] = {}
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._client: Client | None = None

    def connect(self) -> EmulatorControl:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise ConnectionError(
                f"emulator control: no MQTT broker at {self.host}:{self.port} ({e})"
            ) from None
        self._client = client
        client.loop_start()
        if not self._subscribed.wait(self.timeout):
            self.close()
            raise ConnectionError(
                f"emulator control: the broker at {self.host}:{self.port} did not accept"
                f" our subscription within {self.timeout} s"
            )
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> EmulatorControl:
        return self.connect()

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
        if not reason_code.is_failure:
            no_delay(client)
            _, self._sub_mid = client.subscribe(f"{self._reply_base}/#", qos=1)

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid == self._sub_mid and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):
            return
        if isinstance(body, dict) and isinstance(body.get("requestId"), str):
            with self._cond:
                self._replies[body["requestId"]] = body
                self._cond.notify_all()

    def call(
        self, verb: str, args: Mapping[str, JsonValue] | None = None, timeout: float | None = None
    ) -> JsonValue:
        """Send one control request and wait for its answer."""
        client = self._client
        if client is None:
            raise RuntimeError("EmulatorControl.call: connect() first")
        timeout = self.timeout if timeout is None else timeout
        request_id = secrets.token_hex(8)
        topic = f"{self.prefix}/control/{verb}"
        body = {
            "requestId": request_id,
            "replyTo": f"{self._reply_base}/{request_id}",
            "args": dict(args or {}),
        }
        client.publish(topic, json.dumps(body), qos=1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"emulator control: no answer on {topic} within {timeout} s: is"
                        f" `python -m upparat.emulator --host {self.host} --port {self.port}`"
                        " running on that broker?"
                    )
                self._cond.wait(remaining)
            reply = self._replies.pop(request_id)
        if reply.get("ok") is not True:
            raise EmulatorError(str(reply.get("error", "the emulator refused the call")))
        return reply.get("result")

    def wait_ready(self, timeout: float = 10.0) -> JsonObject:
        """Ping until the emulator answers (it answers once it is subscribed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _obj(
                    self.call("ping", timeout=min(0.5, max(0.05, deadline - time.monotonic())))
                )
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"emulator control: no jobs emulator answered on {self.host}:{self.port}"
                        f" (prefix {self.prefix}) within {timeout} s"
                    ) from None

    def create_job(
        self,
        job_id: str,
        document: Mapping[str, object],
        targets: Iterable[str],
        presigned_expires_in: int = MAX_EXPIRES_IN,
        in_progress_timeout_minutes: int | None = None,
        retries: Mapping[str, int] | None = None,
    ) -> JsonObject:
        if isinstance(targets, str):
            targets = [targets]
        return _obj(
            self.call(
                "create-job",
                {
                    "jobId": job_id,
                    "document": _json_object(document),
                    "targets": list(targets),
                    "presignedExpiresIn": presigned_expires_in,
                    "inProgressTimeoutMinutes": in_progress_timeout_minutes,
                    "retries": None if retries is None else dict(retries),
                },
            )
        )

    def cancel_job(self, job_id: str, force: bool = False) -> JsonObject:
        return _obj(self.call("cancel-job", {"jobId": job_id, "force": force}))

    def cancel_execution(self, job_id: str, thing: str, force: bool = False) -> JsonObject:
        return _obj(
            self.call("cancel-execution", {"jobId": job_id, "thing": thing, "force": force})
        )

    def delete_job(self, job_id: str, force: bool = False) -> None:
        self.call("delete-job", {"jobId": job_id, "force": force})

    def describe(self, job_id: str, thing: str) -> JsonObject:
        return _obj(self.call("describe", {"jobId": job_id, "thing": thing}))

    def list_jobs(self) -> list[JsonObject]:
        return [_obj(v) for v in _list(self.call("list"))]

    def pending(self, thing: str) -> list[JsonObject]:
        return [_obj(v) for v in _list(self.call("pending", {"thing": thing}))]

    def history(
        self, job_id: str | None = None, thing: str | None = None, operation: str = "update"
    ) -> list[JsonObject]:
        """operation: update (default), get-pending, start-next, describe, unknown or all."""
        args: JsonObject = {"jobId": job_id, "thing": thing, "operation": operation}
        return [_obj(v) for v in _list(self.call("history", args))]

    def inject_fault(
        self,
        code: str,
        count: int = 1,
        *,
        job_id: str | None = None,
        thing: str | None = None,
        operation: str = "update",
    ) -> None:
        self.call(
            "inject-fault",
            {"code": code, "count": count, "jobId": job_id, "thing": thing, "operation": operation},
        )

    def clear_faults(self) -> None:
        self.call("clear-faults")

    def pause(self, drop: bool = False) -> None:
        self.call("pause", {"drop": drop})

    def resume(self) -> None:
        self.call("resume")

    def check_timeouts(self) -> int:
        result = _obj(self.call("check-timeouts"))
        count = result.get("timedOut")
        return count if isinstance(count, int) else 0

    def shadow(self, thing: str, name: str = PACKAGE_SHADOW) -> JsonObject | None:
        """The named shadow as GetThingShadow returns it, or None when there is none."""
        found = self.call("shadow-get", {"thing": thing, "name": name})
        return None if found is None else _obj(found)

    def update_shadow(
        self, thing: str, document: Mapping[str, object], name: str = PACKAGE_SHADOW
    ) -> JsonObject:
        """UpdateThingShadow from the cloud side; EmulatorError with the code on a rejection."""
        return _obj(
            self.call(
                "shadow-update",
                {"thing": thing, "name": name, "document": _json_object(document)},
            )
        )

    def inject_shadow_fault(
        self,
        code: int,
        count: int = 1,
        *,
        thing: str | None = None,
        operation: str | None = None,
    ) -> None:
        """Reject the next `count` named-shadow requests with 429 or 500."""
        self.call(
            "inject-shadow-fault",
            {"code": code, "count": count, "thing": thing, "operation": operation},
        )

    def shadow_history(self, thing: str | None = None, name: str | None = None) -> list[JsonObject]:
        return [_obj(v) for v in _list(self.call("shadow-history", {"thing": thing, "name": name}))]

    def wait_for(
        self, predicate: Callable[[], JsonValue], timeout: float = 5.0, interval: float = 0.05
    ) -> JsonValue:
        """Poll predicate() until it is truthy; EmulatorError from it counts as not yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except EmulatorError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator control: condition not met within {timeout} s")
            time.sleep(interval)

    def wait_for_status(
        self,
        job_id: str,
        thing: str,
        *statuses: ExecutionStatus | str,
        timeout: float = 5.0,
    ) -> JsonObject:
        """Poll until the execution has one of `statuses` (default: any terminal one)."""
        wanted = {ExecutionStatus(s) for s in statuses}
        last: list[JsonObject] = []

        def check() -> JsonValue:
            found = self.describe(job_id, thing)
            last[:] = [found]
            status = ExecutionStatus(found["status"])
            ok = status in wanted if wanted else status.terminal
            return found if ok else None

        try:
            return _obj(self.wait_for(check, timeout))
        except TimeoutError:
            seen = last[0]["status"] if last else "absent"
            raise TimeoutError(
                f"emulator control: job {job_id} on {thing} is {seen} after {timeout} s, expected"
                f" {', '.join(sorted(s.value for s in wanted)) or 'a terminal status'}"
            ) from None


def _json_object(document: Mapping[str, object]) -> JsonObject:
    try:
        value: JsonValue = json.loads(json.dumps(dict(document), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise EmulatorError(f"create_job: the job document is not JSON: {e}") from None
    return _obj(value)


def _obj(value: JsonValue) -> JsonObject:
    if not isinstance(value, dict):
        raise EmulatorError(f"emulator control: expected a JSON object, got {value!r}")
    return value


def _list(value: JsonValue) -> list[JsonValue]:
    if not isinstance(value, list):
        raise EmulatorError(f"emulator control: expected a JSON list, got {value!r}")
    return value
