"""upparat-hookserver's gRPC side: serves the hook contract by running upparat 1.12 hook scripts.

Owns one script run per call, one call per hook at a time, results and progress mapped
onto hooks.proto, health, and stopping the scripts at shutdown. The process (command
line, socket, signals) is `main.py`'s, which imports this module at the first connection;
script processes are `scripts.ScriptRun`'s business; what Install may install is
`verify.FileGate`'s. Imports nothing of the daemon but the stubs and the rules it shares
with it (config values, script environment, signatures).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import pwd
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import assert_never

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hookservers.shell import attributes, verify
from hookservers.shell import config as cfg
from hookservers.shell.main import SERVER_NAME, server_version
from hookservers.shell.main import main as main  # `python -m hookservers.shell.server` still runs
from hookservers.shell.scripts import (
    Exited,
    NotStarted,
    ScriptOutcome,
    ScriptRun,
    Signalled,
    StopCause,
)
from upparat import scriptenv
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc

log = logging.getLogger("upparat.hookserver")

RETRY_EXIT_CODE = 3
"""upparat 1.12: a hook exiting 3 asks to be called again later."""
PROGRESS_INTERVAL = 0.2
"""At most one progress message per this many seconds; newer lines replace pending ones."""
MAX_MESSAGE_BYTES = 1024 * 1024
NO_DEADLINE = 10 * 365 * 86400.0
"""A deadline further away than this (seconds) counts as none."""
RETRY_AFTER_RE = re.compile(r"retry-after=(\S+)")
PERCENT_RE = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?\s?%")
HOOK_ENUM = {
    "version": hooks_pb2.HOOK_VERSION,
    "download": hooks_pb2.HOOK_DOWNLOAD,
    "install": hooks_pb2.HOOK_INSTALL,
    "restart": hooks_pb2.HOOK_RESTART,
    "ready": hooks_pb2.HOOK_READY,
}
SERVICES = ("upparat.hooks.v1.HookService", "upparat.hooks.v1.IdentityService")


# --- from a finished script to a HookResult ----------------------------------------------


def hook_result(
    hook: str, script: Path, outcome: ScriptOutcome, default_retry_after: float | None
) -> tuple[hooks_pb2.HookResult, str]:
    """The HookResult (and, for the version hook, the version) of a script that ended by itself."""
    last = outcome.last_lines[-1] if outcome.last_lines else ""
    match outcome.ending:
        case Exited(code=0):
            if hook == "version":
                if not last:
                    return failure(
                        "EMPTY_VERSION",
                        f"version hook {script} exited 0 but printed no version on stdout",
                        outcome.stderr_tail,
                    ), ""
                return hooks_pb2.HookResult(outcome=hooks_pb2.OUTCOME_SUCCESS), last
            return hooks_pb2.HookResult(outcome=hooks_pb2.OUTCOME_SUCCESS, message=last), ""
        case Exited(code=code) if code == RETRY_EXIT_CODE:
            result = hooks_pb2.HookResult(outcome=hooks_pb2.OUTCOME_RETRY_LATER, message=last)
            hint = default_retry_after
            directive = RETRY_AFTER_RE.fullmatch(last)
            if directive is not None:
                result.message = outcome.last_lines[0] if len(outcome.last_lines) > 1 else ""
                parsed = _seconds(directive.group(1))
                if parsed is None:
                    log.warning(
                        "%s hook %s: ignoring %r (seconds >= 0 expected)", hook, script, last
                    )
                else:
                    hint = parsed
            if hint is not None:
                result.retry_after.CopyFrom(_duration(hint))
            return result, ""
        case Exited(code=code):
            message = f"{hook} hook {script} exited with status {code}"
            return failure(
                "HOOK_EXIT_NONZERO", f"{message}: {last}" if last else message, outcome.stderr_tail
            ), ""
        case Signalled() as ending:
            return failure(
                "HOOK_KILLED_BY_SIGNAL",
                f"{hook} hook {script} was killed by {ending.name}",
                outcome.stderr_tail,
            ), ""
        case NotStarted(error=error):
            return failure("HOOK_NOT_STARTED", f"{hook} hook {script} could not start: {error}"), ""
        case _:
            assert_never(outcome.ending)


def failure(reason: str, message: str, detail: str = "") -> hooks_pb2.HookResult:
    return hooks_pb2.HookResult(
        outcome=hooks_pb2.OUTCOME_FAILURE, reason=reason, message=message, detail=detail
    )


def percent_of(line: str) -> int | None:
    """The first "NN%" in a progress line (e.g. RAUC's " 40% Copying image"), if 0-100."""
    match = PERCENT_RE.search(line)
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1))


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _describe(result: hooks_pb2.HookResult) -> str:
    name = hooks_pb2.Outcome.Name(result.outcome).removeprefix("OUTCOME_")
    return f"{name} {result.reason}" if result.reason else name


