"""upparat-hookserver's process: command line, config, signals, the listening socket, start
and stop. The gRPC services (server.py), with the protobuf stubs and grpc_health, are
imported and built when the first connection arrives: a hook server that waits months for
a job does not hold them (issue 16).

Run: ``upparat-hookserver -c /etc/upparat/upparat.conf`` (``--help`` lists the keys), or
``python -m hookservers.shell.main``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, assert_never

from hookservers.shell import config as cfg
from hookservers.shell import ondemand, verify

if TYPE_CHECKING:
    import grpc

    from hookservers.shell.server import Services

log = logging.getLogger("upparat.hookserver")

SERVER_NAME = "upparat-hookserver"


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

    def __init__(self, config: cfg.ServerConfig) -> None:
        self.config = config
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
        match listen:
            case cfg.UnixListen(path=path):
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
        self._ondemand = ondemand.OnDemandServer(listener, self._make_server)
        self._ondemand.start()

    def stop(self) -> None:
        """NOT_SERVING, stop every script (SIGTERM, SIGKILL after the grace period), close."""
        log.info("stopping: no new calls; stopping running scripts")
        with self._lock:
            self._stopping = True
            services = self._services
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

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
    server = HookServer(config)
    try:
        server.start()
    except StartupError as e:
        log.error("%s", e)
        return 2
    # No timeout: a timed wait would wake this thread for nothing once a second, for
    # months. The signal handler runs in this thread and sets the event.
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
