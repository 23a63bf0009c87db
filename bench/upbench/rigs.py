"""One device under test on loopback: broker, jobs emulator, hook scripts and a daemon.

`UpparatRig` is the product as `upparat.devstack.Stack` runs it (daemon + shell hook
server, each its own process); `LegacyRig` runs upparat 1.12 from its own venv, with its
own INI config, against the same kind of broker and emulator. Both run a job the same way
and report the same measurements, so the harness never asks which one it holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import attrs

from upbench.hookscripts import HookScripts, write_hook_scripts
from upbench.procstat import (
    CpuSampler,
    PeakSampler,
    ThreadTime,
    cpu_seconds,
    memory,
    reset_peak,
    tree_cpu_seconds,
)
from upparat.devstack.procs import stop_process
from upparat.devstack.stack import Stack
from upparat.emulator.wire import JsonValue
from upparat.io.download import THREADS as DOWNLOAD_THREADS

T = TypeVar("T")

THING = "bench-device"
INSTALLED_VERSION = "1.0.0"
ROOT = Path(__file__).resolve().parents[2]
VENV112 = ROOT / "bench" / ".venv112"
UPPARAT112 = VENV112 / "bin" / "upparat"

# The product's defaults where devstack's test settings differ (progress every 1 s,
# keepalive 30 s): the benchmark measures what a device runs.
UPPARAT_CONFIG: Mapping[str, Mapping[str, str]] = {
    "service": {"progress_interval": "10", "log_level": "INFO"},
    "broker": {"keepalive": "60"},
}


@attrs.frozen(kw_only=True)
class Update:
    """One UpdateJobExecution request as the emulator's history recorded it."""

    at: float
    status: str
    state: str


@attrs.frozen(kw_only=True)
class JobRun:
    job_id: str
    created_at: float
    """Epoch seconds, taken right before CreateJob was sent to the emulator."""
    install_at: float | None
    """When the install script started (its own clock reading), None if it never ran."""
    done_at: float | None
    """When the emulator received the terminal update."""
    status: str
    state: str
    updates: tuple[Update, ...]
    daemon_cpu: float | None
    """CPU seconds of the daemon from job created to install hook called."""
    job_cpu: float | None
    """CPU seconds of the daemon from job created to its terminal status seen."""
    hookserver_cpu: float | None
    cloud_cpu: float | None
    """CPU seconds of emulator + broker in the same window."""
    peak_rss_kb: int | None
    """Largest VmRSS of the daemon sampled in the same window (20 Hz)."""
    peak_hwm_kb: int | None
    """VmHWM of the daemon at install time, after a reset at job creation."""
    rss_before_kb: int | None
    cpu_samples: tuple[tuple[float, float], ...] = ()
    """(epoch, CPU seconds of the daemon's process tree) every 10 ms from job created to
    its terminal status seen: the CPU of any window inside it (report.download_cpu)."""
    download_threads: tuple[ThreadTime, ...] = ()
    """The download's threads (receiving, hashing, writing, syncing), their time on a CPU
    and waiting for one, read every 10 ms with `cpu_samples`."""

    @property
    def install_seconds(self) -> float | None:
        return None if self.install_at is None else self.install_at - self.created_at

    @property
    def done_seconds(self) -> float | None:
        return None if self.done_at is None else self.done_at - self.created_at


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


RUNTIME_PARENT = Path("/dev/shm")
"""A tmpfs, as /run is: upparat.service's `RuntimeDirectory=upparat-status` puts the status
file there, and so does the rig (a write there costs a fifth of one on this disk)."""


def runtime_directory() -> Path | None:
    """A fresh folder on a tmpfs for the daemon's `RUNTIME_DIRECTORY`, None without one."""
    if not RUNTIME_PARENT.is_dir() or not os.access(RUNTIME_PARENT, os.W_OK):
        return None
    return Path(tempfile.mkdtemp(prefix="upbench-status-", dir=RUNTIME_PARENT))


