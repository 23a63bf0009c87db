"""Pre-signed URL placeholders (v1 and v2): signed afresh on every document request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulator.device import Device
from tests.support.procs import Mosquitto
from upparat.emulator import DefaultSigner, EmulatorError, FakeClock, JobsEmulator
from upparat.emulator.presign import (
    PLACEHOLDER,
    S3Location,
    expires_at,
    parse_v2,
    placeholder_v1,
    placeholder_v2,
)

URL = "https://bucket.s3.amazonaws.com/fw/image-2.0.bin"
DOC = {
    "operation": "install",
    "url": f"${{aws:iot:s3-presigned-url:{URL}}}",
    "files": [
        {"url": "${aws:iot:s3-presigned-url:https://b/one}", "size": 10},
        "prefix ${aws:iot:s3-presigned-url:https://b/two} suffix",
    ],
    "${aws:iot:s3-presigned-url:https://b/key}": "keys are not substituted",
    "plain": "https://example.invalid/not-a-placeholder",
}


class ExpiringSigner:
    """Hands out numbered URLs that say when they expire, by the emulator's clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, int]] = []  # n in a URL: its place in this list

    def __call__(self, url: str, expires_in: int) -> str:
        self.calls.append((url, expires_in))
        return f"{url}?n={len(self.calls)}&expires={int(self.clock.now()) + expires_in}"


@pytest.fixture
def signer(clock: FakeClock) -> ExpiringSigner:
    return ExpiringSigner(clock)


@pytest.fixture
def signed(broker: Mosquitto, clock: FakeClock, signer: ExpiringSigner) -> Iterator[JobsEmulator]:
    with JobsEmulator(
        "127.0.0.1", broker.port, clock=clock, signer=signer, tick_interval=None
    ) as em:
        yield em


@pytest.fixture
def dev(broker: Mosquitto, signed: JobsEmulator) -> Iterator[Device]:
    with Device(broker.port) as d:
        yield d


def test_default_signer_gives_a_fresh_url_on_every_describe(
    emulator: JobsEmulator, device: Device
) -> None:
    emulator.create_job("fw-1", DOC, ["dev-1"])
    first = device.accepted("fw-1/get")["execution"]["jobDocument"]
    second = device.accepted("fw-1/get")["execution"]["jobDocument"]
    for doc in (first, second):
        assert doc["url"].startswith(URL + "?")
        assert "X-Amz-Expires=3600" in doc["url"]
        assert "X-Amz-Signature=" in doc["url"]
        assert "X-Amz-Date=20231114T221320Z" in doc["url"]  # the fake clock's START
    assert first["url"] != second["url"]


def test_every_placeholder_in_every_string_value_is_signed(
    signed: JobsEmulator, dev: Device, signer: ExpiringSigner, clock: FakeClock
) -> None:
    signed.create_job("fw-1", DOC, ["dev-1"], presigned_expires_in=120)
    signer.calls.clear()
    doc = dev.accepted("fw-1/get")["execution"]["jobDocument"]
    expires = int(clock.now()) + 120
    assert doc == {
        "operation": "install",
        "url": f"{URL}?n=1&expires={expires}",
        "files": [
            {"url": f"https://b/one?n=2&expires={expires}", "size": 10},
            f"prefix https://b/two?n=3&expires={expires} suffix",
        ],
        "${aws:iot:s3-presigned-url:https://b/key}": "keys are not substituted",
        "plain": "https://example.invalid/not-a-placeholder",
    }
    assert signer.calls == [(URL, 120), ("https://b/one", 120), ("https://b/two", 120)]


