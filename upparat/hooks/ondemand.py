"""The daemon's hook driver without gRPC until a job needs it: the start-up GetInfo runs in a
short-lived child process (``python -m upparat.hooks.info``), and the gRPC client
(upparat.hooks.client) is imported and built at the first other hook command.

Why: importing grpc and the stubs, and one channel's use, keep ~12 MB resident for good
(cygrpc's pages and heap, bench/RESULTS.md), and a device may wait months for its first
job. Owns the child (started, read, killed on close, always reaped); decides nothing:
the child's answer becomes the same `HookServerInfo` / `HookInfoFailed` the client sends.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import Event, HookInfoFailed, HookServerInfo
from upparat.hooks.values import clean_line, info_event, parse_answer

log = logging.getLogger("upparat.hooks")

CHILD_START_ALLOWANCE = 20.0
"""Seconds the child may take to start, on top of GetInfo's own timeout: a Python start
with grpc's import (~0.3 s here, a few seconds on a small board that is busy booting)."""


class HookDriver(Protocol):
    def execute(self, command: AskHookInfo | CallHook | CancelHook) -> None: ...

    def close(self) -> None: ...


class HookClientOnDemand:
    """The runtime's hook driver. The first `AskHookInfo`, sent at start before any hook
    call, is answered by a child process; every other command goes to the client that
    `make_client` builds (importing grpc) the first time one comes. GetInfo when a job
    begins runs in the daemon: that job loads gRPC anyway."""

    def __init__(
        self,
        make_client: Callable[[], HookDriver],
        on_event: Callable[[Event], None],
        *,
        target: str,
        info_timeout: float,
        python: str = sys.executable,
    ) -> None:
        self._make_client = make_client
        self._on_event = on_event
        self._target = target
        self._info_timeout = info_timeout
        self._python = python
        self._client: HookDriver | None = None
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._asked_in_child = False
        self._closed = False

    def execute(self, command: AskHookInfo | CallHook | CancelHook) -> None:
        if self._client is None:
            match command:
                case AskHookInfo() if not self._asked_in_child:
                    self._asked_in_child = True
                    threading.Thread(
                        target=self._ask_in_child, name="hook-info", daemon=True
                    ).start()
                    return
                case CancelHook(call_id=call_id):
                    # Nothing runs before the client exists, so there is nothing to cancel.
                    log.debug("cancel of call %d: not running", call_id)
                    return
                case _:
                    self._client = self._make_client()
        self._client.execute(command)

    def close(self) -> None:
        """Kills a running GetInfo child (its answer is not sent) and closes the client."""
        with self._lock:
            self._closed = True
            child = self._child
        if child is not None:
            child.kill()
            child.wait(5.0)  # reaped now: the daemon may exit before the reading thread runs
        if self._client is not None:
            self._client.close()

    def _ask_in_child(self) -> None:
        event = self._child_answer()
        with self._lock:
            if self._closed or event is None:
                return  # after close() nobody waits for the answer
        try:
            self._on_event(event)
        except Exception:
            log.exception("event handler failed on %s", type(event).__name__)

    def _child_answer(self) -> HookServerInfo | HookInfoFailed | None:
        argv = [
            self._python,
            "-m",
            "upparat.hooks.info",
            self._target,
            "--timeout",
            repr(self._info_timeout),
        ]
        limit = self._info_timeout + CHILD_START_ALLOWANCE
        with self._lock:
            if self._closed:
                return None
            try:
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            except OSError as e:
                return HookInfoFailed(detail=clean_line(f"cannot start {argv[0]}: {e}", 256))
            self._child = child
        try:
            out, err = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return HookInfoFailed(detail=f"GetInfo at {self._target}: no answer in {limit:.0f} s")
        finally:
            with self._lock:
                self._child = None
        answer = parse_answer(out.decode("utf-8", "replace"))
        if answer is not None:
            return info_event(answer, self._target)
        # A bug or a broken installation; the core logs the detail and asks again later.
        why = err.decode("utf-8", "replace").strip().splitlines()
        detail = f"GetInfo process {' '.join(argv[1:3])} exited with status {child.returncode}"
        detail += f": {why[-1]}" if why else " without an answer"
        return HookInfoFailed(detail=clean_line(detail, 256))
