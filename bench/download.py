"""Throughput of the download driver against curl, on loopback, in one run.

Owns a tiny origin server (run as a child process, so that it competes with neither client
for the GIL) serving random bytes generated on the fly, and the timing of both clients.
Prints numbers only; it asserts nothing.

    .venv/bin/python bench/download.py [--size MB] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from upparat.core.commands import StartDownload
from upparat.core.events import DownloadCompleted, DownloadFailed, Event
from upparat.core.model import DownloadId, JobId
from upparat.io.download import Downloader

BLOCK_SIZE = 4 * 1024 * 1024 + 7
SEED = 2024


def _block() -> bytes:
    return random.Random(SEED).randbytes(BLOCK_SIZE)


def _pieces(block: bytes, size: int) -> list[memoryview]:
    view = memoryview(block)
    full, rest = divmod(size, BLOCK_SIZE)
    return [view] * full + ([view[:rest]] if rest else [])


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    block = b""
    size = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("ETag", '"bench"')
        self.end_headers()
        try:
            for piece in _pieces(self.block, self.size):
                self.wfile.write(piece)
        except OSError:
            self.close_connection = True


def serve(size: int) -> None:
    """The child: serve `size` bytes on a free loopback port, print the port, run until killed."""
    _Handler.block = _block()
    _Handler.size = size
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _expected_sha256(size: int) -> str:
    h = hashlib.sha256()
    for piece in _pieces(_block(), size):
        h.update(piece)
    return h.hexdigest()


def _run_driver(url: str, size: int, sha256: str, folder: Path) -> float:
    events: queue.Queue[Event] = queue.Queue()
    downloader = Downloader(folder, events.put, allow_http=True)
    start = time.perf_counter()
    downloader.execute(
        StartDownload(
            download_id=DownloadId(1), job_id=JobId("bench"), url=url, sha256=sha256, size=size
        )
    )
    try:
        while True:
            event = events.get(timeout=600)
            if isinstance(event, DownloadCompleted):
                return time.perf_counter() - start
            if isinstance(event, DownloadFailed):
                raise SystemExit(f"driver failed: {event.failure.value}: {event.message}")
    finally:
        downloader.close()


def _run_curl(url: str, output: str) -> float:
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed")
    start = time.perf_counter()
    subprocess.run([curl, "-s", "-f", "-o", output, url], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=500.0, help="MB (10^6 bytes) to serve")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (4 MB) to check it works")
    parser.add_argument(
        "--dir", type=Path, default=None, help="download folder (default: a temp dir)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    size = int((4.0 if args.smoke else args.size) * 1_000_000)
    repeat = 1 if args.smoke else args.repeat
    sha256 = _expected_sha256(size)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(size)], stdout=subprocess.PIPE, text=True
    )
    driver: list[float] = []
    curl_null: list[float] = []
    curl_file: list[float] = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        url = f"http://127.0.0.1:{port}/firmware.bin?X-Amz-Signature=bench"
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            folder = Path(tmp) / "downloads"
            for _ in range(repeat):
                curl_null.append(_run_curl(url, "/dev/null"))
                driver.append(_run_driver(url, size, sha256, folder))
                shutil.rmtree(folder)
                curl_file.append(_run_curl(url, str(Path(tmp) / "curl.bin")))
                Path(tmp, "curl.bin").unlink()
    finally:
        child.kill()
        child.wait()
    mb = size / 1_000_000

    def line(name: str, times: list[float], what: str) -> str:
        best, median = min(times), statistics.median(times)
        return f"{name:<22}{mb / best:8.1f} MB/s best, {mb / median:8.1f} median  ({what})"

    print(
        f"{mb:.1f} MB over loopback, {repeat} run(s) each, folder {args.dir or tempfile.gettempdir()}"
    )
    print(line("driver", driver, "sha256 verified, written, fsynced"))
    print(line("curl -o /dev/null", curl_null, "no hash, no disk"))
    print(line("curl -o file", curl_file, "written, no hash, no fsync"))
    print(f"driver / curl -o /dev/null   {min(curl_null) / min(driver):5.2f} (best vs best)")
    print(f"driver / curl -o file        {min(curl_file) / min(driver):5.2f} (best vs best)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
