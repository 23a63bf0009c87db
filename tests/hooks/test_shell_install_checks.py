"""upparat-hookserver checks the file before root installs it, against a client that speaks
the contract the way a compromised daemon would.

Each refusal is a FAILURE with its own reason, and the install script never runs (it would
leave a marker). What the script gets is a root-only copy: changing the daemon's file
during the install changes nothing the script reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hookservers.shell import verify
from tests.hooks.contract_cases import (
    FIRMWARE,
    SHELL,
    HookServerFactory,
    RunningHookServer,
    hook_server_factory,
    job,
)
from tests.support.keys import SigningKey, make_key
from upparat.hooks.v1 import hooks_pb2

JOB = "upparat_job-1"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[HookServerFactory]:
    (tmp_path / "hs").mkdir()
    with hook_server_factory(SHELL, tmp_path / "hs") as made:
        yield made


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
        ls -l "$4" > {tmp_path}/mode
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


def test_a_signed_file_is_installed_from_a_root_only_copy_that_is_removed_afterwards(
    server: RunningHookServer, key: SigningKey, marker: Path, tmp_path: Path
) -> None:
    request = signed(server, key)

    outcome = server.install(request=request)

    assert outcome.result is not None
    assert outcome.result.outcome == hooks_pb2.OUTCOME_SUCCESS, outcome.result
    assert marker.read_bytes() == FIRMWARE
    copy = Path((tmp_path / "arg").read_text().strip())
    assert copy != Path(request.file_path)
    assert copy.parent.name == "verified"
    assert (tmp_path / "mode").read_text().startswith("-rw------- 1 root root")
    assert not copy.exists()  # removed once the script ended
    assert os.stat(copy.parent).st_mode & 0o777 == 0o700
    assert re.search(r"signature verified with .*release\.pem", server.log())
    assert Path(request.file_path).read_bytes() == FIRMWARE  # the daemon's file is its own


def test_the_script_reads_what_was_checked_even_when_the_download_changes_meanwhile(
    factory: HookServerFactory, key: SigningKey, tmp_path: Path
) -> None:
    gate, seen = tmp_path / "gate", tmp_path / "seen"
    server = factory.start(
        {
            "install": f"""
                echo started
                while [ ! -e {gate} ]; do sleep 0.05; done
                cat "$4" > {seen}.tmp; mv {seen}.tmp {seen}
            """
        },
        service={"trusted_keys": str(key.public)},
    )
    request = signed(server, key)
    stream = server.hooks().Install(request, timeout=10)
    assert next(stream).progress.line == "started"

    # The daemon's user owns its download: it may rewrite it in place after the check.
    with open(request.file_path, "r+b") as f:
        f.write(b"EVIL" * 100)
    gate.touch()
    list(stream)

    assert seen.read_bytes() == FIRMWARE


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

    result = refused(server, request, marker)

    assert result.reason == "FILE_CHANGED"
    assert hashlib.sha256(evil).hexdigest() in result.message
    assert request.sha256 in result.message


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

    code, output = _check_started(factory, conf)

    assert code is None, output
    assert not leftover.exists()


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


def test_a_call_that_goes_away_while_the_file_is_copied_leaves_no_copy(tmp_path: Path) -> None:
    downloads = tmp_path / "dl" / "upparat"
    downloads.mkdir(parents=True, mode=0o700)
    content = b"x" * (3 * verify.CHUNK)
    (downloads / JOB).write_bytes(content)
    (downloads / JOB).chmod(0o600)
    gate = verify.FileGate(download_dir=downloads, state_dir=tmp_path / "state")
    gate.prepare()
    chunks = iter([True, True, False])
    request = verify.InstallRequest(
        job_id=JOB,
        file_path=str(downloads / JOB),
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        signature=b"",
    )

    with pytest.raises(verify.Interrupted):
        gate.check(request, keep_going=lambda: next(chunks))

    assert list(gate.copy_dir.iterdir()) == []
    checked = gate.check(request, keep_going=lambda: True)
    assert isinstance(checked, verify.Checked)
    assert checked.copy.read_bytes() == content
    gate.discard(checked.copy)
    assert not checked.copy.exists()
