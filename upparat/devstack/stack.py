"""The whole product on loopback: broker, jobs emulator, file server, hook server, daemon.

Each piece is a real process (the file server is a thread of the caller), started
and stopped by PID. The demo and the end-to-end tests drive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from upparat.devstack.fileserver import FileServer, make_bundle
from upparat.devstack.procs import Mosquitto, child_pids, stop_process, wait_gone
from upparat.emulator import EmulatorControl
from upparat.emulator.wire import JsonValue

HOOKS = ("version", "download", "install", "restart", "ready")


class Stack:
    def __init__(
        self,
        workdir: Path,
        *,
        thing: str = "device-1",
        hooks: Mapping[str, Path] | None = None,
        config: Mapping[str, Mapping[str, str]] | None = None,
        seconds_per_minute: float = 60.0,
        env: Mapping[str, str] | None = None,
        file_tls: ssl.SSLContext | None = None,
    ) -> None:
        """`file_tls`: serve files over https with this server context (the daemon then
        needs the CA, e.g. SSL_CERT_FILE in `env`)."""
        self.workdir = workdir
        self.thing = thing
        self.hooks = dict(hooks or {})
        self.extra_config = {k: dict(v) for k, v in (config or {}).items()}
        self.seconds_per_minute = seconds_per_minute
        self.env = dict(env or {})
        self.broker = Mosquitto(workdir)
        self.files = FileServer(workdir / "files", tls=file_tls)
        (workdir / "files").mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to 108 bytes: keep it short.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="upp-", dir="/tmp"))
        self.socket = self._sock_dir / "hooks.sock"
        self.config_path = workdir / "upparat.conf"
        self.download_dir = workdir / "downloads"
        self.state_dir = workdir / "state"
        self.emulator: subprocess.Popen[bytes] | None = None
        self.hookserver: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self._control: EmulatorControl | None = None
        self.daemon_starts = 0

    @property
    def hookserver_state_dir(self) -> Path:
        """`[hookserver] state_dir`: the hook server's checked copies are in `verified/`."""
        return self.workdir / "hookserver-state"

    # --- configuration ----------------------------------------------------------------

    def write_config(self) -> Path:
        sections: dict[str, dict[str, str]] = {
            "service": {
                "log_level": "INFO",
                "download_location": str(self.download_dir),
                "state_dir": str(self.state_dir),
                "allow_http": "true",
                "progress_interval": "1",
            },
            "broker": {
                "host": "127.0.0.1",
                "port": str(self.broker.port),
                "thing_name": self.thing,
                "client_id": self.thing,
                "keepalive": "30",
            },
            "hooks": {
                "endpoint": f"unix://{self.socket}",
                "retry_interval": "1",
                "max_retries": "5",
                **{name: str(path) for name, path in self.hooks.items()},
            },
            "hookserver": {
                "cancel_grace_period": "2",
                "state_dir": str(self.hookserver_state_dir),
            },
        }
        for section, values in self.extra_config.items():
            sections.setdefault(section, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
            for name, values in sections.items()
        )
        self.config_path.write_text(text)
        return self.config_path

    # --- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("NOTIFY_SOCKET", None)
        try:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        finally:
            log.close()

    def start(self, *, daemon: bool = True) -> Stack:
        self.broker.start()
        self.files.start()
        self.write_config()
        # Both start at once (their imports take most of the time). The daemon waits for
        # the emulator: a first pending-jobs request nobody answers would cost it the
        # 30 s request timeout.
        self._spawn_emulator()
        self.start_hookserver()
        self.control.wait_ready(timeout=15)
        if daemon:
            self.start_daemon()
        return self

    def start_emulator(self) -> None:
        self._spawn_emulator()
        self.control.wait_ready(timeout=15)

    def _spawn_emulator(self) -> None:
        self.emulator = self._spawn(
            "emulator",
            [
                sys.executable,
                "-m",
                "upparat.emulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.broker.port),
                "--seconds-per-minute",
                str(self.seconds_per_minute),
                "--state-file",
                str(self.workdir / "emulator-state.json"),
                # S3 objects of pre-signed URL placeholders come from the file server:
                # bucket B, key K is served from files/B/K (see s3_object).
                "--s3-endpoint",
                self.files.url("").rstrip("/"),
            ],
        )

    @property
    def control(self) -> EmulatorControl:
        if self._control is None:
            self._control = EmulatorControl("127.0.0.1", self.broker.port, timeout=10).connect()
        return self._control

    def start_hookserver(self) -> None:
        self.hookserver = self._spawn(
            "hookserver",
            [sys.executable, "-m", "hookservers.shell.main", "-c", str(self.config_path)],
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.hookserver.poll() is not None:
                raise RuntimeError(
                    f"the hook server exited with {self.hookserver.returncode}; see"
                    f" {self.workdir / 'hookserver.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("the hook server did not create its socket in 15 s")
            time.sleep(0.05)

    def stop_hookserver(self, sig: int = signal.SIGTERM) -> None:
        if self.hookserver is not None:
            if sig != signal.SIGTERM and self.hookserver.poll() is None:
                self.hookserver.send_signal(sig)
            stop_process(self.hookserver)
            self.hookserver = None

    def start_daemon(self) -> None:
        self.daemon_starts += 1
        self.daemon = self._spawn(
            "daemon", [sys.executable, "-m", "upparat.cli", "-c", str(self.config_path)]
        )

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig` to the daemon and wait for it and its worker processes to end, as
        systemd waits for the unit's whole cgroup; returns the daemon's exit status.

        A worker outlives a SIGKILLed daemon until it reads the end of its stdin, which
        is at once; a test that looks at the files next must not meet it still writing."""
        proc, self.daemon = self.daemon, None
        if proc is None:
            return None
        workers = child_pids(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wait_gone(workers, timeout)
        return proc.returncode

    def close(self) -> None:
        self.stop_daemon()
        self.stop_hookserver()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.emulator is not None:
            stop_process(self.emulator)
            self.emulator = None
        with contextlib.suppress(Exception):
            self.files.stop()
        self.broker.stop()
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ---------------------------------------------------------------------------

    def publish_file(self, name: str, size: int, *, seed: int = 1) -> tuple[str, str]:
        """Put a bundle of `size` bytes on the file server; returns (URL, sha256)."""
        sha = make_bundle(self.workdir / "files" / name, size, seed=seed)
        return self.files.url(name), sha

    def s3_object(self, bucket: str, key: str, size: int, *, seed: int = 1) -> str:
        """Put a bundle of `size` bytes where the emulator serves S3 object B/K; its sha256."""
        path = self.workdir / "files" / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_bundle(path, size, seed=seed)

    def create_job(
        self,
        job_id: str,
        *,
        url: str,
        version: str,
        presigned: bool = True,
        presigned_expires_in: int = 3600,
        **document: object,
    ) -> None:
        doc: dict[str, object] = {
            "file": f"${{aws:iot:s3-presigned-url:{url}}}" if presigned else url,
            "version": version,
            **document,
        }
        self.control.create_job(
            job_id, doc, [self.thing], presigned_expires_in=presigned_expires_in
        )

    def execution(self, job_id: str) -> dict[str, object]:
        return dict(self.control.describe(job_id, self.thing))

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, object]:
        return dict(self.control.wait_for_status(job_id, self.thing, *statuses, timeout=timeout))

    def wait_state(self, job_id: str, state: str, timeout: float = 30.0) -> dict[str, object]:
        """Wait until statusDetails.state of the job is `state`."""

        def check() -> JsonValue:
            found = self.control.describe(job_id, self.thing)
            details = found.get("statusDetails")
            return found if isinstance(details, dict) and details.get("state") == state else None

        found = self.control.wait_for(check, timeout)
        assert isinstance(found, dict)
        return dict(found)

    def updates(self, job_id: str) -> list[dict[str, object]]:
        """Every update request the cloud received for the job, oldest first."""
        return [dict(h) for h in self.control.history(job_id, self.thing)]

    def daemon_log(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def describe_for_humans(self, job_id: str) -> str:
        return json.dumps(self.execution(job_id), indent=2, sort_keys=True)
