"""Waking a sleeping main thread for a signal, whichever thread the kernel delivered it to.

Owns the one pipe of a process that is its signal wakeup fd. Python runs a signal's
handler in the main thread, and only once that thread runs; the C handler runs in the
thread the kernel picked, which may be any that does not block the signal. A main thread
asleep in a lock (an Event, a queue) is woken only by a signal delivered to it, so with
other threads about (paho's, gRPC's) SIGTERM could go unheard until systemd's SIGKILL. The
C handler writes to the wakeup fd in whatever thread it ran: sleep on this pipe (or have a
thread sleep on it for you) and the handler runs.
"""

from __future__ import annotations

import contextlib
import os
import signal


class SignalWake:
    """A pipe to sleep on: `set` from any thread, or any signal with a Python handler once
    `install`ed, ends a `wait`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def install(self) -> None:
        """Makes the pipe the process's signal wakeup fd (from the main thread only)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the next wait ends anyway
            os.write(self._write, b"\0")

    def wait(self) -> None:
        """Until something was written since the last wait (all of it is taken); no
        timeout: it wakes for nothing else."""
        os.read(self._read, 4096)
