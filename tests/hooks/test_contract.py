"""The hook contract: hooks.proto lints clean, its committed code is fresh, and the
generated stubs carry every RPC between a real gRPC server and client on a unix socket.

Servers here are trivial stand-ins; the daemon's client driver is tested elsewhere.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "buf"
GENERATED_DIR = REPO_ROOT / "upparat" / "hooks" / "v1"
PROTO = REPO_ROOT / "proto" / "upparat" / "hooks" / "v1" / "hooks.proto"
CALL_TIMEOUT = 5.0


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def buf() -> str:
    if not BUF.is_file():
        pytest.fail(f"buf is not installed at {BUF}: run `make test` (or `make node-deps`) first")
    return str(BUF)


# --- the .proto ---------------------------------------------------------------------


def test_buf_lint_passes() -> None:
    done = run([buf(), "lint"], REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_format_is_clean() -> None:
    done = run([buf(), "format", "--diff", "--exit-code"], REPO_ROOT)
    assert done.returncode == 0, "run `buf format -w`:\n" + done.stdout + done.stderr


def test_buf_lint_rejects_an_undocumented_badly_named_field(tmp_path: Path) -> None:
    # Proves buf.yaml's STANDARD and COMMENTS rules are on, so the passing lint means something.
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO_ROOT / "proto", tmp_path / "proto")
    proto = tmp_path / PROTO.relative_to(REPO_ROOT)
    text = proto.read_text()
    anchor = "  string detail = 5;\n"
    assert anchor in text
    proto.write_text(text.replace(anchor, anchor + "  string badName = 99;\n"))

    done = run([buf(), "lint"], tmp_path)

    assert done.returncode != 0
    assert "should have a non-empty comment" in done.stdout
    assert "lower_snake_case" in done.stdout


# --- generated code -----------------------------------------------------------------


def codegen_check(directory: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "upparat.hooks.codegen", "--check", str(directory)], REPO_ROOT
    )


def test_committed_generated_code_is_fresh() -> None:
    done = codegen_check(GENERATED_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_codegen_check_detects_stale_and_missing_files(tmp_path: Path) -> None:
    for path in GENERATED_DIR.glob("*_pb2*.py*"):
        shutil.copy(path, tmp_path / path.name)
    with (tmp_path / "hooks_pb2.py").open("a") as stale:
        stale.write("# edited by hand\n")
    (tmp_path / "hooks_pb2_grpc.pyi").unlink()

    done = codegen_check(tmp_path)

    assert done.returncode == 1
    assert "hooks_pb2.py (differs)" in done.stderr
    assert "hooks_pb2_grpc.pyi (missing)" in done.stderr
    assert "hooks_pb2_grpc.py " not in done.stderr
    assert "run `make generate`" in done.stderr


# --- round trip over a unix socket --------------------------------------------------


def job_context(*, attempt: int = 1) -> hooks_pb2.JobContext:
    return hooks_pb2.JobContext(
        job_id="job-42",
        meta="channel=beta",
        attempt=attempt,
        elapsed=duration_pb2.Duration(seconds=90, nanos=500_000_000),
        force=True,
    )


def success() -> hooks_pb2.HookResult:
    return hooks_pb2.HookResult(outcome=hooks_pb2.OUTCOME_SUCCESS)


class Identity(hooks_pb2_grpc.IdentityServiceServicer):
    def GetInfo(
        self, request: hooks_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetInfoResponse:
        return hooks_pb2.GetInfoResponse(
            server_name="test-hooks",
            server_version="0.0.1",
            api_versions=["v1"],
            hooks=[hooks_pb2.HOOK_VERSION, hooks_pb2.HOOK_INSTALL],
            manifest={"device": "test-rig"},
        )


class AllHooks(hooks_pb2_grpc.HookServiceServicer):
    """Answers every hook; Install streams three progress events, then a result."""

    def __init__(self) -> None:
        self.contexts: list[hooks_pb2.JobContext] = []
        self.file_paths: list[str] = []

    def GetVersion(
        self, request: hooks_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetVersionResponse:
        self.contexts.append(request.context)
        return hooks_pb2.GetVersionResponse(version="1.2.3", result=success())

    def CheckDownload(
        self, request: hooks_pb2.CheckDownloadRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckDownloadResponse:
        self.contexts.append(request.context)
        return hooks_pb2.CheckDownloadResponse(
            result=hooks_pb2.HookResult(
                outcome=hooks_pb2.OUTCOME_RETRY_LATER,
                retry_after=duration_pb2.Duration(seconds=30),
                reason="METERED_LINK",
                message="on a metered link, download later",
            )
        )

    def Install(
        self, request: hooks_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> Iterator[hooks_pb2.InstallResponse]:
        self.contexts.append(request.context)
        self.file_paths.append(request.file_path)
        yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line="unpacking"))
        for percent in (0, 100):
            yield hooks_pb2.InstallResponse(
                progress=hooks_pb2.InstallProgress(line=f"writing {percent}%", percent=percent)
            )
        yield hooks_pb2.InstallResponse(
            result=hooks_pb2.HookResult(
                outcome=hooks_pb2.OUTCOME_FAILURE,
                reason="HOOK_EXIT_NONZERO",
                message="install.sh exited with 1",
                detail="line 1\nline 2",
            )
        )

    def Restart(
        self, request: hooks_pb2.RestartRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.RestartResponse:
        self.contexts.append(request.context)
        return hooks_pb2.RestartResponse(result=success())

    def CheckReady(
        self, request: hooks_pb2.CheckReadyRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckReadyResponse:
        # An empty answer: the daemon must read OUTCOME_UNSPECIFIED, never success.
        self.contexts.append(request.context)
        return hooks_pb2.CheckReadyResponse()


class VersionOnly(hooks_pb2_grpc.HookServiceServicer):
    """Implements one hook; the generated base answers UNIMPLEMENTED for the rest."""

    def GetVersion(
        self, request: hooks_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetVersionResponse:
        return hooks_pb2.GetVersionResponse(version="1.2.3", result=success())


class InstallUntilCancelled(hooks_pb2_grpc.HookServiceServicer):
    """Sends one progress event, then works until the client cancels the call."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.contexts: list[grpc.ServicerContext] = []

    def Install(
        self, request: hooks_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> Iterator[hooks_pb2.InstallResponse]:
        self.contexts.append(context)
        # The callback is the signal to rely on: once the client cancels, grpc may never
        # resume this generator, so a real server stops its work (kills the installer's
        # process group) from the callback, not from code after a yield.
        context.add_callback(self.cancelled.set)
        yield hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line="started"))
        self.cancelled.wait(CALL_TIMEOUT)
        yield hooks_pb2.InstallResponse(result=success())


