"""Every rule of the emulated AWS IoT Jobs service, in one place: jobs, executions, transitions.

Owns job and execution records and what each request, control call or timer does to
them, and renders the exact AWS answers and notifications as `Publish` values. It does
no I/O, reads no clock (callers pass `now`, epoch seconds) and never raises on device
input: a bad request becomes a rejected answer. It raises `EmulatorError` only for a
bad control call (our caller's fault).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TypeAlias, assert_never

import attrs

from upparat.emulator.presign import (
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    Signer,
    check_placeholders,
    substitute,
)
from upparat.emulator.wire import (
    JOB_ID_RE,
    THING_NAME_RE,
    BadRequest,
    Describe,
    Details,
    ErrorCode,
    ExecutionStatus,
    GetPending,
    JobId,
    JsonObject,
    JsonValue,
    Request,
    StartNext,
    ThingName,
    Update,
    topic_prefix,
)

MAX_DOCUMENT_CHARS = 32768
MAX_IN_PROGRESS_TIMEOUT_MINUTES = 10080
MAX_RETRIES = 10
RETRY_FAILURE_TYPES = ("FAILED", "TIMED_OUT", "ALL")
"""jobExecutionsRetryConfig.criteriaList[].failureType (ALL: both, one count each)."""


class EmulatorError(Exception):
    """A control call the emulator refuses (unknown job, bad argument): the caller's fault."""


@attrs.frozen(kw_only=True)
class Publish:
    """One MQTT message the service sends (QoS 1, not retained)."""

    topic: str
    body: str  # JSON text

    def json(self) -> JsonObject:
        value: JsonObject = json.loads(self.body)
        return value


@attrs.frozen(kw_only=True)
class Job:
    job_id: JobId
    document: str  # canonical JSON text of the job document (an object)
    targets: tuple[ThingName, ...]
    presigned_expires_in: int
    in_progress_timeout_minutes: int | None
    created_at: int
    canceled: bool = False
    retries: tuple[tuple[str, int], ...] = ()
    """numberOfRetries by failure type (FAILED, TIMED_OUT), from jobExecutionsRetryConfig."""

    def retry_limit(self, status: ExecutionStatus) -> int:
        return dict(self.retries).get(status.value, 0)

    def document_json(self) -> JsonObject:
        value: JsonObject = json.loads(self.document)
        return value


@attrs.frozen(kw_only=True)
class Execution:
    """One job on one thing, as AWS keeps it (the wire record is a status plus optional fields)."""

    job_id: JobId
    thing_name: ThingName
    status: ExecutionStatus
    status_details: Details = ()
    queued_at: int
    started_at: int | None = None
    last_updated_at: int
    version_number: int = 1
    execution_number: int = 1
    seq: int  # creation order: breaks queuedAt ties (AWS orders by queue time)
    retried: tuple[tuple[str, int], ...] = ()
    """Retries already made of this thing's execution, by failure type."""
    step_deadline: float | None = None  # epoch seconds; TIMED_OUT after it
    in_progress_deadline: float | None = None
    force_canceled: bool = False

    @property
    def details(self) -> dict[str, str]:
        return dict(self.status_details)

    @property
    def pending(self) -> bool:
        return not self.status.terminal

    def summary(self) -> JsonObject:
        """JobExecutionSummary as in get/accepted and notify."""
        out: JsonObject = {"jobId": self.job_id, "queuedAt": self.queued_at}
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        out["lastUpdatedAt"] = self.last_updated_at
        out["versionNumber"] = self.version_number
        out["executionNumber"] = self.execution_number
        return out

    def state(self) -> JsonObject:
        """JobExecutionState as in update/accepted and some rejections."""
        out: JsonObject = {"status": self.status.value}
        if self.status_details:
            out["statusDetails"] = dict(self.status_details)
        out["versionNumber"] = self.version_number
        return out

    def to_json(self) -> JsonObject:
        """Everything the emulator knows, for the control API and the state file."""
        return {
            "jobId": self.job_id,
            "thingName": self.thing_name,
            "status": self.status.value,
            "statusDetails": dict(self.status_details),
            "queuedAt": self.queued_at,
            "startedAt": self.started_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
            "seq": self.seq,
            "stepDeadline": self.step_deadline,
            "inProgressDeadline": self.in_progress_deadline,
            "forceCanceled": self.force_canceled,
            "retried": dict(self.retried),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JsonValue]) -> Execution:
        return cls(
            job_id=JobId(_str(data["jobId"])),
            thing_name=ThingName(_str(data["thingName"])),
            status=ExecutionStatus(_str(data["status"])),
            status_details=tuple(
                (k, _str(v)) for k, v in _obj(data.get("statusDetails") or {}).items()
            ),
            queued_at=_int(data["queuedAt"]),
            started_at=None if data.get("startedAt") is None else _int(data["startedAt"]),
            last_updated_at=_int(data["lastUpdatedAt"]),
            version_number=_int(data["versionNumber"]),
            execution_number=_int(data["executionNumber"]),
            seq=_int(data["seq"]),
            step_deadline=_opt_float(data.get("stepDeadline")),
            in_progress_deadline=_opt_float(data.get("inProgressDeadline")),
            force_canceled=bool(data.get("forceCanceled", False)),
            retried=tuple(sorted((k, _int(v)) for k, v in _obj(data.get("retried") or {}).items())),
        )


