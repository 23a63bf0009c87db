"""HookClientOnDemand: the start-up GetInfo in a child process, the same events as the
in-process client's, the child killed and reaped on close, gRPC built only for the rest."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hooks.contract_cases import EVAL_SCRIPT, HOOK_NAMES, SHELL, hook_server_factory
from tests.hooks.test_client import Recorder, call_hook
from upparat.core.commands import AskHookInfo, CallHook, CancelHook
from upparat.core.events import HookInfoFailed, HookServerInfo
from upparat.core.model import CallId, HookKind
from upparat.hooks.client import HookClient
from upparat.hooks.ondemand import HookClientOnDemand, HookDriver
from upparat.hooks.values import channel_target


class FakeClient:
    def __init__(self) -> None:
        self.commands: list[AskHookInfo | CallHook | CancelHook] = []
        self.closed = False

    def execute(self, command: AskHookInfo | CallHook | CancelHook) -> None:
        self.commands.append(command)

    def close(self) -> None:
        self.closed = True


def on_demand(
    endpoint: str, recorder: Recorder, *, info_timeout: float = 5.0, python: str | None = None
) -> tuple[HookClientOnDemand, list[FakeClient]]:
    built: list[FakeClient] = []

    def make() -> HookDriver:
        built.append(FakeClient())
        return built[-1]

    driver = HookClientOnDemand(
        make,
        recorder,
        target=channel_target(endpoint),
        info_timeout=info_timeout,
        **({"python": python} if python is not None else {}),
    )
    return driver, built


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with hook_server_factory(SHELL, tmp_path_factory.mktemp("ondemand")) as factory:
        yield factory.start({hook: EVAL_SCRIPT for hook in HOOK_NAMES}).endpoint


def test_the_child_answers_the_first_get_info_as_the_client_does(endpoint: str) -> None:
    in_process, from_child = Recorder(), Recorder()
    client = HookClient(endpoint, in_process)
    driver, built = on_demand(endpoint, from_child)
    try:
        client.execute(AskHookInfo())
        driver.execute(AskHookInfo())
        assert from_child.info() == in_process.info()
        assert from_child.info().hooks == frozenset(HookKind)
        assert built == []  # no gRPC client for the start-up GetInfo
    finally:
        driver.close()
        client.close()


def test_a_down_server_fails_as_in_the_client_with_the_same_timeout(tmp_path: Path) -> None:
    endpoint = f"unix://{tmp_path / 'absent.sock'}"
    in_process, from_child = Recorder(), Recorder()
    client = HookClient(endpoint, in_process, info_timeout=0.5)
    driver, _ = on_demand(endpoint, from_child, info_timeout=0.5)
    try:
        client.execute(AskHookInfo())
        driver.execute(AskHookInfo())
        expected = in_process.wait_for(HookInfoFailed)
        assert expected.detail.startswith("DEADLINE_EXCEEDED")
        assert from_child.wait_for(HookInfoFailed) == expected
    finally:
        driver.close()
        client.close()


def test_every_other_command_goes_to_a_client_built_once() -> None:
    recorder = Recorder()
    driver, built = on_demand("unix:///nonexistent.sock", recorder, python="/bin/false")
    driver.execute(AskHookInfo())  # the start-up one, in the child
    driver.execute(CancelHook(call_id=CallId(7)))  # nothing can run yet: no client for it
    assert built == []
    version = call_hook(HookKind.VERSION)
    driver.execute(version)
    driver.execute(AskHookInfo())  # when a job begins: in the daemon, which has gRPC now
    assert len(built) == 1
    assert built[0].commands == [version, AskHookInfo()]
    driver.close()
    assert built[0].closed


def fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_broken_child_is_a_failure_with_its_last_error_line(tmp_path: Path) -> None:
    recorder = Recorder()
    python = fake_python(tmp_path, 'echo "Traceback:" >&2; echo "ImportError: no grpc" >&2; exit 1')
    driver, _ = on_demand("unix:///x.sock", recorder, python=str(python))
    driver.execute(AskHookInfo())
    failed = recorder.wait_for(HookInfoFailed)
    assert failed == HookInfoFailed(
        detail="GetInfo process -m upparat.hooks.info exited with status 1: ImportError: no grpc"
    )
    driver.close()


def test_a_child_that_cannot_start_is_a_failure(tmp_path: Path) -> None:
    recorder = Recorder()
    driver, _ = on_demand("unix:///x.sock", recorder, python=str(tmp_path / "no-python"))
    driver.execute(AskHookInfo())
    assert recorder.wait_for(HookInfoFailed).detail.startswith(f"cannot start {tmp_path}")
    driver.close()


def test_close_kills_and_reaps_the_child_and_sends_nothing(tmp_path: Path) -> None:
    recorder = Recorder()
    pidfile = tmp_path / "pid"
    python = fake_python(tmp_path, f"echo $$ > {pidfile}; exec sleep 60")
    driver, _ = on_demand("unix:///x.sock", recorder, python=str(python))
    driver.execute(AskHookInfo())
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    driver.close()
    # Reaped, not a zombie: a zombie still answers signal 0.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    time.sleep(0.3)
    assert recorder.events == []


def test_a_server_info_reply_is_not_mistaken_for_json_garbage(tmp_path: Path) -> None:
    recorder = Recorder()
    python = fake_python(tmp_path, 'echo \'{"reply": {"server_name": 1}}\'')
    driver, _ = on_demand("unix:///x.sock", recorder, python=str(python))
    driver.execute(AskHookInfo())
    failed = recorder.wait_for(HookInfoFailed)
    assert "exited with status 0 without an answer" in failed.detail
    assert recorder.count(HookServerInfo) == 0
    driver.close()
