"""Contract cases for hook servers that run upparat 1.12 hook scripts.

Owns the behaviour every such server must show on the wire (hooks.proto plus the 1.12
script conventions), independent of the language it is written in. Holds no test of
one implementation's internals; those live next to the implementation's own tests.

How to run the cases against an implementation
----------------------------------------------
An implementation is a command line that takes ``-c <config>`` and reads the INI
file upparat-hookserver reads: ``[hooks] version/download/install/restart/ready``
(script paths) and ``endpoint``, ``[hookserver] listen, cancel_grace_period,
default_retry_after, socket_mode, script_path`` and ``[service] download_location``
(Install is asked for a real file there, with its sha256 and size, as the daemon asks; a
server may check the file and give the script a copy). Subclass `HookServerContract` in a
``test_*.py`` module and override its class-scoped ``implementation`` fixture::

    class TestNodeHookServer(HookServerContract):
        @pytest.fixture(scope="class")
        @classmethod
        def implementation(cls) -> Implementation:
            return Implementation(name="node", argv=lambda conf: ["node", "server.js", "-c", str(conf)])

or parametrise ``implementation`` over several. Most cases share one server per class
(``eval_server``) whose every hook runs ``scripts/eval_meta.sh``, which runs the job's
meta as shell code, so each case sends its script as the meta. Cases that need their
own configuration use the ``hook_server`` fixture, a `HookServerFactory`:
``hook_server.start({"version": "echo 1.0"})`` writes the scripts (``#!/bin/sh`` bodies),
the config and a unix socket path under ``tmp_path``, starts the server as a
subprocess, waits for grpc.health.v1 SERVING and returns a `RunningHookServer`.
Every process started is killed by PID when its fixture ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2

from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
START_TIMEOUT = 15.0
CALL_TIMEOUT = 10.0
GRACE = 1.0
"""cancel_grace_period written into every config unless a case sets another."""
SECRET_ENV = "UPPARAT_TEST_SECRET"
"""Set in the server's environment; a script must never see it."""
HOOK_NAMES = ("version", "download", "install", "restart", "ready")
HOOK_SERVICE = "upparat.hooks.v1.HookService"
FIRMWARE = b"upparat test bundle\n" * 1000
"""What the daemon downloaded, in every Install request of these cases."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    """How to start one hook server implementation."""

    name: str
    argv: Callable[[Path], list[str]]
    """The command line for a config file path."""
    skip_reason: Callable[[], str | None] = lambda: None
    """Why this implementation cannot run here (e.g. node missing), or None."""


SHELL = Implementation(
    name="shell",
    argv=lambda conf: [sys.executable, "-m", "hookservers.shell.main", "-c", str(conf)],
)
"""The reference implementation, hookservers/shell."""


# --- processes -------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return fields[0] in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Waits until every pid is gone; returns those still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not pid_gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kill_pid(pid: int) -> None:
    """SIGKILL one process we know by PID (cleanup after a failed case)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    """The content of `path` once it exists and ends with a newline."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written within {timeout} s")
        time.sleep(0.02)


def read_pids(path: Path, count: int, timeout: float = 5.0) -> list[int]:
    """`count` PIDs, one a line, from a file a script writes."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) >= count:
                return [int(ln) for ln in lines[:count]]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not list {count} pids within {timeout} s")
        time.sleep(0.02)


# --- requests --------------------------------------------------------------------------


def job(
    *,
    job_id: str = "upparat_job-1",
    meta: str = "",
    attempt: int = 1,
    elapsed: float = 0.0,
    force: bool = False,
) -> hooks_pb2.JobContext:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(elapsed * 1e9))
    return hooks_pb2.JobContext(job_id=job_id, meta=meta, attempt=attempt, elapsed=d, force=force)


@dataclasses.dataclass
class InstallOutcome:
    """What one Install stream delivered."""

    progress: list[hooks_pb2.InstallProgress]
    result: hooks_pb2.HookResult | None
    after_result: int
    """Messages after the result (the contract says 0)."""


def health_status(channel: grpc.Channel, service: str = "") -> int:
    # The typed stubs of grpc_health lack HealthStub.Check; the method path is the standard one.
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply = check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
    return int(reply.status)


# --- servers ---------------------------------------------------------------------------


