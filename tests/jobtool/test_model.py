"""The pure job model: every input check, the document, job ids, redaction."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from upparat.aws import inbound
from upparat.core.model import JobDocument
from upparat.emulator.presign import S3Location, parse_v2
from upparat.jobtool.model import (
    JOB_ID_RE,
    MAX_DOCUMENT_CHARS,
    CreateInput,
    FileFacts,
    Given,
    HttpFile,
    JobSpec,
    Mode,
    Placeholder,
    Planned,
    Problem,
    Rejected,
    S3Object,
    TargetSelection,
    build_document,
    check_comment,
    check_facts,
    generate_job_id,
    parse_endpoint,
    plan_create,
    redact_text,
    redact_url,
    things_from_text,
)

NOW = 1_764_224_239.0  # 2025-11-27T06:17:19Z
ROLE = "arn:aws:iam::123456789012:role/upparat-download"
SHA = "ab" * 32
FACTS = FileFacts(sha256=SHA, size=1234)
THING = (Given(value="dev-1", origin="--thing"),)


def s3_input(**changes: Any) -> CreateInput:
    base = CreateInput(
        file="s3://upparat-fw/bundles/fw-1.2.raucb",
        version="1.2",
        things=THING,
        role_arn=ROLE,
    )
    return attrs.evolve(base, **changes)


def plan(given: CreateInput, mode: Mode = Mode.AWS) -> JobSpec:
    result = plan_create(given, mode, now=NOW, token="a1b2")
    assert isinstance(result, Planned), result
    return result.spec


def problems(given: CreateInput, mode: Mode = Mode.AWS) -> list[Problem]:
    result = plan_create(given, mode, now=NOW, token="a1b2")
    assert isinstance(result, Rejected), result
    return list(result.problems)


def test_s3_job_document_uses_the_presigned_url_placeholder() -> None:
    spec = plan(s3_input(meta="channel=stable", force=True, expires=600))
    assert spec.file == S3Object(bucket="upparat-fw", key="bundles/fw-1.2.raucb")
    assert spec.presign is not None
    assert (spec.presign.role_arn, spec.presign.expires_in) == (ROLE, 600)
    assert spec.placeholder is Placeholder.V2
    doc = build_document(attrs.evolve(spec, s3_region="eu-west-1"), FACTS)
    assert not isinstance(doc, Rejected)
    assert json.loads(doc.text) == {
        "file": "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/upparat-fw/bundles/fw-1.2.raucb}",
        "version": "1.2",
        "force": True,
        "meta": "channel=stable",
        "sha256": SHA,
        "size": 1234,
    }
    # compact on the wire, readable on the terminal, same content
    assert " " not in doc.text.replace("channel=stable", "")
    assert json.loads(doc.shown) == json.loads(doc.text)


def test_a_signature_goes_into_the_document_as_base64_the_device_parses() -> None:
    spec = plan(s3_input(file="https://cdn.example.com/fw.raucb", role_arn=None))
    der = bytes([0x30, 0x44, 0x02, 0x20]) + b"\x01" * 32 + bytes([0x02, 0x20]) + b"\x02" * 32

    doc = build_document(spec, FACTS, der)

    assert not isinstance(doc, Rejected)
    document = json.loads(doc.text)
    assert document["signature"] == base64.b64encode(der).decode()
    parsed = inbound._document(document)  # what the daemon makes of it
    assert isinstance(parsed, JobDocument)
    assert parsed.signature == der
    unsigned = build_document(spec, FACTS)
    assert not isinstance(unsigned, Rejected)
    assert "signature" not in json.loads(unsigned.text)


def test_https_file_goes_into_the_document_as_is_without_presigning() -> None:
    spec = plan(s3_input(file="https://cdn.example.com/fw.raucb?v=2", role_arn=None))
    assert spec.presign is None
    doc = build_document(spec, FACTS)
    assert not isinstance(doc, Rejected)
    assert json.loads(doc.text)["file"] == "https://cdn.example.com/fw.raucb?v=2"
    assert "meta" not in json.loads(doc.text)
    assert json.loads(doc.text)["force"] is False


def test_v1_and_v2_name_the_same_object_each_in_its_own_syntax() -> None:
    key = "bundles/fw 1.2+rc.raucb"
    v2 = plan(s3_input(file=f"s3://upparat-fw/{key}"))
    assert attrs.evolve(v2, s3_region="eu-west-1").document_file == (
        "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/upparat-fw/"
        "bundles/fw%201.2%2Brc.raucb}"
    )
    # what the emulator (the service side) reads back out of it
    found = parse_v2("https://s3.eu-west-1.amazonaws.com/upparat-fw/bundles/fw%201.2%2Brc.raucb")
    assert found == S3Location(region="eu-west-1", bucket="upparat-fw", key=key)
    v1 = plan(s3_input(placeholder=Placeholder.V1))
    assert v1.document_file == (
        "${aws:iot:s3-presigned-url:https://upparat-fw.s3.amazonaws.com/bundles/fw-1.2.raucb}"
    )
    emulated = plan(s3_input(role_arn=None, expires=120), Mode.EMULATOR)
    assert emulated.presign is not None
    assert (emulated.presign.role_arn, emulated.presign.expires_in) == (None, 120)


def test_emulator_presign_wraps_the_url_so_the_emulator_signs_it() -> None:
    given = s3_input(file="http://127.0.0.1:8080/fw.raucb", role_arn=None, presign=True)
    spec = plan(given, Mode.EMULATOR)
    assert spec.presign is not None
    assert spec.presign.role_arn is None
    assert spec.document_file == "${aws:iot:s3-presigned-url:http://127.0.0.1:8080/fw.raucb}"


@pytest.mark.parametrize(
    ("changes", "mode", "option", "fragment"),
    [
        ({"file": "ftp://x/y"}, Mode.AWS, "--file", "s3://BUCKET/KEY or an https URL"),
        ({"file": "s3://Upper/key"}, Mode.AWS, "--file", "3-63 of a-z 0-9 . -"),
        ({"file": "s3://upparat-fw/"}, Mode.AWS, "--file", "needs the object's key"),
        (
            {"file": "s3://upparat-fw/a b.raucb", "placeholder": Placeholder.V1},
            Mode.AWS,
            "--file",
            "safe characters",
        ),
        ({"file": "s3://upparat-fw/a\tb"}, Mode.AWS, "--file", "control characters"),
        ({"file": "s3://upparat-fw/k", "role_arn": None}, Mode.AWS, "--role-arn", "required"),
        (
            {"file": "https://h/f", "role_arn": None, "placeholder": Placeholder.V2},
            Mode.AWS,
            "--placeholder",
            "names an S3 object",
        ),
        (
            {"file": "https://h/f", "role_arn": None, "placeholder": Placeholder.V1},
            Mode.AWS,
            "--placeholder",
            "for pre-signed files",
        ),
        ({"file": "https://h/a b", "role_arn": None}, Mode.AWS, "--file", "spaces"),
        ({"file": "https:///nohost", "role_arn": None}, Mode.AWS, "--file", "with a host"),
        ({"version": ""}, Mode.AWS, "--version", "must not be empty"),
        ({"version": "1.2\n"}, Mode.AWS, "--version", "control characters"),
        ({"meta": "a\x00b"}, Mode.AWS, "--meta", "control characters"),
        ({"job_id": "has space"}, Mode.AWS, "--job-id", "1-64 of a-z A-Z 0-9 _ -"),
        ({"job_id": "x" * 57}, Mode.AWS, "--job-id", "56 characters left"),
        ({"job_prefix": "bad prefix"}, Mode.AWS, "--job-prefix", "1-63"),
        ({"things": ()}, Mode.AWS, "--thing", "at least one target"),
        (
            {"things": (Given(value="bad/name", origin="--things-from f.txt line 3"),)},
            Mode.AWS,
            "--things-from",
            "--things-from f.txt line 3: a thing name",
        ),
        ({"things": (Given(value="x" * 129, origin="--thing"),)}, Mode.AWS, "--thing", "1-128"),
        (
            {"groups": (Given(value="g:1", origin="--group"),)},
            Mode.EMULATOR,
            "--group",
            "no thing groups",
        ),
        (
            {"groups": (Given(value="g 1", origin="--group"),)},
            Mode.AWS,
            "--group",
            "thing group name",
        ),
        ({"role_arn": None}, Mode.AWS, "--role-arn", "required with --file s3://"),
        ({"role_arn": "arn:aws:iam::12:role/x"}, Mode.AWS, "--role-arn", "IAM role ARN"),
        (
            {"file": "https://h/f", "role_arn": ROLE},
            Mode.AWS,
            "--role-arn",
            "only for --file s3://",
        ),
        (
            {"role_arn": ROLE, "file": "http://h/f"},
            Mode.EMULATOR,
            "--role-arn",
            "not used with --emulator",
        ),
        ({"expires": 59}, Mode.AWS, "--expires", "60-3600 seconds, got 59"),
        ({"expires": 3601}, Mode.AWS, "--expires", "60-3600 seconds, got 3601"),
        (
            {"file": "http://h/f", "role_arn": None, "expires": 60},
            Mode.EMULATOR,
            "--expires",
            "needs --presign",
        ),
        ({"presign": True}, Mode.AWS, "--presign", "--emulator only"),
        ({"in_progress_timeout": 0}, Mode.AWS, "--in-progress-timeout", "1-10080 minutes"),
        ({"in_progress_timeout": 10081}, Mode.AWS, "--in-progress-timeout", "got 10081"),
        (
            {
                "file": "http://h/f",
                "role_arn": None,
                "target_selection": TargetSelection.CONTINUOUS,
            },
            Mode.EMULATOR,
            "--target-selection",
            "SNAPSHOT",
        ),
        ({"sha256": "abc"}, Mode.AWS, "--sha256", "64 hexadecimal"),
        ({"size": -1}, Mode.AWS, "--size", "0 or more"),
    ],
)
def test_bad_input_names_the_option_and_what_is_allowed(
    changes: dict[str, Any], mode: Mode, option: str, fragment: str
) -> None:
    if mode is Mode.EMULATOR:
        changes = {"file": "http://127.0.0.1:8080/f", "role_arn": None, **changes}
    found = problems(s3_input(**changes), mode)
    assert [p.option for p in found] == [option], found
    assert fragment in found[0].text
    assert found[0].text.startswith(option)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(s3_input(version="", role_arn=None, expires=1, things=()))
    assert {p.option for p in found} == {"--version", "--role-arn", "--expires", "--thing"}


def test_limits_at_their_edges_are_accepted() -> None:
    spec = plan(
        s3_input(
            expires=60,
            in_progress_timeout=10080,
            things=(Given(value="a:b_c-" + "x" * 122, origin="--thing"),),
            job_id="x" * 56,
        )
    )
    assert len(spec.job_id) == 64
    assert plan(s3_input(expires=3600, in_progress_timeout=1)).presign is not None


def test_job_id_gets_the_prefix_once_and_things_are_deduplicated() -> None:
    assert plan(s3_input(job_id="fw12")).job_id == "upparat_fw12"
    assert plan(s3_input(job_id="upparat_fw12")).job_id == "upparat_fw12"
    assert plan(s3_input(job_id="fw12", job_prefix="acme-")).job_id == "acme-fw12"
    twice = (*THING, Given(value="dev-2", origin="--thing"), *THING)
    assert plan(s3_input(things=twice)).things == ("dev-1", "dev-2")


def test_generated_job_id_carries_version_time_and_token() -> None:
    assert plan(s3_input()).job_id == "upparat_1-2_20251127T061719Z_a1b2"


@given(
    prefix=st.from_regex(r"[a-zA-Z0-9_-]{1,63}", fullmatch=True),
    version=st.text(min_size=0, max_size=200),
    token=st.text(max_size=8),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_generated_job_ids_are_always_valid(
    prefix: str, version: str, token: str, now: float
) -> None:
    job_id = generate_job_id(prefix, version, now, token)
    assert JOB_ID_RE.fullmatch(job_id)
    assert job_id.startswith(prefix[:64])


def test_document_over_the_aws_limit_is_refused_naming_meta() -> None:
    spec = plan(s3_input(meta="m" * MAX_DOCUMENT_CHARS, placeholder=Placeholder.V1))
    result = build_document(spec, FACTS)
    assert isinstance(result, Rejected)
    assert result.problems[0].option == "--meta"
    assert "32768" in result.problems[0].text
    # non-ASCII counts as one character each, as AWS counts it
    fits = plan(s3_input(meta="é" * (MAX_DOCUMENT_CHARS - 300), placeholder=Placeholder.V1))
    assert not isinstance(build_document(fits, FACTS), Rejected)


def test_pre_signed_or_credentialed_urls_are_never_shown() -> None:
    signed = (
        "https://b.s3.amazonaws.com/fw.raucb?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20250101&X-Amz-Signature=deadbeef"
    )
    assert redact_url(signed) == "https://b.s3.amazonaws.com/fw.raucb?<redacted>"
    assert redact_url("https://user:pw@h:8443/f?v=2") == "https://***@h:8443/f?v=2"
    assert redact_text(f"failed: {signed} (403)") == (
        "failed: https://b.s3.amazonaws.com/fw.raucb?<redacted> (403)"
    )
    given = s3_input(file=signed, role_arn=None)
    result = plan_create(given, Mode.AWS, now=NOW, token="a1b2")
    assert isinstance(result, Planned)
    assert any("looks pre-signed" in w for w in result.warnings)
    doc = build_document(result.spec, FACTS)
    assert not isinstance(doc, Rejected)
    assert "deadbeef" in doc.text  # sent as given ...
    assert "deadbeef" not in doc.shown  # ... never printed
    assert "AKIA" not in doc.shown
    assert "deadbeef" not in str(result.spec.file)


def test_check_facts_compares_given_sha256_and_size() -> None:
    spec = plan(s3_input(sha256=SHA.upper(), size=1234))
    assert spec.sha256 == SHA
    assert check_facts(FACTS, spec, "here") == ()
    other = FileFacts(sha256="cd" * 32, size=1)
    assert [p.option for p in check_facts(other, spec, "here")] == ["--sha256", "--size"]


def test_things_from_text_skips_blanks_and_comments() -> None:
    text = "dev-1\n\n  dev-2  # lab\n# all of rack 3\ndev-3\n"
    assert things_from_text(text, "--things-from f") == (
        Given(value="dev-1", origin="--things-from f line 1"),
        Given(value="dev-2", origin="--things-from f line 3"),
        Given(value="dev-3", origin="--things-from f line 5"),
    )


def test_endpoint_and_comment() -> None:
    assert parse_endpoint("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_endpoint("[::1]:1883") == ("::1", 1883)
    for bad in ("1883", "host:", "host:0", "host:70000", ":1883"):
        assert isinstance(parse_endpoint(bad), Problem), bad
    assert check_comment("rollback: bad batch") is None
    assert check_comment("a\nb") is not None
    assert check_comment("x" * 2029) is not None


def test_http_file_shows_without_secrets() -> None:
    assert str(HttpFile(url="https://u:p@h/f?token=x")) == "https://***@h/f?<redacted>"
