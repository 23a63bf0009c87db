"""A hook server that breaks the contract on purpose, in the test's process.

It implements hooks.proto like a small device (the installed version lives in memory)
until a job's `meta` names a misbehaviour for one hook: no outcome, an outcome this
daemon does not know, bytes that are not protobuf, messages over the 1 MiB limit, odd
gRPC statuses with escape sequences in their details, an Install stream that never ends,
ends without a result or goes on after it. Responses are serialised here, so a handler
may return raw bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from upparat.hooks.v1 import hooks_pb2

SERVICE = "upparat.hooks.v1.HookService"
MiB = 1024 * 1024
NEW = "2.0.0"
OK = hooks_pb2.HookResult(outcome=hooks_pb2.OUTCOME_SUCCESS)
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f\x12\x00garbage"
"""A length-delimited field claiming 4 GiB: no protobuf parser accepts it."""
HOSTILE_TEXT = "\x1b[31mred\x1b[0m \x00nul\u202eevil\u200b " + "x" * 20_000

Reply = Message | bytes


def _serialize(reply: Reply) -> bytes:
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


class HostileHookServer:
    """Serves HookService and IdentityService on a unix socket until `stop()`."""

    def __init__(self, socket_path: Path) -> None:
        self.version = "1.0.0"
        """What GetVersion answers; Install stages the version named in `good:<version>`
        (else the suite's new version), Restart makes it the installed one."""
        self._staged: str | None = None
        self.streams_open = 0
        """Install streams whose handler still runs (a never-ending one must be ended)."""
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((self._hook_service(), self._identity()))
        self._server.add_insecure_port(f"unix://{socket_path}")

    def start(self) -> HostileHookServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0).wait(5)

    # -- services -----------------------------------------------------------------------

    def _hook_service(self) -> grpc.GenericRpcHandler:
        def unary(
            behaviour: Callable[[Message, grpc.ServicerContext], Reply],
            request: type[Message],
        ) -> grpc.RpcMethodHandler[Message, Reply]:
            return grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=request.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetVersion": unary(self._get_version, hooks_pb2.GetVersionRequest),
                "CheckDownload": unary(self._check_download, hooks_pb2.CheckDownloadRequest),
                "Install": grpc.unary_stream_rpc_method_handler(
                    self._install,
                    request_deserializer=hooks_pb2.InstallRequest.FromString,
                    response_serializer=_serialize,
                ),
                "Restart": unary(self._restart, hooks_pb2.RestartRequest),
                "CheckReady": unary(self._check_ready, hooks_pb2.CheckReadyRequest),
            },
        )

    def _identity(self) -> grpc.GenericRpcHandler:
        def get_info(request: Message, context: grpc.ServicerContext) -> Reply:
            # Unknown hook values and control characters: the daemon must shrug them off.
            return hooks_pb2.GetInfoResponse(
                server_name="hostile\x1b[2J\x00",
                server_version="v" * 5000,
                api_versions=["v1", "v\x00"],
                hooks=[*map(hooks_pb2.Hook.ValueType, (1, 2, 3, 4, 5, 99))],
                manifest={"\x00": "\x1b" * 100},
            )

        return grpc.method_handlers_generic_handler(
            "upparat.hooks.v1.IdentityService",
            {
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    get_info,
                    request_deserializer=hooks_pb2.GetInfoRequest.FromString,
                    response_serializer=_serialize,
                )
            },
        )

    # -- hooks ----------------------------------------------------------------------------

    def _get_version(self, request: Message, context: grpc.ServicerContext) -> Reply:
        assert isinstance(request, hooks_pb2.GetVersionRequest)
        match request.context.meta:
            case "version-unspecified":
                return hooks_pb2.GetVersionResponse(version="1.0.0")  # no result at all
            case "version-unknown-outcome":
                result = hooks_pb2.HookResult(outcome=77)  # type: ignore[arg-type]  # on purpose
                return hooks_pb2.GetVersionResponse(version="1.0.0", result=result)
            case "version-huge":
                return hooks_pb2.GetVersionResponse(version="v" * (2 * MiB), result=OK)
            case _:
                return hooks_pb2.GetVersionResponse(version=self.version, result=OK)

    def _check_download(self, request: Message, context: grpc.ServicerContext) -> Reply:
        assert isinstance(request, hooks_pb2.CheckDownloadRequest)
        match request.context.meta:
            case "download-garbage-bytes":
                return GARBAGE
            case "download-data-loss":
                context.abort(grpc.StatusCode.DATA_LOSS, HOSTILE_TEXT[:2000])
            case _:
                return hooks_pb2.CheckDownloadResponse(result=OK)

    def _install(self, request: Message, context: grpc.ServicerContext) -> Iterator[Reply]:
        assert isinstance(request, hooks_pb2.InstallRequest)
        meta = request.context.meta
        with self._lock:
            self.streams_open += 1
        try:
            match meta:
                case "install-never-ends":
                    while context.is_active():
                        yield _progress("still installing", 42)
                        time.sleep(0.2)
                case "install-huge-progress":
                    yield _progress("y" * (2 * MiB), 1)
                    yield hooks_pb2.InstallResponse(result=OK)
                case "install-no-result":
                    yield _progress("about to stop", 99)
                case "install-after-result":
                    yield hooks_pb2.InstallResponse(result=OK)
                    yield _progress("one more thing", 100)
                case "install-garbage-bytes":
                    yield GARBAGE
                case _:
                    assert Path(request.file_path).is_file(), request.file_path
                    self._staged = meta.removeprefix("good:") if meta.startswith("good:") else NEW
                    yield _progress(HOSTILE_TEXT, 250)  # cleaned and clipped by the daemon
                    yield hooks_pb2.InstallResponse(result=OK)
        finally:
            with self._lock:
                self.streams_open -= 1

    def _restart(self, request: Message, context: grpc.ServicerContext) -> Reply:
        assert isinstance(request, hooks_pb2.RestartRequest)
        if request.context.meta == "restart-unspecified":
            return hooks_pb2.RestartResponse()
        if self._staged is not None:
            self.version, self._staged = self._staged, None
        return hooks_pb2.RestartResponse(result=OK)

    def _check_ready(self, request: Message, context: grpc.ServicerContext) -> Reply:
        assert isinstance(request, hooks_pb2.CheckReadyRequest)
        match request.context.meta:
            case "ready-hostile-failure":
                return hooks_pb2.CheckReadyResponse(
                    result=hooks_pb2.HookResult(
                        outcome=hooks_pb2.OUTCOME_FAILURE,
                        reason="not/a reason\n" * 50,
                        message=HOSTILE_TEXT,
                        detail=HOSTILE_TEXT * 3,
                    )
                )
            case "ready-retry-negative":
                # A hint the daemon cannot use (negative): it falls back to retry_interval.
                retry = hooks_pb2.HookResult(
                    outcome=hooks_pb2.OUTCOME_RETRY_LATER,
                    retry_after=duration_pb2.Duration(seconds=-5),
                    message="not yet",
                )
                return hooks_pb2.CheckReadyResponse(result=retry)
            case _:
                return hooks_pb2.CheckReadyResponse(result=OK)


def _progress(line: str, percent: int) -> hooks_pb2.InstallResponse:
    return hooks_pb2.InstallResponse(progress=hooks_pb2.InstallProgress(line=line, percent=percent))