@dataclasses.dataclass
class RunningHookServer:
    """One hook server process listening on a unix socket in the test's tmp_path."""

    proc: subprocess.Popen[bytes]
    socket_path: Path
    config_path: Path
    workdir: Path
    log_path: Path
    scripts: dict[str, Path]
    _channel: grpc.Channel | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def download_dir(self) -> Path:
        """`<[service] download_location>/upparat`, where the daemon puts its downloads."""
        return download_location(self.workdir) / "upparat"

    def install_request(
        self, context: hooks_pb2.JobContext | None = None, content: bytes = FIRMWARE
    ) -> hooks_pb2.InstallRequest:
        """What the daemon sends: its download of `content` lies in the download folder
        (mode 0600, as the daemon writes it) and the request carries its sha256 and size."""
        context = context or job()
        path = self.download_dir / context.job_id
        self.download_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o600)
        return hooks_pb2.InstallRequest(
            context=context,
            file_path=str(path),
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint)
        return self._channel

    def new_channel(self) -> grpc.Channel:
        """A channel of its own (closing it cancels its calls)."""
        return grpc.insecure_channel(self.endpoint)

    def hooks(self, channel: grpc.Channel | None = None) -> hooks_pb2_grpc.HookServiceStub:
        return hooks_pb2_grpc.HookServiceStub(channel or self.channel())

    def identity(self) -> hooks_pb2_grpc.IdentityServiceStub:
        return hooks_pb2_grpc.IdentityServiceStub(self.channel())

    def health(self, service: str = "") -> int:
        """grpc.health.v1 Check: the ServingStatus of `service` ("" is the whole server)."""
        return health_status(self.channel(), service)

    def install(
        self,
        *,
        context: hooks_pb2.JobContext | None = None,
        request: hooks_pb2.InstallRequest | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> InstallOutcome:
        """One Install call; `request` defaults to `install_request(context)`."""
        call = self.hooks().Install(request or self.install_request(context), timeout=timeout)
        progress: list[hooks_pb2.InstallProgress] = []
        result: hooks_pb2.HookResult | None = None
        after = 0
        for message in call:
            if result is not None:
                after += 1
            elif message.HasField("result"):
                result = message.result
            elif message.HasField("progress"):
                progress.append(message.progress)
        return InstallOutcome(progress=progress, result=result, after_result=after)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def download_location(workdir: Path) -> Path:
    """`[service] download_location` of every config a factory writes in `workdir`."""
    return workdir / "dl"


class HookServerFactory:
    """Writes scripts and configs under one directory and starts hook servers there."""

    def __init__(self, implementation: Implementation, workdir: Path) -> None:
        self.implementation = implementation
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._servers: list[RunningHookServer] = []
        self._count = 0

    def write_script(self, name: str, body: str) -> Path:
        """An executable ``#!/bin/sh`` script (or `body` as is when it has a shebang)."""
        path = self.workdir / "scripts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(body).lstrip("\n")
        if not text.startswith("#!"):
            text = "#!/bin/sh\n" + text
        path.write_text(text)
        path.chmod(0o755)
        return path

    def write_config(
        self,
        hooks: Mapping[str, str | Path],
        *,
        socket_path: Path,
        options: Mapping[str, str] | None = None,
        service: Mapping[str, str] | None = None,
        extra: str = "",
    ) -> Path:
        """The INI file: `hooks` maps a hook name to a script path; `options` go to
        [hookserver], `service` to [service] (next to download_location)."""
        self._count += 1
        conf = self.workdir / f"hookserver-{self._count}.conf"
        hookserver = {"cancel_grace_period": f"{GRACE:g}", **(options or {})}
        lines = ["[service]", f"download_location = {download_location(self.workdir)}"]
        lines += [f"{k} = {v}" for k, v in (service or {}).items()]
        lines += ["", "[hooks]", f"endpoint = unix://{socket_path}"]
        lines += [f"{name} = {path}" for name, path in hooks.items()]
        lines += ["", "[hookserver]"] + [f"{k} = {v}" for k, v in hookserver.items()]
        conf.write_text("\n".join(lines) + "\n" + extra)
        return conf

    def spawn(self, conf: Path, *, log_name: str | None = None) -> subprocess.Popen[bytes]:
        """Starts the implementation on `conf`; the process is killed when the test ends."""
        reason = self.implementation.skip_reason()
        if reason is not None:
            pytest.skip(reason)
        log_path = self.workdir / (log_name or f"{conf.stem}.log")
        # A private state directory, as systemd's StateDirectory= gives one (a server that
        # copies install files puts them there).
        env = {
            **os.environ,
            SECRET_ENV: "do-not-leak",
            "STATE_DIRECTORY": str(self.workdir / f"state-{conf.stem}"),
        }
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                self.implementation.argv(conf),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._procs.append(proc)
        return proc

    def socket_path(self) -> Path:
        # sun_path is 108 bytes: pytest's tmp_path can be longer, so keep the name short.
        return self.workdir / f"h{self._count + 1}.sock"

    def start(
        self,
        scripts: Mapping[str, str | Path],
        *,
        options: Mapping[str, str] | None = None,
        service: Mapping[str, str] | None = None,
        socket_path: Path | None = None,
    ) -> RunningHookServer:
        """A server with `scripts` (hook name → ``/bin/sh`` body, or an existing Path)."""
        paths: dict[str, Path] = {}
        for name, script in scripts.items():
            assert name in HOOK_NAMES, name
            if isinstance(script, Path):
                paths[name] = script
            else:
                paths[name] = self.write_script(f"{name}-{self._count + 1}.sh", script)
        sock = socket_path or self.socket_path()
        conf = self.write_config(paths, socket_path=sock, options=options, service=service)
        proc = self.spawn(conf)
        server = RunningHookServer(
            proc=proc,
            socket_path=sock,
            config_path=conf,
            workdir=self.workdir,
            log_path=self.workdir / f"{conf.stem}.log",
            scripts=paths,
        )
        self._servers.append(server)
        self.wait_serving(server)
        return server

    def run_to_exit(self, conf: Path, timeout: float = START_TIMEOUT) -> tuple[int, str]:
        """Runs the implementation on `conf` expecting it to exit; (status, output)."""
        proc = self.spawn(conf)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.implementation.name} hook server did not exit on {conf}")
        return code, (self.workdir / f"{conf.stem}.log").read_text(errors="replace")

    def wait_serving(self, server: RunningHookServer) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if server.proc.poll() is not None:
                pytest.fail(
                    f"hook server exited with {server.proc.returncode} at start:\n{server.log()}"
                )
            if server.socket_path.exists():
                try:
                    if server.health() == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"hook server not SERVING after {START_TIMEOUT} s:\n{server.log()}")
            time.sleep(0.05)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=GRACE + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@contextlib.contextmanager
