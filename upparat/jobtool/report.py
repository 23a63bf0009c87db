"""A job's executions as operators read them: a table, or JSON, and whether it is over.

Pure: backends turn service answers into a `JobReport`; this module only renders and
judges it. Execution statuses: AWS IoT Jobs (iot-jobs-lifecycle); statusDetails values
pass through `redact_text`, so a URL a device reported never shows a signed query.
Beside each target's status goes the version its `$package` shadow reports (what really
runs: a job can succeed and the bootloader roll back later), and a fleet summary.
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

ROLLED_BACK = "rolled_back"
"""statusDetails.state of a FAILED job whose device came back on the previous version."""

PackageVersions: TypeAlias = tuple[tuple[str, str], ...]
"""(package, version) pairs from a thing's `$package` shadow, sorted by package."""


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
    # Per target thing (with or without an execution): its `$package` versions, or None
    # when it has no `$package` shadow. Things missing here were not asked.
    versions: tuple[tuple[str, PackageVersions | None], ...] = ()
    versions_note: str | None = None  # why versions are missing (e.g. access denied)

    def versions_of(self, thing: str) -> PackageVersions | None:
        return dict(self.versions).get(thing)

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


@attrs.frozen(kw_only=True)
class Summary:
    """The fleet line: rolled back is a FAILED execution with state `rolled_back`."""

    targets: int
    succeeded: int
    failed: int
    rolled_back: int
    in_progress: int
    queued: int
    rejected: int
    timed_out: int
    canceled: int
    removed: int
    without_execution: int


def summarize(report: JobReport) -> Summary:
    counts = Counter(e.status for e in report.executions)
    rolled_back = sum(
        1
        for e in report.executions
        if e.status is ExecutionStatus.FAILED and dict(e.status_details).get("state") == ROLLED_BACK
    )
    return Summary(
        targets=len(report.executions) + len(report.missing),
        succeeded=counts[ExecutionStatus.SUCCEEDED],
        failed=counts[ExecutionStatus.FAILED] - rolled_back,
        rolled_back=rolled_back,
        in_progress=counts[ExecutionStatus.IN_PROGRESS],
        queued=counts[ExecutionStatus.QUEUED],
        rejected=counts[ExecutionStatus.REJECTED],
        timed_out=counts[ExecutionStatus.TIMED_OUT],
        canceled=counts[ExecutionStatus.CANCELED],
        removed=counts[ExecutionStatus.REMOVED],
        without_execution=len(report.missing),
    )


def version_text(found: PackageVersions | None, package: str | None) -> str:
    """The VERSION cell: `package`'s version, else the only package's, else name=version."""
    if not found:
        return "-"
    if package is not None:
        return dict(found).get(package, "-")
    if len(found) == 1:
        return found[0][1]
    return ",".join(f"{name}={version}" for name, version in found)


def render_table(report: JobReport, package: str | None = None) -> str:
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
    rows = [("THING", "STATUS", "VERSION", "UPDATED (UTC)", "DETAILS")]
    for e in report.executions:
        rows.append(
            (
                e.thing,
                e.status.value,
                version_text(report.versions_of(e.thing), package),
                _time(e.last_updated_at),
                details_text(e.status_details),
            )
        )
    for thing in report.missing:
        rows.append(
            (thing, "-", version_text(report.versions_of(thing), package), "-", "no execution yet")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
            + ("  " + row[4] if row[4] else "")
        )
    lines[1:] = [line.rstrip() for line in lines[1:]]
    if report.versions_note is not None:
        lines.append(f"VERSION: {report.versions_note}")
    lines.append(_summary(report))
    return "\n".join(lines)


def to_json(report: JobReport) -> dict[str, JsonValue]:
    summary = summarize(report)
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
                "packageVersions": _versions_json(report.versions_of(e.thing)),
            }
            for e in report.executions
        ],
        "withoutExecution": list[JsonValue](report.missing),
        "packageVersions": {thing: _versions_json(found) for thing, found in report.versions},
        "versionsNote": report.versions_note,
        "summary": {
            "targets": summary.targets,
            "succeeded": summary.succeeded,
            "failed": summary.failed,
            "rolledBack": summary.rolled_back,
            "inProgress": summary.in_progress,
            "queued": summary.queued,
            "rejected": summary.rejected,
            "timedOut": summary.timed_out,
            "canceled": summary.canceled,
            "removed": summary.removed,
            "withoutExecution": summary.without_execution,
        },
        "finished": report.finished,
    }


def _versions_json(found: PackageVersions | None) -> JsonValue:
    return None if found is None else {name: version for name, version in found}


def _summary(report: JobReport) -> str:
    s = summarize(report)
    text = (
        f"{_count(s.targets, 'target')}: {s.succeeded} succeeded, {s.failed} failed,"
        f" {s.rolled_back} rolled back, {s.in_progress} in progress"
    )
    others = [
        (s.queued, "queued"),
        (s.rejected, "rejected"),
        (s.timed_out, "timed out"),
        (s.canceled, "canceled"),
        (s.removed, "removed"),
        (s.without_execution, "without an execution"),
    ]
    extra = [f"{n} {label}" for n, label in others if n]
    if extra:
        text += "; " + ", ".join(extra)
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
