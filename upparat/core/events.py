"""Events: past-tense facts the drivers hand to the core.

The AWS edge, the MQTT, hook and download drivers, the timer and the signal
handler produce these; `upparat.core.machine.step` consumes them. Pure data.
"""

from __future__ import annotations

import enum

import attrs

from upparat.core.model import (
    CallId,
    ClientToken,
    DownloadFailure,
    DownloadId,
    HookKind,
    JobExecution,
    JobId,
    JobSummary,
    JournalRecord,
    RejectCode,
    ReportedPackage,
    ShadowOperation,
    ShadowRejectReason,
    SkippedEntry,
    TimerKind,
)


@attrs.frozen(kw_only=True)
class Started:
    """The daemon started; `journal` is what the last run persisted (None if nothing)."""

    journal: JournalRecord | None = None


@attrs.frozen(kw_only=True)
class MqttConnected:
    """A `ConnectMqtt` attempt succeeded (CONNACK accepted): the session is up."""


@attrs.frozen(kw_only=True)
class MqttConnectFailed:
    """A `ConnectMqtt` attempt ended without a session (TCP, TLS or CONNACK refused)."""

    reason: str


@attrs.frozen(kw_only=True)
class MqttDisconnected:
    """The session `MqttConnected` announced ended; the driver does not reconnect."""

    reason: str


@attrs.frozen(kw_only=True)
class SubscriptionsAcked:
    """The broker acknowledged (SUBACK) every subscription of `SubscribeJobTopics`."""


@attrs.frozen(kw_only=True)
class SubscriptionsRefused:
    """The broker refused filters of `SubscribeJobTopics` (e.g. the IoT policy lacks
    iot:Subscribe); the core subscribes again after a backoff."""

    refused: tuple[tuple[str, str], ...]
    """(filter, the broker's reason code) of each refused filter."""


@attrs.frozen(kw_only=True)
class PendingJobsListed:
    """`get/accepted`: the pending executions of this thing (all job ids, any prefix)."""

    in_progress: tuple[JobSummary, ...]
    queued: tuple[JobSummary, ...]
    client_token: ClientToken | None = None
    skipped: tuple[SkippedEntry, ...] = ()
    """Entries that did not parse (one bad entry never hides the others)."""


@attrs.frozen(kw_only=True)
class JobsChanged:
    """`notify`: the pending executions changed (all job ids, any prefix)."""

    in_progress: tuple[JobSummary, ...]
    queued: tuple[JobSummary, ...]
    skipped: tuple[SkippedEntry, ...] = ()
    """Entries that did not parse (one bad entry never hides the others)."""


@attrs.frozen(kw_only=True)
class ReplyUnusable:
    """An answer to one of our requests (it carries our client token) that cannot be
    used: e.g. a describe answer whose `execution.jobId` is another job's."""

    request: RequestKind
    job_id: JobId | None
    client_token: ClientToken
    reason: str


@attrs.frozen(kw_only=True)
class JobDescribed:
    """`<jobId>/get/accepted`."""

    execution: JobExecution
    client_token: ClientToken | None = None


class RequestKind(enum.Enum):
    GET_PENDING = "get_pending"
    DESCRIBE = "describe"
    UPDATE = "update"


@attrs.frozen(kw_only=True)
class RequestRejected:
    """A `.../rejected` reply to one of our requests."""

    request: RequestKind
    job_id: JobId | None
    code: RejectCode
    message: str
    client_token: ClientToken | None = None


@attrs.frozen(kw_only=True)
class UpdateAccepted:
    """`<jobId>/update/accepted`."""

    job_id: JobId
    client_token: ClientToken | None = None


@attrs.frozen(kw_only=True)
class PayloadIgnored:
    """A message on one of our topics that could not be used, and why."""

    topic: str
    reason: str


@attrs.frozen(kw_only=True)
class HookServerInfo:
    """GetInfo answered: the hooks the server implements."""

    hooks: frozenset[HookKind]
    server_name: str = ""
    server_version: str = ""


@attrs.frozen(kw_only=True)
class HookInfoFailed:
    """GetInfo got no answer (`unimplemented`: the server has no GetInfo; its hooks are
    learnt per call instead). When to ask again is the core's decision."""

    detail: str
    unimplemented: bool = False


# --- hook call results -------------------------------------------------------


@attrs.frozen(kw_only=True)
class HookSuccess:
    value: str = ""
    """GetVersion: the installed version. Others: empty or a message."""
    message: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    """GetVersion: the version hook's attributes, sorted, as the hook server sent them
    (`upparat.core.package.clean_attributes` decides which can be reported)."""


@attrs.frozen(kw_only=True)
class HookRetryLater:
    retry_after: float | None = None
    """The server's hint in seconds, if any."""
    message: str = ""


