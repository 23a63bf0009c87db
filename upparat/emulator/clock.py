"""Clocks for the jobs emulator: real wall time by default, a settable fake in tests.

Owns nothing but "what time is it" (epoch seconds, float). It must not sleep or
schedule: the emulator's ticker and tests decide when timeouts are checked.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (AWS timestamps are integer epoch seconds)."""
        ...


class SystemClock:
    """Wall-clock time, as the AWS service uses for queuedAt and friends."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now