def hook_server_factory(
    implementation: Implementation, workdir: Path
) -> Iterator[HookServerFactory]:
    factory = HookServerFactory(implementation, workdir)
    try:
        yield factory
    finally:
        factory.close()


@contextlib.contextmanager
def killing_pids_afterwards(pidfile: Path) -> Iterator[None]:
    """Kills (by PID) whatever the script listed in `pidfile`, should a case fail."""
    try:
        yield
    finally:
        if pidfile.exists():
            for line in pidfile.read_text().split():
                if line.isdigit():
                    kill_pid(int(line))


def call_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Runs `fn` in a thread; the list gets its return value or exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test to assert on
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def rpc_code(exc: object) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


# --- the cases -------------------------------------------------------------------------

EVAL_SCRIPT = SCRIPTS_DIR / "eval_meta.sh"
"""Runs the job's meta as shell code: the behaviour travels with each call."""


@dataclasses.dataclass
class Answer:
    """One hook call's answer: its result, the version (GetVersion), the progress (Install)."""

    result: hooks_pb2.HookResult
    version: str = ""
    progress: list[hooks_pb2.InstallProgress] = dataclasses.field(default_factory=list)
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)
    """GetVersion: what the script wrote to $UPPARAT_ATTRIBUTES."""


def call(
    server: RunningHookServer,
    hook: str,
    meta: str = "",
    *,
    timeout: float = CALL_TIMEOUT,
    job_id: str = "upparat_job-1",
    attempt: int = 1,
    elapsed: float = 0.0,
    force: bool = False,
) -> Answer:
    """Calls `hook` once with `meta` (shell code for the eval server); raises grpc.RpcError."""
    context = job(
        job_id=job_id,
        meta=textwrap.dedent(meta).strip(),
        attempt=attempt,
        elapsed=elapsed,
        force=force,
    )
    stub = server.hooks()
    match hook:
        case "version":
            reply = stub.GetVersion(hooks_pb2.GetVersionRequest(context=context), timeout=timeout)
            return Answer(
                result=reply.result, version=reply.version, attributes=dict(reply.attributes)
            )
        case "download":
            r = stub.CheckDownload(hooks_pb2.CheckDownloadRequest(context=context), timeout=timeout)
            return Answer(result=r.result)
        case "install":
            outcome = server.install(context=context, timeout=timeout)
            assert outcome.result is not None, "install stream ended without a result"
            assert outcome.after_result == 0, "install stream sent messages after its result"
            return Answer(result=outcome.result, progress=outcome.progress)
        case "restart":
            r2 = stub.Restart(hooks_pb2.RestartRequest(context=context), timeout=timeout)
            return Answer(result=r2.result)
        case "ready":
            r3 = stub.CheckReady(hooks_pb2.CheckReadyRequest(context=context), timeout=timeout)
            return Answer(result=r3.result)
        case _:
            raise AssertionError(f"unknown hook {hook}")


