"""Inbound jobs messages become typed core events, and garbage becomes PayloadIgnored."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upparat.aws import inbound, parse
from upparat.core.events import (
    JobDescribed,
    JobsChanged,
    PayloadIgnored,
    PendingJobsListed,
    ReplyUnusable,
    RequestKind,
    RequestRejected,
    UpdateAccepted,
)
from upparat.core.model import (
    ClientToken,
    InvalidJobDocument,
    JobDocument,
    JobExecution,
    JobId,
    JobStatus,
    JobSummary,
    RejectCode,
    ThingName,
)

THING = ThingName("dev-1")
P = "$aws/things/dev-1/jobs/"
URL = "https://bucket.s3.amazonaws.com/fw.bin?X-Amz-Signature=SECRETSIG&X-Amz-Expires=3600"
SHA = "ab" * 32


def j(value: object) -> bytes:
    return json.dumps(value).encode()


def summary(job_id: str, *, started: bool = True) -> dict[str, object]:
    s: dict[str, object] = {
        "jobId": job_id,
        "queuedAt": 1747300000,
        "lastUpdatedAt": 1747300010,
        "versionNumber": 2,
        "executionNumber": 1,
    }
    if started:
        s["startedAt"] = 1747300005
    return s


def execution(job_id: str = "upparat_7", **changes: object) -> dict[str, object]:
    e: dict[str, object] = {
        "jobId": job_id,
        "thingName": "dev-1",
        "jobDocument": {
            "file": URL,
            "version": "2.1.0",
            "force": True,
            "meta": "m",
            "sha256": SHA,
            "size": 1024,
        },
        "status": "IN_PROGRESS",
        "statusDetails": {"state": "download_start", "b": "2"},
        "queuedAt": 1747300000,
        "startedAt": 1747300005,
        "lastUpdatedAt": 1747300010,
        "versionNumber": 3,
        "executionNumber": 1,
    }
    e.update(changes)
    return e


def describe(doc: object) -> JobDescribed:
    event = parse(
        THING,
        P + "upparat_7/get/accepted",
        j({"execution": execution(jobDocument=doc), "timestamp": 1}),
    )
    assert isinstance(event, JobDescribed), event
    return event


# --- the shapes AWS sends -----------------------------------------------------------


def test_get_accepted_lists_pending_jobs() -> None:
    payload = {
        "clientToken": "tok-1",
        "timestamp": 1747300100,
        "inProgressJobs": [summary("upparat_1")],
        "queuedJobs": [summary("upparat_2", started=False), summary("other_3", started=False)],
    }
    assert parse(THING, P + "get/accepted", j(payload)) == PendingJobsListed(
        in_progress=(
            JobSummary(
                job_id=JobId("upparat_1"),
                queued_at=1747300000,
                execution_number=1,
            ),
        ),
        queued=(
            JobSummary(
                job_id=JobId("upparat_2"),
                queued_at=1747300000,
                execution_number=1,
            ),
            JobSummary(
                job_id=JobId("other_3"),
                queued_at=1747300000,
                execution_number=1,
            ),
        ),
        client_token=ClientToken("tok-1"),
    )


def test_get_accepted_with_nothing_pending() -> None:
    event = parse(
        THING, P + "get/accepted", j({"inProgressJobs": [], "queuedJobs": [], "timestamp": 1})
    )
    assert event == PendingJobsListed(in_progress=(), queued=())


def test_notify_leaves_out_empty_lists() -> None:
    event = parse(
        THING, P + "notify", j({"timestamp": 1, "jobs": {"QUEUED": [summary("q1", started=False)]}})
    )
    assert isinstance(event, JobsChanged)
    assert event.in_progress == ()
    assert [s.job_id for s in event.queued] == ["q1"]


def test_notify_with_nothing_pending() -> None:
    assert parse(THING, P + "notify", j({"timestamp": 1, "jobs": {}})) == JobsChanged(
        in_progress=(), queued=()
    )


def test_notify_next_is_ignored_on_purpose() -> None:
    event = parse(THING, P + "notify-next", j({"timestamp": 1, "execution": execution()}))
    assert isinstance(event, PayloadIgnored)
    assert "notify-next" in event.reason


def test_describe_accepted_parses_execution_and_document() -> None:
    payload = {"execution": execution(), "timestamp": 1747300100, "clientToken": "d-1"}
    assert parse(THING, P + "upparat_7/get/accepted", j(payload)) == JobDescribed(
        execution=JobExecution(
            job_id=JobId("upparat_7"),
            status=JobStatus.IN_PROGRESS,
            status_details=(("b", "2"), ("state", "download_start")),
            document=JobDocument(
                file=URL, version="2.1.0", force=True, meta="m", sha256=SHA, size=1024
            ),
            execution_number=1,
        ),
        client_token=ClientToken("d-1"),
    )


def test_describe_accepted_without_optional_fields() -> None:
    minimal = {
        "jobId": "upparat_7",
        "status": "QUEUED",
        "jobDocument": {"file": URL, "version": "1"},
    }
    event = parse(THING, P + "upparat_7/get/accepted", j({"execution": minimal}))
    assert isinstance(event, JobDescribed)
    assert event.execution.document == JobDocument(file=URL, version="1")
    assert event.execution.status_details == ()
    assert event.execution.execution_number is None
    assert event.client_token is None


def test_update_accepted() -> None:
    payload = {
        "timestamp": 1,
        "clientToken": "u-1",
        "executionState": {"status": "SUCCEEDED", "versionNumber": 4},
    }
    assert parse(THING, P + "upparat_7/update/accepted", j(payload)) == UpdateAccepted(
        job_id=JobId("upparat_7"), client_token=ClientToken("u-1")
    )


@pytest.mark.parametrize("code", [c for c in RejectCode if c is not RejectCode.UNKNOWN])
def test_rejected_codes(code: RejectCode) -> None:
    payload = {"code": code.value, "message": "why", "clientToken": "u-2", "timestamp": 1}
    assert parse(THING, P + "upparat_7/update/rejected", j(payload)) == RequestRejected(
        request=RequestKind.UPDATE,
        job_id=JobId("upparat_7"),
        code=code,
        message="why",
        client_token=ClientToken("u-2"),
    )


def test_rejected_with_execution_state() -> None:
    payload = {
        "code": "VersionMismatch",
        "message": "version mismatch",
        "timestamp": 1,
        "executionState": {"status": "CANCELED", "statusDetails": {}, "versionNumber": 5},
    }
    event = parse(THING, P + "upparat_7/update/rejected", j(payload))
    assert isinstance(event, RequestRejected)
    assert event.code is RejectCode.VERSION_MISMATCH


def test_rejected_kinds_follow_the_topic() -> None:
    payload = j({"code": "ResourceNotFound", "message": "no such job", "timestamp": 1})
    get = parse(THING, P + "get/rejected", payload)
    desc = parse(THING, P + "gone_1/get/rejected", payload)
    assert isinstance(get, RequestRejected)
    assert (get.request, get.job_id) == (RequestKind.GET_PENDING, None)
    assert isinstance(desc, RequestRejected)
    assert (desc.request, desc.job_id) == (RequestKind.DESCRIBE, "gone_1")


def test_unknown_reject_code_keeps_the_raw_code_in_the_message() -> None:
    event = parse(THING, P + "get/rejected", j({"code": "BrandNewCode", "message": "hm"}))
    assert isinstance(event, RequestRejected)
    assert event.code is RejectCode.UNKNOWN
    assert "BrandNewCode" in event.message


def test_a_job_id_that_looks_like_a_keyword_is_still_a_job() -> None:
    event = parse(THING, P + "get/get/accepted", j({"execution": execution("get")}))
    assert isinstance(event, JobDescribed)
    assert event.execution.job_id == "get"


def test_unpaired_surrogates_become_replacement_characters() -> None:
    event = parse(
        THING, P + "get/rejected", b'{"code": "InternalError", "message": "bad \\ud800 text"}'
    )
    assert isinstance(event, RequestRejected)
    event.message.encode("utf-8")  # must not raise
    assert "\ufffd" in event.message


# --- job documents -----------------------------------------------------------------


def test_sha256_is_normalised_to_lower_case() -> None:
    doc = describe({"file": URL, "version": "1", "sha256": SHA.upper()}).execution.document
    assert isinstance(doc, JobDocument)
    assert doc.sha256 == SHA


def test_null_optional_fields_count_as_absent() -> None:
    doc = describe(
        {"file": URL, "version": "1", "force": None, "meta": None, "sha256": None, "size": None}
    )
    assert doc.execution.document == JobDocument(file=URL, version="1")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([1, 2], "jobDocument"),
        ("file", "jobDocument"),
        ({"version": "1"}, "file"),
        ({"file": "", "version": "1"}, "file"),
        ({"file": 7, "version": "1"}, "file"),
        ({"file": "https://h/" + "a" * 2040, "version": "1"}, "file"),
        ({"file": "/just/a/path", "version": "1"}, "file"),
        (
            {"file": "${aws:iot:s3-presigned-url:https://b.s3.amazonaws.com/f}", "version": "1"},
            "file",
        ),
        ({"file": "https://h/a b", "version": "1"}, "file"),
        ({"file": "https://h/a\nb", "version": "1"}, "file"),
        ({"file": "https://h:99999/x?X-Amz-Signature=SECRETSIG", "version": "1"}, "file"),
        ({"file": "https://[::1/x", "version": "1"}, "file"),
        ({"file": "https://h/ü", "version": "1"}, "file"),
        ({"file": URL}, "version"),
        ({"file": URL, "version": ""}, "version"),
        ({"file": URL, "version": 2}, "version"),
        ({"file": URL, "version": "1", "force": "yes"}, "force"),
        ({"file": URL, "version": "1", "force": 1}, "force"),
        ({"file": URL, "version": "1", "meta": {"a": 1}}, "meta"),
        ({"file": URL, "version": "1", "sha256": "abc"}, "sha256"),
        ({"file": URL, "version": "1", "sha256": "g" * 64}, "sha256"),
        ({"file": URL, "version": "1", "sha256": 5}, "sha256"),
        ({"file": URL, "version": "1", "size": -1}, "size"),
        ({"file": URL, "version": "1", "size": True}, "size"),
        ({"file": URL, "version": "1", "size": 1.5}, "size"),
        ({"file": URL, "version": "1", "size": "10"}, "size"),
        ({"file": URL, "version": "1", "signature": 5}, "signature"),
        ({"file": URL, "version": "1", "signature": ""}, "signature"),
        ({"file": URL, "version": "1", "signature": "not base64!"}, "signature"),
        ({"file": URL, "version": "1", "signature": "MEUCIQ"}, "signature"),  # no padding
        ({"file": URL, "version": "1", "signature": "MEUC\nIQ=="}, "signature"),
        ({"file": URL, "version": "1", "signature": "AAAA"}, "signature"),  # 3 bytes
        ({"file": URL, "version": "1", "signature": "A" * 100}, "signature"),  # 75 bytes
        ({"file": URL, "version": "1", "signature": "A" * 100_000}, "signature"),
        ({"file": URL, "version": "1", "signature": "MEUCIQ€="}, "signature"),
    ],
)
def test_invalid_documents_name_the_field(doc: object, field: str) -> None:
    document = describe(doc).execution.document
    assert isinstance(document, InvalidJobDocument)
    assert document.field == field
    assert document.reason
    assert "SECRETSIG" not in document.reason  # a pre-signed URL never ends up in a reason


def test_the_signature_is_decoded_from_base64() -> None:
    der = bytes([0x30, 0x44, 0x02, 0x20]) + b"\x01" * 32 + bytes([0x02, 0x20]) + b"\x02" * 32

    doc = describe({"file": URL, "version": "1", "signature": base64.b64encode(der).decode()})

    assert doc.execution.document == JobDocument(file=URL, version="1", signature=der)


def test_a_bad_signature_says_what_is_expected_without_echoing_it() -> None:
    document = describe({"file": URL, "version": "1", "signature": "A" * 100_000})
    invalid = document.execution.document
    assert isinstance(invalid, InvalidJobDocument)
    assert "base64 of a DER ECDSA P-256 signature" in invalid.reason
    assert "AAAA" not in invalid.reason


def test_the_url_limit_is_2048_characters() -> None:
    url = "https://h/" + "a" * (inbound.MAX_FILE_URL_CHARS - len("https://h/"))
    assert describe({"file": url, "version": "1"}).execution.document == JobDocument(
        file=url, version="1"
    )


def test_unknown_document_fields_are_ignored() -> None:
    doc = describe({"file": URL, "version": "1", "future": {"x": [1]}}).execution.document
    assert doc == JobDocument(file=URL, version="1")


# --- garbage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason_part"),
    [
        (P + "notify", b"\xff\xfe", "not UTF-8"),
        (P + "notify", b"{", "not JSON"),
        (P + "notify", b"", "not JSON"),
        (P + "notify", b'{"jobs": {"QUEUED": [{"jobId": "a", "queuedAt": NaN}]}}', "not JSON"),
        (P + "notify", b"[]", "payload must be a JSON object"),
        (P + "notify", b"{}", "jobs is missing"),
        (P + "notify", j({"jobs": []}), "jobs must be a JSON object"),
        (P + "notify", j({"jobs": {"QUEUED": {}}}), "jobs.QUEUED must be an array"),
        (P + "notify", j({"jobs": {}, "timestamp": "now"}), "timestamp must be an integer"),
        (P + "notify", b'{"jobs": {}, "timestamp": ' + b"9" * 5000 + b"}", "not JSON"),
        (P + "notify", b"[" * 60_000 + b"]" * 60_000, "nested deeper than 64"),
        (
            P + "notify",
            b'{"jobs": {"QUEUED": [' + b"[" * 65 + b"]" * 65 + b"]}}",
            "nested deeper than 64",
        ),
        (P + "notify", b'"' + b'\\"' * 60_000, "not JSON"),
        (P + "notify", b'{"jobs": {}, "pad": "' + b"x" * (128 * 1024) + b'"}', "larger than"),
        (P + "get/accepted", j({"queuedJobs": []}), "inProgressJobs is missing"),
        (
            P + "get/accepted",
            j({"inProgressJobs": [], "queuedJobs": None}),
            "queuedJobs is missing",
        ),
        (
            P + "get/accepted",
            j({"inProgressJobs": [], "queuedJobs": [], "clientToken": 5}),
            "clientToken",
        ),
        ("$aws/things/dev-2/jobs/notify", j({"jobs": {}}), "not a jobs topic of thing"),
        ("$aws/things/dev-1/jobsx/notify", j({"jobs": {}}), "not a jobs topic of thing"),
        ("other/topic", j({"jobs": {}}), "not a jobs topic of thing"),
        (P + "start-next/accepted", j({}), "not a jobs topic upparat subscribes to"),
        (P + "j1/notify", j({}), "not a jobs topic upparat subscribes to"),
        (P + "$next/get/accepted", j({"execution": execution()}), "is not a job id"),
        (P + "a+b/update/accepted", j({}), "is not a job id"),
        (P + "upparat_7/get/accepted", j({}), "execution is missing"),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution("upparat_8")}),
            "differs from the job id",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(thingName="dev-2")}),
            "not this thing",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(status="DONE")}),
            "not a job execution status",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(status=None)}),
            "status is missing",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(statusDetails={"a": 1})}),
            "must be a string",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(statusDetails=[])}),
            "statusDetails must be",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": execution(versionNumber=1.0)}),
            "versionNumber",
        ),
        (
            P + "upparat_7/get/accepted",
            j({"execution": {k: v for k, v in execution().items() if k != "jobDocument"}}),
            "no jobDocument",
        ),
        (P + "upparat_7/update/rejected", j({"message": "x"}), "code is missing"),
        (P + "upparat_7/update/rejected", j({"code": 1}), "code must be a string"),
        (
            P + "upparat_7/update/rejected",
            j({"code": "InternalError", "executionState": 1}),
            "executionState",
        ),
        (
            P + "upparat_7/update/rejected",
            j({"code": "InternalError", "executionState": {"status": "x"}}),
            "not a job execution status",
        ),
    ],
)
def test_malformed_messages_are_ignored_with_a_reason(
    topic: str, payload: bytes, reason_part: str
) -> None:
    event = parse(THING, topic, payload)
    assert isinstance(event, PayloadIgnored), event
    assert event.topic == topic
    assert reason_part in event.reason


@pytest.mark.parametrize(
    ("entry", "job_id", "reason_part"),
    [
        (summary("a b"), None, "is not a job id"),
        (summary("a" * 65), None, "is not a job id"),
        ({"jobId": "a"}, "a", "queuedAt is missing"),
        ({"jobId": "a", "queuedAt": "1"}, "a", "must be an integer"),
        ({"jobId": "a", "queuedAt": True}, "a", "must be an integer"),
        ({"jobId": "a", "queuedAt": 1, "versionNumber": "2"}, "a", "versionNumber"),
        (1, None, "must be a JSON object"),
        ([summary("b")], None, "must be a JSON object"),
    ],
)
@pytest.mark.parametrize("listing", ["notify", "get"])
def test_a_bad_list_entry_is_skipped_and_the_valid_ones_are_kept(
    entry: object, job_id: str | None, reason_part: str, listing: str
) -> None:
    """One broken entry (a rogue broker, a future format) must not hide the valid jobs."""
    good = [summary("upparat_1"), summary("upparat_2")]
    if listing == "notify":
        event = parse(THING, P + "notify", j({"jobs": {"QUEUED": [good[0], entry, good[1]]}}))
        assert isinstance(event, JobsChanged), event
    else:
        payload = {"inProgressJobs": [entry], "queuedJobs": good}
        event = parse(THING, P + "get/accepted", j(payload))
        assert isinstance(event, PendingJobsListed), event
    assert [s.job_id for s in event.queued] == ["upparat_1", "upparat_2"]
    assert event.in_progress == ()
    (skipped,) = event.skipped
    assert skipped.job_id == job_id
    assert reason_part in skipped.reason


def test_a_describe_answer_to_our_request_that_cannot_be_used_is_a_failed_request() -> None:
    """Another job's execution under our token: ask again soon, not after the timeout."""
    payload = {"execution": execution("upparat_8"), "clientToken": "tok-1"}
    event = parse(THING, P + "upparat_7/get/accepted", j(payload))
    assert isinstance(event, ReplyUnusable), event
    assert (event.request, event.job_id, event.client_token) == (
        RequestKind.DESCRIBE,
        JobId("upparat_7"),
        ClientToken("tok-1"),
    )
    assert "differs from the job id" in event.reason


