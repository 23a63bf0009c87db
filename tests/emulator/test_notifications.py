"""notify and notify-next: when they are published, their shape and their order."""

from __future__ import annotations

from typing import Any

from tests.emulator.conftest import START
from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import FakeClock, JobsEmulator

T0 = int(START)
DOC = {"op": "install"}


def summary(
    job_id: str,
    queued: int,
    version: int = 1,
    started: int | None = None,
    updated: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"jobId": job_id, "queuedAt": queued}
    if started is not None:
        out["startedAt"] = started
    out["lastUpdatedAt"] = queued if updated is None else updated
    out["versionNumber"] = version
    out["executionNumber"] = 1
    return out


def test_queuing_a_job_notifies_and_announces_the_next(
    emulator: JobsEmulator, device: Device
) -> None:
    start = device.checkpoint()
    emulator.create_job("a", DOC, ["dev-1"])
    notify = device.wait("notify", since=start).body
    assert notify == {"timestamp": T0, "jobs": {"QUEUED": [summary("a", T0)]}}
    nxt = device.wait("notify-next", since=start).body
    assert nxt == {
        "timestamp": T0,
        "execution": {
            "jobId": "a",
            "thingName": "dev-1",
            "jobDocument": DOC,
            "status": "QUEUED",
            "queuedAt": T0,
            "lastUpdatedAt": T0,
            "versionNumber": 1,
            "executionNumber": 1,
        },
    }


def test_notify_lists_in_progress_first_then_queued_by_queue_time(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    for job in ("a", "b", "c"):
        emulator.create_job(job, DOC, ["dev-1"])
        clock.advance(1)
    start = device.checkpoint()
    device.update("c", status="IN_PROGRESS")
    assert device.wait("notify", since=start).body == {
        "timestamp": T0 + 3,
        "jobs": {
            "IN_PROGRESS": [summary("c", T0 + 2, version=2, started=T0 + 3, updated=T0 + 3)],
            "QUEUED": [summary("a", T0), summary("b", T0 + 1)],
        },
    }


def test_same_second_jobs_keep_creation_order(emulator: JobsEmulator, device: Device) -> None:
    for job in ("z", "y", "x"):
        emulator.create_job(job, DOC, ["dev-1"])
    body = device.accepted("get")
    assert [s["jobId"] for s in body["queuedJobs"]] == ["z", "y", "x"]
    assert device.accepted("$next/get")["execution"]["jobId"] == "z"


def test_notify_on_status_change_only(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    start = device.checkpoint()
    device.update("a", status="IN_PROGRESS")  # QUEUED -> IN_PROGRESS: notify
    device.update("a", status="IN_PROGRESS", statusDetails={"p": "50"})  # same status: none
    device.update("a", status="SUCCEEDED", expectedVersion=99)  # rejected: none
    device.update("a", status="SUCCEEDED")  # terminal: notify, nothing pending
    device.barrier()
    assert device.bodies("notify", since=start) == [
        {"timestamp": T0, "jobs": {"IN_PROGRESS": [summary("a", T0, version=2, started=T0)]}},
        {"timestamp": T0, "jobs": {}},
    ]


def test_notify_next_only_when_the_head_changes(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    def heads(since: int) -> list[str | None]:
        device.barrier()
        return [
            b["execution"]["jobId"] if "execution" in b else None
            for b in device.bodies("notify-next", since=since)
        ]

    start = device.checkpoint()
    emulator.create_job("a", DOC, ["dev-1"])
    assert heads(start) == ["a"]

    start = device.checkpoint()
    clock.advance(1)
    emulator.create_job("b", DOC, ["dev-1"])  # queued behind a: head unchanged
    device.update("a", status="IN_PROGRESS")  # a stays the head
    device.update("a", status="IN_PROGRESS", statusDetails={"p": "1"})
    assert heads(start) == []

    start = device.checkpoint()
    device.update("b", status="IN_PROGRESS")  # both in progress, a is older: unchanged
    assert heads(start) == []

    start = device.checkpoint()
    device.update("a", status="SUCCEEDED")  # head moves to b
    assert heads(start) == ["b"]

    start = device.checkpoint()
    device.update("b", status="FAILED")  # queue empties: notify-next without execution
    device.barrier()
    assert device.bodies("notify-next", since=start) == [{"timestamp": T0 + 1}]


def test_a_younger_job_started_first_takes_the_head(
    emulator: JobsEmulator, device: Device, clock: FakeClock
) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    clock.advance(1)
    emulator.create_job("b", DOC, ["dev-1"])
    start = device.checkpoint()
    device.update("b", status="IN_PROGRESS")
    device.barrier()
    bodies = device.bodies("notify-next", since=start)
    assert [b["execution"]["jobId"] for b in bodies] == ["b"]
    assert bodies[0]["execution"]["status"] == "IN_PROGRESS"


def test_start_next_notifies_but_keeps_the_head(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    start = device.checkpoint()
    device.accepted("start-next")
    device.barrier()
    assert [b["jobs"].keys() for b in device.bodies("notify", since=start)] == [{"IN_PROGRESS"}]
    assert device.bodies("notify-next", since=start) == []


def test_answer_comes_before_its_notifications(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    start = device.checkpoint()
    device.update("a", status="IN_PROGRESS")
    device.update("a", status="SUCCEEDED")
    device.barrier()
    order = [m.suffix for m in device.messages(since=start) if m.suffix != "get/accepted"]
    assert order == [
        "a/update/accepted",
        "notify",
        "a/update/accepted",
        "notify",
        "notify-next",
    ]


def test_notifications_go_to_the_affected_thing_only(
    emulator: JobsEmulator, broker: Mosquitto, device: Device
) -> None:
    with Device(broker.port, "dev-2") as other:
        emulator.create_job("mine", DOC, ["dev-1"])
        device.update("mine", status="IN_PROGRESS")
        other.barrier()
        assert other.messages("notify") == []
        assert other.messages("notify-next") == []


def test_cancel_and_delete_notify(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    emulator.create_job("b", DOC, ["dev-1"])
    start = device.checkpoint()
    emulator.cancel_job("a")
    device.barrier()
    assert device.bodies("notify", since=start) == [
        {"timestamp": T0, "jobs": {"QUEUED": [summary("b", T0)]}}
    ]
    assert [b["execution"]["jobId"] for b in device.bodies("notify-next", since=start)] == ["b"]

    start = device.checkpoint()
    emulator.delete_job("b")
    device.barrier()
    assert device.bodies("notify", since=start) == [{"timestamp": T0, "jobs": {}}]
    assert device.bodies("notify-next", since=start) == [{"timestamp": T0}]


def test_deleting_a_finished_job_notifies_nothing(emulator: JobsEmulator, device: Device) -> None:
    emulator.create_job("a", DOC, ["dev-1"])
    device.update("a", status="IN_PROGRESS")
    device.update("a", status="SUCCEEDED")
    start = device.checkpoint()
    emulator.delete_job("a")
    device.barrier()
    assert device.messages("notify", since=start) == []
    assert device.messages("notify-next", since=start) == []
    assert device.rejected("a/get")["code"] == "ResourceNotFound"
