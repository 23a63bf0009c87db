"""The emulator as its own process: `python -m upparat.emulator` and its `ctl` command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.device import Device
from tests.support.procs import Mosquitto, free_port, stop_process
from upparat.emulator import EmulatorControl, EmulatorError, FakeClock, JobsEmulator

REPO = Path(__file__).resolve().parents[2]


def serve(port: int, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / "emulator.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "upparat.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    return proc


def ctl(port: int, *args: str, timeout: str = "3") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "upparat.emulator",
            "ctl",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout",
            timeout,
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def control(broker: Mosquitto) -> Iterator[EmulatorControl]:
    with EmulatorControl("127.0.0.1", broker.port, timeout=3) as c:
        yield c


def test_cli_serves_devices_and_ctl_drives_it(
    broker: Mosquitto, tmp_path: Path, control: EmulatorControl
) -> None:
    state = tmp_path / "state.json"
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps({"url": "${aws:iot:s3-presigned-url:https://b/fw.bin}"}))
    proc = serve(broker.port, tmp_path, "--state-file", str(state))
    try:
        assert control.wait_ready(timeout=10)["jobs"] == 0
        created = ok(
            ctl(
                broker.port,
                "create-job",
                "--job-id",
                "fw-1",
                "--thing",
                "dev-1",
                "--thing",
                "dev-2",
                "--document",
                f"@{doc}",
                "--presigned-expires-in",
                "120",
            )
        )
        assert created["jobId"] == "fw-1"
        assert created["status"] == "IN_PROGRESS"
        assert [e["thingName"] for e in created["executions"]] == ["dev-1", "dev-2"]

        with Device(broker.port, "dev-1") as dev:
            url = dev.accepted("fw-1/get")["execution"]["jobDocument"]["url"]
            assert "X-Amz-Expires=120" in url
            dev.update("fw-1", status="IN_PROGRESS", statusDetails={"step": "download"})
            dev.update("fw-1", status="SUCCEEDED", statusDetails={"step": "done"})

        described = ok(ctl(broker.port, "describe", "fw-1", "--thing", "dev-1"))
        assert (described["status"], described["statusDetails"], described["versionNumber"]) == (
            "SUCCEEDED",
            {"step": "done"},
            3,
        )
        history = ok(ctl(broker.port, "history", "fw-1"))
        assert [(h["status"], h["result"]) for h in history] == [
            ("IN_PROGRESS", "accepted"),
            ("SUCCEEDED", "accepted"),
        ]
        cancelled = ok(ctl(broker.port, "cancel-job", "fw-1"))
        assert [e["status"] for e in cancelled["executions"]] == ["SUCCEEDED", "CANCELED"]

        missing = ctl(broker.port, "describe", "nope", "--thing", "dev-1")
        assert missing.returncode == 1
        assert "nope" in missing.stderr

        # The state file carries the jobs over a restart of the process.
        stop_process(proc)
        assert proc.returncode == 0
        proc = serve(broker.port, tmp_path, "--state-file", str(state))
        control.wait_ready(timeout=10)
        [job] = control.list_jobs()
        assert job["jobId"] == "fw-1"
        assert control.describe("fw-1", "dev-1")["status"] == "SUCCEEDED"
    finally:
        stop_process(proc)


def test_ctl_reads_and_writes_named_shadows_and_ping_tells_the_s3_endpoint(
    broker: Mosquitto, tmp_path: Path, control: EmulatorControl
) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "upparat.emulator", "--port", str(broker.port),
         "--s3-endpoint", "ftp://x"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "an S3 endpoint must be an http(s) URL" in bad.stderr
    proc = serve(broker.port, tmp_path, "--s3-endpoint", "http://127.0.0.1:9/s3/")
    try:
        assert control.wait_ready(timeout=10)["s3Endpoint"] == "http://127.0.0.1:9/s3"
        assert ok(ctl(broker.port, "shadow-get", "--thing", "dev-1")) is None
        body = '{"state": {"reported": {"firmware": {"version": "1.0.0"}}}}'
        updated = ok(ctl(broker.port, "shadow-update", "--thing", "dev-1", "--document", body))
        assert updated["version"] == 1
        got = ok(ctl(broker.port, "shadow-get", "--thing", "dev-1"))
        assert got["state"] == {"reported": {"firmware": {"version": "1.0.0"}}}
        stale = '{"state": {"reported": {}}, "version": 9}'
        refused = ctl(broker.port, "shadow-update", "--thing", "dev-1", "--document", stale)
        assert refused.returncode == 1
        assert "409 Version conflict" in refused.stderr
        ok(ctl(broker.port, "inject-shadow-fault", "500", "--thing", "dev-1"))
        with Device(broker.port, "dev-1", shadow="$package") as dev:
            assert dev.rejected("get")["code"] == 500
            assert dev.accepted("get")["version"] == 1
        history = ok(ctl(broker.port, "shadow-history", "--thing", "dev-1"))
        assert [(h["operation"], h["source"], h["code"]) for h in history] == [
            ("update", "control", None),
            ("update", "control", 409),
            ("get", "mqtt", 500),
            ("get", "mqtt", None),
        ]
    finally:
        stop_process(proc)


def test_seconds_per_minute_makes_timeouts_fast_out_of_process(
    broker: Mosquitto, tmp_path: Path, control: EmulatorControl
) -> None:
    proc = serve(broker.port, tmp_path, "--seconds-per-minute", "0.2", "--tick", "0.05")
    try:
        control.wait_ready(timeout=10)
        control.create_job("fw-1", {"op": "x"}, ["dev-1"], in_progress_timeout_minutes=1)
        with Device(broker.port, "dev-1") as dev:
            start = dev.checkpoint()
            dev.update("fw-1", status="IN_PROGRESS")
            waited = ok(
                ctl(
                    broker.port,
                    "wait-status",
                    "fw-1",
                    "--thing",
                    "dev-1",
                    "--status",
                    "TIMED_OUT",
                    "--wait",
                    "5",
                )
            )
            assert waited["status"] == "TIMED_OUT"
            dev.wait(lambda m: m.suffix == "notify" and m.body["jobs"] == {}, since=start)
    finally:
        stop_process(proc)


def test_ctl_without_an_emulator_says_so(broker: Mosquitto) -> None:
    result = ctl(broker.port, "list", timeout="0.3")
    assert result.returncode == 1
    assert "no answer" in result.stderr
    assert "python -m upparat.emulator" in result.stderr


def test_ctl_without_a_broker_says_so() -> None:
    result = ctl(free_port(), "list", timeout="0.3")
    assert result.returncode == 1
    assert "no MQTT broker" in result.stderr


def test_serve_without_a_broker_exits_with_a_message(tmp_path: Path) -> None:
    proc = serve(free_port(), tmp_path, "--connect-timeout", "0.3")
    try:
        assert proc.wait(timeout=20) == 1
    finally:
        stop_process(proc)
    assert "is mosquitto running there?" in (tmp_path / "emulator.log").read_text()


def test_ctl_rejects_a_document_that_is_not_an_object(broker: Mosquitto, tmp_path: Path) -> None:
    result = ctl(broker.port, "create-job", "--job-id", "j", "--thing", "t", "--document", "[1]")
    assert result.returncode == 1
    assert "JSON object" in result.stderr
    result = ctl(
        broker.port,
        "create-job",
        "--job-id",
        "j",
        "--thing",
        "t",
        "--document",
        f"@{tmp_path}/none",
    )
    assert result.returncode == 1
    assert "cannot read" in result.stderr


# ---- the same control channel, with the emulator in this process (fast) ------------------------


def test_control_client_covers_every_verb(
    emulator: JobsEmulator, device: Device, control: EmulatorControl, clock: FakeClock
) -> None:
    assert control.wait_ready(timeout=3)["clientId"] == emulator.client_id
    control.create_job("a", {"op": "x"}, "dev-1")
    control.create_job("b", {"op": "y"}, ["dev-1"])
    assert [p["jobId"] for p in control.pending("dev-1")] == ["a", "b"]

    control.inject_fault("RequestThrottled", count=1, job_id="a")
    assert device.update("a", status="IN_PROGRESS")[1]["code"] == "RequestThrottled"
    control.inject_fault("InternalError", count=3)
    control.clear_faults()
    assert device.update("a", status="IN_PROGRESS", stepTimeoutInMinutes=1)[0] == "accepted"
    assert [h["code"] for h in control.history("a")] == ["RequestThrottled", None]
    assert {h["operation"] for h in control.history(operation="all")} >= {"update"}

    control.pause()
    device.publish("b/update", {"status": "IN_PROGRESS"})
    control.resume()
    assert control.wait_for_status("b", "dev-1", "IN_PROGRESS", timeout=3)["versionNumber"] == 2

    clock.advance(60)
    assert control.check_timeouts() == 1
    assert control.describe("a", "dev-1")["status"] == "TIMED_OUT"

    assert control.cancel_execution("b", "dev-1", force=True)["status"] == "CANCELED"
    control.delete_job("a")
    assert [j["jobId"] for j in control.list_jobs()] == ["b"]


def test_control_errors_come_back_as_emulator_errors(
    emulator: JobsEmulator, control: EmulatorControl
) -> None:
    with pytest.raises(EmulatorError, match="unknown control verb"):
        control.call("explode")
    with pytest.raises(EmulatorError, match="jobId must be a string"):
        control.call("describe", {"thing": "dev-1"})
    control.create_job("a", {}, ["dev-1"])
    with pytest.raises(EmulatorError, match="already exists"):
        control.create_job("a", {}, ["dev-1"])
    with pytest.raises(EmulatorError, match="one of"):
        control.inject_fault("VersionMismatch")
    with pytest.raises(EmulatorError, match="NoSuchCode"):
        control.inject_fault("NoSuchCode")
    with pytest.raises(TimeoutError, match=r"is QUEUED after 0\.2 s"):
        control.wait_for_status("a", "dev-1", "SUCCEEDED", timeout=0.2)


def test_malformed_control_requests_do_not_hurt(
    emulator: JobsEmulator, broker: Mosquitto, control: EmulatorControl
) -> None:
    with Device(broker.port) as dev:
        for payload in (
            b"garbage",
            b"[]",
            b'{"replyTo": "$aws/things/x/jobs/get"}',
            b'{"replyTo": 5}',
        ):
            dev.publish_raw("upparat-emulator/control/list", payload)
    assert control.wait_ready(timeout=3)
