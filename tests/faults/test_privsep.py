"""Privilege separation as the systemd units set it up: the daemon unprivileged, the hook
server root, the socket 0660 in a setgid 0750 directory of the daemon's group.

The job succeeds with the daemon as its own user (it downloads; root installs), and a
third user cannot even reach the socket. Users are created with useradd and removed
with userdel; the daemon runs an interpreter the user can execute (the venv's may live
under /root, which the user cannot enter) with the venv's packages.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import StackFactory
from tests.faults.device import NEW, Device, MiB, create_update
from tests.faults.observe import assert_ends_once, finished, outcome
from upparat.devstack.faults import proc_status, python_for, start_daemon_as

JOB = "upparat_privsep"
USERADD = (
    "useradd",
    "--system",
    "--user-group",
    "--no-create-home",
    "--home-dir",
    "/nonexistent",
    "--shell",
    "/usr/sbin/nologin",
)

PROBE = """\
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
else:
    print("connected")
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """useradd/userdel, retried while another process holds /etc/passwd's lock."""
    for _ in range(20):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode == 0 or "lock" not in done.stderr:
            return done
        time.sleep(0.25)
    return done


@pytest.fixture
def users() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """(the daemon's user, a third user), each with a group of its own; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd (shadow-utils)")
    suffix = secrets.token_hex(3)
    names = (f"upp-d-{suffix}", f"upp-t-{suffix}")
    created: list[str] = []
    try:
        for name in names:
            done = _run([*USERADD, name])
            assert done.returncode == 0, done.stderr
            created.append(name)
        yield pwd.getpwnam(names[0]), pwd.getpwnam(names[1])
    finally:
        for name in created:
            done = _run(["userdel", name])
            assert done.returncode == 0, done.stderr
            _run(["groupdel", name])  # gone with the user already, unless USERGROUPS_ENAB=no


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work directory other users can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="upparat-privsep-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def probe(python: str, user: pwd.struct_passwd, socket_path: Path) -> str:
    done = subprocess.run(
        ["runuser", "-u", user.pw_name, "--", python, "-c", PROBE, str(socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_unprivileged_daemon_root_hook_server_third_user_locked_out(
    users: tuple[pwd.struct_passwd, pwd.struct_passwd],
    shared_dir: Path,
    make_stack: StackFactory,
) -> None:
    daemon_user, third = users
    python = python_for(daemon_user)
    if python is None:
        pytest.skip("no interpreter of this Python version that an unprivileged user can run")
    group = daemon_user.pw_gid
    device = Device(shared_dir / "device")
    workdir = shared_dir / "stack"
    workdir.mkdir(mode=0o755)
    stack = make_stack(device, workdir=workdir, start=False)
    for own in (stack.download_dir, stack.state_dir):
        own.mkdir(mode=0o700)
        os.chown(own, daemon_user.pw_uid, group)
    config = stack.write_config()
    os.chown(config, 0, group)
    config.chmod(0o640)
    # What the hook server's unit does to /run/upparat: root, group upparat, setgid 2750.
    socket_dir = stack.socket.parent
    os.chown(socket_dir, 0, group)
    socket_dir.chmod(0o2750)

    stack.broker.start()
    stack.files.start()
    stack.start_emulator()
    stack.start_hookserver()
    sock = os.stat(stack.socket)
    assert stat.S_ISSOCK(sock.st_mode)
    assert (sock.st_uid, sock.st_gid, stat.S_IMODE(sock.st_mode)) == (0, group, 0o660)

    start_daemon_as(stack, daemon_user, python)
    assert stack.daemon is not None
    status = proc_status(stack.daemon.pid)
    assert status["Uid"].split()[:2] == [str(daemon_user.pw_uid)] * 2
    assert status["Groups"].split() in ([], [str(group)])

    _, sha = create_update(stack, JOB, size=MiB)
    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), stack.daemon_log()[-3000:]
    assert_ends_once(stack, JOB, "SUCCEEDED", "complete_ready")
    assert device.version == NEW
    assert device.slot_sha256() == sha
    # The daemon downloaded as itself; root checked that file (the daemon's user owns it)
    # and ran the install script on its own copy of what it checked.
    [run] = [row for row in device.install_log() if row[0] == "start"]
    assert run[3:] == ["0", "0"], run
    download = stack.download_dir / "upparat" / JOB
    hookserver_log = (stack.workdir / "hookserver.log").read_text()
    checked = re.escape(f"install job={JOB}: {download} checked in ")
    assert re.search(checked + rf"\d+\.\d\d s \(1048576 bytes, sha256 {sha}", hookserver_log)

    # Only root and the daemon's group get to the socket.
    assert probe(python, daemon_user, stack.socket) == "connected"
    assert probe(python, third, stack.socket) == "EACCES"
    assert stack.daemon.poll() is None
