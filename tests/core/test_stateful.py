"""Random event sequences against the core, with the invariants a device relies on.

The rules play the drivers and the cloud, badly on purpose: replies to old requests,
duplicates, garbage, cancellations, timer firings, reconnects, results of unknown calls.
"""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.core.playbook import check_declared
from tests.core.strategies import EVENTS
from upparat.core import machine, outbox
from upparat.core.commands import (
    CallHook,
    CancelDownload,
    CancelHook,
    Command,
    DescribeJob,
    Exit,
    Persist,
    RequestPendingJobs,
    SetTimer,
    SignalReady,
    StartDownload,
    UpdateJob,
)
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookProgressed,
    HookResult,
    HookRetryLater,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
    JobDescribed,
    JobsChanged,
    MqttConnected,
    MqttDisconnected,
    PendingJobsListed,
    RequestKind,
    RequestRejected,
    ShutdownRequested,
    Started,
    SubscriptionsAcked,
    TimerFired,
    UpdateAccepted,
)
from upparat.core.model import (
    TOKEN_PREFIX,
    CallId,
    ClientToken,
    DownloadFailure,
    DownloadId,
    HookKind,
    InvalidJobDocument,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    JournalRecord,
    Phase,
    RejectCode,
    Settings,
    TimerKind,
)

PREFIX = "upparat_"
JOBS = [JobId("upparat_1"), JobId("upparat_2"), JobId("upparat_3"), JobId("other_1")]
SETTINGS = Settings(
    retry_interval=5,
    max_retries=2,
    hook_unavailable_timeout=30,
    progress_interval=10,
    max_restarts=2,
    request_timeout=30,
    restart_timeout=100,
)

job_ids = st.sampled_from(JOBS)
summaries = st.builds(JobSummary, job_id=job_ids, queued_at=st.integers(0, 3))
job_lists = st.lists(summaries, max_size=2).map(tuple)
valid_documents = st.builds(
    JobDocument,
    file=st.sampled_from(["https://h/fw?sig=1"] * 15 + ["http://h/fw"]),
    version=st.sampled_from(["1", "2"]),
    force=st.booleans(),
)
documents = st.one_of(
    *[valid_documents] * 6,
    st.builds(InvalidJobDocument, field=st.just("version"), reason=st.just("is missing")),
)
hook_results = st.one_of(
    st.builds(
        HookSuccess,
        value=st.sampled_from(["1", "2"]),
        attributes=st.sampled_from([(), (("slot", "A"),), (("bad key", ""),)]),
    ),
    st.builds(HookRetryLater, retry_after=st.none() | st.floats(0, 100)),
    st.builds(HookFailure, reason=st.just("X"), message=st.text(max_size=5)),
    st.just(HookUnavailable()),
    st.just(HookDeadlineExceeded()),
    st.just(HookUnimplemented()),
)
CANCELLING = (RejectCode.TERMINAL_STATE_REACHED, RejectCode.INVALID_STATE_TRANSITION)


HOOK_OF: dict[type[machine.Stage], HookKind] = {
    machine.CheckingVersion: HookKind.VERSION,
    machine.CheckingDownload: HookKind.DOWNLOAD,
    machine.Installing: HookKind.INSTALL,
    machine.Restarting: HookKind.RESTART,
    machine.VerifyingVersion: HookKind.VERSION,
    machine.VerifyingReady: HookKind.READY,
}


