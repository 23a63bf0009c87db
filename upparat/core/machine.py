"""Every transition rule of the upparat job lifecycle: `step(state, event, now)`.

Pure: no I/O, no clock, no threads and no logging calls (log lines are `Log` commands).
`ROWS` at the end is the table of stage x event: each event type's handler and arrows;
`step` dispatches through it, and the map in README.md next to this module is drawn from it.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, assert_never

import attrs

from upparat.core import outbox, package, progress
from upparat.core.backoff import Backoff
from upparat.core.commands import (
    AskHookInfo,
    CallHook,
    CancelDownload,
    CancelHook,
    Command,
    ConnectMqtt,
    DescribeJob,
    DiscardDownload,
    Exit,
    Log,
    Persist,
    RequestPendingJobs,
    SetTimer,
    SignalReady,
    StartDownload,
    SubscribeJobTopics,
    UpdateJob,
)
from upparat.core.details import status_details
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookInfoFailed,
    HookProgressed,
    HookResult,
    HookRetryLater,
    HookServerInfo,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
    JobDescribed,
    JobsChanged,
    MqttConnected,
    MqttConnectFailed,
    MqttDisconnected,
    PackageReportRefused,
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    PayloadIgnored,
    PendingJobsListed,
    ReplyUnusable,
    RequestKind,
    RequestRejected,
    ShadowRejected,
    ShutdownRequested,
    Started,
    SubscriptionsAcked,
    SubscriptionsRefused,
    TimerFired,
    UpdateAccepted,
)
from upparat.core.model import (
    CallId,
    ClientToken,
    DownloadFailure,
    DownloadId,
    HookContext,
    HookKind,
    InstallFile,
    InvalidJobDocument,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    JournalRecord,
    LogLevel,
    Phase,
    RejectCode,
    ReportedState,
    Settings,
    SkippedEntry,
    TimerKind,
    client_token,
)
from upparat.core.outbox import Outbox, Update
from upparat.core.progress import Reporter
from upparat.core.urls import file_url_problem, redact

RETRY_AFTER_CAP = 10
"""A hook's retry_after hint is capped at this many retry_intervals."""
MAX_URL_REFUSALS = 3
"""Fresh URLs refused with HTTP 403 in a row before the download fails (not an expiry then)."""


# --- values inside states ------------------------------------------------------


class Link(enum.Enum):
    """The MQTT session as far as publishing is concerned."""

    DOWN = "down"
    SUBSCRIBING = "subscribing"
    """Connected; SubscribeJobTopics sent, SUBACK not yet seen: do not publish yet."""
    UP = "up"


class VerifyOrigin(enum.Enum):
    """Why the installation is being verified; names the success without any check."""

    AFTER_BOOT = "after_boot"
    """The cloud shows `reboot_start`: the device (or the daemon) came back."""
    SOFT_RESTART = "soft_restart"
    """Restart returned and the daemon lives on."""
    NO_RESTART_HOOK = "no_restart_hook"


@attrs.frozen(kw_only=True)
class Dialing:
    """`ConnectMqtt` was sent: waiting for `MqttConnected` or `MqttConnectFailed`."""

    failures: int
    """Attempts that failed in a row before this one (a lost session counts as one)."""


@attrs.frozen(kw_only=True)
class Redialing:
    """Waiting for the RECONNECT `timer` to connect again."""

    failures: int
    timer: int


@attrs.frozen(kw_only=True)
class Resubscribing:
    """The broker refused filters `refusals` times in a row on this connection; the
    SUBSCRIBE_RETRY `timer` subscribes again."""

    refusals: int
    timer: int


@attrs.frozen(kw_only=True)
class Asking:
    """`AskHookInfo` was sent; `failures` calls failed in a row before it."""

    failures: int


@attrs.frozen(kw_only=True)
class AskingLater:
    """GetInfo failed `failures` times in a row; HOOK_INFO_RETRY `timer` asks again."""

    failures: int
    timer: int


@attrs.frozen(kw_only=True)
class Request:
    """A get / describe we sent and whose reply we wait for."""

    token: ClientToken
    timer: int
    """Token of the REQUEST_RETRY timer that sends it again."""
    attempt: int = 1


@attrs.frozen(kw_only=True)
class Running:
    call_id: CallId


@attrs.frozen(kw_only=True)
class Sleeping:
    """Waiting for the HOOK_RETRY timer `timer` before calling again."""

    timer: int


@attrs.frozen(kw_only=True)
class Outage:
    """The hook server has been unreachable since `since`, for `failures` calls in a row."""

    since: float
    failures: int


@attrs.frozen(kw_only=True)
class Call:
    """One hook of one job, over all its attempts (which hook: the stage says)."""

    attempt: int
    """1-based; grows by one per RETRY_LATER, not per UNAVAILABLE."""
    started_at: float
    pending: Running | Sleeping
    outage: Outage | None = None


@attrs.frozen(kw_only=True)
class Job:
    """The job being worked on, in every job stage."""

    job_id: JobId
    document: JobDocument
    execution_number: int | None = None
    """The cloud's executionNumber of this attempt (journaled with every phase)."""
    reporter: Reporter = attrs.field(factory=Reporter)
    check: Request | None = None
    """A pending-jobs request sent after a reconnect to see whether the job is still pending."""


# --- stages: one class per state of the lifecycle --------------------------------


@attrs.frozen(kw_only=True)
class Booting:
    """Waiting for `Started` (and with it the journal of the last run)."""


@attrs.frozen(kw_only=True)
class FetchingJobs:
    """Asking for the pending executions. `request` is None until it can be sent
    (link up and every earlier update answered, so the list already reflects them)."""

    request: Request | None = None


@attrs.frozen(kw_only=True)
class Idle:
    """No upparat job pending: waiting for a notification."""


@attrs.frozen(kw_only=True)
class Describing:
    """A job was selected; waiting for its execution and job document."""

    job_id: JobId
    request: Request | None = None


@attrs.frozen(kw_only=True)
class CheckingVersion:
    """Version hook before the update: is the version already installed?"""

    job: Job
    call: Call
    after_install: bool = False
    """The job had begun installing before the daemon stopped (a power cut between the
    install and the accepted `reboot_start`): the installer may have switched slots and
    the device may run the new version now, unconfirmed by the ready hook."""


@attrs.frozen(kw_only=True)
class CheckingDownload:
    """Download hook: may the download start now?"""

    job: Job
    call: Call


@attrs.frozen(kw_only=True)
class Downloading:
    """One attempt runs (`retry` None), or the DOWNLOAD_RETRY `retry` timer starts the next."""

    job: Job
    download_id: DownloadId
    refusals: int = 0
    """URL_EXPIRED failures in a row without any progress in between."""
    interruptions: int = 0
    """Attempts interrupted in a row; one that got new bytes starts the count again."""
    baseline: int = 0
    """Most bytes on disk at the end of an earlier attempt: more is progress."""
    retry: int | None = None


@attrs.frozen(kw_only=True)
class RefreshingUrl:
    """The pre-signed URL expired: describing the job again for a fresh one."""

    job: Job
    refusals: int
    request: Request | None = None


@attrs.frozen(kw_only=True)
class Installing:
    job: Job
    call: Call
    file: InstallFile


@attrs.frozen(kw_only=True)
class ReportingReboot:
    """`reboot_start` is queued or sent; Restart is called only once the cloud accepted it,
    because it is what the device reads after it boots."""

    job: Job


@attrs.frozen(kw_only=True)
class Restarting:
    job: Job
    call: Call


@attrs.frozen(kw_only=True)
class AwaitingReboot:
    """The hook server went away during Restart: the restart is under way and the daemon
    expects to be stopped. HOOK_RETRY `timer` (restart_timeout) verifies if it is not."""

    job: Job
    timer: int


@attrs.frozen(kw_only=True)
class VerifyingVersion:
    job: Job
    call: Call
    origin: VerifyOrigin


@attrs.frozen(kw_only=True)
class VerifyingReady:
    job: Job
    call: Call
    origin: VerifyOrigin
    version_checked: bool


@attrs.frozen(kw_only=True)
class ShuttingDown:
    """Work is cancelled; waiting for the final reports until SHUTDOWN `timer` fires."""

    timer: int


@attrs.frozen(kw_only=True)
class Stopped:
    """`Exit` was emitted; every later event is ignored."""


HookStage = (
    CheckingVersion | CheckingDownload | Installing | Restarting | VerifyingVersion | VerifyingReady
)
"""Stages waiting for a hook."""
CheckStage = HookStage | Downloading | ReportingReboot | AwaitingReboot
"""Job stages that check after a reconnect whether their job is still pending."""
JobStage = CheckStage | RefreshingUrl
"""Stages working on a job (they all carry `job`)."""
Stage = Booting | FetchingJobs | Idle | Describing | JobStage | ShuttingDown | Stopped


@attrs.frozen(kw_only=True)
class State:
    """The whole core: the stage plus what outlives a stage."""

    settings: Settings
    stage: Stage
    link: Link = Link.DOWN
    dial: Dialing | Redialing | None = None
    """Connecting to the broker; None before `Started` and while a session is up."""
    resubscribe: Resubscribing | None = None
    hook_info: Asking | AskingLater | None = None
    """GetInfo under way; None once answered (it is asked at start and when a job begins)."""
    """Subscriptions refused on this connection (only while `link` is SUBSCRIBING)."""
    serial: int = 0
    """Source of client tokens, call ids, download ids and timer tokens."""
    journal: JournalRecord | None = None
    """What the last `Persist` wrote (or what `Started` read)."""
    absent_hooks: frozenset[HookKind] = frozenset()
    """Hooks the server does not implement (HookServerInfo, or UNIMPLEMENTED answers)."""
    outbox: Outbox = attrs.field(factory=Outbox)
    ready_signalled: bool = False
    draws: int = 0
    """How many jitters were drawn from `settings.seed` (the next draw's number)."""
    skipped_seen: tuple[str, ...] = ()
    """Reasons of bad pending-list entries already logged (the latest few): a broken entry
    that every notification repeats is logged once, not with every message."""
    package: package.PackageReport | None = None
    """The `$package` shadow report (`upparat.core.package`); None: `package_name` unset."""


Out = tuple[State, list[Command]]


def initial_state(settings: Settings) -> State:
    report = package.PackageReport() if settings.package_name else None
    return State(settings=settings, stage=Booting(), package=report)


def step(state: State, event: Event, now: float) -> tuple[State, tuple[Command, ...]]:
    """Apply one event; return the next state and the commands to carry out, in order."""
    if isinstance(state.stage, Stopped):
        return state, ()
    state, commands = _dispatch(state, event, now)
    state, more = _pump(state, now)
    state, reports = _package(state, None, now)
    return state, (*commands, *more, *reports)


def _dispatch(state: State, event: Event, now: float) -> Out:
    """The event's row of `TABLE` (at the end of this module) handles it."""
    row: Row[Any] = TABLE[type(event)]
    return row.handler(state, event, now)


# --- the `$package` shadow report: a sub-machine of its own (upparat.core.package) -------


def _package(state: State, event: package.PackageInput | None, now: float) -> Out:
    """Hand the sub-machine `event` (None: let it send what it waits to send)."""
    report, stage = state.package, state.stage
    if report is None or isinstance(stage, Stopped):
        return state, []
    ctx = package.Ctx(
        settings=state.settings,
        serial=state.serial,
        draws=state.draws,
        link_up=state.link is Link.UP,
        idle=isinstance(stage, Idle),
        sending=not isinstance(stage, Booting | ShuttingDown),
        version_hook=HookKind.VERSION not in state.absent_hooks,
    )
    if event is None:
        report, ctx, commands = package.pump(report, ctx, now)
    else:
        report, ctx, commands = package.step(report, ctx, event, now)
    return attrs.evolve(state, package=report, serial=ctx.serial, draws=ctx.draws), commands


def _package_saw(
    state: State, learn: Callable[[package.PackageReport], package.PackageReport]
) -> State:
    """A job learnt what runs (`package.job_version` and friends say what it means)."""
    report = state.package
    return state if report is None else attrs.evolve(state, package=learn(report))


def _package_heard(
    state: State,
    learn: Callable[[package.PackageReport], tuple[package.PackageReport, list[Command]]],
) -> Out:
    """A job's version hook said what runs (`package.job_version`, `job_verified`): what it
    means, and the log lines about attributes the report leaves out."""
    report = state.package
    if report is None:
        return state, []
    report, logs = learn(report)
    return attrs.evolve(state, package=report), logs


# --- connection and start ---------------------------------------------------------


