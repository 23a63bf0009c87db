"""upparat.io.child's parent side, against a fake worker: a small module this file writes,
which speaks the pipe protocol and does what each call's meta says (answer, hang, die,
send garbage). With the hook worker's ledger, as the daemon runs it.

What is checked is what the child's journal and the events show, never how long
anything took: the child is the one that ran what is in flight, a child with nothing in
flight is told to stop after the linger, every call in flight when it ends gets one
event, and nothing of a cancelled call comes after the cancel.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.hooks.test_client import Recorder, call_hook
from upparat.core.commands import AskHookInfo, CancelHook
from upparat.core.events import HookFinished, HookInfoFailed, HookSuccess, HookUnavailable
from upparat.core.model import CallId, HookKind
from upparat.devstack.faults import pid_alive, wait_until
from upparat.hooks import worker
from upparat.hooks.worker import HookCommand, HookLedger
from upparat.io.child import (
    COMMAND_MODULES,
    EVENT_MODULES,
    ChildDriver,
    Garbage,
    decode,
    read_frame,
    write_frame,
)

FAKE = '''\
"""A fake worker: upparat.io.child's protocol, steered by each call's meta."""
import os
import sys
from pathlib import Path

from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import (
    DownloadProgressed, HookFinished, HookProgressed, HookServerInfo, HookSuccess,
)
from upparat.core.model import DownloadId
from upparat.io.child import COMMAND_MODULES, Stop, decode, read_frame, write_frame


def main():
    commands, events = sys.stdin.buffer, sys.stdout.buffer
    journal = Path(decode(read_frame(commands), COMMAND_MODULES).setup)

    def note(what):
        with journal.open("a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    def answer(call):
        result = HookSuccess(message=str(os.getpid()))
        write_frame(events, HookFinished(call_id=call.call_id, hook=call.hook, result=result))

    note("start")
    late = {}
    while (frame := read_frame(commands)) is not None:
        message = decode(frame, COMMAND_MODULES)
        if isinstance(message, Stop):
            note("stop")
            return 0
        if isinstance(message, AskHookInfo):
            write_frame(events, HookServerInfo(hooks=frozenset(), server_name="fake"))
        elif isinstance(message, CancelHook):
            if message.call_id in late:  # its result crossed the cancel
                answer(late.pop(message.call_id))
        elif isinstance(message, CallHook):
            what = message.context.meta
            if what == "answer":
                answer(message)
            elif what == "progress":
                write_frame(events, HookProgressed(call_id=message.call_id, line="working"))
            elif what == "late":
                late[message.call_id] = message
            elif what == "die":
                print("Traceback (most recent call last):", file=sys.stderr)
                print("fake: dying as told", file=sys.stderr, flush=True)
                os._exit(3)
            elif what == "garbage":
                events.write(b"this is no frame\\n")
                events.flush()
            elif what == "evil":
                write_frame(events, Path("/"))  # a class no event holds
            elif what == "download":
                write_frame(events, DownloadProgressed(download_id=DownloadId(1), bytes_done=1))
            # "hang": nothing, until the end
    note("eof")
    return 0
'''


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake worker's journal; the module is importable here and in the child."""
    (tmp_path / "fake_worker.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "journal"


class Driven:
    """A ChildDriver running the fake worker with the hook ledger, and what it sent."""

    def __init__(
        self,
        journal: Path,
        *,
        linger: float = 30.0,
        hold: float = 60.0,
        python: str | None = None,
    ) -> None:
        self.journal = journal
        self.events = Recorder()
        self.lines: list[bytes] = []
        self.driver: ChildDriver[HookCommand] = ChildDriver(
            name="hook worker",
            module="fake_worker",
            setup=str(journal),
            ledger=HookLedger(info_timeout=5.0),
            on_event=self.events,
            linger=linger,
            hold=hold,
            stderr=self.lines.append,
            **({"python": python} if python is not None else {}),
        )

    def pid(self) -> int | None:
        """The child taking commands now (a call: mypy must not keep a narrowed value)."""
        return self.driver.pid

    def notes(self) -> list[str]:
        return self.journal.read_text().splitlines() if self.journal.exists() else []

    def wait_note(self, note: str) -> None:
        wait_until(lambda: note in self.notes(), f"{note!r} in the fake's journal")


@pytest.fixture
def driven(journal: Path) -> Iterator[Driven]:
    made = Driven(journal)
    yield made
    made.driver.close()


def answered_by(event: HookFinished) -> int:
    assert isinstance(event.result, HookSuccess), event
    return int(event.result.message)


def test_one_child_runs_the_calls_of_a_busy_spell_and_stops_after_the_linger(
    journal: Path,
) -> None:
    made = Driven(journal, linger=0.0)
    try:
        hanging, quick = call_hook(HookKind.INSTALL, "hang"), call_hook(HookKind.VERSION, "answer")
        made.driver.execute(hanging)
        made.driver.execute(quick)
        pid = answered_by(made.events.finished(quick.call_id))
        # The first call is still in flight: even with no linger at all, the child stays.
        assert made.pid() == pid
        assert made.notes() == [f"start {pid}"]
        made.driver.execute(CancelHook(call_id=hanging.call_id))
        # Nothing in flight now: the child is told to stop (not killed) and ends.
        made.wait_note(f"stop {pid}")
        wait_until(lambda: not pid_alive(pid), "the child to exit")
        assert made.pid() is None
        # The next call starts a new child.
        again = call_hook(HookKind.VERSION, "answer")
        made.driver.execute(again)
        second = answered_by(made.events.finished(again.call_id))
        assert second != pid
        # (With no linger, the second one may already be stopping too.)
        assert made.notes()[:3] == [f"start {pid}", f"stop {pid}", f"start {second}"]
        assert made.events.of_call(hanging.call_id) == []
    finally:
        made.driver.close()
    made.wait_note(f"stop {second}")


def answered_once(made: Driven) -> int:
    """The PID of the child that answered one call, made now."""
    call = call_hook(HookKind.DOWNLOAD, "answer")
    made.driver.execute(call)
    return answered_by(made.events.finished(call.call_id))


def test_a_child_is_kept_for_a_command_expected_within_the_hold(journal: Path) -> None:
    made = Driven(journal, linger=0.5, hold=60.0)
    try:
        pid = answered_once(made)
        made.driver.expect(30.0)  # the core's retry timer: called again in 30 s
        # A child nobody expects is told to stop after the linger; this one stays for the
        # retry, and runs it.
        time.sleep(1.5)
        assert made.notes() == [f"start {pid}"]
        assert answered_once(made) == pid
        # The command came: the expectation is over, and the linger applies again.
        made.wait_note(f"stop {pid}")
    finally:
        made.driver.close()


def test_a_child_is_not_kept_for_a_command_expected_beyond_the_hold(journal: Path) -> None:
    made = Driven(journal, linger=0.5, hold=60.0)
    try:
        pid = answered_once(made)
        made.driver.expect(61.0)  # started again then: its memory is back meanwhile
        made.wait_note(f"stop {pid}")
    finally:
        made.driver.close()


def test_calls_back_to_back_share_the_child_while_it_lingers(driven: Driven) -> None:
    pids = set()
    for _ in range(3):
        call = call_hook(HookKind.VERSION, "answer")
        driven.driver.execute(call)
        pids.add(answered_by(driven.events.finished(call.call_id)))
    assert len(pids) == 1
    assert driven.pid() in pids


def test_a_child_that_dies_ends_every_call_in_flight_once_as_unreachable(
    driven: Driven,
) -> None:
    calls = [call_hook(HookKind.INSTALL, meta) for meta in ("hang", "progress", "die")]
    for call in calls:
        driven.driver.execute(call)
    for call in calls:
        finished = driven.events.finished(call.call_id)
        assert isinstance(finished.result, HookUnavailable), finished
        assert "exited with status 3: fake: dying as told" in finished.result.detail
    # Its stderr reached the daemon's (here: the test's) log as it was written.
    assert b"fake: dying as told\n" in driven.lines
    # The next call gets a new child; by then the dead one's calls ended exactly once.
    after = call_hook(HookKind.VERSION, "answer")
    driven.driver.execute(after)
    driven.events.finished(after.call_id)
    for call in calls:
        assert len(driven.events.of_call(call.call_id)) == 1 + (call.context.meta == "progress")


def test_a_killed_child_ends_its_calls_naming_the_signal(driven: Driven) -> None:
    hanging = call_hook(HookKind.INSTALL, "hang")
    driven.driver.execute(hanging)
    pid = driven.pid()
    assert pid is not None
    driven.wait_note(f"start {pid}")
    os.kill(pid, 9)
    finished = driven.events.finished(hanging.call_id)
    assert finished.result == HookUnavailable(
        detail=f"hook worker (pid {pid}) was killed by signal 9 (SIGKILL)"
    )


@pytest.mark.parametrize(
    ("meta", "what"),
    [
        ("garbage", "a frame of"),
        ("evil", "a pathlib.PosixPath, which no message holds"),
        ("download", "a DownloadProgressed from the hook client"),
    ],
)
def test_garbage_on_the_childs_stdout_kills_it_and_ends_its_calls(
    driven: Driven, meta: str, what: str
) -> None:
    hanging, bad = call_hook(HookKind.INSTALL, "hang"), call_hook(HookKind.VERSION, meta)
    driven.driver.execute(hanging)
    pid = driven.pid()
    driven.driver.execute(bad)
    for call in (hanging, bad):
        finished = driven.events.finished(call.call_id)
        assert isinstance(finished.result, HookUnavailable), finished
        assert finished.result.detail.startswith(
            f"hook worker (pid {pid}) sent garbage on its stdout ({what}"
        ), finished.result.detail
        assert finished.result.detail.endswith("; killed")
    assert pid is not None
    wait_until(lambda: not pid_alive(pid), "the broken child to be gone")


def test_a_result_that_crosses_the_cancel_never_reaches_the_core(driven: Driven) -> None:
    late = call_hook(HookKind.INSTALL, "late")
    driven.driver.execute(late)
    driven.driver.execute(CancelHook(call_id=late.call_id))  # the fake answers it now
    after = call_hook(HookKind.VERSION, "answer")
    driven.driver.execute(after)
    # The pipe keeps order: the late answer was read before this one, and dropped.
    driven.events.finished(after.call_id)
    assert driven.events.of_call(late.call_id) == []


def test_a_cancel_of_a_call_not_in_flight_starts_no_child(driven: Driven) -> None:
    driven.driver.execute(CancelHook(call_id=call_hook(HookKind.VERSION).call_id))
    assert driven.pid() is None
    assert not driven.journal.exists()


def test_a_child_that_overstays_a_deadline_is_killed_and_its_calls_end(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "START_ALLOWANCE", 0.0)
    made = Driven(journal)
    try:
        hanging = call_hook(HookKind.READY, "hang", timeout=0.1)
        made.driver.execute(hanging)
        pid = made.pid()
        finished = made.events.finished(hanging.call_id)
        assert finished.result == HookUnavailable(
            detail=f"hook worker (pid {pid}) gave no answer in time; killed"
        )
    finally:
        made.driver.close()


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_child_that_fails_to_start_fails_get_info_with_its_last_error_line(
    tmp_path: Path, journal: Path
) -> None:
    python = fake_python(
        tmp_path, 'echo "Traceback:" >&2; echo "ImportError: no module named grpc" >&2; exit 1'
    )
    made = Driven(journal, python=python)
    made.driver.execute(AskHookInfo())
    failed = made.events.wait_for(HookInfoFailed)
    assert failed.detail.startswith("hook worker (pid ")
    assert failed.detail.endswith(") exited with status 1: ImportError: no module named grpc")
    made.driver.close()


def test_a_python_that_cannot_be_run_ends_the_call_it_was_started_for(
    tmp_path: Path, journal: Path
) -> None:
    made = Driven(journal, python=str(tmp_path / "no-python"))
    call = call_hook(HookKind.VERSION, "answer")
    made.driver.execute(call)
    made.driver.execute(AskHookInfo())
    finished = made.events.finished(call.call_id)
    assert isinstance(finished.result, HookUnavailable)
    assert finished.result.detail.startswith(
        f"cannot start hook worker ({tmp_path / 'no-python'} -m fake_worker)"
    )
    assert made.events.wait_for(HookInfoFailed).detail.startswith("cannot start hook worker")
    made.driver.close()


def test_close_stops_the_child_sends_nothing_more_and_reaps_it(driven: Driven) -> None:
    hanging = call_hook(HookKind.INSTALL, "hang")
    driven.driver.execute(hanging)
    pid = driven.pid()
    assert pid is not None
    driven.wait_note(f"start {pid}")
    driven.driver.close()
    assert driven.notes() == [f"start {pid}", f"stop {pid}"]
    # Reaped, not a zombie: a zombie still answers signal 0.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert driven.events.events == []


def test_a_child_whose_stdin_ends_without_stop_exits(tmp_path: Path) -> None:
    """What a SIGKILLed daemon leaves: its job worker, busy with a GetInfo, reads the end
    of its stdin and goes (serve's rule, in the real hook worker)."""
    code = textwrap.dedent(
        f"""
        import os
        from upparat.core.commands import AskHookInfo
        from upparat.config import DownloadConfig
        from upparat.worker import job_worker
        driver = job_worker("unix://{tmp_path}/absent.sock", DownloadConfig(), None, print)
        driver.execute(AskHookInfo())
        print(driver.pid, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    pid = int(done.stdout.split()[-1])
    wait_until(lambda: not pid_alive(pid), "the orphaned job worker to exit")


def test_a_call_after_close_ends_at_once_and_nothing_of_before_comes(driven: Driven) -> None:
    hanging = call_hook(HookKind.INSTALL, "hang")
    driven.driver.execute(hanging)
    driven.driver.close()
    late = call_hook(HookKind.VERSION, "answer")
    driven.driver.execute(late)
    assert driven.events.finished(late.call_id).result == HookUnavailable(
        detail="hook worker is closed"
    )
    assert driven.events.of_call(hanging.call_id) == []
    assert driven.pid() is None


# --- the codec -------------------------------------------------------------------------------


class ByName:
    """Pickles as Debian's Python 3.11 pickles an enum member: getattr(cls, name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return getattr, (HookKind, self.name)


def pickled_by_name(name: str) -> bytes:
    hook = cast(HookKind, ByName(name))
    return pickle.dumps(HookFinished(call_id=CallId(1), hook=hook, result=HookUnavailable()))


def test_an_enum_member_pickled_by_name_decodes_and_nothing_else_is_reached_that_way() -> None:
    event = HookFinished(call_id=CallId(1), hook=HookKind.INSTALL, result=HookUnavailable())
    assert decode(pickled_by_name("INSTALL"), EVENT_MODULES) == event
    with pytest.raises(Garbage, match="getattr of '__init__', not an enum member"):
        decode(pickled_by_name("__init__"), EVENT_MODULES)


def test_a_frame_is_a_length_and_a_pickle_and_anything_else_is_garbage() -> None:
    stream = io.BytesIO()
    write_frame(stream, AskHookInfo())
    stream.seek(0)
    frame = read_frame(stream)
    assert frame is not None
    assert decode(frame, COMMAND_MODULES) == AskHookInfo()
    assert read_frame(stream) is None
    with pytest.raises(Garbage, match="a frame of"):
        read_frame(io.BytesIO(b"garbage!"))
    assert read_frame(io.BytesIO(b"\0\0\0\x10short")) is None  # the writer died mid-frame
    with pytest.raises(Garbage, match="not a pickle"):
        decode(b"\x80\x05garbage", EVENT_MODULES)
    with pytest.raises(Garbage, match=r"a posix\.system, which no message holds"):
        decode(pickle.dumps(os.system), EVENT_MODULES)
