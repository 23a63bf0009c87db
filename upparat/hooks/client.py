"""The hook client driver: carries `CallHook` / `CancelHook` to the hook server over gRPC.

Owns the channel, a thread per install stream and per GetInfo; the other calls end in a
done-callback on gRPC's channel thread. The channel exists only while
a call or GetInfo runs and CHANNEL_LINGER seconds after (the calls of one job come back to
back and share it): an idle daemon holds no gRPC channel, so gRPC core's threads
(which wake several times a second while any channel exists) are gone, and the hook
server can drop its gRPC too (bench/RESULTS.md). A fresh channel per busy spell also
finds a hook server that restarted meanwhile at once. It is the only place in
the daemon that catches gRPC exceptions: each call ends in exactly one `HookFinished`
(unless the core cancelled it), each `AskHookInfo` in one `HookServerInfo` or
`HookInfoFailed`, and nothing here raises into the runtime. It never calls again by
itself: when to ask again is the core's. The mapping of
gRPC statuses and HookResults follows the comment block of hooks.proto.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar, assert_never

import attrs
import grpc
from google.protobuf import duration_pb2

from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import (
    Event,
    HookDeadlineExceeded,
    HookFailure,
    HookFinished,
    HookInfoFailed,
    HookProgressed,
    HookResult,
    HookRetryLater,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
)
from upparat.core.model import CallId, HookContext, HookKind
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc
from upparat.hooks.values import (
    INFO_TIMEOUT,
    InfoError,
    InfoReply,
    clean_detail,
    clean_reason,
    info_event,
)
from upparat.hooks.values import MAX_DETAIL_BYTES as MAX_DETAIL_BYTES  # re-exported
from upparat.hooks.values import MAX_LINE_CHARS as MAX_LINE_CHARS  # re-exported
from upparat.hooks.values import channel_target as channel_target  # re-exported
from upparat.hooks.values import clean_line as clean_line  # re-exported

log = logging.getLogger("upparat.hooks")

MAX_RECEIVE_BYTES = 1024 * 1024
"""hooks.proto: the daemon rejects any single message over 1 MiB (RESOURCE_EXHAUSTED)."""
KEEPALIVE_MS = 300_000
"""Ping a quiet connection every 5 minutes: gRPC servers by default refuse pings more
often than that (and then close the connection), and it still notices a dead TCP peer
within a long install. A unix socket reports a dead server at once anyway."""

IDLE_TIMEOUT_MS = 60_000
CHANNEL_LINGER = 5.0
"""Seconds the channel stays open after the last call: the calls of a job share it, an idle
daemon holds none (gRPC core wakes several times a second while any channel exists)."""

_HOOK_KINDS = {
    hooks_pb2.HOOK_VERSION: HookKind.VERSION,
    hooks_pb2.HOOK_DOWNLOAD: HookKind.DOWNLOAD,
    hooks_pb2.HOOK_INSTALL: HookKind.INSTALL,
    hooks_pb2.HOOK_RESTART: HookKind.RESTART,
    hooks_pb2.HOOK_READY: HookKind.READY,
}
_Reply = TypeVar("_Reply")


def channel_options() -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # The core decides about retries (the contract's UNAVAILABLE rule), not the channel.
        ("grpc.enable_retries", 0),
        # A device is idle for months: drop the connection a minute after the last call
        # (the next call reconnects; issue 16).
        ("grpc.client_idle_timeout_ms", IDLE_TIMEOUT_MS),
        # Notice a hook server that came back within seconds, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


# --- values from the wire --------------------------------------------------------------
# The text rules live in upparat.hooks.values (no grpc there, so the start-up GetInfo's
# answer is read with the same rules); hook_result and the install stream use them here.


def job_context(context: HookContext) -> hooks_pb2.JobContext:
    elapsed = duration_pb2.Duration()
    seconds = context.elapsed if math.isfinite(context.elapsed) else 0.0
    elapsed.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return hooks_pb2.JobContext(
        job_id=context.job_id,
        meta=context.meta,
        attempt=min(max(context.attempt, 0), 2**32 - 1),
        elapsed=elapsed,
        force=context.force,
    )


def hook_result(
    hook: HookKind,
    result: hooks_pb2.HookResult,
    version: str = "",
    attributes: tuple[tuple[str, str], ...] = (),
) -> HookResult:
    """The core's view of a HookResult (and, for GetVersion, of the version and attributes).

    Attributes go to the core as sent, only sorted: which of them the `$package` shadow can
    carry is `upparat.core.package.clean_attributes`'s rule, which logs what it drops."""
    message = clean_line(result.message)
    match result.outcome:
        case hooks_pb2.OUTCOME_SUCCESS:
            if hook is HookKind.VERSION:
                value = clean_line(version)
                if not value:
                    return HookFailure(
                        reason="EMPTY_VERSION",
                        message="hook server answered GetVersion with SUCCESS but no version",
                    )
                return HookSuccess(
                    value=value, message=message, attributes=tuple(sorted(attributes))
                )
            return HookSuccess(message=message)
        case hooks_pb2.OUTCOME_RETRY_LATER:
            return HookRetryLater(retry_after=_seconds(result), message=message)
        case hooks_pb2.OUTCOME_FAILURE:
            return HookFailure(
                reason=clean_reason(result.reason) or "HOOK_FAILED",
                message=message,
                detail=clean_detail(result.detail),
            )
        case _:
            # OUTCOME_UNSPECIFIED, an absent result, or a value newer than this daemon.
            what = "no outcome" if result.outcome == 0 else f"unknown outcome {result.outcome}"
            return HookFailure(
                reason="OUTCOME_UNSPECIFIED",
                message=clean_line(f"hook server answered {hook.value} with {what}: {message}"),
                detail=clean_detail(result.detail),
            )


