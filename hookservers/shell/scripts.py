"""Runs one hook script in a process group of its own and reports how it ended.

Owns the child: its pipes (memory bounded), its process group (SIGTERM, then SIGKILL
after the grace period, on stop and for anything left behind when the script exits) and
its reaping, all watched by one thread per run. Knows nothing about gRPC or the hook
contract.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("upparat.hookserver")

MAX_LINE_CHARS = 1024
"""A stdout line is cut to this many characters (the contract's one-line messages)."""
READ_LINE_BYTES = 4096
"""Longest stdout line read at once; the rest of a longer line is skipped."""
STDERR_TAIL_BYTES = 1024
"""How much of the end of stderr is kept (the failure's detail)."""
POLL_INTERVAL = 0.02
DRAIN_AFTER_EXIT = 0.2
"""Seconds the pipes are still read after the script exited (what it wrote last, and
what a child it left behind writes before it is terminated)."""
READER_JOIN_TIMEOUT = 1.0
"""Seconds the pipes are read at most once the script and its group are gone."""
_READ_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Exited:
    code: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Signalled:
    signum: int

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NotStarted:
    error: str


Ending = Exited | Signalled | NotStarted


class StopCause(enum.Enum):
    """Why the server stopped a script before it ended by itself."""

    CANCELLED = "cancelled by the caller"
    DEADLINE = "past the call's deadline"
    SHUTDOWN = "hook server stopping"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScriptOutcome:
    ending: Ending
    stopped: StopCause | None
    """Set when the server stopped the script (then `ending` is how it died)."""
    last_lines: tuple[str, ...]
    """The last (at most two) non-empty stdout lines, oldest first, stripped."""
    stderr_tail: str
    duration: float
    leftovers: int = 0
    """Processes of its group still running when the script exited (then killed)."""


class ScriptRun:
    """One run of one script. `start()` once; `stop()` any time, from any thread."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        grace: float,
        on_line: Callable[[str], None] | None = None,
        on_done: Callable[[ScriptOutcome], None] | None = None,
        cwd: str = "/",
    ) -> None:
        self.argv = tuple(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._grace = grace
        self._on_line = on_line
        self._on_done = on_done
        self._lock = threading.Lock()
        self._stop_cause: StopCause | None = None
        self._done = threading.Event()
        self._outcome: ScriptOutcome | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_lines: collections.deque[str] = collections.deque(maxlen=2)
        self._stderr_tail = bytearray()
        self._pipes = _Pipes()
        self._stdout_buffer = bytearray()
        self._skipping = False
        """Inside a stdout line longer than READ_LINE_BYTES: the rest of it is skipped."""
        self._started_at = time.monotonic()
        self._term_sent_at: float | None = None
        self._kill_sent_at: float | None = None
        self._group_gone = False
        """Set once the script and its group are gone: its pid may be reused after that."""

    # -- public ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def started_at(self) -> float:
        return self._started_at

    def start(self) -> None:
        """Starts the script; a script that cannot start ends at once with NotStarted."""
        self._started_at = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                close_fds=True,
                # Its own session and process group: stopping it kills everything it started.
                start_new_session=True,
            )
        except (OSError, ValueError) as e:
            self._finish(NotStarted(error=str(e)), leftovers=0)
            return
        self._proc = proc
        with self._lock:
            stopped_early = self._stop_cause is not None
        if stopped_early:  # stop() came between construction and here
            self._signal_group(signal.SIGTERM)
        assert proc.stdout is not None
        assert proc.stderr is not None
        # One thread per run reads both pipes and waits for the exit (a pidfd) in one
        # poll(): a thread per pipe cost a thread start each on every hook call.
        self._pipes.add(proc.stdout.fileno(), self._stdout_data)
        self._pipes.add(proc.stderr.fileno(), self._stderr_data)
        threading.Thread(target=self._supervise, name=f"script-{proc.pid}", daemon=True).start()

    def stop(self, cause: StopCause) -> None:
        """Asks the run to end: SIGTERM to its group now, SIGKILL after the grace period.

        Returns at once; the first cause wins; a finished run ignores it.
        """
        with self._lock:
            if self._done.is_set() or self._stop_cause is not None:
                return
            self._stop_cause = cause
        self._signal_group(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> ScriptOutcome | None:
        """The outcome once the script and its whole group are gone, or None on timeout."""
        self._done.wait(timeout)
        return self._outcome

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- the supervisor thread ---------------------------------------------------------

    def _supervise(self) -> None:
        proc = self._proc
        assert proc is not None
        try:
            self._supervise_child(proc)
        finally:
            self._pipes.close()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def _supervise_child(self, proc: subprocess.Popen[bytes]) -> None:
        self._wait_exit(proc)
        returncode = proc.returncode
        assert returncode is not None
        # Read what the script wrote before it exited.
        self._pipes.pump_until(time.monotonic() + DRAIN_AFTER_EXIT)
        leftovers = live_group_members(proc.pid)
        if leftovers:
            # No orphans: whatever the script left in its group goes with it.
            with self._lock:
                if self._stop_cause is None and self._term_sent_at is None:
                    log.warning(
                        "%s left %d process(es) running in its process group; terminating them",
                        self.argv[0],
                        len(leftovers),
                    )
            self._signal_group(signal.SIGTERM)
            while live_group_members(proc.pid):
                self._escalate()
                if self._kill_sent_at is not None and time.monotonic() - self._kill_sent_at > 1.0:
                    log.error("processes of %s survive SIGKILL", self.argv[0])
                    break
                self._pipes.pump_for(POLL_INTERVAL)
        with self._lock:
            self._group_gone = True
        self._pipes.pump_until(time.monotonic() + READER_JOIN_TIMEOUT)
        self._stdout_end()
        ending: Ending = (
            Signalled(signum=-returncode) if returncode < 0 else Exited(code=returncode)
        )
        self._finish(ending, leftovers=len(leftovers))

    def _wait_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the script has exited (and is reaped), reading its pipes and escalating a
        stop meanwhile.

        With a pidfd (Linux >= 5.3) the exit wakes this thread at once, in the same poll()
        as the pipes. Without one, the thread looks every few milliseconds (Popen.wait's
        own polling sleeps 0.5, 1, 2, 4 ... ms between looks: a script that takes 2 ms was
        seen after 3.5 ms, one of 5 ms after 7.5 ms, on every hook call).
        """
        pidfd = _pidfd(proc.pid)
        if pidfd is None:
            while proc.poll() is None:
                self._pipes.pump_for(_NO_PIDFD_LOOK)
                self._escalate()
            return
        exited = threading.Event()
        try:
            self._pipes.add(pidfd, lambda _: exited.set(), watch_only=True)
            while not exited.is_set():
                self._pipes.pump_for(POLL_INTERVAL * 2, stop=exited)
                self._escalate()
        finally:
            self._pipes.remove(pidfd)
            os.close(pidfd)
        proc.wait()  # exited: reaps at once

    def _escalate(self) -> None:
        with self._lock:
            term_at = self._term_sent_at
            kill_at = self._kill_sent_at
        if term_at is not None and kill_at is None and time.monotonic() - term_at >= self._grace:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            if self._group_gone:
                return
            now = time.monotonic()
            if sig == signal.SIGTERM:
                if self._term_sent_at is not None:
                    return
                self._term_sent_at = now
            else:
                if self._kill_sent_at is not None:
                    return
                self._kill_sent_at = now
        # The group id is the script's pid (start_new_session); Linux does not reuse a pid
        # while a process group of that id has members.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _finish(self, ending: Ending, *, leftovers: int) -> None:
        with self._lock:
            outcome = ScriptOutcome(
                ending=ending,
                stopped=self._stop_cause,
                last_lines=tuple(self._last_lines),
                stderr_tail=bytes(self._stderr_tail).decode("utf-8", "replace").lstrip("\ufffd"),
                duration=time.monotonic() - self._started_at,
                leftovers=leftovers,
            )
            self._outcome = outcome
        if self._on_done is not None:
            try:
                self._on_done(outcome)
            except Exception:
                log.exception("on_done callback of %s failed", self.argv[0])
        self._done.set()

    # -- what the pipes bring (the supervisor thread) ------------------------------------

    def _stdout_data(self, data: bytes) -> None:
        """Bytes from stdout, cut into lines as `readline(READ_LINE_BYTES)` would."""
        buffer = self._stdout_buffer
        buffer += data
        while True:
            end = buffer.find(b"\n", 0, READ_LINE_BYTES)
            if end >= 0:
                chunk = bytes(buffer[: end + 1])
            elif len(buffer) >= READ_LINE_BYTES:
                chunk = bytes(buffer[:READ_LINE_BYTES])
            else:
                return
            del buffer[: len(chunk)]
            self._stdout_chunk(chunk)

    def _stdout_end(self) -> None:
        """stdout is closed (or no longer read): a last line without a newline counts."""
        if self._stdout_buffer:
            chunk = bytes(self._stdout_buffer)
            self._stdout_buffer.clear()
            self._stdout_chunk(chunk)

    def _stdout_chunk(self, chunk: bytes) -> None:
        complete = chunk.endswith(b"\n")
        if self._skipping:
            self._skipping = not complete
            return
        if not complete and len(chunk) >= READ_LINE_BYTES:
            self._skipping = True
        # Carriage returns redraw a progress bar in place: each part is a line.
        for part in chunk.decode("utf-8", "replace").split("\r"):
            line = part.strip()[:MAX_LINE_CHARS]
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        with self._lock:
            self._last_lines.append(line)
        if self._on_line is not None:
            try:
                self._on_line(line)
            except Exception:
                log.exception("on_line callback of %s failed", self.argv[0])

    def _stderr_data(self, data: bytes) -> None:
        with self._lock:
            self._stderr_tail += data
            del self._stderr_tail[:-STDERR_TAIL_BYTES]


_NO_PIDFD_LOOK = 0.002
"""Seconds between looks at a child's exit where there is no pidfd."""


class _Pipes:
    """The file descriptors one run's thread waits on: pipes it reads until EOF, and a
    pidfd it only watches. Used by that one thread only."""

    def __init__(self) -> None:
        self._poller = select.poll()
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._watched: set[int] = set()

    def add(self, fd: int, handler: Callable[[bytes], None], *, watch_only: bool = False) -> None:
        self._poller.register(fd, select.POLLIN)
        self._handlers[fd] = handler
        if watch_only:
            self._watched.add(fd)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)
        self._watched.discard(fd)

    @property
    def reading(self) -> bool:
        return len(self._handlers) > len(self._watched)

    def pump_for(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Handle what arrives for up to `seconds`, or until `stop` is set by a handler."""
        self.pump_until(time.monotonic() + seconds, stop=stop, while_reading=False)

    def pump_until(
        self, deadline: float, *, stop: threading.Event | None = None, while_reading: bool = True
    ) -> None:
        """Handle what arrives until `deadline`; with `while_reading`, also stop once every
        pipe is at EOF."""
        while not (while_reading and not self.reading):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._handlers:
                time.sleep(left)  # nothing left to read: only the time passes
                return
            for fd, _ in self._poller.poll(max(1, math.ceil(left * 1000))):
                handler = self._handlers.get(fd)
                if handler is None:
                    continue
                if fd in self._watched:
                    handler(b"")
                    continue
                try:
                    data = os.read(fd, _READ_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    handler(data)
                else:
                    self.remove(fd)  # EOF: the last writer closed it
            if stop is not None and stop.is_set():
                return

    def close(self) -> None:
        for fd in list(self._handlers):
            self.remove(fd)


def _pidfd(pid: int) -> int | None:
    """A pidfd of our unreaped child `pid` (readable once it exits), None where unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the running (not zombie) processes in process group `pgid`."""
    # Fast path, the usual case: the script left nothing behind, the group is empty.
    # Only when something (maybe just a zombie) is left is /proc scanned.
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if not entries:
        # No /proc: the best we can say is whether the group has any member at all.
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces and parentheses).
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members
