"""Inbound AWS IoT Jobs messages → typed core events, parsed once, here.

Owns every rule about what a reply or notification must look like. Pure: no I/O, no
logging; a bad message is a `PayloadIgnored(topic, reason)`, never an exception.

Field rule: a field the event cannot do without (no default in `upparat.core.model`) is
required; any other known field is type-checked when present (JSON null counts as
absent). Unknown fields are ignored, so the service may add some.
"""

from __future__ import annotations

import binascii
import json
import re
from base64 import b64decode
from typing import NoReturn, TypeAlias, assert_never, cast

from upparat import urls
from upparat.aws import topics
from upparat.core.events import (
    JobDescribed,
    JobsChanged,
    PayloadIgnored,
    PendingJobsListed,
    ReplyUnusable,
    RequestKind,
    RequestRejected,
    UpdateAccepted,
)
from upparat.core.model import (
    ClientToken,
    InvalidJobDocument,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    RejectCode,
    SkippedEntry,
    ThingName,
)

InboundEvent = (
    PendingJobsListed
    | JobsChanged
    | JobDescribed
    | RequestRejected
    | ReplyUnusable
    | UpdateAccepted
    | PayloadIgnored
)

MAX_PAYLOAD_BYTES = 128 * 1024
"""AWS IoT message broker limit; anything larger did not come from the service."""

MAX_JSON_DEPTH = 64
"""Real jobs payloads nest a few levels. The limit is checked before `json.loads`, whose C
decoder recurses once per level: on a small thread stack (musl: 128 KiB) a deep payload
could crash the process before Python's recursion limit is reached."""

MAX_FILE_URL_CHARS = urls.MAX_FILE_URL_CHARS  # the rule is in upparat.core.urls
MAX_SIGNATURE_BYTES = 72
"""A DER ECDSA P-256 signature: a SEQUENCE of two INTEGERs of at most 33 bytes each."""
MIN_SIGNATURE_BYTES = 8

# A JSON string (possessive, and ending at the end of the text when unterminated, so the
# scan stays linear on any input) or one bracket.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REJECT_CODES = {code.value: code for code in RejectCode if code is not RejectCode.UNKNOWN}
_STATUSES = {status.value: status for status in JobStatus}
_OUTCOMES = ("accepted", "rejected")

JsonObject: TypeAlias = dict[str, object]


