"""The AWS IoT Jobs device MQTT API as the service sees it: topics in, typed requests out.

Owns topic routing, defensive payload parsing (raw bytes become a typed request or a
typed `BadRequest` with the AWS error code, never an exception) and the identifiers,
statuses and error codes of the protocol. It holds no job state and does no I/O.
Reference: shared/AWS-IOT-JOBS.md (jobs-mqtt-api, jobs-api error response).
"""

from __future__ import annotations

import enum
import json
import re
import unicodedata
from typing import NewType, TypeAlias, assert_never

import attrs

from upparat.aws.topics import JOB_ID_RE as JOB_ID_RE  # re-exported: the one rule
from upparat.aws.topics import THING_NAME_RE as THING_NAME_RE

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"

JobId = NewType("JobId", str)
ThingName = NewType("ThingName", str)

#: status details, in the order the device sent them
Details: TypeAlias = tuple[tuple[str, str], ...]

MAX_PAYLOAD_BYTES = 128 * 1024  # broker limit for one MQTT message
MAX_CLIENT_TOKEN = 64
MAX_STEP_TIMEOUT_MINUTES = 10080  # 7 days
NEXT = "$next"

DETAIL_KEY_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
CLIENT_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,64}")
DIGITS_RE = re.compile(r"[0-9]{1,18}")


class ExecutionStatus(enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)


#: what a device may send in an update (everything else is set by the service)
DEVICE_STATUSES = frozenset(
    {
        ExecutionStatus.IN_PROGRESS,
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.REJECTED,
    }
)


class ErrorCode(enum.Enum):
    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


class Operation(enum.Enum):
    GET_PENDING = "get-pending"  # P/get
    START_NEXT = "start-next"  # P/start-next
    DESCRIBE = "describe"  # P/{jobId|$next}/get
    UPDATE = "update"  # P/{jobId}/update


def topic_prefix(thing: str) -> str:
    return f"$aws/things/{thing}/jobs"


@attrs.frozen(kw_only=True)
class GetPending:
    thing: ThingName
    topic: str
    client_token: str | None


@attrs.frozen(kw_only=True)
class StartNext:
    thing: ThingName
    topic: str
    client_token: str | None
    status_details: Details | None
    step_timeout_minutes: int | None


@attrs.frozen(kw_only=True)
class Describe:
    thing: ThingName
    topic: str
    client_token: str | None
    job_id: JobId | None  # None: $next
    execution_number: int | None
    include_document: bool


@attrs.frozen(kw_only=True)
class Update:
    thing: ThingName
    topic: str
    client_token: str | None
    job_id: JobId
    status: ExecutionStatus
    status_details: Details | None  # None: keep what the execution has
    expected_version: int | None
    execution_number: int | None
    include_state: bool
    include_document: bool
    step_timeout_minutes: int | None


Request: TypeAlias = GetPending | StartNext | Describe | Update


@attrs.frozen(kw_only=True)
class BadRequest:
    """A request the service rejects before looking at any job: who is at fault is the device."""

    topic: str  # the request topic; the answer goes to topic + "/rejected"
    thing: str
    operation: Operation | None  # None: the topic maps to no API
    job_id: str | None
    client_token: str | None
    code: ErrorCode
    message: str
    payload: JsonValue = None


@attrs.frozen(kw_only=True)
class Ignored:
    """Not a request: our own answers and notifications, or a topic outside the jobs tree."""

    reason: str


Parsed: TypeAlias = Request | BadRequest | Ignored