class Rig(ABC):
    label: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.scripts: HookScripts = write_hook_scripts(workdir / "hooks", INSTALLED_VERSION)
        # The daemon as the unit runs it: its status file on a tmpfs (RuntimeDirectory=),
        # not next to the journal on the disk. Removed again by close().
        self.runtime_dir = runtime_directory()
        env = {} if self.runtime_dir is None else {"RUNTIME_DIRECTORY": str(self.runtime_dir)}
        self.stack = Stack(
            workdir,
            thing=THING,
            hooks=self.scripts.paths(),
            config=UPPARAT_CONFIG,
            env=env,
        )
        self.daemon_started_at = 0.0
        self._versions: dict[str, str] = {}

    def next_job(self, kind: str) -> tuple[str, str]:
        """A fresh job id and the version (= meta) it installs: never the installed one."""
        n = len(self._versions) + 1
        job_id, version = f"upparat_{kind}_{n}", f"2.{n}.0"
        self._versions[job_id] = version
        return job_id, version

    def meta_of(self, job_id: str) -> str:
        return self._versions[job_id]

    # --- processes ------------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def daemon_pid(self) -> int: ...

    def hookserver_pid(self) -> int | None:
        return None

    def cloud_pids(self) -> list[int]:
        procs = (self.stack.emulator, self.stack.broker.proc)
        return [p.pid for p in procs if p is not None]

    @property
    def download_folder(self) -> Path:
        return self.stack.download_dir / "upparat"

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def retry_hooks(self, interval: int, max_retries: int) -> None:
        """Restart the daemon calling a hook that said "retry later" again `interval`
        seconds after, up to `max_retries` times (both daemons' [hooks] keys)."""

    def _remove_runtime_dir(self) -> None:
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None

    def wait_ready(self, since: float, timeout: float = 30.0) -> None:
        """Until the daemon asked the cloud for its jobs after `since` (epoch s), then a bit
        more: 1.12 subscribes to notify only after the answer, and a job created before
        that would go unseen until the next restart."""

        def asked() -> JsonValue:
            seen = self.stack.control.history(thing=THING, operation="all")
            return any(_number(h.get("at")) >= since for h in seen)

        self.stack.control.wait_for(asked, timeout=timeout, interval=0.1)
        time.sleep(0.5)

    def log_tail(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # --- jobs -----------------------------------------------------------------------------

    def run_job(
        self,
        job_id: str,
        *,
        url: str,
        version: str,
        sha256: str,
        size: int,
        timeout: float,
        sample_cpu: bool = False,
    ) -> JobRun:
        """Create a job whose version and meta are `version`; wait for its terminal status.
        `sample_cpu`: read the daemon's CPU every 10 ms too (`JobRun.cpu_samples`); off for
        the latency jobs, which a sampler competing for the cores would slow down."""
        daemon = self.daemon_pid()
        hookserver = self.hookserver_pid()
        cloud = self.cloud_pids()
        os.sync()  # earlier runs' dirty pages must not be written back during this one
        reset_peak(daemon)
        rss_before = memory(daemon).rss_kb
        # The daemon's work includes its hook and download workers (child processes).
        cpu0 = tree_cpu_seconds(daemon)
        hs0 = cpu_seconds(hookserver) if hookserver is not None else None
        cloud0 = sum(cpu_seconds(p) for p in cloud)
        deadline = time.monotonic() + timeout
        install_at: float | None = None
        daemon_cpu = hookserver_cpu = cloud_cpu = None
        hwm: int | None = None
        # A failed job never calls install. Whether the job ended is asked in a thread: the
        # emulator answers in order, so behind 1.12's thousands of updates an answer can
        # take seconds, and the install call must be seen when it happens.
        ended = threading.Event()
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                if self._terminal(job_id):
                    ended.set()
                    return

        watcher = threading.Thread(target=watch, name="job-watch", daemon=True)
        # Until the terminal status: the cloud may log an update after the install call.
        cpu_sampler = CpuSampler(daemon, threads=DOWNLOAD_THREADS) if sample_cpu else None
        with cpu_sampler or contextlib.nullcontext():
            with PeakSampler([daemon]) as sampler:
                created_at = time.time()
                self.stack.create_job(
                    job_id, url=url, version=version, sha256=sha256, size=size, meta=version
                )
                watcher.start()
                while time.monotonic() < deadline:
                    over = ended.is_set()  # read before the last look at the log
                    call = self.scripts.first_call("install", version)
                    if call is not None:
                        daemon_cpu = tree_cpu_seconds(daemon) - cpu0
                        if hookserver is not None and hs0 is not None:
                            hookserver_cpu = cpu_seconds(hookserver) - hs0
                        cloud_cpu = sum(cpu_seconds(p) for p in cloud) - cloud0
                        hwm = memory(daemon).hwm_kb
                        install_at = call.at
                        break
                    if over:
                        break
                    time.sleep(0.02)
            stop.set()
            watcher.join()
            execution = self._wait_terminal(job_id, deadline)
            job_cpu = tree_cpu_seconds(daemon) - cpu0
        details = execution.get("statusDetails")
        state = details.get("state") if isinstance(details, dict) else None
        updates = tuple(
            Update(at=_number(h.get("at")), status=str(h.get("status")), state=_state_of(h))
            for h in self._patiently(lambda: self.stack.updates(job_id), deadline)
            if h.get("result") == "accepted"
        )
        terminal = [u for u in updates if u.status in ("SUCCEEDED", "FAILED", "REJECTED")]
        return JobRun(
            job_id=job_id,
            created_at=created_at,
            install_at=install_at,
            done_at=terminal[-1].at if terminal else None,
            status=str(execution.get("status", "TIMED OUT (harness)")),
            state=str(state or ""),
            updates=updates,
            daemon_cpu=daemon_cpu,
            job_cpu=job_cpu,
            hookserver_cpu=hookserver_cpu,
            cloud_cpu=cloud_cpu,
            peak_rss_kb=sampler.peaks[daemon] if install_at is not None else None,
            peak_hwm_kb=hwm,
            rss_before_kb=rss_before,
            cpu_samples=() if cpu_sampler is None else tuple(cpu_sampler.samples),
            download_threads=() if cpu_sampler is None else tuple(cpu_sampler.threads.values()),
        )

    def _terminal(self, job_id: str) -> bool:
        try:
            status = self.stack.execution(job_id).get("status")
        except TimeoutError:
            return False  # the emulator is busy (1.12's thousands of updates): not yet
        return status not in ("QUEUED", "IN_PROGRESS")

    def _wait_terminal(self, job_id: str, deadline: float) -> dict[str, object]:
        """The execution once terminal, or as last seen at the deadline ({} if never)."""
        last: dict[str, object] = {}
        while True:
            with contextlib.suppress(TimeoutError):
                last = self.stack.execution(job_id)
                if last.get("status") not in ("QUEUED", "IN_PROGRESS"):
                    return last
            if time.monotonic() >= deadline:
                return last
            time.sleep(0.05)

    def _patiently(self, ask: Callable[[], T], deadline: float) -> T:
        """ask(), again while the emulator's control times out (it answers in order, so a
        backlog of updates delays the answer), until the deadline (plus one last try)."""
        while True:
            try:
                return ask()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return ask()


def _state_of(entry: dict[str, object]) -> str:
    request = entry.get("request")
    if isinstance(request, dict):
        details = request.get("statusDetails")
        if isinstance(details, dict):
            return str(details.get("state", ""))
    return ""


class UpparatRig(Rig):
    label = "upparat"

    def start(self) -> None:
        self.stack.start(daemon=False)
        self.start_daemon()

    def start_daemon(self) -> None:
        since = time.time()
        self.stack.start_daemon()
        self.daemon_started_at = time.monotonic()
        self.wait_ready(since)

    def reconfigure(self, section: str, values: Mapping[str, str]) -> None:
        """Restart the daemon with changed config keys (the hook server keeps running)."""
        self.stack.stop_daemon()
        self.stack.extra_config.setdefault(section, {}).update(values)
        self.stack.write_config()
        self.start_daemon()

    def retry_hooks(self, interval: int, max_retries: int) -> None:
        self.reconfigure(
            "hooks", {"retry_interval": str(interval), "max_retries": str(max_retries)}
        )

    def daemon_pid(self) -> int:
        assert self.stack.daemon is not None, "the daemon is not running"
        return self.stack.daemon.pid

    def hookserver_pid(self) -> int | None:
        return self.stack.hookserver.pid if self.stack.hookserver is not None else None

    def close(self) -> None:
        self.stack.close()
        self._remove_runtime_dir()


def legacy_available() -> bool:
    return UPPARAT112.is_file() and os.access(UPPARAT112, os.X_OK)


class LegacyRig(Rig):
    """upparat 1.12, run as its console script from bench/.venv112.

    1.12 speaks plain MQTT when none of cafile/certfile/keyfile is set (it insists on
    ports 443/8883 only with TLS), so it connects to the same non-TLS loopback broker.
    """

    label = "upparat 1.12"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = workdir / "upparat-1.12.ini"
        self.retries = (1, 5)
        """[hooks] retry_interval and max_retries."""

    def write_config(self) -> None:
        hooks = "".join(f"{name} = {path}\n" for name, path in self.scripts.paths().items())
        self.config_path.write_text(
            "[service]\n"
            "log_level = INFO\n"
            f"download_location = {self.stack.download_dir}\n"
            "\n[broker]\n"
            "host = 127.0.0.1\n"
            f"port = {self.stack.broker.port}\n"
            f"thing_name = {THING}\n"
            f"client_id = {THING}\n"
            "\n[hooks]\n"
            f"{hooks}"
            f"retry_interval = {self.retries[0]}\n"
            f"max_retries = {self.retries[1]}\n"
        )

    def start(self) -> None:
        self.stack.broker.start()
        self.stack.files.start()
        self.stack.start_emulator()
        self.start_daemon()

    def start_daemon(self) -> None:
        self.write_config()
        self.stack.download_dir.mkdir(parents=True, exist_ok=True)
        # Not in the repository's tree and without PYTHONPATH: `import upparat` must find
        # 1.12 in its venv, not this checkout.
        # Nor PYTHONPYCACHEPREFIX: 1.12 reads the .pyc files pip compiled at install time.
        dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONPYCACHEPREFIX")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env["PYTHONUNBUFFERED"] = "1"
        since = time.time()
        with (self.workdir / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(UPPARAT112), "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
            )
        self.daemon_started_at = time.monotonic()
        self.wait_ready(since)

    def daemon_pid(self) -> int:
        assert self.proc is not None, "1.12 is not running"
        return self.proc.pid

    def retry_hooks(self, interval: int, max_retries: int) -> None:
        self.stop_daemon()
        self.retries = (interval, max_retries)
        self.start_daemon()

    def stop_daemon(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop_daemon()
        self.stack.close()
        self._remove_runtime_dir()
