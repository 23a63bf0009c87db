"""check-config, the daemon and the hook server accept the same files (issue 15 part 2).

All three read the file with `upparat.config`; these tests run the real programs, as a
device does, on files that differ from a usable one in a single value. A refused file is
exit 2 with the same one-line message from all three, naming section, key, value and what
is allowed, and the daemon refuses it before it connects anywhere (a listening socket
stands in for the broker and counts connections).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from upparat.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
HOOKSERVER_PREFIX = "upparat-hookserver: "
"""The hook server names itself before each line it prints; the line is the same."""

DAEMON = (sys.executable, "-m", "upparat.cli")
CHECK_CONFIG = (sys.executable, "-m", "upparat.cli", "check-config")
HOOKSERVER = (sys.executable, "-m", "hookservers.shell.main")

BAD = [
    # (section, key, value): each was a defect or a disagreement before one model.
    ("broker", "keepalive", "0"),  # passed check-config, daemon died with exit 1
    ("service", "proxy", "https://proxy.example:3128"),  # passed, every download failed
    ("broker", "thing_name", "dev.example"),  # config and MQTT driver disagreed
    ("broker", "client_id", "c" * 129),  # passed, the MQTT driver refused it at start
    ("hookserver", "socket_mode", "0666"),  # daemon accepted, hook server refused
    ("hookserver", "default_retry_after", "1e3"),  # hook server accepted, daemon refused
    ("hookserver", "cancel_grace_period", ""),  # hook server took empty as the default
    ("hookserver", "script_path", ""),
    ("hookserver", "listen", "::1:80"),  # daemon accepted an unbracketed IPv6 address
    ("hookserver", "log_level", "loud"),
    ("hookserver", "enviroment", "A=1"),  # unknown key, with a suggestion
    ("hooks", "endpoint", "localhost:0"),
    ("hooks", "retry_interval", "-1"),  # the hook server did not look at [hooks] values
    ("hooks", "install_timeout", "0"),
    ("broker", "port", "88a3"),  # the hook server did not look at [broker]
    ("service", "job_prefix", "bad prefix"),
    ("service", "log_level", "verbose"),
    ("service", "min_free_space", "12Q"),
    ("service", "require_signature", "maybe"),
    ("service", "package_name", "my firmware"),  # not a Software Package Catalog name
]

GOOD = [
    # Accepted by all three (some only by one program before).
    ("hookserver", "log_level", "warn"),
    ("hookserver", "socket_mode", "0600"),
    ("hookserver", "listen", ":50051"),
    ("broker", "keepalive", "30"),
    ("service", "proxy", "http://user:pw@proxy.example:3128"),
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="upp-agree-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker() -> Iterator[socket.socket]:
    """A listening socket where the broker would be: it sees whether the daemon connects."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


def write_config(workdir: Path, broker_port: int, section: str, key: str, value: str) -> Path:
    sections: dict[str, dict[str, str]] = {
        "service": {
            "state_dir": str(workdir / "state"),
            "download_location": str(workdir / "downloads"),
        },
        "broker": {"host": "127.0.0.1", "port": str(broker_port), "thing_name": "agree-1"},
        "hooks": {"endpoint": f"unix://{workdir / 'hooks.sock'}"},
        "hookserver": {"state_dir": str(workdir / "hookserver")},
    }
    sections[section][key] = value
    (workdir / "downloads").mkdir(mode=0o755, exist_ok=True)
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )
    conf = workdir / "upparat.conf"
    conf.write_text(text)
    return conf