class _Invalid(Exception):
    """Internal to this module: a field failed validation (becomes a BadRequest)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(topic: str, payload: bytes) -> Parsed:
    """Route one inbound message; garbage becomes a BadRequest, never an exception."""
    levels = topic.split("/")
    if len(levels) < 4 or levels[0] != "$aws" or levels[1] != "things" or levels[3] != "jobs":
        return Ignored(reason="not under $aws/things/+/jobs")
    thing = levels[2]
    rest = levels[4:]
    if rest and rest[-1] in ("accepted", "rejected"):
        return Ignored(reason="an answer topic")
    if rest in (["notify"], ["notify-next"]):
        return Ignored(reason="a notification topic")

    operation: Operation | None
    job_id: str | None = None
    match rest:
        case ["get"]:
            operation = Operation.GET_PENDING
        case ["start-next"]:
            operation = Operation.START_NEXT
        case [j, "get"]:
            operation, job_id = Operation.DESCRIBE, j
        case [j, "update"]:
            operation, job_id = Operation.UPDATE, j
        case _:
            operation = None

    def bad(code: ErrorCode, message: str, token: str | None, body: JsonValue = None) -> BadRequest:
        return BadRequest(
            topic=topic,
            thing=thing,
            operation=operation,
            job_id=job_id,
            client_token=token,
            code=code,
            message=message,
            payload=body,
        )

    if operation is None:
        return bad(ErrorCode.INVALID_TOPIC, f"topic {topic!r} maps to no jobs API", None)
    if not THING_NAME_RE.fullmatch(thing):
        return bad(
            ErrorCode.INVALID_TOPIC,
            f"thing name {thing!r} must match [a-zA-Z0-9:_-]{{1,128}}",
            None,
        )
    if job_id is not None and not (
        JOB_ID_RE.fullmatch(job_id) or (job_id == NEXT and operation is Operation.DESCRIBE)
    ):
        return bad(
            ErrorCode.INVALID_TOPIC,
            f"job id {job_id!r} must match [a-zA-Z0-9_-]{{1,64}}"
            + (" ($next only with /get)" if job_id == NEXT else ""),
            None,
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        return bad(
            ErrorCode.INVALID_REQUEST,
            f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}",
            None,
        )
    try:
        body = _load_object(payload)
    except _Invalid as e:
        return bad(e.code, e.message, None)

    token_value = body.get("clientToken")
    token = token_value if isinstance(token_value, str) else None
    try:
        _check_client_token(token_value)
        fields = _Fields(body)
        thing_name = ThingName(thing)
        match operation:
            case Operation.GET_PENDING:
                return GetPending(thing=thing_name, topic=topic, client_token=token)
            case Operation.START_NEXT:
                return StartNext(
                    thing=thing_name,
                    topic=topic,
                    client_token=token,
                    status_details=fields.details("statusDetails"),
                    step_timeout_minutes=fields.step_timeout("stepTimeoutInMinutes"),
                )
            case Operation.DESCRIBE:
                assert job_id is not None
                return Describe(
                    thing=thing_name,
                    topic=topic,
                    client_token=token,
                    job_id=None if job_id == NEXT else JobId(job_id),
                    execution_number=fields.positive_int("executionNumber"),
                    include_document=fields.boolean("includeJobDocument", default=True),
                )
            case Operation.UPDATE:
                assert job_id is not None
                return Update(
                    thing=thing_name,
                    topic=topic,
                    client_token=token,
                    job_id=JobId(job_id),
                    status=fields.device_status("status"),
                    status_details=fields.details("statusDetails"),
                    expected_version=fields.version("expectedVersion"),
                    execution_number=fields.positive_int("executionNumber"),
                    include_state=fields.boolean("includeJobExecutionState", default=False),
                    include_document=fields.boolean("includeJobDocument", default=False),
                    step_timeout_minutes=fields.step_timeout("stepTimeoutInMinutes"),
                )
            case _:
                assert_never(operation)
    except _Invalid as e:
        return bad(e.code, e.message, token, body)


def _reject_constant(name: str) -> JsonValue:
    raise ValueError(f"{name} is not JSON")


def _load_object(payload: bytes) -> JsonObject:
    if not payload.strip():
        return {}  # AWS accepts an empty payload where every field is optional
    try:
        text = payload.decode("utf-8")
        value: JsonValue = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Invalid(ErrorCode.INVALID_JSON, f"payload is not UTF-8 JSON: {e}") from None
    if not isinstance(value, dict):
        raise _Invalid(
            ErrorCode.INVALID_JSON, f"payload must be a JSON object, got {type(value).__name__}"
        )
    return value


def _check_client_token(value: JsonValue) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not CLIENT_TOKEN_RE.fullmatch(value):
        raise _Invalid(
            ErrorCode.INVALID_REQUEST,
            "clientToken must be a string of 1-64 printable ASCII characters",
        )


def _is_int(value: JsonValue) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Fields:
    """Typed access to optional fields; JSON null counts as absent."""

    def __init__(self, body: JsonObject) -> None:
        self._body = body

    def _get(self, name: str) -> JsonValue:
        return self._body.get(name)

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _Invalid(
                ErrorCode.INVALID_REQUEST, f"{name} must be true or false, got {value!r}"
            )
        return value

    def positive_int(self, name: str) -> int | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _Invalid(
                ErrorCode.INVALID_REQUEST, f"{name} must be an integer >= 1, got {value!r}"
            )
        return value

    def version(self, name: str) -> int | None:
        # expectedVersion is a string in the AWS API model; SDKs send either form.
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and DIGITS_RE.fullmatch(value):
            return int(value)
        raise _Invalid(
            ErrorCode.INVALID_REQUEST,
            f"{name} must be a non-negative integer or a string of digits, got {value!r}",
        )

    def step_timeout(self, name: str) -> int | None:
        value = self._get(name)
        if value is None:
            return None
        if (isinstance(value, int) and not isinstance(value, bool)) and (
            value == -1 or 1 <= value <= MAX_STEP_TIMEOUT_MINUTES
        ):
            return value
        raise _Invalid(
            ErrorCode.INVALID_REQUEST,
            f"{name} must be an integer 1-{MAX_STEP_TIMEOUT_MINUTES} or -1, got {value!r}",
        )

    def device_status(self, name: str) -> ExecutionStatus:
        value = self._get(name)
        allowed = ", ".join(sorted(s.value for s in DEVICE_STATUSES))
        if value is None:
            raise _Invalid(ErrorCode.INVALID_REQUEST, f"{name} is required, one of {allowed}")
        try:
            status = ExecutionStatus(value) if isinstance(value, str) else None
        except ValueError:
            status = None
        if status is None or status not in DEVICE_STATUSES:
            raise _Invalid(
                ErrorCode.INVALID_REQUEST, f"{name} must be one of {allowed}, got {value!r}"
            )
        return status

    def details(self, name: str) -> Details | None:
        value = self._get(name)
        if value is None:
            return None
        return parse_details(value, name)


def parse_details(value: JsonValue, name: str = "statusDetails") -> Details:
    """statusDetails: string->string, keys 1-128 [a-zA-Z0-9:_-], values 1-1024 without control chars."""
    if not isinstance(value, dict):
        raise _Invalid(
            ErrorCode.INVALID_REQUEST, f"{name} must be an object of strings, got {value!r}"[:300]
        )
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if not DETAIL_KEY_RE.fullmatch(key):
            raise _Invalid(
                ErrorCode.INVALID_REQUEST,
                f"{name} key {key[:140]!r} must match [a-zA-Z0-9:_-]{{1,128}}",
            )
        if not isinstance(item, str):
            raise _Invalid(
                ErrorCode.INVALID_REQUEST, f"{name}.{key} must be a string, got {item!r}"[:300]
            )
        if not 1 <= len(item) <= 1024:
            raise _Invalid(
                ErrorCode.INVALID_REQUEST,
                f"{name}.{key} must be 1-1024 characters, got {len(item)}",
            )
        if any(unicodedata.category(ch).startswith("C") for ch in item):
            raise _Invalid(
                ErrorCode.INVALID_REQUEST,
                f"{name}.{key} must not contain control or unassigned characters",
            )
        out.append((key, item))
    return tuple(out)


def validate_details(value: JsonValue) -> Details:
    """parse_details for local callers (control API): raises ValueError."""
    try:
        return parse_details(value)
    except _Invalid as e:
        raise ValueError(e.message) from None