@contextlib.contextmanager
def serving(
    socket_path: Path,
    *,
    identity: hooks_pb2_grpc.IdentityServiceServicer,
    hooks: hooks_pb2_grpc.HookServiceServicer | None,
) -> Iterator[grpc.Channel]:
    """A gRPC server on a unix socket and a ready client channel to it."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    try:
        hooks_pb2_grpc.add_IdentityServiceServicer_to_server(identity, server)
        if hooks is not None:
            hooks_pb2_grpc.add_HookServiceServicer_to_server(hooks, server)
        assert server.add_insecure_port(f"unix:{socket_path}") != 0
        server.start()
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
            yield channel
    finally:
        server.stop(grace=None).wait(CALL_TIMEOUT)


def test_generated_stubs_carry_every_rpc(tmp_path: Path) -> None:
    hooks = AllHooks()
    with serving(tmp_path / "hooks.sock", identity=Identity(), hooks=hooks) as channel:
        identity = hooks_pb2_grpc.IdentityServiceStub(channel)
        stub = hooks_pb2_grpc.HookServiceStub(channel)

        info = identity.GetInfo(hooks_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT)
        version = stub.GetVersion(
            hooks_pb2.GetVersionRequest(context=job_context()), timeout=CALL_TIMEOUT
        )
        download = stub.CheckDownload(
            hooks_pb2.CheckDownloadRequest(context=job_context(attempt=3)),
            timeout=CALL_TIMEOUT,
        )
        install = list(
            stub.Install(
                hooks_pb2.InstallRequest(context=job_context(), file_path="/data/fw.bin"),
                timeout=CALL_TIMEOUT,
            )
        )
        restart = stub.Restart(
            hooks_pb2.RestartRequest(context=job_context()), timeout=CALL_TIMEOUT
        )
        ready = stub.CheckReady(
            hooks_pb2.CheckReadyRequest(context=job_context()), timeout=CALL_TIMEOUT
        )

    assert info.server_name == "test-hooks"
    assert info.server_version == "0.0.1"
    assert list(info.api_versions) == ["v1"]
    assert list(info.hooks) == [hooks_pb2.HOOK_VERSION, hooks_pb2.HOOK_INSTALL]
    assert dict(info.manifest) == {"device": "test-rig"}

    assert version.version == "1.2.3"
    assert version.result.outcome == hooks_pb2.OUTCOME_SUCCESS

    assert download.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
    assert download.result.retry_after.seconds == 30
    assert download.result.reason == "METERED_LINK"

    assert [event.WhichOneof("event") for event in install] == [
        "progress",
        "progress",
        "progress",
        "result",
    ]
    progress = [event.progress for event in install[:3]]
    assert [p.line for p in progress] == ["unpacking", "writing 0%", "writing 100%"]
    # proto3 `optional`: "unknown" and 0% are different answers.
    assert [p.HasField("percent") for p in progress] == [False, True, True]
    assert [p.percent for p in progress[1:]] == [0, 100]
    assert install[-1].result.outcome == hooks_pb2.OUTCOME_FAILURE
    assert install[-1].result.reason == "HOOK_EXIT_NONZERO"
    assert install[-1].result.message == "install.sh exited with 1"
    assert install[-1].result.detail == "line 1\nline 2"

    assert restart.result.outcome == hooks_pb2.OUTCOME_SUCCESS

    assert not ready.HasField("result")
    assert ready.result.outcome == hooks_pb2.OUTCOME_UNSPECIFIED == 0

    assert hooks.file_paths == ["/data/fw.bin"]
    assert [c.attempt for c in hooks.contexts] == [1, 3, 1, 1, 1]
    for context in hooks.contexts:
        assert context.job_id == "job-42"
        assert context.meta == "channel=beta"
        assert context.force is True
        assert context.elapsed.ToMilliseconds() == 90_500


@pytest.mark.parametrize(
    "hooks",
    [pytest.param(None, id="identity-only"), pytest.param(VersionOnly(), id="version-only")],
)
def test_absent_hook_answers_unimplemented(
    tmp_path: Path, hooks: hooks_pb2_grpc.HookServiceServicer | None
) -> None:
    with serving(tmp_path / "hooks.sock", identity=Identity(), hooks=hooks) as channel:
        stub = hooks_pb2_grpc.HookServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.CheckReady(
                hooks_pb2.CheckReadyRequest(context=job_context()), timeout=CALL_TIMEOUT
            )
        info = hooks_pb2_grpc.IdentityServiceStub(channel).GetInfo(
            hooks_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT
        )

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.server_name == "test-hooks"


def test_cancelling_install_reaches_the_server(tmp_path: Path) -> None:
    hooks = InstallUntilCancelled()
    with serving(tmp_path / "hooks.sock", identity=Identity(), hooks=hooks) as channel:
        call = hooks_pb2_grpc.HookServiceStub(channel).Install(
            hooks_pb2.InstallRequest(context=job_context(), file_path="/data/fw.bin"),
            timeout=CALL_TIMEOUT,
        )
        first = next(call)
        assert first.progress.line == "started"

        assert call.cancel()

        assert hooks.cancelled.wait(2.0), "server did not see the cancellation within 2 s"
        with pytest.raises(grpc.RpcError) as raised:
            next(call)
        assert call.code() == grpc.StatusCode.CANCELLED
        assert raised.value.code() == grpc.StatusCode.CANCELLED
        [server_context] = hooks.contexts
        assert not server_context.is_active()