# --- one call per hook ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Call:
    hook: str
    job_id: str
    attempt: int
    run: ScriptRun


class ProgressFeed:
    """Stdout lines and then the outcome of one Install run, from reader to RPC thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # Bounded: a script can print faster than the daemon reads; old lines are dropped.
        self._lines: collections.deque[str] = collections.deque(maxlen=64)
        self._outcome: ScriptOutcome | None = None

    def push(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            self._cond.notify()

    def finish(self, outcome: ScriptOutcome) -> None:
        with self._cond:
            self._outcome = outcome
            self._cond.notify()

    def next(self, timeout: float | None) -> str | ScriptOutcome | None:
        """The next line, else the outcome once all lines are taken; None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._lines or self._outcome is not None, timeout)
            if self._lines:
                return self._lines.popleft()
            return self._outcome


class Runner:
    """Starts scripts for calls, keeps one run per hook and stops them all at shutdown."""

    def __init__(self, config: cfg.ServerConfig, gate: verify.FileGate) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        self._stopping = False
        self._home = _home()
        self._extra_env = scriptenv.extra_environment(
            config.pass_environment, config.environment, os.environ
        )
        self.gate = gate
        """Prepared at start (main.HookServer), before any call."""
        self._retry_later_at: float | None = None
        """When a script last said "retry later" (monotonic)."""

    def begin(
        self,
        hook: str,
        job: hooks_pb2.JobContext,
        context: grpc.ServicerContext,
        *,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        on_done: Callable[[ScriptOutcome], None] | None = None,
        prepare: Callable[[], hooks_pb2.HookResult | None] | None = None,
    ) -> ScriptRun | hooks_pb2.HookResult:
        """Starts `hook`'s script for this call, or aborts the call with the right status.

        `prepare` runs once the call holds the hook's slot, before the script starts (the
        install file's checks): a HookResult it returns is the call's answer instead, and
        `verify.Interrupted` (the call went away meanwhile) ends the call at once.
        """
        script = self.config.scripts.get(hook)
        if script is None:
            _log_call(hook, job, "UNIMPLEMENTED (no script configured)", 0.0)
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"no {hook} script is configured ([hooks] {hook} is unset)",
            )
        args = [job.job_id, job.meta, *extra_args, *(extra_env or {}).values()]
        if any("\0" in a for a in args):
            _log_call(hook, job, "INVALID_ARGUMENT (NUL character)", 0.0)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{hook}: job id, meta and file path must not contain NUL characters",
            )
        elapsed = job.elapsed.seconds + job.elapsed.nanos / 1e9
        env = {
            "PATH": self.config.script_path,
            "LANG": "C.UTF-8",
            "HOME": self._home,
            **self._extra_env,
            "UPPARAT_HOOK": hook,
            "UPPARAT_JOB_ID": job.job_id,
            "UPPARAT_ATTEMPT": str(job.attempt),
            "UPPARAT_FORCE": "1" if job.force else "0",
            "UPPARAT_META": job.meta,
            "UPPARAT_ELAPSED": str(max(0, int(elapsed))),
            **(extra_env or {}),
        }
        # upparat 1.12 (hooks.py): [script, seconds since first call, retry count] + args,
        # where args are str(arg) or "" for a falsy arg (no meta, force False).
        argv = [str(script), str(max(0, int(elapsed))), str(max(0, job.attempt - 1)), job.meta]
        argv += extra_args
        refusal: tuple[grpc.StatusCode, str] | None = None
        with self._lock:
            running = self._calls.get(hook)
            if self._stopping:
                refusal = (grpc.StatusCode.UNAVAILABLE, "hook server is stopping; call again")
            elif running is not None:
                age = time.monotonic() - running.run.started_at
                refusal = (
                    grpc.StatusCode.ABORTED,
                    f"another {hook} call is running (job {running.job_id}, attempt "
                    f"{running.attempt}, for {age:.0f} s); call again when it has ended",
                )
            else:
                run = ScriptRun(
                    argv,
                    env,
                    grace=self.config.cancel_grace_period,
                    on_line=on_line,
                    on_done=lambda outcome: self._ended(call, outcome, on_done),
                )
                call = Call(hook=hook, job_id=job.job_id, attempt=job.attempt, run=run)
                self._calls[hook] = call
        if refusal is not None:
            _log_call(hook, job, f"{refusal[0].name} ({refusal[1]})", 0.0)
            context.abort(*refusal)

        def on_rpc_end() -> None:
            # Runs when the RPC ends for any reason: a finished run ignores it; otherwise
            # the daemon cancelled, went away or its deadline passed. Cleanup must start
            # here: a streaming handler is not resumed after a cancel.
            remaining = time_remaining(context)
            late = remaining is not None and remaining < 0.1
            run.stop(StopCause.DEADLINE if late else StopCause.CANCELLED)

        if not context.add_callback(on_rpc_end):
            self._release(call)
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before the script started")
        if prepare is not None:
            started = time.monotonic()
            try:
                answer = prepare()
            except verify.Interrupted:
                self._release(call)
                _log_call(hook, job, "CANCELLED (while checking)", time.monotonic() - started)
                context.abort(grpc.StatusCode.CANCELLED, f"{hook}: cancelled")
            except BaseException:
                self._release(call)
                raise
            if answer is not None:
                self._release(call)
                how = f"{_describe(answer)} ({answer.message}); the script was not run"
                _log_call(hook, job, how, time.monotonic() - started)
                return answer
            with self._lock:
                stopping = self._stopping
            if stopping:  # stop_all() came while checking: it waits for no unstarted run
                self._release(call)
                context.abort(grpc.StatusCode.UNAVAILABLE, "hook server is stopping; call again")
        log.debug("%s job=%s: running %s", hook, job.job_id, " ".join(argv))
        run.start()
        return run

    def _release(self, call: Call) -> None:
        """Frees the hook's slot of a call whose script never started."""
        with self._lock:
            if self._calls.get(call.hook) is call:
                del self._calls[call.hook]

    def _ended(
        self, call: Call, outcome: ScriptOutcome, then: Callable[[ScriptOutcome], None] | None
    ) -> None:
        with self._lock:
            if self._calls.get(call.hook) is call:
                del self._calls[call.hook]
        script = self.config.scripts[call.hook]
        if outcome.stopped is not None:
            how = f"stopped ({outcome.stopped.value}; {_ending(outcome)})"
        else:
            result, _ = hook_result(call.hook, script, outcome, self.config.default_retry_after)
            how = f"{_describe(result)} ({_ending(outcome)})"
            if result.outcome == hooks_pb2.OUTCOME_RETRY_LATER:
                with self._lock:
                    self._retry_later_at = time.monotonic()
        if outcome.leftovers:
            how += f", {outcome.leftovers} leftover process(es) killed"
        log.info(
            "%s job=%s attempt=%d: %s in %.1f s",
            call.hook,
            call.job_id,
            call.attempt,
            how,
            outcome.duration,
        )
        if then is not None:
            then(outcome)

    def busy(self) -> bool:
        """A call holds a hook's slot (checking its file or running its script)."""
        with self._lock:
            return bool(self._calls)

    def retry_expected(self, now: float) -> float:
        """Seconds left of `[hookserver] retry_hold` since a script last said "retry
        later" (0: none)."""
        with self._lock:
            at = self._retry_later_at
        return 0.0 if at is None else max(0.0, at + self.config.retry_hold - now)

    def stop_all(self) -> list[ScriptRun]:
        """Refuses new calls and stops every running script; returns them to wait for."""
        with self._lock:
            self._stopping = True
            # A call still checking its file has no script yet; its RPC ends with the server.
            runs = [call.run for call in self._calls.values() if call.run.pid is not None]
        for run in runs:
            run.stop(StopCause.SHUTDOWN)
        return runs


