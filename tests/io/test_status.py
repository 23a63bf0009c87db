"""The local status file and `upparat status`: atomic writes, the documented format, the CLI.

The terminal view is read from a real pseudo-terminal while a writer moves the
percentage; the plain and JSON views from a pipe.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from upparat.cli import status_command
from upparat.devstack.procs import stop_process
from upparat.io import status
from upparat.io.status import (
    Connection,
    LastResult,
    Progress,
    StatusFile,
    StatusMissing,
    StatusPhase,
    StatusSnapshot,
    StatusUnreadable,
    StatusWriteFailed,
)

T = 1_764_763_200.0  # 2025-12-03T12:00:00Z

SNAP = StatusSnapshot(
    phase=StatusPhase.DOWNLOADING,
    job_id="upparat_fw_2_0_0",
    progress=Progress(done_bytes=3 * 1024 * 1024, total_bytes=12 * 1024 * 1024),
    last_result=LastResult(
        job_id="upparat_fw_1_9", status="FAILED", state="rolled_back", message="1.9 -> 1.8", at=T
    ),
    running_version="1.0.0",
    connection=Connection.CONNECTED,
    updated_at=T + 60,
)


def downloading(percent: int, at: float = T) -> StatusSnapshot:
    return attrs.evolve(
        SNAP, progress=Progress(percent=percent, message=f"{percent}% fetched"), updated_at=at
    )


def test_the_file_holds_the_documented_json(tmp_path: Path) -> None:
    path = tmp_path / "run" / "status.json"
    snap = attrs.evolve(SNAP, reported_version="0.9.0", reported_attributes=(("booted_slot", "A"),))
    assert StatusFile(path).write(snap) is None
    assert json.loads(path.read_text()) == {
        "format": 1,
        "updatedAt": "2025-12-03T12:01:00Z",
        "phase": "downloading",
        "jobId": "upparat_fw_2_0_0",
        "progress": {
            "percent": 25,
            "doneBytes": 3145728,
            "totalBytes": 12582912,
            "message": None,
        },
        "lastResult": {
            "jobId": "upparat_fw_1_9",
            "status": "FAILED",
            "state": "rolled_back",
            "message": "1.9 -> 1.8",
            "at": "2025-12-03T12:00:00Z",
        },
        "runningVersion": "1.0.0",
        "reportedVersion": "0.9.0",
        "reportedAttributes": {"booted_slot": "A"},
        "connection": "connected",
    }
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ["status.json"]  # no temp file left behind
    back = status.read(path)
    assert SNAP.progress is not None
    assert back == attrs.evolve(snap, progress=attrs.evolve(SNAP.progress, percent=25))


def test_an_idle_daemon_has_nulls_not_missing_keys(tmp_path: Path) -> None:
    idle = StatusSnapshot(phase=StatusPhase.IDLE, connection=Connection.CONNECTING, updated_at=T)
    StatusFile(tmp_path / "s.json").write(idle)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert (doc["jobId"], doc["progress"], doc["lastResult"]) == (None, None, None)
    assert status.read(tmp_path / "s.json") == idle


def test_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    file = StatusFile(path)
    file.write(downloading(0))
    bad: list[object] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            found = status.read(path)
            if not isinstance(found, StatusSnapshot):
                bad.append(found)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(300):
            assert file.write(attrs.evolve(downloading(n % 101), job_id="j" * (1 + n % 60))) is None
    finally:
        done.set()
        thread.join()
    assert bad == []


def test_a_failed_write_is_a_value_and_leaves_nothing_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    found = StatusFile(blocker / "status.json").write(SNAP)
    assert isinstance(found, StatusWriteFailed)
    assert "cannot write" in found.reason
    # The rename fails (a directory is in the way): the temp file is removed again.
    (tmp_path / "run" / "status.json").mkdir(parents=True)
    found = StatusFile(tmp_path / "run" / "status.json").write(SNAP)
    assert isinstance(found, StatusWriteFailed)
    assert os.listdir(tmp_path / "run") == ["status.json"]
    assert StatusFile(blocker).remove() is None
    assert StatusFile(blocker).remove() is None  # already gone: fine
    assert not blocker.exists()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"format": 2}', "format 2, this upparat reads format 1"),
        ('{"format": 1, "phase": "flying"}', "phase must be one of idle, checking_version"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "s.json").write_text(text)
    found = status.read(tmp_path / "s.json")
    assert isinstance(found, StatusUnreadable)
    assert reason in found.reason
    assert status.read(tmp_path / "none.json") == StatusMissing(path=tmp_path / "none.json")


def test_every_field_is_checked_when_read(tmp_path: Path) -> None:
    doc = json.loads(status.encode(SNAP))
    for key, value, reason in [
        ("updatedAt", 5, "updatedAt must be a UTC time"),
        ("connection", "maybe", "connection must be one of"),
        ("progress", {"percent": -1}, "percent must be a non-negative integer"),
        ("lastResult", {"status": "FAILED"}, "jobId must be a string"),
        ("runningVersion", 1, "runningVersion must be a string"),
    ]:
        (tmp_path / "s.json").write_text(json.dumps({**doc, key: value}))
        found = status.read(tmp_path / "s.json")
        assert isinstance(found, StatusUnreadable), key
        assert reason in found.reason


def test_the_default_place_is_the_runtime_directory_else_the_state_dir(tmp_path: Path) -> None:
    state = Path("/var/lib/upparat")
    absent = tmp_path / "no-unit"
    assert status.default_path({}, state, absent) == state / "status.json"
    runtime = {"RUNTIME_DIRECTORY": "/run/upparat-daemon:/run/other"}
    assert status.default_path(runtime, state, absent) == Path("/run/upparat-daemon/status.json")
    relative = {"RUNTIME_DIRECTORY": "relative"}
    assert status.default_path(relative, state, absent) == state / "status.json"
    # From a shell (no $RUNTIME_DIRECTORY) next to the running unit: the unit's directory.
    assert status.default_path({}, state, tmp_path) == tmp_path / "status.json"


def test_the_unit_gives_the_daemon_the_directory_upparat_status_reads() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "upparat.service").read_text()
    assert f"RuntimeDirectory={status.UNIT_RUNTIME_DIR.name}" in unit.splitlines()
    assert "RuntimeDirectoryMode=0755" in unit.splitlines()


def test_plain_and_terminal_renderings() -> None:
    assert status.render_plain(SNAP) == (
        "2025-12-03T12:01:00Z phase=downloading job=upparat_fw_2_0_0 progress=25%"
        " bytes=3145728/12582912 connection=connected version=1.0.0"
        " last=upparat_fw_1_9:FAILED/rolled_back"
    )
    assert status.render_tty(SNAP).splitlines() == [
        "downloading  upparat_fw_2_0_0",
        "[#######.......................]  25%  3.0 / 12.0 MiB",
        "running 1.0.0, connected",
        "last job upparat_fw_1_9: FAILED (rolled_back) at 2025-12-03T12:00:00Z",
        "updated 2025-12-03T12:01:00Z",
    ]
    installing = attrs.evolve(
        SNAP, phase=StatusPhase.INSTALLING, progress=Progress(percent=100, message="done\x1b[2J")
    )
    lines = status.render_tty(installing).splitlines()
    assert lines[1] == "[" + "#" * 30 + "] 100%"
    assert lines[2] == "done [2J"  # no escape sequence from a hook reaches the terminal
    restarting = attrs.evolve(SNAP, phase=StatusPhase.RESTARTING)
    assert "progress=" not in status.render_plain(restarting)
    assert "#" not in status.render_tty(restarting)


# ---- the command ------------------------------------------------------------------------


def test_status_once_prints_a_line_or_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "status.json"
    assert status_command(["--file", str(path)]) == 1
    assert f"no status file at {path}: is the daemon running?" in capsys.readouterr().err
    StatusFile(path).write(SNAP)
    assert status_command(["--file", str(path)]) == 0
    assert capsys.readouterr().out == status.render_plain(SNAP) + "\n"
    assert status_command(["--file", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == status.to_json(SNAP)


def test_status_finds_the_file_from_the_daemons_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    config = tmp_path / "upparat.conf"
    config.write_text(
        f"[service]\nstate_dir = {tmp_path / 'state'}\n[broker]\nthing_name = t\n"
        "[hooks]\nendpoint = unix:///tmp/nothing.sock\n"
    )
    StatusFile(tmp_path / "state" / "status.json").write(SNAP)
    assert status_command(["-c", str(config)]) == 0
    assert "phase=downloading" in capsys.readouterr().out
    assert status_command(["-c", str(tmp_path / "missing.conf")]) == 2


def test_watch_on_a_pipe_prints_a_line_per_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "status.json"
    file = StatusFile(path)
    steps = [downloading(10), downloading(10), downloading(40), downloading(80)]

    def sleep(_: float) -> None:
        if not steps:
            raise KeyboardInterrupt
        # The same content written again is a new file (re-read) but no new line.
        file.write(steps.pop(0))

    assert status_command(["--file", str(path), "--watch"], sleep=sleep) == 130
    out, err = capsys.readouterr()
    assert out.splitlines() == [status.render_plain(downloading(p)) for p in (10, 40, 80)]
    assert err.count("no status file at") == 1


def test_watch_json_prints_one_object_per_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "status.json"
    StatusFile(path).write(downloading(5))
    steps = [downloading(6)]

    def sleep(_: float) -> None:
        if not steps:
            raise KeyboardInterrupt
        StatusFile(path).write(steps.pop(0))

    assert status_command(["--file", str(path), "--watch", "--json"], sleep=sleep) == 130
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["progress"]["percent"] for line in lines] == [5, 6]


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[bytes]]]:
    """`upparat status --watch` on a pseudo-terminal; yields (file, pty master fd, process)."""
    path = tmp_path / "status.json"
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "upparat.cli", "status", "--file", str(path), "--watch",
         "--interval", "0.05"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    try:
        yield path, master, proc
    finally:
        stop_process(proc)
        os.close(master)


def read_until(master: int, needle: str, timeout: float = 15.0) -> str:
    """Everything the terminal showed until `needle` appeared (fails after `timeout`)."""
    screen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in screen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} never appeared; the terminal showed {screen!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                screen += os.read(master, 65536)
            except OSError:  # EIO: the process is gone
                raise AssertionError(f"the watcher ended; it showed {screen!r}") from None
    return screen.decode(errors="replace")


def test_watch_on_a_terminal_draws_a_moving_progress_bar(
    watcher: tuple[Path, int, subprocess.Popen[bytes]],
) -> None:
    path, master, proc = watcher
    shown = read_until(master, "no status file at")  # said once, then it waits for one
    assert "Traceback" not in shown
    file = StatusFile(path)
    file.write(downloading(10))
    shown = read_until(master, "[###...........................]  10%")
    assert "\x1b[H\x1b[2J" in shown  # a redraw, not a scrolling log
    assert "downloading  upparat_fw_2_0_0" in shown
    file.write(downloading(40))
    read_until(master, "[############..................]  40%")
    file.write(attrs.evolve(downloading(75), phase=StatusPhase.INSTALLING))
    shown = read_until(master, "[######################........]  75%")
    assert "installing  upparat_fw_2_0_0" in shown
    assert proc.poll() is None  # it keeps watching