class _Malformed(Exception):
    """Internal: raised while parsing, turned into `PayloadIgnored` by `parse`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(thing: ThingName, topic: str, payload: bytes) -> InboundEvent:
    """The event a message on `topic` means for `thing`; never raises."""
    try:
        return _parse(thing, topic, payload)
    except _Malformed as err:
        return PayloadIgnored(topic=_text(topic), reason=err.reason)


def _parse(thing: ThingName, topic: str, payload: bytes) -> InboundEvent:
    prefix = topics.prefix(thing)
    if not topic.startswith(prefix):
        _fail(f"not a jobs topic of thing {thing!r} (expected the prefix {prefix!r})")
    parts = topic[len(prefix) :].split("/")
    match parts:
        case ["notify"]:
            return _jobs_changed(_load(payload))
        case ["notify-next"]:
            # upparat follows the whole pending list (notify + get), not only its head.
            return PayloadIgnored(topic=topic, reason="notify-next is not used by upparat")
        case ["get", "accepted"]:
            return _pending_listed(_load(payload))
        case ["get", "rejected"]:
            return _rejected(_load(payload), RequestKind.GET_PENDING, None)
        case [job, "get", "accepted"]:
            return _described(thing, _topic_job_id(job), _load(payload))
        case [job, "get", "rejected"]:
            return _rejected(_load(payload), RequestKind.DESCRIBE, _topic_job_id(job))
        case [job, "update", "accepted"]:
            return _update_accepted(_topic_job_id(job), _load(payload))
        case [job, "update", "rejected"]:
            return _rejected(_load(payload), RequestKind.UPDATE, _topic_job_id(job))
        case _:
            _fail("not a jobs topic upparat subscribes to")


# --- replies ------------------------------------------------------------------


def _pending_listed(obj: JsonObject) -> PendingJobsListed:
    # Both lists are always present in get/accepted (AWS jobs-mqtt-api); a reply without
    # them must not be mistaken for "nothing pending".
    _opt_int(obj, "timestamp", "timestamp")
    in_progress, bad_running = _summaries(_required(obj, "inProgressJobs", ""), "inProgressJobs")
    queued, bad_queued = _summaries(_required(obj, "queuedJobs", ""), "queuedJobs")
    return PendingJobsListed(
        in_progress=in_progress,
        queued=queued,
        client_token=_opt_token(obj),
        skipped=bad_running + bad_queued,
    )


def _jobs_changed(obj: JsonObject) -> JobsChanged:
    # notify leaves out the key of an empty list and sends {"jobs": {}} when nothing is pending.
    _opt_int(obj, "timestamp", "timestamp")
    jobs = _object(_required(obj, "jobs", ""), "jobs")
    in_progress, queued_jobs = jobs.get("IN_PROGRESS"), jobs.get("QUEUED")
    running, bad_running = _summaries(
        [] if in_progress is None else in_progress, "jobs.IN_PROGRESS"
    )
    queued, bad_queued = _summaries([] if queued_jobs is None else queued_jobs, "jobs.QUEUED")
    return JobsChanged(in_progress=running, queued=queued, skipped=bad_running + bad_queued)


def _described(thing: ThingName, job_id: JobId, obj: JsonObject) -> JobDescribed | ReplyUnusable:
    token = _opt_token(obj)
    try:
        _opt_int(obj, "timestamp", "timestamp")
        execution = _object(_required(obj, "execution", ""), "execution")
        return JobDescribed(execution=_execution(thing, job_id, execution), client_token=token)
    except _Malformed as err:
        if token is None:
            raise
        # An answer to our request that cannot be used (another job's execution, a broken
        # field): the request failed; the core asks again soon instead of waiting it out.
        return ReplyUnusable(
            request=RequestKind.DESCRIBE, job_id=job_id, client_token=token, reason=err.reason
        )


def _update_accepted(job_id: JobId, obj: JsonObject) -> UpdateAccepted:
    _opt_int(obj, "timestamp", "timestamp")
    return UpdateAccepted(job_id=job_id, client_token=_opt_token(obj))


def _rejected(obj: JsonObject, request: RequestKind, job_id: JobId | None) -> RequestRejected:
    raw_code = _string(_required(obj, "code", ""), "code")
    code = _REJECT_CODES.get(raw_code, RejectCode.UNKNOWN)
    message = _opt_string(obj, "message", "message") or ""
    if code is RejectCode.UNKNOWN:
        message = f"{message} (code {_show(raw_code)})".lstrip()
    _opt_int(obj, "timestamp", "timestamp")
    # executionState is checked but not kept: the code says what the core needs to know.
    state = _optional(obj, "executionState")
    if state is not None:
        raw_status = _optional(_object(state, "executionState"), "status")
        if raw_status is not None:
            _status(raw_status, "executionState.status")
    return RequestRejected(
        request=request,
        job_id=job_id,
        code=code,
        message=message,
        client_token=_opt_token(obj),
    )


# --- parts ------------------------------------------------------------------------


def _summaries(
    value: object, where: str
) -> tuple[tuple[JobSummary, ...], tuple[SkippedEntry, ...]]:
    """The entries that parse, and the ones that do not (each on its own: one bad entry
    must not hide the valid jobs next to it)."""
    if not isinstance(value, list):
        _fail(f"{where} must be an array, got {_kind(value)}")
    good: list[JobSummary] = []
    bad: list[SkippedEntry] = []
    for item in value:
        try:
            good.append(_summary(item, f"{where} entry"))
        except _Malformed as err:
            bad.append(SkippedEntry(job_id=_job_id_of(item), reason=err.reason))
    return tuple(good), tuple(bad)


def _job_id_of(item: object) -> JobId | None:
    """The job id of an entry that failed to parse, if that part is valid."""
    if not isinstance(item, dict):
        return None
    text = item.get("jobId")
    return topics.job_id_or_none(text) if isinstance(text, str) else None


def _summary(value: object, where: str) -> JobSummary:
    obj = _object(value, where)
    # Checked but not kept (the core reads none of them): a malformed entry is skipped.
    for name in ("startedAt", "lastUpdatedAt", "versionNumber"):
        _opt_int(obj, name, f"{where}.{name}")
    return JobSummary(
        job_id=_job_id(_required(obj, "jobId", where), f"{where}.jobId"),
        queued_at=_int(_required(obj, "queuedAt", where), f"{where}.queuedAt"),
        execution_number=_opt_int(obj, "executionNumber", f"{where}.executionNumber"),
    )


def _execution(thing: ThingName, topic_job_id: JobId, obj: JsonObject) -> JobExecution:
    job_id = _job_id(_required(obj, "jobId", "execution"), "execution.jobId")
    if job_id != topic_job_id:
        _fail(f"execution.jobId {job_id!r} differs from the job id {topic_job_id!r} in the topic")
    thing_name = _opt_string(obj, "thingName", "execution.thingName")
    if thing_name is not None and thing_name != thing:
        _fail(f"execution.thingName {_show(thing_name)} is not this thing ({thing!r})")
    if "jobDocument" not in obj:
        _fail("execution has no jobDocument (upparat always asks for it)")
    # Checked but not kept (the core reads none of them).
    for name in ("startedAt", "lastUpdatedAt", "versionNumber", "queuedAt"):
        _opt_int(obj, name, f"execution.{name}")
    return JobExecution(
        job_id=job_id,
        status=_status(_required(obj, "status", "execution"), "execution.status"),
        status_details=_status_details(_optional(obj, "statusDetails")),
        document=_document(obj["jobDocument"]),
        execution_number=_opt_int(obj, "executionNumber", "execution.executionNumber"),
    )


def _status_details(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    obj = _object(value, "execution.statusDetails")
    pairs: list[tuple[str, str]] = []
    for key, item in obj.items():
        if not isinstance(item, str):
            _fail(f"execution.statusDetails.{_show(key)} must be a string, got {_kind(item)}")
        pairs.append((_text(key), _text(item)))
    return tuple(sorted(pairs))


def _document(value: object) -> JobDocument | InvalidJobDocument:
    """The upparat job document, or why it cannot be run (the core fails the job)."""
    if not isinstance(value, dict):
        return _invalid("jobDocument", f"must be a JSON object, got {_kind(value)}")
    doc = cast(JsonObject, value)

    file = doc.get("file")
    if not isinstance(file, str) or not file:
        return _invalid("file", f"must be a non-empty string (the download URL), got {_kind(file)}")
    match urls.parse_file_url(file):
        case urls.BadUrl(reason=reason):
            return _invalid("file", reason)
        case urls.FileUrl():
            pass  # the scheme is the core's question: it knows allow_http
        case never:
            assert_never(never)

    version = doc.get("version")
    if not isinstance(version, str) or not version:
        return _invalid("version", f"must be a non-empty string, got {_kind(version)}")
    if not _is_utf8(version):
        return _invalid("version", "contains unpaired surrogate escapes")

    force = doc.get("force")
    if force is not None and not isinstance(force, bool):
        return _invalid("force", f"must be true or false, got {_kind(force)}")

    meta = doc.get("meta")
    if meta is not None and not isinstance(meta, str):
        return _invalid("meta", f"must be a string, got {_kind(meta)}")
    if meta is not None and not _is_utf8(meta):
        return _invalid("meta", "contains unpaired surrogate escapes")

    sha256 = doc.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        return _invalid("sha256", "must be 64 hexadecimal characters")

    size = doc.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return _invalid("size", f"must be a non-negative integer (bytes), got {_kind(size)}")

    signature = _signature(doc.get("signature"))
    if isinstance(signature, InvalidJobDocument):
        return signature

    return JobDocument(
        file=file,
        version=version,
        force=bool(force),
        meta=meta,
        sha256=sha256.lower() if isinstance(sha256, str) else None,
        size=size,
        signature=signature,
    )


def _signature(value: object) -> bytes | InvalidJobDocument | None:
    """The DER bytes of `signature` (base64 in the document); what they sign is checked by
    `upparat.signing`, which needs the file's digest."""
    if value is None:
        return None
    expected = (
        "must be the base64 of a DER ECDSA P-256 signature of the file's sha256"
        " (openssl dgst -sha256 -sign key.pem FILE | base64 -w0)"
    )
    if not isinstance(value, str):
        return _invalid("signature", f"{expected}, got {_kind(value)}")
    if len(value) > 4 * MAX_SIGNATURE_BYTES:
        return _invalid("signature", f"{expected}, got {len(value)} characters")
    try:
        der = b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return _invalid("signature", f"{expected}: not base64 (A-Z a-z 0-9 + / and = padding)")
    if not MIN_SIGNATURE_BYTES <= len(der) <= MAX_SIGNATURE_BYTES:
        return _invalid(
            "signature",
            f"{expected}: {len(der)} bytes, such a signature has"
            f" {MIN_SIGNATURE_BYTES}-{MAX_SIGNATURE_BYTES}",
        )
    return der


