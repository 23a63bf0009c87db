"""A small HTTP file server for the demo and end-to-end tests.

Serves files from one folder (http, or https with a given TLS context) with Range, ETag
and If-Range like S3 does, counts the bytes it serves (in total and per file), and can
throttle or inject faults (500s, 403s, dropped connections) on request. Loopback only.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from upparat.emulator.presign import expires_at

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FileServer:
    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: a server-side context to serve https:// instead of http://."""
        self.root = root
        self.tls = tls
        self.bytes_served = 0
        self.served: dict[str, int] = {}
        """Bytes served per path (without the leading slash)."""
        self.active = 0
        """Responses whose body is being sent right now."""
        self.requests: list[tuple[str, str | None, int]] = []
        """(path, Range header, status) per request."""
        self.rate: float | None = None
        """Bytes per second per request; None: as fast as possible."""
        self.fail_next: list[int] = []
        """Statuses to answer the next requests with, in order (e.g. [500, 500, 403])."""
        self.fail_headers: dict[str, str] = {}
        """Headers sent with the `fail_next` answers (e.g. {"Retry-After": "1"})."""
        self.drop_after: int | None = None
        """Close the connection after this many bytes of the next response."""
        self.expire_urls = False
        """Answer 403 to an expired pre-signed URL of the emulator (X-Amz-Date + X-Amz-Expires)."""
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                path = unquote(urlsplit(self.path).path).lstrip("/")
                rng = self.headers.get("Range")
                with server._lock:
                    forced = server.fail_next.pop(0) if server.fail_next else None
                    drop_after, server.drop_after = server.drop_after, None
                if forced is None and server.expire_urls:
                    expiry = expires_at(self.path)
                    if expiry is not None and time.time() >= expiry:
                        forced = 403  # S3: AccessDenied, "Request has expired"
                if forced is not None:
                    server._record(path, rng, forced)
                    self.send_response(forced)
                    for name, value in server.fail_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = (server.root / path).resolve()
                if server.root.resolve() not in file.parents or not file.is_file():
                    server._record(path, rng, 404)
                    self.send_error(404)
                    return
                size = file.stat().st_size
                etag = f'"{_etag(file)}"'
                start, end, status = 0, size - 1, 200
                if_range = self.headers.get("If-Range")
                match = _RANGE.match(rng) if rng else None
                if match and (if_range is None or if_range == etag):
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else size - 1
                    if start >= size:
                        server._record(path, rng, 416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    end = min(end, size - 1)
                    status = 206
                server._record(path, rng, status)
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body:
                    with server._lock:
                        server.active += 1
                    try:
                        self._copy(path, file, start, end - start + 1, drop_after)
                    finally:
                        with server._lock:
                            server.active -= 1

            def _copy(
                self, path: str, file: Path, offset: int, length: int, drop_after: int | None
            ) -> None:
                sent = 0
                began = time.monotonic()
                with file.open("rb") as f:
                    f.seek(offset)
                    while sent < length:
                        chunk = f.read(min(64 * 1024, length - sent))
                        if not chunk:
                            return
                        if drop_after is not None and sent + len(chunk) > drop_after:
                            chunk = chunk[: max(0, drop_after - sent)]
                            self._write(path, chunk)
                            self.close_connection = True
                            return
                        if not self._write(path, chunk):
                            return
                        sent += len(chunk)
                        if server.rate:
                            ahead = sent / server.rate - (time.monotonic() - began)
                            if ahead > 0:
                                time.sleep(ahead)

            def _write(self, path: str, chunk: bytes) -> bool:
                try:
                    self.wfile.write(chunk)
                except OSError:
                    self.close_connection = True
                    return False
                with server._lock:
                    server.bytes_served += len(chunk)
                    server.served[path] = server.served.get(path, 0) + len(chunk)
                return True

        self._server = _Server((host, port), Handler, tls)
        self._server.daemon_threads = True
        # A short poll interval: stop() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def url(self, name: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{name}"

    def _record(self, path: str, rng: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((path, rng, status))

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to end: it would wait forever if never started.
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(address, handler)
        self._tls = tls

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        # The TLS handshake happens in the connection's thread, not in the accepting one.
        if self._tls is not None and isinstance(request, socket.socket):
            try:
                request = self._tls.wrap_socket(request, server_side=True)
            except OSError:
                request.close()
                return
        super().finish_request(request, client_address)


def _etag(file: Path) -> str:
    st = file.stat()
    return hashlib.sha256(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()[:32]


def make_bundle(path: Path, size: int, *, seed: int = 1) -> str:
    """Write `size` pseudo-random bytes to `path`; returns their sha256 (hex)."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    with path.open("wb") as f:
        written = 0
        counter = 0
        while written < size:
            counter += 1
            chunk = bytes(b ^ (counter & 0xFF) for b in block[:256]) + block[256:]
            chunk = chunk[: size - written]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    os.chmod(path, 0o644)
    return digest.hexdigest()
