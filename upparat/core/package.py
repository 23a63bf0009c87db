"""The `$package` shadow report: tell the cloud which version runs, only when it changed.

A sub-machine beside the job lifecycle, kept in `machine.State.package` (None when
`[service] package_name` is unset: then nothing here runs). It learns what runs from the
version hook, asked once while no job is pending, or from a job's own version check and
verdict; it reads the shadow once and updates it only when the two differ. It never
blocks or delays a job: its requests use the shadow's own topics and its waits its own
timers, and its one hook call runs only while the device is idle (a job being selected
cancels it; that job's answer serves instead). It owns the rules for the version hook's
attributes (`clean_attributes`): bad ones are dropped with a warning, the rest reported
with the version. Pure: no I/O, no clock, no logging calls.
The payloads are `upparat.aws.shadow`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_never

import attrs

from upparat.core.backoff import Backoff
from upparat.core.commands import (
    CallHook,
    CancelHook,
    Command,
    GetPackageShadow,
    Log,
    SetTimer,
    UpdatePackageShadow,
)
from upparat.core.events import (
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookRetryLater,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
    PackageReportRefused,
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    ShadowRejected,
    TimerFired,
)
from upparat.core.model import (
    CallId,
    ClientToken,
    HookContext,
    HookKind,
    JobId,
    JobStatus,
    LogLevel,
    ReportedPackage,
    ReportedState,
    Settings,
    ShadowOperation,
    ShadowRejectReason,
    TimerKind,
    client_token,
)

REPORTED_AFTER = frozenset({ReportedState.ROLLED_BACK.value, ReportedState.VERSION_MISMATCH.value})
"""Failed endings whose verdict names the version that runs (besides every SUCCEEDED)."""

# --- what the shadow may carry beside the version: the one home of these rules -------------
# The Software Package Catalog's version attributes (CreatePackageVersion, `attributes`):
# keys [a-zA-Z0-9:_-]+, values [^\p{C}]+ (no control, format or unassigned characters),
# at most 3 KB together. The catalog sets no key length nor count; 64 characters, 256 per
# value and 16 attributes keep a report far below the shadow's 8 KB of state.

MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_ATTRIBUTES_BYTES = 3 * 1024
"""UTF-8 bytes of all keys and values together."""
ATTRIBUTE_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")

Attributes = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs, as `ReportedPackage.attributes`."""


def attribute_problem(key: str, value: str) -> str | None:
    """Why one attribute cannot be reported (None: it can)."""
    if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY_CHARS or not set(key) <= ATTRIBUTE_KEY_CHARS:
        return (
            f"attribute name {key[:80]!r} must be 1-{MAX_ATTRIBUTE_KEY_CHARS} of a-z A-Z 0-9 : _ -"
        )
    if not 1 <= len(value) <= MAX_ATTRIBUTE_VALUE_CHARS:
        return f"attribute {key} must be 1-{MAX_ATTRIBUTE_VALUE_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        return f"attribute {key} {value[:80]!r} has control or other unprintable characters"
    return None


def clean_attributes(pairs: Iterable[tuple[str, str]]) -> tuple[Attributes, tuple[str, ...]]:
    """The attributes that can be reported, sorted by key, and why each other one cannot.

    Entry by entry: a bad one is left out, the rest kept. Past MAX_ATTRIBUTES or
    MAX_ATTRIBUTES_BYTES the later keys (in sorted order) are left out, so the same
    answer always keeps the same ones. A key given twice keeps its first value."""
    kept: dict[str, str] = {}
    problems: list[str] = []
    size = 0
    for key, value in sorted(dict(reversed(list(pairs))).items()):
        problem = attribute_problem(key, value)
        if problem is None and len(kept) >= MAX_ATTRIBUTES:
            problem = f"attribute {key} is one more than the {MAX_ATTRIBUTES} reported"
        entry = len(key.encode()) + len(value.encode())
        if problem is None and size + entry > MAX_ATTRIBUTES_BYTES:
            problem = f"attribute {key} would take the attributes past {MAX_ATTRIBUTES_BYTES} bytes"
        if problem is not None:
            problems.append(problem)
            continue
        kept[key] = value
        size += entry
    return tuple(kept.items()), tuple(problems)