def _ending(outcome: ScriptOutcome) -> str:
    match outcome.ending:
        case Exited(code=code):
            return f"exit status {code}"
        case Signalled() as ending:
            return ending.name
        case NotStarted(error=error):
            return f"not started: {error}"
        case _:
            assert_never(outcome.ending)


def _log_call(hook: str, job: hooks_pb2.JobContext, how: str, duration: float) -> None:
    log.info("%s job=%s attempt=%d: %s in %.1f s", hook, job.job_id, job.attempt, how, duration)


def _home() -> str:
    if os.geteuid() == 0:
        return "/root"
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return "/"


# --- the services -------------------------------------------------------------------------


class HookService(hooks_pb2_grpc.HookServiceServicer):
    """HookService over scripts: each RPC runs its hook's script once."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def GetVersion(
        self, request: hooks_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetVersionResponse:
        path = _attributes_file()
        try:
            env = {} if path is None else {attributes.ENV: str(path)}
            result, version = self._unary("version", request.context, context, extra_env=env)
            found = {}
            if path is not None and result.outcome == hooks_pb2.OUTCOME_SUCCESS:
                found = _read_attributes(path, request.context.job_id)
        finally:
            if path is not None:
                attributes.remove(path)
        return hooks_pb2.GetVersionResponse(version=version, result=result, attributes=found)

    def CheckDownload(
        self, request: hooks_pb2.CheckDownloadRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckDownloadResponse:
        result, _ = self._unary("download", request.context, context)
        return hooks_pb2.CheckDownloadResponse(result=result)

    def Restart(
        self, request: hooks_pb2.RestartRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.RestartResponse:
        # upparat 1.12 passed the force flag as str(True) or "" (restart.py, hooks.py).
        force = "True" if request.context.force else ""
        result, _ = self._unary("restart", request.context, context, (force,))
        return hooks_pb2.RestartResponse(result=result)

    def CheckReady(
        self, request: hooks_pb2.CheckReadyRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.CheckReadyResponse:
        result, _ = self._unary("ready", request.context, context)
        return hooks_pb2.CheckReadyResponse(result=result)

    def Install(
        self, request: hooks_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> Iterator[hooks_pb2.InstallResponse]:
        if not request.file_path and "install" in self._runner.config.scripts:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "install: file_path is empty")
        feed = ProgressFeed()
        gate = self._runner.gate
        wanted = verify.InstallRequest(
            job_id=request.context.job_id,
            file_path=request.file_path,
            sha256=request.sha256,
            size=request.size if request.HasField("size") else None,
            signature=request.signature,
        )
        # The script gets the checked root-only file, never the daemon's name (verify.py).
        copy = gate.copy_path(wanted.job_id)

        def check() -> hooks_pb2.HookResult | None:
            began = time.monotonic()
            checked = gate.check(wanted, keep_going=context.is_active)
            match checked:
                case verify.Refused(reason=reason, message=message):
                    return failure(reason, message)
                case verify.Checked(size=size, sha256=sha256, key=key, taken=taken):
                    signed = f", signature verified with {key}" if key is not None else ""
                    log.info(
                        "install job=%s: %s checked in %.2f s (%d bytes, sha256 %s%s), %s %s",
                        wanted.job_id,
                        wanted.file_path,
                        time.monotonic() - began,
                        size,
                        sha256,
                        signed,
                        "taken over as" if taken else "copied to",
                        checked.copy,
                    )
                    return None
                case _:
                    assert_never(checked)

        def ended(outcome: ScriptOutcome) -> None:
            gate.release(wanted.job_id)
            feed.finish(outcome)

        run = self._runner.begin(
            "install",
            request.context,
            context,
            extra_args=(str(copy),),
            extra_env={"UPPARAT_FILE": str(copy)},
            on_line=feed.push,
            on_done=ended,
            prepare=check,
        )
        if isinstance(run, hooks_pb2.HookResult):
            yield hooks_pb2.InstallResponse(result=run)
            return
        last_sent = -math.inf
        pending: str | None = None
        while True:
            remaining = time_remaining(context)
            wait = remaining
            if pending is not None:
                until_due = last_sent + PROGRESS_INTERVAL - time.monotonic()
                wait = until_due if wait is None else min(wait, until_due)
            item = feed.next(None if wait is None else max(0.0, wait))
            now = time.monotonic()
            if item is None:
                if pending is not None and now >= last_sent + PROGRESS_INTERVAL:
                    yield _progress(pending)
                    last_sent, pending = now, None
                    continue
                remaining = time_remaining(context)
                if remaining is not None and remaining <= 0:
                    run.stop(StopCause.DEADLINE)
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "install: deadline passed")
                continue
            if isinstance(item, str):
                if pending is None and now - last_sent >= PROGRESS_INTERVAL:
                    yield _progress(item)
                    last_sent = now
                else:
                    pending = item  # merged: the newest line wins
                continue
            if pending is not None:
                yield _progress(pending)
            result, _ = self._result("install", item, context)
            yield hooks_pb2.InstallResponse(result=result)
            return

    def _unary(
        self,
        hook: str,
        job: hooks_pb2.JobContext,
        context: grpc.ServicerContext,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
    ) -> tuple[hooks_pb2.HookResult, str]:
        run = self._runner.begin(hook, job, context, extra_args=extra_args, extra_env=extra_env)
        assert isinstance(run, ScriptRun), "only Install prepares"
        remaining = time_remaining(context)
        outcome = run.wait(None if remaining is None else max(0.0, remaining))
        if outcome is None:
            run.stop(StopCause.DEADLINE)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{hook}: deadline passed")
        return self._result(hook, outcome, context)

    def _result(
        self, hook: str, outcome: ScriptOutcome, context: grpc.ServicerContext
    ) -> tuple[hooks_pb2.HookResult, str]:
        match outcome.stopped:
            case None:
                config = self._runner.config
                return hook_result(hook, config.scripts[hook], outcome, config.default_retry_after)
            case StopCause.SHUTDOWN:
                # Not the script's fault: the daemon waits and calls again.
                context.abort(grpc.StatusCode.UNAVAILABLE, "hook server is stopping; call again")
            case StopCause.DEADLINE:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{hook}: deadline passed")
            case StopCause.CANCELLED:
                context.abort(grpc.StatusCode.CANCELLED, f"{hook}: cancelled")
            case _:
                assert_never(outcome.stopped)


def _attributes_file() -> Path | None:
    """The version hook's $UPPARAT_ATTRIBUTES, or None (then the version alone) if the
    file cannot be made."""
    try:
        return attributes.create()
    except OSError as e:
        log.warning("version: cannot make the attributes file (%s); running without it", e)
        return None


def _read_attributes(path: Path, job_id: str) -> dict[str, str]:
    """What the version script wrote to $UPPARAT_ATTRIBUTES; its problems are logged."""
    found, problems = attributes.read(path)
    for problem in problems:
        log.warning("version job=%s: %s", job_id, problem)
    return found


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds until the call's deadline; None without one (grpc then gives None or a huge
    number, which threading's waits cannot take)."""
    remaining: float | None = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return None
    return remaining


