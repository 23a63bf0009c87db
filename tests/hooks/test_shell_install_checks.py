"""upparat-hookserver checks the file before root installs it, against a client that speaks
the contract the way a compromised daemon would.

Each refusal is a FAILURE with its own reason, and the install script never runs (it would
leave a marker). What the script gets is root-only: the daemon's own file, taken over (a
rename, root's owner, no write permission, no writer open) and given back when the script
ends, or a copy where that cannot be proven; either way changing the daemon's file during
the install changes nothing the script reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hookservers.shell import verify
from tests.hooks.contract_cases import (
    FIRMWARE,
    HookServerFactory,
    RunningHookServer,
    job,
)
from tests.support.keys import SigningKey, make_key
from upparat.hooks.v1 import hooks_pb2
from upparat.io.folder import SIDECAR_SUFFIX

JOB = "upparat_job-1"
DAEMON_UID = 65534
"""The daemon's user in the cases that need one that is not root (nobody)."""


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return make_key(tmp_path / "keys", "release")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The install script writes this when it runs: it must not for a refused file."""
    return tmp_path / "installed"


@pytest.fixture
def server(
    factory: HookServerFactory, key: SigningKey, marker: Path, tmp_path: Path
) -> RunningHookServer:
    """Trusted keys and require_signature set; the script records what it was given."""
    script = f"""
        printf '%s\\n' "$4" > {tmp_path}/arg
        stat -c '%A %h %u %g %i' "$4" > {tmp_path}/mode
        cat "$4" > {marker}.tmp
        mv {marker}.tmp {marker}
        echo installed
    """
    return factory.start(
        {"install": script},
        service={"trusted_keys": str(key.public), "require_signature": "true"},
    )


def signed(
    server: RunningHookServer, key: SigningKey, content: bytes = FIRMWARE
) -> hooks_pb2.InstallRequest:
    """The request of an honest daemon: its verified download, sha256, size, signature."""
    request = server.install_request(job(job_id=JOB), content)
    request.signature = key.sign(Path(request.file_path))
    return request


def refused(
    server: RunningHookServer, request: hooks_pb2.InstallRequest, marker: Path
) -> hooks_pb2.HookResult:
    outcome = server.install(request=request)
    assert outcome.result is not None
    assert outcome.result.outcome == hooks_pb2.OUTCOME_FAILURE, outcome.result
    assert outcome.progress == []
    assert not marker.exists(), "the install script ran"
    assert "the script was not run" in server.log()
    return outcome.result


# -- what passes ------------------------------------------------------------------------


def test_a_signed_file_is_taken_over_root_only_without_a_copy_and_given_back_afterwards(
    server: RunningHookServer, key: SigningKey, marker: Path, tmp_path: Path
) -> None:
    request = signed(server, key)
    as_daemon(server, request)
    before = os.stat(request.file_path)

    outcome = server.install(request=request)

    assert outcome.result is not None
    assert outcome.result.outcome == hooks_pb2.OUTCOME_SUCCESS, outcome.result
    assert marker.read_bytes() == FIRMWARE
    given = Path((tmp_path / "arg").read_text().strip())
    assert given != Path(request.file_path)
    assert given.parent.name == "verified"
    # The same inode (no byte copied), root's, readable by root only.
    mode, _links, owner, _group, inode = (tmp_path / "mode").read_text().split()
    assert (mode, owner, int(inode)) == ("-r--------", "0", before.st_ino)
    assert "taken over as" in server.log()
    assert re.search(r"signature verified with .*release\.pem", server.log())
    # Given back once the script ended: the daemon's name, owner and mode, nothing left.
    assert not given.exists()
    after = os.stat(request.file_path)
    assert (after.st_ino, after.st_uid, after.st_mode) == (
        before.st_ino,
        DAEMON_UID,
        before.st_mode,
    )
    assert Path(request.file_path).read_bytes() == FIRMWARE
    assert os.stat(given.parent).st_mode & 0o777 == 0o700
    assert re.search(r"gave .*verified/upparat_job-1 back to the daemon", server.log())


def test_a_writer_left_open_means_a_copy_and_its_writes_never_reach_the_script(
    factory: HookServerFactory, key: SigningKey, tmp_path: Path
) -> None:
    gate, seen = tmp_path / "gate", tmp_path / "seen"
    server = factory.start(
        {"install": gated_install(gate, seen)},
        service={"trusted_keys": str(key.public)},
    )
    request = signed(server, key)
    # The daemon's user owns its download and may keep it open for writing past the
    # check: no proof that nobody writes it, so the hook server copies.
    with open(request.file_path, "r+b") as writer:
        stream = server.hooks().Install(request, timeout=10)
        assert next(stream).progress.line == "started"
        writer.write(b"EVIL" * 100)
        writer.flush()
        gate.touch()
        list(stream)

    assert seen.read_bytes() == FIRMWARE
    assert re.search(r"copying .*: a process still has it open for writing", server.log())
    assert "copied to" in server.log()
    assert Path(request.file_path).read_bytes().startswith(b"EVIL")  # the daemon's own file
    assert verified_files(server) == []


def test_once_taken_over_the_daemons_user_cannot_open_the_file_for_writing(
    factory: HookServerFactory, tmp_path: Path
) -> None:
    gate, seen = tmp_path / "gate", tmp_path / "seen"
    server = factory.start({"install": gated_install(gate, seen)})
    request = server.install_request(job(job_id=JOB))
    as_daemon(server, request)
    # A process of the daemon's user that holds a descriptor of the file that cannot write
    # (O_PATH) and tries to chmod it and reopen it for writing through /proc, before and
    # during the install: no path, no directory's permission is involved, only the inode's.
    prober = subprocess.Popen(
        [sys.executable, "-c", _REOPEN_PROBE, request.file_path, str(DAEMON_UID)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert prober.stdout is not None
        assert prober.stdin is not None
        assert prober.stdout.readline().strip() == "reopened for writing"  # before: it can
        stream = server.hooks().Install(request, timeout=10)
        assert next(stream).progress.line == "started"
        prober.stdin.write("again\n")
        prober.stdin.flush()
        during = prober.stdout.readline().strip()
        gate.touch()
        list(stream)
    finally:
        prober.kill()
        prober.wait()

    assert during == "refused: EACCES"
    assert seen.read_bytes() == FIRMWARE
    assert "taken over as" in server.log()


_REOPEN_PROBE = """
import os, sys
fd = os.open(sys.argv[1], os.O_PATH)
uid = int(sys.argv[2])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
def attempt():
    try:  # the owner may give itself write permission back first
        os.chmod(f"/proc/self/fd/{fd}", 0o600)
    except PermissionError:
        pass
    try:
        w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
    except PermissionError:
        return "refused: EACCES"
    os.close(w)
    return "reopened for writing"