def running_package(
    value: str, attributes: Iterable[tuple[str, str]]
) -> tuple[ReportedPackage, list[Command]]:
    """What the version hook said runs, with the attributes that can be reported, and one
    warning per attribute left out (it never stops the version from being reported)."""
    kept, problems = clean_attributes(attributes)
    logs: list[Command] = [
        _log(
            LogLevel.WARNING,
            f"$package shadow: the version hook's {problem}; reporting {value!r} without it",
        )
        for problem in problems
    ]
    return ReportedPackage(version=value, attributes=kept), logs


def needs_report(held: ReportedPackage | None, running: ReportedPackage) -> bool:
    """True when the shadow does not already say exactly what runs (report only then)."""
    return held != running


# --- the version hook, asked while idle ---------------------------------------------------


@attrs.frozen(kw_only=True)
class Probing:
    """The version hook was called (`call_id`), for the report and for no job."""

    call_id: CallId
    attempt: int
    started_at: float
    failures: int = 0
    """Calls in a row that found the hook server unreachable."""
    since: float | None = None
    """When the first of those failed."""


@attrs.frozen(kw_only=True)
class ProbeLater:
    """PACKAGE_VERSION_RETRY `timer` calls the version hook again."""

    timer: int
    attempt: int
    started_at: float
    failures: int = 0
    since: float | None = None


# --- the shadow ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Unread:
    """What the shadow holds is not known: get it (at start, after a 409 or a lost get)."""


@attrs.frozen(kw_only=True)
class Held:
    """The shadow holds `reported` for our package (None: nothing) at `version` (None: the
    thing has no `$package` shadow yet)."""

    reported: ReportedPackage | None
    version: int | None


@attrs.frozen(kw_only=True)
class Reading:
    """A get was sent; PACKAGE_SHADOW_RETRY `timer` sends it again if no answer comes."""

    token: ClientToken
    timer: int
    attempt: int


@attrs.frozen(kw_only=True)
class Writing:
    """An update reporting `report` over `base` was sent; `timer` as for `Reading`."""

    token: ClientToken
    timer: int
    attempt: int
    report: ReportedPackage
    base: Held


@attrs.frozen(kw_only=True)
class Throttled:
    """A retryable refusal (429, 500): PACKAGE_SHADOW_RETRY `timer` sends again, the get
    (`base` None) or the update over `base`."""

    timer: int
    attempt: int
    base: Held | None


@attrs.frozen(kw_only=True)
class GaveUp:
    """Refused for good (say the IoT policy lacks the shadow topics): logged once; tried
    again only when what runs changes from `running`."""

    running: ReportedPackage | None


Shadow = Unread | Held | Reading | Writing | Throttled | GaveUp


@attrs.frozen(kw_only=True)
class PackageReport:
    """The whole sub-machine."""

    running: ReportedPackage | None = None
    """What the device runs, as the version hook said (None: not known yet)."""
    shadow: Shadow = Unread()
    probe: Probing | ProbeLater | None = None
    probed: bool = False
    """The version hook was asked for the report (answered or given up): not again."""
    verified: tuple[JobId, ReportedPackage] | None = None
    """What a job's verification found; it becomes `running` if the job ends on it."""