def _on_started(state: State, event: Started, now: float) -> Out:
    if not isinstance(state.stage, Booting):
        return state, [_log(LogLevel.DEBUG, "a second Started was ignored")]
    journal = event.journal
    if journal is None:
        note = "no journal"
    else:
        note = (
            f"journal: job {journal.job_id} in phase {journal.phase.value}, "
            f"{journal.restart_count} restart(s)"
        )
    state = attrs.evolve(state, journal=journal, stage=FetchingJobs())
    commands: list[Command] = [_log(LogLevel.INFO, f"started; {note}")]
    state, ask = _ask_hook_info(state)
    commands += ask
    if state.link is Link.DOWN and state.dial is None:
        state = attrs.evolve(state, dial=Dialing(failures=0))
        commands.append(ConnectMqtt())
    return state, commands


def _on_mqtt_connected(state: State, event: MqttConnected, now: float) -> Out:
    state = attrs.evolve(state, link=Link.SUBSCRIBING, dial=None, resubscribe=None)
    state = _forget_requests(state)
    return state, [SubscribeJobTopics(), _log(LogLevel.INFO, "MQTT connected")]


def _on_mqtt_disconnected(state: State, event: MqttDisconnected, now: float) -> Out:
    reason = event.reason
    if state.link is Link.DOWN:
        return state, [_log(LogLevel.DEBUG, f"MQTT: a second disconnect ({reason})")]
    state = attrs.evolve(state, link=Link.DOWN, resubscribe=None)
    state, commands = _redial(_forget_requests(state), failures=1)
    return state, [_log(LogLevel.WARNING, f"MQTT disconnected: {reason}"), *commands]


def _on_connect_failed(state: State, event: MqttConnectFailed, now: float) -> Out:
    reason = event.reason
    dial = state.dial
    if not isinstance(dial, Dialing):
        return state, [_log(LogLevel.DEBUG, f"MQTT: a stale connect failure ({reason})")]
    state, commands = _redial(state, failures=dial.failures + 1)
    delay = state.settings.reconnect_backoff.cap
    # One line for operators per outage; the repeats at debug level.
    level = LogLevel.WARNING if dial.failures == 0 else LogLevel.DEBUG
    message = f"MQTT: cannot connect: {reason}; trying again with backoff (at most {delay:g} s)"
    return state, [_log(level, message), *commands]


def _redial(state: State, *, failures: int) -> Out:
    """Connect again after the reconnect backoff: jittered, so that a fleet that lost its
    broker at the same instant does not come back in lockstep."""
    state, delay = _delay(state, state.settings.reconnect_backoff, failures)
    state, timer = _next(state)
    state = attrs.evolve(state, dial=Redialing(failures=failures, timer=timer))
    return state, [SetTimer(timer=TimerKind.RECONNECT, token=timer, delay=delay)]


def _on_subscriptions_refused(state: State, event: SubscriptionsRefused, now: float) -> Out:
    refused = event.refused
    if state.link is not Link.SUBSCRIBING:
        return state, [_log(LogLevel.DEBUG, "a SUBACK refusal without a pending subscribe")]
    previous = state.resubscribe
    refusals = 1 if previous is None else previous.refusals + 1
    state, delay = _delay(state, state.settings.reconnect_backoff, refusals)
    state, timer = _next(state)
    state = attrs.evolve(state, resubscribe=Resubscribing(refusals=refusals, timer=timer))
    commands: list[Command] = [
        _log(
            LogLevel.WARNING,
            f"the broker refused the subscription to {topic_filter} ({code}); check that "
            f"the IoT policy allows iot:Subscribe on it; subscribing again in {delay:.0f} s",
        )
        for topic_filter, code in refused
    ]
    commands.append(SetTimer(timer=TimerKind.SUBSCRIBE_RETRY, token=timer, delay=delay))
    return state, commands


def _forget_requests(state: State) -> State:
    """A new or lost session: replies to earlier requests may never come, so ask again."""
    stage = state.stage
    match stage:
        case FetchingJobs() | Describing() | RefreshingUrl():
            stage = attrs.evolve(stage, request=None)
        case (
            CheckingVersion()
            | CheckingDownload()
            | Downloading()
            | Installing()
            | ReportingReboot()
            | Restarting()
            | AwaitingReboot()
            | VerifyingVersion()
            | VerifyingReady()
        ):
            stage = attrs.evolve(stage, job=attrs.evolve(stage.job, check=None))
        case Booting() | Idle() | ShuttingDown() | Stopped():
            pass
        case _:
            assert_never(stage)
    return attrs.evolve(
        state,
        stage=stage,
        outbox=outbox.requeued(state.outbox),
        package=package.forget(state.package),
    )


def _on_subscribed(state: State, event: SubscriptionsAcked, now: float) -> Out:
    state = attrs.evolve(state, resubscribe=None)
    if state.link is not Link.SUBSCRIBING:
        return state, [_log(LogLevel.DEBUG, "a SUBACK without a pending subscribe was ignored")]
    # What was queued while we were away goes out first, in order.
    state, flushed = _flush(attrs.evolve(state, link=Link.UP))
    stage = state.stage
    match stage:
        case Idle():
            # Notifications sent while we were away are lost: fetch the list again.
            return attrs.evolve(state, stage=FetchingJobs()), flushed
        case (
            CheckingVersion()
            | CheckingDownload()
            | Downloading()
            | Installing()
            | ReportingReboot()
            | Restarting()
            | AwaitingReboot()
            | VerifyingVersion()
            | VerifyingReady()
        ):
            # The job may have been cancelled while we were away.
            state, request, commands = _send_get(state)
            job = attrs.evolve(stage.job, check=request)
            return attrs.evolve(state, stage=attrs.evolve(stage, job=job)), [*flushed, *commands]
        case (
            Booting() | FetchingJobs() | Describing() | RefreshingUrl() | ShuttingDown() | Stopped()
        ):
            return state, flushed  # _pump sends what these stages wait for
        case _:
            assert_never(stage)


def _on_payload_ignored(state: State, event: PayloadIgnored, now: float) -> Out:
    message = f"ignored a message on {event.topic}: {event.reason}"
    return state, [_log(LogLevel.WARNING, message)]


# --- pending jobs, selection, description -------------------------------------------


def _on_pending_listed(state: State, event: PendingJobsListed, now: float) -> Out:
    stage = state.stage
    token = event.client_token
    held = _held(event.skipped)
    if isinstance(stage, FetchingJobs):
        if stage.request is None or token != stage.request.token:
            return state, [_log(LogLevel.DEBUG, "a stale pending-jobs reply was ignored")]
        state, warnings = _note_skipped(state, event.skipped)
        state, commands = _signal_ready(state)
        state, forgotten = _forget_ended_job(state, event.in_progress, event.queued, held)
        state, more = _select(state, event.in_progress, event.queued)
        return state, [*warnings, *commands, *forgotten, *more]
    if isinstance(stage, CheckStage):
        check = stage.job.check
        if check is None or token != check.token:
            return state, [_log(LogLevel.DEBUG, "a stale pending-jobs reply was ignored")]
        state, warnings = _note_skipped(state, event.skipped)
        job = attrs.evolve(stage.job, check=None)
        state = attrs.evolve(state, stage=attrs.evolve(stage, job=job))
        state, more = _check_listed(state, event.in_progress, event.queued, held)
        return state, [*warnings, *more]
    return state, [_log(LogLevel.DEBUG, "an unrequested pending-jobs reply was ignored")]


SKIPPED_SEEN_KEPT = 32
"""How many reasons of bad list entries are remembered for logging each only once."""


def _held(skipped: tuple[SkippedEntry, ...]) -> frozenset[JobId]:
    """Jobs still listed although their entry did not parse: never taken for ended."""
    return frozenset(entry.job_id for entry in skipped if entry.job_id is not None)


def _note_skipped(state: State, skipped: tuple[SkippedEntry, ...]) -> Out:
    """One WARNING per bad entry the first time it is seen; the valid entries are used."""
    seen = state.skipped_seen
    commands: list[Command] = []
    for entry in skipped:
        if entry.reason in seen:
            continue
        seen = (*seen, entry.reason)[-SKIPPED_SEEN_KEPT:]
        note = f"a pending-jobs entry was skipped ({entry.reason}); the other entries are used"
        commands.append(_log(LogLevel.WARNING, note, entry.job_id))
    return attrs.evolve(state, skipped_seen=seen), commands


def _forget_ended_job(
    state: State,
    in_progress: Iterable[JobSummary],
    queued: Iterable[JobSummary],
    held: frozenset[JobId],
) -> Out:
    """The journal's job ended while we were down (cancelled, timed out): forget it and
    remove the partial download it kept for a resume."""
    journal = state.journal
    if journal is None:
        return state, []
    attempts = {s.execution_number for s in (*in_progress, *queued) if s.job_id == journal.job_id}
    if journal.job_id in held or (attempts and _same_attempt(journal, attempts)):
        return state, []
    if attempts:
        numbers = ", ".join(str(n) for n in sorted(n for n in attempts if n is not None))
        note = (
            f"job {journal.job_id}: the journal is of execution {journal.execution_number}, the"
            f" cloud lists execution {numbers} (a retry): the old attempt's record is dropped"
        )
    else:
        note = f"job {journal.job_id}: no longer pending; its journal is dropped"
    state = attrs.evolve(state, journal=None)
    return state, [
        _log(LogLevel.INFO, note, journal.job_id),
        Persist(record=None),
        DiscardDownload(job_id=journal.job_id),
    ]


def _same_attempt(journal: JournalRecord, numbers: Iterable[int | None]) -> bool:
    """Is one of the listed execution numbers the journal's? Unknown numbers (an older
    journal, a cloud that does not say) count as the same attempt, as before numbers."""
    if journal.execution_number is None:
        return True
    return any(n is None or n == journal.execution_number for n in numbers)


def _signal_ready(state: State) -> Out:
    """The first time we know the pending jobs: tell the service manager we are up."""
    if state.ready_signalled:
        return state, []
    return attrs.evolve(state, ready_signalled=True), [SignalReady()]


def _on_jobs_changed(state: State, event: JobsChanged, now: float) -> Out:
    stage = state.stage
    held = _held(event.skipped)
    match stage:
        case FetchingJobs(request=request):
            # A notification listing upparat jobs is as fresh as the reply in flight: it
            # answers the fetch (asking again instead would let a stream of notifications,
            # e.g. about other services' jobs, starve the fetch). Without a request out we
            # still wait for our last reports to be accepted, so the list reflects them.
            if request is None or not _ours(state, (*event.in_progress, *event.queued)):
                return _note_skipped(state, event.skipped)
            state, warnings = _note_skipped(state, event.skipped)
            state, commands = _signal_ready(state)
            state, forgotten = _forget_ended_job(state, event.in_progress, event.queued, held)
            state, more = _select(state, event.in_progress, event.queued)
            return state, [*warnings, *commands, *forgotten, *more]
        case Idle():
            state, warnings = _note_skipped(state, event.skipped)
            state, more = _select(state, event.in_progress, event.queued)
            return state, [*warnings, *more]
        case Describing(job_id=job_id):
            if _listed(job_id, event.in_progress, event.queued, held):
                return state, []
            message = f"job {job_id}: no longer pending while being described; starting over"
            return attrs.evolve(state, stage=FetchingJobs()), [_log(LogLevel.INFO, message)]
        case (
            CheckingVersion()
            | CheckingDownload()
            | Downloading()
            | RefreshingUrl()
            | Installing()
            | ReportingReboot()
            | Restarting()
            | AwaitingReboot()
            | VerifyingVersion()
            | VerifyingReady()
        ):
            state, warnings = _note_skipped(state, event.skipped)
            state, more = _check_listed(state, event.in_progress, event.queued, held)
            return state, [*warnings, *more]
        case Booting() | ShuttingDown() | Stopped():
            return state, []
        case _:
            assert_never(stage)


def _ours(state: State, summaries: Iterable[JobSummary]) -> list[JobSummary]:
    prefix = state.settings.job_prefix
    seen: dict[JobId, JobSummary] = {}
    for summary in summaries:
        if summary.job_id.startswith(prefix) and summary.job_id not in seen:
            seen[summary.job_id] = summary
    return list(seen.values())


def _listed(
    job_id: JobId,
    in_progress: Iterable[JobSummary],
    queued: Iterable[JobSummary],
    held: frozenset[JobId],
) -> bool:
    return job_id in held or any(s.job_id == job_id for s in (*in_progress, *queued))