print(attempt(), flush=True)
sys.stdin.readline()
print(attempt(), flush=True)
"""


def test_a_state_dir_on_another_file_system_gets_a_copy(
    factory: HookServerFactory, marker: Path
) -> None:
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(factory.workdir).st_dev:
        pytest.fail("/dev/shm and the test's tmp_path are on one file system here")
    with tempfile.TemporaryDirectory(dir=shm, prefix="upparat-test-") as state:
        os.chmod(state, 0o700)
        server = factory.start({"install": f'cat "$4" > {marker}'}, options={"state_dir": state})
        request = server.install_request(job(job_id=JOB))
        as_daemon(server, request)
        before = os.stat(request.file_path)

        outcome = server.install(request=request)

        assert outcome.result is not None
        assert outcome.result.outcome == hooks_pb2.OUTCOME_SUCCESS, outcome.result
        assert marker.read_bytes() == FIRMWARE
        assert re.search(r"copying .*: .* is on another file system than", server.log())
        assert list(Path(state, "verified").iterdir()) == []
        after = os.stat(request.file_path)
        assert (after.st_ino, after.st_uid, after.st_mode) == (
            before.st_ino,
            DAEMON_UID,
            before.st_mode,
        )


def test_a_file_with_other_names_is_copied_and_they_keep_their_owner_and_mode(
    factory: HookServerFactory, marker: Path, tmp_path: Path
) -> None:
    server = factory.start({"install": f'cat "$4" > {marker}'})
    request = server.install_request(job(job_id=JOB))
    as_daemon(server, request)
    other = server.download_dir / "elsewhere-name"
    os.link(request.file_path, other)  # e.g. a file of the daemon's own, linked there

    outcome = server.install(request=request)

    assert outcome.result is not None
    assert outcome.result.outcome == hooks_pb2.OUTCOME_SUCCESS, outcome.result
    assert marker.read_bytes() == FIRMWARE
    assert re.search(r"copying .*: it has 1 other name\(s\) \(hard links\)", server.log())
    st = os.stat(other)
    assert (st.st_uid, st.st_mode & 0o777) == (DAEMON_UID, 0o600)
    assert verified_files(server) == []


def test_a_file_the_daemon_discarded_during_the_install_is_removed_not_given_back(
    factory: HookServerFactory, tmp_path: Path
) -> None:
    # A job cancelled while its script runs: the daemon removes its download (file and
    # sidecar; the file is not there to remove) while the hook server holds it.
    gate = tmp_path / "gate"
    server = factory.start({"install": gated_install(gate, tmp_path / "seen")})
    request = server.install_request(job(job_id=JOB))
    as_daemon(server, request)
    stream = server.hooks().Install(request, timeout=10)
    assert next(stream).progress.line == "started"
    assert not Path(request.file_path).exists()  # taken over
    sidecar(request.file_path).unlink()
    gate.touch()
    list(stream)

    assert not Path(request.file_path).exists()
    assert verified_files(server) == []
    assert "the daemon no longer keeps that download" in server.log()


def test_a_script_that_asks_to_retry_later_finds_the_daemons_file_given_back(
    factory: HookServerFactory, tmp_path: Path
) -> None:
    server = factory.start({"install": f'cat "$4" >> {tmp_path}/seen; exit 3'})
    request = server.install_request(job(job_id=JOB))
    as_daemon(server, request)

    for _ in range(2):
        outcome = server.install(request=request)
        assert outcome.result is not None
        assert outcome.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER, outcome.result

    assert (tmp_path / "seen").read_bytes() == FIRMWARE * 2
    assert os.stat(request.file_path).st_uid == DAEMON_UID
    assert verified_files(server) == []


def gated_install(gate: Path, seen: Path) -> str:
    """An install script that says `started`, waits for `gate` to exist, then copies what
    it was given ($4) to `seen`."""
    return f"""
        echo started
        while [ ! -e {gate} ]; do sleep 0.05; done
        cat "$4" > {seen}.tmp; mv {seen}.tmp {seen}
    """


def as_daemon(server: RunningHookServer, request: hooks_pb2.InstallRequest) -> None:
    """Gives the download folder and the file of `request` to the daemon's user (nobody),
    as on a device, where the daemon is not root, with the sidecar the daemon keeps beside
    a download it still holds."""
    os.chown(server.download_dir, DAEMON_UID, DAEMON_UID)
    os.chown(request.file_path, DAEMON_UID, DAEMON_UID)
    sidecar(request.file_path).write_text("{}")


def sidecar(file_path: str | Path) -> Path:
    return Path(str(file_path) + SIDECAR_SUFFIX)


def verified_files(server: RunningHookServer) -> list[Path]:
    """What is in the hook server's checked-files directory."""
    return list((server.workdir / f"state-{server.config_path.stem}" / "verified").iterdir())


