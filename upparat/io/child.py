"""A driver run in a child process of the daemon that exists only while it has work.

Owns the child (started by the first command that needs one, told to stop once nothing
has been in flight for `linger` seconds, killed when it overstays, always reaped), the
pipe protocol on its stdin and stdout, and the one rule for its end: every command in
flight when the child ends gets the one event its driver would have sent, as the work's
`Ledger` says (a pending hook call: unreachable; a download: interrupted). It runs one
child at a time and decides nothing about jobs.

Why: Python never gives memory back, and a device waits months between jobs. gRPC,
protobuf, the hook stubs and the download driver, once imported and used in the daemon,
kept ~19 MB resident for good (51.8 MB 30 s after a job against 32.9 MB before one, issue
16); in a child, they go when it exits.

The protocol: each message is a 4-byte big-endian length and a pickle. Pickle, because
both ends are this program, started by the daemon as its own user with the same code:
the child can do nothing through the pipe it could not do anyway, and the values crossing
(the core's attrs commands and events, the driver's config) need no codec of their own.
Still, what a child sends is read with an allow-list of modules (the core's events), a
frame size limit, and each value must be one its ledger expects: a child that sends
anything else is broken, is killed, and counts as dead ("garbage on its stdout").
The child's stderr (its log lines, a traceback) is copied line by line to the daemon's,
so the journal gets them as before; the last line names a crash.
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Generic, Protocol, TypeVar

import attrs

import upparat
from upparat.core.events import Event

log = logging.getLogger("upparat.child")

LINGER = 5.0
"""Seconds a child stays after its last call ended: the calls of one job come back to
back and share it; an idle daemon has none."""
START_ALLOWANCE = 20.0
"""Seconds a child may take to start and answer on top of a call's own timeout: a Python
start with grpc's import (~0.3 s here, a few seconds on a small board busy booting).
A child that overstays a deadline by this much is killed, and its calls end as lost."""
STOP_WAIT = 5.0
"""Seconds a child told to stop has to close its driver and exit before it is killed."""
MAX_FRAME = 4 * 1024 * 1024
"""No message comes near this (a hook result's detail is cut to 16 KiB): a larger length
is garbage."""

EVENT_MODULES = frozenset({"upparat.core.events", "upparat.core.model"})
"""What a parent unpickles from its child: the core's events and their values."""
COMMAND_MODULES = frozenset({"upparat.core.commands", "upparat.core.model", __name__})
"""What a child unpickles: the core's commands, and `Start` / `Stop`; a work adds the
modules of its setup."""

_MAX_LINE = 8192
"""Bytes of the child's stderr copied as one line at most (a longer one is cut in pieces)."""
_HEADER = struct.Struct(">I")
C = TypeVar("C", contravariant=True)
Cmd = TypeVar("Cmd")

# Imports exactly what the daemon imports, however the daemon found its packages (a venv,
# PYTHONPATH, site.addsitedir): its sys.path is appended to the child's, and upparat's own
# root with it (an editable install is found through a .pth hook the child does not run).
# -P: the working directory is not put first on the path.
_BOOT = (
    "import importlib, sys; "
    "module, path = sys.argv[1], sys.argv[2:]; "
    "sys.path += [p for p in path if p not in sys.path]; "
    "del sys.argv[1:]; "
    "sys.exit(importlib.import_module(module).main())"
)


# --- the protocol ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Start:
    """The first message to a child: what it needs instead of reading the config file."""

    log_level: int
    setup: object
    """The work's own frozen value, e.g. the hook server's endpoint."""


@attrs.frozen(kw_only=True)
class Stop:
    """Close the driver and exit. A child whose stdin ends without it exits at once: the
    daemon died, and the child goes as the driver's threads went with the daemon before."""


class Garbage(Exception):
    """What came through the pipe is not a message of this protocol."""


def write_frame(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame; None at the end of the stream (also in the middle of a frame: the
    writer died while writing, which its exit status tells better). Raises `Garbage`."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise Garbage(f"a frame of {size} bytes (starting {header!r})")
    return _read_exactly(stream, size)


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, modules: frozenset[str]) -> None:
        super().__init__(io.BytesIO(data))
        self._modules = modules

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("builtins", "getattr"):
            # Some Python builds (Debian's 3.11) pickle an enum member as getattr(cls, name).
            return _enum_member
        if module not in self._modules and module.split(".")[0] not in self._modules:
            raise Garbage(f"a {module}.{name}, which no message holds")
        return super().find_class(module, name)


def _enum_member(cls: object, name: str) -> enum.Enum:
    """getattr for enum members only: any other attribute would reach past the allow-list."""
    if isinstance(cls, enum.EnumMeta) and name in cls.__members__:
        member: enum.Enum = cls.__members__[name]
        return member
    raise Garbage(f"getattr of {name!r}, not an enum member")


def decode(data: bytes, modules: frozenset[str]) -> object:
    """The message in a frame, built only from classes of `modules` (a top-level name such
    as "pathlib" allows its submodules). Raises `Garbage`."""
    try:
        return _Unpickler(data, modules).load()
    except Garbage:
        raise
    except Exception as e:  # whatever unpickling bad bytes raises
        raise Garbage(f"not a pickle: {type(e).__name__}: {e}") from e


# --- the parent's side ----------------------------------------------------------------


@attrs.frozen
class Unexpected:
    """A message the work never sends: the child is broken."""

    what: str


class Ledger(Protocol[C]):
    """What the parent knows of a work in flight, so that it can keep the driver's promises
    when the child ends. Called under the driver's lock, from its threads: quick, no waits."""

    def sent(self, command: C, now: float, *, running: bool) -> bool:
        """Note `command`; True: send it to the child (starting one unless `running`),
        False: nothing for a child to do (done here, or nothing to cancel)."""
        ...

    def received(self, message: object) -> Event | Unexpected | None:
        """The event to pass on, None to drop it (its call was cancelled), or Unexpected."""
        ...

    def busy(self) -> bool:
        """Is anything in flight?"""
        ...

    def deadline(self) -> float | None:
        """When the child must have answered something in flight (monotonic), if ever."""
        ...

    def lost(self, why: str) -> list[Event]:
        """The child ended (or never started) with this in flight: its events; forget it."""
        ...

    def ended(self) -> None:
        """The child has exited: nothing of it runs any more."""
        ...


@attrs.define(eq=False)
class _Child:
    proc: subprocess.Popen[bytes]
    stdin: IO[bytes]
    doom: str | None = None
    """Why the parent killed it, if it did."""
    last_line: str = ""
    """Its last line on stderr: names the error a crash printed."""
    stopping_since: float | None = None
    unread: tuple[float, str] | None = None
    """Since when, and why, a command could not be written to it."""
    exited: threading.Event = attrs.field(factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _write_stderr(line: bytes) -> None:
    view = memoryview(line)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(2, view) :]


class ChildDriver(Generic[Cmd]):
    """Runs a work's driver in `python ... <module>` (its `main()`, usually `serve`): the
    runtime's driver for those commands, with the in-process driver's promises.

    `on_event` gets the child's events from the driver's reader thread, under its lock:
    after `execute` of a cancel returns, no event of what it cancelled comes (the ledger
    drops them), so `on_event` must only hand the event over (the runtime's queue).
    """

    def __init__(
        self,
        *,
        name: str,
        module: str,
        setup: object,
        ledger: Ledger[Cmd],
        on_event: Callable[[Event], None],
        linger: float = LINGER,
        hold: float = 0.0,
        python: str = sys.executable,
        stderr: Callable[[bytes], None] = _write_stderr,
    ) -> None:
        self.name = name
        self._module = module
        self._setup = setup
        self._ledger = ledger
        self._on_event = on_event
        self._linger = linger
        self._hold = hold
        self._expected = 0.0
        """When a command is expected (monotonic; 0: none is): no stop before then."""
        self._python = python
        self._stderr = stderr
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._child: _Child | None = None
        """The child that takes commands."""
        self._stopping: _Child | None = None
        """A child told to stop: the next one starts only once it has exited."""
        self._close_at = 0.0
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The PID of the child that takes commands, if one runs."""
        with self._lock:
            return self._child.pid if self._child is not None else None

    # -- from the runtime's thread --------------------------------------------------------

    def execute(self, command: Cmd) -> None:
        with self._lock:
            stopping = self._stopping
        if stopping is not None:
            # One child at a time: what the one that stops still does (a download's
            # cancel, a discard) is done before another starts.
            self._await_exit(stopping)
        with self._lock:
            now = time.monotonic()
            self._expected = 0.0  # the command expected came, or the job went on without it
            child = self._child
            if not self._ledger.sent(command, now, running=child is not None and not self._closed):
                self._idle_from(now)
                return
            if self._closed:
                self._give_up(f"{self.name} is closed")
                return
            if child is None:
                started = self._start()
                if isinstance(started, str):
                    self._give_up(started)
                    return
                child = started
            self._send(child, command)
            self._idle_from(now)
            self._changed.notify_all()

    def expect(self, within: float) -> None:
        """A command is expected `within` seconds (a job's retry: its hook is called again
        then): the child is kept until then instead of stopping `linger` after its last
        answer and starting again for it, if that is at most `hold` seconds away (0: never;
        the job worker's is upparat.hooks.RETRY_HOLD). Only ever keeps a running child
        longer; the next command or expectation ends this one (a job cancelled meanwhile
        leaves the child until the time it expected)."""
        with self._lock:
            now = time.monotonic()
            self._expected = now + within if 0 <= within <= self._hold else 0.0
            self._idle_from(now)
            self._changed.notify_all()

    def close(self) -> None:
        """Stops the child (its driver closes; no events come any more) and reaps it."""
        with self._lock:
            self._closed = True
            self._ledger.lost(f"{self.name} is closed")  # nobody waits for these any more
            children = [c for c in (self._child, self._stopping) if c is not None]
            for child in children:
                self._stop(child)
            self._child = None
            self._changed.notify_all()
        for child in children:
            self._await_exit(child)

    # -- starting and stopping (under the lock) -------------------------------------------

    def _argv(self) -> list[str]:
        root = str(Path(upparat.__file__).resolve().parent.parent)
        return [self._python, "-P", "-c", _BOOT, self._module, *sys.path, root]

    def _start(self) -> _Child | str:
        argv = self._argv()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            return f"cannot start {self.name} ({self._python} -m {self._module}): {e}"
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        child = _Child(proc=proc, stdin=proc.stdin)
        self._child = child
        log.debug("%s started (pid %d)", self.name, proc.pid)
        stderr = threading.Thread(
            target=self._copy_stderr, args=(child, proc.stderr), name=f"{self.name}-stderr"
        )
        stderr.daemon = True
        stderr.start()
        threading.Thread(
            target=self._read, args=(child, stderr), name=f"{self.name}-read", daemon=True
        ).start()
        threading.Thread(
            target=self._watch, args=(child,), name=f"{self.name}-watch", daemon=True
        ).start()
        level = logging.getLogger().getEffectiveLevel()
        self._send(child, Start(log_level=level, setup=self._setup))
        return child

    def _send(self, child: _Child, message: object) -> None:
        try:
            write_frame(child.stdin, message)
        except (OSError, ValueError) as e:
            # It exited (its status says why, and its reader answers what was in flight,
            # this too), or it lives on without reading: the watcher kills it then.
            if child.unread is None:
                why = f"{self._what(child)} stopped reading its commands ({e}); killed"
                child.unread = (time.monotonic(), why)
                self._changed.notify_all()

    def _stop(self, child: _Child) -> None:
        """Tell `child` to stop; it takes no command any more."""
        if child.stopping_since is not None:
            return
        child.stopping_since = time.monotonic()
        with contextlib.suppress(OSError, ValueError):
            write_frame(child.stdin, Stop())
        with contextlib.suppress(OSError, ValueError):
            child.stdin.close()
        if child is self._child:
            self._child = None
            self._stopping = child

    def _kill(self, child: _Child, why: str) -> None:
        if child.doom is None:
            child.doom = why
        with contextlib.suppress(OSError):
            child.proc.kill()

    def _give_up(self, why: str) -> None:
        for event in self._ledger.lost(why):
            self._emit(event)
        self._ledger.ended()

    def _idle_from(self, now: float) -> None:
        if not self._ledger.busy():
            self._close_at = max(now, self._expected) + self._linger

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("event handler failed on %s", type(event).__name__)

    def _what(self, child: _Child) -> str:
        return f"{self.name} (pid {child.pid})"

    def _await_exit(self, child: _Child) -> None:
        if not child.exited.wait(STOP_WAIT):
            with self._lock:
                self._kill(child, f"{self._what(child)} did not stop in {STOP_WAIT:.0f} s; killed")
            child.exited.wait(STOP_WAIT)

    # -- the child's threads -------------------------------------------------------------

    def _copy_stderr(self, child: _Child, stream: IO[bytes]) -> None:
        with stream:
            while line := stream.readline(_MAX_LINE):
                self._stderr(line if line.endswith(b"\n") else line + b"\n")
                text = line.decode("utf-8", "replace").strip()
                if text:
                    child.last_line = text

    def _read(self, child: _Child, stderr: threading.Thread) -> None:
        stdout = child.proc.stdout
        assert stdout is not None
        try:
            while (frame := read_frame(stdout)) is not None:
                self._take(child, decode(frame, EVENT_MODULES))
        except Garbage as e:
            with self._lock:
                self._kill(child, f"{self._what(child)} sent garbage on its stdout ({e}); killed")
        except Exception as e:  # a bug here must still end the child's calls
            log.exception("reading %s failed", self._what(child))
            with self._lock:
                self._kill(child, f"reading {self._what(child)} failed ({e!r}); killed")
        finally:
            stdout.close()
        try:
            status = child.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            # It closed its stdout but lives on: broken.
            with self._lock:
                self._kill(child, f"{self._what(child)} closed its stdout; killed")
            status = child.proc.wait()
        stderr.join(STOP_WAIT)
        self._ended(child, status)

    def _take(self, child: _Child, message: object) -> None:
        with self._lock:
            if child is not self._child or self._closed:
                return  # a child told to stop has nothing in flight; nobody waits after close
            verdict = self._ledger.received(message)
            match verdict:
                case Unexpected(what=what):
                    raise Garbage(what)
                case None:
                    pass
                case event:
                    self._emit(event)
            if not self._ledger.busy():
                self._idle_from(time.monotonic())
                self._changed.notify_all()

    def _ended(self, child: _Child, status: int) -> None:
        why = child.doom or self._exit_text(child, status)
        with self._lock:
            if child is self._child:
                self._child = None
                lost = [] if self._closed else self._ledger.lost(why)
                for event in lost:
                    self._emit(event)
                if lost or status != 0:
                    log.warning("%s; %d in flight ended with it", why, len(lost))
            else:
                log.debug("%s stopped (status %d)", self._what(child), status)
            if child is self._stopping:
                self._stopping = None
            self._ledger.ended()
            child.exited.set()
            self._changed.notify_all()

    def _exit_text(self, child: _Child, status: int) -> str:
        if status < 0:
            try:
                name = f" ({signal.Signals(-status).name})"
            except ValueError:
                name = ""
            return f"{self._what(child)} was killed by signal {-status}{name}"
        text = f"{self._what(child)} exited with status {status}"
        # The last line of a process that failed is its error (a traceback's last line);
        # of one that was killed, just the last thing it logged.
        if status != 0 and child.last_line:
            text += f": {child.last_line[:200]}"
        return text

    def _watch(self, child: _Child) -> None:
        """Stops the child `linger` seconds after nothing is in flight, kills it when a
        deadline passed or when it does not stop; ends when the child has exited."""
        with self._lock:
            while not child.exited.is_set():
                now = time.monotonic()
                wait: float | None = None
                if child.unread is not None:
                    since, why = child.unread
                    if since + STOP_WAIT <= now:
                        self._kill(child, why)
                        return
                    wait = since + STOP_WAIT - now
                elif child.stopping_since is not None:
                    left = child.stopping_since + STOP_WAIT - now
                    if left <= 0:
                        self._kill(child, f"{self._what(child)} did not stop; killed")
                        return
                    wait = left
                elif not self._ledger.busy():
                    left = self._close_at - now
                    if left <= 0:
                        self._stop(child)
                        continue
                    wait = left
                else:
                    deadline = self._ledger.deadline()
                    if deadline is not None:
                        if deadline <= now:
                            self._kill(child, f"{self._what(child)} gave no answer in time; killed")
                            return
                        wait = deadline - now
                self._changed.wait(wait)


# --- the child's side -----------------------------------------------------------------


class Driver(Protocol[C]):
    def execute(self, command: C, /) -> None: ...
    def close(self) -> None: ...


def serve(
    build: Callable[[object, Callable[[Event], None]], Driver[Cmd]],
    *,
    accepts: Callable[[object], Cmd],
    reads: Iterable[str],
) -> int:
    """The child's loop: the first message is `Start`, whose setup `build` turns into the
    driver; then every command (`accepts` returns it, or raises `Garbage` for anything
    else) goes to it and its events go to the parent, until `Stop` (the driver closes) or
    the end of stdin (the daemon is gone: exit at once)."""
    # The parent decides when this ends: SIGINT from a terminal and systemd's SIGTERM to
    # the whole unit reach the daemon too, which then says Stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    modules = COMMAND_MODULES | frozenset(reads)
    commands = os.fdopen(os.dup(0), "rb")
    events = os.fdopen(os.dup(1), "wb")
    # Whatever else reads stdin or prints goes nowhere near the protocol: stray output
    # lands in the log.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    first = read_frame(commands)
    if first is None:
        return 0
    start = decode(first, modules)
    if not isinstance(start, Start):
        raise Garbage(f"the first message is a {type(start).__name__}, not Start")
    from upparat.cli import setup_logging

    setup_logging(start.log_level)
    outbox: queue.SimpleQueue[object] = queue.SimpleQueue()

    def send() -> None:
        # Its own thread: a driver that sends under its own lock never waits for the pipe.
        while (message := outbox.get()) is not None:
            try:
                write_frame(events, message)
            except OSError:
                return  # the daemon is gone; the end of stdin follows

    # A daemon thread: should `build` or a command fail, the process still exits.
    writer = threading.Thread(target=send, name="child-events", daemon=True)
    writer.start()
    driver = build(start.setup, outbox.put)
    while True:
        frame = read_frame(commands)
        if frame is None:
            os._exit(0)  # the daemon is gone: like the driver's threads, go with it
        message = decode(frame, modules)
        if isinstance(message, Stop):
            break
        command = accepts(message)
        try:
            driver.execute(command)
        except Exception:  # as the runtime does with a driver's bug: log it, go on
            log.exception("carrying out %s failed", type(command).__name__)
    driver.close()
    outbox.put(None)
    writer.join()
    return 0
