"""A job's executions as operators read them: a table, or JSON, and whether it is over.

Pure: backends turn service answers into a `JobReport`; this module only renders and
judges it. Execution statuses: AWS IoT Jobs (iot-jobs-lifecycle); statusDetails values
pass through `redact_text`, so a URL a device reported never shows a signed query.
"""

from __future__ import annotations

import datetime
import enum
import json
from collections import Counter
from typing import TypeAlias

import attrs

from upparat.jobtool.model import redact_text

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"


class ExecutionStatus(enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)


# Job statuses after which AWS creates no more executions (DescribeJob job.status).
FINAL_JOB_STATUSES = frozenset({"COMPLETED", "CANCELED", "DELETION_IN_PROGRESS"})


@attrs.frozen(kw_only=True)
class ExecutionRow:
    thing: str
    status: ExecutionStatus
    status_details: tuple[tuple[str, str], ...] = ()  # sorted by key
    last_updated_at: float | None = None  # epoch seconds
    execution_number: int | None = None


@attrs.frozen(kw_only=True)
class JobReport:
    job_id: str
    job_status: str  # as the service says it (AWS: IN_PROGRESS, COMPLETED, CANCELED, ...)
    continuous: bool
    thing_targets: tuple[str, ...]
    group_targets: tuple[str, ...]
    executions: tuple[ExecutionRow, ...]  # sorted by thing

    @property
    def missing(self) -> tuple[str, ...]:
        """Thing targets that have no execution (yet)."""
        have = {e.thing for e in self.executions}
        return tuple(t for t in self.thing_targets if t not in have)

    @property
    def finished(self) -> bool:
        """Nothing will change any more without a new target: for `status --watch`.

        Every execution is terminal and every thing target has one. With group targets a
        SNAPSHOT job must also be over on the service side (AWS may still be creating
        executions); a CONTINUOUS job never is, so its current executions decide.
        """
        if self.missing or not all(e.status.terminal for e in self.executions):
            return False
        if self.job_status in FINAL_JOB_STATUSES:
            return True
        return bool(self.executions) and (not self.group_targets or self.continuous)


def details_text(details: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for key, value in details:
        value = redact_text(value)
        shown = value if value and not any(c.isspace() or c in '="' for c in value) else None
        parts.append(f"{key}={shown if shown is not None else json.dumps(value)}")
    return " ".join(parts)


def render_table(report: JobReport) -> str:
    targets = []
    if report.thing_targets:
        targets.append(_count(len(report.thing_targets), "thing"))
    if report.group_targets:
        targets.append(
            f"{_count(len(report.group_targets), 'group')} ({', '.join(report.group_targets)})"
        )
    selection = "CONTINUOUS" if report.continuous else "SNAPSHOT"
    lines = [
        f"job {report.job_id}: {report.job_status} ({selection};"
        f" targets: {', '.join(targets) or 'none'})"
    ]
    rows = [("THING", "STATUS", "UPDATED (UTC)", "DETAILS")]
    for e in report.executions:
        rows.append(
            (e.thing, e.status.value, _time(e.last_updated_at), details_text(e.status_details))
        )
    for thing in report.missing:
        rows.append((thing, "-", "-", "no execution yet"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + ("  " + row[3] if row[3] else "")
        )
    lines[1:] = [line.rstrip() for line in lines[1:]]
    lines.append(_summary(report))
    return "\n".join(lines)


def to_json(report: JobReport) -> dict[str, JsonValue]:
    return {
        "jobId": report.job_id,
        "jobStatus": report.job_status,
        "targetSelection": "CONTINUOUS" if report.continuous else "SNAPSHOT",
        "things": list[JsonValue](report.thing_targets),
        "groups": list[JsonValue](report.group_targets),
        "executions": [
            {
                "thingName": e.thing,
                "status": e.status.value,
                "statusDetails": {k: redact_text(v) for k, v in e.status_details},
                "lastUpdatedAt": None if e.last_updated_at is None else _iso(e.last_updated_at),
                "executionNumber": e.execution_number,
            }
            for e in report.executions
        ],
        "withoutExecution": list[JsonValue](report.missing),
        "finished": report.finished,
    }


def _summary(report: JobReport) -> str:
    counts = Counter(e.status for e in report.executions)
    parts = [f"{counts[s]} {s.value}" for s in ExecutionStatus if counts[s]]
    if report.missing:
        parts.append(f"{_count(len(report.missing), 'thing')} without an execution")
    text = ", ".join(parts) if parts else "no executions yet"
    if report.finished:
        text += "; finished"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
