"""What an idle daemon never uses is not loaded: each module costs RSS for months (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.device import Device
from upparat.devstack.stack import Stack


def loaded_after(code: str, *modules: str) -> list[str]:
    probe = f"import json, sys; {code}; print(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_daemon_never_loads_the_download_driver() -> None:
    # The job worker's module is the parent's side only: the driver runs in the child.
    code = "import upparat.cli, upparat.daemon, upparat.worker"
    assert loaded_after(code, "upparat.io.download", "concurrent.futures") == []


GRPC_AND_PROTOBUF = (
    "grpc",
    "google.protobuf",
    "upparat.hooks.client",
    "upparat.hooks.v1.hooks_pb2",
)


def test_the_daemon_never_loads_grpc_and_protobuf() -> None:
    # The hook client runs in the job worker, a child process (upparat.worker).
    code = "import upparat.cli, upparat.daemon, upparat.worker"
    assert loaded_after(code, *GRPC_AND_PROTOBUF) == []


def test_the_hook_server_loads_its_stubs_and_health_only_for_a_connection() -> None:
    code = "import hookservers.shell.main"
    stubs = ("hookservers.shell.server", "upparat.hooks.v1.hooks_pb2", "grpc_health.v1.health")
    assert loaded_after(code, *stubs, "google.protobuf", "grpc") == []
    # What the first connection loads: the probe would see it.
    assert loaded_after(f"{code}, hookservers.shell.server", *stubs) == list(stubs)


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[5].rsplit("/", 1)[-1] for line in f if len(line.split()) > 5}


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_an_idle_daemon_after_its_start_up_get_info_has_no_grpc_and_no_child(
    tmp_path: Path,
) -> None:
    device = Device(tmp_path / "device")
    with Stack(tmp_path / "stack", thing="device-1", hooks=device.hooks()) as stack:
        stack.start(daemon=False)
        assert stack.hookserver is not None
        hookserver = stack.hookserver.pid
        before = mapped_files(hookserver)
        assert not any("_message" in name or "upb" in name for name in before), before
        assert not any(name.startswith("cygrpc") for name in before), before
        stack.start_daemon()
        assert stack.daemon is not None
        daemon = stack.daemon.pid
        deadline = time.monotonic() + 30
        while "hook server upparat-hookserver" not in stack.daemon_log():
            assert time.monotonic() < deadline, stack.daemon_log()
            time.sleep(0.1)
        while children(daemon):  # the job worker answers GetInfo, then stops (linger)
            assert time.monotonic() < deadline, children(daemon)
            time.sleep(0.05)
        daemon_files = mapped_files(daemon)
        hookserver_files = mapped_files(hookserver)
    # The probe sees gRPC where it is loaded: in the hook server, which served the call.
    assert any(name.startswith("cygrpc") for name in hookserver_files)
    assert any(name.startswith("_message") for name in hookserver_files)
    assert not any(name.startswith(("cygrpc", "_message")) for name in daemon_files)
