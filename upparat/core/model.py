"""Values shared by the core's events, commands and states.

Pure data only: no I/O, no clock, no logging. Everything here is frozen.
"""

from __future__ import annotations

import enum
from typing import NewType

import attrs

from upparat.core.backoff import Backoff

JobId = NewType("JobId", str)
"""An AWS IoT job id that passed the edge's check (`[a-zA-Z0-9_-]{1,64}`)."""

ThingName = NewType("ThingName", str)
ClientToken = NewType("ClientToken", str)
TOKEN_PREFIX = "upparat-"
CallId = NewType("CallId", int)
"""Identifies one hook call; events of a cancelled or superseded call are ignored."""
DownloadId = NewType("DownloadId", int)
"""Identifies one download; events of a cancelled or superseded download are ignored."""


def client_token(nonce: str, serial: int) -> ClientToken:
    """The client token of request number `serial`: `upparat-<nonce>-<n>`, or `upparat-<n>`
    without a nonce (tests). Every request of the core, jobs and shadow, is named so."""
    return ClientToken(f"{TOKEN_PREFIX}{nonce}-{serial}" if nonce else f"{TOKEN_PREFIX}{serial}")


class JobStatus(enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"


class RejectCode(enum.Enum):
    """Error codes of AWS IoT Jobs `.../rejected` replies."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"
    UNKNOWN = "Unknown"
    """A code this version does not know; treated like the non-retryable ones."""


class HookKind(enum.Enum):
    VERSION = "version"
    DOWNLOAD = "download"
    INSTALL = "install"
    RESTART = "restart"
    READY = "ready"


@attrs.frozen(kw_only=True)
class SkippedEntry:
    """One entry of a pending-jobs list that did not parse; the rest of the list is used."""

    job_id: JobId | None
    """Its job id if that much parsed: the job is still listed, only its details are bad."""
    reason: str
    """What is wrong, without the entry's position (so it reads the same in every message)."""


@attrs.frozen(kw_only=True)
class JobSummary:
    """One pending execution as listed by get/accepted and notify."""

    job_id: JobId
    queued_at: int
    execution_number: int | None = None


@attrs.frozen(kw_only=True)
class JobDocument:
    """An upparat job document that passed structural checks at the edge."""

    file: str
    version: str
    force: bool = False
    meta: str | None = None
    sha256: str | None = None
    """Lower-case hex, 64 characters, when given."""
    size: int | None = None
    """Bytes, when given (>= 0)."""
    signature: bytes | None = None
    """DER ECDSA P-256 signature over the file's SHA-256 (base64 in the document), when
    given. The edge checked only its encoding; `upparat.signing` checks what it signs."""


@attrs.frozen(kw_only=True)
class InstallFile:
    """The downloaded, verified file Install is called with. The hook server checks it
    again (size, sha256 and signature) before root installs it."""

    path: str
    size: int
    sha256: str
    """Lower-case hex, as the download computed it."""
    signature: bytes | None = None
    """The job document's signature, passed on for the hook server to check."""


@attrs.frozen(kw_only=True)
class InvalidJobDocument:
    """A job document that cannot be run; `field` names the culprit."""

    field: str
    reason: str


@attrs.frozen(kw_only=True)
class JobExecution:
    """A described execution (`<jobId>/get/accepted`)."""

    job_id: JobId
    status: JobStatus
    status_details: tuple[tuple[str, str], ...] = ()
    """statusDetails as sorted (key, value) pairs."""
    document: JobDocument | InvalidJobDocument
    execution_number: int | None = None

    def detail(self, key: str) -> str | None:
        for k, v in self.status_details:
            if k == key:
                return v
        return None


@attrs.frozen(kw_only=True)
class HookContext:
    """What every hook call carries (mirrors the proto's JobContext)."""

    job_id: JobId
    meta: str
    attempt: int
    """1-based."""
    elapsed: float
    """Seconds since the first attempt of this hook in this phase."""
    force: bool


class DownloadFailure(enum.Enum):
    URL_EXPIRED = "url_expired"
    """HTTP 403: the pre-signed URL expired; describe the job again."""
    HTTP_ERROR = "http_error"
    """A non-retryable HTTP status (4xx other than 403/429)."""
    VERIFICATION_FAILED = "verification_failed"
    """sha256 or size differ from the job document."""
    INSUFFICIENT_DISK_SPACE = "insufficient_disk_space"
    BAD_URL = "bad_url"
    """Scheme not allowed or URL unusable; refused before any I/O."""
    IO_ERROR = "io_error"
    """Local file system error other than a full disk."""


class TimerKind(enum.Enum):
    HOOK_RETRY = "hook_retry"
    PROGRESS_FLUSH = "progress_flush"
    UPDATE_RETRY = "update_retry"
    REQUEST_RETRY = "request_retry"
    """A request (get / describe) that got no answer in time."""
    SHUTDOWN = "shutdown"
    RECONNECT = "reconnect"
    """Connect to the broker again (after a failed attempt or a lost connection)."""
    SUBSCRIBE_RETRY = "subscribe_retry"
    """Subscribe again after the broker refused a filter."""
    DOWNLOAD_RETRY = "download_retry"
    """Start the next attempt of an interrupted download."""
    HOOK_INFO_RETRY = "hook_info_retry"
    """Ask the hook server for GetInfo again."""
    PACKAGE_VERSION_RETRY = "package_version_retry"
    """Ask the version hook again for the `$package` report (not for a job)."""
    PACKAGE_SHADOW_RETRY = "package_shadow_retry"
    """Send the `$package` shadow get or update again (no answer, or throttled)."""


class Phase(enum.Enum):
    """Where a job stands, as written to the journal."""

    CHECKING_VERSION = "checking_version"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    RESTARTING = "restarting"
    """`reboot_start` was accepted by the cloud and the restart hook was called."""
    VERIFYING = "verifying"


@attrs.frozen(kw_only=True)
class JournalRecord:
    """What must survive a crash or reboot (written by the runtime on `Persist`)."""

    job_id: JobId
    phase: Phase
    restart_count: int = 0
    """How many times the device came back in `reboot_start` for this job."""
    previous_version: str | None = None
    """The version the version hook reported before the update (None: not asked)."""
    execution_number: int | None = None
    """The cloud's executionNumber of the attempt this record belongs to (None: unknown,
    e.g. a journal written by an older upparat). An AWS retry of a failed or timed-out
    execution comes with a new number and must not inherit this record."""


class ReportedState(enum.Enum):
    """The `state` value of the statusDetails the core reports (names of upparat 1.12 kept)."""

    # IN_PROGRESS
    DOWNLOAD_START = "download_start"
    DOWNLOAD_PROGRESS = "download_progress"
    DOWNLOAD_RETRYING = "download_retrying"
    DOWNLOAD_INTERRUPT = "download_interrupt"
    INSTALLATION_START = "installation_start"
    INSTALLATION_PROGRESS = "installation_progress"
    REBOOT_START = "reboot_start"
    # SUCCEEDED
    VERSION_ALREADY_INSTALLED = "version_already_installed"
    NO_INSTALLATION_HOOK_PROVIDED = "no_installation_hook_provided"
    NO_RESTART_HOOK_PROVIDED = "no_restart_hook_provided"
    COMPLETE_SOFT_RESTART = "complete_soft_restart"
    COMPLETE_NO_VERSION_CHECK = "complete_no_version_check"
    COMPLETE_NO_READY_CHECK = "complete_no_ready_check"
    COMPLETE_READY = "complete_ready"
    # FAILED
    ERROR_MULTIPLE_IN_PROGRESS = "error_multiple_in_progress"
    VERSION_MISMATCH = "version_mismatch"
    ROLLED_BACK = "rolled_back"
    """After the restart the device runs the version it ran before the update (a
    bootloader fell back, or the install never took): the journal's previous_version."""
    REBOOT_LOOP = "reboot_loop"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_VERIFICATION_FAILED = "download_verification_failed"
    INSUFFICIENT_DISK_SPACE = "insufficient_disk_space"
    HOOK_SERVER_UNAVAILABLE = "hook_server_unavailable"
    VERSION_HOOK_FAILED = "version_hook_failed"
    DOWNLOAD_HOOK_FAILED = "download_hook_failed"
    INSTALLATION_HOOK_FAILED = "installation_hook_failed"
    RESTART_HOOK_FAILED = "restart_hook_failed"
    READY_HOOK_FAILED = "ready_hook_failed"
    VERSION_HOOK_TIMED_OUT = "version_hook_timed_out"
    DOWNLOAD_HOOK_TIMED_OUT = "download_hook_timed_out"
    INSTALLATION_HOOK_TIMED_OUT = "installation_hook_timed_out"
    RESTART_HOOK_TIMED_OUT = "restart_hook_timed_out"
    READY_HOOK_TIMED_OUT = "ready_hook_timed_out"
    # REJECTED
    INVALID_JOB_DOCUMENT = "invalid_job_document"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@attrs.frozen(kw_only=True)
class Settings:
    """The core's configuration: plain numbers, read once by the runtime."""

    job_prefix: str = "upparat_"
    retry_interval: float = 60.0
    """Seconds between RETRY_LATER attempts of a hook."""
    max_retries: int = 60
    hook_timeout: float = 3600.0
    install_timeout: float = 3600.0
    hook_unavailable_timeout: float = 3600.0
    progress_interval: float = 10.0
    step_timeout_minutes: int | None = None
    max_restarts: int = 3
    verify_soft_restart: bool = True
    allow_http: bool = False
    token_nonce: str = ""
    """Random per process (the daemon draws it): client tokens `upparat-<nonce>-<n>` that
    another client on a shared broker cannot guess to answer our requests. Empty in tests:
    `upparat-<n>`."""
    require_signature: bool = False
    """A job document without `signature` is REJECTED before any download."""
    request_timeout: float = 30.0
    """Seconds to wait for a reply to get / describe / update before asking again."""
    restart_timeout: float = 600.0
    """Seconds to wait for the daemon to be stopped after the hook server went away during
    Restart; after that the installation is verified as after a soft restart."""
    seed: int = 0
    """Seed of every jitter the core draws (the daemon draws it at random per process, so
    a fleet does not retry in lockstep; tests fix it)."""
    download_retries: int = 10
    """Interrupted download attempts in a row without a new byte before the job fails
    (`download_failed`, with the last reason); an attempt that adds bytes resets it."""
    reconnect_max_delay: float = 120.0
    """The longest wait between two attempts to connect to the broker."""
    package_name: str | None = None
    """`[service] package_name`: report the running version into the `$package` shadow
    under this name (`upparat.core.package`); None: no report, no shadow traffic."""

    # --- the retry policies: every delay the core asks for comes from one of these ---

    @property
    def reconnect_backoff(self) -> Backoff:
        """MQTT connect attempts: 1, 2, 4 ... s up to `reconnect_max_delay`, full jitter (a
        fleet that lost its broker at the same instant must not come back in lockstep), and
        never sooner than 1 s: AWS IoT Core takes one CONNECT per second per client id
        (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits)."""
        return Backoff(base=1.0, cap=max(1.0, self.reconnect_max_delay), jitter=1.0, floor=1.0)

    @property
    def request_backoff(self) -> Backoff:
        """Cloud requests answered RequestThrottled / InternalError (AWS: retry those with
        backoff) or unusably: 1-2, 2-4, 4-8 ... up to 30-60 s."""
        return Backoff(base=2.0, cap=60.0, jitter=0.5)

    @property
    def download_backoff(self) -> Backoff:
        """Interrupted downloads: full jitter up to 64 s; gives up after `download_retries`
        attempts in a row that added no byte."""
        return Backoff(base=1.0, cap=64.0, jitter=1.0, retries=max(0, self.download_retries))

    @property
    def hook_retry_backoff(self) -> Backoff:
        """RETRY_LATER: every `retry_interval`, at most `max_retries` retries."""
        interval = max(0.0, self.retry_interval)
        return Backoff(base=interval, cap=interval, factor=1.0, retries=max(0, self.max_retries))

    @property
    def hook_unavailable_backoff(self) -> Backoff:
        """An unreachable hook server: 1, 2, 4 ... 60 s, for `hook_unavailable_timeout`."""
        return Backoff(base=1.0, cap=60.0, give_up_after=self.hook_unavailable_timeout)


# --- the `$package` shadow (upparat.core.package; payloads in upparat.aws.shadow) ---------


@attrs.frozen(kw_only=True)
class ReportedPackage:
    """What `state.reported.<package>` says (or should say): the running version and attributes."""

    version: str
    attributes: tuple[tuple[str, str], ...] = ()
    """Sorted (key, value) pairs."""


class ShadowOperation(enum.Enum):
    GET = "get"
    UPDATE = "update"


class ShadowRejectReason(enum.Enum):
    """The Device Shadow error codes (device-shadow-error-messages)."""

    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    VERSION_CONFLICT = 409
    PAYLOAD_TOO_LARGE = 413
    UNSUPPORTED_ENCODING = 415
    TOO_MANY_REQUESTS = 429
    INTERNAL_ERROR = 500
    UNKNOWN = 0  # a code the documentation does not list

    @property
    def retryable(self) -> bool:
        """Worth sending again after a backoff. A 409 is not: read the shadow again first."""
        return self in (ShadowRejectReason.TOO_MANY_REQUESTS, ShadowRejectReason.INTERNAL_ERROR)
