"""Hypothesis strategies for every state and every event of the core.

Events draw their ids and tokens partly from a pool harvested out of a state, so a good
share of them match what that state waits for and reach the deep branches of `step`.
"""

from __future__ import annotations

import typing
from typing import Any, cast

import attrs
from hypothesis import strategies as st

from upparat.core import machine, outbox, package, progress
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
    ReportedPackage,
    Settings,
    ShadowOperation,
    ShadowRejectReason,
    SkippedEntry,
    TimerKind,
)

STAGE_CLASSES: tuple[type[machine.Stage], ...] = typing.get_args(machine.Stage)
EVENT_CLASSES: tuple[type[Event], ...] = typing.get_args(Event)

JOB_IDS = [JobId("upparat_1"), JobId("upparat_2"), JobId("other_1"), JobId("")]

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e12)
now = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e9)

settings = st.builds(
    Settings,
    job_prefix=st.sampled_from(["upparat_", "", "other"]),
    retry_interval=finite,
    max_retries=st.integers(-2, 100),
    hook_timeout=finite,
    install_timeout=finite,
    hook_unavailable_timeout=finite,
    progress_interval=finite,
    step_timeout_minutes=st.none() | st.integers(-1, 10080),
    max_restarts=st.integers(-1, 10),
    verify_soft_restart=st.booleans(),
    allow_http=st.booleans(),
    request_timeout=finite,
    restart_timeout=finite,
    seed=st.integers(0, 2**64 - 1),
    download_retries=st.integers(-1, 20),
    reconnect_max_delay=finite,
    package_name=st.none() | st.just("firmware"),
)

# Reports held inside a generated stage (a deferred progress report, the outbox)
# carry details the core could have built: the totality test checks what it publishes.
_held_details = st.sampled_from(
    [
        (("message", "none"), ("state", "download_start")),
        (("bytes", "5"), ("message", "none"), ("progress", "5"), ("state", "x")),
    ]
)
st.register_type_strategy(
    outbox.Update,
    st.builds(
        outbox.Update,
        job_id=st.sampled_from(JOB_IDS),
        status=st.sampled_from(JobStatus),
        details=_held_details,
    ),
)
st.register_type_strategy(
    progress.Deferred,
    st.builds(
        progress.Deferred,
        details=_held_details,
        percent=st.none() | st.integers(0, 100),
        timer=st.integers(0, 10),
    ),
)

st.register_type_strategy(
    machine.Downloading,
    st.builds(
        machine.Downloading,
        job=st.from_type(machine.Job),
        download_id=st.integers(0, 10).map(DownloadId),
        refusals=st.integers(0, 5),
        interruptions=st.integers(0, 20),
        baseline=st.integers(0, 1000),
        retry=st.none() | st.integers(0, 10),
    ),
)
st.register_type_strategy(
    machine.CheckingVersion,
    st.builds(
        machine.CheckingVersion,
        job=st.from_type(machine.Job),
        call=st.from_type(machine.Call),
        after_install=st.booleans(),
    ),
)

_dials = (
    st.none()
    | st.builds(machine.Dialing, failures=st.integers(0, 100))
    | st.builds(machine.Redialing, failures=st.integers(0, 100), timer=st.integers(0, 10))
)
_resubscribes = st.none() | st.builds(
    machine.Resubscribing, refusals=st.integers(0, 100), timer=st.integers(0, 10)
)
_hook_infos = (
    st.none()
    | st.builds(machine.Asking, failures=st.integers(0, 100))
    | st.builds(machine.AskingLater, failures=st.integers(0, 100), timer=st.integers(0, 10))
)

_reported = st.builds(
    ReportedPackage,
    version=st.sampled_from(["1", "2", "1 beta"]),
    attributes=st.sampled_from([(), (("slot", "A"),)]),
)
_held = st.builds(
    package.Held, reported=st.none() | _reported, version=st.none() | st.integers(0, 5)
)
_small = st.integers(0, 10)
_shadows = st.one_of(
    st.just(package.Unread()),
    _held,
    st.builds(
        package.Reading,
        token=_small.map(lambda n: ClientToken(f"upparat-{n}")),
        timer=_small,
        attempt=_small,
    ),
    st.builds(
        package.Writing,
        token=_small.map(lambda n: ClientToken(f"upparat-{n}")),
        timer=_small,
        attempt=_small,
        report=_reported,
        base=_held,
    ),
    st.builds(package.Throttled, timer=_small, attempt=_small, base=st.none() | _held),
    st.builds(package.GaveUp, running=st.none() | _reported),
)
_probes = (
    st.none()
    | st.builds(
        package.Probing, call_id=_small.map(CallId), attempt=_small, started_at=st.floats(0, 100)
    )
    | st.builds(package.ProbeLater, timer=_small, attempt=_small, started_at=st.floats(0, 100))
)
_packages = st.none() | st.builds(
    package.PackageReport,
    running=st.none() | _reported,
    shadow=_shadows,
    probe=_probes,
    probed=st.booleans(),
    verified=st.none() | st.tuples(st.sampled_from(JOB_IDS), _reported),
)