def test_without_trusted_keys_an_unsigned_file_is_checked_against_the_daemons_sha256(
    factory: HookServerFactory, marker: Path
) -> None:
    server = factory.start({"install": f'cat "$4" > {marker}'})

    outcome = server.install(request=server.install_request(job(job_id=JOB)))

    assert outcome.result is not None
    assert outcome.result.outcome == hooks_pb2.OUTCOME_SUCCESS, outcome.result
    assert marker.read_bytes() == FIRMWARE


# -- what is refused --------------------------------------------------------------------


def test_a_file_swapped_after_the_daemons_check_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    evil = bytes(len(FIRMWARE))
    Path(request.file_path).write_bytes(evil)  # same size, other bytes
    as_daemon(server, request)
    before = os.stat(request.file_path)

    result = refused(server, request, marker)

    assert result.reason == "FILE_CHANGED"
    assert hashlib.sha256(evil).hexdigest() in result.message
    assert request.sha256 in result.message
    # A refused file goes back to the daemon as it was.
    after = os.stat(request.file_path)
    assert (after.st_ino, after.st_uid, after.st_mode) == (
        before.st_ino,
        DAEMON_UID,
        before.st_mode,
    )
    assert verified_files(server) == []


def test_a_wrong_sha256_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    request.sha256 = "ab" * 32

    assert refused(server, request, marker).reason == "FILE_CHANGED"


