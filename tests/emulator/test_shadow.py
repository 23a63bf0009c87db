"""The `$package` named shadow over MQTT, as AWS IoT Device Shadow answers it.

A test device publishes on `$aws/things/dev-1/shadow/name/$package/...` through mosquitto
and checks the exact answers (device-shadow-mqtt, device-shadow-document,
device-shadow-error-messages in the AWS IoT developer guide).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.conftest import START
from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import EmulatorControl, EmulatorError, FakeClock, JobsEmulator
from upparat.emulator.shadow import MAX_STATE_BYTES, parse_topic

T = int(START)
PKG = {"firmware": {"version": "1.0.0", "attributes": {"slot": "A"}}}


@pytest.fixture
def shadow(broker: Mosquitto, emulator: JobsEmulator) -> Iterator[Device]:
    with Device(broker.port, "dev-1", shadow="$package") as d:
        yield d


def report(running: str, **extra: Any) -> dict[str, Any]:
    return {"state": {"reported": {"firmware": {"version": running}}}, **extra}


def test_get_before_any_update_is_a_404(shadow: Device) -> None:
    body = shadow.rejected("get", {"clientToken": "t-1"})
    assert body == {
        "code": 404,
        "message": "No shadow exists with name: $package",
        "timestamp": T,
        "clientToken": "t-1",
    }


def test_the_first_update_creates_version_1_with_metadata(
    shadow: Device, emulator: JobsEmulator
) -> None:
    start = shadow.mark()
    body = shadow.accepted("update", {"state": {"reported": PKG}, "clientToken": "t-2"})
    assert body == {
        "state": {"reported": PKG},
        "metadata": {
            "reported": {
                "firmware": {
                    "version": {"timestamp": T},
                    "attributes": {"slot": {"timestamp": T}},
                }
            }
        },
        "version": 1,
        "timestamp": T,
        "clientToken": "t-2",
    }
    documents = shadow.wait("update/documents", since=start).body
    assert "previous" not in documents  # there was none
    assert documents["current"]["state"] == {"reported": PKG}
    assert documents["current"]["version"] == 1
    assert documents["clientToken"] == "t-2"
    assert shadow.messages("update/delta") == []  # nothing desired

    got = shadow.accepted("get", {"clientToken": "t-3"})
    assert got == {
        "state": {"reported": PKG},
        "metadata": body["metadata"],
        "version": 1,
        "timestamp": T,
        "clientToken": "t-3",
    }
    found = emulator.shadow("dev-1")
    assert found is not None
    assert (found["state"], found["version"]) == ({"reported": PKG}, 1)
    assert emulator.shadow("dev-2") is None
    assert emulator.shadow("dev-1", "other") is None


def test_updates_merge_bump_the_version_and_null_deletes(shadow: Device, clock: FakeClock) -> None:
    shadow.accepted("update", {"state": {"reported": PKG}})
    shadow.wait("update/documents")  # of the first update: published after its answer
    clock.advance(10)
    start = shadow.mark()
    body = shadow.accepted(
        "update",
        {
            "state": {"reported": {"firmware": {"version": "2.0.0", "attributes": None}}},
            "version": 1,
        },
    )
    assert body["version"] == 2
    assert body["state"] == {"reported": {"firmware": {"version": "2.0.0", "attributes": None}}}
    documents = shadow.wait("update/documents", since=start).body
    assert documents["previous"]["version"] == 1
    assert documents["previous"]["state"] == {"reported": PKG}
    assert documents["current"]["state"] == {"reported": {"firmware": {"version": "2.0.0"}}}
    got = shadow.accepted("get")
    assert got["state"] == {"reported": {"firmware": {"version": "2.0.0"}}}
    # The changed leaf carries the new time, the others keep theirs.
    assert got["metadata"] == {"reported": {"firmware": {"version": {"timestamp": T + 10}}}}
    # "reported": null clears the section; the shadow stays, empty, at version 3.
    assert shadow.accepted("update", {"state": {"reported": None}})["version"] == 3
    got = shadow.accepted("get")
    assert (got["state"], got["metadata"], got["version"]) == ({}, {}, 3)


def test_a_stale_version_is_a_409_and_changes_nothing(shadow: Device) -> None:
    shadow.accepted("update", report("1.0.0"))
    shadow.accepted("update", report("2.0.0", version=1))
    body = shadow.rejected("update", report("3.0.0", version=1, clientToken="t-9"))
    assert body == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": T,
        "clientToken": "t-9",
    }
    got = shadow.accepted("get")
    assert (got["state"]["reported"]["firmware"]["version"], got["version"]) == ("2.0.0", 2)


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1, 2]", 400, "Invalid JSON"),
        (b"\xff\xfe", 415, "Unsupported documented encoding; supported encoding is UTF-8"),
        ({"clientToken": "t"}, 400, "Missing required node: state"),
        ({"state": [1]}, 400, "State node must be an object"),
        ({"state": {"reported": 5}}, 400, "Reported node must be an object"),
        ({"state": {"desired": "x"}}, 400, "Desired node must be an object"),
        ({"state": {"delta": {}}}, 400, "State contains an invalid node"),
        ({"state": {"reported": {}}, "version": "1"}, 400, "Invalid version"),
        ({"state": {"reported": {}}, "version": -1}, 400, "Invalid version"),
        (
            {"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}},
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (
            {"state": {"reported": {"blob": "x" * MAX_STATE_BYTES}}},
            413,
            "The payload exceeds the maximum size allowed",
        ),
        (b"{" + b" " * (128 * 1024) + b"}", 413, "The payload exceeds the maximum size allowed"),
    ],
)
def test_bad_updates_are_rejected_with_the_documented_code_and_message(
    shadow: Device, emulator: JobsEmulator, payload: dict[str, Any] | bytes, code: int, message: str
) -> None:
    body = shadow.rejected("update", payload)
    assert (body["code"], body["message"], body["timestamp"]) == (code, message, T)
    assert shadow.rejected("get")["code"] == 404  # nothing was created
    (entry,) = [h for h in emulator.shadow_history("dev-1") if h.operation == "update"]
    assert (entry.result, entry.code, entry.message) == ("rejected", code, message)


def test_six_levels_and_8_kib_of_state_are_still_accepted(shadow: Device) -> None:
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    assert shadow.accepted("update", {"state": {"reported": deep}})["version"] == 1
    overhead = len(json.dumps({"reported": {"a": "", "blob": ""}}, separators=(",", ":")))
    fits = {"blob": "x" * (MAX_STATE_BYTES - overhead - len(json.dumps(deep)) + 2)}
    shadow.accepted("update", {"state": {"reported": fits}})


def test_a_too_long_client_token_is_refused_and_not_echoed(shadow: Device) -> None:
    start = shadow.mark()
    shadow.publish("update", {"state": {"reported": {}}, "clientToken": "t" * 65})
    body = shadow.wait("update/rejected", since=start).body
    assert body == {"code": 400, "message": "Invalid clientToken", "timestamp": T}


def test_desired_that_reported_does_not_match_is_a_delta(shadow: Device) -> None:
    shadow.accepted("update", {"state": {"reported": {"firmware": {"version": "1.0.0"}}}})
    start = shadow.mark()
    shadow.accepted(
        "update",
        {"state": {"desired": {"firmware": {"version": "2.0.0"}, "x": 1}}, "clientToken": "d"},
    )
    delta = shadow.wait("update/delta", since=start).body
    assert delta == {
        "version": 2,
        "timestamp": T,
        "state": {"firmware": {"version": "2.0.0"}, "x": 1},
        "metadata": {"firmware": {"version": {"timestamp": T}}, "x": {"timestamp": T}},
        "clientToken": "d",
    }
    assert shadow.accepted("get")["state"]["delta"] == {"firmware": {"version": "2.0.0"}, "x": 1}
    shadow.accepted("update", {"state": {"reported": {"firmware": {"version": "2.0.0"}}}})
    assert shadow.accepted("get")["state"]["delta"] == {"x": 1}


def test_delete_forgets_the_state_but_not_the_version(shadow: Device) -> None:
    shadow.accepted("update", report("1.0.0"))
    shadow.accepted("update", report("1.0.1"))
    assert shadow.accepted("delete", {"clientToken": "x"}) == {
        "version": 2,
        "timestamp": T,
        "clientToken": "x",
    }
    assert shadow.rejected("get")["code"] == 404
    assert shadow.rejected("delete")["code"] == 404
    assert shadow.accepted("update", report("1.0.2"))["version"] == 3


def test_shadows_are_per_thing_and_name(broker: Mosquitto, emulator: JobsEmulator) -> None:
    with (
        Device(broker.port, "dev-1", shadow="$package") as one,
        Device(broker.port, "dev-2", shadow="$package") as two,
        Device(broker.port, "dev-1", shadow="config") as other,
    ):
        one.accepted("update", report("1.0.0"))
        assert two.rejected("get")["code"] == 404
        assert other.rejected("get")["code"] == 404
        assert other.accepted("update", report("9"))["version"] == 1
        assert one.accepted("get")["state"]["reported"]["firmware"]["version"] == "1.0.0"


def test_only_valid_request_topics_are_shadow_requests() -> None:
    assert parse_topic("$aws/things/dev-1/shadow/name/$package/get") is not None
    assert parse_topic("$aws/things/dev-1/shadow/name/$package/get/accepted") is None
    assert parse_topic("$aws/things/dev-1/shadow/name/$other/update") is None
    assert parse_topic("$aws/things/dev 1/shadow/name/$package/update") is None
    assert parse_topic("$aws/things/dev-1/shadow/get") is None  # classic: not served


def test_the_cloud_side_can_read_and_update_the_shadow(
    broker: Mosquitto, emulator: JobsEmulator, shadow: Device
) -> None:
    start = shadow.mark()
    emulator.update_shadow("dev-1", {"state": {"reported": PKG}})
    # The device hears it like any update (documents), not as an answer to itself.
    assert shadow.wait("update/documents", since=start).body["current"]["version"] == 1
    with pytest.raises(EmulatorError, match="409 Version conflict"):
        emulator.update_shadow("dev-1", {"state": {"reported": {}}, "version": 7})
    with pytest.raises(EmulatorError, match="400 Missing required node: state"):
        emulator.update_shadow("dev-1", {})
    with EmulatorControl("127.0.0.1", broker.port, timeout=3) as ctl:
        found = ctl.shadow("dev-1")
        assert found is not None
        assert (found["state"], found["version"]) == ({"reported": PKG}, 1)
        assert ctl.shadow("dev-9") is None
        assert ctl.update_shadow("dev-1", report("2.0.0", version=1))["version"] == 2
        with pytest.raises(EmulatorError, match="409 Version conflict"):
            ctl.update_shadow("dev-1", report("3.0.0", version=1))
        history = ctl.shadow_history("dev-1")
    assert [(h["source"], h["result"], h["code"]) for h in history] == [
        ("control", "accepted", None),
        ("control", "rejected", 409),
        ("control", "rejected", 400),
        ("control", "accepted", None),
        ("control", "rejected", 409),
    ]


def test_shadows_survive_a_restart_with_the_state_file(broker: Mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with JobsEmulator("127.0.0.1", broker.port, tick_interval=None, state_file=state) as em:
        with Device(broker.port, "dev-1", shadow="$package") as d:
            d.accepted("update", report("1.0.0"))
            d.accepted("update", report("1.0.1"))
        assert em.shadow("dev-1") is not None
    with (
        JobsEmulator("127.0.0.1", broker.port, tick_interval=None, state_file=state),
        Device(broker.port, "dev-1", shadow="$package") as d,
    ):
        got = d.accepted("get")
        assert (got["state"]["reported"]["firmware"]["version"], got["version"]) == ("1.0.1", 2)


def test_pause_holds_shadow_requests_too(emulator: JobsEmulator, shadow: Device) -> None:
    emulator.pause()
    start = shadow.mark()
    shadow.publish("update", report("1.0.0", clientToken="held"))
    emulator.wait_for(lambda: emulator.held_requests == 1, timeout=3)
    assert shadow.messages(since=start) == []
    emulator.resume()
    assert shadow.wait("update/accepted", since=start).body["clientToken"] == "held"


def test_injected_faults_reject_the_next_shadow_requests_then_stop(
    emulator: JobsEmulator, shadow: Device
) -> None:
    emulator.inject_shadow_fault(429, 2, operation="update")
    for _ in range(2):
        body = shadow.rejected("update", report("1.0.0", clientToken="again"))
        assert body == {
            "code": 429,
            "message": "Too Many Requests",
            "timestamp": T,
            "clientToken": "again",
        }
    assert shadow.rejected("get")["code"] == 404  # gets were not targeted, nothing stored
    assert shadow.accepted("update", report("1.0.0"))["version"] == 1
    emulator.inject_shadow_fault(500, thing="dev-1")
    assert shadow.rejected("get")["code"] == 500
    emulator.inject_shadow_fault(500, thing="dev-2")
    emulator.clear_faults()
    assert shadow.accepted("get")["version"] == 1
    with pytest.raises(EmulatorError, match="code must be one of 429, 500"):
        emulator.inject_shadow_fault(409)
    with pytest.raises(EmulatorError, match="operation must be get, update, delete or any"):
        emulator.inject_shadow_fault(500, operation="list")
