"""The benchmark's HTTP origin: files from one folder, sent with sendfile(2), in a child process.

Owns nothing but serving bytes the way S3 does (Range, strong ETag, If-Range) as fast as
the kernel can, so that the clients are what is measured, not this server. It runs as its
own process (no GIL shared with the harness) and prints its port on stdout.

    python bench/upbench/origin.py ROOT
"""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path("/nonexistent")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        file = (self.root / name).resolve()
        if self.root not in file.parents or not file.is_file():
            self.send_error(404)
            return
        st = file.stat()
        size = st.st_size
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
        start, end, status = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if match and (if_range is None or if_range == etag):
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        try:
            with file.open("rb") as f:
                self.connection.sendfile(f, start, end - start + 1)
        except OSError:
            self.close_connection = True


def serve(root: Path) -> None:
    _Handler.root = root.resolve()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Origin:
    """The origin as a child process of the harness, stopped by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(root)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the origin server did not start (printed {line!r})")
        self.port = int(line)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
