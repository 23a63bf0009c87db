"""Fault-injection helpers for the development stack: watch the broker, follow a log, read a
process's memory, kill the hook server like a crash, run the daemon as another user.

Used by tests/faults. Every process is handled by the PID the stack started it with, never
found by name. Nothing here runs on devices.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from upparat.devstack.fileserver import FileServer
from upparat.devstack.procs import pid_alive as pid_alive  # re-exported: the tests' helper
from upparat.devstack.stack import Stack

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], what: str, timeout: float = 30.0, interval: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- the broker, seen from outside ------------------------------------------------------


class MqttSpy:
    """A paho client that records every message on some topic filters (e.g. the daemon's
    requests under `$aws/things/<thing>/jobs/+/update`)."""

    def __init__(self, port: int, *topic_filters: str, host: str = "127.0.0.1") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._filters = topic_filters
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"upparat-spy-{os.getpid()}-{id(self)}",
            clean_session=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"spy: no SUBACK for {topic_filters} within 10 s")

    def _on_connect(self, client: paho.Client, *args: object) -> None:
        client.subscribe([(f, 1) for f in self._filters])

    def _on_subscribe(self, *args: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def topics(self) -> list[str]:
        with self._cond:
            return [topic for topic, _ in self.messages]

    def wait_for_topic(self, topic: str, timeout: float = 30.0) -> None:
        """Wait until a message was seen on exactly `topic`."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(t == topic for t, _ in self.messages), timeout):
                raise AssertionError(f"no message on {topic} within {timeout} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSpy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- logs and processes -------------------------------------------------------------------


class LogWatch:
    """Reads a growing log file incrementally; `wait_for` returns once a text appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._text = ""

    def read(self) -> str:
        """Everything written since this watch was created or last skipped to the end."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset += len(data)
            self._text += data.decode("utf-8", "replace")
        return self._text

    def skip_to_end(self) -> None:
        """Forget what is there now: later reads and waits see only what comes after."""
        self.read()
        self._text = ""

    def count(self, text: str) -> int:
        return self.read().count(text)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Wait until `text` appears in what is read from now on or was read before."""
        start = 0

        def seen() -> bool:
            nonlocal start
            found = self.read().find(text, start) >= 0
            start = max(0, len(self._text) - len(text))
            return found

        wait_until(seen, f"{text!r} in {self.path}", timeout, 0.02)


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a mapping (e.g. VmRSS, VmHWM, Uid, Gid)."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def vm_rss_kib(pid: int) -> int:
    """The resident set size of a running process, in KiB."""
    return int(proc_status(pid)["VmRSS"].split()[0])


def kill_group(pgid: int) -> None:
    """SIGKILL a process group we know the id of (a hook script runs in a group of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_TGKILL = {"x86_64": 234, "aarch64": 131, "armv7l": 268}
"""tgkill(2)'s system call number per machine."""


def signal_other_thread(pid: int, signum: int) -> int:
    """`signum` to a thread of `pid` other than its main one (tgkill(2)), as the kernel may
    deliver a signal sent to the process to any thread that does not block it; returns the
    thread's id."""
    tid = max(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_TGKILL[platform.machine()], pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum})")
    return tid


def crash_hookserver(stack: Stack) -> None:
    """SIGKILL the hook server, as a crash would; its socket file stays behind."""
    stack.stop_hookserver(signal.SIGKILL)


def wait_connectable(path: Path, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on the unix socket `path`."""

    def accepts() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
            return True

    wait_until(accepts, f"a listener on {path}", timeout, 0.05)


# --- the file server ------------------------------------------------------------------------


@contextlib.contextmanager
def stalled_at(
    files: FileServer, path: str, threshold: int, timeout: float = 60.0
) -> Iterator[int]:
    """Wait until `threshold` bytes of `path` were served, then keep the server from sending
    more (at most the chunk already on its way) until the block ends; yields the count.

    The server counts each chunk under its lock after sending it; holding that lock is what
    stalls it, so a test can act at an exact point of a download however slow it runs.
    """
    lock = files._lock  # the FileServer's own counter lock (same package)
    deadline = time.monotonic() + timeout
    while True:
        lock.acquire()
        served = files.served.get(path, 0)
        if served >= threshold:
            break
        lock.release()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {served} of {threshold} bytes served after {timeout} s")
        time.sleep(0.002)
    try:
        yield served
    finally:
        lock.release()


# --- files ------------------------------------------------------------------------------


def snapshot(root: Path) -> set[str]:
    """Every path under `root` (relative, directories with a trailing slash)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in dirnames:
            found.add(f"{rel / name}/")
        for name in filenames:
            found.add(str(rel / name))
    return found


def top_level(path: Path) -> set[str]:
    """The names directly in `path`."""
    with contextlib.suppress(FileNotFoundError):
        return set(os.listdir(path))
    return set()


# --- another user -------------------------------------------------------------------------


def python_for(user: pwd.struct_passwd) -> str | None:
    """An interpreter of this Python's version that `user` can run, or None.

    The venv's interpreter may live where the user cannot go (a pyenv build under /root);
    the system interpreter of the same X.Y runs the venv's packages just as well.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates: Iterable[str | None] = (
        sys.executable,
        os.path.realpath(sys.executable),
        shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"),
    )
    for candidate in candidates:
        if candidate and _runs_as(
            user, [candidate, "-c", "import sys; print(sys.version_info[:2])"]
        ):
            return candidate
    return None


def _runs_as(user: pwd.struct_passwd, argv: list[str]) -> bool:
    try:
        done = subprocess.run(
            argv,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    wanted = str((sys.version_info.major, sys.version_info.minor))
    return done.returncode == 0 and done.stdout.strip() == wanted


def site_packages() -> str:
    """The site-packages directory of the running environment (the venv's)."""
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def start_daemon_as(stack: Stack, user: pwd.struct_passwd, python: str) -> None:
    """Start the stack's daemon as `user` (its primary group only), like systemd's User=.

    `python` runs the venv's packages through `site.addsitedir`, which also reads the
    venv's .pth files (the editable install of upparat).
    """
    bootstrap = (
        "import runpy, site, sys; "
        f"site.addsitedir({site_packages()!r}); "
        f"sys.argv = ['upparat', '-c', {str(stack.config_path)!r}]; "
        "runpy.run_module('upparat.cli', run_name='__main__', alter_sys=True)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    log = (stack.workdir / "daemon.log").open("ab")
    try:
        stack.daemon = subprocess.Popen(
            [python, "-c", bootstrap],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd="/",
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
        )
    finally:
        log.close()
    stack.daemon_starts += 1