@attrs.frozen(kw_only=True)
class Result:
    """What one request came to: the answer's code (None: accepted) and what was published."""

    code: ErrorCode | None
    job_id: JobId | None
    publishes: tuple[Publish, ...]
    execution: Execution | None = None  # the execution after the request, when there is one


Key: TypeAlias = tuple[JobId, ThingName]


@attrs.define
class JobsModel:
    """The service's whole state. `minute` is how many seconds one timeout minute lasts."""

    minute: float = 60.0
    # A device must report IN_PROGRESS before SUCCEEDED: stricter than AWS may be
    # (AWS documents no such rule), so a daemon that passes here passes there.
    strict_transitions: bool = False
    # Where pre-signed S3 objects are served from (presign.py); None: the S3 host itself.
    s3_endpoint: str | None = None
    jobs: dict[JobId, Job] = attrs.field(factory=dict)
    executions: dict[Key, Execution] = attrs.field(factory=dict)
    next_seq: int = 1

    # ---- queries -------------------------------------------------------------------

    def pending(self, thing: ThingName) -> list[Execution]:
        """IN_PROGRESS first, then QUEUED, each oldest first (the order of notify and $next)."""
        found = [e for e in self.executions.values() if e.thing_name == thing and e.pending]
        return sorted(
            found,
            key=lambda e: (e.status is not ExecutionStatus.IN_PROGRESS, e.queued_at, e.seq),
        )

    def head(self, thing: ThingName) -> Execution | None:
        found = self.pending(thing)
        return found[0] if found else None

    def execution(self, job_id: JobId, thing: ThingName) -> Execution | None:
        return self.executions.get((job_id, thing))

    def things(self) -> set[ThingName]:
        return {t for _, t in self.executions}

    # ---- device requests --------------------------------------------------------------

    def handle(self, request: Request | BadRequest, now: float, sign: Signer) -> Result:
        match request:
            case BadRequest():
                return self._reject_bad(request, now)
            case GetPending():
                return self._get_pending(request, now)
            case StartNext():
                return self._start_next(request, now, sign)
            case Describe():
                return self._describe(request, now, sign)
            case Update():
                return self._update(request, now, sign)
            case _:
                assert_never(request)

    def reject(
        self,
        request: Request,
        code: ErrorCode,
        message: str,
        now: float,
        execution: Execution | None = None,
    ) -> Result:
        """Answer `request` on its /rejected topic (also used for injected faults)."""
        body: JsonObject = {"code": code.value, "message": message}
        if request.client_token is not None:
            body["clientToken"] = request.client_token
        body["timestamp"] = int(now)
        if execution is not None:
            body["executionState"] = execution.state()
        job_id = request.job_id if isinstance(request, Describe | Update) else None
        return Result(
            code=code,
            job_id=job_id,
            publishes=(_publish(request.topic + "/rejected", body),),
            execution=execution,
        )

    def _reject_bad(self, request: BadRequest, now: float) -> Result:
        body: JsonObject = {"code": request.code.value, "message": request.message}
        if request.client_token is not None:
            body["clientToken"] = request.client_token
        body["timestamp"] = int(now)
        job_id = (
            JobId(request.job_id)
            if request.job_id and JOB_ID_RE.fullmatch(request.job_id)
            else None
        )
        return Result(
            code=request.code,
            job_id=job_id,
            publishes=(_publish(request.topic + "/rejected", body),),
        )

    def _accept(self, request: Request, body: JsonObject, now: float) -> Publish:
        body["timestamp"] = int(now)
        if request.client_token is not None:
            body["clientToken"] = request.client_token
        return _publish(request.topic + "/accepted", body)

    def _get_pending(self, request: GetPending, now: float) -> Result:
        pending = self.pending(request.thing)
        body: JsonObject = {
            "inProgressJobs": [
                e.summary() for e in pending if e.status is ExecutionStatus.IN_PROGRESS
            ],
            "queuedJobs": [e.summary() for e in pending if e.status is ExecutionStatus.QUEUED],
        }
        return Result(code=None, job_id=None, publishes=(self._accept(request, body, now),))

    def _describe(self, request: Describe, now: float, sign: Signer) -> Result:
        if request.job_id is None:
            found = self.head(request.thing)
            if found is None:  # nothing pending: accepted, without an execution
                return Result(code=None, job_id=None, publishes=(self._accept(request, {}, now),))
        else:
            found = self.execution(request.job_id, request.thing)
            if found is None:
                return self.reject(
                    request, ErrorCode.RESOURCE_NOT_FOUND, self._not_found(request), now
                )
        if (
            request.execution_number is not None
            and request.execution_number != found.execution_number
        ):
            return self.reject(
                request,
                ErrorCode.RESOURCE_NOT_FOUND,
                f"job {found.job_id} has no execution number {request.execution_number}"
                f" on thing {request.thing}",
                now,
            )
        body: JsonObject = {
            "execution": self.render_execution(
                found, sign, include_document=request.include_document
            )
        }
        return Result(
            code=None,
            job_id=found.job_id,
            publishes=(self._accept(request, body, now),),
            execution=found,
        )

    def _start_next(self, request: StartNext, now: float, sign: Signer) -> Result:
        head = self.head(request.thing)
        if head is None:
            return Result(code=None, job_id=None, publishes=(self._accept(request, {}, now),))
        if head.status is ExecutionStatus.IN_PROGRESS:
            # AWS returns the execution already in progress, unchanged.
            body: JsonObject = {"execution": self.render_execution(head, sign)}
            return Result(
                code=None,
                job_id=head.job_id,
                publishes=(self._accept(request, body, now),),
                execution=head,
            )
        before = self._snapshot(request.thing)
        started = self._to_in_progress(
            head, request.status_details, request.step_timeout_minutes, now
        )
        self.executions[(started.job_id, started.thing_name)] = started
        body = {"execution": self.render_execution(started, sign)}
        publishes = [self._accept(request, body, now)]
        publishes += self._notifications(request.thing, before, True, now, sign)
        return Result(
            code=None, job_id=started.job_id, publishes=tuple(publishes), execution=started
        )

    def _update(self, request: Update, now: float, sign: Signer) -> Result:
        found = self.execution(request.job_id, request.thing)
        if found is None:
            return self.reject(request, ErrorCode.RESOURCE_NOT_FOUND, self._not_found(request), now)
        if (
            request.execution_number is not None
            and request.execution_number != found.execution_number
        ):
            return self.reject(
                request,
                ErrorCode.RESOURCE_NOT_FOUND,
                f"job {found.job_id} has no execution number {request.execution_number}"
                f" on thing {request.thing}",
                now,
            )
        if found.status.terminal:
            return self.reject(
                request,
                ErrorCode.TERMINAL_STATE_REACHED,
                f"job {found.job_id} on thing {request.thing} is {found.status.value},"
                " a terminal status: it takes no more updates",
                now,
            )
        if (
            request.expected_version is not None
            and request.expected_version != found.version_number
        ):
            return self.reject(
                request,
                ErrorCode.VERSION_MISMATCH,
                f"expectedVersion {request.expected_version} does not match"
                f" versionNumber {found.version_number}",
                now,
                execution=found,
            )
        if not self._allowed(found.status, request.status):
            return self.reject(
                request,
                ErrorCode.INVALID_STATE_TRANSITION,
                f"job {found.job_id} on thing {request.thing} cannot go from"
                f" {found.status.value} to {request.status.value}"
                " (report IN_PROGRESS first)",
                now,
                execution=found,
            )

        before = self._snapshot(request.thing)
        if request.status is ExecutionStatus.IN_PROGRESS:
            updated = self._to_in_progress(
                found, request.status_details, request.step_timeout_minutes, now
            )
        else:
            updated = attrs.evolve(
                found,
                status=request.status,
                status_details=found.status_details
                if request.status_details is None
                else request.status_details,
                last_updated_at=int(now),
                version_number=found.version_number + 1,
                step_deadline=None,
                in_progress_deadline=None,
            )
        self.executions[(updated.job_id, updated.thing_name)] = updated
        self._retry(updated, now)

        body: JsonObject = {}
        if request.include_state:
            body["executionState"] = updated.state()
        if request.include_document:
            body["jobDocument"] = self.render_document(self.jobs[updated.job_id], sign)
        publishes = [self._accept(request, body, now)]
        publishes += self._notifications(
            request.thing, before, found.status is not updated.status, now, sign
        )
        return Result(
            code=None, job_id=updated.job_id, publishes=tuple(publishes), execution=updated
        )

    def _allowed(self, current: ExecutionStatus, wanted: ExecutionStatus) -> bool:
        if current is ExecutionStatus.QUEUED and wanted is ExecutionStatus.SUCCEEDED:
            return not self.strict_transitions
        return current in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)

    def _to_in_progress(
        self, found: Execution, details: Details | None, step_minutes: int | None, now: float
    ) -> Execution:
        """QUEUED or IN_PROGRESS -> IN_PROGRESS: version +1, timers (re)armed."""
        started = found.status is ExecutionStatus.QUEUED
        job = self.jobs[found.job_id]
        in_progress_deadline = found.in_progress_deadline
        if started and job.in_progress_timeout_minutes is not None:
            in_progress_deadline = now + job.in_progress_timeout_minutes * self.minute
        step_deadline = found.step_deadline
        if step_minutes == -1:
            step_deadline = None
        elif step_minutes is not None:
            step_deadline = now + step_minutes * self.minute
        return attrs.evolve(
            found,
            status=ExecutionStatus.IN_PROGRESS,
            status_details=found.status_details if details is None else details,
            started_at=int(now) if found.started_at is None else found.started_at,
            last_updated_at=int(now),
            version_number=found.version_number + 1,
            step_deadline=step_deadline,
            in_progress_deadline=in_progress_deadline,
        )

    def _not_found(self, request: Describe | Update) -> str:
        job = self.jobs.get(request.job_id) if request.job_id is not None else None
        if job is None:
            return f"job {request.job_id} does not exist"
        return f"job {request.job_id} has no execution on thing {request.thing}"

    # ---- rendering -------------------------------------------------------------------

    def render_document(self, job: Job, sign: Signer) -> JsonValue:
        # The URL lifetime scales with timeout minutes, so a fast e2e run can see one expire.
        lifetime = max(1, round(job.presigned_expires_in * self.minute / 60))
        return substitute(job.document_json(), sign, lifetime, self.s3_endpoint)

    def render_execution(
        self, found: Execution, sign: Signer, *, include_document: bool = True
    ) -> JsonObject:
        """JobExecution as in describe, start-next and notify-next, placeholders signed afresh."""
        out: JsonObject = {"jobId": found.job_id, "thingName": found.thing_name}
        if include_document:
            out["jobDocument"] = self.render_document(self.jobs[found.job_id], sign)
        out["status"] = found.status.value
        if found.status_details:
            out["statusDetails"] = dict(found.status_details)
        out["queuedAt"] = found.queued_at
        if found.started_at is not None:
            out["startedAt"] = found.started_at
        out["lastUpdatedAt"] = found.last_updated_at
        out["versionNumber"] = found.version_number
        out["executionNumber"] = found.execution_number
        return out

    # ---- notifications -----------------------------------------------------------------

    def _snapshot(self, thing: ThingName) -> JobId | None:
        head = self.head(thing)
        return None if head is None else head.job_id

    def _notifications(
        self,
        thing: ThingName,
        head_before: JobId | None,
        status_changed: bool,
        now: float,
        sign: Signer,
    ) -> list[Publish]:
        """notify when a status changed; notify-next only when the head of the pending list did."""
        out: list[Publish] = []
        prefix = topic_prefix(thing)
        if status_changed:
            pending = self.pending(thing)
            jobs: JsonObject = {}
            in_progress = [e.summary() for e in pending if e.status is ExecutionStatus.IN_PROGRESS]
            queued = [e.summary() for e in pending if e.status is ExecutionStatus.QUEUED]
            if in_progress:
                jobs["IN_PROGRESS"] = list[JsonValue](in_progress)
            if queued:
                jobs["QUEUED"] = list[JsonValue](queued)
            out.append(_publish(f"{prefix}/notify", {"timestamp": int(now), "jobs": jobs}))
        head = self.head(thing)
        if (None if head is None else head.job_id) != head_before:
            body: JsonObject = {"timestamp": int(now)}
            if head is not None:
                body["execution"] = self.render_execution(head, sign)
            out.append(_publish(f"{prefix}/notify-next", body))
        return out

    def _service_change(
        self, changed: Iterable[tuple[Execution, Execution]], now: float, sign: Signer
    ) -> list[Publish]:
        """Apply service-side status changes (cancel, timeout, delete) thing by thing."""
        by_thing: dict[ThingName, list[tuple[Execution, Execution]]] = {}
        for old, new in changed:
            by_thing.setdefault(old.thing_name, []).append((old, new))
        out: list[Publish] = []
        for thing, pairs in sorted(by_thing.items()):
            before = self._snapshot(thing)
            for _, new in pairs:
                self.executions[(new.job_id, new.thing_name)] = new
                self._retry(new, now)
            out += self._notifications(thing, before, True, now, sign)
        return out

    def _retry(self, ended: Execution, now: float) -> None:
        """AWS's job execution retry: a FAILED or TIMED_OUT execution whose job allows
        another retry of that type is queued again at once with the next executionNumber
        (fresh status, statusDetails and versionNumber). The ended execution's answers
        (update/accepted, notify) still describe the attempt that ended."""
        if ended.status not in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
            return
        job = self.jobs.get(ended.job_id)
        if job is None or job.canceled:
            return
        used = dict(ended.retried)
        kind = ended.status.value
        if used.get(kind, 0) >= job.retry_limit(ended.status):
            return
        used[kind] = used.get(kind, 0) + 1
        self.executions[(ended.job_id, ended.thing_name)] = Execution(
            job_id=ended.job_id,
            thing_name=ended.thing_name,
            status=ExecutionStatus.QUEUED,
            queued_at=int(now),
            last_updated_at=int(now),
            execution_number=ended.execution_number + 1,
            seq=self.next_seq,
            retried=tuple(sorted(used.items())),
        )
        self.next_seq += 1

    # ---- control calls and timers -------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        document: Mapping[str, object],
        targets: Iterable[str],
        now: float,
        sign: Signer,
        *,
        presigned_expires_in: int = MAX_EXPIRES_IN,
        in_progress_timeout_minutes: int | None = None,
        retries: Mapping[str, int] | None = None,
    ) -> list[Publish]:
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            raise EmulatorError(
                f"create_job: job id must match [a-zA-Z0-9_-]{{1,64}}, got {job_id!r}"
            )
        if JobId(job_id) in self.jobs:
            raise EmulatorError(f"create_job: job {job_id} already exists (delete it first)")
        if not isinstance(document, Mapping):
            raise EmulatorError(
                f"create_job: the job document must be a JSON object, got {type(document).__name__}"
            )
        try:
            text = json.dumps(
                dict(document), sort_keys=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as e:
            raise EmulatorError(f"create_job: the job document is not JSON: {e}") from None
        if len(text) > MAX_DOCUMENT_CHARS:
            raise EmulatorError(
                f"create_job: the job document is {len(text)} characters, the limit is {MAX_DOCUMENT_CHARS}"
            )
        placeholder_problem = check_placeholders(json.loads(text))
        if placeholder_problem is not None:
            raise EmulatorError(f"create_job: {placeholder_problem}")
        things = list(dict.fromkeys(targets))
        if not things:
            raise EmulatorError("create_job: give at least one target thing")
        for thing in things:
            if not isinstance(thing, str) or not THING_NAME_RE.fullmatch(thing):
                raise EmulatorError(
                    f"create_job: thing name must match [a-zA-Z0-9:_-]{{1,128}}, got {thing!r}"
                )
        if (
            not _is_int(presigned_expires_in)
            or not MIN_EXPIRES_IN <= presigned_expires_in <= MAX_EXPIRES_IN
        ):
            raise EmulatorError(
                f"create_job: presigned_expires_in must be {MIN_EXPIRES_IN}-{MAX_EXPIRES_IN} seconds,"
                f" got {presigned_expires_in!r}"
            )
        if in_progress_timeout_minutes is not None and (
            not _is_int(in_progress_timeout_minutes)
            or not 1 <= in_progress_timeout_minutes <= MAX_IN_PROGRESS_TIMEOUT_MINUTES
        ):
            raise EmulatorError(
                "create_job: in_progress_timeout_minutes must be"
                f" 1-{MAX_IN_PROGRESS_TIMEOUT_MINUTES}, got {in_progress_timeout_minutes!r}"
            )
        self.jobs[JobId(job_id)] = Job(
            job_id=JobId(job_id),
            document=text,
            targets=tuple(ThingName(t) for t in things),
            presigned_expires_in=presigned_expires_in,
            in_progress_timeout_minutes=in_progress_timeout_minutes,
            created_at=int(now),
            retries=_retry_limits(retries or {}),
        )
        out: list[Publish] = []
        for thing in things:
            name = ThingName(thing)
            before = self._snapshot(name)
            self.executions[(JobId(job_id), name)] = Execution(
                job_id=JobId(job_id),
                thing_name=name,
                status=ExecutionStatus.QUEUED,
                queued_at=int(now),
                last_updated_at=int(now),
                seq=self.next_seq,
            )
            self.next_seq += 1
            out += self._notifications(name, before, True, now, sign)
        return out

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(JobId(job_id))
        if job is None:
            raise EmulatorError(f"job {job_id} does not exist")
        return job

    def cancel_job(
        self, job_id: str, now: float, sign: Signer, *, force: bool = False
    ) -> list[Publish]:
        """QUEUED -> CANCELED always; IN_PROGRESS -> CANCELED only with force (AWS CancelJob)."""
        job = self._job(job_id)
        self.jobs[job.job_id] = attrs.evolve(job, canceled=True)
        changed = []
        for found in self.executions.values():
            if found.job_id != job.job_id:
                continue
            if found.status is ExecutionStatus.QUEUED or (
                force and found.status is ExecutionStatus.IN_PROGRESS
            ):
                changed.append((found, self._ended(found, ExecutionStatus.CANCELED, now, force)))
        return self._service_change(changed, now, sign)

    def cancel_execution(
        self, job_id: str, thing: str, now: float, sign: Signer, *, force: bool = False
    ) -> list[Publish]:
        """AWS CancelJobExecution: IN_PROGRESS needs force; a terminal execution is an error."""
        found = self.executions.get((JobId(job_id), ThingName(thing)))
        if found is None:
            raise EmulatorError(f"job {job_id} has no execution on thing {thing}")
        if found.status.terminal:
            raise EmulatorError(f"job {job_id} on {thing} is already {found.status.value}")
        if found.status is ExecutionStatus.IN_PROGRESS and not force:
            raise EmulatorError(f"job {job_id} on {thing} is IN_PROGRESS: cancel it with force")
        return self._service_change(
            [(found, self._ended(found, ExecutionStatus.CANCELED, now, force))], now, sign
        )

    def delete_job(
        self, job_id: str, now: float, sign: Signer, *, force: bool = False
    ) -> list[Publish]:
        """AWS DeleteJob: refused while an execution is IN_PROGRESS unless forced."""
        job = self._job(job_id)
        mine = [e for e in self.executions.values() if e.job_id == job.job_id]
        if not force and any(e.status is ExecutionStatus.IN_PROGRESS for e in mine):
            raise EmulatorError(f"job {job_id} has executions IN_PROGRESS: delete it with force")
        by_thing: dict[ThingName, bool] = {}
        for found in mine:
            by_thing[found.thing_name] = by_thing.get(found.thing_name, False) or found.pending
        heads = {thing: self._snapshot(thing) for thing in by_thing}
        for found in mine:
            del self.executions[(found.job_id, found.thing_name)]
        del self.jobs[job.job_id]
        out: list[Publish] = []
        for thing, was_pending in sorted(by_thing.items()):
            out += self._notifications(thing, heads[thing], was_pending, now, sign)
        return out

    def expire(self, now: float, sign: Signer) -> list[Publish]:
        """IN_PROGRESS executions whose step or in-progress timer ran out -> TIMED_OUT."""
        changed = []
        for found in self.executions.values():
            if found.status is not ExecutionStatus.IN_PROGRESS:
                continue
            deadlines = [
                d for d in (found.step_deadline, found.in_progress_deadline) if d is not None
            ]
            if deadlines and min(deadlines) <= now:
                changed.append((found, self._ended(found, ExecutionStatus.TIMED_OUT, now, False)))
        return self._service_change(changed, now, sign)

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for e in self.executions.values()
            if e.status is ExecutionStatus.IN_PROGRESS
            for d in (e.step_deadline, e.in_progress_deadline)
            if d is not None
        ]
        return min(deadlines, default=None)

    @staticmethod
    def _ended(found: Execution, status: ExecutionStatus, now: float, force: bool) -> Execution:
        # Service-side changes do not bump versionNumber: AWS counts device updates only.
        return attrs.evolve(
            found,
            status=status,
            last_updated_at=int(now),
            step_deadline=None,
            in_progress_deadline=None,
            force_canceled=force and status is ExecutionStatus.CANCELED,
        )

    # ---- persistence -----------------------------------------------------------------

    def to_json(self) -> JsonObject:
        return {
            "version": 1,
            "nextSeq": self.next_seq,
            "jobs": [
                {
                    "jobId": j.job_id,
                    "document": j.document_json(),
                    "targets": list[JsonValue](j.targets),
                    "presignedExpiresIn": j.presigned_expires_in,
                    "inProgressTimeoutMinutes": j.in_progress_timeout_minutes,
                    "createdAt": j.created_at,
                    "canceled": j.canceled,
                    "retries": dict(j.retries),
                }
                for j in self.jobs.values()
            ],
            "executions": [e.to_json() for e in self.executions.values()],
        }

    def load_json(self, data: Mapping[str, JsonValue]) -> None:
        """Replace the state with a saved one; raises ValueError/KeyError/TypeError on a bad file."""
        jobs: dict[JobId, Job] = {}
        for raw in _list(data["jobs"]):
            item = _obj(raw)
            job_id = JobId(_str(item["jobId"]))
            timeout = item.get("inProgressTimeoutMinutes")
            jobs[job_id] = Job(
                job_id=job_id,
                document=json.dumps(_obj(item["document"]), separators=(",", ":")),
                targets=tuple(ThingName(_str(t)) for t in _list(item["targets"])),
                presigned_expires_in=_int(item["presignedExpiresIn"]),
                in_progress_timeout_minutes=None if timeout is None else _int(timeout),
                created_at=_int(item["createdAt"]),
                canceled=bool(item.get("canceled", False)),
                retries=_retry_limits(
                    {k: _int(v) for k, v in _obj(item.get("retries") or {}).items()}
                ),
            )
        executions: dict[Key, Execution] = {}
        for raw in _list(data["executions"]):
            found = Execution.from_json(_obj(raw))
            if found.job_id not in jobs:
                raise ValueError(f"execution of unknown job {found.job_id}")
            executions[(found.job_id, found.thing_name)] = found
        self.jobs = jobs
        self.executions = executions
        self.next_seq = max(
            [_int(data.get("nextSeq", 1))] + [e.seq + 1 for e in executions.values()]
        )


def _retry_limits(retries: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """jobExecutionsRetryConfig as {failureType: numberOfRetries}; ALL sets both types."""
    limits: dict[str, int] = {}
    for kind, count in retries.items():
        if kind not in RETRY_FAILURE_TYPES:
            raise EmulatorError(
                f"create_job: retry failure type must be one of {', '.join(RETRY_FAILURE_TYPES)},"
                f" got {kind!r}"
            )
        if not _is_int(count) or not 0 <= count <= MAX_RETRIES:
            raise EmulatorError(
                f"create_job: numberOfRetries must be 0-{MAX_RETRIES}, got {count!r} for {kind}"
            )
        for name in ("FAILED", "TIMED_OUT") if kind == "ALL" else (kind,):
            limits[name] = max(limits.get(name, 0), count)
    return tuple(sorted(limits.items()))


def _publish(topic: str, body: JsonObject) -> Publish:
    return Publish(topic=topic, body=json.dumps(body, separators=(",", ":")))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(value: JsonValue) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _int(value: JsonValue) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_float(value: JsonValue) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _obj(value: JsonValue) -> JsonObject:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return value


def _list(value: JsonValue) -> list[JsonValue]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value