def test_a_wrong_size_is_refused(server: RunningHookServer, key: SigningKey, marker: Path) -> None:
    request = signed(server, key)
    request.size = len(FIRMWARE) + 1

    result = refused(server, request, marker)

    assert result.reason == "FILE_SIZE_MISMATCH"
    assert str(len(FIRMWARE) + 1) in result.message


def test_a_request_without_sha256_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    request.sha256 = ""

    assert refused(server, request, marker).reason == "FILE_SHA256_MISSING"


def test_a_signature_of_another_key_is_refused(
    server: RunningHookServer, marker: Path, tmp_path: Path
) -> None:
    other = make_key(tmp_path / "other", "attacker")

    result = refused(server, signed(server, other), marker)

    assert result.reason == "SIGNATURE_INVALID"
    assert "does not verify" in result.message


def test_garbage_as_signature_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    request.signature = b"\x30\x02\x02\x00"

    assert refused(server, request, marker).reason == "SIGNATURE_INVALID"


def test_an_unsigned_file_is_refused_where_signatures_are_required(
    server: RunningHookServer, marker: Path
) -> None:
    result = refused(server, server.install_request(job(job_id=JOB)), marker)

    assert result.reason == "SIGNATURE_MISSING"
    assert "require_signature" in result.message


def test_a_symlink_in_the_download_folder_is_not_followed(
    server: RunningHookServer, key: SigningKey, marker: Path, tmp_path: Path
) -> None:
    request = signed(server, key)
    elsewhere = tmp_path / "elsewhere.raucb"
    os.replace(request.file_path, elsewhere)
    os.symlink(elsewhere, request.file_path)  # same bytes, same signature: still refused

    result = refused(server, request, marker)

    assert result.reason == "FILE_NOT_REGULAR"
    assert "symlink" in result.message


def test_a_download_folder_that_is_a_symlink_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path, tmp_path: Path
) -> None:
    request = signed(server, key)
    planted = tmp_path / "planted"
    os.replace(server.download_dir, planted)
    os.symlink(planted, server.download_dir)

    result = refused(server, request, marker)

    assert result.reason == "FILE_NOT_IN_DOWNLOAD_FOLDER"
    assert "symlink" in result.message


@pytest.mark.parametrize("where", ["elsewhere", "dot-dot", "other name"])
def test_a_file_outside_the_download_folder_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path, tmp_path: Path, where: str
) -> None:
    request = signed(server, key)
    match where:
        case "elsewhere":
            path = tmp_path / JOB
        case "dot-dot":
            path = server.download_dir / ".." / "upparat" / JOB
        case _:
            path = server.download_dir / "upparat_other-job"
    if not path.exists():
        path.write_bytes(FIRMWARE)
        path.chmod(0o600)
    request.file_path = str(path)

    result = refused(server, request, marker)

    assert result.reason == "FILE_NOT_IN_DOWNLOAD_FOLDER"
    assert str(server.download_dir) in result.message