def test_each_document_request_signs_again_with_the_clock_of_that_moment(
    signed: JobsEmulator, dev: Device, clock: FakeClock
) -> None:
    signed.create_job("fw-1", {"url": f"${{aws:iot:s3-presigned-url:{URL}}}"}, ["dev-1"], 60)
    urls: list[Any] = []
    urls.append(dev.accepted("fw-1/get")["execution"]["jobDocument"]["url"])
    clock.advance(100)  # the first URL has expired by now
    urls.append(dev.accepted("$next/get")["execution"]["jobDocument"]["url"])
    urls.append(dev.accepted("start-next")["execution"]["jobDocument"]["url"])
    _, body = dev.update("fw-1", status="IN_PROGRESS", includeJobDocument=True)
    urls.append(body["jobDocument"]["url"])
    t0 = int(clock.now()) - 100
    assert urls[0].endswith(f"expires={t0 + 60}")
    assert all(u.endswith(f"expires={t0 + 160}") for u in urls[1:])
    assert len(set(urls)) == len(urls)


def test_notify_next_carries_a_signed_document(signed: JobsEmulator, dev: Device) -> None:
    start = dev.checkpoint()
    signed.create_job("fw-1", DOC, ["dev-1"])
    doc = dev.wait("notify-next", since=start).body["execution"]["jobDocument"]
    assert doc["url"].startswith(f"{URL}?n=")


def test_the_stored_document_keeps_its_placeholders(signed: JobsEmulator, dev: Device) -> None:
    signed.create_job("fw-1", DOC, ["dev-1"])
    dev.accepted("fw-1/get")
    assert signed.job("fw-1").document_json() == DOC


@pytest.mark.parametrize("expires_in", [59, 3601, 0])
def test_presigned_expiry_must_be_60_to_3600(emulator: JobsEmulator, expires_in: int) -> None:
    with pytest.raises(EmulatorError, match="60-3600"):
        emulator.create_job("fw-1", DOC, ["dev-1"], presigned_expires_in=expires_in)
    assert emulator.list_jobs() == []


