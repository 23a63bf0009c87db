"""Sentry reporting against a local HTTP server standing in for Sentry's ingest."""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from upparat.core.model import JobId, Phase
from upparat.io.sentry import (
    close_sentry,
    flush_sentry,
    init_sentry,
    report_job_failure,
    scrub_text,
)

SECRET = "c0ffee5ecret5ignature"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SIGNED_URL = (
    "https://fw-bucket.s3.eu-central-1.amazonaws.com/images/fw-2.0.img"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={ACCESS_KEY}%2F20250101%2Feu-central-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-Signature={SECRET}"
)


class _Ingest(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []
    paths: ClassVar[list[str]] = []
    received: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]  # only when sentry-sdk chose it

            raw = brotli.decompress(raw)
        type(self).bodies.append(raw)
        type(self).paths.append(self.path)
        type(self).received.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ingest() -> Iterator[tuple[str, type[_Ingest]]]:
    """A fake Sentry on 127.0.0.1; yields its DSN and the handler class with the bodies."""
    handler = type("Ingest", (_Ingest,), {"bodies": [], "paths": [], "received": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://public@127.0.0.1:{server.server_address[1]}/1", handler
    finally:
        close_sentry(timeout=2.0)  # never leak the client into other tests
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def envelope_items(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """(item header, payload) pairs of a Sentry envelope (header line, then items)."""
    _, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


def events(handler: type[_Ingest]) -> list[dict[str, Any]]:
    return [
        json.loads(payload)
        for body in handler.bodies
        for header, payload in envelope_items(body)
        if header.get("type") == "event"
    ]


def test_job_failure_arrives_tagged_and_scrubbed(
    ingest: tuple[str, type[_Ingest]], caplog: pytest.LogCaptureFixture
) -> None:
    dsn, handler = ingest
    assert init_sentry(dsn, thing_name="gateway-0042", release="upparat@2.0.0-test") is True

    # A breadcrumb from an ordinary log line, and an exception whose text carries a URL.
    with caplog.at_level(logging.INFO, logger="upparat.io.download"):
        logging.getLogger("upparat.io.download").info("GET %s", SIGNED_URL)
    try:
        raise ConnectionError(f"download of {SIGNED_URL} failed: 'X-Amz-Signature': '{SECRET}'")
    except ConnectionError:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            scope.set_extra("url", SIGNED_URL)
            scope.set_extra("params", {"X-Amz-Signature": SECRET})
            sentry_sdk.capture_exception()
    assert report_job_failure(
        JobId("upparat_7"), Phase.INSTALLING, f"install failed, image from {SIGNED_URL}"
    )
    flush_sentry(timeout=5.0)

    assert handler.paths
    assert all(p.startswith("/api/1/envelope/") for p in handler.paths)
    everything = b"".join(handler.bodies)
    assert SECRET.encode() not in everything
    assert ACCESS_KEY.encode() not in everything
    assert b"X-Amz-Signature=" + SECRET.encode() not in everything

    found = events(handler)
    assert len(found) == 2
    exception_event, failure = found
    assert exception_event["tags"]["thing"] == "gateway-0042"
    assert exception_event["release"] == "upparat@2.0.0-test"
    (exception,) = exception_event["exception"]["values"]
    assert exception["type"] == "ConnectionError"
    assert exception["value"].startswith(
        "download of https://fw-bucket.s3.eu-central-1.amazonaws.com/images/fw-2.0.img"
        "?<redacted> failed"
    )
    assert exception_event["extra"]["url"].endswith("fw-2.0.img?<redacted>")
    breadcrumbs = [b["message"] for b in exception_event["breadcrumbs"]["values"]]
    assert any(
        m.startswith("GET https://fw-bucket") and m.endswith("?<redacted>") for m in breadcrumbs
    )

    assert failure["level"] == "error"
    assert failure["tags"] == {
        "thing": "gateway-0042",
        "job_id": "upparat_7",
        "state": "installing",
    }
    assert failure["message"] == (
        "install failed, image from"
        " https://fw-bucket.s3.eu-central-1.amazonaws.com/images/fw-2.0.img?<redacted>"
    )


def test_error_log_lines_are_scrubbed_too(ingest: tuple[str, type[_Ingest]]) -> None:
    dsn, handler = ingest
    assert init_sentry(dsn, thing_name="t1", release="r")
    logging.getLogger("upparat.runtime").error(
        "job upparat_8: gave up on X-Amz-Signature=%s token=%s", SECRET, SECRET
    )
    flush_sentry(timeout=5.0)
    (event,) = events(handler)
    assert event["tags"]["thing"] == "t1"
    assert SECRET.encode() not in b"".join(handler.bodies)
    assert event["logentry"]["formatted"] == (
        "job upparat_8: gave up on X-Amz-Signature=<redacted> token=<redacted>"
    )


def test_no_dsn_means_off(ingest: tuple[str, type[_Ingest]]) -> None:
    _, handler = ingest
    assert init_sentry(None, thing_name="t", release="r") is False
    assert init_sentry("", thing_name="t", release="r") is False
    assert report_job_failure(JobId("upparat_1"), "downloading", "x") is False
    flush_sentry()
    assert handler.bodies == []


def test_closed_client_sends_nothing(ingest: tuple[str, type[_Ingest]]) -> None:
    dsn, handler = ingest
    assert init_sentry(dsn, thing_name="t", release="r")
    close_sentry()
    assert report_job_failure(JobId("upparat_1"), "downloading", "x") is False
    import sentry_sdk

    sentry_sdk.capture_message("after close")
    assert not sentry_sdk.get_client().is_active()
    assert handler.bodies == []


def test_missing_sentry_sdk_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="upparat.io.sentry"):
        assert init_sentry("http://k@127.0.0.1:9/1", thing_name="t", release="r") is False
    assert "sentry-sdk is not installed" in caplog.text
    assert report_job_failure(JobId("upparat_1"), "x", "y") is False


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("https://h/p?a=1&b=2 ok", "https://h/p?<redacted> ok"),
        ("see <https://h/p?a=1>.", "see <https://h/p?<redacted>>."),
        ("'https://h/p?X-Amz-Signature=s'", "'https://h/p?<redacted>'"),
        ("http://h/p#frag", "http://h/p#frag"),
        ("no url here", "no url here"),
        ("X-Amz-Signature=abc&X-Amz-Date=1", "X-Amz-Signature=<redacted>&X-Amz-Date=<redacted>"),
        ("x-amz-signature%3Dabc%26", "x-amz-signature%3D<redacted>"),
        (
            "Signature=abc Expires=1 Key-Pair-Id=k",
            "Signature=<redacted> Expires=<redacted> Key-Pair-Id=<redacted>",
        ),
        ("{'X-Amz-Signature': 'abc', 'n': 1}", "{'X-Amz-Signature': '<redacted>', 'n': 1}"),
        ('{"sig": "abc"}', '{"sig": "<redacted>"}'),
        (f"key {ACCESS_KEY} used", "key <redacted> used"),
        ("design=ok assignment=1", "design=ok assignment=1"),
    ],
)
def test_scrub_text(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed
