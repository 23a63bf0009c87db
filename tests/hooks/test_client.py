"""HookClient against real hook servers on unix sockets.

The reference shell hook server (a subprocess running real scripts) shows that every
result reaches the core as the right event; a hostile in-process gRPC server shows that
whatever a broken hook server sends becomes a typed failure event, never an exception.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2

from tests.hooks.contract_cases import (
    EVAL_SCRIPT,
    GRACE,
    HOOK_NAMES,
    SHELL,
    RunningHookServer,
    hook_server_factory,
    job,
    killing_pids_afterwards,
    read_pids,
    tree,
    wait_gone,
)
from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import (
    Event,
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookInfoFailed,
    HookProgressed,
    HookRetryLater,
    HookServerInfo,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
)
from upparat.core.model import CallId, HookContext, HookKind, InstallFile, JobId
from upparat.hooks.client import (
    MAX_DETAIL_BYTES,
    MAX_LINE_CHARS,
    HookClient,
    channel_target,
    clean_line,
)
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc

WAIT = 10.0


E = TypeVar("E", bound=Event)


class Recorder:
    """The `on_event` of a client under test: keeps every event, lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
        with self._cond:
            found: list[Event] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if predicate(e)]
                return bool(found)

            if not self._cond.wait_for(seen, timeout):
                raise AssertionError(f"no matching event within {timeout} s; got {self.events}")
            return found[0]

    def finished(self, call_id: int, timeout: float = WAIT) -> HookFinished:
        event = self.wait(lambda e: isinstance(e, HookFinished) and e.call_id == call_id, timeout)
        assert isinstance(event, HookFinished)
        return event

    def of_call(self, call_id: int) -> list[Event]:
        with self._cond:
            return [e for e in self.events if getattr(e, "call_id", None) == call_id]

    def info(self, count: int = 1, timeout: float = WAIT) -> HookServerInfo:
        """The `count`-th HookServerInfo, once it has come."""
        self.wait(lambda e: len(self.infos()) >= count, timeout)
        return self.infos()[count - 1]

    def infos(self) -> list[HookServerInfo]:
        with self._cond:
            return [e for e in self.events if isinstance(e, HookServerInfo)]

    def wait_for(self, kind: type[E], timeout: float = WAIT) -> E:
        event = self.wait(lambda e: isinstance(e, kind), timeout)
        assert isinstance(event, kind)
        return event

    def count(self, kind: type[Event]) -> int:
        with self._cond:
            return sum(isinstance(e, kind) for e in self.events)


_ids = iter(range(1, 1_000_000))


def call_hook(
    hook: HookKind,
    meta: str = "",
    *,
    timeout: float = WAIT,
    file: InstallFile | None = None,
    attempt: int = 1,
) -> CallHook:
    return CallHook(
        call_id=CallId(next(_ids)),
        hook=hook,
        context=HookContext(
            job_id=JobId("upparat_job-1"), meta=meta, attempt=attempt, elapsed=3.5, force=False
        ),
        timeout=timeout,
        file=file if file is not None or hook is not HookKind.INSTALL else NO_SUCH_FILE,
    )


NO_SUCH_FILE = InstallFile(path="/f", size=0, sha256="0" * 64)
"""For servers that never look at the file."""


def downloaded(server: RunningHookServer) -> InstallFile:
    """A download in `server`'s download folder, as the core hands it to Install."""
    request = server.install_request(job())
    return InstallFile(path=request.file_path, size=request.size, sha256=request.sha256)


@pytest.fixture
def client_for() -> Iterator[Callable[..., tuple[HookClient, Recorder]]]:
    clients: list[HookClient] = []

    def make(endpoint: str, **kwargs: float) -> tuple[HookClient, Recorder]:
        recorder = Recorder()
        client = HookClient(endpoint, recorder, **kwargs)
        clients.append(client)
        return client, recorder

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def eval_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHookServer]:
    """The shell hook server with every hook running scripts/eval_meta.sh (meta = script)."""
    with hook_server_factory(SHELL, tmp_path_factory.mktemp("client")) as factory:
        yield factory.start({hook: EVAL_SCRIPT for hook in HOOK_NAMES})


