"""upparat-hookserver gives gRPC's memory back between jobs by re-executing itself.

Once the last connection has been gone `[hookserver] idle_release` seconds, the private
gRPC server is dropped and the process execs a fresh copy of itself: the same PID, the same
listening socket, the connections accepted meanwhile passed on. Whether gRPC core is loaded
is read from /proc/<pid>/maps (cygrpc's shared object), not from timings.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hookservers.shell import ondemand
from tests.hooks.contract_cases import (
    HookServerFactory,
    RunningHookServer,
    health_status,
    job,
)
from upparat.devstack.faults import signal_other_thread
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc

RELEASE = 0.3
"""idle_release of the servers here, seconds."""


def grpc_loaded(pid: int) -> bool:
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


def wait_for(condition: object, what: str, timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def version_call(server: RunningHookServer) -> str:
    """One GetVersion on a channel of its own, closed after (the daemon's closes too)."""
    channel = server.new_channel()
    try:
        stub = hooks_pb2_grpc.HookServiceStub(channel)
        reply = stub.GetVersion(hooks_pb2.GetVersionRequest(context=job()), timeout=10)
        assert reply.result.outcome == hooks_pb2.OUTCOME_SUCCESS, reply.result
        return reply.version
    finally:
        channel.close()


def test_after_the_last_connection_the_server_re_executes_and_serves_on(
    factory: HookServerFactory,
) -> None:
    server = factory.start({"version": "echo 1.0.0"}, options={"idle_release": f"{RELEASE}"})
    server.close()  # the factory's channel of its start-up health check
    pid = server.pid
    # That health check was a connection: the first re-exec follows it.
    wait_for(lambda: "re-executed to give back" in server.log(), "the first re-exec")
    wait_for(lambda: not grpc_loaded(pid), "gRPC unloaded")

    for spell in (2, 3):
        assert version_call(server) == "1.0.0"
        assert grpc_loaded(pid)
        wait_for(
            lambda n=spell: server.log().count("re-executed to give back") >= n,
            f"re-exec number {spell}",
        )
        wait_for(lambda: not grpc_loaded(pid), "gRPC unloaded")
        assert server.proc.poll() is None
        assert server.pid == pid  # the same process: systemd sees nothing

    assert version_call(server) == "1.0.0"  # the socket passed on still serves
    assert server.log().count("listening on") == 1


def test_a_config_changed_on_disk_stops_the_re_exec_and_keeps_serving(
    factory: HookServerFactory,
) -> None:
    server = factory.start({"version": "echo 1.0.0"}, options={"idle_release": f"{RELEASE}"})
    with server.config_path.open("a") as f:
        f.write("\n# edited while running\n")
    server.close()

    assert version_call(server) == "1.0.0"
    wait_for(lambda: "not re-executing" in server.log(), "the refusal to re-exec")

    assert "re-executed" not in server.log()
    assert str(server.config_path) in server.log()
    assert version_call(server) == "1.0.0"
    assert server.proc.poll() is None


def test_a_running_script_is_never_cut_off_by_a_re_exec(
    factory: HookServerFactory, tmp_path: Path
) -> None:
    # The daemon's call goes away while the script runs on (it ignores SIGTERM for a while):
    # the connection is gone, the script is not, so the process must not be replaced.
    done = tmp_path / "done"
    server = factory.start(
        {"version": f"trap '' TERM; sleep 1.5; touch {done}; echo 1.0.0"},
        options={"idle_release": f"{RELEASE}", "cancel_grace_period": "5"},
    )
    server.close()
    wait_for(lambda: "re-executed to give back" in server.log(), "the re-exec after start")
    channel = server.new_channel()
    call = hooks_pb2_grpc.HookServiceStub(channel).GetVersion.future(
        hooks_pb2.GetVersionRequest(context=job()), timeout=10
    )
    time.sleep(0.3)
    call.cancel()
    channel.close()

    wait_for(done.exists, "the script ended on its own")
    time.sleep(RELEASE + 0.5)
    assert server.log().count("re-executed") == 1  # the one after start only
    assert version_call(server) == "1.0.0"
    wait_for(lambda: server.log().count("re-executed") == 2, "the re-exec after it")


def test_after_a_retry_later_grpc_goes_but_the_program_stays_until_the_hold_ends(
    factory: HookServerFactory,
) -> None:
    # A download hook that says "not yet" is called again every retry_interval: the
    # server drops gRPC's server between calls (nothing of it wakes), but keeps gRPC
    # loaded for the next call until retry_hold has passed, then re-executes as always.
    server = factory.start(
        {"version": "echo 1.0.0", "download": "echo 'window closed'; exit 3"},
        options={"idle_release": f"{RELEASE}", "retry_hold": "3", "log_level": "DEBUG"},
    )
    server.close()
    pid = server.pid
    wait_for(lambda: "re-executed to give back" in server.log(), "the re-exec after start")
    wait_for(lambda: not grpc_loaded(pid), "gRPC unloaded")
    dropped = server.log().count("gRPC server dropped")

    for _ in range(2):  # the second call comes to the program the first one left
        channel = server.new_channel()
        try:
            reply = hooks_pb2_grpc.HookServiceStub(channel).CheckDownload(
                hooks_pb2.CheckDownloadRequest(context=job()), timeout=10
            )
        finally:
            channel.close()
        assert reply.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER, reply.result
        dropped += 1
        wait_for(lambda n=dropped: server.log().count("gRPC server dropped") >= n, "the drop")
        time.sleep(RELEASE + 0.2)  # a re-exec would follow the drop at once
        assert server.log().count("re-executed") == 1  # the one after start only
        assert grpc_loaded(pid)

    wait_for(lambda: server.log().count("re-executed") == 2, "the re-exec once the hold ended")
    wait_for(lambda: not grpc_loaded(pid), "gRPC unloaded")
    assert version_call(server) == "1.0.0"


# -- the hand-over, on its own ------------------------------------------------------------


class _Health:
    """A gRPC server with health only, built the way the hook server builds its own."""

    def __init__(self) -> None:
        self.built = 0
        self.pool = futures.ThreadPoolExecutor(max_workers=4)

    def __call__(self) -> grpc.Server:
        self.built += 1
        server = grpc.server(self.pool)
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        return server


class _Relay:
    """One listening socket, its gRPC builder, and what a test starts on it; `close` stops
    every server and channel."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "l.sock"
        self.listener = ondemand.bind_listener(self.path, 0o600)
        self.make = _Health()
        self._servers: list[ondemand.OnDemandServer] = []
        self._channels: list[grpc.Channel] = []

    def serve(self, **options: Any) -> ondemand.OnDemandServer:
        server = ondemand.OnDemandServer(self.listener, self.make, idle_stop=RELEASE, **options)
        server.start()
        self._servers.append(server)
        return server

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(f"unix://{self.path}")
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for server in self._servers:
            server.stop(grace=0.1)
        self.make.pool.shutdown()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[_Relay]:
    made = _Relay(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_connection_accepted_by_the_program_before_is_served_first(relay: _Relay) -> None:
    channel = relay.channel()
    answer: list[int] = []
    asking = threading.Thread(target=lambda: answer.append(health_status(channel)))
    asking.start()
    conn, _ = relay.listener.accept()  # what the program before accepted, then handed over
    relay.serve(held=(conn,))

    asking.join(10)
    assert answer == [health_pb2.HealthCheckResponse.SERVING]
    assert relay.make.built == 1


def test_a_hand_over_stops_accepting_and_a_failed_exec_resumes(relay: _Relay) -> None:
    server = relay.serve()
    assert server.hand_over() == []
    # A client that connects now waits in the backlog: nobody accepts it.
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(relay.path))
    time.sleep(0.2)
    assert relay.make.built == 0

    server.resume([])
    wait_for(lambda: relay.make.built == 1, "the waiting client served after resume")
    client.close()
    assert health_status(relay.channel()) == health_pb2.HealthCheckResponse.SERVING


def test_no_hand_over_while_a_connection_is_open(relay: _Relay) -> None:
    server = relay.serve()
    channel = relay.channel()
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert server.hand_over() is None
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_the_idle_callback_runs_once_grpc_is_dropped(relay: _Relay) -> None:
    idle = threading.Event()
    server = relay.serve(on_idle=idle.set)
    channel = relay.channel()
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert not idle.is_set()
    channel.close()
    assert idle.wait(10)
    assert not server.grpc_running
    assert os.path.exists(relay.path)  # the socket file is main.py's to remove


# -- what a killed server left in /tmp -----------------------------------------------------


def test_the_record_names_the_private_directory_while_a_server_runs(
    relay: _Relay, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    relay.serve(record=record)
    channel = relay.channel()
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    private = Path(record.read_text().strip())
    assert private.name.startswith(ondemand.PRIVATE_PREFIX)
    assert (private / "grpc.sock").exists()
    channel.close()
    wait_for(lambda: not record.exists(), "the record removed with the server")
    assert not private.exists()


def test_a_start_removes_what_the_record_names_and_nothing_else(tmp_path: Path) -> None:
    record = tmp_path / "record"
    assert ondemand.remove_recorded(record) is None  # none: a clean stop before

    left = Path(tempfile.mkdtemp(prefix=ondemand.PRIVATE_PREFIX))
    (left / "grpc.sock").touch()
    record.write_text(f"{left}\n")
    assert ondemand.remove_recorded(record) == left
    assert not left.exists()
    assert not record.exists()

    # Never anything but a private directory of ours, and never through a symlink.
    other = tmp_path / "not-ours"
    other.mkdir()
    link = Path(tempfile.gettempdir()) / f"{ondemand.PRIVATE_PREFIX}link-{os.getpid()}"
    link.symlink_to(other)
    try:
        for named in (other, link, Path("relative") / f"{ondemand.PRIVATE_PREFIX}x"):
            record.write_text(f"{named}\n")
            assert ondemand.remove_recorded(record) is None
            assert not record.exists()
        assert other.is_dir()
    finally:
        link.unlink()


# -- stopping -------------------------------------------------------------------------------


def test_sigterm_delivered_to_any_thread_stops_the_server(factory: HookServerFactory) -> None:
    server = factory.start({"version": "echo 1.0.0"})
    assert version_call(server) == "1.0.0"  # gRPC's threads run now
    signal_other_thread(server.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert "received SIGTERM" in server.log()
    assert server.log().rstrip().endswith("stopped")
