"""The one loop: take an event, call `core.step`, carry out the commands.

Owns the event queue, the timers, signals and the watchdog. Drivers only post
events here and receive commands from here; they never call each other.
"""

from __future__ import annotations

import heapq
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol, assert_never

from upparat.core import commands as c
from upparat.core import events as e
from upparat.core.machine import State, initial_state, step
from upparat.core.model import HookKind, JobStatus, JournalRecord, LogLevel, Settings, TimerKind
from upparat.io.signals import SignalWake

log = logging.getLogger("upparat")

_LOG_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


_BATCH = 32
"""Events fed at most between two looks at the timers and the status file: a queue that
never empties (progress) must not starve either."""


def _refused_restart(command: c.CallHook, why: str) -> e.HookFinished:
    return e.HookFinished(
        call_id=command.call_id,
        hook=HookKind.RESTART,
        result=e.HookFailure(
            reason="JOURNAL_WRITE_FAILED",
            message=f"not restarting: the journal could not be written ({why})",
        ),
    )


class EventQueue:
    """Thread-safe and signal-safe inbox of the loop (SimpleQueue is reentrant)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[e.Event | None] = queue.SimpleQueue()

    def post(self, event: e.Event) -> None:
        self._queue.put(event)

    def wake(self) -> None:
        """Ends a `get` now, as its timeout would."""
        self._queue.put(None)

    def get(self, timeout: float | None) -> e.Event | None:
        """The next event, waiting up to `timeout` seconds (None: for ever, 0: not at all);
        None when the wait ended without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class MqttDriver(Protocol):
    def execute(
        self,
        command: c.ConnectMqtt
        | c.SubscribeJobTopics
        | c.RequestPendingJobs
        | c.DescribeJob
        | c.UpdateJob
        | c.GetPackageShadow
        | c.UpdatePackageShadow,
    ) -> object: ...
    def stop(self) -> None: ...


class HookDriver(Protocol):
    def execute(self, command: c.AskHookInfo | c.CallHook | c.CancelHook) -> None: ...
    def expect(self, within: float) -> None: ...
    def close(self) -> None: ...


class DownloadDriver(Protocol):
    def execute(self, command: c.StartDownload | c.CancelDownload | c.DiscardDownload) -> None: ...
    def expect(self, within: float) -> None: ...
    def close(self) -> None: ...


class JournalStore(Protocol):
    def load(self) -> JournalRecord | None: ...
    def save(self, record: JournalRecord | None) -> None: ...


class Services(Protocol):
    """Process-level side effects: systemd notifications and error reporting."""

    def notify(self, message: str) -> None: ...
    def watchdog_interval(self) -> float | None: ...
    def job_failed(self, job_id: str, state: str, message: str) -> None: ...


class StatusSink(Protocol):
    """The local status file (upparat.io.status.StatusTracker): sees what the loop sees."""

    def saw_event(self, event: e.Event) -> None: ...
    def saw_command(self, command: c.Command) -> None: ...
    def flush(self, now: float) -> None: ...