def _invalid(field: str, reason: str) -> InvalidJobDocument:
    return InvalidJobDocument(field=field, reason=reason)


# --- typed JSON access ----------------------------------------------------------


def _load(payload: bytes) -> JsonObject:
    if len(payload) > MAX_PAYLOAD_BYTES:
        _fail(f"payload of {len(payload)} bytes is larger than the {MAX_PAYLOAD_BYTES} AWS allows")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        _fail(f"payload is not UTF-8 ({err.reason} at byte {err.start})")
    if _nesting(text) > MAX_JSON_DEPTH:
        _fail(f"payload JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = cast(object, json.loads(text, parse_constant=_reject_constant))
    except RecursionError:  # belt and braces: _nesting is a cheap scan, not a parser
        _fail("payload JSON is nested too deeply")
    except ValueError as err:  # JSONDecodeError, and integers too long to convert
        _fail(f"payload is not JSON: {err}")
    return _object(value, "payload")


def _nesting(text: str) -> int:
    """How deep the arrays and objects of `text` nest (brackets inside strings ignored)."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        ch = match.group()[0]
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _object(value: object, where: str) -> JsonObject:
    if not isinstance(value, dict):
        _fail(f"{where} must be a JSON object, got {_kind(value)}")
    return cast(JsonObject, value)


def _required(obj: JsonObject, key: str, where: str) -> object:
    value = obj.get(key)
    if value is None:
        _fail(f"{where + '.' if where else ''}{key} is missing")
    return value


def _optional(obj: JsonObject, key: str) -> object:
    return obj.get(key)


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(f"{where} must be an integer, got {_kind(value)}")
    return value


def _opt_int(obj: JsonObject, key: str, where: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _int(value, where)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        _fail(f"{where} must be a string, got {_kind(value)}")
    return _text(value)


def _opt_string(obj: JsonObject, key: str, where: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _string(value, where)


def _opt_token(obj: JsonObject) -> ClientToken | None:
    token = _opt_string(obj, "clientToken", "clientToken")
    return None if token is None else ClientToken(token)


def _job_id(value: object, where: str) -> JobId:
    text = _string(value, where)
    job_id = topics.job_id_or_none(text)
    if job_id is None:
        _fail(f"{where} {_show(text)} is not a job id ({topics.JOB_ID_PATTERN})")
    return job_id


def _topic_job_id(text: str) -> JobId:
    return _job_id(text, "job id in the topic")


def _status(value: object, where: str) -> JobStatus:
    text = _string(value, where)
    status = _STATUSES.get(text)
    if status is None:
        _fail(f"{where} {_show(text)} is not a job execution status")
    return status


def _kind(value: object) -> str:
    """The JSON type name of `value`, for reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_utf8(text: str) -> bool:
    """False when `text` holds unpaired surrogates (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(text: str) -> str:
    """`text` safe to encode as UTF-8 (for logs, protobuf): unpaired surrogates become U+FFFD."""
    if _is_utf8(text):
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _show(text: str, limit: int = 70) -> str:
    """A short quoted excerpt of untrusted text for a reason string."""
    shown = repr(text[:limit])
    return shown + "…" if len(text) > limit else shown


def _fail(reason: str) -> NoReturn:
    raise _Malformed(reason)