def _select(
    state: State, in_progress: tuple[JobSummary, ...], queued: tuple[JobSummary, ...]
) -> Out:
    """1.12's rule: the IN_PROGRESS upparat job first, else the oldest QUEUED one."""
    running = _ours(state, in_progress)
    waiting = sorted(_ours(state, queued), key=lambda s: (s.queued_at, s.job_id))
    if len(running) > 1:
        ids = ", ".join(s.job_id for s in running)
        message = f"more than one upparat job is IN_PROGRESS ({ids}); failing all of them"
        commands: list[Command] = [_log(LogLevel.ERROR, message)]
        details = status_details(ReportedState.ERROR_MULTIPLE_IN_PROGRESS, message)
        for summary in running:
            update = Update(job_id=summary.job_id, status=JobStatus.FAILED, details=details)
            state, more = _enqueue(state, update)
            commands += more
        return attrs.evolve(state, stage=FetchingJobs()), commands
    if running or waiting:
        chosen = (running or waiting)[0].job_id
        which = "in progress" if running else "queued"
        message = f"job {chosen}: selected ({which}); describing it"
        state, ask = _ask_hook_info(attrs.evolve(state, stage=Describing(job_id=chosen)))
        return state, [_log(LogLevel.INFO, message, chosen), *ask]
    message = "no pending upparat job; waiting for notifications"
    return attrs.evolve(state, stage=Idle()), [_log(LogLevel.INFO, message)]


def _check_listed(
    state: State,
    in_progress: tuple[JobSummary, ...],
    queued: tuple[JobSummary, ...],
    held: frozenset[JobId],
) -> Out:
    stage = state.stage
    if not isinstance(stage, JobStage) or _listed(stage.job.job_id, in_progress, queued, held):
        return state, []
    why = "is no longer pending (cancelled, removed, timed out or ended); stopping"
    return _abandon(state, stage, why, ended=True)


def _on_described(state: State, event: JobDescribed, now: float) -> Out:
    stage = state.stage
    execution = event.execution
    if isinstance(stage, Describing):
        request = stage.request
        if request is None or event.client_token != request.token:
            return state, [_log(LogLevel.DEBUG, "a stale describe reply was ignored")]
        if execution.job_id != stage.job_id:
            return state, [_log(LogLevel.DEBUG, "a describe reply for another job was ignored")]
        return _take_job(state, execution, now)
    if isinstance(stage, RefreshingUrl):
        request = stage.request
        if request is None or event.client_token != request.token:
            return state, [_log(LogLevel.DEBUG, "a stale describe reply was ignored")]
        if execution.job_id != stage.job.job_id:
            return state, [_log(LogLevel.DEBUG, "a describe reply for another job was ignored")]
        return _refreshed(state, stage, execution, now)
    return state, [_log(LogLevel.DEBUG, "an unrequested describe reply was ignored")]


def _pending(status: JobStatus) -> bool:
    return status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


def _document(state: State, execution: JobExecution) -> JobDocument | InvalidJobDocument:
    document = execution.document
    if isinstance(document, InvalidJobDocument):
        return document
    problem = file_url_problem(document.file, allow_http=state.settings.allow_http)
    if problem is not None:
        return InvalidJobDocument(field="file", reason=problem)
    if state.settings.require_signature and document.signature is None:
        # Before any download: an unsigned file never reaches the device.
        return InvalidJobDocument(
            field="signature",
            reason="is missing and this device requires one ([service] require_signature):"
            " sign the file (upparat-job create --sign-key KEY.pem)",
        )
    return document


def _take_job(state: State, execution: JobExecution, now: float) -> Out:
    job_id = execution.job_id
    if not _pending(execution.status):
        message = f"job {job_id}: is {execution.status.value} now; starting over"
        return attrs.evolve(state, stage=FetchingJobs()), [_log(LogLevel.INFO, message, job_id)]
    state, dropped = _drop_other_attempt(state, execution)
    document = _document(state, execution)
    if isinstance(document, InvalidJobDocument):
        message = f"invalid job document: field '{document.field}' {document.reason}"
        details = status_details(ReportedState.INVALID_JOB_DOCUMENT, message)
        state, commands = _finish(state, job_id, JobStatus.REJECTED, details)
        return state, [*dropped, *commands]
    job = Job(job_id=job_id, document=document, execution_number=execution.execution_number)
    state, commands = _take_valid_job(state, execution, job, now)
    return state, [*dropped, *commands]


def _drop_other_attempt(state: State, execution: JobExecution) -> Out:
    """A journal of this job but of another execution (an AWS retry after a failed or
    timed-out attempt) says nothing about this attempt: drop it and its partial file, so
    the retry starts fresh (new download, restart count 0)."""
    journal = state.journal
    if (
        journal is None
        or journal.job_id != execution.job_id
        or _same_attempt(journal, [execution.execution_number])
    ):
        return state, []
    note = (
        f"job {execution.job_id}: execution {execution.execution_number} is a retry; the"
        f" journal of execution {journal.execution_number} (phase {journal.phase.value}) is"
        " dropped"
    )
    state = attrs.evolve(state, journal=None)
    return state, [
        _log(LogLevel.INFO, note, execution.job_id),
        Persist(record=None),
        DiscardDownload(job_id=execution.job_id),
    ]


def _take_valid_job(state: State, execution: JobExecution, job: Job, now: float) -> Out:
    job_id, document = job.job_id, job.document
    state_detail = execution.detail("state")
    if (
        execution.status is JobStatus.IN_PROGRESS
        and state_detail == ReportedState.REBOOT_START.value
    ):
        return _back_from_restart(state, job, now)
    if execution.status is JobStatus.IN_PROGRESS:
        note = f"resuming (it was at {state_detail or 'an unknown state'})"
    else:
        note = f"starting the update to version {document.version!r}"
    if _began_installing(state, execution) and HookKind.VERSION not in state.absent_hooks:
        # Keep the journal's phase: another power cut now must still find "installing".
        note += "; the install had begun: asking the version hook what runs now"
        state, call, commands = _start_call(state, job, HookKind.VERSION, now)
        state = attrs.evolve(state, stage=CheckingVersion(job=job, call=call, after_install=True))
        return state, [_log(LogLevel.INFO, f"job {job_id}: {note}", job_id), *commands]
    state, persist = _persist(state, job, Phase.CHECKING_VERSION)
    logged = _log(LogLevel.INFO, f"job {job_id}: {note}", job_id)
    if document.force or HookKind.VERSION in state.absent_hooks:
        state, more = _download_phase(state, job, now)
        return state, [*persist, logged, *more]
    state, call, more = _start_call(state, job, HookKind.VERSION, now, download_follows=True)
    state = attrs.evolve(state, stage=CheckingVersion(job=job, call=call))
    # The version hook only reads, so its call starts before the journal's fsync and runs
    # while it lasts; its answer is handled after every command here, the write included.
    return state, [logged, *more, *persist]


_INSTALL_STATES = (
    ReportedState.INSTALLATION_START.value,
    ReportedState.INSTALLATION_PROGRESS.value,
)


def _began_installing(state: State, execution: JobExecution) -> bool:
    """Did this job reach the install hook before the daemon stopped? The journal says so
    (INSTALLING, or later phases without `reboot_start` in the cloud), or, without a
    journal, the last statusDetails the cloud holds."""
    journal = state.journal
    if journal is not None and journal.job_id == execution.job_id:
        return journal.phase in (Phase.INSTALLING, Phase.RESTARTING, Phase.VERIFYING)
    return (
        execution.status is JobStatus.IN_PROGRESS and execution.detail("state") in _INSTALL_STATES
    )


def _back_from_restart(state: State, job: Job, now: float) -> Out:
    """The cloud shows `reboot_start`: the restart happened; count it against boot loops."""
    journal = state.journal
    same_restart = (
        journal is not None
        and journal.job_id == job.job_id
        and journal.phase in (Phase.RESTARTING, Phase.VERIFYING)
    )
    count = journal.restart_count + 1 if journal is not None and same_restart else 1
    record = JournalRecord(
        job_id=job.job_id,
        phase=Phase.VERIFYING,
        restart_count=count,
        previous_version=_previous_version(state, job.job_id),
        execution_number=job.execution_number,
    )
    state = attrs.evolve(state, journal=record)
    commands: list[Command] = [
        Persist(record=record),
        _log(LogLevel.INFO, f"job {job.job_id}: back from the restart (boot {count})", job.job_id),
    ]
    limit = state.settings.max_restarts
    if count > limit:
        message = (
            f"the device came back in reboot_start {count} times without becoming ready "
            f"(max_restarts is {limit})"
        )
        details = status_details(ReportedState.REBOOT_LOOP, message)
        state, more = _finish(state, job.job_id, JobStatus.FAILED, details)
    else:
        state, more = _verify(state, job, VerifyOrigin.AFTER_BOOT, now)
    return state, [*commands, *more]


# --- phases -----------------------------------------------------------------------------


def _download_phase(state: State, job: Job, now: float) -> Out:
    if job.document.force or HookKind.DOWNLOAD in state.absent_hooks:
        return _start_download(state, job, now, refusals=0)
    state, call, commands = _start_call(state, job, HookKind.DOWNLOAD, now, download_follows=True)
    return attrs.evolve(state, stage=CheckingDownload(job=job, call=call)), commands


def _start_download(state: State, job: Job, now: float, *, refusals: int) -> Out:
    state, commands = _persist(state, job, Phase.DOWNLOADING)
    state, job, more = _report_phase(state, job, ReportedState.DOWNLOAD_START, "", now)
    state, serial = _next(state)
    download_id = DownloadId(serial)
    document = job.document
    start = StartDownload(
        download_id=download_id,
        job_id=job.job_id,
        url=document.file,
        sha256=document.sha256,
        size=document.size,
        signature=document.signature,
    )
    message = f"job {job.job_id}: downloading {redact(document.file)}"
    state = attrs.evolve(
        state, stage=Downloading(job=job, download_id=download_id, refusals=refusals)
    )
    # The download starts before the journal's fsync and runs while it lasts: its events
    # are handled after every command here, the write included, and a crash before the
    # write leaves the journal of the version check, from which the next start resumes the
    # partial file by its sidecar.
    return state, [start, *more, *commands, _log(LogLevel.INFO, message, job.job_id)]


def _install_phase(state: State, job: Job, file: InstallFile, now: float) -> Out:
    state, commands = _persist(state, job, Phase.INSTALLING)
    if HookKind.INSTALL in state.absent_hooks:
        state, more = _no_install_hook(state, job)
        return state, [*commands, *more]
    state, job, more = _report_phase(state, job, ReportedState.INSTALLATION_START, "", now)
    state, call, calls = _start_call(state, job, HookKind.INSTALL, now, file=file)
    state = attrs.evolve(state, stage=Installing(job=job, call=call, file=file))
    return state, [*commands, *more, *calls]


def _no_install_hook(state: State, job: Job) -> Out:
    # The file itself may be the deliverable: keep it (1.12 did too).
    details = status_details(ReportedState.NO_INSTALLATION_HOOK_PROVIDED, "")
    return _finish(state, job.job_id, JobStatus.SUCCEEDED, details, keep_file=True)


def _restart_phase(state: State, job: Job, now: float) -> Out:
    if HookKind.RESTART in state.absent_hooks:
        return _verify(state, job, VerifyOrigin.NO_RESTART_HOOK, now)
    state, job, commands = _report_phase(state, job, ReportedState.REBOOT_START, "", now)
    return attrs.evolve(state, stage=ReportingReboot(job=job)), commands


def _restart(state: State, job: Job, now: float) -> Out:
    """`reboot_start` was accepted: persist, then call Restart (which may end the process)."""
    if HookKind.RESTART in state.absent_hooks:
        return _verify(state, job, VerifyOrigin.NO_RESTART_HOOK, now)
    state, persist = _persist_restarting(state, job)
    state, call, commands = _start_call(state, job, HookKind.RESTART, now)
    message = f"job {job.job_id}: reboot_start accepted; restarting"
    state = attrs.evolve(state, stage=Restarting(job=job, call=call))
    return state, [_log(LogLevel.INFO, message, job.job_id), persist, *commands]


def _persist_restarting(state: State, job: Job) -> tuple[State, Persist]:
    journal = state.journal
    count = journal.restart_count if journal is not None and journal.job_id == job.job_id else 0
    record = JournalRecord(
        job_id=job.job_id,
        phase=Phase.RESTARTING,
        restart_count=count,
        previous_version=_previous_version(state, job.job_id),
        execution_number=job.execution_number,
    )
    return attrs.evolve(state, journal=record), Persist(record=record)


