"""The device side of the `$package` shadow: topics, report payloads, typed replies.

The payloads are also run through the emulator's shadow rules (pure, no broker), so the
device side and the cloud stand-in agree on what an accepted report looks like.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upparat.aws import shadow
from upparat.aws.shadow import (
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    ReportedPackage,
    ShadowOperation,
    ShadowRejected,
    ShadowRejectReason,
    ShadowReplyIgnored,
    Unreportable,
)
from upparat.core.model import ClientToken, ThingName
from upparat.emulator.shadow import ShadowRequest, ShadowStore, parse_topic

THING = ThingName("dev-1")
PKG = "firmware"
TOKEN = ClientToken("tok-1")
P = "$aws/things/dev-1/shadow/name/$package"


def running(version: str = "2.0.0", **attributes: str) -> ReportedPackage:
    found = shadow.report(version, attributes)
    assert isinstance(found, ReportedPackage), found
    return found


def test_topics_and_subscriptions() -> None:
    assert shadow.get_topic(THING) == f"{P}/get"
    assert shadow.update_topic(THING) == f"{P}/update"
    assert shadow.subscription_filters(THING) == (
        f"{P}/get/accepted",
        f"{P}/get/rejected",
        f"{P}/update/accepted",
        f"{P}/update/rejected",
    )
    # The emulator serves exactly the request topics the device publishes on.
    assert parse_topic(shadow.get_topic(THING)) is not None
    assert parse_topic(shadow.update_topic(THING)) is not None


def test_the_update_payload_reports_version_and_attributes() -> None:
    now = running("2.0.0", slot="B", bootloader="2024.01")
    topic, payload = result(shadow.update_request(THING, PKG, now, TOKEN, expected_version=4))
    assert topic == f"{P}/update"
    assert json.loads(payload) == {
        "state": {
            "reported": {
                "firmware": {
                    "version": "2.0.0",
                    "attributes": {"bootloader": "2024.01", "slot": "B"},
                }
            }
        },
        "clientToken": "tok-1",
        "version": 4,
    }
    _, bare = result(shadow.update_request(THING, PKG, running("1.0.0"), TOKEN))
    assert json.loads(bare) == {
        "state": {"reported": {"firmware": {"version": "1.0.0", "attributes": {}}}},
        "clientToken": "tok-1",
    }


def test_attributes_that_went_away_are_sent_as_null() -> None:
    held = running("1.0.0", slot="A", channel="beta")
    _, payload = result(
        shadow.update_request(THING, PKG, running("2.0.0", slot="B"), TOKEN, held=held)
    )
    assert json.loads(payload)["state"]["reported"]["firmware"]["attributes"] == {
        "slot": "B",
        "channel": None,
    }


@pytest.mark.parametrize(
    ("version", "attributes", "fragment"),
    [
        ("", {}, "1-64 of a-z A-Z 0-9 . _ -"),
        ("2.0 beta", {}, "1-64 of a-z A-Z 0-9 . _ -"),
        ("v" * 65, {}, "1-64"),
        ("2.0.0", {"bad key": "x"}, "attribute name 'bad key'"),
        ("2.0.0", {"slot": ""}, "attribute slot must be 1-256"),
        ("2.0.0", {"slot": "a\nb"}, "control or other unprintable characters"),
        ("2.0.0", {"k" * 65: "x"}, "must be 1-64 of a-z A-Z 0-9 : _ -"),
        ("2.0.0", {f"k{i:02}": "x" for i in range(17)}, "k16 is one more than the 16"),
        ("2.0.0", {f"k{i}": "x" * 256 for i in range(12)}, "past 3072 bytes"),
    ],
)
def test_what_the_catalog_cannot_hold_is_unreportable(
    version: str, attributes: dict[str, str], fragment: str
) -> None:
    found = shadow.report(version, attributes)
    assert isinstance(found, Unreportable)
    assert fragment in found.reason


def test_a_bad_package_name_or_an_oversized_report_is_unreportable() -> None:
    found = shadow.update_request(THING, "my package", running(), TOKEN)
    assert isinstance(found, Unreportable)
    assert "package name" in found.reason
    # More than the core ever reports (it keeps 3 KB of attributes): the 8 KB state
    # limit still holds for any caller.
    big = ReportedPackage(
        version="2.0.0", attributes=tuple((f"k{i:02}", "x" * 256) for i in range(40))
    )
    found = shadow.update_request(THING, PKG, big, TOKEN)
    assert isinstance(found, Unreportable)
    assert "limit is 8192" in found.reason


def test_callers_bugs_raise() -> None:
    with pytest.raises(ValueError, match="thing name"):
        shadow.update_request(ThingName("a b"), PKG, running(), TOKEN)
    with pytest.raises(ValueError, match="client token"):
        shadow.get_request(THING, ClientToken("has space"))


def test_needs_report_only_when_the_shadow_says_something_else() -> None:
    assert shadow.needs_report(None, running())
    assert not shadow.needs_report(running("2.0.0", slot="B"), running("2.0.0", slot="B"))
    assert shadow.needs_report(running("2.0.0", slot="A"), running("2.0.0", slot="B"))
    assert shadow.needs_report(running("1.0.0"), running("2.0.0"))


def test_get_accepted_is_read_into_our_package_entry() -> None:
    body = {
        "state": {
            "reported": {
                "firmware": {"version": "1.0.0", "attributes": {"slot": "A", "n": 3}},
                "other": {"version": "9"},
            },
            "desired": {"x": 1},
        },
        "metadata": {},
        "version": 7,
        "timestamp": 1700000000,
        "clientToken": "tok-1",
    }
    assert shadow.parse(THING, PKG, f"{P}/get/accepted", json.dumps(body).encode()) == (
        PackageShadowRead(
            client_token=TOKEN,
            shadow_version=7,
            reported=ReportedPackage(version="1.0.0", attributes=(("slot", "A"),)),
            timestamp=1700000000,
        )
    )
    body["state"] = {"reported": {"other": {"version": "9"}}}
    found = shadow.parse(THING, "firmware", f"{P}/get/accepted", json.dumps(body).encode())
    assert isinstance(found, PackageShadowRead)
    assert found.reported is None


@pytest.mark.parametrize(
    ("topic", "body", "expected"),
    [
        (
            "get/rejected",
            {
                "code": 404,
                "message": "No shadow exists with name: $package",
                "clientToken": "tok-1",
            },
            PackageShadowMissing(client_token=TOKEN),
        ),
        (
            "update/rejected",
            {"code": 409, "message": "Version conflict", "timestamp": 1},
            ShadowRejected(
                client_token=None,
                operation=ShadowOperation.UPDATE,
                reason=ShadowRejectReason.VERSION_CONFLICT,
                code=409,
                message="Version conflict",
            ),
        ),
        (
            "get/rejected",
            {"code": 403, "message": "Forbidden", "clientToken": "tok-1"},
            ShadowRejected(
                client_token=TOKEN,
                operation=ShadowOperation.GET,
                reason=ShadowRejectReason.FORBIDDEN,
                code=403,
                message="Forbidden",
            ),
        ),
        (
            "update/rejected",
            {"code": 418, "message": "teapot"},
            ShadowRejected(
                client_token=None,
                operation=ShadowOperation.UPDATE,
                reason=ShadowRejectReason.UNKNOWN,
                code=418,
                message="teapot",
            ),
        ),
    ],
)
def test_rejections_are_typed(topic: str, body: dict[str, object], expected: object) -> None:
    assert shadow.parse(THING, PKG, f"{P}/{topic}", json.dumps(body).encode()) == expected


def test_which_rejections_are_worth_a_retry() -> None:
    retry = {r for r in ShadowRejectReason if r.retryable}
    assert retry == {ShadowRejectReason.TOO_MANY_REQUESTS, ShadowRejectReason.INTERNAL_ERROR}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"{P}/get/accepted", b"not json", "not JSON"),
        (f"{P}/get/accepted", b"[]", "not a JSON object"),
        (f"{P}/get/accepted", b'{"version": "7"}', "version must be"),
        (f"{P}/update/accepted", b'{"version": 1, "state": 3}', "state must be an object"),
        (f"{P}/update/rejected", b'{"message": "x"}', "integer code"),
        (f"{P}/update/documents", b"{}", "not an answer topic"),
    ],
)
def test_garbage_is_ignored_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    found = shadow.parse(THING, PKG, topic, payload)
    assert isinstance(found, ShadowReplyIgnored)
    assert reason in found.reason


def test_topics_that_are_not_ours_are_left_to_other_parsers() -> None:
    assert shadow.parse(THING, PKG, "$aws/things/dev-1/jobs/notify", b"{}") is None
    assert (
        shadow.parse(THING, PKG, "$aws/things/dev-2/shadow/name/$package/get/accepted", b"{}")
        is None
    )


@given(st.binary(max_size=300), st.sampled_from(["get/accepted", "update/rejected", "x"]))
def test_parse_never_raises(payload: bytes, suffix: str) -> None:
    shadow.parse(THING, PKG, f"{P}/{suffix}", payload)


def test_the_emulator_accepts_the_report_and_the_answer_parses_back() -> None:
    """The device-side payloads against the cloud stand-in's rules, with no broker."""
    store = ShadowStore()
    topic, payload = shadow.get_request(THING, TOKEN)
    answer = store.handle(must(parse_topic(topic)), payload, 100.0).publishes[0]
    assert shadow.parse(THING, PKG, answer.topic, answer.body.encode()) == PackageShadowMissing(
        client_token=TOKEN
    )

    first = running("1.0.0", slot="A", channel="beta")
    topic, payload = result(shadow.update_request(THING, PKG, first, TOKEN))
    answer = store.handle(must(parse_topic(topic)), payload, 101.0).publishes[0]
    updated = shadow.parse(THING, PKG, answer.topic, answer.body.encode())
    assert updated == PackageShadowUpdated(
        client_token=TOKEN, shadow_version=1, reported=first, timestamp=101
    )

    second = running("2.0.0", slot="B")
    topic, payload = result(
        shadow.update_request(THING, PKG, second, TOKEN, held=first, expected_version=1)
    )
    store.handle(must(parse_topic(topic)), payload, 102.0)
    topic, payload = shadow.get_request(THING, TOKEN)
    answer = store.handle(must(parse_topic(topic)), payload, 103.0).publishes[0]
    read = shadow.parse(THING, PKG, answer.topic, answer.body.encode())
    assert read == PackageShadowRead(
        client_token=TOKEN, shadow_version=2, reported=second, timestamp=103
    )  # "channel" is gone: it was sent as null

    # A report based on a stale read is refused, and parses as a version conflict.
    topic, payload = result(
        shadow.update_request(THING, PKG, running("3.0.0"), TOKEN, expected_version=1)
    )
    answer = store.handle(must(parse_topic(topic)), payload, 104.0).publishes[0]
    rejected = shadow.parse(THING, PKG, answer.topic, answer.body.encode())
    assert isinstance(rejected, ShadowRejected)
    assert rejected.reason is ShadowRejectReason.VERSION_CONFLICT


def result(found: tuple[str, bytes] | Unreportable) -> tuple[str, bytes]:
    assert not isinstance(found, Unreportable), found
    return found


def must(value: ShadowRequest | None) -> ShadowRequest:
    assert value is not None
    return value


def test_reported_versions_lists_every_package_of_a_shadow_document() -> None:
    doc = {
        "state": {
            "reported": {
                "zeta": {"version": "3"},
                "firmware": {"version": "2.0.0", "attributes": {}},
                "broken": {"version": 7},
                "flat": "1.0",
            },
            "desired": {"firmware": {"version": "9"}},
        },
        "version": 4,
    }
    assert shadow.reported_versions(doc) == (("firmware", "2.0.0"), ("zeta", "3"))
    assert shadow.reported_versions({"state": {}}) == ()
    assert shadow.reported_versions(None) == ()
