"""The hook side of the job worker: the real hook client in a child process, against the
shell hook server. Its answers are the in-process client's, event for event; the daemon's side never loads
gRPC (tests/test_idle_imports.py, tests/e2e/test_process.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hooks.contract_cases import (
    EVAL_SCRIPT,
    HOOK_NAMES,
    SHELL,
    RunningHookServer,
    hook_server_factory,
)
from tests.hooks.test_client import Recorder, call_hook, downloaded
from upparat.config import DownloadConfig
from upparat.core.commands import AskHookInfo, CancelHook
from upparat.core.events import Event, HookInfoFailed, HookProgressed, HookSuccess
from upparat.core.model import HookKind
from upparat.hooks.client import HookClient
from upparat.hooks.values import INFO_TIMEOUT
from upparat.io.child import ChildDriver
from upparat.worker import JobCommand, job_worker


def hook_worker(
    endpoint: str, on_event: Callable[[Event], None], info_timeout: float = INFO_TIMEOUT
) -> ChildDriver[JobCommand]:
    """The daemon's job worker, given hook calls only here."""
    return job_worker(endpoint, DownloadConfig(), None, on_event, info_timeout=info_timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHookServer]:
    with hook_server_factory(SHELL, tmp_path_factory.mktemp("worker")) as factory:
        yield factory.start({hook: EVAL_SCRIPT for hook in HOOK_NAMES})


@pytest.fixture(scope="module")
def endpoint(server: RunningHookServer) -> str:
    return server.endpoint


def test_get_info_and_calls_are_answered_as_by_the_client_in_process(endpoint: str) -> None:
    in_process, from_child = Recorder(), Recorder()
    client = HookClient(endpoint, in_process)
    driver = hook_worker(endpoint, from_child)
    try:
        client.execute(AskHookInfo())
        driver.execute(AskHookInfo())
        assert from_child.info() == in_process.info()
        assert from_child.info().hooks == frozenset(HookKind)
        meta = 'echo 2.4.0; echo booted_slot=B >> "$UPPARAT_ATTRIBUTES"'
        here, there = call_hook(HookKind.VERSION, meta), call_hook(HookKind.VERSION, meta)
        client.execute(here)
        expected = in_process.finished(here.call_id).result
        driver.execute(there)  # after: the server runs one call of a hook per job at a time
        result = from_child.finished(there.call_id).result
        assert result == expected
        assert result == HookSuccess(value="2.4.0", attributes=(("booted_slot", "B"),))
    finally:
        driver.close()
        client.close()


def test_an_install_streams_its_progress_and_a_cancel_ends_it_silently(
    server: RunningHookServer,
) -> None:
    recorder = Recorder()
    driver = hook_worker(server.endpoint, recorder)
    try:
        script = "echo '10% writing'; sleep 30"
        call = call_hook(HookKind.INSTALL, script, file=downloaded(server))
        driver.execute(call)
        progressed = recorder.wait_for(HookProgressed)
        assert progressed.call_id == call.call_id
        assert progressed.percent == 10
        driver.execute(CancelHook(call_id=call.call_id))
        after = call_hook(HookKind.READY, "echo up")
        driver.execute(after)
        assert recorder.finished(after.call_id).result == HookSuccess(message="up")
        assert [type(e) for e in recorder.of_call(call.call_id)] == [HookProgressed]
    finally:
        driver.close()


def test_a_down_server_fails_get_info_as_in_the_client_with_the_same_timeout(
    tmp_path: Path,
) -> None:
    endpoint = f"unix://{tmp_path / 'absent.sock'}"
    in_process, from_child = Recorder(), Recorder()
    client = HookClient(endpoint, in_process, info_timeout=0.5)
    driver = hook_worker(endpoint, from_child, info_timeout=0.5)
    try:
        client.execute(AskHookInfo())
        driver.execute(AskHookInfo())
        expected = in_process.wait_for(HookInfoFailed)
        assert expected.detail.startswith("DEADLINE_EXCEEDED")
        assert from_child.wait_for(HookInfoFailed) == expected
    finally:
        driver.close()
        client.close()