@attrs.define
class CloudJob:
    """What the jobs service knows about one execution (the test's model of the cloud)."""

    status: JobStatus
    document: JobDocument | InvalidJobDocument
    queued_at: int
    state: str | None = None

    @property
    def pending(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


def data_state(n: int) -> str:
    """The statusDetails state of a job found IN_PROGRESS at boot."""
    return ["reboot_start", "download_progress", "installation_start"][n % 3]


def pending_updates(state: machine.State) -> list[outbox.Update]:
    head = state.outbox.head
    return [*([head.update] if head is not None else []), *state.outbox.queue]


def job_of(state: machine.State) -> JobId | None:
    stage = state.stage
    return stage.job.job_id if isinstance(stage, machine.JobStage) else None


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = machine.initial_state(SETTINGS)
        self.now = 0.0
        self.history: list[Command] = []
        self.calls: dict[CallId, JobId] = {}
        """Hook calls the driver is running (started, neither answered nor cancelled)."""
        self.downloads: dict[DownloadId, JobId] = {}
        self.timer_tokens: set[int] = set()
        self.client_tokens: set[str] = set()
        self.steps = 0
        self.cloud: dict[JobId, CloudJob] = {}
        self.disk: JournalRecord | None = None
        """What the runtime wrote on `Persist`: read back by the next process."""
        self.restarts = 0
        self.signalled_before = 0

    # --- the one way in --------------------------------------------------------------

    def feed(self, event: Event) -> None:
        self.steps += 1
        before = self.state
        after, commands = machine.step(before, event, self.now)
        self.state = after
        self.history += commands
        match event:
            case HookFinished(call_id=call_id):
                self.calls.pop(call_id, None)
            case (
                DownloadCompleted(download_id=d)
                | DownloadFailed(download_id=d)
                | DownloadInterrupted(download_id=d)
            ):
                self.downloads.pop(d, None)
            case _:
                pass
        self.check_step(before, event, after, commands)
        check_declared(before, event, after)

    def check_step(
        self,
        before: machine.State,
        event: Event,
        after: machine.State,
        commands: tuple[Command, ...],
    ) -> None:
        publishes = (UpdateJob, RequestPendingJobs, DescribeJob)
        for i, command in enumerate(commands):
            if isinstance(command, CallHook):
                assert command.call_id not in self.calls
                self.calls[command.call_id] = command.context.job_id
                if command.hook is HookKind.RESTART:
                    # The device reads reboot_start after the boot: the cloud must have it.
                    cloud_job = self.cloud.get(command.context.job_id)
                    assert cloud_job is not None
                    assert cloud_job.state == "reboot_start", "restarted before reboot_start"
                    persist = commands[i - 1]
                    assert isinstance(persist, Persist)
                    assert persist.record is not None
                    assert persist.record.job_id == command.context.job_id
                    assert persist.record.phase is Phase.RESTARTING
            elif isinstance(command, CancelHook):
                assert self.calls.pop(command.call_id, None) is not None, "cancelled unknown call"
            elif isinstance(command, Persist):
                self.disk = command.record
            elif isinstance(command, StartDownload):
                self.downloads[command.download_id] = command.job_id
            elif isinstance(command, CancelDownload):
                assert self.downloads.pop(command.download_id, None) is not None
            elif isinstance(command, UpdateJob):
                assert command.job_id.startswith(PREFIX), "touched a foreign job"
            elif isinstance(command, SetTimer):
                assert command.token not in self.timer_tokens, "timer token reused"
                self.timer_tokens.add(command.token)
            elif isinstance(command, Exit):
                assert i == len(commands) - 1
                assert isinstance(after.stage, machine.Stopped)
            if isinstance(command, publishes):
                assert after.link is machine.Link.UP, "published while not subscribed"
                token = command.client_token
                assert token not in self.client_tokens, "client token reused"
                self.client_tokens.add(token)

        # The update in flight leaves the outbox only on a reply that carries its token.
        head = before.outbox.head
        if head is not None and head.update not in pending_updates(after):
            assert isinstance(event, UpdateAccepted | RequestRejected), "update lost"
            assert event.client_token in head.tokens, "a stale reply settled the update in flight"

        # At most one download or hook call in flight, and only for the current job.
        in_flight = [*self.calls.values(), *self.downloads.values()]
        assert len(in_flight) <= 1, f"more than one thing in flight: {in_flight}"
        current = job_of(after)
        assert all(job == current for job in in_flight), "work left running for another job"

        # A job left behind ended with a final report, was ended by the cloud, or stays
        # resumable (we fetch again and keep its journal).
        previous = job_of(before)
        if previous is not None and previous != current:
            reported = any(
                isinstance(c, UpdateJob)
                and c.job_id == previous
                and c.status.value != "IN_PROGRESS"
                for c in commands
            ) or any(u.job_id == previous and u.terminal for u in after.outbox.queue)
            ended_by_cloud = self.cancels(event, previous)
            if not (reported or ended_by_cloud):
                assert isinstance(
                    after.stage, machine.FetchingJobs | machine.ShuttingDown | machine.Stopped
                )
                assert Persist(record=None) not in commands, "resumable job lost its journal"

        signals = self.history[self.signalled_before :]
        assert sum(isinstance(c, SignalReady) for c in signals) <= 1

    @staticmethod
    def cancels(event: Event, job_id: JobId) -> bool:
        match event:
            case (
                JobsChanged(in_progress=ip, queued=q, skipped=bad)
                | PendingJobsListed(in_progress=ip, queued=q, skipped=bad)
            ):
                # A job whose entry did not parse is still listed: never taken for ended.
                listed = {s.job_id for s in (*ip, *q)} | {e.job_id for e in bad}
                return job_id not in listed
            case RequestRejected(code=code):
                return code in CANCELLING
            case JobDescribed(execution=execution):
                return execution.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)
            case _:
                return False

    def last(self, kind: type[Command], data: st.DataObject) -> Command | None:
        """The last command of `kind`, or (sometimes) an older one: a stale reply."""
        found = [c for c in self.history if isinstance(c, kind)]
        if not found:
            return None
        if data.draw(st.integers(0, 3)):
            return found[-1]
        newest_first = found[::-1][:4]
        return newest_first[data.draw(st.integers(0, len(newest_first) - 1))]

    # --- the drivers and the cloud playing along ----------------------------------------

    @initialize(
        journal=st.none()
        | st.builds(
            JournalRecord,
            job_id=job_ids,
            phase=st.sampled_from(Phase),
            restart_count=st.integers(0, 3),
        ),
        jobs=st.dictionaries(job_ids, st.tuples(documents, st.integers(0, 4)), max_size=3),
    )
    def boot(
        self,
        journal: JournalRecord | None,
        jobs: dict[JobId, tuple[JobDocument | InvalidJobDocument, int]],
    ) -> None:
        for n, (job_id, (document, kind)) in enumerate(sorted(jobs.items())):
            self.cloud[job_id] = CloudJob(
                JobStatus.QUEUED if kind else JobStatus.IN_PROGRESS,
                document,
                queued_at=n,
                state=None if kind else data_state(n),
            )
        self.feed(Started(journal=journal))
        self.feed(MqttConnected())
        self.feed(SubscriptionsAcked())

    @rule(job_id=job_ids, document=documents, in_progress=st.integers(0, 4))
    def cloud_queues_a_job(
        self, job_id: JobId, document: JobDocument | InvalidJobDocument, in_progress: int
    ) -> None:
        status = JobStatus.IN_PROGRESS if not in_progress else JobStatus.QUEUED
        state = "reboot_start" if not in_progress else None
        self.cloud[job_id] = CloudJob(status, document, queued_at=self.steps, state=state)
        self.feed(self.cloud_notification())

    @rule(data=st.data(), status=st.sampled_from([JobStatus.CANCELED, JobStatus.REMOVED]))
    def cloud_cancels_a_job(self, data: st.DataObject, status: JobStatus) -> None:
        pending = sorted(j for j, c in self.cloud.items() if c.pending)
        current = job_of(self.state)
        if current in pending and data.draw(st.integers(0, 3)):
            pending = [current]  # mostly the job being worked on: the interesting case
        if pending:
            self.cloud[data.draw(st.sampled_from(pending))].status = status
            self.feed(self.cloud_notification())

    def cloud_notification(self) -> JobsChanged:
        in_progress, queued = self.cloud_lists()
        return JobsChanged(in_progress=in_progress, queued=queued)

    def cloud_lists(self) -> tuple[tuple[JobSummary, ...], tuple[JobSummary, ...]]:
        def listed(status: JobStatus) -> tuple[JobSummary, ...]:
            return tuple(
                JobSummary(job_id=j, queued_at=c.queued_at)
                for j, c in sorted(self.cloud.items())
                if c.status is status
            )

        return listed(JobStatus.IN_PROGRESS), listed(JobStatus.QUEUED)

    @rule(data=st.data(), steps=st.integers(1, 20))
    def play_along(self, data: st.DataObject, steps: int) -> None:
        """The cloud and the drivers answer what the core waits for, mostly healthily."""
        for _ in range(steps):
            self.play_once(data)

    def play_once(self, data: st.DataObject) -> None:
        state = self.state
        stage = state.stage
        head = state.outbox.head
        if isinstance(stage, machine.Stopped):
            self.new_process()  # systemd starts the daemon again
        elif isinstance(stage, machine.Idle) and data.draw(st.booleans()):
            job_id = data.draw(job_ids)
            document = data.draw(documents)
            self.cloud[job_id] = CloudJob(JobStatus.QUEUED, document, queued_at=self.steps)
            self.feed(self.cloud_notification())
        elif (
            isinstance(stage, machine.Restarting | machine.AwaitingReboot)
            and data.draw(st.booleans())
            and self.restarts < 6
        ):
            self.new_process()  # the restart hook rebooted the device
        elif state.link is not machine.Link.UP:
            self.feed(MqttConnected())
            self.feed(SubscriptionsAcked())
        elif isinstance(head, outbox.Sent) and not data.draw(st.integers(0, 7)):
            code = data.draw(st.sampled_from(RejectCode))
            update = head.update
            rejected = RequestRejected(
                request=RequestKind.UPDATE,
                job_id=update.job_id,
                code=code,
                message="no",
                client_token=head.tokens[-1],
            )
            self.feed(rejected)
        elif isinstance(head, outbox.Sent) and data.draw(st.integers(0, 5)):
            update = head.update
            job = self.cloud.get(update.job_id)
            token = head.tokens[-1]
            if job is None or not job.pending:
                code = RejectCode.RESOURCE_NOT_FOUND if job is None else CANCELLING[0]
                self.feed(
                    RequestRejected(
                        request=RequestKind.UPDATE,
                        job_id=update.job_id,
                        code=code,
                        message="no",
                        client_token=token,
                    )
                )
                return
            job.status = update.status
            job.state = dict(update.details).get("state")
            self.feed(UpdateAccepted(job_id=update.job_id, client_token=token))
            self.feed(self.cloud_notification())
        elif isinstance(head, outbox.Throttled):
            self.now += 60
            self.feed(TimerFired(timer=TimerKind.UPDATE_RETRY, token=head.timer))
        elif isinstance(stage, machine.FetchingJobs) and stage.request is not None:
            in_progress, queued = self.cloud_lists()
            token = stage.request.token
            self.feed(PendingJobsListed(in_progress=in_progress, queued=queued, client_token=token))
        elif isinstance(stage, machine.Describing | machine.RefreshingUrl) and stage.request:
            job_id = stage.job_id if isinstance(stage, machine.Describing) else stage.job.job_id
            cloud_job = self.cloud.get(job_id)
            if cloud_job is None:
                self.feed(
                    RequestRejected(
                        request=RequestKind.DESCRIBE,
                        job_id=job_id,
                        code=RejectCode.RESOURCE_NOT_FOUND,
                        message="no such job",
                        client_token=stage.request.token,
                    )
                )
                return
            details = () if cloud_job.state is None else (("state", cloud_job.state),)
            execution = JobExecution(
                job_id=job_id,
                status=cloud_job.status,
                status_details=details,
                document=cloud_job.document,
            )
            self.feed(JobDescribed(execution=execution, client_token=stage.request.token))
        elif isinstance(stage, machine.HookStage) and isinstance(
            stage.call.pending, machine.Running
        ):
            call_id = stage.call.pending.call_id
            hook = HOOK_OF[type(stage)]
            version = stage.job.document.version
            healthy: HookResult = HookSuccess(
                value="0" if isinstance(stage, machine.CheckingVersion) else version
            )
            if isinstance(stage, machine.Restarting):
                healthy = HookUnavailable(detail="going down")  # what a reboot looks like
            result = data.draw(st.one_of(*[st.just(healthy)] * 8, hook_results))
            self.feed(HookFinished(call_id=call_id, hook=hook, result=result))
        elif isinstance(stage, machine.Downloading) and stage.retry is None:
            d = stage.download_id
            choice = data.draw(st.integers(0, 11))
            if choice < 4:
                done = data.draw(st.integers(0, 1000))
                self.feed(DownloadProgressed(download_id=d, bytes_done=done, total=1000))
            elif choice < 5:
                done = data.draw(st.integers(0, 1000))
                self.feed(DownloadInterrupted(download_id=d, bytes_done=done, reason="reset"))
            elif choice < 9:
                self.feed(DownloadCompleted(download_id=d, path="/d/f", size=1000, sha256="x"))
            else:
                failure = data.draw(
                    st.sampled_from([DownloadFailure.URL_EXPIRED] * 6 + list(DownloadFailure))
                )
                self.feed(DownloadFailed(download_id=d, failure=failure, message="boom"))
        else:
            self.fire_awaited_timer(data)

    def fire_awaited_timer(self, data: st.DataObject) -> None:
        """Let time pass until the timer the core waits for fires."""
        stage = self.state.stage
        awaited: list[tuple[TimerKind, int]] = []
        if isinstance(stage, machine.HookStage) and isinstance(
            stage.call.pending, machine.Sleeping
        ):
            awaited.append((TimerKind.HOOK_RETRY, stage.call.pending.timer))
        if isinstance(stage, machine.AwaitingReboot):
            awaited.append((TimerKind.HOOK_RETRY, stage.timer))
        if isinstance(stage, machine.ShuttingDown):
            awaited.append((TimerKind.SHUTDOWN, stage.timer))
        if isinstance(stage, machine.Downloading) and stage.retry is not None:
            awaited.append((TimerKind.DOWNLOAD_RETRY, stage.retry))
        if isinstance(stage, machine.JobStage) and stage.job.reporter.deferred is not None:
            awaited.append((TimerKind.PROGRESS_FLUSH, stage.job.reporter.deferred.timer))
        requesting = machine.FetchingJobs | machine.Describing | machine.RefreshingUrl
        if isinstance(stage, requesting) and stage.request is not None:
            awaited.append((TimerKind.REQUEST_RETRY, stage.request.timer))
        head = self.state.outbox.head
        if head is not None:
            awaited.append((TimerKind.UPDATE_RETRY, head.timer))
        if not awaited:
            return
        kind, token = awaited[data.draw(st.integers(0, len(awaited) - 1))]
        delays = [c.delay for c in self.history if isinstance(c, SetTimer) and c.token == token]
        self.now += max(0.0, delays[-1]) if delays else 1.0
        self.feed(TimerFired(timer=kind, token=token))

    # --- rules: process, connection, time, noise ---------------------------------------

    @rule(
        what=st.sampled_from(["flap", "disconnect", "connect", "suback", "started", "tick"]),
        seconds=st.sampled_from([0.5, 1, 5, 10, 31, 120]),
        journal=st.none() | st.builds(JournalRecord, job_id=job_ids, phase=st.sampled_from(Phase)),
    )
    def noise(self, what: str, seconds: float, journal: JournalRecord | None) -> None:
        if what == "flap":
            self.feed(MqttDisconnected(reason="network"))
            self.feed(MqttConnected())
            self.feed(SubscriptionsAcked())
        elif what == "disconnect":
            self.feed(MqttDisconnected(reason="network"))
        elif what == "connect":
            self.feed(MqttConnected())
        elif what == "suback":
            self.feed(SubscriptionsAcked())
        elif what == "started":
            self.feed(Started(journal=journal))
        else:
            self.now += seconds

    @precondition(lambda self: self.restarts < 3)
    @rule(data=st.data())
    def shutdown(self, data: st.DataObject) -> None:
        self.feed(ShutdownRequested())
        for _ in range(3):
            if isinstance(self.state.stage, machine.Stopped):
                break
            self.play_once(data)  # the final reports may still get through
        if isinstance(self.state.stage, machine.Stopped):
            self.new_process()  # systemd starts the daemon again

    @precondition(lambda self: self.restarts < 3)
    @rule()
    def crash(self) -> None:
        """The process dies without warning; the next one reads the journal."""
        self.new_process()

    def new_process(self) -> None:
        self.restarts += 1
        self.state = machine.initial_state(SETTINGS)
        # The old process's calls and downloads died with it; serials start over.
        self.calls.clear()
        self.downloads.clear()
        self.timer_tokens.clear()
        self.client_tokens.clear()
        self.signalled_before = len(self.history)
        self.feed(Started(journal=self.disk))
        self.feed(MqttConnected())
        self.feed(SubscriptionsAcked())

    # --- rules: the cloud -------------------------------------------------------------

    @rule(data=st.data(), in_progress=job_lists, queued=job_lists)
    def pending_jobs_reply(
        self,
        data: st.DataObject,
        in_progress: tuple[JobSummary, ...],
        queued: tuple[JobSummary, ...],
    ) -> None:
        request = self.last(RequestPendingJobs, data)
        token = request.client_token if isinstance(request, RequestPendingJobs) else None
        self.feed(PendingJobsListed(in_progress=in_progress, queued=queued, client_token=token))

    @rule(in_progress=job_lists, queued=job_lists, keep_current=st.integers(0, 3))
    def notify(
        self, in_progress: tuple[JobSummary, ...], queued: tuple[JobSummary, ...], keep_current: int
    ) -> None:
        current = job_of(self.state)
        if current is not None and keep_current:
            # Mostly a change elsewhere; a quarter of them cancel the current job.
            in_progress = (*in_progress, JobSummary(job_id=current, queued_at=0))
        self.feed(JobsChanged(in_progress=in_progress, queued=queued))

    @rule(
        data=st.data(),
        status=st.sampled_from(JobStatus),
        reboot_started=st.booleans(),
        document=documents,
        other_job=st.booleans(),
    )
    def describe_reply(
        self,
        data: st.DataObject,
        status: JobStatus,
        reboot_started: bool,
        document: JobDocument | InvalidJobDocument,
        other_job: bool,
    ) -> None:
        request = self.last(DescribeJob, data)
        if not isinstance(request, DescribeJob):
            return
        job_id = data.draw(job_ids) if other_job else request.job_id
        details = (("state", "reboot_start"),) if reboot_started else ()
        execution = JobExecution(
            job_id=job_id, status=status, status_details=details, document=document
        )
        self.feed(JobDescribed(execution=execution, client_token=request.client_token))

    @rule(data=st.data())
    def accept_update(self, data: st.DataObject) -> None:
        """A late or duplicate acceptance of an update sent earlier (not the one in flight:
        the cloud model in play_along accepts that one)."""
        head = self.state.outbox.head
        in_flight = set(head.tokens) if head is not None else set()
        older = [c for c in self.history if isinstance(c, UpdateJob)]
        older = [c for c in older if c.client_token not in in_flight][-6:]
        if older:
            update = older[data.draw(st.integers(0, len(older) - 1))]
            self.feed(UpdateAccepted(job_id=update.job_id, client_token=update.client_token))

    @rule(data=st.data(), kind=st.sampled_from(RequestKind), code=st.sampled_from(RejectCode))
    def reject(self, data: st.DataObject, kind: RequestKind, code: RejectCode) -> None:
        command_type: type[Command] = {
            RequestKind.UPDATE: UpdateJob,
            RequestKind.DESCRIBE: DescribeJob,
            RequestKind.GET_PENDING: RequestPendingJobs,
        }[kind]
        request = self.last(command_type, data)
        if not isinstance(request, UpdateJob | DescribeJob | RequestPendingJobs):
            return
        job_id = None if isinstance(request, RequestPendingJobs) else request.job_id
        self.feed(
            RequestRejected(
                request=kind,
                job_id=job_id,
                code=code,
                message="rejected",
                client_token=request.client_token,
            )
        )

    # --- rules: hooks, downloads, timers ----------------------------------------------

    @rule(data=st.data(), result=hook_results, unknown=st.booleans())
    def hook_answers(self, data: st.DataObject, result: object, unknown: bool) -> None:
        call = self.last(CallHook, data)
        if not isinstance(call, CallHook):
            return
        call_id = CallId(call.call_id + 1000) if unknown else call.call_id
        assert isinstance(
            result,
            HookSuccess
            | HookRetryLater
            | HookFailure
            | HookUnavailable
            | HookDeadlineExceeded
            | HookUnimplemented,
        )
        self.feed(HookFinished(call_id=call_id, hook=call.hook, result=result))

    @rule(data=st.data(), percent=st.none() | st.integers(0, 100))
    def install_progress(self, data: st.DataObject, percent: int | None) -> None:
        call = self.last(CallHook, data)
        if isinstance(call, CallHook):
            self.feed(HookProgressed(call_id=call.call_id, line="writing", percent=percent))

    @rule(
        data=st.data(),
        what=st.sampled_from(["progress", "retrying", "completed", "failed"]),
        failure=st.sampled_from(DownloadFailure),
        done=st.integers(0, 1000),
    )
    def download_event(
        self, data: st.DataObject, what: str, failure: DownloadFailure, done: int
    ) -> None:
        download = self.last(StartDownload, data)
        if not isinstance(download, StartDownload):
            return
        d = download.download_id
        event: Event
        if what == "progress":
            event = DownloadProgressed(download_id=d, bytes_done=done, total=1000)
        elif what == "retrying":
            event = DownloadInterrupted(download_id=d, bytes_done=done, reason="reset")
        elif what == "completed":
            event = DownloadCompleted(download_id=d, path="/d/f", size=done, sha256="x")
        else:
            event = DownloadFailed(download_id=d, failure=failure, message="boom")
        self.feed(event)

    @rule(data=st.data())
    def timer_fires(self, data: st.DataObject) -> None:
        """Any recent timer fires, late or stale (the core must check the token)."""
        timers = [c for c in self.history if isinstance(c, SetTimer)][-12:]
        if timers:
            timer = timers[data.draw(st.integers(0, len(timers) - 1))]
            self.now += max(0.0, timer.delay)
            self.feed(TimerFired(timer=timer.timer, token=timer.token))

    @rule(data=st.data(), event_class=st.sampled_from(sorted(EVENTS, key=lambda c: c.__name__)))
    def garbage(self, data: st.DataObject, event_class: type[Event]) -> None:
        event = data.draw(EVENTS[event_class])
        # Garbage is about ids nobody knows; answers of real calls are the other rules' job.
        if isinstance(event, HookFinished | HookProgressed) and event.call_id in self.calls:
            return
        downloads = DownloadCompleted | DownloadFailed | DownloadProgressed | DownloadInterrupted
        if isinstance(event, downloads) and event.download_id in self.downloads:
            return
        self.feed(event)  # random tokens and timers: almost always stale, which is the point

    @invariant()
    def stopped_means_nothing_runs(self) -> None:
        if isinstance(self.state.stage, machine.Stopped):
            assert not self.calls
            assert not self.downloads

    @invariant()
    def client_tokens_are_deterministic(self) -> None:
        assert all(t.startswith(TOKEN_PREFIX) for t in self.client_tokens)
        assert all(isinstance(t, str) for t in self.client_tokens)
        _ = ClientToken  # tokens are NewType str


CoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCore = CoreMachine.TestCase


def test_a_scripted_happy_path_keeps_the_invariants() -> None:
    """The rules can reach the end of a job (guards against rules that never fit)."""
    m = CoreMachine()
    m.feed(Started())
    m.feed(MqttConnected())
    m.feed(SubscriptionsAcked())
    token = m.history[-2]
    assert isinstance(token, RequestPendingJobs)
    m.feed(
        PendingJobsListed(
            in_progress=(),
            queued=(JobSummary(job_id=JOBS[0], queued_at=1),),
            client_token=token.client_token,
        )
    )
    describe = [c for c in m.history if isinstance(c, DescribeJob)][-1]
    m.feed(
        JobDescribed(
            execution=JobExecution(
                job_id=JOBS[0],
                status=JobStatus.QUEUED,
                document=JobDocument(file="https://h/f", version="2", force=True),
            ),
            client_token=describe.client_token,
        )
    )
    download = [c for c in m.history if isinstance(c, StartDownload)][-1]
    m.feed(DownloadCompleted(download_id=download.download_id, path="/p", size=1, sha256="x"))
    assert list(m.calls.values()) == [JOBS[0]]