def _await_reboot(state: State, stage: Restarting, detail: str) -> Out:
    state, timer = _next(state)
    delay = state.settings.restart_timeout
    job = stage.job
    message = (
        f"job {job.job_id}: the hook server went away during Restart ({detail}); "
        f"expecting to be stopped, verifying in {delay:.0f} s otherwise"
    )
    state = attrs.evolve(state, stage=AwaitingReboot(job=job, timer=timer))
    return state, [
        SetTimer(timer=TimerKind.HOOK_RETRY, token=timer, delay=delay),
        _log(LogLevel.INFO, message, job.job_id),
    ]


def _verify(state: State, job: Job, origin: VerifyOrigin, now: float) -> Out:
    """Version, then ready; 1.12 skipped the ready hook without a version hook, we do not."""
    if origin is not VerifyOrigin.AFTER_BOOT and not state.settings.verify_soft_restart:
        # verify_soft_restart = False: upparat 1.12 reported success without any check.
        return _succeed_unchecked(state, job, origin)
    state, commands = _persist(state, job, Phase.VERIFYING)
    if HookKind.VERSION in state.absent_hooks:
        state, more = _check_ready(state, job, origin, now, version_checked=False)
        return state, [*commands, *more]
    state, call, more = _start_call(state, job, HookKind.VERSION, now)
    state = attrs.evolve(state, stage=VerifyingVersion(job=job, call=call, origin=origin))
    # As for the first version check: a read-only call overlaps the journal's fsync.
    return state, [*more, *commands]


def _check_ready(
    state: State, job: Job, origin: VerifyOrigin, now: float, *, version_checked: bool
) -> Out:
    if HookKind.READY not in state.absent_hooks:
        state, call, commands = _start_call(state, job, HookKind.READY, now)
        stage = VerifyingReady(job=job, call=call, origin=origin, version_checked=version_checked)
        return attrs.evolve(state, stage=stage), commands
    if version_checked:
        details = status_details(ReportedState.COMPLETE_NO_READY_CHECK, "")
        return _finish(state, job.job_id, JobStatus.SUCCEEDED, details)
    return _succeed_unchecked(state, job, origin)


def _succeed_unchecked(state: State, job: Job, origin: VerifyOrigin) -> Out:
    match origin:
        case VerifyOrigin.AFTER_BOOT:
            reported = ReportedState.COMPLETE_NO_VERSION_CHECK
        case VerifyOrigin.SOFT_RESTART:
            reported = ReportedState.COMPLETE_SOFT_RESTART
        case VerifyOrigin.NO_RESTART_HOOK:
            reported = ReportedState.NO_RESTART_HOOK_PROVIDED
        case _:
            assert_never(origin)
    return _finish(state, job.job_id, JobStatus.SUCCEEDED, status_details(reported, ""))


def _finish(
    state: State,
    job_id: JobId,
    status: JobStatus,
    details: tuple[tuple[str, str], ...],
    *,
    keep_file: bool = False,
) -> Out:
    """The job ends: report it (the report must reach the cloud), forget it, fetch again."""
    state = _package_saw(
        state, lambda r: package.job_ended(r, job_id, status, dict(details).get("state"))
    )
    commands: list[Command] = []
    if not keep_file:
        commands.append(DiscardDownload(job_id=job_id))
    state, more = _enqueue(state, Update(job_id=job_id, status=status, details=details))
    commands += more
    state = attrs.evolve(state, journal=None, stage=FetchingJobs())
    commands.append(Persist(record=None))
    summary = ", ".join(f"{k}={v}" for k, v in details)
    level = LogLevel.INFO if status is JobStatus.SUCCEEDED else LogLevel.ERROR
    commands.append(_log(level, f"job {job_id}: {status.value} ({summary})", job_id))
    return state, commands


def _abandon(state: State, stage: JobStage, why: str, *, ended: bool) -> Out:
    """Stop working on the job. `ended`: it is over in the cloud (remove its files and
    journal); otherwise it stays resumable and the next fetch picks it up again."""
    job_id = stage.job.job_id
    commands = _stop_work(stage, discard=ended)
    if ended:
        kept = outbox.without_progress_of(state.outbox, job_id)
        state = attrs.evolve(state, outbox=kept, journal=None)
        if not isinstance(stage, Downloading) or stage.retry is not None:
            commands.append(DiscardDownload(job_id=job_id))
        commands.append(Persist(record=None))
    commands.append(_log(LogLevel.WARNING, f"job {job_id}: {why}", job_id))
    return attrs.evolve(state, stage=FetchingJobs()), commands


def _stop_work(stage: JobStage, *, discard: bool) -> list[Command]:
    match stage:
        case (
            CheckingVersion()
            | CheckingDownload()
            | Installing()
            | Restarting()
            | VerifyingVersion()
            | VerifyingReady()
        ):
            pending = stage.call.pending
            if isinstance(pending, Running):
                return [CancelHook(call_id=pending.call_id)]
            return []
        case Downloading(download_id=download_id, retry=None):
            return [CancelDownload(download_id=download_id, discard=discard)]
        case Downloading():
            return []  # between two attempts: nothing runs
        case RefreshingUrl() | ReportingReboot() | AwaitingReboot():
            return []
        case _:
            assert_never(stage)


def _persist(state: State, job: Job, phase: Phase) -> Out:
    """Journal the phase (keeping the restart count and the previous version of the same
    job); skip if unchanged."""
    journal, job_id = state.journal, job.job_id
    count = journal.restart_count if journal is not None and journal.job_id == job_id else 0
    record = JournalRecord(
        job_id=job_id,
        phase=phase,
        restart_count=count,
        previous_version=_previous_version(state, job_id),
        execution_number=job.execution_number,
    )
    if record == journal:
        return state, []
    return attrs.evolve(state, journal=record), [Persist(record=record)]


def _previous_version(state: State, job_id: JobId) -> str | None:
    journal = state.journal
    return journal.previous_version if journal is not None and journal.job_id == job_id else None


# --- hooks ------------------------------------------------------------------------------


def _start_call(
    state: State,
    job: Job,
    hook: HookKind,
    now: float,
    *,
    file: InstallFile | None = None,
    download_follows: bool = False,
) -> tuple[State, Call, list[Command]]:
    """The first attempt of `hook`. `download_follows`: this is a fresh job's version or
    download check, after which the job downloads unless the answer stops it. Never said
    on a retry: a download hook that says "not yet" for hours must not have the driver get
    ready for a download every retry_interval."""
    call = Call(attempt=1, started_at=now, pending=Sleeping(timer=0))
    return _invoke(state, job, hook, call, now, file, download_follows=download_follows)


def _invoke(
    state: State,
    job: Job,
    hook: HookKind,
    call: Call,
    now: float,
    file: InstallFile | None,
    *,
    download_follows: bool = False,
) -> tuple[State, Call, list[Command]]:
    state, serial = _next(state)
    call_id = CallId(serial)
    settings = state.settings
    document = job.document
    context = HookContext(
        job_id=job.job_id,
        meta=document.meta or "",
        attempt=call.attempt,
        elapsed=max(0.0, now - call.started_at),
        force=document.force,
    )
    timeout = settings.install_timeout if hook is HookKind.INSTALL else settings.hook_timeout
    command = CallHook(
        call_id=call_id,
        hook=hook,
        context=context,
        timeout=timeout,
        file=file,
        download_follows=download_follows,
    )
    return state, attrs.evolve(call, pending=Running(call_id=call_id)), [command]


@attrs.frozen(kw_only=True)
class _Succeeded:
    value: str
    message: str
    attributes: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class _Again:
    call: Call
    commands: tuple[Command, ...]


@attrs.frozen(kw_only=True)
class _GaveUp:
    reported: ReportedState
    message: str
    reason: str = ""
    detail: str = ""
    """The hook server's longer account (e.g. the tail of stderr): for the log, not the cloud."""


@attrs.frozen(kw_only=True)
class _Absent:
    pass


_Answer = _Succeeded | _Again | _GaveUp | _Absent


def _on_hook_finished(state: State, event: HookFinished, now: float) -> Out:
    if package.owns(state.package, event):
        return _package(state, event, now)  # the start's version call, no job's
    stage = state.stage
    if not isinstance(stage, HookStage):
        return state, [_log(LogLevel.DEBUG, f"result of unknown hook call {event.call_id}")]
    call = stage.call
    hook = hook_of(stage)
    pending = call.pending
    if (
        not isinstance(pending, Running)
        or pending.call_id != event.call_id
        or hook is not event.hook
    ):
        return state, [_log(LogLevel.DEBUG, f"result of unknown hook call {event.call_id}")]
    if isinstance(stage, Restarting) and isinstance(event.result, HookUnavailable):
        # A restart that takes the hook server down ends the call; not a failure.
        return _await_reboot(state, stage, event.result.detail)
    state, answer = _judge(state, stage.job, hook, call, event.result, now)
    job_id = stage.job.job_id
    match answer:
        case _Again(call=again, commands=scheduled):
            return attrs.evolve(state, stage=attrs.evolve(stage, call=again)), list(scheduled)
        case _GaveUp(reported=reported, message=message, reason=reason, detail=detail):
            details = status_details(reported, message, reason=reason)
            state, commands = _finish(state, job_id, JobStatus.FAILED, details)
            if detail:
                note = f"job {job_id}: the {_hook_name(hook)} failed: {detail}"
                commands.append(_log(LogLevel.ERROR, note, job_id))
            return state, commands
        case _Succeeded(value=value, message=message, attributes=attributes):
            return _hook_succeeded(state, stage, value, message, now, attributes)
        case _Absent():
            message = f"job {job_id}: the hook server does not implement the {_hook_name(hook)}"
            state, commands = _hook_absent(state, stage, now)
            return state, [_log(LogLevel.INFO, message, job_id), *commands]
        case _:
            assert_never(answer)


def _judge(
    state: State, job: Job, hook: HookKind, call: Call, result: HookResult, now: float
) -> tuple[State, _Answer]:
    """What a hook's answer means, the same for every hook."""
    settings = state.settings
    name = _hook_name(hook)
    elapsed = now - call.started_at
    match result:
        case HookSuccess(value=value, message=message, attributes=attributes):
            return state, _Succeeded(value=value, message=message, attributes=attributes)
        case HookRetryLater(retry_after=retry_after, message=message):
            policy = settings.hook_retry_backoff
            if policy.exhausted(retries=call.attempt - 1, elapsed=elapsed):
                text = (
                    f"gave up on the {name} after {call.attempt} attempts in {elapsed:.0f} s "
                    f"of RETRY_LATER" + (f": {message}" if message else "")
                )
                return state, _GaveUp(reported=_failed_state(hook), message=text)
            state, delay = _delay(state, policy, call.attempt)
            if retry_after is not None:
                delay = max(0.0, min(retry_after, RETRY_AFTER_CAP * settings.retry_interval))
            state, timer = _next(state)
            again = attrs.evolve(
                call, attempt=call.attempt + 1, outage=None, pending=Sleeping(timer=timer)
            )
            log = f"job {job.job_id}: the {name} asks to retry in {delay:.0f} s"
            commands = (
                SetTimer(timer=TimerKind.HOOK_RETRY, token=timer, delay=delay),
                _log(LogLevel.INFO, log + (f": {message}" if message else ""), job.job_id),
            )
            return state, _Again(call=again, commands=commands)
        case HookFailure(reason=reason, message=message, detail=detail):
            return state, _GaveUp(
                reported=_failed_state(hook),
                message=message or reason,
                reason=reason,
                detail=detail,
            )
        case HookUnavailable(detail=detail):
            outage = call.outage
            since = now if outage is None else outage.since
            failures = 1 if outage is None else outage.failures + 1
            policy = settings.hook_unavailable_backoff
            if policy.exhausted(retries=failures - 1, elapsed=now - since):
                text = f"the hook server was unreachable for {now - since:.0f} s ({detail})"
                return state, _GaveUp(reported=ReportedState.HOOK_SERVER_UNAVAILABLE, message=text)
            state, delay = _delay(state, policy, failures)
            state, timer = _next(state)
            # Unavailable does not spend a retry: `attempt` stays.
            again = attrs.evolve(
                call, outage=Outage(since=since, failures=failures), pending=Sleeping(timer=timer)
            )
            log = f"job {job.job_id}: hook server unreachable ({detail}); calling again in {delay:.0f} s"
            commands = (
                SetTimer(timer=TimerKind.HOOK_RETRY, token=timer, delay=delay),
                _log(LogLevel.WARNING, log, job.job_id),
            )
            return state, _Again(call=again, commands=commands)
        case HookDeadlineExceeded():
            timeout = (
                settings.install_timeout if hook is HookKind.INSTALL else settings.hook_timeout
            )
            text = f"the {name} did not answer within {timeout:.0f} s"
            return state, _GaveUp(reported=_timed_out_state(hook), message=text)
        case HookUnimplemented():
            return attrs.evolve(state, absent_hooks=state.absent_hooks | {hook}), _Absent()
        case _:
            assert_never(result)


