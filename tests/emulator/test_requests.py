"""The device requests against a real broker: answer topics, shapes, versions, clientToken."""

from __future__ import annotations

import pytest

from tests.emulator.conftest import START
from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import ExecutionStatus, FakeClock, JobsEmulator

T0 = int(START)
DOC = {"operation": "install", "version": "2.0.1", "nested": {"list": [1, "two", None]}}


def test_get_pending_with_nothing_pending_has_both_lists(device: Device) -> None:
    body = device.accepted("get", {"clientToken": "abc"})
    assert body == {"inProgressJobs": [], "queuedJobs": [], "timestamp": T0, "clientToken": "abc"}


def test_get_pending_lists_summaries_in_progress_then_queued(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    clock.advance(5)
    emulator.create_job("b", DOC, ["dev-1"])
    clock.advance(5)
    emulator.create_job("c", DOC, ["dev-1"])
    clock.advance(5)
    assert device.update("b", status="IN_PROGRESS")[0] == "accepted"

    body = device.accepted("get")
    assert body["inProgressJobs"] == [
        {
            "jobId": "b",
            "queuedAt": T0 + 5,
            "startedAt": T0 + 15,
            "lastUpdatedAt": T0 + 15,
            "versionNumber": 2,
            "executionNumber": 1,
        }
    ]
    # startedAt is absent while QUEUED; oldest first
    assert body["queuedJobs"] == [
        {
            "jobId": "a",
            "queuedAt": T0,
            "lastUpdatedAt": T0,
            "versionNumber": 1,
            "executionNumber": 1,
        },
        {
            "jobId": "c",
            "queuedAt": T0 + 10,
            "lastUpdatedAt": T0 + 10,
            "versionNumber": 1,
            "executionNumber": 1,
        },
    ]
    assert "clientToken" in body


def test_get_pending_without_client_token_omits_it(device: Device) -> None:
    start = device.mark()
    device.publish("get", b"")  # an empty payload is a valid request
    body = device.wait("get/accepted", since=start).body
    assert body == {"inProgressJobs": [], "queuedJobs": [], "timestamp": T0}


def test_describe_returns_the_full_execution(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    body = device.accepted("fw-1/get", {"clientToken": "c-1"})
    assert body == {
        "execution": {
            "jobId": "fw-1",
            "thingName": "dev-1",
            "jobDocument": DOC,
            "status": "QUEUED",
            "queuedAt": T0,
            "lastUpdatedAt": T0,
            "versionNumber": 1,
            "executionNumber": 1,
        },
        "timestamp": T0,
        "clientToken": "c-1",
    }


def test_describe_shows_status_details_and_started_at_once_set(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    clock.advance(7)
    device.update("fw-1", status="IN_PROGRESS", statusDetails={"step": "download"})
    execution = device.accepted("fw-1/get")["execution"]
    assert execution["statusDetails"] == {"step": "download"}
    assert execution["startedAt"] == T0 + 7
    assert execution["lastUpdatedAt"] == T0 + 7
    assert execution["status"] == "IN_PROGRESS"


def test_describe_honours_include_job_document_false(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    execution = device.accepted("fw-1/get", {"includeJobDocument": False})["execution"]
    assert "jobDocument" not in execution
    assert execution["jobId"] == "fw-1"
    execution = device.accepted("$next/get", {"includeJobDocument": False})["execution"]
    assert "jobDocument" not in execution


def test_describe_unknown_job_or_other_thing_is_resource_not_found(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("elsewhere", DOC, ["dev-2"])
    for job in ("nope", "elsewhere"):
        body = device.rejected(f"{job}/get", {"clientToken": f"t-{job}"})
        assert body["code"] == "ResourceNotFound"
        assert body["clientToken"] == f"t-{job}"
        assert body["timestamp"] == T0
        assert "executionState" not in body
        assert isinstance(body["message"], str)
        assert body["message"]


def test_describe_with_another_execution_number_is_resource_not_found(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    assert device.accepted("fw-1/get", {"executionNumber": 1})["execution"]["executionNumber"] == 1
    assert device.rejected("fw-1/get", {"executionNumber": 2})["code"] == "ResourceNotFound"


def test_next_with_nothing_pending_is_accepted_without_execution(device: Device) -> None:
    body = device.accepted("$next/get", {"clientToken": "n"})
    assert body == {"timestamp": T0, "clientToken": "n"}


def test_next_is_the_in_progress_one_before_older_queued_ones(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("old", DOC, ["dev-1"])
    clock.advance(1)
    emulator.create_job("new", DOC, ["dev-1"])
    assert device.accepted("$next/get")["execution"]["jobId"] == "old"
    device.update("new", status="IN_PROGRESS")
    assert device.accepted("$next/get")["execution"]["jobId"] == "new"


def test_start_next_moves_the_oldest_queued_to_in_progress(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.create_job("b", DOC, ["dev-1"])
    clock.advance(3)
    body = device.accepted(
        "start-next",
        {"statusDetails": {"phase": "starting"}, "stepTimeoutInMinutes": 5, "clientToken": "s"},
    )
    assert body["clientToken"] == "s"
    assert body["timestamp"] == T0 + 3
    assert body["execution"] == {
        "jobId": "a",
        "thingName": "dev-1",
        "jobDocument": DOC,
        "status": "IN_PROGRESS",
        "statusDetails": {"phase": "starting"},
        "queuedAt": T0,
        "startedAt": T0 + 3,
        "lastUpdatedAt": T0 + 3,
        "versionNumber": 2,
        "executionNumber": 1,
    }
    found = emulator.describe("a", "dev-1")
    assert found.status is ExecutionStatus.IN_PROGRESS
    assert found.step_deadline == START + 3 + 5 * 60
    assert emulator.describe("b", "dev-1").status is ExecutionStatus.QUEUED


def test_start_next_returns_the_one_in_progress_unchanged(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.create_job("b", DOC, ["dev-1"])
    first = device.accepted("start-next")["execution"]
    again = device.accepted("start-next", {"statusDetails": {"x": "y"}})["execution"]
    assert again == first
    assert emulator.describe("b", "dev-1").status is ExecutionStatus.QUEUED


def test_start_next_with_nothing_pending_is_accepted_without_execution(device: Device) -> None:
    start = device.mark()
    device.publish("start-next", b"")
    assert device.wait("start-next/accepted", since=start).body == {"timestamp": T0}


def test_update_answer_carries_state_and_document_only_when_asked(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    outcome, body = device.update("fw-1", status="IN_PROGRESS", clientToken="u1")
    assert (outcome, body) == ("accepted", {"timestamp": T0, "clientToken": "u1"})
    outcome, body = device.update(
        "fw-1",
        status="IN_PROGRESS",
        statusDetails={"progress": "50"},
        includeJobExecutionState=True,
        includeJobDocument=True,
        clientToken="u2",
    )
    assert outcome == "accepted"
    assert body == {
        "timestamp": T0,
        "clientToken": "u2",
        "executionState": {
            "status": "IN_PROGRESS",
            "statusDetails": {"progress": "50"},
            "versionNumber": 3,
        },
        "jobDocument": DOC,
    }


def test_version_starts_at_one_and_counts_accepted_updates_only(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    assert emulator.describe("fw-1", "dev-1").version_number == 1
    versions = []
    for details in ({"s": "1"}, {"s": "2"}, {"s": "3"}):
        _, body = device.update(
            "fw-1", status="IN_PROGRESS", statusDetails=details, includeJobExecutionState=True
        )
        versions.append(body["executionState"]["versionNumber"])
    assert device.update("fw-1", status="IN_PROGRESS", expectedVersion=1)[0] == "rejected"
    _, body = device.update("fw-1", status="SUCCEEDED", includeJobExecutionState=True)
    versions.append(body["executionState"]["versionNumber"])
    assert versions == [2, 3, 4, 5]


@pytest.mark.parametrize("expected", [1, "1"], ids=["int", "numeric-string"])
def test_expected_version_matching_is_accepted(
    emulator: JobsEmulator, device: Device, expected: int | str
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    outcome, body = device.update("fw-1", status="IN_PROGRESS", expectedVersion=expected)
    assert outcome == "accepted", body
    assert emulator.describe("fw-1", "dev-1").version_number == 2


@pytest.mark.parametrize("expected", [7, "7", 0], ids=["int", "numeric-string", "zero"])
def test_expected_version_mismatch_is_rejected_with_state(
    emulator: JobsEmulator, device: Device, expected: int | str
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", statusDetails={"a": "b"})
    outcome, body = device.update(
        "fw-1", status="SUCCEEDED", expectedVersion=expected, clientToken="vm"
    )
    assert outcome == "rejected"
    assert body["code"] == "VersionMismatch"
    assert body["clientToken"] == "vm"
    assert body["executionState"] == {
        "status": "IN_PROGRESS",
        "statusDetails": {"a": "b"},
        "versionNumber": 2,
    }
    assert emulator.describe("fw-1", "dev-1").status is ExecutionStatus.IN_PROGRESS


def test_omitted_status_details_are_kept_and_given_ones_replace(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS", statusDetails={"a": "1", "b": "2"})
    device.update("fw-1", status="IN_PROGRESS")
    assert emulator.describe("fw-1", "dev-1").details == {"a": "1", "b": "2"}
    device.update("fw-1", status="IN_PROGRESS", statusDetails=None)  # null counts as omitted
    assert emulator.describe("fw-1", "dev-1").details == {"a": "1", "b": "2"}
    device.update("fw-1", status="IN_PROGRESS", statusDetails={"c": "3"})
    assert emulator.describe("fw-1", "dev-1").details == {"c": "3"}
    device.update("fw-1", status="SUCCEEDED")
    found = emulator.describe("fw-1", "dev-1")
    assert (found.status, found.details) == (ExecutionStatus.SUCCEEDED, {"c": "3"})


@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED", "REJECTED"])
def test_terminal_states_are_final(emulator: JobsEmulator, device: Device, final: str) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    device.update("fw-1", status="IN_PROGRESS")
    assert device.update("fw-1", status=final)[0] == "accepted"
    for status in ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"):
        outcome, body = device.update("fw-1", status=status, clientToken=f"t-{status}")
        assert outcome == "rejected"
        assert body["code"] == "TerminalStateReached"
        assert body["clientToken"] == f"t-{status}"
    found = emulator.describe("fw-1", "dev-1")
    assert (found.status.value, found.version_number) == (final, 3)


def test_strict_transitions_refuse_queued_straight_to_succeeded(
    broker: Mosquitto, clock: FakeClock
) -> None:
    with (
        JobsEmulator(
            "127.0.0.1", broker.port, clock=clock, tick_interval=None, strict_transitions=True
        ) as em,
        Device(broker.port) as dev,
    ):
        em.create_job("fw-1", DOC, ["dev-1"])
        outcome, body = dev.update("fw-1", status="SUCCEEDED", clientToken="ist")
        assert outcome == "rejected"
        assert body["code"] == "InvalidStateTransition"
        assert body["clientToken"] == "ist"
        assert body["executionState"] == {"status": "QUEUED", "versionNumber": 1}
        # a device may fail or reject a job it never started
        assert dev.update("fw-1", status="REJECTED")[0] == "accepted"


def test_queued_to_succeeded_is_allowed_by_default(emulator: JobsEmulator, device: Device) -> None:
    # AWS lets a device finish a job it never marked IN_PROGRESS (e.g. already installed).
    emulator.create_job("fw-1", DOC, ["dev-1"])
    assert device.update("fw-1", status="SUCCEEDED")[0] == "accepted"


def test_update_unknown_job_or_other_thing_is_resource_not_found(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("other", DOC, ["dev-2"])
    for job in ("missing", "other"):
        outcome, body = device.update(job, status="IN_PROGRESS", clientToken="rnf")
        assert (outcome, body["code"], body["clientToken"]) == (
            "rejected",
            "ResourceNotFound",
            "rnf",
        )
    assert emulator.describe("other", "dev-2").version_number == 1


def test_one_job_many_things_has_one_execution_each(
    emulator: JobsEmulator, broker: Mosquitto
) -> None:
    with Device(broker.port, "dev-a") as a, Device(broker.port, "dev-b") as b:
        emulator.create_job("fleet", DOC, ["dev-a", "dev-b"])
        a.update("fleet", status="IN_PROGRESS")
        a.update("fleet", status="SUCCEEDED")
        assert b.accepted("fleet/get")["execution"]["status"] == "QUEUED"
        assert emulator.describe("fleet", "dev-a").status is ExecutionStatus.SUCCEEDED
        assert b.accepted("$next/get")["execution"]["thingName"] == "dev-b"
        assert a.accepted("$next/get").get("execution") is None
