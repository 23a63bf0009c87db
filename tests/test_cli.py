"""The `upparat` command line: version, help, config errors and `check-config`.

Exit codes are checked on real processes (the installed `upparat` script and
`python -m upparat.cli`); messages in-process where that is enough.
"""

from __future__ import annotations

import shutil
import socket as stdlib_socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import upparat
from tests.support.keys import make_key
from upparat.cli import EXIT_CONFIG, EXIT_HOOKSERVER, EXIT_OK, main
from upparat.devstack.procs import stop_process

UPPARAT = Path(sys.executable).with_name("upparat")


def run(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [str(UPPARAT)] if UPPARAT.exists() else [sys.executable, "-m", "upparat.cli"]
    return subprocess.run(
        [*argv, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="upp-cli-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_config(path: Path, socket: Path, tmp_path: Path, extra: str = "") -> Path:
    version = tmp_path / "version.sh"
    version.write_text("#!/bin/sh\necho 1.0.0\n")
    version.chmod(0o755)
    path.write_text(
        "[service]\n"
        f"state_dir = {tmp_path / 'state'}\n"
        f"download_location = {tmp_path}\n"
        "[broker]\nthing_name = cli-test\n"
        f"[hooks]\nendpoint = unix://{socket}\nversion = {version}\n"
        f"[hookserver]\nstate_dir = {tmp_path / 'hookserver'}\n" + extra
    )
    return path


def test_version() -> None:
    done = run("--version")
    assert done.returncode == EXIT_OK
    assert done.stdout.strip() == f"upparat {upparat.__version__}"


def test_module_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "upparat.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"upparat {upparat.__version__}")


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "upparat check-config -c FILE" in out
    assert "exit codes:" in out
    for line in (
        "0  stopped cleanly (SIGTERM / SIGINT), or check-config passed",
        "1  unexpected error",
        "2  bad usage or bad config (the message names section, key and value)",
        "3  check-config: the hook server did not answer",
    ):
        assert line in out


def test_bad_config_exits_2_naming_section_key_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[broker]\nport = 88a3\n")
    done = run("-c", bad)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == 'config: [broker] port must be an integer 1-65535, got "88a3"\n'
    assert done.stdout == ""


def test_every_config_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[broker]\nport = 88a3\n[hooks]\nretry_intervall = 3\n")
    assert main(["-c", str(bad)]) == EXIT_CONFIG
    lines = capsys.readouterr().err.splitlines()
    assert 'config: [broker] port must be an integer 1-65535, got "88a3"' in lines
    assert any(
        line.startswith(
            'config: [hooks] unknown key "retry_intervall" (did you mean retry_interval?)'
        )
        for line in lines
    ), lines


def test_missing_config_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.conf"
    assert main(["-c", str(missing)]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith(f"config: cannot read {missing}: ")
    assert main(["run", "-c", str(missing)]) == EXIT_CONFIG  # `run` is the default command


def test_usage_errors_exit_2() -> None:
    done = run()
    assert done.returncode == 2
    assert "the following arguments are required: -c/--config" in done.stderr
    done = run("check-config")
    assert done.returncode == 2


def test_check_config_with_a_hook_server_exits_0_and_prints_get_info(
    tmp_path: Path, sock_dir: Path
) -> None:
    socket = sock_dir / "hooks.sock"
    config = write_config(tmp_path / "upparat.conf", socket, tmp_path)
    log = (tmp_path / "hookserver.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "hookservers.shell.main", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert server.poll() is None, (tmp_path / "hookserver.log").read_text()
            assert time.monotonic() < deadline, "the hook server did not create its socket"
            time.sleep(0.05)
        done = run("check-config", "-c", config, "-t", "other-thing")
    finally:
        stop_process(server)
    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    assert out.startswith(f"config {config}: ok\n")
    assert "thing_name=other-thing" in out  # -t wins over [broker] thing_name
    assert f"hook server at unix://{socket}:" in out
    assert "  server:       upparat-hookserver " in out
    assert "  hooks:        version\n" in out


def test_check_config_without_a_hook_server_exits_3(tmp_path: Path, sock_dir: Path) -> None:
    socket = sock_dir / "hooks.sock"
    config = write_config(tmp_path / "upparat.conf", socket, tmp_path)
    done = run("check-config", "-c", config)
    assert done.returncode == EXIT_HOOKSERVER
    assert f"config {config}: ok" in done.stdout
    assert done.stderr == (
        f"hook server at unix://{socket}: not reachable: no socket file at {socket};"
        " is upparat-hookserver running with this config?\n"
    )


def test_check_config_with_a_stale_socket_file_exits_3(tmp_path: Path, sock_dir: Path) -> None:
    socket = sock_dir / "hooks.sock"
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as s:
        s.bind(str(socket))  # the file stays; nobody listens (a hook server killed -9)
    config = write_config(tmp_path / "upparat.conf", socket, tmp_path)
    done = run("check-config", "-c", config)
    assert done.returncode == EXIT_HOOKSERVER
    assert done.stderr.startswith(f"hook server at unix://{socket}: not reachable: ")
    assert done.stderr.endswith("; is upparat-hookserver running with this config?\n")


def test_check_config_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[hooks]\nmax_retries = -1\n")
    assert main(["check-config", "-c", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("config: [hooks] max_retries ")
    assert '"-1"' in err


def test_unusable_trusted_keys_stop_the_start_and_check_config_with_exit_2(
    tmp_path: Path, sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = make_key(tmp_path / "keys", "release").private
    config = write_config(tmp_path / "upparat.conf", sock_dir / "hooks.sock", tmp_path)
    config.write_text(
        config.read_text().replace("[service]\n", f"[service]\ntrusted_keys = {private}\n")
    )

    for argv in (["-c", str(config)], ["check-config", "-c", str(config)]):
        assert main(argv) == EXIT_CONFIG
        err = capsys.readouterr().err
        assert err.startswith("config: [service] trusted_keys must be a PEM file"), err
        assert f'got "{private}"' in err
        assert "private key" in err