def run_all(
    conf: Path, programs: tuple[str, ...] = ("check-config", "daemon", "hookserver")
) -> dict[str, tuple[int, str]]:
    """Exit status and stderr of the programs, run side by side on `conf`."""
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "CACHE_DIRECTORY")}
    argvs = {
        "check-config": [*CHECK_CONFIG, "-c", str(conf)],
        "daemon": [*DAEMON, "-c", str(conf)],
        "hookserver": [*HOOKSERVER, "-c", str(conf)],
    }
    procs = {
        name: subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in argvs.items()
        if name in programs
    }
    results: dict[str, tuple[int, str]] = {}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            results[name] = (proc.returncode, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def connections(broker: socket.socket) -> int:
    broker.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = broker.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize(("section", "key", "value"), BAD, ids=lambda v: str(v)[:24])
def test_a_bad_value_is_exit_2_with_the_same_message_from_all_three(
    workdir: Path, broker: socket.socket, section: str, key: str, value: str
) -> None:
    conf = write_config(workdir, broker.getsockname()[1], section, key, value)
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    (expected,) = err.value.problems
    if key == "enviroment":  # an unknown key is named with the known ones, not its value
        assert expected.startswith(f'config: [{section}] unknown key "{key}"'), expected
        assert "known keys: " in expected
    elif value == "":
        assert expected.startswith(f"config: [{section}] {key} must not be empty"), expected
    else:
        assert expected.startswith(f"config: [{section}] {key} must be "), expected
        assert expected.endswith(f'got "{value}"') or f'got "{value}" (' in expected, expected

    results = run_all(conf)

    assert {name: code for name, (code, _) in results.items()} == {
        "check-config": 2,
        "daemon": 2,
        "hookserver": 2,
    }, results
    assert results["check-config"][1] == expected + "\n"
    assert results["daemon"][1] == expected + "\n"
    assert results["hookserver"][1] == HOOKSERVER_PREFIX + expected + "\n"
    assert connections(broker) == 0


@pytest.mark.parametrize(("section", "key", "value"), GOOD, ids=lambda v: str(v)[:24])
def test_a_good_value_is_accepted_by_all_three(
    workdir: Path, broker: socket.socket, section: str, key: str, value: str
) -> None:
    conf = write_config(workdir, broker.getsockname()[1], section, key, value)
    load_config(conf)
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "CACHE_DIRECTORY")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    check = run(*CHECK_CONFIG, "-c", str(conf))
    server = run(*HOOKSERVER, "-c", str(conf), "--check")

    # check-config passed the file and went on to look for the hook server (exit 3).
    assert (check.returncode, check.stdout.splitlines()[0]) == (3, f"config {conf}: ok"), check
    assert server.returncode == 0, server.stderr
    # The daemon gets as far as the broker.
    daemon = subprocess.Popen(
        [*DAEMON, "-c", str(conf)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        broker.settimeout(60)
        conn, _ = broker.accept()
        conn.close()
    finally:
        daemon.kill()
        daemon.wait()


def test_a_download_folder_the_daemon_refuses_is_refused_by_check_config_alike(
    workdir: Path, broker: socket.socket
) -> None:
    """Not a value rule but the folder on disk: both programs look at it and say the same."""
    conf = write_config(workdir, broker.getsockname()[1], "hooks", "version", "/bin/true")
    (workdir / "elsewhere").mkdir()
    (workdir / "downloads" / "upparat").symlink_to(workdir / "elsewhere")

    # The hook server checks the folder at each install, not at start.
    results = run_all(conf, ("check-config", "daemon"))

    assert results["check-config"][0] == results["daemon"][0] == 2, results
    (line,) = results["daemon"][1].splitlines()
    assert line.startswith("config: "), line
    assert "is a symlink" in line, line
    assert results["check-config"][1] == line + "\n"
    assert connections(broker) == 0


def test_tls_files_the_mqtt_driver_cannot_load_are_exit_2_from_both_not_an_unexpected_error(
    workdir: Path, broker: socket.socket
) -> None:
    """check-config loads them as the daemon does (it used to pass them and exit 3)."""
    conf = write_config(workdir, broker.getsockname()[1], "broker", "cafile", "/nonexistent/ca.pem")
    conf.write_text(
        conf.read_text().replace(
            "[broker]\n",
            "[broker]\ncertfile = /nonexistent/cert.pem\nkeyfile = /nonexistent/k.pem\n",
        )
    )

    results = run_all(conf, ("check-config", "daemon"))

    (code, err) = results["daemon"]
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith("config: [broker] mqtt: cafile '/nonexistent/ca.pem' is not readable")
    assert results["check-config"] == (2, line + "\n"), results
    assert connections(broker) == 0
