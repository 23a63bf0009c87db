"""The Python control API: cancel/delete semantics, history, faults, pause, waits, state file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.emulator.conftest import START
from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import (
    EmulatorError,
    ErrorCode,
    ExecutionStatus,
    FakeClock,
    JobsEmulator,
)

DOC = {"op": "install"}


# ---- cancel and delete ------------------------------------------------------------------


def test_cancel_cancels_queued_but_not_in_progress_without_force(
    emulator: JobsEmulator, broker: Mosquitto, device: Device
) -> None:
    with Device(broker.port, "dev-2") as other:
        emulator.create_job("fw-1", DOC, ["dev-1", "dev-2"])
        device.update("fw-1", status="IN_PROGRESS")
        emulator.cancel_job("fw-1")
        assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.IN_PROGRESS
        assert emulator.describe("fw-1", "dev-2").status is ExecutionStatus.CANCELED
        outcome, body = other.update("fw-1", status="IN_PROGRESS", clientToken="late")
        assert (outcome, body["code"], body["clientToken"]) == (
            "rejected",
            "TerminalStateReached",
            "late",
        )
        # the one in progress may still finish
        assert device.update("fw-1", status="SUCCEEDED")[0] == "accepted"
        [info] = emulator.list_jobs()
        assert info.status == "CANCELED"


def test_forced_cancel_cancels_in_progress_too(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", stepTimeoutInMinutes=5)
    start = device.checkpoint()
    emulator.cancel_job("fw-1", force=True)
    found = emulator.describe("fw-1", "dev-1")
    assert found.status is ExecutionStatus.CANCELED
    assert found.force_canceled
    assert found.step_deadline is None
    assert device.update("fw-1", status="SUCCEEDED")[1]["code"] == "TerminalStateReached"
    device.barrier()
    assert device.bodies("notify", since=start) == [{"timestamp": int(START), "jobs": {}}]


def test_cancel_does_not_touch_finished_executions(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS")
    device.update("fw-1", status="FAILED")
    emulator.cancel_job("fw-1", force=True)
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.FAILED


def test_cancel_execution_needs_force_while_in_progress(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS")
    with pytest.raises(EmulatorError, match="force"):
        emulator.cancel_execution("fw-1", "dev-1")
    emulator.cancel_execution("fw-1", "dev-1", force=True)
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.CANCELED


def test_delete_needs_force_while_in_progress_then_forgets_the_job(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS")
    with pytest.raises(EmulatorError, match="force"):
        emulator.delete_job("fw-1")
    emulator.delete_job("fw-1", force=True)
    assert emulator.list_jobs() == []
    assert device.update("fw-1", status="SUCCEEDED")[1]["code"] == "ResourceNotFound"
    assert device.rejected("fw-1/get")["code"] == "ResourceNotFound"
    emulator.create_job("fw-1", {"op": "again"}, ["dev-1"])  # the id is free again
    assert device.accepted("fw-1/get")["execution"]["jobDocument"] == {"op": "again"}


@pytest.mark.parametrize(
    ("job_id", "document", "targets", "match"),
    [
        ("bad id", DOC, ["dev-1"], "job id"),
        ("x" * 65, DOC, ["dev-1"], "job id"),
        ("ok", DOC, [], "at least one"),
        ("ok", DOC, ["bad thing"], "thing name"),
        ("ok", {"big": "x" * 40_000}, ["dev-1"], "32768"),
        ("ok", {"nan": float("nan")}, ["dev-1"], "not JSON"),
    ],
)
def test_create_job_refuses_what_aws_would(
    emulator: JobsEmulator,
    job_id: str,
    document: dict[str, object],
    targets: list[str],
    match: str,
) -> None:
    with pytest.raises(EmulatorError, match=match):
        emulator.create_job(job_id, document, targets)
    assert emulator.list_jobs() == []


def test_create_job_refuses_a_duplicate_id(emulator: JobsEmulator) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    with pytest.raises(EmulatorError, match="already exists"):
        emulator.create_job("fw-1", DOC, ["dev-2"])


def test_unknown_job_control_calls_say_so(emulator: JobsEmulator) -> None:
    for call in (
        lambda: emulator.cancel_job("nope"),
        lambda: emulator.delete_job("nope"),
        lambda: emulator.describe("nope", "dev-1"),
        lambda: emulator.job("nope"),
    ):
        with pytest.raises(EmulatorError, match="nope"):
            call()


def test_list_jobs_reports_status_and_executions(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.create_job("b", DOC, ["dev-1", "dev-2"])
    device.update("a", status="IN_PROGRESS")
    device.update("a", status="SUCCEEDED")
    infos = {str(i.job.job_id): i for i in emulator.list_jobs()}
    assert infos["a"].status == "COMPLETED"
    assert infos["b"].status == "IN_PROGRESS"
    assert [e.thing_name for e in infos["b"].executions] == ["dev-1", "dev-2"]
    assert json.loads(json.dumps(infos["a"].to_json()))["executions"][0]["status"] == "SUCCEEDED"
    assert [e.job_id for e in emulator.pending("dev-1")] == ["b"]


# ---- history ----------------------------------------------------------------------------


def test_history_records_every_update_with_payload_result_and_time(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    emulator.create_job("fw-2", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", clientToken="h1", statusDetails={"a": "b"})
    clock.advance(2)
    device.update("fw-1", status="SUCCEEDED", expectedVersion=9, clientToken="h2")
    device.publish("fw-1/update", b"junk")
    device.update("fw-2", status="IN_PROGRESS")
    device.accepted("fw-1/get")
    device.barrier()

    entries = emulator.history("fw-1")
    assert [(h.status, h.result, h.code) for h in entries] == [
        ("IN_PROGRESS", "accepted", None),
        ("SUCCEEDED", "rejected", "VersionMismatch"),
        (None, "rejected", "InvalidJson"),
    ]
    first, second, third = entries
    assert first.request == {
        "status": "IN_PROGRESS",
        "clientToken": "h1",
        "statusDetails": {"a": "b"},
    }
    assert (first.at, second.at) == (START, START + 2)
    assert (first.execution_status, first.version_number) == ("IN_PROGRESS", 2)
    assert (second.execution_status, second.version_number) == ("IN_PROGRESS", 2)
    assert third.payload == "junk"
    assert third.request is None
    assert [h.seq for h in entries] == sorted(h.seq for h in entries)
    assert first.thing == "dev-1"
    assert first.topic == "$aws/things/dev-1/jobs/fw-1/update"

    assert [h.job_id for h in emulator.history()] == ["fw-1", "fw-1", "fw-1", "fw-2"]
    assert emulator.history(thing="dev-2") == []
    everything = emulator.history(operation=None)
    assert {h.operation for h in everything} == {"update", "describe", "get-pending"}
    assert json.loads(json.dumps(first.to_json()))["result"] == "accepted"


# ---- fault injection ---------------------------------------------------------------------


def test_injected_faults_reject_the_next_n_updates_then_stop(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    emulator.inject_fault("RequestThrottled", count=2)
    results = [device.update("fw-1", status="IN_PROGRESS", clientToken=f"f{i}") for i in range(3)]
    assert [(o, b.get("code"), b["clientToken"]) for o, b in results] == [
        ("rejected", "RequestThrottled", "f0"),
        ("rejected", "RequestThrottled", "f1"),
        ("accepted", None, "f2"),
    ]
    assert emulator.describe("fw-1", "dev-1").version_number == 2  # faults changed nothing
    assert [h.injected for h in emulator.history("fw-1")] == [True, True, False]


def test_faults_can_target_one_job(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.create_job("b", DOC, ["dev-1"])
    emulator.inject_fault(ErrorCode.INTERNAL_ERROR, job_id="b")
    assert device.update("a", status="IN_PROGRESS")[0] == "accepted"
    outcome, body = device.update("b", status="IN_PROGRESS")
    assert (outcome, body["code"]) == ("rejected", "InternalError")
    assert "executionState" not in body
    assert device.update("b", status="IN_PROGRESS")[0] == "accepted"


def test_terminal_state_reached_can_be_injected(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.inject_fault("TerminalStateReached")
    assert device.update("a", status="IN_PROGRESS")[1]["code"] == "TerminalStateReached"
    assert emulator.describe("a", "dev-1").status is ExecutionStatus.QUEUED


def test_faults_can_hit_other_operations(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.inject_fault("InternalError", operation="describe")
    emulator.inject_fault("RequestThrottled", operation="any", thing="dev-1")
    assert device.rejected("$next/get")["code"] == "InternalError"
    assert device.rejected("get")["code"] == "RequestThrottled"
    assert device.accepted("get")["queuedJobs"][0]["jobId"] == "a"
    emulator.inject_fault("InternalError", count=5)
    emulator.clear_faults()
    assert device.update("a", status="IN_PROGRESS")[0] == "accepted"


def test_only_retryable_or_terminal_codes_can_be_injected(emulator: JobsEmulator) -> None:
    with pytest.raises(EmulatorError, match="one of"):
        emulator.inject_fault("VersionMismatch")
    with pytest.raises(ValueError, match="NoSuchCode"):
        emulator.inject_fault("NoSuchCode")


# ---- pause ------------------------------------------------------------------------------


def test_pause_holds_requests_until_resume(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    start = device.checkpoint()
    emulator.pause()
    device.publish("a/update", {"status": "IN_PROGRESS", "clientToken": "held"})
    emulator.wait_for(lambda: emulator.held_requests == 1, timeout=2)
    assert device.messages(since=start) == []
    assert emulator.describe("a", "dev-1").status is ExecutionStatus.QUEUED
    emulator.resume()
    assert device.wait("a/update/accepted", since=start).body["clientToken"] == "held"
    assert emulator.describe("a", "dev-1").status is ExecutionStatus.IN_PROGRESS


def test_pause_with_drop_ignores_requests(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    start = device.checkpoint()
    emulator.pause(drop=True)
    device.publish("a/update", {"status": "IN_PROGRESS", "clientToken": "lost"})
    emulator.wait_for(lambda: emulator.history("a"), timeout=2)
    emulator.resume()
    device.barrier()
    assert device.messages("a/update/accepted", since=start) == []
    assert [h.result for h in emulator.history("a")] == ["dropped"]
    assert emulator.describe("a", "dev-1").status is ExecutionStatus.QUEUED


# ---- waiting ----------------------------------------------------------------------------


def test_wait_for_status_wakes_on_the_change(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])

    def finish() -> None:
        device.update("a", status="IN_PROGRESS")
        device.update("a", status="SUCCEEDED", statusDetails={"v": "2"})

    worker = threading.Thread(target=finish)
    worker.start()
    try:
        found = emulator.wait_for_status("a", "dev-1", timeout=3)  # any terminal status
    finally:
        worker.join()
    assert (found.status, found.details) == (ExecutionStatus.SUCCEEDED, {"v": "2"})


def test_wait_for_status_times_out_saying_what_it_saw(emulator: JobsEmulator) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    with pytest.raises(TimeoutError, match=r"QUEUED after 0\.1 s, expected SUCCEEDED"):
        emulator.wait_for_status("a", "dev-1", ExecutionStatus.SUCCEEDED, timeout=0.1)


def test_wait_for_returns_the_predicate_value(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    device.update("a", status="IN_PROGRESS")
    assert emulator.wait_for(lambda: emulator.history("a"), timeout=1)[0].status == "IN_PROGRESS"


# ---- state file and broker restarts ---------------------------------------------------------


def test_state_file_keeps_jobs_across_restarts(
    broker: Mosquitto, tmp_path: Path, clock: FakeClock
) -> None:
    state = tmp_path / "jobs.json"
    with (
        JobsEmulator(
            "127.0.0.1", broker.port, clock=clock, tick_interval=None, state_file=state
        ) as em,
        Device(broker.port) as dev,
    ):
        em.create_job("a", {"url": "${aws:iot:s3-presigned-url:https://b/x}"}, ["dev-1"], 300)
        em.create_job("b", DOC, ["dev-1"], in_progress_timeout_minutes=5)
        dev.update("b", status="IN_PROGRESS", statusDetails={"s": "1"}, stepTimeoutInMinutes=2)
    assert state.exists()

    with (
        JobsEmulator(
            "127.0.0.1", broker.port, clock=clock, tick_interval=None, state_file=state
        ) as em,
        Device(broker.port) as dev,
    ):
        b = em.describe("b", "dev-1")
        assert (b.status, b.details, b.version_number) == (
            ExecutionStatus.IN_PROGRESS,
            {"s": "1"},
            2,
        )
        assert em.job("a").presigned_expires_in == 300
        assert dev.accepted("$next/get")["execution"]["jobId"] == "b"
        assert "X-Amz-Expires=300" in dev.accepted("a/get")["execution"]["jobDocument"]["url"]
        clock.advance(120)  # the step timer survived the restart
        assert em.check_timeouts() == 1
        dev.update("a", status="IN_PROGRESS")
        em.create_job("c", DOC, ["dev-1"])
        assert [e.job_id for e in em.pending("dev-1")] == ["a", "c"]


def test_an_unreadable_state_file_is_refused(broker: Mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "jobs.json"
    state.write_text('{"jobs": "nope"')
    with pytest.raises(EmulatorError, match="move it away"):
        JobsEmulator("127.0.0.1", broker.port, state_file=state)


def test_start_fails_clearly_without_a_broker(tmp_path: Path) -> None:
    from tests.support.procs import free_port

    em = JobsEmulator("127.0.0.1", free_port(), tick_interval=None)
    with pytest.raises(ConnectionError, match="is mosquitto running"):
        em.start(timeout=0.3)


def test_emulator_serves_again_after_a_broker_restart(mosquitto: Mosquitto) -> None:
    with JobsEmulator("127.0.0.1", mosquitto.port, tick_interval=None) as em:
        em.create_job("a", DOC, ["dev-1"])
        mosquitto.restart()
        em.wait_for(lambda: em.serving, timeout=8)
        with Device(mosquitto.port) as dev:
            assert dev.accepted("$next/get")["execution"]["jobId"] == "a"