@attrs.frozen(kw_only=True)
class HookFailure:
    reason: str
    """Machine-readable, UPPER_SNAKE (UNSPECIFIED outcome → `OUTCOME_UNSPECIFIED`)."""
    message: str = ""
    detail: str = ""


@attrs.frozen(kw_only=True)
class HookUnavailable:
    """The hook server could not be reached (gRPC UNAVAILABLE)."""

    detail: str = ""


@attrs.frozen(kw_only=True)
class HookDeadlineExceeded:
    """The call's deadline passed."""


@attrs.frozen(kw_only=True)
class HookUnimplemented:
    """The server does not implement this hook: like a hook missing from a 1.12 config."""


HookResult = (
    HookSuccess
    | HookRetryLater
    | HookFailure
    | HookUnavailable
    | HookDeadlineExceeded
    | HookUnimplemented
)


@attrs.frozen(kw_only=True)
class HookProgressed:
    """An Install progress line."""

    call_id: CallId
    line: str
    percent: int | None = None


@attrs.frozen(kw_only=True)
class HookFinished:
    call_id: CallId
    hook: HookKind
    result: HookResult


# --- downloads ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DownloadProgressed:
    download_id: DownloadId
    bytes_done: int
    total: int | None = None


@attrs.frozen(kw_only=True)
class DownloadInterrupted:
    """The attempt ended on a transient error (network, timeout, HTTP 5xx / 429, too
    slow); the partial file stays for the next `StartDownload`, which resumes it. Whether
    and when that comes is the core's `Settings.download_backoff`."""

    download_id: DownloadId
    bytes_done: int
    """Bytes of the file on disk when the attempt ended."""
    reason: str
    retry_after: float | None = None
    """The server's Retry-After in seconds, if it sent one."""


@attrs.frozen(kw_only=True)
class DownloadCompleted:
    """The file is complete, verified (when the document gave sha256/size) and fsynced."""

    download_id: DownloadId
    path: str
    size: int
    sha256: str


@attrs.frozen(kw_only=True)
class DownloadFailed:
    download_id: DownloadId
    failure: DownloadFailure
    message: str


# --- time and process ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class TimerFired:
    timer: TimerKind
    token: int
    """The token of the `SetTimer` that asked for it; a stale token is ignored."""


@attrs.frozen(kw_only=True)
class ShutdownRequested:
    """SIGTERM / SIGINT."""


# --- the `$package` shadow (upparat.aws.shadow parses, upparat.core.package decides) -----


@attrs.frozen(kw_only=True)
class PackageShadowRead:
    """get/accepted: the shadow exists; `reported` is our package's entry (None: none yet)."""

    client_token: ClientToken | None
    shadow_version: int
    reported: ReportedPackage | None
    timestamp: int | None


@attrs.frozen(kw_only=True)
class PackageShadowUpdated:
    """update/accepted: the report is stored at `shadow_version`."""

    client_token: ClientToken | None
    shadow_version: int
    reported: ReportedPackage | None
    timestamp: int | None


@attrs.frozen(kw_only=True)
class PackageShadowMissing:
    """get/rejected with 404: the thing has no `$package` shadow yet (nothing reported)."""

    client_token: ClientToken | None


@attrs.frozen(kw_only=True)
class ShadowRejected:
    """A get or update the service refused (the 404 of a get is `PackageShadowMissing`)."""

    client_token: ClientToken | None
    operation: ShadowOperation
    reason: ShadowRejectReason
    code: int
    message: str


@attrs.frozen(kw_only=True)
class PackageReportRefused:
    """The edge did not send an `UpdatePackageShadow`: what it would report breaks a rule of
    the Software Package Catalog or of the shadow (say a version with a space); `reason`
    says which. Not sent, so no answer comes."""

    client_token: ClientToken
    reason: str


PackageShadowEvent = (
    PackageShadowRead
    | PackageShadowUpdated
    | PackageShadowMissing
    | ShadowRejected
    | PackageReportRefused
)


Event = (
    Started
    | MqttConnected
    | MqttConnectFailed
    | MqttDisconnected
    | SubscriptionsAcked
    | SubscriptionsRefused
    | PendingJobsListed
    | JobsChanged
    | JobDescribed
    | RequestRejected
    | ReplyUnusable
    | UpdateAccepted
    | PayloadIgnored
    | HookServerInfo
    | HookInfoFailed
    | HookProgressed
    | HookFinished
    | DownloadProgressed
    | DownloadInterrupted
    | DownloadCompleted
    | DownloadFailed
    | PackageShadowRead
    | PackageShadowUpdated
    | PackageShadowMissing
    | ShadowRejected
    | PackageReportRefused
    | TimerFired
    | ShutdownRequested
)
