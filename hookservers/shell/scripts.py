"""Runs one hook script in a process group of its own and reports how it ended.

Owns the child: its pipes (read by threads, memory bounded), its process group (SIGTERM,
then SIGKILL after the grace period, on stop and for anything left behind when the
script exits) and its reaping. Knows nothing about gRPC or the hook contract.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

log = logging.getLogger("upparat.hookserver")

MAX_LINE_CHARS = 1024
"""A stdout line is cut to this many characters (the contract's one-line messages)."""
READ_LINE_BYTES = 4096
"""Longest stdout line read at once; the rest of a longer line is skipped."""
STDERR_TAIL_BYTES = 1024
"""How much of the end of stderr is kept (the failure's detail)."""
POLL_INTERVAL = 0.02
READER_JOIN_TIMEOUT = 1.0


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
        self._readers: list[threading.Thread] = []
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
        self._readers = [
            threading.Thread(
                target=self._read_stdout,
                args=(proc.stdout,),
                name=f"stdout-{proc.pid}",
                daemon=True,
            ),
            threading.Thread(
                target=self._read_stderr,
                args=(proc.stderr,),
                name=f"stderr-{proc.pid}",
                daemon=True,
            ),
        ]
        for reader in self._readers:
            reader.start()
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
        self._wait_exit(proc)
        returncode = proc.returncode
        assert returncode is not None
        # Let the readers drain what the script wrote before it exited.
        self._join_readers(0.2)
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
                time.sleep(POLL_INTERVAL)
        with self._lock:
            self._group_gone = True
        self._join_readers(READER_JOIN_TIMEOUT)
        ending: Ending = (
            Signalled(signum=-returncode) if returncode < 0 else Exited(code=returncode)
        )
        self._finish(ending, leftovers=len(leftovers))

    def _wait_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the script has exited (and is reaped), escalating a stop meanwhile.

        With a pidfd (Linux >= 5.3) the exit wakes this thread at once. Popen.wait(timeout)
        polls instead, sleeping 0.5, 1, 2, 4 ... ms between looks: a script that takes 2 ms
        was seen after 3.5 ms, one of 5 ms after 7.5 ms, on every hook call.
        """
        pidfd = _pidfd(proc.pid)
        if pidfd is None:
            while True:
                try:
                    proc.wait(timeout=POLL_INTERVAL * 2)
                    return
                except subprocess.TimeoutExpired:
                    self._escalate()
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll(POLL_INTERVAL * 2 * 1000):
                self._escalate()
        finally:
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

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

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

    # -- the reader threads ------------------------------------------------------------

    def _read_stdout(self, stream: IO[bytes]) -> None:
        skipping = False
        with stream:
            for chunk in iter(lambda: stream.readline(READ_LINE_BYTES), b""):
                complete = chunk.endswith(b"\n")
                if skipping:
                    skipping = not complete
                    continue
                if not complete and len(chunk) >= READ_LINE_BYTES:
                    skipping = True
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

    def _read_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            while chunk := os.read(stream.fileno(), 4096):
                with self._lock:
                    self._stderr_tail += chunk
                    del self._stderr_tail[:-STDERR_TAIL_BYTES]


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