states: st.SearchStrategy[machine.State] = st.builds(
    machine.State,
    settings=settings,
    stage=st.one_of(*(st.from_type(c) for c in STAGE_CLASSES)),
    link=st.sampled_from(machine.Link),
    serial=st.integers(0, 10**6),
    dial=_dials,
    resubscribe=_resubscribes,
    hook_info=_hook_infos,
    draws=st.integers(0, 10**6),
    package=_packages,
)


def _state_in(stage_class: type[machine.Stage]) -> st.SearchStrategy[machine.State]:
    return st.builds(
        machine.State,
        settings=settings,
        stage=st.from_type(stage_class),
        link=st.sampled_from(machine.Link),
        serial=st.integers(0, 10**6),
        dial=_dials,
        resubscribe=_resubscribes,
        hook_info=_hook_infos,
        draws=st.integers(0, 10**6),
        package=_packages,
    )


STATE_IN: dict[type[machine.Stage], st.SearchStrategy[machine.State]] = {
    c: _state_in(c) for c in STAGE_CLASSES
}
"""A state in each stage class."""


@attrs.frozen
class Pool:
    """Ints and strings found in a state: candidates for ids and tokens that match."""

    ints: tuple[int, ...]
    strs: tuple[str, ...]
    hooks: tuple[HookKind, ...] = ()
    """The hook the stage waits for, if any."""


def harvest(value: object) -> Pool:
    ints: list[int] = []
    strs: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, int):
            ints.append(v)
        elif isinstance(v, str):
            strs.append(v)
        elif isinstance(v, tuple | frozenset):
            for item in v:
                walk(item)
        elif attrs.has(type(v)):
            for field in attrs.fields(cast("type[attrs.AttrsInstance]", type(v))):
                walk(getattr(v, field.name))

    walk(value)
    hooks: tuple[HookKind, ...] = ()
    if isinstance(value, machine.State) and isinstance(value.stage, machine.HookStage):
        hooks = (machine.hook_of(value.stage),)
    return Pool(ints=tuple(dict.fromkeys(ints)), strs=tuple(dict.fromkeys(strs)), hooks=hooks)


_ints = st.integers(-2, 40)
_texts = st.text(max_size=12)
_job_ids = (st.sampled_from(JOB_IDS) | _texts).map(JobId)
_tokens = st.none() | _texts.map(ClientToken)
_summaries = st.builds(JobSummary, job_id=_job_ids, queued_at=st.integers(-5, 5))
_lists = st.lists(_summaries, max_size=4).map(tuple)
_documents = st.builds(InvalidJobDocument, field=_texts, reason=_texts) | st.builds(
    JobDocument,
    file=st.sampled_from(["https://h/f?sig=1", "http://h/f", "ftp://x", ""]) | _texts,
    version=st.sampled_from(["1", "2"]),
    force=st.booleans(),
    size=st.none() | st.integers(-1, 100),
)
_details = st.sampled_from(
    [(), (("state", "reboot_start"),), (("message", "none"), ("state", "download_start"))]
)
_executions = st.builds(
    JobExecution,
    job_id=_job_ids,
    status=st.sampled_from(JobStatus),
    status_details=_details,
    document=_documents,
)
_results: st.SearchStrategy[HookResult] = st.one_of(
    st.builds(
        HookSuccess,
        value=st.sampled_from(["1", "2", ""]),
        message=_texts,
        attributes=st.sampled_from([(), (("slot", "A"),), (("slot", "B"),), (("bad key", ""),)]),
    ),
    st.builds(HookRetryLater, retry_after=st.none() | finite, message=_texts),
    st.builds(HookFailure, reason=_texts, message=_texts, detail=_texts),
    st.builds(HookUnavailable, detail=_texts),
    st.just(HookDeadlineExceeded()),
    st.just(HookUnimplemented()),
)

_skipped = st.lists(
    st.builds(SkippedEntry, job_id=st.none() | _job_ids, reason=st.sampled_from(["bad", "worse"])),
    max_size=2,
).map(tuple)