def tree(pids: Path, *, ignore_term: bool = False) -> str:
    """Shell code starting a child that would outlive the script; both PIDs go to `pids`."""
    return f"""
        {"trap '' TERM" if ignore_term else ""}
        sleep 1000 &
        echo $$ > {pids}.tmp
        echo $! >> {pids}.tmp
        mv {pids}.tmp {pids}
        echo started
        wait
    """


def free_again(server: RunningHookServer, hook: str, timeout: float = GRACE + 2) -> Answer:
    """Calls `hook` until it is no longer ABORTED (its last run is fully cleaned up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(server, hook, "echo 1.0")
        except grpc.RpcError as e:
            if rpc_code(e) != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


class HookServerContract:
    """Every case here must hold for every implementation (see the module docstring).

    Subclasses choose the implementation by overriding the class-scoped ``implementation``
    fixture, and set ``SERVES`` to the hooks it implements: a case marked
    ``hook_cases(argnames, rows)`` is generated once per row whose hook (the row's first
    value) the implementation serves, so a hook left out on purpose has no cases rather
    than skipped ones. Most cases share one server per class (``eval_server``) whose every
    hook runs ``scripts/eval_meta.sh``; the cases that need their own configuration start
    one.
    """

    SERVES: tuple[str, ...] = HOOK_NAMES

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        marker = metafunc.definition.get_closest_marker("hook_cases")
        if marker is None:
            return
        argnames, rows = marker.args
        served = [row for row in rows if (row[0] if isinstance(row, tuple) else row) in self.SERVES]
        assert served, f"{metafunc.definition.name}: no row for a hook in {self.SERVES}"
        metafunc.parametrize(argnames, served)

    @pytest.fixture(scope="class")
    @classmethod
    def implementation(cls) -> Implementation:
        return SHELL

    @pytest.fixture
    def hook_server(
        self, implementation: Implementation, tmp_path: Path
    ) -> Iterator[HookServerFactory]:
        with hook_server_factory(implementation, tmp_path) as factory:
            yield factory

    @pytest.fixture(scope="class")
    @classmethod
    def eval_server(
        cls, implementation: Implementation, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningHookServer]:
        with hook_server_factory(implementation, tmp_path_factory.mktemp("eval")) as factory:
            yield factory.start({hook: EVAL_SCRIPT for hook in cls.SERVES})

    # -- identity and health ------------------------------------------------------------

    def test_health_is_serving(self, eval_server: RunningHookServer) -> None:
        assert eval_server.health() == health_pb2.HealthCheckResponse.SERVING
        assert eval_server.health(HOOK_SERVICE) == health_pb2.HealthCheckResponse.SERVING

    def test_get_info_lists_the_configured_hooks_and_the_others_are_unimplemented(
        self, hook_server: HookServerFactory
    ) -> None:
        server = hook_server.start({"version": "echo 1.0", "install": "exit 0"})

        info = server.identity().GetInfo(hooks_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT)

        assert set(info.hooks) == {hooks_pb2.HOOK_VERSION, hooks_pb2.HOOK_INSTALL}
        assert "v1" in info.api_versions
        assert info.server_name
        assert info.server_version
        for hook in ("download", "restart", "ready"):
            with pytest.raises(grpc.RpcError) as err:
                call(server, hook)
            assert rpc_code(err.value) == grpc.StatusCode.UNIMPLEMENTED, hook

    # -- exit codes ---------------------------------------------------------------------

    def test_exit_0_is_success_and_the_last_stdout_line_is_the_version(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(eval_server, "version", "echo reading; echo '  2024.05.1  '; echo")

        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.version == "2024.05.1"
        assert answer.result.reason == ""

    def test_version_success_without_output_is_a_failure(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(eval_server, "version", "exit 0")

        assert answer.result.outcome == hooks_pb2.OUTCOME_FAILURE
        assert answer.result.reason

    # -- version attributes: $UPPARAT_ATTRIBUTES --------------------------------------------

    def test_a_112_version_script_reports_no_attributes(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(eval_server, "version", "echo 1.0")

        assert answer.version == "1.0"
        assert answer.attributes == {}

    def test_key_value_lines_appended_to_the_attributes_file_are_the_attributes(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(
            eval_server,
            "version",
            """
            echo booted_slot=A >> "$UPPARAT_ATTRIBUTES"
            printf 'build=a=b \\n\\nnot an attribute\\nslot=B\\n' >> "$UPPARAT_ATTRIBUTES"
            echo booted_slot=B >> "$UPPARAT_ATTRIBUTES"
            echo 2.0.0
            """,
        )

        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.version == "2.0.0"
        # The value as written (after the first "="); a line without one is skipped; a key
        # given again takes its last value. The daemon checks them (upparat.core.package).
        assert answer.attributes == {"booted_slot": "B", "build": "a=b ", "slot": "B"}

    def test_the_attributes_file_is_private_fresh_and_removed_after_the_call(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        record = tmp_path / "seen"
        script = f"""
            f=$UPPARAT_ATTRIBUTES
            echo "$f $(stat -c %a "$f") $(stat -c %a "$(dirname "$f")") $(wc -c < "$f")" > {record}
            echo 1.0
            """
        call(eval_server, "version", script)
        first, file_mode, dir_mode, size = record.read_text().split()
        call(eval_server, "version", script)
        second = record.read_text().split()[0]

        assert (file_mode, dir_mode, size) == ("600", "700", "0")
        assert first != second, "a new file per call"
        assert not Path(first).exists()
        assert not Path(first).parent.exists()

    def test_attributes_of_a_failed_version_script_are_not_sent(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(
            eval_server, "version", 'echo slot=A >> "$UPPARAT_ATTRIBUTES"; echo 1.0; exit 1'
        )

        assert answer.result.outcome == hooks_pb2.OUTCOME_FAILURE
        assert answer.attributes == {}

    @pytest.mark.hook_cases("hook", ["download", "install", "restart", "ready"])
    def test_only_the_version_hook_gets_an_attributes_file(
        self, eval_server: RunningHookServer, hook: str
    ) -> None:
        answer = call(eval_server, hook, 'echo "attributes:${UPPARAT_ATTRIBUTES-unset}"')

        assert answer.result.message == "attributes:unset"

    @pytest.mark.hook_cases("hook", ["download", "install", "restart", "ready"])
    def test_exit_0_is_success_with_the_last_stdout_line_as_message(
        self, eval_server: RunningHookServer, hook: str
    ) -> None:
        answer = call(eval_server, hook, "echo checking; echo all services up")

        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.result.message == "all services up"

    @pytest.mark.hook_cases("hook", ["download", "ready"])
    def test_exit_3_is_retry_later_without_a_hint(
        self, eval_server: RunningHookServer, hook: str
    ) -> None:
        answer = call(eval_server, hook, "echo not yet; exit 3")

        assert answer.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
        assert not answer.result.HasField("retry_after")

    def test_exit_3_with_a_last_retry_after_line_gives_the_hint(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(eval_server, "ready", "echo booting; echo retry-after=90; exit 3")

        assert answer.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
        assert answer.result.HasField("retry_after")
        assert answer.result.retry_after.ToTimedelta().total_seconds() == 90

    def test_exit_3_uses_default_retry_after(self, hook_server: HookServerFactory) -> None:
        server = hook_server.start({"ready": "exit 3"}, options={"default_retry_after": "45"})

        answer = call(server, "ready")

        assert answer.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
        assert answer.result.retry_after.ToTimedelta().total_seconds() == 45

    def test_nonzero_exit_is_failure_with_the_status_and_the_stderr_tail(
        self, eval_server: RunningHookServer
    ) -> None:
        # About 4 KiB of stderr before the last line: only the tail (1 KiB) is kept.
        answer = call(
            eval_server,
            "install",
            """
            i=0
            while [ $i -lt 100 ]; do echo "noise line $i ........................" >&2; i=$((i+1)); done
            echo "rauc: bundle signature invalid" >&2
            exit 1
            """,
        )

        assert answer.result.outcome == hooks_pb2.OUTCOME_FAILURE
        assert answer.result.reason == "HOOK_EXIT_NONZERO"
        assert "1" in answer.result.message
        assert answer.result.detail.rstrip().endswith("rauc: bundle signature invalid")
        assert len(answer.result.detail.encode()) <= 1024
        assert "noise line 0 " not in answer.result.detail

    def test_exit_2_is_a_failure_too(self, eval_server: RunningHookServer) -> None:
        answer = call(eval_server, "restart", "exit 2")

        assert answer.result.outcome == hooks_pb2.OUTCOME_FAILURE
        assert answer.result.reason == "HOOK_EXIT_NONZERO"
        assert "2" in answer.result.message

    def test_death_by_signal_is_a_failure_naming_the_signal(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(eval_server, "ready", "echo going down; kill -KILL $$")

        assert answer.result.outcome == hooks_pb2.OUTCOME_FAILURE
        assert answer.result.reason == "HOOK_KILLED_BY_SIGNAL"
        assert "SIGKILL" in answer.result.message

    # -- arguments and environment (upparat 1.12's conventions) -------------------------

    @pytest.mark.hook_cases(
        ("hook", "force", "fourth"),
        [
            ("version", True, None),
            ("download", True, None),
            ("install", True, "<the file>"),
            ("restart", True, "True"),
            ("restart", False, ""),
            ("ready", True, None),
        ],
    )
    def test_arguments_are_those_of_upparat_1_12(
        self,
        eval_server: RunningHookServer,
        tmp_path: Path,
        hook: str,
        force: bool,
        fourth: str | None,
    ) -> None:
        # $1 = whole seconds since the first call, $2 = retries so far (attempt - 1),
        # $3 = meta; install adds $4 = the file, restart adds $4 = force ("True" or "").
        # The file may be a copy the server checked (the reference server's), so the case
        # looks at what the script can read there, while it runs.
        out = tmp_path / "args"
        meta = (
            f'[ "$UPPARAT_HOOK" != install ] || cat "$4" > {out}.file; '
            f'for a in "$@"; do printf "%s\\n" "$a"; done > {out}.tmp; mv {out}.tmp {out}'
        )

        call(eval_server, hook, meta, attempt=3, elapsed=12.7, force=force)

        args = wait_for_file(out).split("\n")[:-1]
        assert args[:3] == ["12", "2", meta]
        if fourth == "<the file>":
            assert len(args) == 4
            assert args[3].endswith("/upparat_job-1")
            assert Path(f"{out}.file").read_bytes() == FIRMWARE
        else:
            assert args[3:] == ([] if fourth is None else [fourth])

    @pytest.mark.hook_cases("hook", ["download", "ready"])
    def test_no_meta_is_an_empty_third_argument(
        self, hook_server: HookServerFactory, tmp_path: Path, hook: str
    ) -> None:
        out = tmp_path / "args"
        server = hook_server.start(
            {hook: f'for a in "$@"; do printf "%s\\n" "$a"; done > {out}.tmp; mv {out}.tmp {out}'}
        )

        call(server, hook, "")

        assert wait_for_file(out).split("\n")[:-1] == ["0", "0", ""]

    def test_script_gets_a_clean_environment_and_dev_null_stdin(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        meta = f"""
            env > {tmp_path}/env.tmp; mv {tmp_path}/env.tmp {tmp_path}/env
            readlink /proc/$$/fd/0 > {tmp_path}/stdin.tmp; mv {tmp_path}/stdin.tmp {tmp_path}/stdin
        """

        call(
            eval_server,
            "install",
            meta,
            job_id="upparat_env",
            attempt=2,
            force=True,
        )

        lines = wait_for_file(tmp_path / "env").splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(" "))
        assert SECRET_ENV not in env
        assert env["UPPARAT_JOB_ID"] == "upparat_env"
        assert env["UPPARAT_HOOK"] == "install"
        assert env["UPPARAT_ATTEMPT"] == "2"
        assert env["UPPARAT_FORCE"] == "1"
        assert env["LANG"] == "C.UTF-8"
        assert "/usr/bin" in env["PATH"].split(":")
        assert env["HOME"]
        assert wait_for_file(tmp_path / "stdin") == "/dev/null\n"

    # -- install progress ---------------------------------------------------------------

    def test_install_streams_stdout_lines_as_progress_then_one_result(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(
            eval_server,
            "install",
            """
            echo "Installing"
            sleep 0.3
            echo "50%"
            sleep 0.3
            echo
            echo "Done!"
            """,
        )

        assert [p.line for p in answer.progress] == ["Installing", "50%", "Done!"]
        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.result.message == "Done!"

    def test_install_progress_arrives_while_the_script_runs(
        self, eval_server: RunningHookServer
    ) -> None:
        call_ = eval_server.hooks().Install(
            eval_server.install_request(job(meta="echo first; sleep 3")), timeout=CALL_TIMEOUT
        )
        started = time.monotonic()

        first = next(call_)
        waited = time.monotonic() - started
        call_.cancel()

        assert first.progress.line == "first"
        assert waited < 2.5
        free_again(eval_server, "install")

    # -- cancellation, deadlines, the daemon going away ---------------------------------

    @pytest.mark.parametrize("ignore_term", [False, True], ids=["term", "term-ignored"])
    def test_cancelling_install_kills_the_whole_process_tree(
        self, eval_server: RunningHookServer, tmp_path: Path, ignore_term: bool
    ) -> None:
        pidfile = tmp_path / "pids"
        with killing_pids_afterwards(pidfile):
            stream = eval_server.hooks().Install(
                eval_server.install_request(job(meta=tree(pidfile, ignore_term=ignore_term))),
                timeout=30,
            )
            assert next(stream).progress.line == "started"
            pids = read_pids(pidfile, 2)

            stream.cancel()

            assert wait_gone(pids, GRACE + 1) == []
        free_again(eval_server, "install")

    def test_cancelling_a_unary_call_kills_the_whole_process_tree(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pids"
        with killing_pids_afterwards(pidfile):
            future = eval_server.hooks().Restart.future(
                hooks_pb2.RestartRequest(context=job(meta=tree(pidfile))), timeout=30
            )
            pids = read_pids(pidfile, 2)

            future.cancel()

            assert wait_gone(pids, GRACE + 1) == []
        free_again(eval_server, "restart")

    def test_the_deadline_kills_the_whole_process_tree(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pids"
        with killing_pids_afterwards(pidfile):
            with pytest.raises(grpc.RpcError) as err:
                call(eval_server, "ready", tree(pidfile), timeout=1.0)
            assert rpc_code(err.value) == grpc.StatusCode.DEADLINE_EXCEEDED
            pids = read_pids(pidfile, 2)

            assert wait_gone(pids, GRACE + 1) == []
        free_again(eval_server, "ready")

    def test_the_daemon_going_away_kills_the_whole_process_tree(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pids"
        client = (
            "import sys, grpc\n"
            "from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc\n"
            "stub = hooks_pb2_grpc.HookServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
            "request = hooks_pb2.InstallRequest.FromString(bytes.fromhex(sys.argv[2]))\n"
            "for m in stub.Install(request):\n"
            "    print(m.progress.line, flush=True)\n"
        )
        request = eval_server.install_request(job(job_id="j", meta=tree(pidfile)))
        client_log = tmp_path / "client.log"
        with killing_pids_afterwards(pidfile), client_log.open("wb") as log:
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    client,
                    eval_server.endpoint,
                    request.SerializeToString().hex(),
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                pids = read_pids(pidfile, 2, timeout=START_TIMEOUT)
            except TimeoutError:
                pytest.fail(f"client:\n{client_log.read_text()}\nserver:\n{eval_server.log()}")
            finally:
                daemon.kill()  # by PID: the daemon dies without cancelling anything
                daemon.wait()

            assert wait_gone(pids, GRACE + 1) == []
        free_again(eval_server, "install")

    def test_sigterm_to_the_server_kills_running_scripts_and_exits_0(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        server = hook_server.start({"install": EVAL_SCRIPT})
        pidfile = tmp_path / "pids"
        with killing_pids_afterwards(pidfile):
            thread, out = call_in_thread(
                lambda: call(server, "install", tree(pidfile, ignore_term=True))
            )
            pids = read_pids(pidfile, 2)

            server.proc.send_signal(signal.SIGTERM)

            assert wait_gone(pids, GRACE + 1) == []
            assert server.proc.wait(timeout=GRACE + 5) == 0
            thread.join(5)
            # Not the script's failure: the daemon must wait and call again (UNAVAILABLE).
            assert rpc_code(out[0]) == grpc.StatusCode.UNAVAILABLE, out

    # -- one call per hook ---------------------------------------------------------------

    def test_a_second_call_of_a_running_hook_is_aborted(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        gate = tmp_path / "gate"
        first = eval_server.hooks().Install(
            eval_server.install_request(
                job(meta=f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done")
            ),
            timeout=CALL_TIMEOUT,
        )
        assert next(first).progress.line == "started"

        with pytest.raises(grpc.RpcError) as err:
            call(eval_server, "install", "echo second", attempt=2)
        assert rpc_code(err.value) == grpc.StatusCode.ABORTED

        gate.touch()
        assert list(first)[-1].result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert free_again(eval_server, "install").result.outcome == hooks_pb2.OUTCOME_SUCCESS

    def test_different_hooks_run_at_the_same_time(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        gate = tmp_path / "gate"
        first = eval_server.hooks().Install(
            eval_server.install_request(
                job(meta=f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done")
            ),
            timeout=CALL_TIMEOUT,
        )
        assert next(first).progress.line == "started"

        answer = call(eval_server, "version", "echo 1.0")

        assert answer.version == "1.0"
        gate.touch()
        assert list(first)[-1].result.outcome == hooks_pb2.OUTCOME_SUCCESS

    # -- start-up checks and the socket --------------------------------------------------

    def test_a_missing_script_exits_2_naming_the_hook_and_the_path(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        missing = tmp_path / "nope" / "install.sh"
        conf = hook_server.write_config(
            {"version": EVAL_SCRIPT, "install": missing}, socket_path=hook_server.socket_path()
        )

        code, output = hook_server.run_to_exit(conf)

        assert code == 2
        assert "install" in output
        assert str(missing) in output

    def test_a_script_that_is_not_executable_exits_2(self, hook_server: HookServerFactory) -> None:
        script = hook_server.write_script("ready.sh", "exit 0")
        script.chmod(0o644)
        conf = hook_server.write_config({"ready": script}, socket_path=hook_server.socket_path())

        code, output = hook_server.run_to_exit(conf)

        assert code == 2
        assert "ready" in output
        assert str(script) in output

    def test_the_socket_mode_is_0660(self, eval_server: RunningHookServer) -> None:
        mode = eval_server.socket_path.stat().st_mode

        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660

    def test_a_stale_socket_file_is_replaced(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        sock = hook_server.socket_path()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(sock))  # a socket file nobody listens on, as a killed server leaves
        stale.close()
        assert stat.S_ISSOCK(sock.stat().st_mode)

        server = hook_server.start({"version": "echo 2"}, socket_path=sock)

        assert call(server, "version").version == "2"

    def test_a_socket_in_use_is_not_taken_over(self, hook_server: HookServerFactory) -> None:
        sock = hook_server.socket_path()
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(str(sock))
        live.listen()
        try:
            conf = hook_server.write_config({"version": EVAL_SCRIPT}, socket_path=sock)

            code, output = hook_server.run_to_exit(conf)

            assert code != 0
            assert str(sock) in output
            assert stat.S_ISSOCK(sock.stat().st_mode)
        finally:
            live.close()

    def test_a_path_that_is_not_a_socket_is_not_deleted(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        precious = tmp_path / "precious.sock"
        precious.write_text("not a socket\n")
        conf = hook_server.write_config({"version": EVAL_SCRIPT}, socket_path=precious)

        code, output = hook_server.run_to_exit(conf)

        assert code != 0
        assert str(precious) in output
        assert precious.read_text() == "not a socket\n"
