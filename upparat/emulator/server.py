"""The jobs emulator process side: one paho MQTT client that serves every thing's jobs topics.

Owns the MQTT connection, the lock around the model, fault injection, pause, the request
history, the timeout ticker and the state file. Every job rule lives in `model`; this
module only feeds it requests and publishes what it returns. One bad message never
stops it: it is logged and answered with the AWS error code.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar, assert_never

import attrs
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from upparat.emulator.clock import Clock, SystemClock
from upparat.emulator.control import no_delay, serve_control
from upparat.emulator.model import EmulatorError, Execution, Job, JobsModel, Publish, Result
from upparat.emulator.presign import MAX_EXPIRES_IN, DefaultSigner, Signer, endpoint_problem
from upparat.emulator.shadow import (
    FAULT_CODES as SHADOW_FAULT_CODES,
)
from upparat.emulator.shadow import (
    PACKAGE_SHADOW,
    SHADOW_FILTERS,
    ShadowOp,
    ShadowRequest,
    ShadowResult,
    ShadowStore,
    parse_topic,
)
from upparat.emulator.shadow import reject as reject_shadow
from upparat.emulator.wire import (
    BadRequest,
    Describe,
    ErrorCode,
    ExecutionStatus,
    GetPending,
    Ignored,
    JobId,
    JsonObject,
    JsonValue,
    Operation,
    Request,
    StartNext,
    ThingName,
    Update,
    parse,
)

log = logging.getLogger("upparat.emulator")

T = TypeVar("T")

JOBS_FILTER = "$aws/things/+/jobs/#"  # explicit: mosquitto matches no $ topic with a bare #
DEFAULT_PREFIX = "upparat-emulator"
HISTORY_LIMIT = 10_000
FAULT_CODES = frozenset(
    {ErrorCode.REQUEST_THROTTLED, ErrorCode.INTERNAL_ERROR, ErrorCode.TERMINAL_STATE_REACHED}
)

Outcome = Literal["accepted", "rejected", "dropped"]


@attrs.frozen(kw_only=True)
class HistoryEntry:
    """One request the emulator received and what it answered."""

    seq: int
    at: float  # emulator clock, epoch seconds
    thing: str
    job_id: str | None
    operation: str  # an Operation value, or "unknown" for a topic that maps to no API
    topic: str
    payload: str  # as received (decoded leniently, cut at 8 KiB)
    request: JsonValue  # the payload parsed, or None when it was not JSON
    result: Outcome
    code: str | None  # the rejection code
    status: str | None  # the status an update asked for
    injected: bool = False
    execution_status: str | None = None  # the execution after the request
    version_number: int | None = None

    def to_json(self) -> JsonObject:
        return {
            "seq": self.seq,
            "at": self.at,
            "thing": self.thing,
            "jobId": self.job_id,
            "operation": self.operation,
            "topic": self.topic,
            "payload": self.payload,
            "request": self.request,
            "result": self.result,
            "code": self.code,
            "status": self.status,
            "injected": self.injected,
            "executionStatus": self.execution_status,
            "versionNumber": self.version_number,
        }


@attrs.frozen(kw_only=True)
class ShadowHistoryEntry:
    """One named-shadow request the emulator received and what it answered."""

    seq: int
    at: float  # emulator clock, epoch seconds
    thing: str
    name: str
    operation: str  # get, update, delete (control updates: "update" with source "control")
    source: str  # "mqtt" or "control"
    payload: str  # as received (decoded leniently, cut at 8 KiB)
    request: JsonValue  # the payload parsed, or None when it was not JSON
    result: Outcome
    code: int | None  # the rejection code (400, 404, 409, 413, ...)
    message: str | None
    version: int | None  # the shadow's version after the request

    def to_json(self) -> JsonObject:
        return {
            "seq": self.seq,
            "at": self.at,
            "thing": self.thing,
            "name": self.name,
            "operation": self.operation,
            "source": self.source,
            "payload": self.payload,
            "request": self.request,
            "result": self.result,
            "code": self.code,
            "message": self.message,
            "version": self.version,
        }


@attrs.frozen(kw_only=True)
class JobInfo:
    job: Job
    status: str  # IN_PROGRESS, CANCELED or COMPLETED (every execution terminal)
    executions: tuple[Execution, ...]

    def to_json(self) -> JsonObject:
        return {
            "jobId": self.job.job_id,
            "status": self.status,
            "document": self.job.document_json(),
            "targets": list[JsonValue](self.job.targets),
            "presignedExpiresIn": self.job.presigned_expires_in,
            "inProgressTimeoutMinutes": self.job.in_progress_timeout_minutes,
            "createdAt": self.job.created_at,
            "executions": [e.to_json() for e in self.executions],
        }


@attrs.define(kw_only=True)
class _Fault:
    code: ErrorCode
    remaining: int
    job_id: str | None
    thing: str | None
    operation: Operation | None  # None: any operation


@attrs.define(kw_only=True)
class _ShadowFault:
    code: int
    remaining: int
    thing: str | None
    operation: ShadowOp | None  # None: any operation


class JobsEmulator:
    """A stand-in for the AWS IoT Jobs service on an MQTT broker, for any thing name.

    `seconds_per_minute` scales every timeout given in minutes (stepTimeoutInMinutes,
    in-progress timeout): 60 is AWS, 1 makes a 1-minute timeout last 1 s. It scales
    pre-signed URL lifetimes alike (the signer gets the scaled seconds, at least 1).
    `tick_interval` is how often a background thread fires timeouts (None: only when
    `check_timeouts()` is called, e.g. after advancing a FakeClock).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        clock: Clock | None = None,
        signer: Signer | None = None,
        seconds_per_minute: float = 60.0,
        tick_interval: float | None = 0.2,
        state_file: str | os.PathLike[str] | None = None,
        control_prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        strict_transitions: bool = False,
        keepalive: int = 30,
        s3_endpoint: str | None = None,
    ) -> None:
        if seconds_per_minute <= 0:
            raise ValueError(f"seconds_per_minute must be > 0, got {seconds_per_minute}")
        if s3_endpoint is not None and endpoint_problem(s3_endpoint) is not None:
            raise ValueError(endpoint_problem(s3_endpoint))
        s3_endpoint = None if s3_endpoint is None else s3_endpoint.rstrip("/")
        self.host = host
        self.port = port
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.signer: Signer = signer if signer is not None else DefaultSigner(self.clock)
        self.tick_interval = tick_interval
        self.state_file = Path(state_file) if state_file is not None else None
        self.control_prefix = control_prefix
        self.client_id = client_id or f"upparat-emulator-{secrets.token_hex(4)}"
        self.keepalive = keepalive
        self._model = JobsModel(
            minute=seconds_per_minute,
            strict_transitions=strict_transitions,
            s3_endpoint=s3_endpoint,
        )
        self._cond = threading.Condition(threading.RLock())
        self._history: collections.deque[HistoryEntry] = collections.deque(maxlen=HISTORY_LIMIT)
        self._published: collections.deque[tuple[float, Publish]] = collections.deque(
            maxlen=HISTORY_LIMIT
        )
        self._seq = 0
        self._shadows = ShadowStore()
        self._shadow_history: collections.deque[ShadowHistoryEntry] = collections.deque(
            maxlen=HISTORY_LIMIT
        )
        self._faults: list[_Fault] = []
        self._shadow_faults: list[_ShadowFault] = []
        self._paused: Literal["hold", "drop"] | None = None
        self._held: list[tuple[str, bytes]] = []
        self._client: Client | None = None
        self._subscribe_mid: int | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.state_file is not None and self.state_file.exists():
            self._load_state(self.state_file)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, and return once requests are being served."""
        if self._client is not None:
            raise RuntimeError("JobsEmulator.start: already started")
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client = client
        self._stopping.clear()
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise ConnectionError(
                f"jobs emulator: could not connect and subscribe to the broker at"
                f" {self.host}:{self.port} within {timeout} s: is mosquitto running there?"
            )
        if self.tick_interval is not None:
            self._ticker = threading.Thread(
                target=self._tick, name="upparat-emulator-ticker", daemon=True
            )
            self._ticker.start()
        log.info(
            "serving AWS IoT Jobs for any thing on %s:%d; control on %s/control/<verb>",
            self.host,
            self.port,
            self.control_prefix,
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._ready.clear()
        with self._cond:
            self._save_state()

    def __enter__(self) -> JobsEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def s3_endpoint(self) -> str | None:
        """Where pre-signed S3 objects are served from (None: the real S3 host)."""
        return self._model.s3_endpoint

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected()

    @property
    def serving(self) -> bool:
        """Connected and subscribed: requests published now will be answered."""
        return self.connected and self._ready.is_set()

    @property
    def held_requests(self) -> int:
        """Requests waiting for resume() (see pause())."""
        with self._cond:
            return len(self._held)

    # ---- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        no_delay(client)
        # Subscribe on every connect: the session is clean, so a broker restart forgets us.
        _, mid = client.subscribe(
            [
                (JOBS_FILTER, 1),
                *((f, 1) for f in SHADOW_FILTERS),
                (f"{self.control_prefix}/control/+", 1),
            ]
        )
        self._subscribe_mid = mid

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused the subscriptions: %s", ", ".join(failed))
            return
        log.info("connected to %s:%d and subscribed to %s", self.host, self.port, JOBS_FILTER)
        self._ready.set()

    def _on_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            if message.topic.startswith(f"{self.control_prefix}/control/"):
                serve_control(self, message.topic, bytes(message.payload))
                return
            self.process(message.topic, bytes(message.payload))
        except Exception:
            # A bug must not kill paho's network thread, or the emulator goes deaf.
            log.exception("internal error handling a message on %r", message.topic)

    # ---- requests --------------------------------------------------------------------

    def process(self, topic: str, payload: bytes) -> None:
        """Handle one inbound message as if it came from the broker."""
        with self._cond:
            shadow_request = parse_topic(topic)
            if shadow_request is not None:
                self._process_shadow(shadow_request, topic, payload)
                return
            parsed = parse(topic, payload)
            if isinstance(parsed, Ignored):
                return
            if self._paused == "hold":
                self._held.append((topic, payload))
                return
            now = self.clock.now()
            if self._paused == "drop":
                self._record(parsed, topic, payload, now, "dropped", False)
                log.info("paused: dropped a request on %s", topic)
                return
            fault = None if isinstance(parsed, BadRequest) else self._take_fault(parsed)
            if fault is not None:
                assert not isinstance(parsed, BadRequest)
                result = self._model.reject(
                    parsed, fault.code, f"injected fault: {fault.code.value}", now
                )
            else:
                result = self._model.handle(parsed, now, self.signer)
            self._publish_all(result.publishes)
            self._record(parsed, topic, payload, now, result, fault is not None)
            self._log_result(parsed, result, fault is not None)
            if result.code is None and isinstance(parsed, Update | StartNext):
                self._save_state()
            self._cond.notify_all()

    def _process_shadow(self, request: ShadowRequest, topic: str, payload: bytes) -> None:
        if self._paused == "hold":
            self._held.append((topic, payload))
            return
        now = self.clock.now()
        if self._paused == "drop":
            self._record_shadow(request, "mqtt", payload, now, None)
            log.info("paused: dropped a request on %s", topic)
            return
        fault = self._take_shadow_fault(request)
        if fault is not None:
            result = reject_shadow(request, payload, fault, SHADOW_FAULT_CODES[fault], now)
        else:
            result = self._shadows.handle(request, payload, now)
        self._publish_all(result.publishes)
        self._record_shadow(request, "mqtt", payload, now, result)
        if result.code is not None:
            log.warning(
                "shadow %s %s of %s rejected: %d %s",
                request.name,
                request.op.value,
                request.thing,
                result.code,
                result.message,
            )
        elif request.op is not ShadowOp.GET:
            log.info(
                "shadow %s of %s: %s, version %s",
                request.name,
                request.thing,
                request.op.value,
                result.version,
            )
            self._save_state()
        self._cond.notify_all()

    def _take_shadow_fault(self, request: ShadowRequest) -> int | None:
        for fault in self._shadow_faults:
            if fault.thing is not None and fault.thing != request.thing:
                continue
            if fault.operation is not None and fault.operation is not request.op:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._shadow_faults.remove(fault)
            return fault.code
        return None

    def _record_shadow(
        self,
        request: ShadowRequest,
        source: str,
        payload: bytes,
        now: float,
        result: ShadowResult | None,
    ) -> None:
        try:
            parsed: JsonValue = json.loads(payload) if payload.strip() else {}
        except (ValueError, RecursionError, UnicodeDecodeError):
            parsed = None
        outcome: Outcome = (
            "dropped" if result is None else "accepted" if result.code is None else "rejected"
        )
        self._seq += 1
        self._shadow_history.append(
            ShadowHistoryEntry(
                seq=self._seq,
                at=now,
                thing=request.thing,
                name=request.name,
                operation=request.op.value,
                source=source,
                payload=payload[:8192].decode("utf-8", errors="replace"),
                request=parsed,
                result=outcome,
                code=None if result is None else result.code,
                message=None if result is None else result.message,
                version=None if result is None else result.version,
            )
        )

    def _take_fault(self, request: Request) -> _Fault | None:
        operation = _operation(request)
        job_id = request.job_id if isinstance(request, Describe | Update) else None
        for fault in self._faults:
            if fault.operation is not None and fault.operation is not operation:
                continue
            if fault.job_id is not None and fault.job_id != job_id:
                continue
            if fault.thing is not None and fault.thing != request.thing:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def send(self, topic: str, body: str) -> None:
        """Publish one message outside the jobs protocol (control replies)."""
        client = self._client
        if client is not None:
            client.publish(topic, body, qos=1)

    def _publish_all(self, publishes: Iterable[Publish]) -> None:
        client = self._client
        now = self.clock.now()
        for item in publishes:
            self._published.append((now, item))
            if client is None:
                log.warning("not connected: dropped a message for %s", item.topic)
                continue
            client.publish(item.topic, item.body, qos=1)

    def _record(
        self,
        parsed: Request | BadRequest,
        topic: str,
        payload: bytes,
        now: float,
        result: Result | Literal["dropped"],
        injected: bool,
    ) -> None:
        try:
            request: JsonValue = json.loads(payload) if payload.strip() else {}
        except (ValueError, RecursionError):
            request = None
        if isinstance(parsed, BadRequest):
            operation = parsed.operation.value if parsed.operation else "unknown"
            job_id = parsed.job_id
        else:
            operation = _operation(parsed).value
            job_id = parsed.job_id if isinstance(parsed, Describe | Update) else None
        if isinstance(result, Result):
            outcome: Outcome = "accepted" if result.code is None else "rejected"
            code = None if result.code is None else result.code.value
            job_id = result.job_id if result.job_id is not None else job_id
            after = result.execution
        else:
            outcome, code, after = result, None, None
        if after is None and job_id is not None:
            after = self._model.executions.get((JobId(job_id), ThingName(parsed.thing)))
        self._seq += 1
        self._history.append(
            HistoryEntry(
                seq=self._seq,
                at=now,
                thing=parsed.thing,
                job_id=job_id,
                operation=operation,
                topic=topic,
                payload=payload[:8192].decode("utf-8", errors="replace"),
                request=request,
                result=outcome,
                code=code,
                status=parsed.status.value if isinstance(parsed, Update) else None,
                injected=injected,
                execution_status=None if after is None else after.status.value,
                version_number=None if after is None else after.version_number,
            )
        )

    def _log_result(self, parsed: Request | BadRequest, result: Result, injected: bool) -> None:
        what = (
            parsed.operation.value if isinstance(parsed, BadRequest) and parsed.operation else None
        ) or (_operation(parsed).value if not isinstance(parsed, BadRequest) else "request")
        where = (
            f"job {result.job_id} on {parsed.thing}" if result.job_id else f"thing {parsed.thing}"
        )
        if result.code is not None:
            log.warning(
                "%s %s rejected: %s%s",
                what,
                where,
                result.code.value,
                " (injected)" if injected else "",
            )
        elif isinstance(parsed, Update | StartNext) and result.execution is not None:
            log.info(
                "%s %s: %s version %d",
                what,
                where,
                result.execution.status.value,
                result.execution.version_number,
            )

    # ---- control API (any thread) -------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        document: Mapping[str, object],
        targets: Iterable[str],
        presigned_expires_in: int = MAX_EXPIRES_IN,
        in_progress_timeout_minutes: int | None = None,
        retries: Mapping[str, int] | None = None,
    ) -> Job:
        """Queue `document` as job `job_id` for each thing in `targets` (+ notify, notify-next)."""
        if isinstance(targets, str):
            targets = [targets]
        with self._cond:
            publishes = self._model.create_job(
                job_id,
                document,
                targets,
                self.clock.now(),
                self.signer,
                presigned_expires_in=presigned_expires_in,
                in_progress_timeout_minutes=in_progress_timeout_minutes,
                retries=retries,
            )
            self._changed(publishes)
            log.info(
                "created job %s for %s", job_id, ", ".join(self._model.jobs[JobId(job_id)].targets)
            )
            return self._model.jobs[JobId(job_id)]

    def cancel_job(self, job_id: str, force: bool = False) -> None:
        """QUEUED executions -> CANCELED; IN_PROGRESS ones too only with force (AWS CancelJob)."""
        with self._cond:
            self._changed(
                self._model.cancel_job(job_id, self.clock.now(), self.signer, force=force)
            )
            log.info("canceled job %s%s", job_id, " (force)" if force else "")

    def cancel_execution(self, job_id: str, thing: str, force: bool = False) -> None:
        with self._cond:
            self._changed(
                self._model.cancel_execution(
                    job_id, thing, self.clock.now(), self.signer, force=force
                )
            )
            log.info("canceled job %s on %s%s", job_id, thing, " (force)" if force else "")

    def delete_job(self, job_id: str, force: bool = False) -> None:
        """Forget the job and its executions (refused while IN_PROGRESS unless forced)."""
        with self._cond:
            self._changed(
                self._model.delete_job(job_id, self.clock.now(), self.signer, force=force)
            )
            log.info("deleted job %s", job_id)

    def check_timeouts(self) -> int:
        """Time out every execution whose timer ran out by the clock; returns how many."""
        with self._cond:
            publishes = self._model.expire(self.clock.now(), self.signer)
            count = sum(1 for p in publishes if p.topic.endswith("/notify"))
            if publishes:
                self._changed(publishes)
                log.info("timed out %d execution(s)", count)
            return count

    def _changed(self, publishes: list[Publish]) -> None:
        self._publish_all(publishes)
        self._save_state()
        self._cond.notify_all()

    def describe(self, job_id: str, thing: str) -> Execution:
        with self._cond:
            found = self._model.execution(JobId(job_id), ThingName(thing))
            if found is None:
                raise EmulatorError(f"job {job_id} has no execution on thing {thing}")
            return found

    def find(self, job_id: str, thing: str) -> Execution | None:
        with self._cond:
            return self._model.execution(JobId(job_id), ThingName(thing))

    def job(self, job_id: str) -> Job:
        with self._cond:
            found = self._model.jobs.get(JobId(job_id))
            if found is None:
                raise EmulatorError(f"job {job_id} does not exist")
            return found

    def list_jobs(self) -> list[JobInfo]:
        with self._cond:
            out = []
            for job in self._model.jobs.values():
                mine = tuple(
                    sorted(
                        (e for e in self._model.executions.values() if e.job_id == job.job_id),
                        key=lambda e: e.seq,
                    )
                )
                if job.canceled:
                    status = "CANCELED"
                elif all(e.status.terminal for e in mine):
                    status = "COMPLETED"
                else:
                    status = "IN_PROGRESS"
                out.append(JobInfo(job=job, status=status, executions=mine))
            return out

    def pending(self, thing: str) -> list[Execution]:
        with self._cond:
            return self._model.pending(ThingName(thing))

    def history(
        self,
        job_id: str | None = None,
        thing: str | None = None,
        operation: str | None = Operation.UPDATE.value,
    ) -> list[HistoryEntry]:
        """Requests received, oldest first; by default update requests only (operation=None: all)."""
        with self._cond:
            return [
                h
                for h in self._history
                if (job_id is None or h.job_id == job_id)
                and (thing is None or h.thing == thing)
                and (operation is None or h.operation == operation)
            ]

    def published(self, topic_suffix: str | None = None) -> list[Publish]:
        """What the emulator published (answers and notifications), oldest first."""
        with self._cond:
            return [
                p
                for _, p in self._published
                if topic_suffix is None or p.topic.endswith(topic_suffix)
            ]

    # ---- named shadows (control API, any thread) -----------------------------------------

    def shadow(self, thing: str, name: str = PACKAGE_SHADOW) -> JsonObject | None:
        """The shadow as GetThingShadow returns it (state incl. delta, metadata, version,
        timestamp), or None when the thing has no such shadow."""
        with self._cond:
            if self._shadows.get(thing, name) is None:
                return None
            request = ShadowRequest(
                thing=thing, name=name, op=ShadowOp.GET, topic=f"control:{thing}/{name}"
            )
            result = self._shadows.handle(request, b"", self.clock.now())
            return result.publishes[0].json()

    def update_shadow(
        self, thing: str, document: Mapping[str, object], name: str = PACKAGE_SHADOW
    ) -> JsonObject:
        """UpdateThingShadow from the cloud side (an operator, a test): the same rules and
        the same update/accepted, delta and documents messages as an MQTT update; a
        rejection raises EmulatorError with the code and message."""
        try:
            payload = json.dumps(dict(document), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise EmulatorError(f"update_shadow: the document is not JSON: {e}") from None
        request = ShadowRequest(
            thing=thing,
            name=name,
            op=ShadowOp.UPDATE,
            topic=f"$aws/things/{thing}/shadow/name/{name}/update",
        )
        if parse_topic(request.topic) is None:
            raise EmulatorError(
                f"update_shadow: thing {thing!r} or shadow name {name!r} is not valid"
            )
        with self._cond:
            now = self.clock.now()
            result = self._shadows.handle(request, payload, now)
            self._record_shadow(request, "control", payload, now, result)
            if result.code is not None:
                raise EmulatorError(f"update_shadow: {result.code} {result.message}")
            self._publish_all(result.publishes)
            self._save_state()
            self._cond.notify_all()
            return result.publishes[0].json()

    def inject_shadow_fault(
        self,
        code: int,
        count: int = 1,
        *,
        thing: str | None = None,
        operation: str | None = None,
    ) -> None:
        """Reject the next `count` matching named-shadow requests with 429 or 500."""
        if code not in SHADOW_FAULT_CODES:
            allowed = ", ".join(str(c) for c in sorted(SHADOW_FAULT_CODES))
            raise EmulatorError(f"inject_shadow_fault: code must be one of {allowed}, got {code}")
        if count < 1:
            raise EmulatorError(f"inject_shadow_fault: count must be >= 1, got {count}")
        try:
            op = None if operation in (None, "any") else ShadowOp(operation)
        except ValueError:
            raise EmulatorError(
                f"inject_shadow_fault: operation must be get, update, delete or any, got {operation!r}"
            ) from None
        with self._cond:
            self._shadow_faults.append(
                _ShadowFault(code=code, remaining=count, thing=thing, operation=op)
            )

    def shadow_history(
        self, thing: str | None = None, name: str | None = None
    ) -> list[ShadowHistoryEntry]:
        """Named-shadow requests received (MQTT and control updates), oldest first."""
        with self._cond:
            return [
                h
                for h in self._shadow_history
                if (thing is None or h.thing == thing) and (name is None or h.name == name)
            ]

    def inject_fault(
        self,
        code: ErrorCode | str,
        count: int = 1,
        *,
        job_id: str | None = None,
        thing: str | None = None,
        operation: Operation | str | None = Operation.UPDATE,
    ) -> None:
        """Reject the next `count` matching requests (updates by default) with `code`."""
        code = ErrorCode(code)
        if code not in FAULT_CODES:
            allowed = ", ".join(sorted(c.value for c in FAULT_CODES))
            raise EmulatorError(f"inject_fault: code must be one of {allowed}, got {code.value}")
        if count < 1:
            raise EmulatorError(f"inject_fault: count must be >= 1, got {count}")
        op = None if operation in (None, "any") else Operation(operation)
        with self._cond:
            self._faults.append(
                _Fault(code=code, remaining=count, job_id=job_id, thing=thing, operation=op)
            )

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()
            self._shadow_faults.clear()

    def pause(self, drop: bool = False) -> None:
        """Stop answering: hold requests until resume() (or, with drop, ignore them)."""
        with self._cond:
            self._paused = "drop" if drop else "hold"
            log.info("paused (%s)", self._paused)

    def resume(self) -> None:
        """Answer again; held requests are answered now, in arrival order."""
        with self._cond:
            self._paused = None
            held, self._held = self._held, []
            for topic, payload in held:
                self.process(topic, payload)
            log.info("resumed; answered %d held request(s)", len(held))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Block until predicate() is truthy (re-checked on every change); return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"jobs emulator: condition not met within {timeout} s")
                self._cond.wait(min(remaining, 0.1))

    def wait_for_status(
        self,
        job_id: str,
        thing: str,
        *statuses: ExecutionStatus | str,
        timeout: float = 5.0,
    ) -> Execution:
        """Block until the execution has one of `statuses` (default: any terminal one)."""
        wanted = {ExecutionStatus(s) for s in statuses}

        def check() -> Execution | None:
            found = self._model.execution(JobId(job_id), ThingName(thing))
            if found is None:
                return None
            ok = found.status in wanted if wanted else found.status.terminal
            return found if ok else None

        try:
            found = self.wait_for(check, timeout)
            assert found is not None
            return found
        except TimeoutError:
            now = self.find(job_id, thing)
            raise TimeoutError(
                f"jobs emulator: job {job_id} on {thing} is"
                f" {now.status.value if now else 'absent'} after {timeout} s, expected"
                f" {', '.join(sorted(s.value for s in wanted)) or 'a terminal status'}"
            ) from None

    # ---- timers and persistence ---------------------------------------------------------

    def _tick(self) -> None:
        assert self.tick_interval is not None
        while not self._stopping.wait(self.tick_interval):
            try:
                self.check_timeouts()
            except Exception:
                log.exception("internal error checking timeouts")

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            data = self._model.to_json()
            data["shadows"] = self._shadows.to_json()
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("could not write the state file %s: %s", self.state_file, e)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _load_state(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            self._model.load_json(data)
            self._shadows.load_json(data.get("shadows"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EmulatorError(
                f"jobs emulator: state file {path} is unreadable ({e}); move it away to start empty"
            ) from None
        log.info("loaded %d job(s) from %s", len(self._model.jobs), path)


def _operation(request: Request) -> Operation:
    match request:
        case GetPending():
            return Operation.GET_PENDING
        case StartNext():
            return Operation.START_NEXT
        case Describe():
            return Operation.DESCRIBE
        case Update():
            return Operation.UPDATE
        case _:
            assert_never(request)
