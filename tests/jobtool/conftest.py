"""Fixtures for the upparat-job tests: fake AWS (moto), a loopback file server, the emulator."""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.procs import Mosquitto
from upparat.emulator import JobsEmulator

REGION: Final = "eu-west-1"
BUNDLE = b"upparat bundle 1.2\n" * 1000
BUNDLE_SHA256 = hashlib.sha256(BUNDLE).hexdigest()


class FileServer:
    """Serves `files` (path -> bytes) on loopback and counts GETs per path (query ignored,
    percent-decoded like S3 decodes an object key)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                server.gets[path] += 1
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    server.files["/fw-1.2.raucb"] = BUNDLE
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and region; no profile or config file of the machine leaks in."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def emulator(mosquitto: Mosquitto) -> Iterator[JobsEmulator]:
    """The real jobs emulator, in-process, on the test's mosquitto (timeouts only on demand)."""
    em = JobsEmulator("127.0.0.1", mosquitto.port, tick_interval=None)
    em.start()
    try:
        yield em
    finally:
        em.stop()