@attrs.frozen(kw_only=True)
class Ctx:
    """What the sub-machine borrows from the job machine for one step: the counters every
    id, token and jitter comes from, and the facts about the rest of the state it obeys."""

    settings: Settings
    serial: int
    draws: int
    link_up: bool
    """Subscribed: replies cannot be missed, requests may go out."""
    idle: bool
    """No job is pending: the version hook may be asked."""
    sending: bool
    """Not starting up nor shutting down."""
    version_hook: bool
    """The hook server is not known to lack the version hook."""

    def next(self) -> tuple[Ctx, int]:
        return attrs.evolve(self, serial=self.serial + 1), self.serial + 1

    def token(self) -> tuple[Ctx, ClientToken]:
        ctx, serial = self.next()
        return ctx, client_token(self.settings.token_nonce, serial)

    def delay(self, policy: Backoff, retry: int) -> tuple[Ctx, float]:
        delay, draws = policy.drawn(retry, seed=self.settings.seed, draws=self.draws)
        return attrs.evolve(self, draws=draws), delay


Out = tuple[PackageReport, Ctx, list[Command]]
PackageInput = (
    PackageShadowRead
    | PackageShadowUpdated
    | PackageShadowMissing
    | ShadowRejected
    | PackageReportRefused
    | HookFinished
    | TimerFired
)


def owns(report: PackageReport | None, event: HookFinished) -> bool:
    """Is this the answer of the sub-machine's own version-hook call?"""
    if report is None or not isinstance(report.probe, Probing):
        return False
    return report.probe.call_id == event.call_id and event.hook is HookKind.VERSION


# --- what a job tells us (the machine calls these where it learns a version) ---------------


def job_version(
    report: PackageReport, value: str, attributes: Attributes = ()
) -> tuple[PackageReport, list[Command]]:
    """A job's version check, before its update changed anything: this runs now."""
    running, logs = running_package(value, attributes)
    return attrs.evolve(report, running=running), logs


def job_verified(
    report: PackageReport, job_id: JobId, value: str, attributes: Attributes = ()
) -> tuple[PackageReport, list[Command]]:
    """A job's verification found `value` running; reported if the job ends on that."""
    running, logs = running_package(value, attributes)
    return attrs.evolve(report, verified=(job_id, running)), logs


def job_ended(
    report: PackageReport, job_id: JobId, status: JobStatus, state: str | None
) -> PackageReport:
    """The job ended with `status` (statusDetails `state`): after SUCCEEDED, `rolled_back` or
    `version_mismatch`, the version its verification found is what runs."""
    verified = report.verified
    report = attrs.evolve(report, verified=None)
    if verified is None or verified[0] != job_id:
        return report
    if status is JobStatus.SUCCEEDED or (status is JobStatus.FAILED and state in REPORTED_AFTER):
        return attrs.evolve(report, running=verified[1])
    return report


def forget(report: PackageReport | None) -> PackageReport | None:
    """A new or lost MQTT session: an answer in flight may never come; ask again once up."""
    if report is None:
        return None
    shadow = report.shadow
    match shadow:
        case Reading():
            return attrs.evolve(report, shadow=Unread())
        case Writing(base=base):
            return attrs.evolve(report, shadow=base)
        case Unread() | Held() | Throttled() | GaveUp():
            return report
        case _:
            assert_never(shadow)


# --- events -------------------------------------------------------------------------------


def step(report: PackageReport, ctx: Ctx, event: PackageInput, now: float) -> Out:
    match event:
        case PackageShadowRead(client_token=token, shadow_version=version, reported=reported):
            return _read(report, ctx, token, Held(reported=reported, version=version))
        case PackageShadowMissing(client_token=token):
            return _read(report, ctx, token, Held(reported=None, version=None))
        case PackageShadowUpdated(client_token=token, shadow_version=version):
            return _updated(report, ctx, token, version)
        case ShadowRejected():
            return _rejected(report, ctx, event)
        case PackageReportRefused(client_token=token, reason=reason):
            shadow = report.shadow
            if not isinstance(shadow, Writing) or shadow.token != token:
                return report, ctx, []
            text = f"$package shadow: version {shadow.report.version!r} is not reported: {reason}"
            return _give_up(report, ctx, text)
        case HookFinished():
            return _probe_answered(report, ctx, event, now)
        case TimerFired(timer=TimerKind.PACKAGE_SHADOW_RETRY, token=token):
            return _shadow_timer(report, ctx, token)
        case TimerFired(timer=TimerKind.PACKAGE_VERSION_RETRY, token=token):
            probe = report.probe
            if not isinstance(probe, ProbeLater) or probe.timer != token:
                return report, ctx, []
            if not (ctx.idle and ctx.version_hook):
                return attrs.evolve(report, probe=None), ctx, []
            return _call(
                report, ctx, probe.attempt, probe.started_at, probe.failures, probe.since, now
            )
        case TimerFired():
            return report, ctx, []
        case _:
            assert_never(event)