@pytest.fixture
def shell(
    eval_server: RunningHookServer, client_for: Callable[..., tuple[HookClient, Recorder]]
) -> tuple[HookClient, Recorder]:
    return client_for(eval_server.endpoint)


def run(client: HookClient, recorder: Recorder, command: CallHook, timeout: float = WAIT) -> object:
    client.execute(command)
    return recorder.finished(command.call_id, timeout).result


# --- endpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("unix:///run/upparat/hooks.sock", "unix:///run/upparat/hooks.sock"),
        ("unix:/run/upparat/hooks.sock", "unix:///run/upparat/hooks.sock"),
        ("/run/upparat/hooks.sock", "unix:///run/upparat/hooks.sock"),
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost:7000", "localhost:7000"),
    ],
)
def test_endpoints_become_grpc_targets(endpoint: str, target: str) -> None:
    assert channel_target(endpoint) == target


def test_an_authority_in_a_unix_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        channel_target("unix://run/upparat/hooks.sock")


# --- against the shell hook server ---------------------------------------------------------


def test_server_info_when_asked(shell: tuple[HookClient, Recorder]) -> None:
    client, recorder = shell
    time.sleep(0.2)
    assert recorder.infos() == []  # only when the core asks (at start, when a job begins)

    client.execute(AskHookInfo())
    info = recorder.info()

    assert info == HookServerInfo(
        hooks=frozenset(HookKind),
        server_name="upparat-hookserver",
        server_version=info.server_version,
    )
    assert info.server_version


def test_version_success_carries_the_version(shell: tuple[HookClient, Recorder]) -> None:
    assert run(*shell, call_hook(HookKind.VERSION, "echo reading; echo 2024.05.1")) == HookSuccess(
        value="2024.05.1"
    )


def test_success_carries_the_message(shell: tuple[HookClient, Recorder]) -> None:
    assert run(*shell, call_hook(HookKind.READY, "echo all services up")) == HookSuccess(
        message="all services up"
    )


def test_empty_version_is_a_failure(shell: tuple[HookClient, Recorder]) -> None:
    result = run(*shell, call_hook(HookKind.VERSION, "true"))

    assert isinstance(result, HookFailure)
    assert result.reason == "EMPTY_VERSION"


def test_retry_later_with_and_without_a_hint(shell: tuple[HookClient, Recorder]) -> None:
    with_hint = run(
        *shell, call_hook(HookKind.DOWNLOAD, "echo metered; echo retry-after=90; exit 3")
    )
    without = run(*shell, call_hook(HookKind.DOWNLOAD, "echo metered; exit 3"))

    assert with_hint == HookRetryLater(retry_after=90.0, message="metered")
    assert without == HookRetryLater(retry_after=None, message="metered")


def test_nonzero_exit_is_a_failure_with_stderr(shell: tuple[HookClient, Recorder]) -> None:
    result = run(*shell, call_hook(HookKind.RESTART, "echo no space left >&2; exit 1"))

    assert isinstance(result, HookFailure)
    assert result.reason == "HOOK_EXIT_NONZERO"
    assert "status 1" in result.message
    assert result.detail == "no space left"


def test_death_by_signal_is_a_failure(shell: tuple[HookClient, Recorder]) -> None:
    result = run(*shell, call_hook(HookKind.READY, "kill -KILL $$"))

    assert isinstance(result, HookFailure)
    assert result.reason == "HOOK_KILLED_BY_SIGNAL"
    assert "SIGKILL" in result.message


def test_install_progress_then_the_result(
    eval_server: RunningHookServer, shell: tuple[HookClient, Recorder]
) -> None:
    client, recorder = shell
    command = call_hook(
        HookKind.INSTALL,
        "echo Installing; sleep 0.3; echo ' 40% Copying image'; sleep 0.3; echo Done",
        file=downloaded(eval_server),
    )

    result = run(client, recorder, command)

    events = recorder.of_call(command.call_id)
    assert events == [
        HookProgressed(call_id=command.call_id, line="Installing"),
        HookProgressed(call_id=command.call_id, line="40% Copying image", percent=40),
        HookProgressed(call_id=command.call_id, line="Done"),
        HookFinished(
            call_id=command.call_id, hook=HookKind.INSTALL, result=HookSuccess(message="Done")
        ),
    ]
    assert result == HookSuccess(message="Done")