def _seconds(result: hooks_pb2.HookResult) -> float | None:
    if not result.HasField("retry_after"):
        return None
    d = result.retry_after
    seconds = d.seconds + d.nanos / 1e9
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def status_result(error: grpc.RpcError) -> HookResult:
    """The core's view of a call that ended with a non-OK gRPC status (hooks.proto's table)."""
    code, details = rpc_status(error)
    match code:
        case grpc.StatusCode.UNAVAILABLE | grpc.StatusCode.ABORTED:
            return HookUnavailable(detail=clean_line(f"{code.name}: {details}"))
        case grpc.StatusCode.DEADLINE_EXCEEDED:
            return HookDeadlineExceeded()
        case grpc.StatusCode.UNIMPLEMENTED:
            return HookUnimplemented()
        case _:
            return HookFailure(reason=f"GRPC_{code.name}", message=clean_line(details))


def rpc_status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """Code and details of a failed call (the errors grpc raises for calls carry both)."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    status = code() if callable(code) else None
    text = details() if callable(details) else None
    return (
        status if isinstance(status, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
        text if isinstance(text, str) else str(error),
    )


# --- the driver ----------------------------------------------------------------------


@attrs.define
class _Call:
    command: CallHook
    cancel_rpc: Callable[[], object] | None = None
    """Cancels the running RPC (a future or a stream)."""
    cancelled: bool = False


@attrs.frozen
class _Stubs:
    hooks: hooks_pb2_grpc.HookServiceStub
    identity: hooks_pb2_grpc.IdentityServiceStub


class HookClient:
    """Executes hook commands against the hook server at `endpoint`; reports via `on_event`.

    `on_event` is called from the client's threads (one per call); it must be quick and
    thread-safe (e.g. put the event on the runtime's queue).
    A call cancelled by `CancelHook` emits nothing after `execute` returns; a result that
    arrived just before may already be on its way, and the core ignores events of a call
    id it cancelled.
    """

    def __init__(
        self,
        endpoint: str,
        on_event: Callable[[Event], None],
        *,
        info_timeout: float = INFO_TIMEOUT,
        channel_linger: float = CHANNEL_LINGER,
    ) -> None:
        self.target = channel_target(endpoint)
        self._on_event = on_event
        self._info_timeout = info_timeout
        self._channel_linger = channel_linger
        self._channel: grpc.Channel | None = None
        self._stubs: _Stubs | None = None
        self._users = 0
        """Calls and GetInfos using the channel; CHANNEL_LINGER after the last one it closes."""
        self._linger: threading.Thread | None = None
        self._close_at = 0.0
        self._lock = threading.Lock()
        self._lingering = threading.Condition(self._lock)
        """Wakes the linger thread when the client closes (it times its own waits otherwise)."""
        self._calls: dict[CallId, _Call] = {}
        self._closed = False

    # -- commands -------------------------------------------------------------------------

    def execute(self, command: AskHookInfo | CallHook | CancelHook) -> None:
        match command:
            case AskHookInfo():
                threading.Thread(target=self._ask_info, name="hook-info", daemon=True).start()
            case CallHook():
                self._call(command)
            case CancelHook(call_id=call_id):
                self._cancel(call_id)

    def close(self) -> None:
        """Cancels every call (no events for them) and closes the channel."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            calls = list(self._calls.values())
            for call in calls:
                call.cancelled = True
            channel, self._channel, self._stubs = self._channel, None, None
            self._lingering.notify_all()
        for call in calls:
            if call.cancel_rpc is not None:
                call.cancel_rpc()
        if channel is not None:
            channel.close()

    def _acquire(self) -> _Stubs | None:
        """The stubs of the channel, opened if no call holds one; None once closed."""
        with self._lock:
            if self._closed:
                return None
            if self._stubs is None:
                channel = grpc.insecure_channel(self.target, options=channel_options())
                self._channel = channel
                self._stubs = _Stubs(
                    hooks=hooks_pb2_grpc.HookServiceStub(channel),
                    identity=hooks_pb2_grpc.IdentityServiceStub(channel),
                )
            self._users += 1
            return self._stubs

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._channel is None:
                return
            # Only pushes the closing time on: the linger thread looks at it when its wait
            # ends, so no thread is woken at the end of each call (that wake-up competed
            # with the runtime for the GIL right when the next hook call was being made).
            self._close_at = time.monotonic() + self._channel_linger
            if self._linger is None:
                # One thread per busy spell, not per call (a thread start per hook call was
                # a measurable share of it): it sleeps until the channel has been unused
                # for CHANNEL_LINGER, then closes it; calls meanwhile push that time on.
                linger = threading.Thread(
                    target=self._close_when_unused, name="hook-channel-linger", daemon=True
                )
                self._linger = linger
                linger.start()

    @property
    def channel_open(self) -> bool:
        """Whether the client holds a gRPC channel (calls running or lingering after)."""
        with self._lock:
            return self._channel is not None

    def _close_when_unused(self) -> None:
        with self._lock:
            while True:
                if self._closed or self._channel is None:
                    self._linger = None
                    return
                left = self._close_at - time.monotonic()
                if self._users == 0 and left <= 0:
                    channel, self._channel, self._stubs = self._channel, None, None
                    self._linger = None
                    break
                # In use, or used again meanwhile: look again when the last release's
                # linger would be over (a call in use looks every CHANNEL_LINGER).
                self._lingering.wait(left if left > 0 else self._channel_linger)
        channel.close()

    def _call(self, command: CallHook) -> None:
        with self._lock:
            closed = self._closed
            duplicate = command.call_id in self._calls
            if not closed and not duplicate:
                call = _Call(command=command)
                self._calls[command.call_id] = call
        if closed:
            self._finish(command, HookUnavailable(detail="hook client is closed"))
            return
        if duplicate:
            # A core bug; the running call with this id still answers exactly once.
            log.error("call %d is already running; ignoring a second CallHook", command.call_id)
            return
        if command.hook is HookKind.INSTALL:
            # The install stream is read by a thread of its own, for as long as it runs.
            threading.Thread(
                target=self._run,
                args=(call,),
                name=f"hook-{command.hook.value}-{command.call_id}",
                daemon=True,
            ).start()
        else:
            self._start_unary(call)

    def _cancel(self, call_id: CallId) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                log.debug("cancel of call %d: not running", call_id)
                return
            call.cancelled = True
            cancel_rpc = call.cancel_rpc
        log.debug("cancelling %s call %d", call.command.hook.value, call_id)
        if cancel_rpc is not None:
            cancel_rpc()

    # -- one thread per call ----------------------------------------------------------------

    def _run(self, call: _Call) -> None:
        """The install call, in its own thread."""
        command = call.command
        self._log_start(command)
        result: HookResult | None
        stubs = self._acquire()
        try:
            if stubs is None:
                result = HookUnavailable(detail="hook client is closed")
            else:
                result = self._install(call, job_context(command.context), stubs)
        except Exception as e:
            log.exception(
                "%s hook call %d failed in the client", command.hook.value, command.call_id
            )
            result = self._client_error(command, e)
        finally:
            if stubs is not None:
                self._release()
        self._conclude(call, result)

    def _start_unary(self, call: _Call) -> None:
        """Starts a unary call from the caller's thread without waiting for it: its answer
        arrives in a done-callback on gRPC's channel thread (a thread started per call cost
        about a millisecond of every hook call, bench/RESULTS.md)."""
        command = call.command
        self._log_start(command)
        stubs = self._acquire()
        if stubs is None:
            self._conclude(call, HookUnavailable(detail="hook client is closed"))
            return
        try:
            self._begin(call, stubs)
        except Exception as e:
            log.exception(
                "%s hook call %d failed in the client", command.hook.value, command.call_id
            )
            self._release()
            self._conclude(call, self._client_error(command, e))

    def _begin(self, call: _Call, stubs: _Stubs) -> None:
        command = call.command
        hook = command.hook
        context = job_context(command.context)
        timeout = command.timeout
        match hook:
            case HookKind.VERSION:
                self._unary(
                    call,
                    stubs.hooks.GetVersion.future(
                        hooks_pb2.GetVersionRequest(context=context), timeout=timeout
                    ),
                    lambda reply: hook_result(
                        hook, reply.result, reply.version, tuple(reply.attributes.items())
                    ),
                )
            case HookKind.DOWNLOAD:
                self._unary(
                    call,
                    stubs.hooks.CheckDownload.future(
                        hooks_pb2.CheckDownloadRequest(context=context), timeout=timeout
                    ),
                    lambda reply: hook_result(hook, reply.result),
                )
            case HookKind.RESTART:
                self._unary(
                    call,
                    stubs.hooks.Restart.future(
                        hooks_pb2.RestartRequest(context=context), timeout=timeout
                    ),
                    lambda reply: hook_result(hook, reply.result),
                )
            case HookKind.READY:
                self._unary(
                    call,
                    stubs.hooks.CheckReady.future(
                        hooks_pb2.CheckReadyRequest(context=context), timeout=timeout
                    ),
                    lambda reply: hook_result(hook, reply.result),
                )
            case HookKind.INSTALL:
                raise AssertionError("install calls run in a thread of their own")
            case _:
                assert_never(hook)

    def _unary(
        self, call: _Call, future: grpc.Future[_Reply], read: Callable[[_Reply], HookResult]
    ) -> None:
        def done(_: object) -> None:
            result: HookResult | None
            try:
                try:
                    reply = future.result()
                except grpc.FutureCancelledError:
                    result = None
                except grpc.RpcError as e:
                    result = None if call.cancelled else status_result(e)
                else:
                    result = read(reply)
            except Exception as e:
                log.exception(
                    "%s hook call %d failed in the client",
                    call.command.hook.value,
                    call.command.call_id,
                )
                result = self._client_error(call.command, e)
            self._release()
            self._conclude(call, result)

        # Registered before the callback: a CancelHook from now on cancels the RPC (and a
        # cancel that came first cancels it here; the callback then reports nothing).
        self._start(call, future.cancel)
        future.add_done_callback(done)

    def _log_start(self, command: CallHook) -> None:
        log.debug(
            "calling %s hook (call %d, job %s, attempt %d, timeout %.0f s)",
            command.hook.value,
            command.call_id,
            command.context.job_id,
            command.context.attempt,
            command.timeout,
        )

    def _client_error(self, command: CallHook, e: Exception) -> HookResult:
        """Never let a call take the daemon down: report it as this call's failure."""
        return HookFailure(reason="CLIENT_ERROR", message=clean_line(f"{type(e).__name__}: {e}"))

    def _conclude(self, call: _Call, result: HookResult | None) -> None:
        """The call's one HookFinished, unless the core cancelled it."""
        command = call.command
        with self._lock:
            self._calls.pop(command.call_id, None)
            cancelled = call.cancelled
        if cancelled:
            log.debug("%s call %d cancelled", command.hook.value, command.call_id)
            return
        assert result is not None, "only a cancelled call has no result"
        self._finish(command, result)

    def _finish(self, command: CallHook, result: HookResult) -> None:
        if isinstance(result, HookFailure):
            log.warning(
                "%s hook (job %s): %s %s",
                command.hook.value,
                command.context.job_id,
                result.reason,
                result.message,
            )
        else:
            log.debug("%s hook (job %s): %s", command.hook.value, command.context.job_id, result)
        self._emit(HookFinished(call_id=command.call_id, hook=command.hook, result=result))

    def _start(self, call: _Call, cancel: Callable[[], object]) -> bool:
        """Registers how to cancel the RPC; False (and cancelled) if the core already cancelled."""
        with self._lock:
            call.cancel_rpc = cancel
            cancelled = call.cancelled
        if cancelled:
            cancel()
        return not cancelled

    def _install(
        self, call: _Call, context: hooks_pb2.JobContext, stubs: _Stubs
    ) -> HookResult | None:
        command = call.command
        file = command.file
        if file is None:
            return HookFailure(reason="CLIENT_ERROR", message="install call without a file")
        request = hooks_pb2.InstallRequest(
            context=context,
            file_path=file.path,
            sha256=file.sha256,
            size=file.size,
            signature=file.signature or b"",
        )
        stream = stubs.hooks.Install(request, timeout=command.timeout)
        if not self._start(call, stream.cancel):
            return None
        result: HookResult | None = None
        try:
            for message in stream:
                if call.cancelled:
                    return None
                if result is not None:
                    stream.cancel()
                    return HookFailure(
                        reason="PROTOCOL_VIOLATION",
                        message="hook server sent install messages after the result",
                    )
                match message.WhichOneof("event"):
                    case "progress":
                        self._progress(command.call_id, message.progress)
                    case "result":
                        result = hook_result(command.hook, message.result)
                    case _:
                        pass  # a message kind newer than this daemon: ignore it
        except grpc.RpcError as e:
            # A non-OK end wins over a result already received (the contract ends with OK).
            return None if call.cancelled else status_result(e)
        if result is None:
            return HookFailure(
                reason="NO_RESULT", message="hook server ended the install stream without a result"
            )
        return result

    def _progress(self, call_id: CallId, progress: hooks_pb2.InstallProgress) -> None:
        percent: int | None = None
        if progress.HasField("percent") and 0 <= progress.percent <= 100:
            percent = progress.percent
        line = clean_line(progress.line)
        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.cancelled:
                return
        self._emit(HookProgressed(call_id=call_id, line=line, percent=percent))

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("event handler failed on %s", type(event).__name__)

    # -- GetInfo ------------------------------------------------------------------------

    def _ask_info(self) -> None:
        """One GetInfo; ends in HookServerInfo or HookInfoFailed (none once closed)."""
        stubs = self._acquire()
        if stubs is None:
            return
        try:
            self._get_info(stubs)
        finally:
            self._release()

    def _get_info(self, stubs: _Stubs) -> None:
        try:
            answer = get_info(stubs.identity, self._info_timeout)
            if self._is_closed():
                return
            event = info_event(answer, self.target)
        except Exception as e:  # a bug here must still answer AskHookInfo
            log.exception("GetInfo failed")
            if not self._is_closed():
                self._emit(HookInfoFailed(detail=f"internal error in the hook client: {e!r}"))
            return
        if not self._is_closed():
            self._emit(event)

    def _is_closed(self) -> bool:
        with self._lock:
            return self._closed


def get_info(stub: hooks_pb2_grpc.IdentityServiceStub, timeout: float) -> InfoReply | InfoError:
    """One GetInfo, the daemon's way (the client runs in the job worker, upparat.worker)."""
    try:
        # wait_for_ready, bounded by the timeout: a server that just came back is
        # found although the channel is still in its reconnect backoff.
        reply = stub.GetInfo(hooks_pb2.GetInfoRequest(), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as e:
        code, details = rpc_status(e)
        return InfoError(code=code.name, details=details)
    return InfoReply(
        server_name=reply.server_name,
        server_version=reply.server_version,
        api_versions=tuple(reply.api_versions),
        hooks=frozenset(_HOOK_KINDS[h] for h in reply.hooks if h in _HOOK_KINDS),
    )
