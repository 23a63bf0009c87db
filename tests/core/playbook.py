"""A script-like driver for the core: feed events, read the commands it answers.

`Playbook` keeps the state and a clock, remembers the last command of each kind so a
reply can refer to it (`p.answer(HookSuccess())` answers the last `CallHook`), and
leaves `Log` commands out of what it returns (they are in `p.logs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, assert_never

import attrs

from upparat.core import machine
from upparat.core.commands import (
    CallHook,
    Command,
    DescribeJob,
    Log,
    RequestPendingJobs,
    SetTimer,
    StartDownload,
    UpdateJob,
)
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
    HookFinished,
    HookProgressed,
    HookResult,
    JobDescribed,
    JobsChanged,
    MqttConnected,
    PendingJobsListed,
    RequestKind,
    RequestRejected,
    Started,
    SubscriptionsAcked,
    TimerFired,
    UpdateAccepted,
)
from upparat.core.model import (
    DownloadFailure,
    InvalidJobDocument,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    JournalRecord,
    RejectCode,
    Settings,
    TimerKind,
)

C = TypeVar("C", bound=Command)

JOB = JobId("upparat_1")
OTHER = JobId("upparat_2")
FOREIGN = JobId("other_1")
URL = "https://s3.example.com/fw-2.0.bin?X-Amz-Signature=secret"
DOC = JobDocument(file=URL, version="2.0", meta="m")


def summary(job_id: JobId = JOB, queued_at: int = 100) -> JobSummary:
    return JobSummary(job_id=job_id, queued_at=queued_at)


def execution(
    job_id: JobId = JOB,
    status: JobStatus = JobStatus.QUEUED,
    state: str | None = None,
    document: JobDocument | InvalidJobDocument = DOC,
) -> JobExecution:
    details = () if state is None else (("message", "none"), ("state", state))
    return JobExecution(job_id=job_id, status=status, status_details=details, document=document)


@attrs.frozen
class Like:
    """Equal to any command of type `kind` whose named fields have these values."""

    kind: type[Command]
    fields: dict[str, Any] = attrs.field(factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.kind):
            return False
        return all(getattr(other, k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"Like({self.kind.__name__}({inner}))"


def like(kind: type[Command], **fields: Any) -> Like:
    return Like(kind, fields)


@attrs.frozen(eq=False)
class Between:
    """Equal to any number from `low` to `high`: a jittered delay."""

    low: float
    high: float

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int | float) and self.low <= other <= self.high

    def __hash__(self) -> int:
        return hash((self.low, self.high))


def between(low: float, high: float) -> Between:
    return Between(low, high)


@attrs.frozen
class Reported:
    """Equal to an UpdateJob with this status whose statusDetails contain these pairs."""

    state: str
    status: JobStatus = JobStatus.IN_PROGRESS
    job_id: JobId = JOB
    details: dict[str, str] = attrs.field(factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UpdateJob):
            return False
        details = dict(other.status_details)
        return (
            other.job_id == self.job_id
            and other.status is self.status
            and details.get("state") == self.state
            and all(details.get(k) == v for k, v in self.details.items())
        )


def reported(
    state: str, status: JobStatus = JobStatus.IN_PROGRESS, job_id: JobId = JOB, **details: str
) -> Reported:
    return Reported(state, status, job_id, details)


def succeeded(state: str, job_id: JobId = JOB, **details: str) -> Reported:
    return Reported(state, JobStatus.SUCCEEDED, job_id, details)


def failed(state: str, job_id: JobId = JOB, **details: str) -> Reported:
    return Reported(state, JobStatus.FAILED, job_id, details)


def kinds(commands: Iterable[Command]) -> list[type[Command]]:
    return [type(c) for c in commands]


def check_declared(before: machine.State, event: Event, after: machine.State) -> None:
    """`step` took an arrow of the transition table, or stayed: every scripted, totality
    and stateful step checks it, so an arrow missing from `machine.ROWS` fails a test."""
    source, target = type(before.stage), type(after.stage)
    assert target in machine.reachable(source, type(event)), (
        f"{source.__name__} --{type(event).__name__}--> {target.__name__} is not in machine.ROWS"
    )


class Playbook:
    def __init__(self, settings: Settings | None = None, *, auto_accept: bool = False) -> None:
        self.state = machine.initial_state(settings or Settings())
        self.now = 0.0
        self.auto_accept = auto_accept
        self.history: list[Command] = []
        self.logs: list[Log] = []

    @property
    def stage(self) -> machine.Stage:
        return self.state.stage

    def tick(self, seconds: float) -> Playbook:
        self.now += seconds
        return self

    def feed(self, event: Event) -> list[Command]:
        """Step the core once (or more with auto_accept); return the non-Log commands."""
        before = self.state
        self.state, commands = machine.step(before, event, self.now)
        check_declared(before, event, self.state)
        self.history += commands
        self.logs += [c for c in commands if isinstance(c, Log)]
        out: list[Command] = [c for c in commands if not isinstance(c, Log)]
        if self.auto_accept:
            for command in list(out):
                if isinstance(command, UpdateJob):
                    out += self.feed(
                        UpdateAccepted(job_id=command.job_id, client_token=command.client_token)
                    )
        return out

    def last(self, kind: type[C]) -> C:
        for command in reversed(self.history):
            if isinstance(command, kind):
                return command
        raise AssertionError(f"no {kind.__name__} was emitted")

    def all(self, kind: type[C]) -> list[C]:
        return [c for c in self.history if isinstance(c, kind)]

    # --- replies to the last command of a kind ----------------------------------------

    def boot(self, journal: JournalRecord | None = None) -> list[Command]:
        self.feed(Started(journal=journal))
        self.feed(MqttConnected())
        return self.feed(SubscriptionsAcked())

    def list_jobs(
        self, in_progress: Iterable[JobSummary] = (), queued: Iterable[JobSummary] = ()
    ) -> list[Command]:
        token = self.last(RequestPendingJobs).client_token
        return self.feed(
            PendingJobsListed(
                in_progress=tuple(in_progress), queued=tuple(queued), client_token=token
            )
        )

    def notify(
        self, in_progress: Iterable[JobSummary] = (), queued: Iterable[JobSummary] = ()
    ) -> list[Command]:
        return self.feed(JobsChanged(in_progress=tuple(in_progress), queued=tuple(queued)))

    def describe(self, described: JobExecution | None = None) -> list[Command]:
        token = self.last(DescribeJob).client_token
        return self.feed(JobDescribed(execution=described or execution(), client_token=token))

    def accept(self) -> list[Command]:
        update = self.last(UpdateJob)
        return self.feed(UpdateAccepted(job_id=update.job_id, client_token=update.client_token))

    def reject(self, code: RejectCode, kind: RequestKind = RequestKind.UPDATE) -> list[Command]:
        match kind:
            case RequestKind.UPDATE:
                update = self.last(UpdateJob)
                job_id: JobId | None = update.job_id
                token = update.client_token
            case RequestKind.DESCRIBE:
                describe = self.last(DescribeJob)
                job_id, token = describe.job_id, describe.client_token
            case RequestKind.GET_PENDING:
                job_id, token = None, self.last(RequestPendingJobs).client_token
            case _:
                assert_never(kind)
        return self.feed(
            RequestRejected(
                request=kind, job_id=job_id, code=code, message="no", client_token=token
            )
        )

    def answer(self, result: HookResult) -> list[Command]:
        call = self.last(CallHook)
        return self.feed(HookFinished(call_id=call.call_id, hook=call.hook, result=result))

    def install_progress(self, line: str, percent: int | None = None) -> list[Command]:
        call = self.last(CallHook)
        return self.feed(HookProgressed(call_id=call.call_id, line=line, percent=percent))

    def downloaded(self, path: str = "/var/lib/upparat/upparat_1") -> list[Command]:
        download = self.last(StartDownload)
        return self.feed(
            DownloadCompleted(download_id=download.download_id, path=path, size=10, sha256="0")
        )

    def download_progress(self, done: int, total: int | None = None) -> list[Command]:
        download = self.last(StartDownload)
        return self.feed(
            DownloadProgressed(download_id=download.download_id, bytes_done=done, total=total)
        )

    def download_interrupted(
        self, done: int, reason: str = "connection reset", retry_after: float | None = None
    ) -> list[Command]:
        download = self.last(StartDownload)
        return self.feed(
            DownloadInterrupted(
                download_id=download.download_id,
                bytes_done=done,
                reason=reason,
                retry_after=retry_after,
            )
        )

    def download_failed(self, failure: DownloadFailure, message: str = "boom") -> list[Command]:
        download = self.last(StartDownload)
        return self.feed(
            DownloadFailed(download_id=download.download_id, failure=failure, message=message)
        )

    def fire(self, kind: TimerKind) -> list[Command]:
        """Let the last timer of `kind` fire after its delay."""
        timer = next(
            c for c in reversed(self.history) if isinstance(c, SetTimer) and c.timer is kind
        )
        self.tick(timer.delay)
        return self.feed(TimerFired(timer=kind, token=timer.token))

    # --- shortcuts into a stage -----------------------------------------------------------

    def take(self, described: JobExecution | None = None) -> list[Command]:
        """Boot, list one queued job and describe it; return what the description caused."""
        described = described or execution()
        self.boot()
        if described.status is JobStatus.IN_PROGRESS:
            self.list_jobs(in_progress=[summary(described.job_id)])
        else:
            self.list_jobs(queued=[summary(described.job_id)])
        return self.describe(described)
