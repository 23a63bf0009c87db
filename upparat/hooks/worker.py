"""The hook side of the daemon's job worker (upparat.worker): the gRPC hook client
(upparat.hooks.client, unchanged) in a child process that runs only while it has work
(upparat.io.child), so the daemon never loads gRPC or protobuf, at start (GetInfo, the
`$package` version report) or after jobs.

Owns the parent's ledger of hook calls: what a call in flight is owed when the child ends
before answering (a `CallHook`: `HookUnavailable`, as from a hook server that cannot be
reached, which the core waits for and calls again; an `AskHookInfo`: `HookInfoFailed`),
and the child's builder. Imports neither grpc nor protobuf outside `build_client`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import (
    Event,
    HookFinished,
    HookInfoFailed,
    HookProgressed,
    HookServerInfo,
    HookUnavailable,
)
from upparat.core.model import CallId
from upparat.hooks.values import clean_line
from upparat.io.child import (
    START_ALLOWANCE,
    Driver,
    Garbage,
    Unexpected,
)

log = logging.getLogger("upparat.hooks")

HookCommand = AskHookInfo | CallHook | CancelHook


@attrs.frozen(kw_only=True)
class HookSetup:
    """What the child's client needs: the daemon's config, not the config file."""

    endpoint: str
    info_timeout: float


@attrs.define
class HookLedger:
    """The hook calls and GetInfos the child has not answered, with their deadlines."""

    info_timeout: float
    calls: dict[CallId, tuple[CallHook, float]] = attrs.field(factory=dict)
    infos: list[float] = attrs.field(factory=list)
    """Deadlines of the GetInfos asked, oldest first (they carry no id; each gets one answer)."""

    def sent(self, command: HookCommand, now: float, *, running: bool) -> bool:
        match command:
            case AskHookInfo():
                self.infos.append(now + self.info_timeout + START_ALLOWANCE)
            case CallHook(call_id=call_id, timeout=timeout):
                # A second CallHook of a running id is a core bug the client logs; the
                # running call still answers once.
                self.calls.setdefault(call_id, (command, now + timeout + START_ALLOWANCE))
            case CancelHook(call_id=call_id):
                if self.calls.pop(call_id, None) is None:
                    log.debug("cancel of call %d: not running", call_id)
                    return False
        return True

    def received(self, message: object) -> Event | Unexpected | None:
        match message:
            case HookProgressed(call_id=call_id):
                return message if call_id in self.calls else None
            case HookFinished(call_id=call_id):
                return message if self.calls.pop(call_id, None) is not None else None
            case HookServerInfo() | HookInfoFailed():
                if not self.infos:
                    return Unexpected("a GetInfo answer nobody asked for")
                self.infos.pop(0)
                return message
            case _:
                return Unexpected(f"a {type(message).__name__} from the hook client")

    def busy(self) -> bool:
        return bool(self.calls or self.infos)

    def deadline(self) -> float | None:
        deadlines = [deadline for _, deadline in self.calls.values()] + self.infos
        return min(deadlines, default=None)

    def lost(self, why: str) -> list[Event]:
        events: list[Event] = [
            HookFinished(
                call_id=call_id, hook=command.hook, result=HookUnavailable(detail=clean_line(why))
            )
            for call_id, (command, _) in sorted(self.calls.items())
        ]
        events += [HookInfoFailed(detail=clean_line(why, 256)) for _ in self.infos]
        self.calls.clear()
        self.infos.clear()
        return events

    def ended(self) -> None:
        pass


# --- the child ---------------------------------------------------------------------------


def hook_command(message: object) -> HookCommand:
    """`message` as a hook command; `Garbage` if it is none."""
    if not isinstance(message, AskHookInfo | CallHook | CancelHook):
        raise Garbage(f"a {type(message).__name__}, not a hook command")
    return message


def build_client(setup: object, on_event: Callable[[Event], None]) -> Driver[HookCommand]:
    """In the child: the hook client for `setup` (a `HookSetup`)."""
    if not isinstance(setup, HookSetup):
        raise TypeError(f"hook worker: expected HookSetup, got {type(setup).__name__}")
    from upparat.hooks.client import HookClient

    return HookClient(setup.endpoint, on_event, info_timeout=setup.info_timeout)
