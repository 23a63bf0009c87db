"""The daemon as a process: stopping it, restarting the hook server, a 1.12 config file."""

from __future__ import annotations

import contextlib
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    NEW,
    OLD,
    Device,
    MiB,
    create_update,
    download_path,
    finished,
    journal,
    outcome,
    wait_until,
)
from upparat.core.model import JobId, JournalRecord, Phase
from upparat.devstack.faults import signal_other_thread
from upparat.devstack.procs import child_pids, free_port
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = "upparat_fw_2_0_0"


def wait_idle(stack: Stack) -> None:
    wait_until(
        lambda: stack.control.history(thing=stack.thing, operation="get-pending"),
        "the daemon to ask for its jobs",
    )


def stop_timed(stack: Stack) -> tuple[int | None, float]:
    began = time.monotonic()
    status = stack.stop_daemon(timeout=30)
    return status, time.monotonic() - began


def test_sigterm_exits_0_within_5_s_mid_download_and_when_idle(stack: Stack) -> None:
    bundle = f"{JOB}.bundle"
    stack.files.rate = 512 * 1024
    create_update(stack, JOB, size=4 * MiB)
    wait_until(lambda: stack.files.served.get(bundle, 0) >= 512 * 1024, "the download to run")

    status, took = stop_timed(stack)
    assert status == 0
    assert took < 5
    wait_until(lambda: stack.files.active == 0, "the download connection to close")
    # Stopped, not cancelled: the partial file and the journal wait for the next start.
    assert download_path(stack, JOB).stat().st_size > 0
    assert journal(stack) == JournalRecord(
        job_id=JobId(JOB), phase=Phase.DOWNLOADING, previous_version=OLD, execution_number=1
    )
    assert stack.execution(JOB)["status"] == "IN_PROGRESS"

    stack.files.rate = None
    stack.start_daemon()
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    assert stack.files.served[bundle] <= 4 * MiB + MiB

    status, took = stop_timed(stack)
    assert status == 0
    assert took < 5
    assert "upparat stopped" in stack.daemon_log()


def test_sigterm_delivered_to_any_thread_stops_the_daemon(stack: Stack) -> None:
    # The kernel may hand a signal sent to the process to any of its threads (paho's, a
    # worker's reader); Python runs the handler in the main thread, asleep in the inbox.
    wait_idle(stack)  # paho's thread runs, and the one asleep on the signal pipe
    daemon = stack.daemon
    assert daemon is not None
    # Quiet: the job worker of the start-up GetInfo has gone, no event is on its way.
    wait_until(lambda: not child_pids(daemon.pid), "the job worker to stop", 30)
    signal_other_thread(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert "upparat stopped" in stack.daemon_log()


def test_hook_server_restart_while_idle(stack: Stack) -> None:
    wait_idle(stack)
    stack.stop_hookserver()
    stack.start_hookserver()

    create_update(stack, JOB)
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")


def test_jobs_run_on_after_the_hook_server_re_executed_to_free_grpc(
    device: Device, make_stack: StackFactory
) -> None:
    # idle_release short: the hook server drops gRPC and re-executes itself (same PID, same
    # socket) after the daemon's start-up GetInfo, again after the job, then serves on.
    stack = make_stack(device, config={"hookserver": {"idle_release": "0.3"}})
    assert stack.hookserver is not None
    pid = stack.hookserver.pid
    log = stack.workdir / "hookserver.log"

    def reexecs() -> int:
        return log.read_text().count("re-executed to give back")

    wait_idle(stack)
    wait_until(lambda: reexecs() >= 1, "the re-exec after the start-up GetInfo")
    wait_until(lambda: "cygrpc" not in Path(f"/proc/{pid}/maps").read_text(), "gRPC unloaded")
    create_update(stack, JOB)
    assert outcome(finished(stack, JOB)) == ("SUCCEEDED", "complete_ready")
    before = reexecs()
    wait_until(lambda: reexecs() > before, "the re-exec after the job", timeout=20)
    assert stack.hookserver.poll() is None
    assert stack.hookserver.pid == pid
    create_update(stack, "upparat_fw_3_0_0", version="3.0.0")
    assert outcome(finished(stack, "upparat_fw_3_0_0")) == ("SUCCEEDED", "complete_ready")
    assert device.version == "3.0.0"


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may end while we look
            names.append((task / "comm").read_text().strip())
    return sorted(names)


GRPC_LIBRARIES = ("cygrpc", "_message")
"""gRPC core and protobuf's upb, as their shared objects appear in /proc/<pid>/maps."""


def grpc_mapped(pid: int) -> list[str]:
    """The gRPC and protobuf libraries mapped into `pid`: what Python never gives back."""
    with open(f"/proc/{pid}/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/" in line}
    return sorted(p for p in paths if p.rsplit("/", 1)[-1].startswith(GRPC_LIBRARIES))


def wait_workers_gone(stack: Stack) -> int:
    """Wait until the daemon's job worker has stopped (after its linger,
    with nothing in flight); returns the daemon's PID."""
    assert stack.daemon is not None
    pid = stack.daemon.pid
    wait_until(lambda: not child_pids(pid), "the daemon's workers to stop", timeout=30)
    return pid


def job_leaves_no_grpc(stack: Stack, pid: int, job_id: str, version: str = NEW) -> None:
    """Runs `job_id` to SUCCEEDED; once its worker has stopped, the daemon (still `pid`)
    maps no gRPC or protobuf."""
    create_update(stack, job_id, version=version)
    assert outcome(finished(stack, job_id)) == ("SUCCEEDED", "complete_ready")
    assert wait_workers_gone(stack) == pid
    assert grpc_mapped(pid) == []


def test_an_idle_daemon_holds_no_grpc_before_or_after_a_job_and_still_runs_the_next(
    stack: Stack,
) -> None:
    # GetInfo at start, the job's hook calls and its download ran in the daemon's worker
    # processes, which end once idle: the daemon itself never maps gRPC or protobuf, so
    # neither their threads (several wakeups a second while a channel exists) nor their
    # memory (Python never gives it back) stay for the months it waits (issue 16).
    wait_idle(stack)
    wait_until(lambda: "hook server upparat-hookserver" in stack.daemon_log(), "GetInfo")
    pid = wait_workers_gone(stack)
    assert grpc_mapped(pid) == []
    job_leaves_no_grpc(stack, pid, JOB)
    assert not any(n in ("event_engine", "grpc_global_tim") for n in thread_names(pid))
    job_leaves_no_grpc(stack, pid, "upparat_fw_3_0_0", version="3.0.0")


def test_the_package_report_at_start_leaves_no_grpc_in_the_daemon(
    device: Device, make_stack: StackFactory
) -> None:
    # [service] package_name: the daemon asks the version hook at start, for the $package
    # shadow, before any job; and again when a job ends.
    stack = make_stack(device, config={"service": {"package_name": "firmware"}})
    wait_until(lambda: "runs (the version hook)" in stack.daemon_log(), "the start-up report")
    pid = wait_workers_gone(stack)
    assert grpc_mapped(pid) == []
    job_leaves_no_grpc(stack, pid, JOB)


# --- an upparat 1.12 config file ----------------------------------------------------------


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30
    )


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    d.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return {
        name: d / name
        for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


def point_at(text: str, values: dict[tuple[str, str], str], added: dict[str, str]) -> str:
    """`text` with the values of (section, key) replaced and `added` lines put at the end of
    their section; comments and every other line stay as they are."""
    out: list[str] = []
    section = ""
    replaced: set[tuple[str, str]] = set()

    def close_section() -> None:
        if section in added:
            while out and not out[-1].strip():
                out.pop()
            out.extend([added[section], ""])

    for line in text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]\s*", line)
        if header:
            close_section()
            section = header.group(1)
        setting = re.fullmatch(r"(\w+)\s*=.*", line)
        if setting and (section, setting.group(1)) in values:
            key = (section, setting.group(1))
            line = f"{key[1]} = {values[key]}"
            replaced.add(key)
        out.append(line)
    close_section()
    assert replaced == set(values), f"not in the 1.12 example: {set(values) - replaced}"
    return "\n".join(out) + "\n"