def _hook_succeeded(
    state: State,
    stage: HookStage,
    value: str,
    message: str,
    now: float,
    attributes: tuple[tuple[str, str], ...] = (),
) -> Out:
    job = stage.job
    version = job.document.version
    match stage:
        case CheckingVersion(after_install=True):
            return _resumed_install(state, job, value, now, attributes)
        case CheckingVersion():
            state, noted = _package_heard(
                state, lambda r: package.job_version(r, value, attributes)
            )
            if value == version:
                details = status_details(
                    ReportedState.VERSION_ALREADY_INSTALLED, f"version {version!r} is installed"
                )
                state, commands = _finish(state, job.job_id, JobStatus.SUCCEEDED, details)
                return state, [*noted, *commands]
            note = f"job {job.job_id}: installed version is {value!r}; updating to {version!r}"
            journal = state.journal
            if journal is not None and journal.job_id == job.job_id:
                # Written with the next phase's Persist (before any install can start).
                state = attrs.evolve(state, journal=attrs.evolve(journal, previous_version=value))
            state, commands = _download_phase(state, job, now)
            return state, [*noted, _log(LogLevel.INFO, note, job.job_id), *commands]
        case CheckingDownload():
            return _start_download(state, job, now, refusals=0)
        case Installing():
            note = f"job {job.job_id}: installed" + (f": {message}" if message else "")
            state, commands = _restart_phase(state, job, now)
            return state, [_log(LogLevel.INFO, note, job.job_id), *commands]
        case Restarting(job=job):
            note = f"job {job.job_id}: restart done and the daemon lives on (soft restart)"
            state, commands = _verify(state, job, VerifyOrigin.SOFT_RESTART, now)
            return state, [_log(LogLevel.INFO, note, job.job_id), *commands]
        case VerifyingVersion(origin=origin):
            state, noted = _package_heard(
                state, lambda r: package.job_verified(r, job.job_id, value, attributes)
            )
            if value != version:
                state, commands = _finish(
                    state, job.job_id, JobStatus.FAILED, _wrong_version(state, job, value)
                )
            else:
                state, commands = _check_ready(state, job, origin, now, version_checked=True)
            return state, [*noted, *commands]
        case VerifyingReady():
            details = status_details(ReportedState.COMPLETE_READY, message)
            return _finish(state, job.job_id, JobStatus.SUCCEEDED, details)
        case _:
            assert_never(stage)


def _wrong_version(state: State, job: Job, value: str) -> tuple[tuple[str, str], ...]:
    """After the restart the device runs `value`, not the job's version: `rolled_back` when
    that is the version it ran before the update, else `version_mismatch`."""
    version, previous = job.document.version, _previous_version(state, job.job_id)
    if previous is not None and value == previous:
        text = f"Rolled back: expected version '{version}', the previous version '{value}' runs"
        return status_details(ReportedState.ROLLED_BACK, text)
    return status_details(
        ReportedState.VERSION_MISMATCH, f"Expected version '{version}', got '{value}'"
    )


def _resumed_install(
    state: State, job: Job, value: str, now: float, attributes: tuple[tuple[str, str], ...] = ()
) -> Out:
    """The version hook answered for a job whose install had begun before the stop."""
    job_id, version = job.job_id, job.document.version
    previous = _previous_version(state, job_id)
    if value == version and value != previous:
        state, noted = _package_heard(
            state, lambda r: package.job_verified(r, job_id, value, attributes)
        )
        # The installer finished and the device runs the new version: confirm it as after
        # a restart (the ready hook marks the slot good), never `version_already_installed`.
        note = f"job {job_id}: version {value!r} runs after the interrupted install; verifying"
        state, commands = _persist(state, job, Phase.VERIFYING)
        state, more = _check_ready(state, job, VerifyOrigin.AFTER_BOOT, now, version_checked=True)
        return state, [*noted, _log(LogLevel.INFO, note, job_id), *commands, *more]
    if previous is None or value == previous:
        # Still the old version: install again (hooks are idempotent per job id); the
        # download resumes from, or re-verifies, the file on disk.
        note = f"job {job_id}: version {value!r} still runs after the interrupted install; "
        note += "installing again"
        state, commands = _start_download(state, job, now, refusals=0)
        return state, [_log(LogLevel.INFO, note, job_id), *commands]
    state, noted = _package_heard(
        state, lambda r: package.job_verified(r, job_id, value, attributes)
    )
    text = (
        f"Expected version '{version}' (or the previous '{previous}' after an interrupted "
        f"install), got '{value}'"
    )
    state, commands = _finish(
        state, job_id, JobStatus.FAILED, status_details(ReportedState.VERSION_MISMATCH, text)
    )
    return state, [*noted, *commands]


def _hook_absent(state: State, stage: HookStage, now: float) -> Out:
    job = stage.job
    match stage:
        case CheckingVersion():
            return _download_phase(state, job, now)
        case CheckingDownload():
            return _start_download(state, job, now, refusals=0)
        case Installing():
            return _no_install_hook(state, job)
        case Restarting():
            return _verify(state, job, VerifyOrigin.NO_RESTART_HOOK, now)
        case VerifyingVersion(origin=origin):
            return _check_ready(state, job, origin, now, version_checked=False)
        case VerifyingReady(origin=origin, version_checked=version_checked):
            if version_checked:
                details = status_details(ReportedState.COMPLETE_NO_READY_CHECK, "")
                return _finish(state, job.job_id, JobStatus.SUCCEEDED, details)
            return _succeed_unchecked(state, job, origin)
        case _:
            assert_never(stage)


def _recall(state: State, stage: HookStage, now: float) -> Out:
    """The HOOK_RETRY timer fired: call the same hook again."""
    commands: list[Command] = []
    file: InstallFile | None = None
    if isinstance(stage, Installing):
        file = stage.file
    if isinstance(stage, Restarting):
        # Restart may end the process: the journal must be on disk first.
        state, persist = _persist_restarting(state, stage.job)
        commands.append(persist)
    state, call, more = _invoke(state, stage.job, hook_of(stage), stage.call, now, file)
    return attrs.evolve(state, stage=attrs.evolve(stage, call=call)), [*commands, *more]


def _on_hook_progressed(state: State, event: HookProgressed, now: float) -> Out:
    stage = state.stage
    if not isinstance(stage, Installing):
        return state, []
    pending = stage.call.pending
    if not isinstance(pending, Running) or pending.call_id != event.call_id:
        return state, []
    percent = None if event.percent is None else max(0, min(100, event.percent))
    details = status_details(ReportedState.INSTALLATION_PROGRESS, event.line, progress=percent)
    state, job, commands = _report_progress(state, stage.job, details, percent, now)
    return attrs.evolve(state, stage=attrs.evolve(stage, job=job)), commands


def _ask_hook_info(state: State) -> Out:
    """GetInfo at start and when a job begins (a hook server restarted or upgraded while
    the device was idle is found by the next job); nothing is asked while idle."""
    if state.hook_info is not None:
        return state, []  # under way, or a retry is due anyway
    return attrs.evolve(state, hook_info=Asking(failures=0)), [AskHookInfo()]


def _on_hook_info_failed(state: State, event: HookInfoFailed, now: float) -> Out:
    asking = state.hook_info
    if not isinstance(asking, Asking):
        return state, [_log(LogLevel.DEBUG, "a GetInfo answer nobody asked for was ignored")]
    if event.unimplemented:
        note = "the hook server has no GetInfo; its hooks are learnt per call"
        return attrs.evolve(state, hook_info=None), [_log(LogLevel.INFO, note)]
    failures = asking.failures + 1
    policy = state.settings.hook_unavailable_backoff
    state, delay = _delay(state, policy, failures)
    state, timer = _next(state)
    state = attrs.evolve(state, hook_info=AskingLater(failures=failures, timer=timer))
    level = LogLevel.WARNING if failures == 1 else LogLevel.DEBUG
    message = f"GetInfo failed ({event.detail}); asking again in {delay:.0f} s"
    return state, [
        SetTimer(timer=TimerKind.HOOK_INFO_RETRY, token=timer, delay=delay),
        _log(level, message),
    ]


def _hook_info_timer(state: State, token: int) -> Out:
    later = state.hook_info
    if not isinstance(later, AskingLater) or later.timer != token:
        return state, []
    if isinstance(state.stage, Idle):
        # Idle costs nothing: the next job asks again.
        return attrs.evolve(state, hook_info=None), []
    state = attrs.evolve(state, hook_info=Asking(failures=later.failures))
    return state, [AskHookInfo()]


def _on_hook_server_info(state: State, event: HookServerInfo, now: float) -> Out:
    state = attrs.evolve(state, hook_info=None)
    absent = frozenset(HookKind) - event.hooks
    hooks = ", ".join(sorted(h.value for h in event.hooks)) or "none"
    who = f"{event.server_name} {event.server_version}".strip() or "hook server"
    message = f"{who} implements: {hooks}"
    return attrs.evolve(state, absent_hooks=absent), [_log(LogLevel.INFO, message)]


def hook_of(stage: HookStage) -> HookKind:
    """The hook a stage waits for (the stage says which, so a call cannot be of another)."""
    match stage:
        case CheckingVersion() | VerifyingVersion():
            return HookKind.VERSION
        case CheckingDownload():
            return HookKind.DOWNLOAD
        case Installing():
            return HookKind.INSTALL
        case Restarting():
            return HookKind.RESTART
        case VerifyingReady():
            return HookKind.READY
        case _:
            assert_never(stage)


def _hook_name(hook: HookKind) -> str:
    return f"{hook.value} hook"


def _failed_state(hook: HookKind) -> ReportedState:
    match hook:
        case HookKind.VERSION:
            return ReportedState.VERSION_HOOK_FAILED
        case HookKind.DOWNLOAD:
            return ReportedState.DOWNLOAD_HOOK_FAILED
        case HookKind.INSTALL:
            return ReportedState.INSTALLATION_HOOK_FAILED
        case HookKind.RESTART:
            return ReportedState.RESTART_HOOK_FAILED
        case HookKind.READY:
            return ReportedState.READY_HOOK_FAILED
        case _:
            assert_never(hook)


def _timed_out_state(hook: HookKind) -> ReportedState:
    match hook:
        case HookKind.VERSION:
            return ReportedState.VERSION_HOOK_TIMED_OUT
        case HookKind.DOWNLOAD:
            return ReportedState.DOWNLOAD_HOOK_TIMED_OUT
        case HookKind.INSTALL:
            return ReportedState.INSTALLATION_HOOK_TIMED_OUT
        case HookKind.RESTART:
            return ReportedState.RESTART_HOOK_TIMED_OUT
        case HookKind.READY:
            return ReportedState.READY_HOOK_TIMED_OUT
        case _:
            assert_never(hook)


# --- downloads --------------------------------------------------------------------------

DownloadEvent = DownloadProgressed | DownloadInterrupted | DownloadCompleted | DownloadFailed