def _read(report: PackageReport, ctx: Ctx, token: ClientToken | None, held: Held) -> Out:
    shadow = report.shadow
    if not isinstance(shadow, Reading) or shadow.token != token:
        return (
            report,
            ctx,
            [_log(LogLevel.DEBUG, "$package shadow: a stale get answer was ignored")],
        )
    holds = "nothing" if held.reported is None else repr(held.reported.version)
    note = f"$package shadow holds {holds} for {ctx.settings.package_name}"
    return attrs.evolve(report, shadow=held), ctx, [_log(LogLevel.DEBUG, note)]


def _updated(report: PackageReport, ctx: Ctx, token: ClientToken | None, version: int) -> Out:
    shadow = report.shadow
    if not isinstance(shadow, Writing) or shadow.token != token:
        # Another client's update (the service tells every subscriber), or a late duplicate.
        return report, ctx, []
    held = Held(reported=shadow.report, version=version)
    note = (
        f"$package shadow: reported {ctx.settings.package_name} {shadow.report.version!r}"
        f" (shadow version {version})"
    )
    return attrs.evolve(report, shadow=held), ctx, [_log(LogLevel.INFO, note)]


def _rejected(report: PackageReport, ctx: Ctx, event: ShadowRejected) -> Out:
    shadow = report.shadow
    match shadow:
        case Reading(token=token, attempt=attempt) if token == event.client_token:
            base: Held | None = None
        case Writing(token=token, attempt=attempt, base=written) if token == event.client_token:
            base = written
        case _:
            return report, ctx, []
    what = f"$package shadow {event.operation.value} rejected: {event.code} {event.message}"
    if event.reason is ShadowRejectReason.VERSION_CONFLICT:
        # Someone else changed the shadow since we read it: read it again, then decide.
        return (
            attrs.evolve(report, shadow=Unread()),
            ctx,
            [_log(LogLevel.INFO, f"{what}; reading it again")],
        )
    if event.reason.retryable:
        ctx, delay = ctx.delay(ctx.settings.request_backoff, attempt)
        ctx, timer = ctx.next()
        throttled = Throttled(timer=timer, attempt=attempt + 1, base=base)
        return (
            attrs.evolve(report, shadow=throttled),
            ctx,
            [
                SetTimer(timer=TimerKind.PACKAGE_SHADOW_RETRY, token=timer, delay=delay),
                _log(LogLevel.WARNING, f"{what}; sending again in {delay:.0f} s"),
            ],
        )
    if event.operation is ShadowOperation.UPDATE or event.reason in (
        ShadowRejectReason.UNAUTHORIZED,
        ShadowRejectReason.FORBIDDEN,
    ):
        what += " (does the IoT policy allow the $package shadow topics? see the README)"
    return _give_up(report, ctx, what)


def _give_up(report: PackageReport, ctx: Ctx, why: str) -> Out:
    text = f"{why}; not reported until the running version changes"
    gave_up = GaveUp(running=report.running)
    return attrs.evolve(report, shadow=gave_up), ctx, [_log(LogLevel.WARNING, text)]


