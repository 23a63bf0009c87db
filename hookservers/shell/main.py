"""upparat-hookserver's process: command line, config, signals, the listening socket, start
and stop. The gRPC services (server.py), with the protobuf stubs and grpc_health, are
imported and built when the first connection arrives: a hook server that waits months for
a job does not hold them (issue 16). Once the last connection has been gone a while and
gRPC is dropped, the process re-executes itself (`HookServer.reexec`): the same PID, the
same listening socket and any connection it had just accepted passed on, so that the
memory gRPC and protobuf took (which Python never gives back) is freed until the next job.

Run: ``upparat-hookserver -c /etc/upparat/upparat.conf`` (``--help`` lists the keys), or
``python -m hookservers.shell.main``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, assert_never

from hookservers.shell import config as cfg
from hookservers.shell import ondemand, verify
from upparat.io.signals import SignalWake

if TYPE_CHECKING:
    import grpc

    from hookservers.shell.server import Services

log = logging.getLogger("upparat.hookserver")

SERVER_NAME = "upparat-hookserver"
HANDOVER_ENV = "UPPARAT_HOOKSERVER_HANDOVER"
"""Set only across the hook server's own re-exec: `<listener fd> <socket dev>:<ino>
[<held connection fd> ...]`. Removed from the environment as soon as it is read."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PRIVATE_RECORD = "grpc-private-dir"
"""In state_dir: the path of the on-demand gRPC server's private directory in /tmp."""


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


@functools.cache
def server_version() -> str:
    # Read once: importlib.metadata scans sys.path (~3-9 ms here), and GetInfo asks for it
    # when each job begins.
    try:
        return importlib.metadata.version("upparat")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class HookServer:
    """The gRPC server: binds, serves, and stops without leaving a script behind."""

    def __init__(
        self,
        config: cfg.ServerConfig,
        *,
        fingerprint: str = "",
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._fingerprint = fingerprint
        """Of the configuration as loaded (`config_fingerprint`): a re-exec would load the
        files again, so it is done only while they are unchanged."""
        self._wake = wake
        """Called when the gRPC server has been dropped: the main thread then calls reexec."""
        self._stale_warned = False
        self.gate = verify.FileGate(
            download_dir=config.download_dir,
            state_dir=config.state_dir,
            trusted_keys=config.trusted_keys,
            require_signature=config.require_signature,
        )
        # One pool for every gRPC server this process builds (see ondemand.py): its idle
        # workers block without a timeout.
        self._pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rpc")
        self._lock = threading.Lock()
        self._services: Services | None = None
        """Built with the first gRPC server, then kept (its runner knows the running scripts)."""
        self._stopping = False
        self._server: grpc.Server | None = None
        """The gRPC server of a TCP listen; a unix socket gets one on demand."""
        self._ondemand: ondemand.OnDemandServer | None = None
        self._socket_inode: tuple[int, int] | None = None
        self._held_for_retry: threading.Timer | None = None
        """Wakes the main thread once a retry is no longer waited for (`reexec`)."""

    def _make_server(self) -> grpc.Server:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the hook server is stopping")
            if self._services is None:
                from hookservers.shell.server import Services

                self._services = Services(self.config, self.gate)
            return self._services.make_server(self._pool)

    def start(self) -> None:
        try:
            self.gate.prepare()
        except verify.StateDirError as e:
            raise StartupError(str(e)) from None
        listen = self.config.listen
        handover = os.environ.pop(HANDOVER_ENV, None)
        match listen:
            case cfg.UnixListen(path=path):
                if handover is not None and self._adopt_unix(path, handover):
                    return
                self._bind_unix(path)
            case cfg.TcpListen(host=host):
                # Loopback included: every local process, of any user, could then ask root
                # to install a file. The unix socket's directory and mode decide who may.
                reach = (
                    "every process on this machine, of any user,"
                    if host in ("127.0.0.1", "::1", "localhost")
                    else "anyone who reaches it on the network"
                )
                log.warning(
                    "listening on %s: TCP has no access control; %s can have root run the"
                    " hook scripts (install a file, reboot); use a unix socket"
                    " ([hookserver] listen = unix:///run/upparat/hooks.sock)",
                    listen,
                    reach,
                )
                self._server = self._make_server()
                try:
                    self._server.add_insecure_port(listen.address)
                except RuntimeError as e:
                    raise StartupError(f"cannot listen on {listen}: {e}") from None
                self._server.start()
            case _:
                assert_never(listen)
        hooks = ", ".join(f"{h}={p}" for h, p in self.config.scripts.items()) or "none"
        log.info("%s %s listening on %s; hooks: %s", SERVER_NAME, server_version(), listen, hooks)
        keys = self.config.trusted_keys
        log.info(
            "install files: only from %s, checked in %s; signatures: %s",
            self.config.download_dir,
            self.gate.copy_dir,
            "not checked (no [service] trusted_keys)"
            if keys is None
            else f"checked with {len(keys.keys)} key(s) in {keys.path}"
            + (", required" if self.config.require_signature else ""),
        )

    def _bind_unix(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise StartupError(
                f"cannot listen on unix://{path}: directory {path.parent} does not exist "
                "(create it, e.g. with systemd's RuntimeDirectory=upparat)"
            )
        _remove_stale_socket(path)
        # The socket file is created with the mode the umask leaves, so there is no moment
        # when it is more open than socket_mode. The umask is process-wide: no script runs yet.
        try:
            listener = ondemand.bind_listener(path, self.config.socket_mode)
        except OSError as e:
            raise StartupError(f"cannot listen on unix://{path}: {e}") from None
        try:
            os.chmod(path, self.config.socket_mode)
            st = os.lstat(path)
        except OSError as e:
            listener.close()
            raise StartupError(f"cannot set the mode of unix://{path}: {e}") from None
        self._socket_inode = (st.st_dev, st.st_ino)
        # A hook server killed with its gRPC server running left that server's private
        # directory in /tmp; its record in state_dir says which (started anew: by systemd
        # after a crash, by hand after a power cut).
        left = ondemand.remove_recorded(self._private_record)
        if left is not None:
            log.info("removed %s, left by a hook server that did not stop", left)
        self._ondemand = ondemand.OnDemandServer(
            listener,
            self._make_server,
            on_idle=self._idle,
            idle_stop=self.config.idle_release,
            record=self._private_record,
        )
        self._ondemand.start()

    def _adopt_unix(self, path: Path, handover: str) -> bool:
        """Serves on the socket the program before this one in this process listened on
        (see reexec); False, with everything it named closed, when it does not fit."""
        fields = handover.split()
        try:
            fd, inode, held_fds = int(fields[0]), fields[1], [int(f) for f in fields[2:]]
            dev, ino = (int(x) for x in inode.split(":"))
        except (IndexError, ValueError):
            log.warning("ignoring %s=%r: not what a re-exec passes", HANDOVER_ENV, handover)
            return False
        try:
            listener = socket.socket(fileno=fd)
            held = tuple(socket.socket(fileno=h) for h in held_fds)
        except OSError as e:
            log.warning("ignoring %s: %s", HANDOVER_ENV, e)
            return False
        for sock in (listener, *held):
            sock.set_inheritable(False)
        try:
            st = os.lstat(path)
            fits = (st.st_dev, st.st_ino) == (dev, ino) and listener.getsockname() == str(path)
        except OSError:
            fits = False
        if not fits:
            log.warning("ignoring %s: it names no socket listening on %s", HANDOVER_ENV, path)
            for sock in (listener, *held):
                sock.close()
            return False
        self._socket_inode = (dev, ino)
        self._ondemand = ondemand.OnDemandServer(
            listener,
            self._make_server,
            on_idle=self._idle,
            held=held,
            idle_stop=self.config.idle_release,
            record=self._private_record,
        )
        self._ondemand.start()
        log.info(
            "re-executed to give back the memory of gRPC (idle); serving unix://%s again%s",
            path,
            f", {len(held)} connection(s) taken over" if held else "",
        )
        return True

    @property
    def _private_record(self) -> Path:
        """Names the on-demand gRPC server's private directory while it exists."""
        return self.config.state_dir / PRIVATE_RECORD

    def _idle(self) -> None:
        if self._wake is not None:
            self._wake()

    def reexec(self, config_path: Path, stop_requested: Callable[[], bool]) -> None:
        """Replaces this program by a fresh one in the same process, passing the listening
        socket on; returns (and goes on serving) when it must not: a connection came, a
        script still runs, the configuration changed on disk since start, a stop was
        asked for, or exec failed. A stop signal that comes during the exec stays pending
        for the next program (STOP_SIGNALS are blocked across it)."""
        if self._ondemand is None or not self._fingerprint:
            return
        with self._lock:
            if self._stopping or (self._services is not None and self._services.busy()):
                return
            services = self._services
        # A script said "retry later" (a maintenance window not open yet): the daemon calls
        # again, maybe every minute for hours. gRPC's server is dropped (nothing wakes);
        # its import is kept, so the call builds a server in ~10 ms instead of a fresh
        # program's ~0.2 CPU s, until retry_hold has passed without another such answer.
        left = 0.0 if services is None else services.retry_expected(time.monotonic())
        if left > 0:
            self._reexec_after(left)
            return
        now = config_fingerprint(self.config, config_path)
        if now != self._fingerprint:
            if not self._stale_warned:
                self._stale_warned = True
                log.info(
                    "not re-executing to free gRPC's memory: %s or a file it names changed"
                    " since the start; restart the hook server to load it",
                    config_path,
                )
            return
        held = self._ondemand.hand_over()
        if held is None:
            return  # not idle any more
        listener = self._ondemand.listener
        assert self._socket_inode is not None
        dev, ino = self._socket_inode
        fds = [listener.fileno(), *(c.fileno() for c in held)]
        for fd in fds:
            os.set_inheritable(fd, True)
        env = dict(os.environ)
        env[HANDOVER_ENV] = " ".join([str(fds[0]), f"{dev}:{ino}", *map(str, fds[1:])])
        for handler in logging.getLogger().handlers:
            handler.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stop_requested():
                raise InterruptedError("a stop was asked for")
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError as e:
            for fd in fds:
                os.set_inheritable(fd, False)
            if not isinstance(e, InterruptedError):
                log.error("cannot re-execute %s: %s; serving on", sys.executable, e.strerror or e)
                self._fingerprint = ""  # once is enough to know
            self._ondemand.resume(held)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _reexec_after(self, seconds: float) -> None:
        """The main thread tries `reexec` again in `seconds` (a connection meanwhile drops
        gRPC again when it ends, and that tries it as well)."""
        wake = self._wake
        if wake is None:
            return
        with self._lock:
            if self._held_for_retry is not None:
                self._held_for_retry.cancel()
            timer = threading.Timer(seconds, wake)
            timer.name = "hook-retry-hold"
            timer.daemon = True
            self._held_for_retry = timer
        timer.start()

    def stop(self) -> None:
        """NOT_SERVING, stop every script (SIGTERM, SIGKILL after the grace period), close."""
        log.info("stopping: no new calls; stopping running scripts")
        with self._lock:
            self._stopping = True
            services = self._services
            if self._held_for_retry is not None:
                self._held_for_retry.cancel()
        runs = services.stop() if services is not None else []
        deadline = time.monotonic() + self.config.cancel_grace_period + 2.0
        for run in runs:
            if run.wait(max(0.0, deadline - time.monotonic())) is None:
                log.error("script %s (pid %s) did not end after SIGKILL", run.argv[0], run.pid)
        if self._server is not None:
            self._server.stop(grace=1.0).wait(5.0)
        if self._ondemand is not None:
            self._ondemand.stop(grace=1.0)
        self._pool.shutdown(wait=False)
        match self.config.listen:
            case cfg.UnixListen(path=path) if self._socket_inode is not None:
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) == self._socket_inode:
                        path.unlink()
            case _:
                pass
        log.info("stopped")


def config_fingerprint(config: cfg.ServerConfig, config_path: Path) -> str:
    """What a fresh start would read: the configuration file and the trusted keys file
    (their bytes), or "" when one cannot be read."""
    digest = hashlib.sha256()
    keys = config.trusted_keys
    for path in (config_path, *([keys.path] if keys is not None else [])):
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            return ""
        digest.update(b"\0")
    return digest.hexdigest()


def _remove_stale_socket(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(
            f"cannot listen on unix://{path}: it exists and is not a socket; "
            "not deleting it (remove it yourself or choose another [hookserver] listen)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a leftover of a server that died
    except OSError as e:
        raise StartupError(f"cannot check the existing socket unix://{path}: {e}") from None
    else:
        raise StartupError(
            f"cannot listen on unix://{path}: another process is listening on it "
            "(another upparat-hookserver?)"
        )
    finally:
        probe.close()
    log.info("removing stale socket %s", path)
    path.unlink()


# --- the command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="upparat-hookserver",
        description="Serves upparat's hook contract (gRPC) by running the hook scripts "
        "configured in [hooks], the way upparat 1.12 ran them.",
        epilog=cfg.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=cfg.DEFAULT_CONFIG,
        help=f"the upparat configuration file (default {cfg.DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--listen", help="where to listen; overrides [hookserver] listen and [hooks] endpoint"
    )
    parser.add_argument(
        "--log-level", choices=cfg.LOG_LEVELS, help="overrides [hookserver] log_level"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the configuration and the scripts, then exit (0: usable, 2: not)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {server_version()}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = cfg.load(args.config, listen=args.listen, log_level=args.log_level)
    except cfg.ConfigError as e:
        for line in str(e).splitlines():
            print(f"upparat-hookserver: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    problems = cfg.script_problems(config)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return 2
    if args.check:
        print(f"{args.config}: hook server configuration is usable")
        return 0

    wake, stopping = SignalWake(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stopping.set()
        wake.set()

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_signal)
        wake.install()
        # Blocked across a re-exec (HookServer.reexec): one that came then is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # Re-executing replaces the whole program: only when it is the program (not a test
    # calling main() in a thread).
    fingerprint = config_fingerprint(config, args.config) if main_thread else ""
    server = HookServer(config, fingerprint=fingerprint, wake=wake.set)
    try:
        server.start()
    except StartupError as e:
        log.error("%s", e)
        return 2
    # No timeout: a timed wait would wake this thread for nothing once a second, for
    # months. A signal wakes it through the pipe, whichever thread got it
    # (upparat.io.signals); so does the on-demand server when it has dropped gRPC.
    while True:
        wake.wait()
        if stopping.is_set():
            break
        server.reexec(args.config, stopping.is_set)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