EVENTS: dict[type[Event], st.SearchStrategy[Event]] = {
    Started: st.builds(
        Started,
        journal=st.none()
        | st.builds(
            JournalRecord,
            job_id=_job_ids,
            phase=st.sampled_from(Phase),
            restart_count=st.integers(-1, 5),
            previous_version=st.none() | st.sampled_from(["1", "2", ""]),
        ),
    ),
    MqttConnected: st.just(MqttConnected()),
    MqttConnectFailed: st.builds(MqttConnectFailed, reason=_texts),
    MqttDisconnected: st.builds(MqttDisconnected, reason=_texts),
    SubscriptionsAcked: st.just(SubscriptionsAcked()),
    SubscriptionsRefused: st.builds(
        SubscriptionsRefused, refused=st.lists(st.tuples(_texts, _texts), max_size=3).map(tuple)
    ),
    PendingJobsListed: st.builds(
        PendingJobsListed,
        in_progress=_lists,
        queued=_lists,
        client_token=_tokens,
        skipped=_skipped,
    ),
    JobsChanged: st.builds(JobsChanged, in_progress=_lists, queued=_lists, skipped=_skipped),
    JobDescribed: st.builds(JobDescribed, execution=_executions, client_token=_tokens),
    RequestRejected: st.builds(
        RequestRejected,
        request=st.sampled_from(RequestKind),
        job_id=st.none() | _job_ids,
        code=st.sampled_from(RejectCode),
        message=_texts,
        client_token=_tokens,
    ),
    UpdateAccepted: st.builds(UpdateAccepted, job_id=_job_ids, client_token=_tokens),
    ReplyUnusable: st.builds(
        ReplyUnusable,
        request=st.sampled_from(RequestKind),
        job_id=st.none() | _job_ids,
        client_token=_tokens.filter(lambda t: t is not None),
        reason=_texts,
    ),
    PayloadIgnored: st.builds(PayloadIgnored, topic=_texts, reason=_texts),
    HookServerInfo: st.builds(HookServerInfo, hooks=st.frozensets(st.sampled_from(HookKind))),
    HookInfoFailed: st.builds(HookInfoFailed, detail=_texts, unimplemented=st.booleans()),
    HookProgressed: st.builds(
        HookProgressed,
        call_id=_ints.map(CallId),
        line=_texts,
        percent=st.none() | st.integers(-10, 200),
    ),
    HookFinished: st.builds(
        HookFinished, call_id=_ints.map(CallId), hook=st.sampled_from(HookKind), result=_results
    ),
    DownloadProgressed: st.builds(
        DownloadProgressed,
        download_id=_ints.map(DownloadId),
        bytes_done=st.integers(-10, 10**6),
        total=st.none() | st.integers(-1, 10**6),
    ),
    DownloadInterrupted: st.builds(
        DownloadInterrupted,
        download_id=_ints.map(DownloadId),
        bytes_done=st.integers(-10, 10**6),
        reason=_texts,
        retry_after=st.none() | finite,
    ),
    DownloadCompleted: st.builds(
        DownloadCompleted,
        download_id=_ints.map(DownloadId),
        path=_texts,
        size=_ints,
        sha256=_texts,
    ),
    DownloadFailed: st.builds(
        DownloadFailed,
        download_id=_ints.map(DownloadId),
        failure=st.sampled_from(DownloadFailure),
        message=_texts,
    ),
    TimerFired: st.builds(TimerFired, timer=st.sampled_from(TimerKind), token=_ints),
    ShutdownRequested: st.just(ShutdownRequested()),
    PackageShadowRead: st.builds(
        PackageShadowRead,
        client_token=_tokens,
        shadow_version=st.integers(0, 9),
        reported=st.none() | _reported,
        timestamp=st.none() | st.integers(0, 9),
    ),
    PackageShadowUpdated: st.builds(
        PackageShadowUpdated,
        client_token=_tokens,
        shadow_version=st.integers(0, 9),
        reported=st.none() | _reported,
        timestamp=st.none() | st.integers(0, 9),
    ),
    PackageShadowMissing: st.builds(PackageShadowMissing, client_token=_tokens),
    ShadowRejected: st.builds(
        ShadowRejected,
        client_token=_tokens,
        operation=st.sampled_from(ShadowOperation),
        reason=st.sampled_from(ShadowRejectReason),
        code=st.integers(0, 600),
        message=_texts,
    ),
    PackageReportRefused: st.builds(
        PackageReportRefused, client_token=_texts.map(ClientToken), reason=_texts
    ),
}

_INT_FIELDS = ("call_id", "download_id", "token")
_STR_FIELDS = ("client_token", "job_id")


def aligned(data: st.DataObject, event: Event, pool: Pool) -> Event:
    """`event` with some of its ids and tokens replaced by ones found in the state."""
    changes: dict[str, object] = {}
    for field in attrs.fields(cast("type[attrs.AttrsInstance]", type(event))):
        name = field.name
        if name in _INT_FIELDS and pool.ints and data.draw(st.booleans()):
            changes[name] = pool.ints[data.draw(st.integers(0, len(pool.ints) - 1))]
        if name in _STR_FIELDS and pool.strs and data.draw(st.booleans()):
            changes[name] = pool.strs[data.draw(st.integers(0, len(pool.strs) - 1))]
    if isinstance(event, HookFinished) and pool.hooks and data.draw(st.booleans()):
        changes["hook"] = pool.hooks[0]
    if isinstance(event, JobDescribed) and pool.strs and data.draw(st.booleans()):
        job_id = JobId(pool.strs[data.draw(st.integers(0, len(pool.strs) - 1))])
        changes["execution"] = attrs.evolve(event.execution, job_id=job_id)
    return cast(Event, _evolve(event, changes))


def _evolve(value: Any, changes: dict[str, Any]) -> Any:
    # attrs.evolve cannot be typed over a union of 19 classes with computed field names.
    return attrs.evolve(value, **changes)
