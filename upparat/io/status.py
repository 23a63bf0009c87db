"""The local status file: what the daemon is doing, for `upparat status` and a product UI.

Owns `status.json` (format 1, documented in the README as stable): its typed snapshot,
the atomic write (temp file, rename), the reader, where
the file lives by default, and how `upparat status` renders it. It does not decide when
to write: the daemon calls `StatusFile.write` on every change it wants shown. A write
that fails is returned as a value, never raised: the status is for show, a job must not
fail because of it.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TypeVar, assert_never

import attrs

from upparat.core import commands as c
from upparat.core import events as e
from upparat.core.model import HookKind, JobStatus, ReportedState

FORMAT_VERSION: Final = 1
FILE_NAME: Final = "status.json"
MAX_FILE_BYTES: Final = 64 * 1024
MAX_TEXT_CHARS: Final = 512

E = TypeVar("E", bound=enum.Enum)


class StatusPhase(enum.Enum):
    """What the daemon is doing (the README's `phase`)."""

    IDLE = "idle"
    CHECKING_VERSION = "checking_version"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    RESTARTING = "restarting"
    VERIFYING = "verifying"

    @property
    def has_progress(self) -> bool:
        return self in (StatusPhase.DOWNLOADING, StatusPhase.INSTALLING)


class Connection(enum.Enum):
    CONNECTED = "connected"
    CONNECTING = "connecting"
    DISCONNECTED = "disconnected"


@attrs.frozen(kw_only=True)
class Progress:
    percent: int | None = None  # 0-100
    done_bytes: int | None = None
    total_bytes: int | None = None
    message: str | None = None  # the install hook's last progress line, say

    @property
    def shown_percent(self) -> int | None:
        if self.percent is not None:
            return self.percent
        if self.done_bytes is not None and self.total_bytes:
            return min(100, self.done_bytes * 100 // self.total_bytes)
        return None


@attrs.frozen(kw_only=True)
class LastResult:
    job_id: str
    status: str  # the job's terminal status: SUCCEEDED, FAILED, REJECTED, ...
    state: str | None = None  # statusDetails.state (complete_ready, rolled_back, ...)
    message: str | None = None
    at: float  # epoch seconds


@attrs.frozen(kw_only=True)
class StatusSnapshot:
    phase: StatusPhase
    job_id: str | None = None
    progress: Progress | None = None
    last_result: LastResult | None = None
    running_version: str | None = None
    reported_version: str | None = None
    """What the `$package` shadow last said for our package ([service] package_name)."""
    reported_attributes: tuple[tuple[str, str], ...] | None = None
    """The attributes it said beside that version (None with `reported_version`)."""
    connection: Connection
    updated_at: float  # epoch seconds (wall clock: for people and UIs, not for timers)


@attrs.frozen(kw_only=True)
class StatusMissing:
    path: Path


@attrs.frozen(kw_only=True)
class StatusUnreadable:
    path: Path
    reason: str


@attrs.frozen(kw_only=True)
class StatusWriteFailed:
    path: Path
    reason: str


# ---- where ---------------------------------------------------------------------------------


UNIT_RUNTIME_DIR = Path("/run/upparat-status")
"""`RuntimeDirectory=upparat-status` of upparat.service (0755: a product UI may read it)."""


def default_path(
    environ: Mapping[str, str], state_dir: Path, unit_dir: Path | None = UNIT_RUNTIME_DIR
) -> Path:
    """`$RUNTIME_DIRECTORY/status.json` (the daemon under systemd: a tmpfs that goes away
    with the unit); else `unit_dir` when it exists (`upparat status` run from a shell next
    to the running unit; the daemon passes None: it writes where its unit says); else
    `<state_dir>/status.json`."""
    first = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if os.path.isabs(first):
        return Path(first) / FILE_NAME
    if unit_dir is not None and unit_dir.is_dir():
        return unit_dir / FILE_NAME
    return state_dir / FILE_NAME


# ---- write and read -----------------------------------------------------------------------


class StatusFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, snapshot: StatusSnapshot) -> StatusWriteFailed | None:
        """Replace the file atomically with `snapshot`; None when it worked.

        Readers see the old or the new snapshot, never a torn one (rename within one
        directory). Not fsynced: it shows what runs now, lives on a tmpfs under systemd,
        and after a power cut the daemon writes it afresh; two fsyncs per phase change cost
        a trivial job tens of milliseconds on a disk (bench/RESULTS.md). Mode 0644: who may
        read it is the directory's permission to grant.
        """
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(encode(snapshot))
                    f.flush()
                    os.fchmod(f.fileno(), 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            return StatusWriteFailed(path=self.path, reason=f"cannot write {self.path}: {e}")
        return None

    def remove(self) -> StatusWriteFailed | None:
        """Remove the file (the daemon stops cleanly); None when it worked or was gone."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return StatusWriteFailed(path=self.path, reason=f"cannot remove {self.path}: {e}")
        return None


def read(path: Path) -> StatusSnapshot | StatusMissing | StatusUnreadable:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return StatusMissing(path=path)
    except OSError as e:
        return StatusUnreadable(path=path, reason=f"cannot read it: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:
        return StatusUnreadable(path=path, reason=f"larger than {MAX_FILE_BYTES} bytes")
    found = decode(data)
    if isinstance(found, str):
        return StatusUnreadable(path=path, reason=found)
    return found


# ---- the format ---------------------------------------------------------------------------


def to_json(snapshot: StatusSnapshot) -> dict[str, object]:
    """The documented JSON object (README, "The status file")."""
    progress = snapshot.progress
    last = snapshot.last_result
    return {
        "format": FORMAT_VERSION,
        "updatedAt": _iso(snapshot.updated_at),
        "phase": snapshot.phase.value,
        "jobId": snapshot.job_id,
        "progress": None
        if progress is None
        else {
            "percent": progress.shown_percent,
            "doneBytes": progress.done_bytes,
            "totalBytes": progress.total_bytes,
            "message": progress.message,
        },
        "lastResult": None
        if last is None
        else {
            "jobId": last.job_id,
            "status": last.status,
            "state": last.state,
            "message": last.message,
            "at": _iso(last.at),
        },
        "runningVersion": snapshot.running_version,
        "reportedVersion": snapshot.reported_version,
        "reportedAttributes": None
        if snapshot.reported_attributes is None
        else dict(snapshot.reported_attributes),
        "connection": snapshot.connection.value,
    }


def encode(snapshot: StatusSnapshot) -> bytes:
    return (
        json.dumps(to_json(snapshot), ensure_ascii=False, separators=(",", ":")) + "\n"
    ).encode()


class _Bad(Exception):
    pass


def decode(data: bytes) -> StatusSnapshot | str:
    """The snapshot in `data`, or why it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("format") != FORMAT_VERSION:
        return f"format {doc.get('format')!r}, this upparat reads format {FORMAT_VERSION}"
    try:
        progress = doc.get("progress")
        last = doc.get("lastResult")
        return StatusSnapshot(
            phase=_enum(StatusPhase, doc.get("phase"), "phase"),
            job_id=_opt_text(doc, "jobId"),
            progress=None
            if progress is None
            else Progress(
                percent=_opt_int(_obj(progress, "progress"), "percent"),
                done_bytes=_opt_int(progress, "doneBytes"),
                total_bytes=_opt_int(progress, "totalBytes"),
                message=_opt_text(progress, "message"),
            ),
            last_result=None
            if last is None
            else LastResult(
                job_id=_text(_obj(last, "lastResult"), "jobId"),
                status=_text(last, "status"),
                state=_opt_text(last, "state"),
                message=_opt_text(last, "message"),
                at=_time(last.get("at"), "lastResult.at"),
            ),
            running_version=_opt_text(doc, "runningVersion"),
            reported_version=_opt_text(doc, "reportedVersion"),
            reported_attributes=_opt_pairs(doc, "reportedAttributes"),
            connection=_enum(Connection, doc.get("connection"), "connection"),
            updated_at=_time(doc.get("updatedAt"), "updatedAt"),
        )
    except _Bad as e:
        return str(e)


def _obj(value: object, name: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Bad(f"{name} must be an object or null")
    return value


def _text(doc: dict[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _Bad(f"{key} must be a string")
    return value


def _opt_text(doc: dict[str, object], key: str) -> str | None:
    return None if doc.get(key) is None else _text(doc, key)


def _opt_pairs(doc: dict[str, object], key: str) -> tuple[tuple[str, str], ...] | None:
    """An object of strings (absent or null: None), as sorted pairs."""
    if doc.get(key) is None:
        return None
    found = _obj(doc.get(key), key)
    if not all(isinstance(v, str) for v in found.values()):
        raise _Bad(f"{key} must map names to strings")
    return tuple(sorted((k, str(v)) for k, v in found.items()))


def _opt_int(doc: dict[str, object], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Bad(f"{key} must be a non-negative integer or null")
    return value


def _enum(kind: type[E], value: object, name: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise _Bad(f"{name} must be one of {allowed}, got {value!r}") from None


def _iso(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: object, name: str) -> float:
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a UTC time like 2025-06-01T10:15:00Z")
    try:
        stamp = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _Bad(f"{name} must be a UTC time like 2025-06-01T10:15:00Z") from None
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


# ---- rendering (`upparat status`) -----------------------------------------------------------

BAR_WIDTH: Final = 30


def render_plain(snapshot: StatusSnapshot) -> str:
    """One line of key=value pairs, for logs and pipes."""
    parts = [_iso(snapshot.updated_at), f"phase={snapshot.phase.value}"]
    if snapshot.job_id is not None:
        parts.append(f"job={snapshot.job_id}")
    progress = snapshot.progress
    if progress is not None and snapshot.phase.has_progress:
        percent = progress.shown_percent
        if percent is not None:
            parts.append(f"progress={percent}%")
        if progress.done_bytes is not None:
            total = "?" if progress.total_bytes is None else str(progress.total_bytes)
            parts.append(f"bytes={progress.done_bytes}/{total}")
        if progress.message:
            parts.append(f"message={json.dumps(_short(progress.message), ensure_ascii=False)}")
    parts.append(f"connection={snapshot.connection.value}")
    if snapshot.running_version is not None:
        parts.append(f"version={snapshot.running_version}")
    if snapshot.reported_version is not None:
        parts.append(f"reported={snapshot.reported_version}")
    last = snapshot.last_result
    if last is not None:
        text = f"{last.status}" + (f"/{last.state}" if last.state else "")
        parts.append(f"last={last.job_id}:{text}")
    return " ".join(parts)


def render_tty(snapshot: StatusSnapshot) -> str:
    """A few lines for a person at a terminal: the phase with a progress bar."""
    head = snapshot.phase.value.replace("_", " ")
    if snapshot.job_id is not None:
        head += f"  {snapshot.job_id}"
    lines = [head]
    progress = snapshot.progress
    if progress is not None and snapshot.phase.has_progress:
        percent = progress.shown_percent
        if percent is None:
            bar = "[" + "?" * BAR_WIDTH + "]"
            lines.append(f"{bar}    ?%")
        else:
            filled = BAR_WIDTH * min(percent, 100) // 100
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
            size = ""
            if progress.done_bytes is not None and progress.total_bytes:
                size = f"  {_mib(progress.done_bytes)} / {_mib(progress.total_bytes)} MiB"
            lines.append(f"{bar} {percent:3d}%{size}")
        if progress.message:
            lines.append(_short(progress.message))
    version = snapshot.running_version or "unknown"
    reported = snapshot.reported_version
    if reported is not None:
        version += " (reported)" if reported == version else f" (the shadow says {reported})"
    lines.append(f"running {version}, {snapshot.connection.value}")
    last = snapshot.last_result
    if last is not None:
        text = last.status + (f" ({last.state})" if last.state else "")
        lines.append(f"last job {last.job_id}: {text} at {_iso(last.at)}")
    lines.append(f"updated {_iso(snapshot.updated_at)}")
    return "\n".join(lines)


def describe_problem(found: StatusMissing | StatusUnreadable) -> str:
    match found:
        case StatusMissing(path=path):
            return (
                f"no status file at {path}: is the daemon running? (give the file with"
                " --file, or the daemon's config with -c)"
            )
        case StatusUnreadable(path=path, reason=reason):
            return f"status file {path}: {reason}"
        case _:
            assert_never(found)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"


def _short(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


# ---- the daemon's side: what the loop saw becomes the snapshot ----------------------------

PROGRESS_WRITE_INTERVAL: Final = 1.0
"""Seconds between two writes that only move the progress (a phase change is written
at once). The write follows an event: no timer of its own, so no idle wakeup."""


class StatusTracker:
    """Follows the events the runtime feeds the core and the commands the core answers
    with, and keeps the status file up to date. Derives, never decides: the phase comes
    from the journal records (`Persist`) and the reports (`UpdateJob`), the connection from
    the MQTT events, the running version from the version hook's answers, the reported
    one from the `$package` shadow's."""

    def __init__(
        self,
        file: StatusFile,
        *,
        wall_clock: Callable[[], float],
        on_write_failed: Callable[[StatusWriteFailed], None],
    ) -> None:
        self._file = file
        self._wall_clock = wall_clock
        self._on_write_failed = on_write_failed
        self._current = StatusSnapshot(
            phase=StatusPhase.IDLE, connection=Connection.CONNECTING, updated_at=0.0
        )
        self._written: StatusSnapshot | None = None
        self._written_at = float("-inf")
        self._failed = False

    @property
    def current(self) -> StatusSnapshot:
        return self._current

    def saw_event(self, event: e.Event) -> None:
        s = self._current
        match event:
            case e.MqttConnected():
                s = attrs.evolve(s, connection=Connection.CONNECTED)
            case e.MqttConnectFailed() | e.MqttDisconnected():
                s = attrs.evolve(s, connection=Connection.CONNECTING)
            case e.HookFinished(hook=HookKind.VERSION, result=e.HookSuccess(value=value)) if value:
                s = attrs.evolve(s, running_version=value)
            case e.PackageShadowRead(reported=held) | e.PackageShadowUpdated(reported=held):
                s = attrs.evolve(
                    s,
                    reported_version=None if held is None else held.version,
                    reported_attributes=None if held is None else held.attributes,
                )
            case e.DownloadProgressed(bytes_done=done, total=total) if (
                s.phase is StatusPhase.DOWNLOADING
            ):
                s = attrs.evolve(s, progress=Progress(done_bytes=done, total_bytes=total))
            case e.HookProgressed(line=line, percent=percent) if s.phase is StatusPhase.INSTALLING:
                s = attrs.evolve(s, progress=Progress(percent=percent, message=line or None))
            case _:
                return
        self._current = s

    def saw_command(self, command: c.Command) -> None:
        s = self._current
        match command:
            case c.Persist(record=None):
                s = attrs.evolve(s, phase=StatusPhase.IDLE, job_id=None, progress=None)
            case c.Persist(record=record) if record is not None:
                phase = StatusPhase(record.phase.value)
                if phase is not s.phase or record.job_id != s.job_id:
                    s = attrs.evolve(s, phase=phase, job_id=record.job_id, progress=None)
            case c.UpdateJob(status=JobStatus.IN_PROGRESS, job_id=job_id):
                reported = dict(command.status_details).get("state", "")
                begun = _PHASE_OF_STATE.get(reported)
                if begun is not None and (begun is not s.phase or job_id != s.job_id):
                    s = attrs.evolve(s, phase=begun, job_id=job_id, progress=None)
            case c.UpdateJob(status=status, job_id=job_id):
                details = dict(command.status_details)
                result = LastResult(
                    job_id=job_id,
                    status=status.value,
                    state=details.get("state"),
                    message=details.get("message"),
                    at=self._wall_clock(),
                )
                s = attrs.evolve(
                    s, phase=StatusPhase.IDLE, job_id=None, progress=None, last_result=result
                )
            case c.Exit():
                s = attrs.evolve(s, connection=Connection.DISCONNECTED)
            case _:
                return
        self._current = s

    def flush(self, now: float) -> None:
        """Write the snapshot if it changed: at once for anything but progress, at most
        every PROGRESS_WRITE_INTERVAL seconds (of `now`, a monotonic clock) for progress."""
        # Both keep updated_at = 0: the wall clock is stamped only on what is written.
        current, written = self._current, self._written
        if written == current:
            return
        only_progress = (
            written is not None and attrs.evolve(written, progress=current.progress) == current
        )
        if only_progress and now - self._written_at < PROGRESS_WRITE_INTERVAL:
            return
        snapshot = attrs.evolve(current, updated_at=self._wall_clock())
        failed = self._file.write(snapshot)
        if failed is not None:
            if not self._failed:
                self._on_write_failed(failed)  # once: the status is for show
            self._failed = True
            return
        self._failed = False
        self._written, self._written_at = current, now


_PHASE_OF_STATE: Final = {
    ReportedState.DOWNLOAD_START.value: StatusPhase.DOWNLOADING,
    ReportedState.INSTALLATION_START.value: StatusPhase.INSTALLING,
    ReportedState.REBOOT_START.value: StatusPhase.RESTARTING,
}
"""The IN_PROGRESS reports that begin a phase (progress reports keep it)."""