class Timers:
    """One pending timer per kind; `due()` pops those whose time has come."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerKind]] = []
        self._current: dict[TimerKind, tuple[float, int]] = {}

    def set(self, kind: TimerKind, token: int, at: float) -> None:
        self._current[kind] = (at, token)
        heapq.heappush(self._heap, (at, token, kind))

    def next_deadline(self) -> float | None:
        while self._heap:
            at, token, kind = self._heap[0]
            if self._current.get(kind) == (at, token):
                return at
            heapq.heappop(self._heap)  # superseded or cancelled
        return None

    def due(self, now: float) -> list[e.TimerFired]:
        fired: list[e.TimerFired] = []
        while (at := self.next_deadline()) is not None and at <= now:
            _, token, kind = heapq.heappop(self._heap)
            del self._current[kind]
            fired.append(e.TimerFired(timer=kind, token=token))
        return fired


class Runtime:
    def __init__(
        self,
        *,
        settings: Settings,
        inbox: EventQueue,
        mqtt: MqttDriver,
        hooks: HookDriver,
        downloader: DownloadDriver,
        journal: JournalStore,
        services: Services,
        status: StatusSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._inbox = inbox
        self._mqtt = mqtt
        self._hooks = hooks
        self._downloader = downloader
        self._journal = journal
        self._services = services
        self._status = status
        self._clock = clock
        self._timers = Timers()
        self._state: State = initial_state(settings)
        self._exit = False
        self._signals = 0

    @property
    def state(self) -> State:
        return self._state

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # A signal the kernel hands to another thread must still end the loop's wait in
        # the inbox (upparat.io.signals): a thread asleep on the wakeup pipe wakes it.
        wake = SignalWake()
        wake.install()
        threading.Thread(
            target=self._wake_on_signal, args=(wake,), name="signal-wake", daemon=True
        ).start()

    def _wake_on_signal(self, wake: SignalWake) -> None:
        while True:
            wake.wait()
            self._inbox.wake()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # A second signal while shutting down: the operator insists.
            raise SystemExit(1)
        self._inbox.post(e.ShutdownRequested())

    def run(self) -> int:
        """Run until the core says Exit; returns the process exit status."""
        # The core answers Started with ConnectMqtt: every connect attempt is its decision.
        self.feed(e.Started(journal=self._journal.load()))
        watchdog = self._services.watchdog_interval()
        next_watchdog = self._clock() + watchdog / 2 if watchdog else None
        while not self._done():
            now = self._clock()
            for fired in self._timers.due(now):
                if self._done():
                    break
                self.feed(fired)
            if self._done():
                break
            if next_watchdog is not None and watchdog is not None and now >= next_watchdog:
                self._services.notify("WATCHDOG=1")
                next_watchdog = now + watchdog / 2
            # Once per batch, before waiting: the status file shows what the loop did since
            # the last write, and the write follows the commands instead of delaying them.
            self._flush_status()
            wait_until = [t for t in (self._timers.next_deadline(), next_watchdog) if t is not None]
            timeout = max(0.0, min(wait_until) - self._clock()) if wait_until else None
            event = self._inbox.get(timeout)
            fed = 0
            while event is not None:
                self.feed(event)
                fed += 1
                if self._done() or fed >= _BATCH:
                    break
                event = self._inbox.get(0)  # what arrived meanwhile belongs to this batch
        self._flush_status()
        self._services.notify("STOPPING=1")
        self._shutdown_drivers()
        return 0

    def _done(self) -> bool:
        return self._exit

    def feed(self, event: e.Event) -> None:
        """Hand one event to the core and carry out what it asks for."""
        now = self._clock()
        self._state, commands = step(self._state, event, now)
        self._show(event, commands)
        if any(
            isinstance(x, c.UpdateJob) and x.status is not JobStatus.IN_PROGRESS for x in commands
        ):
            # A job's result is in the status file before the cloud is told it: a reader
            # who saw the job end in AWS IoT finds it here too (one write per job).
            self._flush_status()
        unsaved: str | None = None
        for command in commands:
            if (
                unsaved is not None
                and isinstance(command, c.CallHook)
                and command.hook is HookKind.RESTART
            ):
                # The journal is what tells a rebooted device it is back from this
                # restart (and counts boots); without it, do not restart at all.
                self._inbox.post(_refused_restart(command, unsaved))
                continue
            try:
                self._execute(command, now)
            except Exception as err:  # a driver bug must not take the loop down
                log.exception("carrying out %s failed", type(command).__name__)
                if isinstance(command, c.Persist):
                    unsaved = f"{type(err).__name__}: {err}"

    def _show(self, event: e.Event, commands: tuple[c.Command, ...]) -> None:
        """Tells the status tracker what happened; `_flush_status` writes it."""
        if self._status is None:
            return
        try:
            self._status.saw_event(event)
            for command in commands:
                self._status.saw_command(command)
        except Exception:  # the status is for show: it never stops a job
            log.exception("updating the status file failed")

    def _flush_status(self) -> None:
        if self._status is None:
            return
        try:
            self._status.flush(self._clock())
        except Exception:  # the status is for show: it never stops a job
            log.exception("updating the status file failed")

    def _execute(self, command: c.Command, now: float) -> None:
        match command:
            case (
                c.ConnectMqtt()
                | c.SubscribeJobTopics()
                | c.RequestPendingJobs()
                | c.DescribeJob()
                | c.GetPackageShadow()
                | c.UpdatePackageShadow()
            ):
                self._mqtt.execute(command)
            case c.UpdateJob():
                self._mqtt.execute(command)
                if command.status is JobStatus.FAILED:
                    details = dict(command.status_details)
                    self._services.job_failed(
                        command.job_id, details.get("state", ""), details.get("message", "")
                    )
            case c.AskHookInfo() | c.CallHook() | c.CancelHook():
                self._hooks.execute(command)
            case c.StartDownload() | c.CancelDownload() | c.DiscardDownload():
                self._downloader.execute(command)
            case c.SetTimer(timer=kind, token=token, delay=delay):
                self._timers.set(kind, token, now + delay)
                # A job's retry: its driver gets the command again when the timer fires (the
                # job worker stays for it rather than starting again for every retry).
                if kind is TimerKind.HOOK_RETRY:
                    self._hooks.expect(delay)
                elif kind is TimerKind.DOWNLOAD_RETRY:
                    self._downloader.expect(delay)
            case c.Persist(record=record):
                self._journal.save(record)
            case c.Log(level=level, message=message, job_id=job_id):
                prefix = f"[{job_id}] " if job_id else ""
                log.log(_LOG_LEVELS[level], "%s%s", prefix, message)
            case c.SignalReady():
                self._services.notify("READY=1")
            case c.Exit():
                self._exit = True
            case _:
                assert_never(command)

    def _shutdown_drivers(self) -> None:
        for name, close in (
            ("hooks", self._hooks.close),
            ("download", self._downloader.close),
            ("mqtt", self._mqtt.stop),
        ):
            try:
                close()
            except Exception:
                log.exception("stopping the %s driver failed", name)