def test_a_file_of_another_user_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    os.chown(request.file_path, 65534, 65534)  # nobody: not the download folder's owner

    result = refused(server, request, marker)

    assert result.reason == "FILE_WRONG_OWNER"
    assert "uid 65534" in result.message


@pytest.mark.parametrize("mode", [0o620, 0o602])
def test_a_file_writable_by_group_or_others_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path, mode: int
) -> None:
    request = signed(server, key)
    os.chmod(request.file_path, mode)

    result = refused(server, request, marker)

    assert result.reason == "FILE_WRITABLE_BY_OTHERS"
    assert f"{mode:04o}" in result.message


def test_a_download_folder_writable_by_group_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    os.chmod(server.download_dir, 0o770)

    assert refused(server, request, marker).reason == "FILE_WRITABLE_BY_OTHERS"


def test_a_fifo_is_refused_without_blocking(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    os.unlink(request.file_path)
    os.mkfifo(request.file_path, 0o600)

    assert refused(server, request, marker).reason == "FILE_NOT_REGULAR"


def test_a_missing_file_is_refused(
    server: RunningHookServer, key: SigningKey, marker: Path
) -> None:
    request = signed(server, key)
    os.unlink(request.file_path)

    assert refused(server, request, marker).reason == "FILE_NOT_IN_DOWNLOAD_FOLDER"


# -- the state directory ------------------------------------------------------------------


def test_leftover_copies_are_removed_at_start(factory: HookServerFactory) -> None:
    conf = factory.write_config({"install": "/bin/true"}, socket_path=factory.socket_path())
    state = factory.workdir / f"state-{conf.stem}"
    (state / "verified").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    leftover = state / "verified" / JOB
    leftover.write_bytes(b"from a crash")
    leftover.chmod(0o600)  # a copy: root's, writable by root

    code, output = _check_started(factory, conf)

    assert code is None, output
    assert not leftover.exists()


@pytest.mark.parametrize("crashed", ["after the rename", "after the chmod", "after the chown"])
def test_a_file_taken_over_before_a_crash_goes_back_to_the_daemon_at_start(
    factory: HookServerFactory, crashed: str
) -> None:
    conf = factory.write_config({"install": "/bin/true"}, socket_path=factory.socket_path())
    state = factory.workdir / f"state-{conf.stem}"
    (state / "verified").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    downloads = factory.workdir / "dl" / "upparat"
    downloads.mkdir(parents=True, mode=0o700)
    os.chown(downloads, DAEMON_UID, DAEMON_UID)
    sidecar(downloads / JOB).write_text("{}")  # the daemon still keeps that download
    leftover = state / "verified" / JOB
    leftover.write_bytes(FIRMWARE)
    match crashed:  # how far the take-over got (verify.py: chmod, then chown)
        case "after the rename":
            leftover.chmod(0o600)
            os.chown(leftover, DAEMON_UID, DAEMON_UID)
        case "after the chmod":
            leftover.chmod(0o400)
            os.chown(leftover, DAEMON_UID, DAEMON_UID)
        case _:
            leftover.chmod(0o400)
            os.chown(leftover, 0, DAEMON_UID)

    code, output = _check_started(factory, conf)

    assert code is None, output
    assert not leftover.exists()
    back = os.stat(downloads / JOB)
    assert (back.st_uid, back.st_mode & 0o777) == (DAEMON_UID, 0o600)
    assert (downloads / JOB).read_bytes() == FIRMWARE


@pytest.mark.parametrize("problem", ["open to others", "a symlink"])
def test_an_unsafe_state_dir_stops_the_start(
    factory: HookServerFactory, tmp_path: Path, problem: str
) -> None:
    conf = factory.write_config({"install": "/bin/true"}, socket_path=factory.socket_path())
    state = factory.workdir / f"state-{conf.stem}"
    if problem == "a symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        os.symlink(tmp_path / "real", state)
    else:
        state.mkdir(mode=0o755)
        state.chmod(0o755)

    code, output = factory.run_to_exit(conf)

    assert code == 2
    assert "[hookserver] state_dir" in output
    assert str(state) in output


def _check_started(factory: HookServerFactory, conf: Path) -> tuple[int | None, str]:
    """Starts the server on `conf` until it serves; (its exit status if it died, log)."""
    proc = factory.spawn(conf)
    log = factory.workdir / f"{conf.stem}.log"
    try:
        for _ in range(300):
            if "listening on" in (log.read_text() if log.exists() else ""):
                return None, log.read_text()
            if proc.poll() is not None:
                return proc.returncode, log.read_text()
            time.sleep(0.05)
        return None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the gate on its own --------------------------------------------------------------------


def _gate_with(
    tmp_path: Path, content: bytes
) -> tuple[verify.FileGate, verify.InstallRequest, Path]:
    """A gate over a download folder holding the job's file (`content`) and its sidecar,
    the Install request for that file, and the file's path."""
    downloads = tmp_path / "dl" / "upparat"
    downloads.mkdir(parents=True, mode=0o700)
    (downloads / JOB).write_bytes(content)
    (downloads / JOB).chmod(0o600)
    sidecar(downloads / JOB).write_text("{}")
    gate = verify.FileGate(download_dir=downloads, state_dir=tmp_path / "state")
    gate.prepare()
    request = verify.InstallRequest(
        job_id=JOB,
        file_path=str(downloads / JOB),
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        signature=b"",
    )
    return gate, request, downloads / JOB


def test_a_call_that_goes_away_while_the_file_is_read_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    content = b"x" * (3 * verify.CHUNK)
    gate, request, download = _gate_with(tmp_path, content)
    chunks = iter([True, True, False])

    with pytest.raises(verify.Interrupted):
        gate.check(request, keep_going=lambda: next(chunks))

    assert list(gate.copy_dir.iterdir()) == []
    assert download.read_bytes() == content  # given back
    checked = gate.check(request, keep_going=lambda: True)
    assert isinstance(checked, verify.Checked)
    assert checked.taken
    assert checked.copy.read_bytes() == content
    assert not download.exists()
    gate.release(JOB)
    assert not checked.copy.exists()
    assert download.read_bytes() == content


def _verify_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "verify-read"]