def _shadow_timer(report: PackageReport, ctx: Ctx, token: int) -> Out:
    """No answer within request_timeout (send again), or a throttle's backoff ended."""
    shadow = report.shadow
    match shadow:
        case Reading(timer=timer, attempt=attempt) if timer == token:
            base: Held | None = None
            attempt += 1
        case Writing(timer=timer, attempt=attempt, base=written) if timer == token:
            base = written
            attempt += 1
        case Throttled(timer=timer, attempt=attempt, base=throttled) if timer == token:
            base = throttled
        case _:
            return report, ctx, []
    if not (ctx.link_up and ctx.sending):
        # `pump` sends it once the link is up again.
        return attrs.evolve(report, shadow=Unread() if base is None else base), ctx, []
    if base is None:
        return _send_get(report, ctx, attempt)
    running = report.running
    if running is None or not needs_report(base.reported, running):
        return attrs.evolve(report, shadow=base), ctx, []
    return _send_update(report, ctx, running, base, attempt)


# --- the version hook ---------------------------------------------------------------------


def _call(
    report: PackageReport,
    ctx: Ctx,
    attempt: int,
    started_at: float,
    failures: int,
    since: float | None,
    now: float,
) -> Out:
    ctx, serial = ctx.next()
    call_id = CallId(serial)
    context = HookContext(
        job_id=JobId(""), meta="", attempt=attempt, elapsed=max(0.0, now - started_at), force=False
    )
    command = CallHook(
        call_id=call_id, hook=HookKind.VERSION, context=context, timeout=ctx.settings.hook_timeout
    )
    probe = Probing(
        call_id=call_id, attempt=attempt, started_at=started_at, failures=failures, since=since
    )
    return attrs.evolve(report, probe=probe), ctx, [command]


def _probe_answered(report: PackageReport, ctx: Ctx, event: HookFinished, now: float) -> Out:
    probe = report.probe
    if not isinstance(probe, Probing) or probe.call_id != event.call_id:
        return report, ctx, []
    settings = ctx.settings
    result = event.result
    done = attrs.evolve(report, probe=None, probed=True)
    match result:
        case HookSuccess(value=value, attributes=attributes):
            note = f"$package shadow: {settings.package_name} {value!r} runs (the version hook)"
            running, logs = running_package(value, attributes)
            return attrs.evolve(done, running=running), ctx, [_log(LogLevel.INFO, note), *logs]
        case HookRetryLater():
            # Every retry_interval (a job's call may follow the server's hint; this one
            # is in no hurry).
            policy = settings.hook_retry_backoff
            if policy.exhausted(retries=probe.attempt - 1, elapsed=now - probe.started_at):
                return done, ctx, [_log(LogLevel.WARNING, _unasked("kept asking to retry later"))]
            ctx, delay = ctx.delay(policy, probe.attempt)
            return _sleep(report, ctx, probe, delay, attempt=probe.attempt + 1)
        case HookUnavailable(detail=detail):
            since = now if probe.since is None else probe.since
            failures = probe.failures + 1
            policy = settings.hook_unavailable_backoff
            if policy.exhausted(retries=failures - 1, elapsed=now - since):
                why = f"the hook server was unreachable for {now - since:.0f} s ({detail})"
                return done, ctx, [_log(LogLevel.WARNING, _unasked(why))]
            ctx, delay = ctx.delay(policy, failures)
            probe = attrs.evolve(probe, failures=failures, since=since)
            return _sleep(report, ctx, probe, delay, attempt=probe.attempt)
        case HookFailure(reason=reason, message=message):
            return done, ctx, [_log(LogLevel.WARNING, _unasked(f"it failed: {reason} {message}"))]
        case HookDeadlineExceeded():
            why = f"it did not answer within {settings.hook_timeout:.0f} s"
            return done, ctx, [_log(LogLevel.WARNING, _unasked(why))]
        case HookUnimplemented():
            return done, ctx, [_log(LogLevel.INFO, _unasked("the hook server has none"))]
        case _:
            assert_never(result)


