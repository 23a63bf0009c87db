"""Topic names of the AWS IoT Jobs device API under `$aws/things/<thing>/jobs/`.

Owns the names, the subscription filters and the syntax of job ids, job id prefixes,
thing names and client ids: the one definition every other module imports.
Pure string work: no I/O, no payloads (those are `inbound` and `outbound`).
"""

from __future__ import annotations

import re
from typing import Final

from upparat.core.model import JobId, ThingName

MAX_FILTERS_PER_SUBSCRIBE = 8
"""AWS IoT: at most 8 topic filters in one SUBSCRIBE packet (AWS IoT quotas, message broker)."""

JOB_ID_PATTERN: Final = "[a-zA-Z0-9_-]{1,64}"
"""AWS IoT CreateJob: jobId is 1-64 of letters, digits, "_" and "-"."""
JOB_ID_RE: Final = re.compile(JOB_ID_PATTERN)
JOB_PREFIX_RE: Final = re.compile("[a-zA-Z0-9_-]{1,63}")
"""A job id prefix: job id characters, short enough to leave room for one more."""
THING_NAME_PATTERN: Final = "[a-zA-Z0-9:_-]{1,128}"
"""AWS IoT CreateThing: thingName (and thingGroupName) is 1-128 of these characters."""
THING_NAME_RE: Final = re.compile(THING_NAME_PATTERN)
MAX_CLIENT_ID_BYTES: Final = 128
"""AWS IoT quotas: an MQTT client id is at most 128 bytes of UTF-8."""


def is_job_id(text: str) -> bool:
    """True when `text` is a job id AWS can issue (`JOB_ID_PATTERN`)."""
    return JOB_ID_RE.fullmatch(text) is not None


def is_job_prefix(text: str) -> bool:
    """True when `text` can start a job id and leave room for at least one character."""
    return JOB_PREFIX_RE.fullmatch(text) is not None


def is_client_id(text: str) -> bool:
    """True when `text` is an MQTT client id AWS IoT accepts (1-128 bytes of UTF-8)."""
    return 1 <= len(text.encode("utf-8", "replace")) <= MAX_CLIENT_ID_BYTES


def job_id_or_none(text: str) -> JobId | None:
    """`text` as a `JobId` when it has job id syntax (for ids read back from disk)."""
    return JobId(text) if is_job_id(text) else None


def is_thing_name(text: str) -> bool:
    """True when `text` is a valid thing name (`THING_NAME_PATTERN`)."""
    return THING_NAME_RE.fullmatch(text) is not None


def prefix(thing: ThingName) -> str:
    """`$aws/things/<thing>/jobs/`, with the trailing slash."""
    return f"$aws/things/{thing}/jobs/"


def get_pending(thing: ThingName) -> str:
    """Request topic of GetPendingJobExecutions."""
    return prefix(thing) + "get"


def describe(thing: ThingName, job_id: JobId) -> str:
    """Request topic of DescribeJobExecution."""
    return f"{prefix(thing)}{job_id}/get"


def update(thing: ThingName, job_id: JobId) -> str:
    """Request topic of UpdateJobExecution."""
    return f"{prefix(thing)}{job_id}/update"


def start_next(thing: ThingName) -> str:
    """Request topic of StartNextPendingJobExecution (upparat does not use it)."""
    return prefix(thing) + "start-next"


def notify(thing: ThingName) -> str:
    return prefix(thing) + "notify"


def notify_next(thing: ThingName) -> str:
    return prefix(thing) + "notify-next"


def accepted(request_topic: str) -> str:
    return request_topic + "/accepted"


def rejected(request_topic: str) -> str:
    return request_topic + "/rejected"


def subscription_filters(thing: ThingName) -> tuple[str, ...]:
    """Every filter `SubscribeJobTopics` subscribes to, in a stable order.

    notify-next and start-next replies are left out on purpose: upparat follows the
    whole pending list (notify + get) and never uses start-next. The filters do not
    overlap, so no message is delivered twice.
    """
    p = prefix(thing)
    return (
        p + "notify",
        p + "get/accepted",
        p + "get/rejected",
        p + "+/get/accepted",
        p + "+/get/rejected",
        p + "+/update/accepted",
        p + "+/update/rejected",
    )


def subscription_batches(thing: ThingName) -> tuple[tuple[str, ...], ...]:
    """`subscription_filters` split into SUBSCRIBE packets of at most 8 filters each."""
    filters = subscription_filters(thing)
    step = MAX_FILTERS_PER_SUBSCRIBE
    return tuple(filters[i : i + step] for i in range(0, len(filters), step))