def _on_download(state: State, event: DownloadEvent, now: float) -> Out:
    stage = state.stage
    if (
        not isinstance(stage, Downloading)
        or stage.download_id != event.download_id
        or stage.retry is not None
    ):
        return state, [_log(LogLevel.DEBUG, f"event of unknown download {event.download_id}")]
    job = stage.job
    match event:
        case DownloadProgressed(bytes_done=done, total=total):
            total = job.document.size if total is None else total
            percent = None if total is None or total <= 0 else max(0, min(100, done * 100 // total))
            message = f"{done} of {total} bytes" if total is not None else f"{done} bytes"
            details = status_details(
                ReportedState.DOWNLOAD_PROGRESS, message, progress=percent, bytes_done=done
            )
            state, job, commands = _report_progress(state, job, details, percent, now)
            return attrs.evolve(state, stage=attrs.evolve(stage, job=job, refusals=0)), commands
        case DownloadInterrupted(bytes_done=done, reason=reason, retry_after=retry_after):
            return _download_interrupted(state, stage, done, reason, retry_after, now)
        case DownloadCompleted(path=path, size=size, sha256=sha256):
            note = f"job {job.job_id}: downloaded {size} bytes to {path}"
            file = InstallFile(
                path=path, size=size, sha256=sha256, signature=job.document.signature
            )
            state, commands = _install_phase(state, job, file, now)
            return state, [_log(LogLevel.INFO, note, job.job_id), *commands]
        case DownloadFailed(failure=failure, message=message):
            return _download_failed(state, stage, failure, message, now)
        case _:
            assert_never(event)


def _download_interrupted(
    state: State,
    stage: Downloading,
    done: int,
    reason: str,
    retry_after: float | None,
    now: float,
) -> Out:
    """Give-up rule: `download_retries` interrupted attempts in a row without a new byte
    (`Settings.download_backoff`), then FAILED download_failed with the last reason."""
    job = stage.job
    policy = state.settings.download_backoff
    interruptions = 1 if done > stage.baseline else stage.interruptions + 1
    if policy.exhausted(retries=interruptions - 1, elapsed=0.0):
        text = (
            f"gave up after {interruptions} interrupted attempts in a row without new data "
            f"(download_retries is {policy.retries}): {reason}"
        )
        return _finish(
            state, job.job_id, JobStatus.FAILED, status_details(ReportedState.DOWNLOAD_FAILED, text)
        )
    state, delay = _delay(state, policy, interruptions)
    if retry_after is not None:
        # The server's Retry-After (HTTP 429 / 503), within the policy's cap.
        delay = max(delay, min(max(0.0, retry_after), policy.cap))
    state, timer = _next(state)
    message = f"download interrupted after {done} bytes ({reason}); retrying in {delay:.0f} s"
    details = status_details(ReportedState.DOWNLOAD_RETRYING, message, bytes_done=done)
    state, job, commands = _report_progress(state, job, details, None, now)
    commands.append(SetTimer(timer=TimerKind.DOWNLOAD_RETRY, token=timer, delay=delay))
    commands.append(_log(LogLevel.WARNING, f"job {job.job_id}: {message}", job.job_id))
    stage = attrs.evolve(
        stage,
        job=job,
        interruptions=interruptions,
        baseline=max(stage.baseline, done),
        retry=timer,
    )
    return attrs.evolve(state, stage=stage), commands


def _next_attempt(state: State, stage: Downloading) -> Out:
    """DOWNLOAD_RETRY fired: the next attempt, resuming the partial file."""
    job = stage.job
    state, serial = _next(state)
    download_id = DownloadId(serial)
    document = job.document
    start = StartDownload(
        download_id=download_id,
        job_id=job.job_id,
        url=document.file,
        sha256=document.sha256,
        size=document.size,
        signature=document.signature,
    )
    message = f"job {job.job_id}: download attempt {stage.interruptions + 1}, resuming"
    stage = attrs.evolve(stage, download_id=download_id, retry=None)
    return attrs.evolve(state, stage=stage), [start, _log(LogLevel.INFO, message, job.job_id)]


def _download_failed(
    state: State, stage: Downloading, failure: DownloadFailure, message: str, now: float
) -> Out:
    job = stage.job
    match failure:
        case DownloadFailure.URL_EXPIRED:
            refusals = stage.refusals + 1
            if refusals > MAX_URL_REFUSALS:
                text = f"the download URL was refused {refusals} times in a row: {message}"
                details = status_details(ReportedState.DOWNLOAD_FAILED, text)
                return _finish(state, job.job_id, JobStatus.FAILED, details)
            text = "the download URL expired; asking for a fresh one"
            state, job, commands = _report_phase(
                state, job, ReportedState.DOWNLOAD_INTERRUPT, text, now
            )
            stage_next = RefreshingUrl(job=attrs.evolve(job, check=None), refusals=refusals)
            commands.append(_log(LogLevel.INFO, f"job {job.job_id}: {text}", job.job_id))
            return attrs.evolve(state, stage=stage_next), commands
        case DownloadFailure.VERIFICATION_FAILED:
            reported = ReportedState.DOWNLOAD_VERIFICATION_FAILED
        case DownloadFailure.INSUFFICIENT_DISK_SPACE:
            reported = ReportedState.INSUFFICIENT_DISK_SPACE
        case DownloadFailure.HTTP_ERROR | DownloadFailure.BAD_URL | DownloadFailure.IO_ERROR:
            reported = ReportedState.DOWNLOAD_FAILED
        case _:
            assert_never(failure)
    return _finish(state, job.job_id, JobStatus.FAILED, status_details(reported, message))


def _refreshed(state: State, stage: RefreshingUrl, execution: JobExecution, now: float) -> Out:
    job = stage.job
    if not _pending(execution.status):
        return _abandon(state, stage, f"is {execution.status.value} now; stopping", ended=True)
    document = _document(state, execution)
    if isinstance(document, InvalidJobDocument):
        message = f"invalid job document: field '{document.field}' {document.reason}"
        details = status_details(ReportedState.INVALID_JOB_DOCUMENT, message)
        return _finish(state, job.job_id, JobStatus.REJECTED, details)
    job = attrs.evolve(job, document=document)
    return _start_download(state, job, now, refusals=stage.refusals)


# --- progress reports and the outbox ----------------------------------------------------


def _report_phase(
    state: State, job: Job, reported: ReportedState, message: str, now: float
) -> tuple[State, Job, list[Command]]:
    """A phase change: reported at once; it restarts the progress throttle."""
    update = Update(
        job_id=job.job_id, status=JobStatus.IN_PROGRESS, details=status_details(reported, message)
    )
    state, commands = _enqueue(state, update)
    return state, attrs.evolve(job, reporter=progress.phase_reported(now)), commands


def _report_progress(
    state: State,
    job: Job,
    details: tuple[tuple[str, str], ...],
    percent: int | None,
    now: float,
) -> tuple[State, Job, list[Command]]:
    """A progress report, through the throttle (`progress.judge`)."""
    reporter = job.reporter
    interval = state.settings.progress_interval
    verdict = progress.judge(reporter, percent, now, interval)
    match verdict:
        case progress.Verdict.DROP:
            return state, job, []
        case progress.Verdict.SEND:
            update = Update(job_id=job.job_id, status=JobStatus.IN_PROGRESS, details=details)
            state, commands = _enqueue(state, update)
            return (
                state,
                attrs.evolve(job, reporter=progress.sent(reporter, percent, now)),
                commands,
            )
        case progress.Verdict.HOLD:
            commands = []
            timer = 0 if reporter.deferred is None else reporter.deferred.timer
            if reporter.deferred is None:
                state, timer = _next(state)
                delay = progress.flush_delay(reporter, now, interval)
                commands.append(SetTimer(timer=TimerKind.PROGRESS_FLUSH, token=timer, delay=delay))
            reporter = progress.held(reporter, details, percent, timer)
            return state, attrs.evolve(job, reporter=reporter), commands
        case _:
            assert_never(verdict)


def _flush_progress(state: State, stage: JobStage, now: float) -> Out:
    reporter = stage.job.reporter
    deferred = reporter.deferred
    if deferred is None:
        return state, []
    job = stage.job
    update = Update(job_id=job.job_id, status=JobStatus.IN_PROGRESS, details=deferred.details)
    state, commands = _enqueue(state, update)
    job = attrs.evolve(job, reporter=progress.sent(reporter, deferred.percent, now))
    return attrs.evolve(state, stage=attrs.evolve(stage, job=job)), commands


def _enqueue(state: State, update: Update) -> Out:
    state = attrs.evolve(state, outbox=outbox.queued(state.outbox, update))
    return _flush(state)


def _flush(state: State) -> Out:
    """Send the next update if the link is up and none is waiting for its answer."""
    update = outbox.next_update(state.outbox)
    if state.link is not Link.UP or update is None:
        return state, []
    state, token, commands = _publish(state, update)
    state, timer = _next(state)
    commands.append(SetTimer(timer=TimerKind.UPDATE_RETRY, token=timer, delay=_timeout(state)))
    return attrs.evolve(state, outbox=outbox.sending(state.outbox, token, timer)), commands


def _publish(state: State, update: Update) -> tuple[State, ClientToken, list[Command]]:
    state, token = _token(state)
    step_timeout = (
        state.settings.step_timeout_minutes if update.status is JobStatus.IN_PROGRESS else None
    )
    command = UpdateJob(
        job_id=update.job_id,
        status=update.status,
        status_details=update.details,
        client_token=token,
        step_timeout_minutes=step_timeout,
    )
    return state, token, [command]


def _on_update_accepted(state: State, event: UpdateAccepted, now: float) -> Out:
    head = state.outbox.head
    if head is None or not outbox.answers_head(state.outbox, event.job_id, event.client_token):
        return state, [_log(LogLevel.DEBUG, f"a stale update reply for {event.job_id} was ignored")]
    state = attrs.evolve(state, outbox=outbox.settled(state.outbox))
    update = head.update
    text = dict(update.details).get("state", "")
    return state, [
        _log(
            LogLevel.DEBUG,
            f"job {update.job_id}: {update.status.value} {text} accepted",
            update.job_id,
        )
    ]


def _on_rejected(state: State, event: RequestRejected, now: float) -> Out:
    match event.request:
        case RequestKind.UPDATE:
            return _update_rejected(state, event)
        case RequestKind.GET_PENDING:
            return _get_rejected(state, event)
        case RequestKind.DESCRIBE:
            return _describe_rejected(state, event)
        case _:
            assert_never(event.request)


def _retryable(code: RejectCode) -> bool:
    """AWS: retry RequestThrottled and InternalError only, with backoff."""
    match code:
        case RejectCode.REQUEST_THROTTLED | RejectCode.INTERNAL_ERROR:
            return True
        case (
            RejectCode.INVALID_TOPIC
            | RejectCode.INVALID_JSON
            | RejectCode.INVALID_REQUEST
            | RejectCode.INVALID_STATE_TRANSITION
            | RejectCode.RESOURCE_NOT_FOUND
            | RejectCode.VERSION_MISMATCH
            | RejectCode.TERMINAL_STATE_REACHED
            | RejectCode.UNKNOWN
        ):
            return False
        case _:
            assert_never(code)


def _update_rejected(state: State, event: RequestRejected) -> Out:
    head = state.outbox.head
    if head is None or not outbox.answers_head(state.outbox, event.job_id, event.client_token):
        return state, [_log(LogLevel.DEBUG, "a stale update rejection was ignored")]
    update = head.update
    job_id = update.job_id
    code = event.code
    what = f"job {job_id}: update {update.status.value} rejected: {code.value} {event.message}"
    if _retryable(code):
        state, delay = _delay(state, state.settings.request_backoff, head.attempt)
        state, timer = _next(state)
        state = attrs.evolve(state, outbox=outbox.throttling(state.outbox, head, timer))
        return state, [
            SetTimer(timer=TimerKind.UPDATE_RETRY, token=timer, delay=delay),
            _log(LogLevel.WARNING, f"{what}; sending again in {delay:.0f} s", job_id),
        ]
    state = attrs.evolve(state, outbox=outbox.settled(state.outbox))
    stage = state.stage
    working_on_it = isinstance(stage, JobStage) and stage.job.job_id == job_id
    final = code in (RejectCode.TERMINAL_STATE_REACHED, RejectCode.INVALID_STATE_TRANSITION)
    if not (working_on_it and isinstance(stage, JobStage)):
        return state, [_log(LogLevel.WARNING, what, job_id)]
    if final:
        # The job is over in the cloud (cancelled, or ended elsewhere): like a cancellation.
        return _abandon(state, stage, f"{what}; stopping", ended=True)
    return _abandon(state, stage, f"{what}; fetching the jobs again", ended=False)


def _get_rejected(state: State, event: RequestRejected) -> Out:
    stage = state.stage
    token = event.client_token
    what = f"pending-jobs request rejected: {event.code.value} {event.message}"
    if isinstance(stage, FetchingJobs):
        request = stage.request
        if request is None or token != request.token:
            return state, []
        state, request, commands = _back_off(state, request, event.code)
        commands.append(_log(LogLevel.WARNING, what))
        return attrs.evolve(state, stage=FetchingJobs(request=request)), commands
    if isinstance(stage, CheckStage):
        check = stage.job.check
        if check is None or token != check.token:
            return state, []
        # Only a check: notifications still tell us about a cancellation.
        job = attrs.evolve(stage.job, check=None)
        state = attrs.evolve(state, stage=attrs.evolve(stage, job=job))
        return state, [_log(LogLevel.WARNING, what)]
    return state, []


def _describe_rejected(state: State, event: RequestRejected) -> Out:
    stage = state.stage
    token = event.client_token
    what = f"describe rejected: {event.code.value} {event.message}"
    if isinstance(stage, Describing):
        request = stage.request
        if request is None or token != request.token:
            return state, []
        if _retryable(event.code):
            state, request, commands = _back_off(state, request, event.code)
            stage_next: Stage = attrs.evolve(stage, request=request)
            return attrs.evolve(state, stage=stage_next), commands
        # Start over, but not at once: a service that keeps refusing (one broken job,
        # a fleet of devices) would otherwise be asked again at network speed. The
        # fetch goes out when the REQUEST_RETRY timer fires; a notification listing
        # upparat jobs answers it earlier, as for any fetch.
        delay = _timeout(state)
        state, token = _token(state)
        state, timer = _next(state)
        pause = FetchingJobs(request=Request(token=token, timer=timer))
        message = f"job {stage.job_id}: {what}; starting over in {delay:.0f} s"
        return attrs.evolve(state, stage=pause), [
            _log(LogLevel.WARNING, message, stage.job_id),
            SetTimer(timer=TimerKind.REQUEST_RETRY, token=timer, delay=delay),
        ]
    if isinstance(stage, RefreshingUrl):
        request = stage.request
        if request is None or token != request.token:
            return state, []
        if _retryable(event.code):
            state, request, commands = _back_off(state, request, event.code)
            return attrs.evolve(state, stage=attrs.evolve(stage, request=request)), commands
        return _abandon(state, stage, f"{what}; fetching the jobs again", ended=False)
    return state, []


def _on_reply_unusable(state: State, event: ReplyUnusable, now: float) -> Out:
    """Our request was answered with something unusable: it failed; ask again after the
    short backoff (1, 2, 4 ... s), not after the whole request timeout."""
    stage = state.stage
    match event.request:
        case RequestKind.DESCRIBE:
            pass
        case RequestKind.GET_PENDING | RequestKind.UPDATE:
            return state, [_log(LogLevel.WARNING, f"an unusable reply: {event.reason}")]
        case _:
            assert_never(event.request)
    if not isinstance(stage, Describing | RefreshingUrl):
        return state, [_log(LogLevel.DEBUG, "an unrequested describe reply was ignored")]
    request = stage.request
    if request is None or event.client_token != request.token:
        return state, [_log(LogLevel.DEBUG, "a stale describe reply was ignored")]
    state, delay = _delay(state, state.settings.request_backoff, request.attempt)
    state, timer = _next(state)
    request = attrs.evolve(request, timer=timer, attempt=request.attempt + 1)
    job_id = stage.job_id if isinstance(stage, Describing) else stage.job.job_id
    message = f"job {job_id}: unusable describe answer ({event.reason}); asking again in "
    message += f"{delay:.0f} s"
    state = attrs.evolve(state, stage=attrs.evolve(stage, request=request))
    return state, [
        SetTimer(timer=TimerKind.REQUEST_RETRY, token=timer, delay=delay),
        _log(LogLevel.WARNING, message, job_id),
    ]


def _back_off(
    state: State, request: Request, code: RejectCode
) -> tuple[State, Request, list[Command]]:
    """Ask again after a backoff (throttling) or after request_timeout (anything else)."""
    if _retryable(code):
        state, delay = _delay(state, state.settings.request_backoff, request.attempt)
    else:
        delay = _timeout(state)
    state, timer = _next(state)
    request = attrs.evolve(request, timer=timer, attempt=request.attempt + 1)
    return state, request, [SetTimer(timer=TimerKind.REQUEST_RETRY, token=timer, delay=delay)]


def _delay(state: State, policy: Backoff, retry: int) -> tuple[State, float]:
    """The wait before retry `retry` under `policy`, with the next jitter of the seed."""
    delay, draws = policy.drawn(retry, seed=state.settings.seed, draws=state.draws)
    return attrs.evolve(state, draws=draws), delay


def _timeout(state: State) -> float:
    return max(0.0, state.settings.request_timeout)


def _send_get(state: State, attempt: int = 1) -> tuple[State, Request, list[Command]]:
    state, token = _token(state)
    state, timer = _next(state)
    request = Request(token=token, timer=timer, attempt=attempt)
    return (
        state,
        request,
        [
            RequestPendingJobs(client_token=token),
            SetTimer(timer=TimerKind.REQUEST_RETRY, token=timer, delay=_timeout(state)),
        ],
    )


def _send_describe(
    state: State, job_id: JobId, attempt: int = 1
) -> tuple[State, Request, list[Command]]:
    state, token = _token(state)
    state, timer = _next(state)
    request = Request(token=token, timer=timer, attempt=attempt)
    return (
        state,
        request,
        [
            DescribeJob(job_id=job_id, client_token=token),
            SetTimer(timer=TimerKind.REQUEST_RETRY, token=timer, delay=_timeout(state)),
        ],
    )


# --- timers -----------------------------------------------------------------------------


def _on_timer(state: State, event: TimerFired, now: float) -> Out:
    token = event.token
    stage = state.stage
    match event.timer:
        case TimerKind.HOOK_RETRY:
            if isinstance(stage, HookStage):
                pending = stage.call.pending
                if isinstance(pending, Sleeping) and pending.timer == token:
                    return _recall(state, stage, now)
            if isinstance(stage, AwaitingReboot) and stage.timer == token:
                job = stage.job
                message = (
                    f"job {job.job_id}: not stopped within {state.settings.restart_timeout:.0f} s "
                    "of the restart; verifying the installation"
                )
                state, commands = _verify(state, job, VerifyOrigin.SOFT_RESTART, now)
                return state, [_log(LogLevel.INFO, message, job.job_id), *commands]
        case TimerKind.PROGRESS_FLUSH:
            if isinstance(stage, JobStage):
                deferred = stage.job.reporter.deferred
                if deferred is not None and deferred.timer == token:
                    return _flush_progress(state, stage, now)
        case TimerKind.UPDATE_RETRY:
            head = state.outbox.head
            if head is not None and head.timer == token:
                return _resend_update(state, head)
        case TimerKind.REQUEST_RETRY:
            return _request_timer(state, token)
        case TimerKind.SHUTDOWN:
            if isinstance(stage, ShuttingDown) and stage.timer == token:
                message = "gave up waiting for the last job reports to be accepted"
                return _exit(state, [_log(LogLevel.WARNING, message)])
        case TimerKind.HOOK_INFO_RETRY:
            return _hook_info_timer(state, token)
        case TimerKind.DOWNLOAD_RETRY:
            if isinstance(stage, Downloading) and stage.retry == token:
                return _next_attempt(state, stage)
        case TimerKind.RECONNECT:
            dial = state.dial
            if isinstance(dial, Redialing) and dial.timer == token:
                return attrs.evolve(state, dial=Dialing(failures=dial.failures)), [ConnectMqtt()]
        case TimerKind.SUBSCRIBE_RETRY:
            again = state.resubscribe
            if state.link is Link.SUBSCRIBING and again is not None and again.timer == token:
                return state, [SubscribeJobTopics()]
        case TimerKind.PACKAGE_VERSION_RETRY | TimerKind.PACKAGE_SHADOW_RETRY:
            return _package(state, event, now)
        case _:
            assert_never(event.timer)
    return state, []


def _resend_update(state: State, head: outbox.Sent | outbox.Throttled) -> Out:
    if state.link is not Link.UP:
        return attrs.evolve(state, outbox=outbox.requeued(state.outbox)), []
    state, token, commands = _publish(state, head.update)
    state, timer = _next(state)
    commands.append(SetTimer(timer=TimerKind.UPDATE_RETRY, token=timer, delay=_timeout(state)))
    return attrs.evolve(state, outbox=outbox.resending(state.outbox, head, token, timer)), commands


def _request_timer(state: State, token: int) -> Out:
    """No reply in time (or a backoff ended): send the request again, with a new token."""
    stage = state.stage
    up = state.link is Link.UP
    if isinstance(stage, FetchingJobs):
        request = stage.request
        if request is None or request.timer != token:
            return state, []
        if not up:
            return attrs.evolve(state, stage=FetchingJobs()), []
        state, request, commands = _send_get(state, request.attempt)
        return attrs.evolve(state, stage=FetchingJobs(request=request)), commands
    if isinstance(stage, Describing | RefreshingUrl):
        request = stage.request
        if request is None or request.timer != token:
            return state, []
        if not up:
            return attrs.evolve(state, stage=attrs.evolve(stage, request=None)), []
        job_id = stage.job_id if isinstance(stage, Describing) else stage.job.job_id
        state, request, commands = _send_describe(state, job_id, request.attempt)
        return attrs.evolve(state, stage=attrs.evolve(stage, request=request)), commands
    if isinstance(stage, CheckStage):
        check = stage.job.check
        if check is None or check.timer != token:
            return state, []
        if up:
            state, renewed, commands = _send_get(state, check.attempt)
        else:
            renewed, commands = None, []
        job = attrs.evolve(stage.job, check=renewed)
        return attrs.evolve(state, stage=attrs.evolve(stage, job=job)), commands
    return state, []


# --- shutdown ---------------------------------------------------------------------------


def _on_shutdown(state: State, event: ShutdownRequested, now: float) -> Out:
    stage = state.stage
    commands: list[Command] = [_log(LogLevel.INFO, "stop requested")]
    match stage:
        case ShuttingDown() | Stopped():
            return _exit(state, [_log(LogLevel.INFO, "second stop request: exiting now")])
        case Booting():
            pass  # the journal was not read yet: nothing to persist, do not erase it
        case (
            CheckingVersion()
            | CheckingDownload()
            | Downloading()
            | RefreshingUrl()
            | Installing()
            | ReportingReboot()
            | Restarting()
            | AwaitingReboot()
            | VerifyingVersion()
            | VerifyingReady()
        ):
            # Keep a partial download: the job resumes after the next start.
            commands += _stop_work(stage, discard=False)
            commands.append(Persist(record=state.journal))
        case FetchingJobs() | Idle() | Describing():
            commands.append(Persist(record=state.journal))
        case _:
            assert_never(stage)
    state = attrs.evolve(state, outbox=outbox.finals_only(state.outbox))
    if not outbox.terminal_pending(state.outbox):
        return _exit(state, commands)
    state, timer = _next(state)
    commands.append(SetTimer(timer=TimerKind.SHUTDOWN, token=timer, delay=_timeout(state)))
    return attrs.evolve(state, stage=ShuttingDown(timer=timer)), commands


def _exit(state: State, commands: list[Command]) -> Out:
    return attrs.evolve(state, stage=Stopped()), [*commands, Exit()]


# --- after every event ------------------------------------------------------------------


def _pump(state: State, now: float) -> Out:
    """Send what the state waits to send, now that it may (h11's "re-derive" idea)."""
    if isinstance(state.stage, Stopped):
        return state, []
    state, commands = _flush(state)
    up = state.link is Link.UP
    stage = state.stage
    match stage:
        case FetchingJobs(request=None):
            if up and state.outbox == Outbox():
                state, request, more = _send_get(state)
                return attrs.evolve(state, stage=FetchingJobs(request=request)), [
                    *commands,
                    *more,
                ]
        case Describing(request=None, job_id=job_id):
            if up:
                state, request, more = _send_describe(state, job_id)
                stage = attrs.evolve(stage, request=request)
                return attrs.evolve(state, stage=stage), [*commands, *more]
        case RefreshingUrl(request=None, job=job):
            if up:
                state, request, more = _send_describe(state, job.job_id)
                stage = attrs.evolve(stage, request=request)
                return attrs.evolve(state, stage=stage), [*commands, *more]
        case ReportingReboot(job=job):
            if not outbox.pending_for(state.outbox, job.job_id):
                state, more = _restart(state, job, now)
                return state, [*commands, *more]
        case ShuttingDown():
            if not outbox.terminal_pending(state.outbox):
                return _exit(state, commands)
        case (
            Booting()
            | FetchingJobs()
            | Idle()
            | Describing()
            | RefreshingUrl()
            | CheckingVersion()
            | CheckingDownload()
            | Downloading()
            | Installing()
            | Restarting()
            | AwaitingReboot()
            | VerifyingVersion()
            | VerifyingReady()
            | Stopped()
        ):
            pass
        case _:
            assert_never(stage)
    return state, commands


# --- small helpers ----------------------------------------------------------------------


def _next(state: State) -> tuple[State, int]:
    serial = state.serial + 1
    return attrs.evolve(state, serial=serial), serial


def _token(state: State) -> tuple[State, ClientToken]:
    state, serial = _next(state)
    return state, client_token(state.settings.token_nonce, serial)


def _log(level: LogLevel, message: str, job_id: JobId | None = None) -> Log:
    return Log(level=level, message=message, job_id=job_id)


# --- the transition table ------------------------------------------------------------
#
# One row per event type: the handler `step` calls, the arrows (from which stage to which,
# and why: the map in README.md is generated from them, `python -m upparat.statemap
# --write`), and the stages the event never moves out of. Every stage is in exactly one of
# the two; the totality and stateful tests check that `step` takes no other arrow.


@attrs.frozen(kw_only=True)
class Stages:
    """A named group of stages that an arrow leaves alike (one box on the map)."""

    name: str
    """An identifier, for the map."""
    title: str
    members: tuple[type[Stage], ...]


def _group(name: str, title: str, stages: object) -> Stages:
    return Stages(name=name, title=title, members=typing.get_args(stages))


EVERY_STAGE = _group("AnyStage", "every stage", Stage)
EVERY_LIVE_STAGE = Stages(
    name="AnyLiveStage",
    title="every stage but Stopped",
    members=tuple(s for s in EVERY_STAGE.members if s is not Stopped),
)
"""`step` ignores every event in `Stopped`."""
JOB_STAGES = _group("AnyJobStage", "every job stage", JobStage)
CHECK_STAGES = _group("AnyCheckStage", "every job stage but RefreshingUrl", CheckStage)
HOOK_STAGES = _group("AnyHookStage", "every stage waiting for a hook", HookStage)


@attrs.frozen(kw_only=True)
class Arrow:
    source: type[Stage] | Stages
    target: type[Stage]
    label: str
    """What happened, for a reader of the map (no `:` or `;`: mermaid reads them)."""

    @property
    def sources(self) -> tuple[type[Stage], ...]:
        source = self.source
        return source.members if isinstance(source, Stages) else (source,)


E = typing.TypeVar("E", bound=Event)


@attrs.frozen(kw_only=True)
class Row(typing.Generic[E]):
    event: type[E]
    handler: Callable[[State, E, float], Out]
    stays: tuple[type[Stage], ...]
    """The stages this event never moves out of (it may still change their data, the
    link, the outbox ...); the other stages are the sources of `arrows`."""
    arrows: tuple[Arrow, ...] = ()
    """Where the event may take the stage; it may also stay where it is (a stale reply)."""

    def targets(self, stage: type[Stage]) -> frozenset[type[Stage]]:
        """The stages the handler may leave `stage` in."""
        return frozenset({stage, *(a.target for a in self.arrows if stage in a.sources)})


def _but(*stages: type[Stage]) -> tuple[type[Stage], ...]:
    """Every stage except `stages`."""
    return tuple(s for s in EVERY_STAGE.members if s not in stages)


def _go(source: type[Stage] | Stages, target: type[Stage], label: str) -> Arrow:
    """An arrow, written short for the table."""
    return Arrow(source=source, target=target, label=label)


_MULTIPLE = "more than one IN_PROGRESS (FAILED error_multiple_in_progress)"
_SELECTION = (
    _go(FetchingJobs, Describing, "job selected, IN_PROGRESS first, else the oldest QUEUED"),
    _go(FetchingJobs, Idle, "no upparat job pending"),
    _go(FetchingJobs, FetchingJobs, _MULTIPLE),
)
"""Where `_select` takes the fetch, answered by the reply or by a notification."""


def _verifying(source: type[Stage], why: str) -> tuple[Arrow, ...]:
    """Where `_verify` goes: the version hook, else the ready hook, else done."""
    return (
        _go(source, VerifyingVersion, why),
        _go(source, VerifyingReady, f"{why}, no version hook"),
        _go(source, FetchingJobs, f"{why}, nothing to verify (SUCCEEDED)"),
    )


# Row[Any]: each row's handler takes its own event type, and `TABLE[type(event)]` is the
# row of that type (test_totality checks that every event type has exactly one).
ROWS: tuple[Row[Any], ...] = (
    Row(
        event=Started,
        handler=_on_started,
        arrows=(_go(Booting, FetchingJobs, "the journal is read"),),
        stays=_but(Booting),
    ),
    # The connection: the session and the subscriptions (state.link, dial, resubscribe).
    Row(event=MqttConnected, handler=_on_mqtt_connected, stays=EVERY_STAGE.members),
    Row(event=MqttConnectFailed, handler=_on_connect_failed, stays=EVERY_STAGE.members),
    Row(event=MqttDisconnected, handler=_on_mqtt_disconnected, stays=EVERY_STAGE.members),
    Row(
        event=SubscriptionsAcked,
        handler=_on_subscribed,
        arrows=(_go(Idle, FetchingJobs, "reconnected, notifications were lost"),),
        stays=_but(Idle),
    ),
    Row(event=SubscriptionsRefused, handler=_on_subscriptions_refused, stays=EVERY_STAGE.members),
    # The cloud's answers.
    Row(
        event=PendingJobsListed,
        handler=_on_pending_listed,
        arrows=(
            *_SELECTION,
            _go(CHECK_STAGES, FetchingJobs, "the check after a reconnect no longer lists the job"),
        ),
        stays=_but(*CHECK_STAGES.members, FetchingJobs),
    ),
    Row(
        event=JobsChanged,
        handler=_on_jobs_changed,
        arrows=(
            *_SELECTION,
            _go(Idle, Describing, "a notification lists an upparat job"),
            _go(Idle, FetchingJobs, _MULTIPLE),
            _go(Describing, FetchingJobs, "the job is no longer listed"),
            _go(
                JOB_STAGES,
                FetchingJobs,
                "the job is no longer listed (cancelled), work cancelled and discarded",
            ),
        ),
        stays=_but(*JOB_STAGES.members, FetchingJobs, Idle, Describing),
    ),
    Row(
        event=JobDescribed,
        handler=_on_described,
        arrows=(
            _go(
                Describing,
                FetchingJobs,
                "not pending, an invalid document (REJECTED), reboot_loop (FAILED), or"
                " nothing to verify after the boot (SUCCEEDED)",
            ),
            _go(
                Describing,
                CheckingVersion,
                "QUEUED or IN_PROGRESS (not reboot_start), or the install had begun",
            ),
            _go(Describing, CheckingDownload, "no version hook"),
            _go(Describing, Downloading, "force, or neither a version nor a download hook"),
            _go(Describing, VerifyingVersion, "IN_PROGRESS reboot_start (a boot is counted)"),
            _go(Describing, VerifyingReady, "IN_PROGRESS reboot_start, no version hook"),
            _go(RefreshingUrl, Downloading, "a fresh URL"),
            _go(
                RefreshingUrl,
                FetchingJobs,
                "not pending any more, or an invalid document (REJECTED)",
            ),
        ),
        stays=_but(Describing, RefreshingUrl),
    ),
    Row(
        event=RequestRejected,
        handler=_on_rejected,
        arrows=(
            _go(
                Describing,
                FetchingJobs,
                "describe rejected, not retryable (fetching again after request_timeout)",
            ),
            _go(
                JOB_STAGES,
                FetchingJobs,
                "our update rejected, TerminalStateReached or InvalidStateTransition"
                " ends the job, other codes keep it resumable",
            ),
        ),
        stays=_but(*JOB_STAGES.members, Describing),
    ),
    Row(event=ReplyUnusable, handler=_on_reply_unusable, stays=EVERY_STAGE.members),
    Row(event=UpdateAccepted, handler=_on_update_accepted, stays=EVERY_STAGE.members),
    Row(event=PayloadIgnored, handler=_on_payload_ignored, stays=EVERY_STAGE.members),
    # The hook server.
    Row(event=HookServerInfo, handler=_on_hook_server_info, stays=EVERY_STAGE.members),
    Row(event=HookInfoFailed, handler=_on_hook_info_failed, stays=EVERY_STAGE.members),
    Row(event=HookProgressed, handler=_on_hook_progressed, stays=EVERY_STAGE.members),
    Row(
        event=HookFinished,
        handler=_on_hook_finished,
        arrows=(
            _go(
                HOOK_STAGES,
                FetchingJobs,
                "FAILURE, too many RETRY_LATER, DEADLINE_EXCEEDED or unreachable too"
                " long (FAILED), or the job is done",
            ),
            _go(
                CheckingVersion,
                CheckingDownload,
                "another version is installed, or no version hook",
            ),
            _go(
                CheckingVersion,
                Downloading,
                "another version and no download hook, or after_install and the"
                " previous version runs (install again)",
            ),
            _go(CheckingVersion, VerifyingReady, "after_install and the job's version runs"),
            _go(CheckingDownload, Downloading, "SUCCESS or no download hook"),
            _go(Installing, ReportingReboot, "SUCCESS (reboot_start)"),
            _go(Installing, VerifyingVersion, "SUCCESS, no restart hook"),
            _go(Installing, VerifyingReady, "SUCCESS, neither a restart nor a version hook"),
            _go(Restarting, VerifyingVersion, "SUCCESS (soft restart) or UNIMPLEMENTED"),
            _go(Restarting, VerifyingReady, "SUCCESS (soft restart), no version hook"),
            _go(Restarting, AwaitingReboot, "the hook server went away (UNAVAILABLE)"),
            _go(VerifyingVersion, VerifyingReady, "the job's version runs, or no version hook"),
        ),
        stays=_but(*HOOK_STAGES.members),
    ),
    # The download.
    Row(event=DownloadProgressed, handler=_on_download, stays=EVERY_STAGE.members),
    Row(
        event=DownloadInterrupted,
        handler=_on_download,
        arrows=(
            _go(Downloading, FetchingJobs, "download_retries exhausted (FAILED download_failed)"),
        ),
        stays=_but(Downloading),
    ),
    Row(
        event=DownloadCompleted,
        handler=_on_download,
        arrows=(
            _go(Downloading, Installing, "installation_start"),
            _go(
                Downloading,
                FetchingJobs,
                "no install hook (SUCCEEDED no_installation_hook_provided)",
            ),
        ),
        stays=_but(Downloading),
    ),
    Row(
        event=DownloadFailed,
        handler=_on_download,
        arrows=(
            _go(Downloading, RefreshingUrl, "URL_EXPIRED (download_interrupt)"),
            _go(Downloading, FetchingJobs, "failed (FAILED)"),
        ),
        stays=_but(Downloading),
    ),
    # The `$package` shadow report (upparat.core.package): never moves the job.
    Row(event=PackageShadowRead, handler=_package, stays=EVERY_STAGE.members),
    Row(event=PackageShadowUpdated, handler=_package, stays=EVERY_STAGE.members),
    Row(event=PackageShadowMissing, handler=_package, stays=EVERY_STAGE.members),
    Row(event=ShadowRejected, handler=_package, stays=EVERY_STAGE.members),
    Row(event=PackageReportRefused, handler=_package, stays=EVERY_STAGE.members),
    # Time and the process.
    Row(
        event=TimerFired,
        handler=_on_timer,
        arrows=(
            *_verifying(AwaitingReboot, "restart_timeout without being stopped"),
            _go(ShuttingDown, Stopped, "SHUTDOWN timer, final reports unanswered"),
        ),
        stays=_but(AwaitingReboot, ShuttingDown),
    ),
    Row(
        event=ShutdownRequested,
        handler=_on_shutdown,
        arrows=(
            _go(
                EVERY_LIVE_STAGE,
                ShuttingDown,
                "a final report is unanswered, work cancelled (a download is kept)",
            ),
            _go(EVERY_LIVE_STAGE, Stopped, "no final report unanswered, Exit"),
        ),
        stays=(Stopped,),
    ),
)
"""The transitions, one row per event type."""

TABLE: Mapping[type[Event], Row[Any]] = {row.event: row for row in ROWS}

AFTER_EVERY_EVENT: tuple[Arrow, ...] = (
    _go(
        ReportingReboot,
        Restarting,
        "reboot_start accepted, Persist RESTARTING then CallHook RESTART",
    ),
    *_verifying(ReportingReboot, "reboot_start accepted, no restart hook"),
    _go(ShuttingDown, Stopped, "the final reports are accepted"),
)
"""What `_pump` does after the event's handler, whatever the event."""


def reachable(stage: type[Stage], event: type[Event]) -> frozenset[type[Stage]]:
    """The stages `step` may leave `stage` in on `event`: the row's arrows, then the
    arrows taken after every event."""
    if stage is Stopped:
        return frozenset({Stopped})
    after = TABLE[event].targets(stage)
    return after | {a.target for a in AFTER_EVERY_EVENT for s in after if s in a.sources}
