"""Core commands → AWS IoT Jobs request topics and JSON payloads.

Owns the AWS request limits: statusDetails are sanitised and truncated here so every
payload is accepted by the service. Pure: no I/O, no logging.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import assert_never

from upparat.aws import topics
from upparat.core.commands import DescribeJob, RequestPendingJobs, UpdateJob
from upparat.core.model import ClientToken, JobId, JobStatus, ThingName

OutboundCommand = RequestPendingJobs | DescribeJob | UpdateJob

MAX_PAYLOAD_BYTES = 128 * 1024
"""AWS IoT message broker limit for one PUBLISH payload."""
MAX_DETAIL_KEY_CHARS = 128
MAX_DETAIL_VALUE_UNITS = 1024
"""statusDetails value limit. AWS counts Java (UTF-16) chars, so a character outside the
Basic Multilingual Plane (most emoji) counts twice; we count the same way."""
MAX_CLIENT_TOKEN_CHARS = 64
MIN_STEP_TIMEOUT_MINUTES = 1
MAX_STEP_TIMEOUT_MINUTES = 10080
CANCEL_STEP_TIMEOUT = -1
"""stepTimeoutInMinutes -1 cancels the current step timer (AWS jobs-configurations-details)."""

DEVICE_STATUSES = frozenset(
    {JobStatus.IN_PROGRESS, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED}
)
"""The only statuses a device may report (AWS iot-jobs-lifecycle)."""

TRUNCATION_MARK = "…"

_KEY_FORBIDDEN = re.compile(r"[^a-zA-Z0-9:_-]")
_CLIENT_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")


class InvalidCommandError(ValueError):
    """A command no correct core produces (a local bug, not a remote fault)."""


def build(thing: ThingName, command: OutboundCommand) -> tuple[str, bytes]:
    """The topic and payload that carry out `command`, within every AWS limit.

    Raises `InvalidCommandError` for an invalid thing name, job id, client token, status
    or step timeout: those come from the core or the config, never from the network.
    """
    if not topics.is_thing_name(thing):
        raise InvalidCommandError(f"thing name {thing!r} is not [a-zA-Z0-9:_-]{{1,128}}")
    match command:
        case RequestPendingJobs(client_token=token):
            body: dict[str, object] = {"clientToken": _client_token(token)}
            return topics.get_pending(thing), _dumps(body)
        case DescribeJob(job_id=job_id, client_token=token):
            body = {"clientToken": _client_token(token)}
            return topics.describe(thing, _job_id(job_id)), _dumps(body)
        case UpdateJob():
            return topics.update(thing, _job_id(command.job_id)), _update_payload(command)
        case _:
            assert_never(command)


def _update_payload(command: UpdateJob) -> bytes:
    if command.status not in DEVICE_STATUSES:
        raise InvalidCommandError(f"a device cannot report status {command.status.value}")
    body: dict[str, object] = {
        "status": command.status.value,
        "clientToken": _client_token(command.client_token),
    }
    step = command.step_timeout_minutes
    if step is not None:
        if step != CANCEL_STEP_TIMEOUT and not (
            MIN_STEP_TIMEOUT_MINUTES <= step <= MAX_STEP_TIMEOUT_MINUTES
        ):
            raise InvalidCommandError(
                f"stepTimeoutInMinutes must be -1 or 1-{MAX_STEP_TIMEOUT_MINUTES}, got {step}"
            )
        body["stepTimeoutInMinutes"] = step
    # statusDetails last, with whatever room the rest leaves under the payload limit.
    room = MAX_PAYLOAD_BYTES - len(_dumps({**body, "statusDetails": {}}))
    body["statusDetails"] = _fit(sanitize_status_details(command.status_details), room)
    payload = _dumps(body)
    assert len(payload) <= MAX_PAYLOAD_BYTES, "statusDetails budget miscounted"
    return payload


def sanitize_status_details(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """statusDetails that obey the AWS limits, in the given order.

    Keys: characters outside `[a-zA-Z0-9:_-]` become `_`, cut to 128; an empty key is
    dropped; when two keys end up equal the first pair wins. Values: control, format,
    surrogate, private-use and unassigned characters (Unicode category C, which AWS
    forbids) become spaces; cut to 1024 UTF-16 units on a character boundary, ending in
    `…` when cut; an empty value drops its pair (AWS rejects empty values).
    """
    out: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = _KEY_FORBIDDEN.sub("_", raw_key)[:MAX_DETAIL_KEY_CHARS]
        if not key or key in out:
            continue
        value = sanitize_detail_value(raw_value)
        if value:
            out[key] = value
    return out


def sanitize_detail_value(text: str) -> str:
    """`text` without Unicode category C characters, cut to 1024 UTF-16 units."""
    cleaned = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    if utf16_units(cleaned) <= MAX_DETAIL_VALUE_UNITS:
        return cleaned
    budget = MAX_DETAIL_VALUE_UNITS - utf16_units(TRUNCATION_MARK)
    kept: list[str] = []
    for ch in cleaned:
        budget -= utf16_units(ch)
        if budget < 0:
            break
        kept.append(ch)
    return "".join(kept) + TRUNCATION_MARK


def utf16_units(text: str) -> int:
    """Length of `text` as Java / AWS count it."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _fit(details: dict[str, str], room: int) -> dict[str, str]:
    """The pairs of `details`, in order, whose JSON fits in `room` bytes (later ones dropped)."""
    kept: dict[str, str] = {}
    used = 0
    for key, value in details.items():
        # `"key":"value"` plus a comma separator (one too many for the first: safe side).
        size = len(_dumps({key: value})) - 2 + 1
        if used + size > room:
            continue
        kept[key] = value
        used += size
    return kept


def _client_token(token: ClientToken) -> str:
    if _CLIENT_TOKEN.fullmatch(token) is None:
        raise InvalidCommandError(
            f"clientToken must be 1-{MAX_CLIENT_TOKEN_CHARS} printable ASCII characters, "
            f"got {token[:80]!r} ({len(token)} characters)"
        )
    return token


def _job_id(job_id: JobId) -> JobId:
    if not topics.is_job_id(job_id):
        raise InvalidCommandError(f"job id {job_id[:80]!r} is not {topics.JOB_ID_PATTERN}")
    return job_id


def _dumps(body: dict[str, object]) -> bytes:
    # ensure_ascii=False keeps non-ASCII text at its UTF-8 size (AWS counts bytes of payload).
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