def test_deadline_becomes_deadline_exceeded(shell: tuple[HookClient, Recorder]) -> None:
    assert run(*shell, call_hook(HookKind.READY, "sleep 5", timeout=0.5)) == HookDeadlineExceeded()


def holds_channel(client: HookClient) -> bool:
    return client.channel_open


def test_calls_in_a_row_share_a_channel_that_closes_once_unused(
    eval_server: RunningHookServer, client_for: Callable[..., tuple[HookClient, Recorder]]
) -> None:
    client, recorder = client_for(eval_server.endpoint, channel_linger=0.5)
    assert not client.channel_open
    for _ in range(3):
        assert run(client, recorder, call_hook(HookKind.VERSION, "echo 1.0")) == HookSuccess(
            value="1.0"
        )
        assert client.channel_open  # kept for the next call of the job
    deadline = time.monotonic() + WAIT
    while holds_channel(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holds_channel(client)  # an idle daemon holds no channel
    # The next call opens a fresh one.
    assert run(client, recorder, call_hook(HookKind.VERSION, "echo 2.0")) == HookSuccess(
        value="2.0"
    )


def test_a_second_running_call_is_aborted_which_reads_as_unavailable(
    eval_server: RunningHookServer, shell: tuple[HookClient, Recorder], tmp_path: Path
) -> None:
    client, recorder = shell
    gate = tmp_path / "gate"
    wait = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done"
    first = call_hook(HookKind.INSTALL, wait, file=downloaded(eval_server))
    client.execute(first)
    recorder.wait(lambda e: isinstance(e, HookProgressed) and e.call_id == first.call_id)

    again = call_hook(HookKind.INSTALL, "echo again", file=downloaded(eval_server))
    second = run(client, recorder, again)

    assert isinstance(second, HookUnavailable)
    assert "ABORTED" in second.detail
    gate.touch()
    assert recorder.finished(first.call_id).result == HookSuccess(message="started")


def test_cancel_cancels_the_rpc_the_script_dies_and_nothing_is_reported(
    eval_server: RunningHookServer, shell: tuple[HookClient, Recorder], tmp_path: Path
) -> None:
    client, recorder = shell
    pidfile = tmp_path / "pids"
    command = call_hook(HookKind.INSTALL, tree(pidfile), timeout=30, file=downloaded(eval_server))
    with killing_pids_afterwards(pidfile):
        client.execute(command)
        pids = read_pids(pidfile, 2)

        client.execute(CancelHook(call_id=command.call_id))

        # The server only kills the script when the RPC is cancelled.
        assert wait_gone(pids, GRACE + 1) == []
    time.sleep(0.3)
    assert not any(isinstance(e, HookFinished) for e in recorder.of_call(command.call_id))
    later = call_hook(HookKind.VERSION, "echo 1.0")
    assert run(client, recorder, later) == HookSuccess(value="1.0")


def test_close_cancels_running_calls_and_later_calls_are_unavailable(
    eval_server: RunningHookServer, client_for: Callable[..., tuple[HookClient, Recorder]]
) -> None:
    client, recorder = client_for(eval_server.endpoint)
    running = call_hook(HookKind.RESTART, "sleep 3")
    client.execute(running)
    time.sleep(0.2)

    client.close()
    after = call_hook(HookKind.VERSION, "echo 1")
    client.execute(after)

    assert recorder.finished(after.call_id).result == HookUnavailable(
        detail="hook client is closed"
    )
    time.sleep(0.3)
    assert recorder.of_call(running.call_id) == []


def ask_until_answered(client: HookClient, recorder: Recorder) -> HookServerInfo:
    """What the core does: AskHookInfo, and again after each HookInfoFailed."""
    infos = len(recorder.infos())
    for _ in range(20):
        failures = recorder.count(HookInfoFailed)
        client.execute(AskHookInfo())

        def answered(_: Event, before: int = failures) -> bool:
            return len(recorder.infos()) > infos or recorder.count(HookInfoFailed) > before

        recorder.wait(answered)
        if len(recorder.infos()) > infos:
            return recorder.infos()[-1]
    raise AssertionError(f"GetInfo never answered: {recorder.events}")


def test_server_down_is_unavailable_and_info_is_asked_once_per_command(
    tmp_path: Path, client_for: Callable[..., tuple[HookClient, Recorder]]
) -> None:
    with hook_server_factory(SHELL, tmp_path) as factory:
        sock = factory.socket_path()
        client, recorder = client_for(f"unix://{sock}", info_timeout=0.5)

        down = run(client, recorder, call_hook(HookKind.VERSION))
        assert isinstance(down, HookUnavailable)
        client.execute(AskHookInfo())
        failed = recorder.wait_for(HookInfoFailed)
        assert failed.detail.startswith("DEADLINE_EXCEEDED")  # waited for it, bounded
        assert not failed.unimplemented
        assert recorder.infos() == []

        first = factory.start({"version": "echo 1.0"}, socket_path=sock)
        time.sleep(0.3)
        # Nothing asks by itself: the one failed GetInfo stays the only answer.
        assert recorder.infos() == []
        assert recorder.count(HookInfoFailed) == 1
        info = ask_until_answered(client, recorder)
        assert info == HookServerInfo(
            hooks=frozenset({HookKind.VERSION}),
            server_name="upparat-hookserver",
            server_version=info.server_version,
        )
        assert run(client, recorder, call_hook(HookKind.DOWNLOAD)) == HookUnimplemented()

        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=GRACE + 5) == 0
        assert isinstance(run(client, recorder, call_hook(HookKind.VERSION)), HookUnavailable)

        factory.start({"version": "echo 2.0"}, socket_path=sock)
        # The core asks when the next job begins, and again while GetInfo fails (the
        # channel may still be in its reconnect backoff).
        assert ask_until_answered(client, recorder).hooks == frozenset({HookKind.VERSION})
        assert run(client, recorder, call_hook(HookKind.VERSION)) == HookSuccess(value="2.0")


