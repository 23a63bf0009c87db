"""sd_notify against a real datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from upparat.io.sdnotify import notify, watchdog_interval


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket, announced in NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_arrives(systemd_socket: socket.socket) -> None:
    assert notify("READY=1\nSTATUS=waiting for jobs") is True
    assert systemd_socket.recv(4096) == b"READY=1\nSTATUS=waiting for jobs"


def test_each_call_is_one_datagram(systemd_socket: socket.socket) -> None:
    assert notify("WATCHDOG=1")
    assert notify("STATUS=job upparat_1: downloading 40%, größe")
    assert systemd_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd_socket.recv(4096) == "STATUS=job upparat_1: downloading 40%, größe".encode()


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"upparat-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_nobody_listening_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="upparat.io.sdnotify"):
        assert notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text


def test_unsupported_address(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="upparat.io.sdnotify"):
        assert notify("READY=1") is False
    assert "not a unix socket address" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("500000", None, 0.5),
        ("30000000", "self", 30.0),
        ("30000000", "1", None),  # the watchdog belongs to another process
        ("30000000", "x", None),
        ("0", None, None),
        ("", None, None),
        ("-5", None, None),
        ("3e7", None, None),
        ("²", None, None),
        (None, None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert watchdog_interval() == expected
