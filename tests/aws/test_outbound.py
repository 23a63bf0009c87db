"""Commands become request topics and payloads that AWS accepts."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upparat.aws import InvalidCommandError, build, outbound
from upparat.core.commands import DescribeJob, RequestPendingJobs, UpdateJob
from upparat.core.model import ClientToken, JobId, JobStatus, ThingName

THING = ThingName("dev-1")
P = "$aws/things/dev-1/jobs/"
KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


def update(
    *,
    job_id: str = "upparat_7",
    status: JobStatus = JobStatus.IN_PROGRESS,
    status_details: tuple[tuple[str, str], ...] = (("state", "download_start"),),
    client_token: str = "u-1",
    step_timeout_minutes: int | None = None,
) -> UpdateJob:
    return UpdateJob(
        job_id=JobId(job_id),
        status=status,
        status_details=status_details,
        client_token=ClientToken(client_token),
        step_timeout_minutes=step_timeout_minutes,
    )


def body(payload: bytes) -> dict[str, object]:
    value = json.loads(payload)
    assert isinstance(value, dict)
    return value


def test_request_pending_jobs() -> None:
    topic, payload = build(THING, RequestPendingJobs(client_token=ClientToken("g-1")))
    assert topic == P + "get"
    assert body(payload) == {"clientToken": "g-1"}


def test_describe_job() -> None:
    topic, payload = build(
        THING, DescribeJob(job_id=JobId("upparat_7"), client_token=ClientToken("d-1"))
    )
    assert topic == P + "upparat_7/get"
    assert body(payload) == {"clientToken": "d-1"}


def test_update_job_with_every_field() -> None:
    command = update(status=JobStatus.SUCCEEDED, step_timeout_minutes=30)
    topic, payload = build(THING, command)
    assert topic == P + "upparat_7/update"
    assert body(payload) == {
        "status": "SUCCEEDED",
        "statusDetails": {"state": "download_start"},
        "clientToken": "u-1",
        "stepTimeoutInMinutes": 30,
    }


def test_update_job_leaves_out_unset_optional_fields() -> None:
    assert body(build(THING, update(status_details=()))[1]) == {
        "status": "IN_PROGRESS",
        "statusDetails": {},
        "clientToken": "u-1",
    }


def test_step_timeout_minus_one_cancels_the_step_timer() -> None:
    assert body(build(THING, update(step_timeout_minutes=-1))[1])["stepTimeoutInMinutes"] == -1


@pytest.mark.parametrize(
    "command",
    [
        update(status=JobStatus.QUEUED),
        update(status=JobStatus.CANCELED),
        update(status=JobStatus.TIMED_OUT),
        update(step_timeout_minutes=0),
        update(step_timeout_minutes=10081),
        update(step_timeout_minutes=-2),
        update(job_id="a/b"),
        update(job_id="+"),
        update(job_id=""),
        update(job_id="a" * 65),
        update(client_token=""),
        update(client_token="x" * 65),
        update(client_token="has space"),
        DescribeJob(job_id=JobId("$next"), client_token=ClientToken("d")),
        RequestPendingJobs(client_token=ClientToken("é")),
    ],
)
def test_commands_no_correct_core_produces_are_refused(
    command: UpdateJob | DescribeJob | RequestPendingJobs,
) -> None:
    with pytest.raises(InvalidCommandError):
        build(THING, command)


def test_an_invalid_thing_name_is_refused() -> None:
    with pytest.raises(InvalidCommandError, match="thing name"):
        build(ThingName("dev/#"), RequestPendingJobs(client_token=ClientToken("g")))


def test_a_64_character_client_token_is_fine() -> None:
    assert body(build(THING, update(client_token="t" * 64))[1])["clientToken"] == "t" * 64


def test_status_details_are_sanitised() -> None:
    details = (
        ("state", "download_progress"),
        ("bad key/ü", "v"),
        ("", "dropped: empty key"),
        ("empty", ""),
        ("only-control", "\x00\x07"),
        ("multi", "line 1\nline 2\ttab\u200bzwsp"),
        ("state", "dropped: duplicate key, the first one wins"),
        ("k" * 200, "long key"),
    )
    sent = body(build(THING, update(status_details=details))[1])["statusDetails"]
    assert sent == {
        "state": "download_progress",
        "bad_key__": "v",
        "only-control": "  ",
        "multi": "line 1 line 2 tab zwsp",
        "k" * 128: "long key",
    }


def test_long_values_are_cut_on_a_character_boundary() -> None:
    value = "a" + "😀" * 600  # 1201 UTF-16 units
    sent = outbound.sanitize_detail_value(value)
    assert outbound.utf16_units(sent) <= outbound.MAX_DETAIL_VALUE_UNITS
    assert sent.endswith(outbound.TRUNCATION_MARK)
    assert sent.startswith("a😀")
    assert set(sent[1:-1]) == {"😀"}
    exact = "x" * outbound.MAX_DETAIL_VALUE_UNITS
    assert outbound.sanitize_detail_value(exact) == exact


def test_many_large_details_are_dropped_to_stay_under_128_kb() -> None:
    details = tuple((f"k{i}", "€" * 1024) for i in range(100))
    _, payload = build(THING, update(status_details=details))
    assert len(payload) <= outbound.MAX_PAYLOAD_BYTES
    sent = body(payload)["statusDetails"]
    assert isinstance(sent, dict)
    assert 30 < len(sent) < 100
    assert list(sent) == [f"k{i}" for i in range(len(sent))]  # the first pairs are kept


def _assert_aws_accepts(payload: bytes) -> None:
    assert len(payload) <= outbound.MAX_PAYLOAD_BYTES
    sent = body(payload)
    token = sent["clientToken"]
    assert isinstance(token, str)
    assert 1 <= len(token) <= 64
    details = sent["statusDetails"]
    assert isinstance(details, dict)
    for key, value in details.items():
        assert KEY.fullmatch(key), key
        assert isinstance(value, str)
        assert 1 <= outbound.utf16_units(value) <= 1024
        assert not any(unicodedata.category(ch).startswith("C") for ch in value)


any_text = st.text(st.characters(codec=None), max_size=1500)


@settings(max_examples=200)
@given(details=st.lists(st.tuples(st.text(max_size=150), any_text), max_size=8))
def test_built_payloads_always_satisfy_the_aws_limits(details: list[tuple[str, str]]) -> None:
    _assert_aws_accepts(build(THING, update(status_details=tuple(details)))[1])


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(min_value=30, max_value=200),
    ch=st.sampled_from(["a", '"', "\\", "€", "😀", "\n", "\ud800"]),
)
def test_huge_status_details_stay_under_128_kb(n: int, ch: str) -> None:
    details = tuple((f"key{i}" * 10, ch * 1100) for i in range(n))
    _assert_aws_accepts(build(THING, update(status_details=details))[1])