# --- against a hostile hook server ----------------------------------------------------------


HUGE = "x" * (2 * 1024 * 1024)
CONTROL = "line1\nline2\x1b[31m red\x07\x00\u202e end"


def _result(**kwargs: object) -> hooks_pb2.HookResult:
    return hooks_pb2.HookResult(**kwargs)  # type: ignore[arg-type] # test data


class HostileHooks(hooks_pb2_grpc.HookServiceServicer):
    """Answers what the job's meta asks for; nothing here is what the contract allows."""

    def GetVersion(
        self, request: hooks_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetVersionResponse:
        match request.context.meta:
            case "unspecified":
                return hooks_pb2.GetVersionResponse(version="1.0")  # no result at all
            case "huge":
                return hooks_pb2.GetVersionResponse(
                    version=HUGE, result=_result(outcome=hooks_pb2.OUTCOME_SUCCESS)
                )
            case "garbage":
                return hooks_pb2.GetVersionResponse(
                    version=" 1.0\x1b[0m\x00\n", result=_result(outcome=hooks_pb2.OUTCOME_SUCCESS)
                )
            case "attributes":
                return hooks_pb2.GetVersionResponse(
                    version="1.0",
                    attributes={"slot": "B", "bad key": "x\n"},
                    result=_result(outcome=hooks_pb2.OUTCOME_SUCCESS),
                )
            case "hang":
                time.sleep(3)
                return hooks_pb2.GetVersionResponse()
            case "raise":
                raise RuntimeError("hook server bug")
            case "internal":
                context.abort(grpc.StatusCode.INTERNAL, "broken " + CONTROL)
            case _:
                return hooks_pb2.GetVersionResponse()

    def CheckDownload(
        self, request: hooks_pb2.CheckDownloadRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckDownloadResponse:
        return hooks_pb2.CheckDownloadResponse(
            result=_result(outcome=7, message="from the future")  # an Outcome we do not know
        )

    def CheckReady(
        self, request: hooks_pb2.CheckReadyRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckReadyResponse:
        return hooks_pb2.CheckReadyResponse(
            result=_result(
                outcome=hooks_pb2.OUTCOME_FAILURE,
                reason="bad reason\x00! ",
                message=CONTROL + "y" * 5000,
                detail="d" * 100_000,
            )
        )

    def Restart(
        self, request: hooks_pb2.RestartRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.RestartResponse:
        negative = duration_pb2.Duration(seconds=-5)
        return hooks_pb2.RestartResponse(
            result=_result(outcome=hooks_pb2.OUTCOME_RETRY_LATER, retry_after=negative)
        )

    def Install(
        self, request: hooks_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> Iterator[hooks_pb2.InstallResponse]:
        success = hooks_pb2.InstallResponse(result=_result(outcome=hooks_pb2.OUTCOME_SUCCESS))
        match request.context.meta:
            case "no-result":
                yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line="a"))
            case "after-result":
                yield success
                yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line="late"))
            case "huge":
                yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line=HUGE))
                yield success
            case "garbage-progress":
                yield hooks_pb2.InstallResponse(
                    progress=hooks_pb2.InstallProgress(line=CONTROL + "z" * 3000, percent=250)
                )
                yield hooks_pb2.InstallResponse()  # no event set at all
                yield success
            case "hang":
                yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line="a"))
                time.sleep(3)
            case "echo-file":
                size = request.size if request.HasField("size") else None
                echo = f"{request.file_path} {size} {request.sha256} {request.signature.hex()}"
                yield hooks_pb2.InstallResponse(
                    result=_result(outcome=hooks_pb2.OUTCOME_SUCCESS, message=echo)
                )
            case _:
                yield success


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An in-process server without IdentityService (GetInfo is UNIMPLEMENTED)."""
    sock = tmp_path_factory.mktemp("hostile") / "h.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    hooks_pb2_grpc.add_HookServiceServicer_to_server(HostileHooks(), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield f"unix://{sock}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def broken(
    hostile: str, client_for: Callable[..., tuple[HookClient, Recorder]]
) -> tuple[HookClient, Recorder]:
    return client_for(hostile)


def failure(client: HookClient, recorder: Recorder, command: CallHook) -> HookFailure:
    result = run(client, recorder, command)
    assert isinstance(result, HookFailure), result
    return result


def test_install_sends_the_path_size_sha256_and_signature_of_the_file(
    broken: tuple[HookClient, Recorder],
) -> None:
    signed = InstallFile(path="/d/upparat_1", size=1234, sha256="ab" * 32, signature=b"\x30\x06")
    unsigned = InstallFile(path="/d/upparat_2", size=0, sha256="cd" * 32)

    assert run(*broken, call_hook(HookKind.INSTALL, "echo-file", file=signed)) == HookSuccess(
        message=f"/d/upparat_1 1234 {'ab' * 32} 3006"
    )
    assert run(*broken, call_hook(HookKind.INSTALL, "echo-file", file=unsigned)) == HookSuccess(
        message=f"/d/upparat_2 0 {'cd' * 32}"
    )


def test_an_answer_without_result_is_outcome_unspecified(
    broken: tuple[HookClient, Recorder],
) -> None:
    assert (
        failure(*broken, call_hook(HookKind.VERSION, "unspecified")).reason == "OUTCOME_UNSPECIFIED"
    )


def test_an_unknown_outcome_is_outcome_unspecified(broken: tuple[HookClient, Recorder]) -> None:
    result = failure(*broken, call_hook(HookKind.DOWNLOAD))

    assert result.reason == "OUTCOME_UNSPECIFIED"
    assert "unknown outcome 7" in result.message


def test_garbage_text_is_cleaned_and_cut(broken: tuple[HookClient, Recorder]) -> None:
    result = failure(*broken, call_hook(HookKind.READY))

    assert result.reason == "BAD_REASON"
    assert result.message.startswith("line1 line2 red end")
    assert len(result.message) <= MAX_LINE_CHARS
    assert len(result.detail.encode()) <= MAX_DETAIL_BYTES
    assert all(ch.isprintable() for ch in result.message)


def test_a_version_with_control_characters_is_cleaned(broken: tuple[HookClient, Recorder]) -> None:
    assert run(*broken, call_hook(HookKind.VERSION, "garbage")) == HookSuccess(value="1.0")


def test_version_attributes_reach_the_core_sorted_and_as_sent(
    broken: tuple[HookClient, Recorder],
) -> None:
    """Which attributes the shadow can carry is the core's rule (upparat.core.package)."""
    assert run(*broken, call_hook(HookKind.VERSION, "attributes")) == HookSuccess(
        value="1.0", attributes=(("bad key", "x\n"), ("slot", "B"))
    )