def test_a_payload_of_exactly_128_kb_is_parsed() -> None:
    head = b'{"jobs": {}, "pad": "'
    tail = b'"}'
    payload = head + b"x" * (inbound.MAX_PAYLOAD_BYTES - len(head) - len(tail)) + tail
    assert len(payload) == inbound.MAX_PAYLOAD_BYTES
    assert parse(THING, P + "notify", payload) == JobsChanged(in_progress=(), queued=())


# --- properties ----------------------------------------------------------------------

OUR_TOPICS = [
    P + "notify",
    P + "notify-next",
    P + "get/accepted",
    P + "get/rejected",
    P + "upparat_7/get/accepted",
    P + "upparat_7/get/rejected",
    P + "upparat_7/update/accepted",
    P + "upparat_7/update/rejected",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_trees = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
known_keys = st.sampled_from(
    [
        "jobs", "IN_PROGRESS", "QUEUED", "inProgressJobs", "queuedJobs", "execution", "jobId", "status",
        "statusDetails", "jobDocument", "file", "version", "force", "meta", "sha256", "size", "signature", "queuedAt",
        "code", "message", "clientToken", "executionState", "timestamp", "thingName", "versionNumber",
    ]
)  # fmt: skip
# Trees built from the keys the parser looks at reach deep into the parsing code.
shaped_trees = st.recursive(
    json_scalars | st.just("upparat_7") | st.just("IN_PROGRESS") | st.just(URL),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(known_keys, children, max_size=5)
    ),
    max_leaves=30,
)
topics_ = (
    st.sampled_from(OUR_TOPICS)
    | st.text(max_size=60)
    | st.builds(lambda s: P + s, st.text(max_size=40))
)