def test_the_read_ahead_gives_every_byte_in_order_and_no_more_than_asked(tmp_path: Path) -> None:
    data = os.urandom(3 * verify.CHUNK + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with verify._ReadAhead(fd, len(data)) as chunks:
            assert b"".join(bytes(c) for c in chunks) == data
        os.lseek(fd, 0, os.SEEK_SET)
        # One byte past what the daemon reported is all that is read of a grown file.
        with verify._ReadAhead(fd, 2 * verify.CHUNK + 1) as chunks:
            assert b"".join(bytes(c) for c in chunks) == data[: 2 * verify.CHUNK + 1]
    finally:
        os.close(fd)
    assert _verify_threads() == []


def test_a_read_error_reaches_the_check_as_a_refusal_and_stops_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(5 * verify.CHUNK)
    gate, request, download = _gate_with(tmp_path, content)
    real_readv = os.readv
    calls = 0

    def failing_readv(fd: int, buffers: list[memoryview]) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(5, "Input/output error")
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", failing_readv)

    refused = gate.check(request, keep_going=lambda: True)

    assert isinstance(refused, verify.Refused)
    assert refused.reason == verify.COPY_FAILED
    assert "Input/output error" in refused.message
    assert _verify_threads() == []
    assert list(gate.copy_dir.iterdir()) == []
    assert download.read_bytes() == content  # given back


def test_a_consumer_that_stops_early_stops_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(40 * verify.CHUNK))
    fd = os.open(path, os.O_RDONLY)
    try:
        with verify._ReadAhead(fd, 40 * verify.CHUNK) as chunks:
            next(chunks)
        # The reader went no further than its buffers reach.
        assert os.lseek(fd, 0, os.SEEK_CUR) <= (1 + verify._ReadAhead.SLOTS) * verify.CHUNK
    finally:
        os.close(fd)
    assert _verify_threads() == []