def test_a_negative_retry_hint_is_dropped(broken: tuple[HookClient, Recorder]) -> None:
    assert run(*broken, call_hook(HookKind.RESTART)) == HookRetryLater(retry_after=None)


def test_a_message_over_1_mib_is_a_failure(broken: tuple[HookClient, Recorder]) -> None:
    assert failure(*broken, call_hook(HookKind.VERSION, "huge")).reason == "GRPC_RESOURCE_EXHAUSTED"
    assert failure(*broken, call_hook(HookKind.INSTALL, "huge")).reason == "GRPC_RESOURCE_EXHAUSTED"


def test_error_statuses_are_failures_with_the_code(broken: tuple[HookClient, Recorder]) -> None:
    internal = failure(*broken, call_hook(HookKind.VERSION, "internal"))
    unknown = failure(*broken, call_hook(HookKind.VERSION, "raise"))

    assert internal.reason == "GRPC_INTERNAL"
    assert internal.message == clean_line("broken " + CONTROL)
    assert unknown.reason == "GRPC_UNKNOWN"


def test_hanging_past_the_deadline_is_deadline_exceeded(
    broken: tuple[HookClient, Recorder],
) -> None:
    assert run(*broken, call_hook(HookKind.VERSION, "hang", timeout=0.3)) == HookDeadlineExceeded()
    assert run(*broken, call_hook(HookKind.INSTALL, "hang", timeout=0.3)) == HookDeadlineExceeded()