def _progress(line: str) -> hooks_pb2.InstallResponse:
    progress = hooks_pb2.InstallProgress(line=line)
    percent = percent_of(line)
    if percent is not None:
        progress.percent = percent
    return hooks_pb2.InstallResponse(progress=progress)


class IdentityService(hooks_pb2_grpc.IdentityServiceServicer):
    def __init__(self, config: cfg.ServerConfig) -> None:
        self._config = config

    def GetInfo(
        self, request: hooks_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> hooks_pb2.GetInfoResponse:
        return hooks_pb2.GetInfoResponse(
            server_name=SERVER_NAME,
            server_version=server_version(),
            api_versions=["v1"],
            hooks=[HOOK_ENUM[hook] for hook in self._config.scripts],
            manifest={f"script.{hook}": str(p) for hook, p in self._config.scripts.items()},
        )


# --- the gRPC side, built at the first connection ----------------------------------------


class Services:
    """The script runner, the two services and health; built by main.HookServer when the
    first connection arrives, kept for every gRPC server built after that one."""

    def __init__(self, config: cfg.ServerConfig, gate: verify.FileGate) -> None:
        self.runner = Runner(config, gate)
        self.health = health.HealthServicer()
        self._hooks = HookService(self.runner)
        self._identity = IdentityService(config)
        for service in ("", *SERVICES):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def make_server(self, pool: futures.ThreadPoolExecutor) -> grpc.Server:
        server = grpc.server(
            pool,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # Two servers on one TCP port must fail, not share it.
                ("grpc.so_reuseport", 0),
                # Accept the daemon's keepalive pings during long, quiet installs.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 60_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        hooks_pb2_grpc.add_HookServiceServicer_to_server(self._hooks, server)
        hooks_pb2_grpc.add_IdentityServiceServicer_to_server(self._identity, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def busy(self) -> bool:
        return self.runner.busy()

    def retry_expected(self, now: float) -> float:
        return self.runner.retry_expected(now)

    def stop(self) -> list[ScriptRun]:
        """NOT_SERVING, no new calls; stops every running script and returns them."""
        self.health.enter_graceful_shutdown()
        return self.runner.stop_all()


if __name__ == "__main__":
    # The old entry, kept for scripts that use it; it loads the stubs at start, which
    # `python -m hookservers.shell.main` (the installed upparat-hookserver) does not.
    sys.exit(main())