def _sleep(report: PackageReport, ctx: Ctx, probe: Probing, delay: float, *, attempt: int) -> Out:
    ctx, timer = ctx.next()
    later = ProbeLater(
        timer=timer,
        attempt=attempt,
        started_at=probe.started_at,
        failures=probe.failures,
        since=probe.since,
    )
    return (
        attrs.evolve(report, probe=later),
        ctx,
        [SetTimer(timer=TimerKind.PACKAGE_VERSION_RETRY, token=timer, delay=delay)],
    )


def _unasked(why: str) -> str:
    return (
        f"$package shadow: the version hook was not answered for the report ({why});"
        " the next job's version check reports it"
    )


# --- after every event --------------------------------------------------------------------


def pump(report: PackageReport, ctx: Ctx, now: float) -> Out:
    """Do what the state waits to do, now that it may: ask the version hook while idle (and
    stop asking when a job is selected), read the shadow, report what runs."""
    commands: list[Command] = []
    probe = report.probe
    if probe is not None and not ctx.idle:
        # A job was selected: its own version check serves; never two version calls at once.
        if isinstance(probe, Probing):
            commands.append(CancelHook(call_id=probe.call_id))
        report = attrs.evolve(report, probe=None)
    elif probe is None and not report.probed and report.running is None and ctx.idle:
        if ctx.version_hook:
            report, ctx, more = _call(report, ctx, 1, now, 0, None, now)
            commands += more
        else:
            report = attrs.evolve(report, probed=True)
            commands.append(_log(LogLevel.INFO, _unasked("the hook server has none")))
    if not (ctx.link_up and ctx.sending):
        return report, ctx, commands
    shadow, running = report.shadow, report.running
    if isinstance(shadow, GaveUp) and running is not None and running != shadow.running:
        shadow = Unread()
    match shadow:
        case Unread():
            report, ctx, more = _send_get(report, ctx, 1)
            return report, ctx, [*commands, *more]
        case Held():
            if running is not None and needs_report(shadow.reported, running):
                report, ctx, more = _send_update(report, ctx, running, shadow, 1)
                return report, ctx, [*commands, *more]
        case Reading() | Writing() | Throttled() | GaveUp():
            pass
        case _:
            assert_never(shadow)
    return report, ctx, commands


def _send_get(report: PackageReport, ctx: Ctx, attempt: int) -> Out:
    ctx, token = ctx.token()
    ctx, timer = ctx.next()
    reading = Reading(token=token, timer=timer, attempt=attempt)
    return (
        attrs.evolve(report, shadow=reading),
        ctx,
        [
            GetPackageShadow(client_token=token),
            SetTimer(timer=TimerKind.PACKAGE_SHADOW_RETRY, token=timer, delay=_timeout(ctx)),
        ],
    )


def _send_update(
    report: PackageReport, ctx: Ctx, running: ReportedPackage, base: Held, attempt: int
) -> Out:
    ctx, token = ctx.token()
    ctx, timer = ctx.next()
    writing = Writing(token=token, timer=timer, attempt=attempt, report=running, base=base)
    update = UpdatePackageShadow(
        client_token=token, running=running, held=base.reported, expected_version=base.version
    )
    holds = "nothing" if base.reported is None else repr(base.reported.version)
    note = (
        f"$package shadow: reporting {ctx.settings.package_name} {running.version!r}"
        f" (it holds {holds})"
    )
    return (
        attrs.evolve(report, shadow=writing),
        ctx,
        [
            update,
            SetTimer(timer=TimerKind.PACKAGE_SHADOW_RETRY, token=timer, delay=_timeout(ctx)),
            _log(LogLevel.INFO, note),
        ],
    )


def _timeout(ctx: Ctx) -> float:
    return max(0.0, ctx.settings.request_timeout)


def _log(level: LogLevel, message: str) -> Log:
    return Log(level=level, message=message)