def test_a_stream_without_result_is_no_result(broken: tuple[HookClient, Recorder]) -> None:
    assert failure(*broken, call_hook(HookKind.INSTALL, "no-result")).reason == "NO_RESULT"


def test_a_stream_with_data_after_the_result_is_a_protocol_violation(
    broken: tuple[HookClient, Recorder],
) -> None:
    assert (
        failure(*broken, call_hook(HookKind.INSTALL, "after-result")).reason == "PROTOCOL_VIOLATION"
    )


def test_garbage_progress_is_cleaned_and_a_bad_percent_dropped(
    broken: tuple[HookClient, Recorder],
) -> None:
    client, recorder = broken
    command = call_hook(HookKind.INSTALL, "garbage-progress")

    assert run(client, recorder, command) == HookSuccess()

    progress = [e for e in recorder.of_call(command.call_id) if isinstance(e, HookProgressed)]
    assert len(progress) == 1
    assert progress[0].percent is None
    assert progress[0].line.startswith("line1 line2 red end")
    assert len(progress[0].line) <= MAX_LINE_CHARS


def test_no_server_info_without_get_info(broken: tuple[HookClient, Recorder]) -> None:
    client, recorder = broken

    client.execute(AskHookInfo())
    failed = recorder.wait_for(HookInfoFailed)

    assert failed.unimplemented
    assert recorder.infos() == []


def test_a_request_that_cannot_be_encoded_is_a_client_error(
    broken: tuple[HookClient, Recorder],
) -> None:
    # A lone surrogate cannot be UTF-8 encoded: the error happens inside the client.
    assert failure(*broken, call_hook(HookKind.VERSION, "\ud800")).reason == "CLIENT_ERROR"


def test_an_event_handler_that_raises_does_not_stop_the_call(hostile: str) -> None:
    recorder = Recorder()

    def flaky(event: Event) -> None:
        if isinstance(event, HookProgressed):
            raise RuntimeError("queue full")
        recorder(event)

    client = HookClient(hostile, flaky)
    try:
        command = call_hook(HookKind.INSTALL, "garbage-progress")
        client.execute(command)
        assert recorder.finished(command.call_id).result == HookSuccess()
    finally:
        client.close()


def test_a_cancel_of_an_unknown_call_is_ignored(broken: tuple[HookClient, Recorder]) -> None:
    client, recorder = broken

    client.execute(CancelHook(call_id=CallId(999_999_999)))

    assert run(client, recorder, call_hook(HookKind.RESTART)) == HookRetryLater()
