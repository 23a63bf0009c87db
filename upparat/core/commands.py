"""Commands: imperatives the core returns for the runtime to carry out.

The runtime hands each one to exactly one driver (MQTT via the AWS edge, hook
client, downloader, timers, journal, logger). Pure data.
"""

from __future__ import annotations

import attrs

from upparat.core.model import (
    CallId,
    ClientToken,
    DownloadId,
    HookContext,
    HookKind,
    InstallFile,
    JobId,
    JobStatus,
    JournalRecord,
    LogLevel,
    ReportedPackage,
    TimerKind,
)


@attrs.frozen(kw_only=True)
class ConnectMqtt:
    """Make one attempt to connect to the broker; answered by `MqttConnected` or
    `MqttConnectFailed`. The driver never reconnects by itself: when to try again is
    the core's `Settings.reconnect_backoff`."""


@attrs.frozen(kw_only=True)
class SubscribeJobTopics:
    """Subscribe to notify and every reply topic we use; answered by `SubscriptionsAcked`."""


@attrs.frozen(kw_only=True)
class RequestPendingJobs:
    """Publish to `jobs/get`."""

    client_token: ClientToken


@attrs.frozen(kw_only=True)
class DescribeJob:
    """Publish to `jobs/<jobId>/get`."""

    job_id: JobId
    client_token: ClientToken


@attrs.frozen(kw_only=True)
class UpdateJob:
    """Publish to `jobs/<jobId>/update`. The edge sanitises status_details to the AWS limits."""

    job_id: JobId
    status: JobStatus
    status_details: tuple[tuple[str, str], ...]
    client_token: ClientToken
    step_timeout_minutes: int | None = None


@attrs.frozen(kw_only=True)
class GetPackageShadow:
    """Publish to `shadow/name/$package/get`; answered by `PackageShadowRead` or
    `PackageShadowMissing` (or `ShadowRejected`)."""

    client_token: ClientToken


@attrs.frozen(kw_only=True)
class UpdatePackageShadow:
    """Publish to `shadow/name/$package/update` so `state.reported.<package_name>` says
    `running`; answered by `PackageShadowUpdated` or `ShadowRejected`, or at once by
    `PackageReportRefused` when the edge cannot send it."""

    client_token: ClientToken
    running: ReportedPackage
    held: ReportedPackage | None = None
    """What the shadow held (its attributes that `running` lacks are removed)."""
    expected_version: int | None = None
    """The shadow version that was read: a newer one makes the service answer 409."""


@attrs.frozen(kw_only=True)
class AskHookInfo:
    """One GetInfo call; answered by `HookServerInfo` or `HookInfoFailed`."""


@attrs.frozen(kw_only=True)
class CallHook:
    call_id: CallId
    hook: HookKind
    context: HookContext
    timeout: float
    """Deadline of the RPC in seconds."""
    file: InstallFile | None = None
    """Install only."""
    download_follows: bool = False
    """The job downloads next unless this call's answer stops it (a fresh job's first
    version or download check): a driver may get ready for the download meanwhile. A hint
    only; nothing depends on it."""


@attrs.frozen(kw_only=True)
class CancelHook:
    call_id: CallId


@attrs.frozen(kw_only=True)
class StartDownload:
    """Download `url` to `<download_location>/<job_id>`, resuming a partial file."""

    download_id: DownloadId
    job_id: JobId
    url: str
    sha256: str | None = None
    size: int | None = None
    signature: bytes | None = None
    """Checked by the driver on the digest it computes, when it has trusted keys."""


@attrs.frozen(kw_only=True)
class CancelDownload:
    download_id: DownloadId
    discard: bool = True
    """Remove the partial file (job cancelled); False keeps it for a resume (shutdown)."""


@attrs.frozen(kw_only=True)
class DiscardDownload:
    """Remove the file of a job (finished, failed or cancelled)."""

    job_id: JobId


@attrs.frozen(kw_only=True)
class SetTimer:
    """Fire `TimerFired(timer, token)` after `delay` seconds; replaces a timer of that kind."""

    timer: TimerKind
    token: int
    delay: float


@attrs.frozen(kw_only=True)
class Persist:
    """Write the journal atomically before carrying out the next command (None clears it)."""

    record: JournalRecord | None


@attrs.frozen(kw_only=True)
class Log:
    level: LogLevel
    message: str
    job_id: JobId | None = None


@attrs.frozen(kw_only=True)
class SignalReady:
    """The first pending-jobs fetch is done: tell systemd READY=1."""


@attrs.frozen(kw_only=True)
class Exit:
    """Shutdown is complete: disconnect and end the process with status 0."""


Command = (
    ConnectMqtt
    | SubscribeJobTopics
    | RequestPendingJobs
    | DescribeJob
    | UpdateJob
    | GetPackageShadow
    | UpdatePackageShadow
    | AskHookInfo
    | CallHook
    | CancelHook
    | StartDownload
    | CancelDownload
    | DiscardDownload
    | SetTimer
    | Persist
    | Log
    | SignalReady
    | Exit
)