def test_default_signer_respects_an_existing_query() -> None:
    signed = DefaultSigner(FakeClock(0))("https://b/x?versionId=3", 60)
    assert signed.startswith("https://b/x?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert "X-Amz-Date=19700101T000000Z" in signed


def test_seconds_per_minute_scales_url_lifetimes(broker: Mosquitto, clock: FakeClock) -> None:
    with (
        JobsEmulator(
            "127.0.0.1", broker.port, clock=clock, tick_interval=None, seconds_per_minute=1
        ) as em,
        Device(broker.port) as dev,
    ):
        em.create_job("fw-1", {"url": f"${{aws:iot:s3-presigned-url:{URL}}}"}, ["dev-1"], 120)
        url = dev.accepted("fw-1/get")["execution"]["jobDocument"]["url"]
        assert "X-Amz-Expires=2&" in url
        assert expires_at(url) == clock.now() // 1 + 2


def test_expires_at_reads_the_default_signers_query() -> None:
    url = DefaultSigner(FakeClock(1_700_000_000.5))("https://b/x", 60)
    assert expires_at(url) == 1_700_000_060
    assert expires_at("https://b/x?X-Amz-Expires=60") is None
    assert expires_at("https://b/x") is None


# ---- v2: ${aws:iot:s3-presigned-url-v2:https://s3.<region>.amazonaws.com/<bucket>/<key>} --

V2_URL = "https://s3.eu-west-1.amazonaws.com/upparat-fw/fw/image%202.0%2Brc.bin"
V2 = f"${{aws:iot:s3-presigned-url-v2:{V2_URL}}}"


def test_v2_is_signed_for_the_decoded_key_on_the_s3_host(
    signed: JobsEmulator, dev: Device, signer: ExpiringSigner
) -> None:
    signed.create_job(
        "fw-1", {"file": V2, "old": f"${{aws:iot:s3-presigned-url:{URL}}}"}, ["dev-1"]
    )
    signer.calls.clear()
    doc = dev.accepted("fw-1/get")["execution"]["jobDocument"]
    # The key is "fw/image 2.0+rc.bin": encoded again the canonical way, then signed.
    assert signer.calls == [(V2_URL, 3600), (URL, 3600)]
    assert doc["file"].startswith(V2_URL + "?n=1&")
    assert doc["old"].startswith(URL + "?n=2&")


def test_with_an_s3_endpoint_s3_objects_are_served_from_there(
    broker: Mosquitto, clock: FakeClock, signer: ExpiringSigner
) -> None:
    v1_s3 = "https://upparat-fw.s3.amazonaws.com/fw/plain.bin"
    doc = {
        "v2": V2,
        "v1": f"${{aws:iot:s3-presigned-url:{v1_s3}}}",
        "v1path": "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/upparat-fw/a%20b}",
        "other": "${aws:iot:s3-presigned-url:http://127.0.0.1:9/fw.bin}",
    }
    with (
        JobsEmulator(
            "127.0.0.1",
            broker.port,
            clock=clock,
            signer=signer,
            tick_interval=None,
            s3_endpoint="http://127.0.0.1:8000/s3/",
        ) as em,
        Device(broker.port) as d,
    ):
        assert em.s3_endpoint == "http://127.0.0.1:8000/s3"
        em.create_job("fw-1", doc, ["dev-1"])
        signer.calls.clear()
        d.accepted("fw-1/get")
    assert [url for url, _ in signer.calls] == [
        "http://127.0.0.1:8000/s3/upparat-fw/fw/image%202.0%2Brc.bin",
        "http://127.0.0.1:8000/s3/upparat-fw/fw/plain.bin",
        # v1 takes the key as written: "a%20b" is the key itself, so its % is encoded
        "http://127.0.0.1:8000/s3/upparat-fw/a%2520b",
        "http://127.0.0.1:9/fw.bin",  # not an S3 URL: signed as it is
    ]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://upparat-fw.s3.amazonaws.com/fw.bin", "https://s3.<region>.amazonaws.com"),
        ("http://s3.eu-west-1.amazonaws.com/upparat-fw/fw.bin", "https://s3.<region>"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/fw image.bin", "must be S3-encoded"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/a+b", "must be S3-encoded"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/%ff", "does not decode to UTF-8"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/", "no object key"),
        ("https://s3.eu-west-1.amazonaws.com/UP/fw.bin", "not an S3 bucket name"),
        ("https://s3.moon.amazonaws.com/upparat-fw/fw.bin", "not an AWS region"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/fw.bin?versionId=3", "no query"),
        ("https://s3.eu-west-1.amazonaws.com/upparat-fw/" + "k" * 1025, "at most 1024 bytes"),
    ],
)
def test_a_v2_placeholder_that_names_no_s3_object_is_refused_at_creation(
    emulator: JobsEmulator, url: str, fragment: str
) -> None:
    doc = {"deep": [{"file": f"${{aws:iot:s3-presigned-url-v2:{url}}}"}]}
    with pytest.raises(EmulatorError, match=re.escape(fragment)):
        emulator.create_job("fw-1", doc, ["dev-1"])
    assert emulator.list_jobs() == []


def test_the_placeholder_syntax_round_trips() -> None:
    key = "dir/ü ~!*'()+%.bin"
    text = placeholder_v2("eu-central-1", "upparat-fw", key)
    match = PLACEHOLDER.fullmatch(text)
    assert match is not None
    assert match.group(1) == "-v2"
    assert parse_v2(match.group(2)) == S3Location(
        region="eu-central-1", bucket="upparat-fw", key=key
    )
    assert placeholder_v1("https://b/x") == "${aws:iot:s3-presigned-url:https://b/x}"


@pytest.mark.parametrize("endpoint", ["ftp://h", "127.0.0.1:8000", "http://h/?q=1"])
def test_an_s3_endpoint_must_be_an_http_url(broker: Mosquitto, endpoint: str) -> None:
    with pytest.raises(ValueError, match="S3 endpoint must be an http"):
        JobsEmulator("127.0.0.1", broker.port, s3_endpoint=endpoint)