def _check(event: object, topic: str) -> None:
    assert isinstance(
        event,
        PendingJobsListed
        | JobsChanged
        | JobDescribed
        | RequestRejected
        | ReplyUnusable
        | UpdateAccepted
        | PayloadIgnored,
    )
    if isinstance(event, PayloadIgnored | ReplyUnusable):
        assert event.reason


@settings(max_examples=300)
@given(topic=topics_, payload=st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(topic: str, payload: bytes) -> None:
    _check(parse(THING, topic, payload), topic)


@settings(max_examples=300)
@given(topic=st.sampled_from(OUR_TOPICS), tree=json_trees | shaped_trees)
def test_parse_never_raises_on_arbitrary_json(topic: str, tree: object) -> None:
    _check(parse(THING, topic, json.dumps(tree).encode()), topic)


@settings(max_examples=300)
@given(doc=shaped_trees, extra=st.dictionaries(known_keys, shaped_trees, max_size=4))
def test_any_document_is_a_job_document_or_names_the_bad_field(
    doc: object, extra: dict[str, object]
) -> None:
    if isinstance(doc, dict):
        doc = {**doc, **extra}
    payload = j({"execution": execution(jobDocument=doc)})
    event = parse(THING, P + "upparat_7/get/accepted", payload)
    assert isinstance(event, JobDescribed)
    document = event.execution.document
    if isinstance(document, InvalidJobDocument):
        assert document.field in {
            "jobDocument",
            "file",
            "version",
            "force",
            "meta",
            "sha256",
            "size",
            "signature",
        }
    else:
        assert document.file
        assert document.version
        assert document.size is None or document.size >= 0
        assert document.sha256 is None or document.sha256 == document.sha256.lower()


@settings(max_examples=30)
@given(depth=st.integers(min_value=1, max_value=14_000), opener=st.sampled_from([b"[", b'{"a":']))
def test_deep_nesting_never_raises(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    payload = b'{"jobs":{"QUEUED":' + opener * depth + closer * depth + b"}}"
    event = parse(THING, P + "notify", payload)
    _check(event, P + "notify")
    if depth > inbound.MAX_JSON_DEPTH:
        assert isinstance(event, PayloadIgnored)


def test_recursion_error_from_the_decoder_is_caught_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbound, "MAX_JSON_DEPTH", 10**9)
    event = parse(THING, P + "notify", b"[" * 60_000 + b"]" * 60_000)
    assert isinstance(event, PayloadIgnored)
    assert "nested too deeply" in event.reason


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    deep_text = "[" * 1000 + '\\"{'
    event = parse(THING, P + "get/rejected", j({"code": "InternalError", "message": deep_text}))
    assert isinstance(event, RequestRejected)
    assert event.message == deep_text
