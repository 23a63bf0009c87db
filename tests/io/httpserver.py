"""Scripted HTTP/1.1 origin server and forward proxy on loopback, for the download tests.

Owns generated objects (a seeded random block repeated to any length, never held whole),
Range / If-Range handling, per-request fault scripts (status, drop after N bytes, trickle,
chunked, Range ignored) and the count of body bytes sent. A test double, nothing more.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import http.server
import random
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

import attrs

BLOCK_SIZE = 1024 * 1024 + 7
"""Not a power of two, so that the block's period never lines up with a client's reads."""


def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


@attrs.frozen(kw_only=True)
class Blob:
    """An object of `size` bytes: the random block of `seed`, repeated."""

    size: int
    seed: int = 1
    etag: str | None = '"v1"'
    last_modified: str | None = None
    block: bytes = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: _block(self.seed), takes_self=True),
    )

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        """The bytes [start, end) as views into the block, at most one block each."""
        view = memoryview(self.block)
        while start < end:
            offset = start % BLOCK_SIZE
            n = min(BLOCK_SIZE - offset, end - start)
            yield view[offset : offset + n]
            start += n

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.pieces(start, self.size if end is None else end))

    def sha256(self) -> str:
        h = hashlib.sha256()
        for piece in self.pieces(0, self.size):
            h.update(piece)
        return h.hexdigest()


@attrs.frozen(kw_only=True)
class Reply:
    """How to answer one request (the default, or one step of a plan)."""

    status: int | None = None
    """Answer this status with a short body instead of the object."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers (Retry-After, Location, ...)."""
    blob: Blob | None = None
    """Serve this object instead of the server's current one."""
    ranges: bool = True
    """Honour Range / If-Range; False answers 200 with the whole object."""
    drop_after: int | None = None
    """Close the connection after this many body bytes."""
    stall_after: int | None = None
    """Send nothing more after this many body bytes, until the client gives up (at most 10 s)."""
    rate: int | None = None
    """Trickle the body at this many bytes per second."""
    chunked: bool = False
    """Transfer-Encoding: chunked instead of Content-Length."""
    range_shift: int = 0
    """Start a 206 this many bytes after the requested offset (a broken server)."""
    range_cap: int | None = None
    """Send at most this many bytes in a 206 (a server may send less than asked for)."""
    if_range: bool = True
    """Honour If-Range; False sends a 206 even when the validator differs (a broken server)."""


@attrs.frozen(kw_only=True)
class Seen:
    """One request as the server received it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    status: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]
    ) -> None:
        if isinstance(sys.exception(), OSError):
            return  # a client that went away (the driver under test closes early on purpose)
        super().handle_error(request, client_address)


class ScriptedServer(_QuietServer):
    """Serves `blob` at any path; `plan()` scripts the next requests one by one."""

    def __init__(self, blob: Blob, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.blob = blob
        self.default = Reply()
        self._plan: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._served = 0

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def url(self, path: str = "/firmware.bin", query: str = "X-Amz-Signature=s3cr3t") -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}{path}" + (f"?{query}" if query else "")

    def plan(self, *replies: Reply) -> None:
        with self._lock:
            self._plan.extend(replies)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._plan.popleft() if self._plan else self.default

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def count(self, n: int) -> None:
        with self._lock:
            self._served += n

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    @property
    def bytes_served(self) -> int:
        """Body bytes handed to the kernel for sending, over all requests."""
        with self._lock:
            return self._served


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        reply = self.server.next_reply()
        blob = reply.blob or self.server.blob
        if reply.status is not None:
            self._answer_status(reply)
            return
        start, status = 0, 200
        wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        validators = {v for v in (blob.etag, blob.last_modified) if v is not None}
        fresh = if_range is None or if_range in validators or not reply.if_range
        if wanted and reply.ranges and fresh:
            start, status = int(wanted.group(1)), 206
            if start >= blob.size:
                self._record(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{blob.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start += reply.range_shift
        self._record(status)
        self.send_response(status)
        if blob.etag is not None:
            self.send_header("ETag", blob.etag)
        if blob.last_modified is not None:
            self.send_header("Last-Modified", blob.last_modified)
        if reply.ranges:
            self.send_header("Accept-Ranges", "bytes")
        end = blob.size
        if status == 206 and reply.range_cap is not None:
            end = min(end, start + reply.range_cap)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(end - start))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        try:
            self._send_body(blob, start, end, reply)
        except OSError:
            self.close_connection = True  # the client went away: fine for a test server

    def _send_body(self, blob: Blob, start: int, end: int, reply: Reply) -> None:
        complete = end
        cut = reply.drop_after if reply.drop_after is not None else reply.stall_after
        if cut is not None:
            end = min(end, start + cut)
        step = None if reply.rate is None else max(1, reply.rate // 20)
        for piece in blob.pieces(start, end):
            while piece:
                part = piece if step is None else piece[:step]
                self._write(part, reply.chunked)
                piece = piece[len(part) :]
                if reply.rate is not None:
                    time.sleep(len(part) / reply.rate)
        if end == complete:
            if reply.chunked:
                self.wfile.write(b"0\r\n\r\n")
            return
        self.close_connection = True  # EOF before Content-Length bytes
        if reply.stall_after is not None:
            select.select([self.connection], [], [], 10.0)  # readable: the client closed
        else:
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, data: memoryview, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        if chunked:
            self.wfile.write(b"\r\n")
        self.server.count(len(data))

    def _answer_status(self, reply: Reply) -> None:
        assert reply.status is not None
        self._record(reply.status)
        body = f"scripted {reply.status}\n".encode()
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, status: int) -> None:
        self.server.record(
            Seen(
                method=self.command,
                target=self.path,
                headers=tuple(self.headers.items()),
                status=status,
            )
        )


# --- forward proxy ---------------------------------------------------------------------------

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class ForwardProxy(_QuietServer):
    """An HTTP proxy: absolute-URI GET (RFC 9112 section 3.2.2) and CONNECT tunnels."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardProxy
    hop_by_hop: ClassVar[frozenset[str]] = _HOP_BY_HOP

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self, status: int) -> None:
        self.server.record(
            Seen(
                method=self.command,
                target=self.path,
                headers=tuple(self.headers.items()),
                status=status,
            )
        )

    def do_GET(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            self._record(400)
            self.send_error(400, "absolute http URI expected")
            return
        self._record(200)
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.hop_by_hop}
        path = target.path + (f"?{target.query}" if target.query else "")
        try:
            upstream.request("GET", path, headers=headers)
            resp = upstream.getresponse()
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in self.hop_by_hop:
                    self.send_header(name, value)
            self.end_headers()
            while data := resp.read1(256 * 1024):
                self.wfile.write(data)
        except OSError:
            pass  # either side went away: a test double just stops
        finally:
            self.close_connection = True
            upstream.close()

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except (OSError, ValueError):
            self._record(502)
            self.send_error(502, "cannot reach the target")
            return
        self._record(200)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        _pump(self.connection, upstream)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until one side closes."""
    with contextlib.closing(b):
        sockets = [a, b]
        while True:
            readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for s in readable:
                try:
                    data = s.recv(256 * 1024)
                except OSError:
                    return
                if not data:
                    return
                other = b if s is a else a
                try:
                    other.sendall(data)
                except OSError:
                    return


@contextlib.contextmanager
def serving(server: http.server.ThreadingHTTPServer) -> Iterator[None]:
    """Run `server` in a thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
