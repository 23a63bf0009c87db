"""Requests the service refuses before looking at a job, and garbage that must not hurt it."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.emulator.device import Device
from upparat.emulator import ExecutionStatus, JobsEmulator

DOC = {"op": "install"}


@pytest.fixture
def job(emulator: JobsEmulator) -> str:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    return "fw-1"


@pytest.mark.parametrize(
    "fields",
    [
        {},  # status is required
        {"status": None},
        {"status": "QUEUED"},
        {"status": "CANCELED"},
        {"status": "TIMED_OUT"},
        {"status": "REMOVED"},
        {"status": "in_progress"},
        {"status": "DONE"},
        {"status": 1},
        {"status": ["IN_PROGRESS"]},
    ],
    ids=repr,
)
def test_update_status_must_be_one_a_device_may_set(
    device: Device, emulator: JobsEmulator, job: str, fields: dict[str, Any]
) -> None:
    outcome, body = device.update(job, **fields, clientToken="bad-status")
    assert outcome == "rejected"
    assert body["code"] == "InvalidRequest"
    assert body["clientToken"] == "bad-status"
    assert "executionState" not in body
    assert emulator.describe(job, "dev-1").version_number == 1


@pytest.mark.parametrize(
    "details",
    [
        "text",
        ["a"],
        42,
        {"k": 1},
        {"k": None},
        {"k": True},
        {"k": {"nested": "x"}},
        {"k": ""},
        {"k": "x" * 1025},
        {"": "v"},
        {"bad key": "v"},
        {"bäd": "v"},
        {"dot.key": "v"},
        {"k" * 129: "v"},
        {"k": "line\nbreak"},
        {"k": "tab\there"},
        {"k": "nul\x00"},
        {"k": "bell\x07"},
        {"k": "zero\u200bwidth"},  # Cf: a format control
    ],
    ids=lambda d: repr(d)[:40],
)
def test_status_details_outside_the_limits_are_invalid_request(
    device: Device, emulator: JobsEmulator, job: str, details: Any
) -> None:
    outcome, body = device.update(job, status="IN_PROGRESS", statusDetails=details)
    assert (outcome, body["code"]) == ("rejected", "InvalidRequest"), body
    assert emulator.describe(job, "dev-1").status is ExecutionStatus.QUEUED


def test_status_details_at_the_limits_are_accepted(
    device: Device, emulator: JobsEmulator, job: str
) -> None:
    details = {"k" * 128: "v" * 1024, "a:b_c-D9": "ünïcode ok ✓", "x": "1"}
    outcome, body = device.update(job, status="IN_PROGRESS", statusDetails=details)
    assert outcome == "accepted", body
    assert emulator.describe(job, "dev-1").details == details


def test_start_next_validates_status_details_too(
    device: Device, emulator: JobsEmulator, job: str
) -> None:
    body = device.rejected("start-next", {"statusDetails": {"k": 5}})
    assert body["code"] == "InvalidRequest"
    assert emulator.describe(job, "dev-1").status is ExecutionStatus.QUEUED


@pytest.mark.parametrize(
    "fields",
    [
        {"expectedVersion": "1.0"},
        {"expectedVersion": "one"},
        {"expectedVersion": 1.5},
        {"expectedVersion": True},
        {"expectedVersion": -1},
        {"expectedVersion": [1]},
        {"stepTimeoutInMinutes": 0},
        {"stepTimeoutInMinutes": 10081},
        {"stepTimeoutInMinutes": -2},
        {"stepTimeoutInMinutes": "5"},
        {"stepTimeoutInMinutes": 1.5},
        {"executionNumber": 0},
        {"executionNumber": "1"},
        {"includeJobExecutionState": "yes"},
        {"includeJobDocument": 1},
        {"clientToken": 7},
        {"clientToken": ""},
        {"clientToken": "x" * 65},
        {"clientToken": "has space"},
    ],
    ids=repr,
)
def test_malformed_update_fields_are_invalid_request(
    device: Device, emulator: JobsEmulator, job: str, fields: dict[str, Any]
) -> None:
    start = device.mark()
    device.publish(f"{job}/update", {"status": "IN_PROGRESS", **fields})
    body = device.wait(f"{job}/update/rejected", since=start).body
    assert body["code"] == "InvalidRequest", body
    assert emulator.describe(job, "dev-1").version_number == 1


def test_a_string_client_token_is_echoed_even_when_invalid(device: Device, job: str) -> None:
    start = device.mark()
    device.publish(f"{job}/update", {"status": "IN_PROGRESS", "clientToken": "x" * 65})
    assert device.wait(f"{job}/update/rejected", since=start).body["clientToken"] == "x" * 65


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"{",
        b'{"status": "IN_PROGRESS",}',
        b"[1, 2]",
        b'"IN_PROGRESS"',
        b"42",
        b"null",
        b"\xff\xfe\x00garbage",
        b'{"expectedVersion": NaN, "status": "IN_PROGRESS"}',
        b"[" * 100_000,
    ],
    ids=lambda p: repr(p)[:30],
)
def test_payload_that_is_not_a_json_object_is_invalid_json(
    device: Device, emulator: JobsEmulator, job: str, payload: bytes
) -> None:
    start = device.mark()
    device.publish(f"{job}/update", payload)
    body = device.wait(f"{job}/update/rejected", since=start).body
    assert body["code"] == "InvalidJson"
    assert "clientToken" not in body
    assert isinstance(body["timestamp"], int)
    assert emulator.describe(job, "dev-1").version_number == 1


@pytest.mark.parametrize("suffix", ["get", "start-next", "fw-1/get", "$next/get"])
def test_every_request_kind_rejects_garbage(device: Device, job: str, suffix: str) -> None:
    start = device.mark()
    device.publish(suffix, b"{{{")
    assert device.wait(f"{suffix}/rejected", since=start).body["code"] == "InvalidJson"


def test_payload_over_128_kib_is_rejected(device: Device, emulator: JobsEmulator, job: str) -> None:
    big = json.dumps({"status": "IN_PROGRESS", "statusDetails": {"k": "v"}, "pad": "x" * 131_072})
    start = device.mark()
    device.publish(f"{job}/update", big)
    body = device.wait(f"{job}/update/rejected", since=start).body
    assert body["code"] == "InvalidRequest"
    assert "131072" in body["message"]
    assert emulator.describe(job, "dev-1").version_number == 1


@pytest.mark.parametrize(
    "suffix",
    [
        "fw-1/delete",
        "fw-1/start",
        "list",
        "fw-1/update/extra",
        "$next/update",
        "bad.id/update",
        "bad.id/get",
        f"{'j' * 65}/get",
    ],
)
def test_topics_that_map_to_no_api_are_invalid_topic(
    device: Device, emulator: JobsEmulator, job: str, suffix: str
) -> None:
    start = device.mark()
    device.publish(suffix, {"status": "IN_PROGRESS", "clientToken": "it"})
    body = device.wait(f"{suffix}/rejected", since=start).body
    assert body["code"] == "InvalidTopic"
    assert emulator.describe(job, "dev-1").version_number == 1


def test_unknown_fields_are_ignored(device: Device, emulator: JobsEmulator, job: str) -> None:
    outcome, _ = device.update(job, status="IN_PROGRESS", colour="blue", statusDetail={"x": 1})
    assert outcome == "accepted"
    assert emulator.describe(job, "dev-1").details == {}


def test_garbage_storm_leaves_the_emulator_answering(
    device: Device, emulator: JobsEmulator, job: str
) -> None:
    rng = random.Random(1234)
    suffixes = ["get", "start-next", "fw-1/get", "$next/get", "fw-1/update", "x/y/z", "fw-1/update"]
    nasty = [b"", b"{}", b"[]", b"null", b"\x00" * 50, b'{"status":{"a":[' * 200, b'{"a":1e999}']
    for _ in range(150):
        if rng.random() < 0.5:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        else:
            payload = rng.choice(nasty)
        device.publish(rng.choice(suffixes), payload)
    # Still serving, and the garbage changed nothing.
    device.barrier()
    assert emulator.connected
    found = emulator.describe(job, "dev-1")
    assert found.status in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)
    outcome, body = device.update(job, status="IN_PROGRESS", includeJobExecutionState=True)
    assert outcome == "accepted"
    assert body["executionState"]["versionNumber"] == found.version_number + 1