def test_upparat_1_12_config_runs_a_job(
    device: Device, make_stack: StackFactory, tmp_path: Path
) -> None:
    """examples/upparat-1.12.conf, pointed at the stack: MQTT with client certificates,
    https download, the five hook scripts; only host, port and paths differ."""
    pki = make_pki(tmp_path / "pki")
    file_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    file_tls.load_cert_chain(pki["server.crt"], pki["server.key"])
    thing = "gateway-0042"  # the example's thing name, unchanged
    hookserver_state = tmp_path / "hookserver-state"
    stack = make_stack(
        device,
        thing=thing,
        start=False,
        env={
            "SSL_CERT_FILE": str(pki["ca.crt"]),  # the downloader trusts the test CA
            # What the hook server's unit sets (StateDirectory=); 1.12 has no [hookserver].
            "STATE_DIRECTORY": str(hookserver_state),
        },
        file_tls=file_tls,
    )
    tls_port = free_port()
    stack.broker.extra_conf = (
        f"listener {tls_port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {pki['ca.crt']}\ncertfile {pki['server.crt']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\n"
    )
    stack.start(daemon=False)

    example = (ROOT / "examples" / "upparat-1.12.conf").read_text()
    hooks = device.hooks()
    config = point_at(
        example,
        {
            ("service", "download_location"): str(stack.download_dir),
            # A closed port on loopback: nothing leaves the machine.
            ("service", "sentry"): f"http://0123456789abcdef@127.0.0.1:{free_port()}/1234567",
            ("broker", "host"): "127.0.0.1",
            ("broker", "port"): str(tls_port),
            ("broker", "cafile"): str(pki["ca.crt"]),
            ("broker", "certfile"): str(pki["client.crt"]),
            ("broker", "keyfile"): str(pki["client.key"]),
            **{("hooks", name): str(path) for name, path in hooks.items()},
        },
        # 1.12 had no such keys; their defaults are system paths a test must not touch.
        added={
            "service": f"state_dir = {stack.state_dir}",
            "hooks": f"endpoint = unix://{stack.socket}",
        },
    )
    assert "retry_interval = 30" in config
    assert "max_retries = 120" in config
    stack.stop_hookserver()
    stack.config_path.write_text(config)
    stack.start_hookserver()
    stack.start_daemon()

    create_update(stack, JOB)
    done = finished(stack, JOB)
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert stack.files.url("x").startswith("https://")
    assert stack.files.served == {f"{JOB}.bundle": MiB}
    assert device.version == "2.0.0"
    assert (hookserver_state / "verified").is_dir()  # the install file was checked there
    log = stack.daemon_log()
    assert "thing_name=gateway-0042" in log
    assert f"cafile={pki['ca.crt']}" in log
