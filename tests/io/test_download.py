"""The download driver against a real HTTP server (and proxy) on loopback.

Each test scripts the server (tests/io/httpserver.py), runs one or two downloads and asserts
what can be observed: events, files on disk, the requests and bytes the server saw.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import upparat.io.download as download_module
from tests.io.httpserver import Blob, ForwardProxy, Reply, ScriptedServer, serving
from tests.support.keys import SigningKey, make_key
from upparat.core.commands import CancelDownload, DiscardDownload, StartDownload
from upparat.core.events import (
    DownloadCompleted,
    DownloadFailed,
    DownloadInterrupted,
    DownloadProgressed,
    Event,
)
from upparat.core.model import DownloadFailure, DownloadId, JobId
from upparat.io.download import Downloader, redact_url
from upparat.signing import load_trusted_keys

SECRET = "s3cr3t"
"""The signature in every test URL's query string: must never reach a log line or event."""
CHUNK = 64 * 1024
SIZE = 2_500_000
JOB = JobId("job-1")

DownloadEvent = DownloadProgressed | DownloadInterrupted | DownloadCompleted | DownloadFailed
DownloadCommand = StartDownload | CancelDownload | DiscardDownload
E = TypeVar("E", bound=DownloadEvent)


class Recorder:
    """The `on_event` callback: keeps every event and lets a test wait for the last one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[Event] = []
        self.times: list[float] = []
        self.hook: Callable[[Event], None] | None = None

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self.times.append(time.monotonic())
            self._cond.notify_all()
        if self.hook is not None:
            self.hook(event)

    def of(self, kind: type[E], download_id: int = 1) -> list[E]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind) and e.download_id == download_id]

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), f"timed out; events: {self.events}"

    def end(
        self, download_id: int = 1, timeout: float = 20.0
    ) -> DownloadCompleted | DownloadFailed:
        ends: list[DownloadCompleted | DownloadFailed] = []

        def ended() -> bool:
            ends[:] = [
                e
                for e in self.events
                if isinstance(e, DownloadCompleted | DownloadFailed)
                and e.download_id == download_id
            ]
            return bool(ends)

        self.wait(ended, timeout)
        assert len(ends) == 1, ends
        return ends[0]

    def completed(self, download_id: int = 1) -> DownloadCompleted:
        end = self.end(download_id)
        assert isinstance(end, DownloadCompleted), end
        return end

    def failed(self, download_id: int = 1) -> DownloadFailed:
        end = self.end(download_id)
        assert isinstance(end, DownloadFailed), end
        return end


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="upparat.download")
    yield
    assert SECRET not in caplog.text


@pytest.fixture
def blob() -> Blob:
    return Blob(size=SIZE)


@pytest.fixture
def server(blob: Blob) -> Iterator[ScriptedServer]:
    srv = ScriptedServer(blob)
    with serving(srv):
        yield srv


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    for event in rec.events:
        assert SECRET not in repr(event)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


class Driven(Downloader):
    """A Downloader plus what the core does with `DownloadInterrupted`: the same
    `StartDownload` again after `redial` seconds (None: never). Each attempt is the
    driver's own (one request and its redirects); the resume is the next attempt's."""

    def __init__(
        self, location: Path, recorder: Recorder, *, redial: float | None, **options: Any
    ) -> None:
        self._recorder = recorder
        self._redial = redial
        self._starts: dict[DownloadId, StartDownload] = {}
        self._timers: list[threading.Timer] = []
        super().__init__(location, self._on, **options)

    def execute(self, command: DownloadCommand) -> None:
        if isinstance(command, StartDownload):
            self._starts[command.download_id] = command
        elif isinstance(command, CancelDownload):
            self._starts.pop(command.download_id, None)
        super().execute(command)

    def _on(self, event: Event) -> None:
        self._recorder(event)
        if self._redial is not None and isinstance(event, DownloadInterrupted):
            command = self._starts.get(event.download_id)
            if command is not None:
                timer = threading.Timer(self._redial, self._again, args=(command,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _again(self, command: StartDownload) -> None:
        if self._starts.get(command.download_id) is command:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                super().execute(command)

    def close(self) -> None:
        self._redial = None
        for timer in self._timers:
            timer.cancel()
        super().close()


Make = Callable[..., Downloader]


@pytest.fixture
def make(folder: Path, recorder: Recorder) -> Iterator[Make]:
    """A Downloader with test-sized timeouts whose interrupted attempts are started again
    after `redial` seconds (0.01; None: never), as the core does; closed after the test."""
    made: list[Downloader] = []

    def factory(*, redial: float | None = 0.01, **kwargs: Any) -> Downloader:
        options: dict[str, Any] = {
            "allow_http": True,
            "chunk_size": CHUNK,
            "connect_timeout": 5.0,
            "read_timeout": 5.0,
        }
        options.update(kwargs)
        location = options.pop("download_location", folder)
        downloader = Driven(location, recorder, redial=redial, **options)
        made.append(downloader)
        return downloader

    yield factory
    for downloader in made:
        downloader.close()


def start(
    downloader: Downloader,
    url: str,
    *,
    download_id: int = 1,
    job_id: str = JOB,
    sha256: str | None = None,
    size: int | None = None,
    signature: bytes | None = None,
) -> None:
    downloader.execute(
        StartDownload(
            download_id=DownloadId(download_id),
            job_id=JobId(job_id),
            url=url,
            sha256=sha256,
            size=size,
            signature=signature,
        )
    )


def sidecar(folder: Path, job_id: str = JOB) -> Path:
    return folder / f"{job_id}.meta.json"


def _eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- the normal case ------------------------------------------------------------------------


def test_download_is_verified_and_reported(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    done = recorder.completed()
    assert done == DownloadCompleted(
        download_id=DownloadId(1), path=str(folder / JOB), size=blob.size, sha256=blob.sha256()
    )
    assert (folder / JOB).read_bytes() == blob.read()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / JOB).stat().st_mode) == 0o600
    progress = recorder.of(DownloadProgressed)
    assert progress[-1].bytes_done == blob.size
    assert [p.bytes_done for p in progress] == sorted(p.bytes_done for p in progress)
    assert [r.header("Range") for r in server.requests] == [None]
    assert server.bytes_served == blob.size


def test_without_document_hash_or_size_reports_what_it_got(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    start(make(), server.url())

    done = recorder.completed()
    assert (done.size, done.sha256) == (blob.size, blob.sha256())


def test_a_chunked_response_is_read_to_its_end(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.default = Reply(chunked=True)
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()


def settle(downloader: Downloader) -> None:
    """After `DownloadCompleted` the transfer thread still syncs the file and rewrites the
    sidecar (through `<job>.meta.json.tmp`); close() stops that and waits for it, so a
    listing of the folder after it is the same every run (CI once saw the .tmp)."""
    downloader.close()


def test_artifacts_of_earlier_jobs_are_removed_but_nothing_else(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path, tmp_path: Path
) -> None:
    folder.mkdir()
    (folder / "old-job").write_bytes(b"old firmware")
    (folder / "old-job.meta.json").write_text("{}")
    (folder / "keep-dir").mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (folder / "link").symlink_to(outside)

    downloader = make()
    start(downloader, server.url())
    recorder.completed()
    settle(downloader)

    assert sorted(p.name for p in folder.iterdir()) == [
        JOB,
        f"{JOB}.meta.json",
        "keep-dir",
        "link",
    ]
    assert outside.read_text() == "not ours"


def test_discard_download_removes_file_and_sidecar(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    downloader = make()
    start(downloader, server.url())
    recorder.completed()
    assert (folder / JOB).exists()
    assert sidecar(folder).exists()

    downloader.execute(DiscardDownload(job_id=JOB))

    assert list(folder.iterdir()) == []


# --- resume -----------------------------------------------------------------------------------


def test_resume_after_a_dropped_connection(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(drop_after=700_001))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    first, second = server.requests
    assert (first.status, second.status) == (200, 206)
    assert second.header("Range") == "bytes=700001-"
    assert second.header("If-Range") == '"v1"'
    assert blob.size <= server.bytes_served <= blob.size + CHUNK
    (retry,) = recorder.of(DownloadInterrupted)
    assert retry.bytes_done == 700_001
    assert f"connection closed after 700001 of {blob.size} bytes" in retry.reason


def test_each_attempt_reports_the_bytes_on_disk(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    # What the core's give-up rule counts on: bytes_done tells an attempt that got new
    # bytes from one that did not (tests/core/test_download_retries.py).
    server.plan(Reply(status=500), Reply(drop_after=100_000), Reply(status=500), Reply())
    start(make(), server.url(), sha256=blob.sha256())

    recorder.completed()
    assert [r.bytes_done for r in recorder.of(DownloadInterrupted)] == [0, 100_000, 100_000]


def test_a_server_that_ignores_range_makes_it_start_over(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(ranges=False)
    server.plan(Reply(ranges=False, drop_after=500_000))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    assert [(r.status, r.header("Range")) for r in server.requests] == [
        (200, None),
        (200, "bytes=500000-"),
    ]
    assert server.bytes_served == 500_000 + blob.size
    assert (folder / JOB).read_bytes() == blob.read()


def test_a_changed_object_is_never_spliced_onto_the_old_prefix(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    old = Blob(size=SIZE, seed=1, etag='"v1"')
    new = Blob(size=SIZE, seed=2, etag='"v2"')
    server.blob = new
    server.plan(Reply(blob=old, drop_after=600_000))
    start(make(), server.url(), sha256=new.sha256(), size=new.size)

    assert recorder.completed().sha256 == new.sha256()
    second = server.requests[1]
    assert (second.header("If-Range"), second.status) == ('"v1"', 200)
    assert (folder / JOB).read_bytes() == new.read()


def test_a_server_that_ignores_if_range_is_caught_by_the_etag(
    make: Make, server: ScriptedServer, recorder: Recorder
) -> None:
    old = Blob(size=SIZE, seed=1, etag='"v1"')
    new = Blob(size=SIZE, seed=2, etag='"v2"')
    server.blob = new
    server.plan(Reply(blob=old, drop_after=600_000), Reply(if_range=False))
    start(make(), server.url(), sha256=new.sha256(), size=new.size)

    assert recorder.completed().sha256 == new.sha256()
    assert [r.status for r in server.requests] == [200, 206, 200]
    assert any("object changed" in r.reason for r in recorder.of(DownloadInterrupted))


@pytest.mark.parametrize("with_sha256", [True, False])
def test_without_validators_only_a_known_sha256_allows_a_resume(
    make: Make, server: ScriptedServer, recorder: Recorder, with_sha256: bool
) -> None:
    server.blob = Blob(size=SIZE, etag=None, last_modified=None)
    server.plan(Reply(drop_after=500_000))
    start(make(), server.url(), sha256=server.blob.sha256() if with_sha256 else None)

    assert recorder.completed().sha256 == server.blob.sha256()
    second = server.requests[1]
    assert second.header("If-Range") is None
    assert second.header("Range") == ("bytes=500000-" if with_sha256 else None)


def test_last_modified_is_the_validator_without_an_etag(
    make: Make, server: ScriptedServer, recorder: Recorder
) -> None:
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.blob = Blob(size=SIZE, etag=None, last_modified=stamp)
    server.plan(Reply(drop_after=500_000))
    start(make(), server.url())

    assert recorder.completed().sha256 == server.blob.sha256()
    second = server.requests[1]
    assert (second.header("Range"), second.header("If-Range")) == ("bytes=500000-", stamp)


def test_a_206_shorter_than_asked_for_is_continued(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(drop_after=100_000), Reply(range_cap=500_000))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    assert [(r.status, r.header("Range")) for r in server.requests] == [
        (200, None),
        (206, "bytes=100000-"),
        (206, "bytes=600000-"),
    ]
    assert server.bytes_served == blob.size


def test_a_local_file_longer_than_the_object_starts_over(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    folder.mkdir()
    (folder / JOB).write_bytes(b"x" * (blob.size + 10))
    # Written in this boot: every byte counts (only the daemon stopped).
    boot = download_module.current_boot_id()
    sidecar(folder).write_text(
        json.dumps({"path": "/firmware.bin", "etag": '"v1"', "synced": 0, "boot_id": boot})
    )
    start(make(), server.url())

    assert recorder.completed().sha256 == blob.sha256()
    assert [(r.status, r.header("Range")) for r in server.requests] == [
        (416, f"bytes={blob.size + 10}-"),
        (200, None),
    ]
    (retry,) = recorder.of(DownloadInterrupted)
    assert f"the server holds {blob.size} bytes" in retry.reason


def _interrupted(folder: Path, blob: Blob, *, good: int, torn: int, boot_id: str | None) -> None:
    """A partial file as a power cut may leave it: `good` bytes of the object, synced,
    then `torn` bytes of garbage the file system kept."""
    folder.mkdir()
    (folder / JOB).write_bytes(blob.read()[:good] + b"\0garbage" * (torn // 8))
    sidecar(folder).write_text(
        json.dumps({"path": "/firmware.bin", "etag": blob.etag, "synced": good, "boot_id": boot_id})
    )


def test_after_a_reboot_only_the_synced_bytes_are_resumed(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    """A torn tail after a power cut must not end the job download_verification_failed."""
    _interrupted(folder, blob, good=1_000_000, torn=80_000, boot_id="an-earlier-boot")
    start(make(boot_id=lambda: "this-boot"), server.url(), sha256=blob.sha256())

    assert recorder.completed().sha256 == blob.sha256()
    assert [r.header("Range") for r in server.requests] == ["bytes=1000000-"]


def test_in_the_same_boot_every_byte_on_disk_is_resumed(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    """Only the daemon died (kill -9): the kernel kept all it was given, synced or not."""
    good = 1_000_000
    folder.mkdir()
    (folder / JOB).write_bytes(blob.read()[:good])
    sidecar(folder).write_text(
        json.dumps({"path": "/firmware.bin", "etag": blob.etag, "synced": 0, "boot_id": "b1"})
    )
    start(make(boot_id=lambda: "b1"), server.url(), sha256=blob.sha256())

    assert recorder.completed().sha256 == blob.sha256()
    assert [r.header("Range") for r in server.requests] == [f"bytes={good}-"]


def test_the_sidecar_records_each_durable_offset(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(download_module, "FSYNC_INTERVAL", 256 * 1024)
    monkeypatch.setattr(download_module, "SYNC_PERIOD", 0.0)
    seen: list[int] = []
    durable = [0]
    real_replace, real_fsync, real_fdatasync = os.replace, os.fsync, os.fdatasync

    def covered(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            size = os.fstat(fd).st_size  # what this call makes durable, at least
            real(fd)
            if os.fstat(fd).st_ino == (folder / JOB).stat().st_ino:
                durable.append(max(durable[-1], size))

        return sync

    def replace(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if str(dst).endswith(".meta.json"):
            record = json.loads(Path(dst).read_text())
            assert record["boot_id"] == "b7"
            # Only what a sync had made durable when it returned (the sync and this
            # update run in a helper thread while the transfer goes on).
            assert record["synced"] <= durable[-1]
            seen.append(record["synced"])

    monkeypatch.setattr(os, "fsync", covered(real_fsync))
    monkeypatch.setattr(os, "fdatasync", covered(real_fdatasync))
    monkeypatch.setattr(os, "replace", replace)
    start(make(boot_id=lambda: "b7"), server.url(), sha256=blob.sha256())
    recorder.completed()
    _eventually(lambda: seen[-1] == blob.size, "the sidecar to record the final fsync")

    assert seen[0] == 0
    assert seen == sorted(seen)
    assert len(set(seen)) >= 3  # grows as the file is synced


def test_only_a_sidecar_that_says_bytes_are_synced_waits_for_the_disk(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first sidecar (synced 0) is lost in a power cut at no cost; every later one is
    # fsynced before it replaces the last, and its folder after.
    monkeypatch.setattr(download_module, "FSYNC_INTERVAL", 256 * 1024)
    monkeypatch.setattr(download_module, "SYNC_PERIOD", 0.0)
    events: list[tuple[str, object]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if str(dst).endswith(".meta.json"):
            events.append(("sidecar", json.loads(Path(dst).read_text())["synced"]))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    start(make(boot_id=lambda: "b7"), server.url(), sha256=blob.sha256())
    recorder.completed()

    tmp = str(folder / (JOB + ".meta.json.tmp"))
    sidecars = [i for i, (kind, _) in enumerate(events) if kind == "sidecar"]
    assert events[sidecars[0]] == ("sidecar", 0)
    assert ("fsync", tmp) not in events[: sidecars[0]]
    assert len(sidecars) >= 3
    for before, at in itertools.pairwise(sidecars):
        assert events[at][1] != 0
        assert ("fsync", tmp) in events[before + 1 : at]
    for at in sidecars[1:]:
        assert ("fsync", str(folder)) in events[at + 1 :]


def test_a_206_at_the_wrong_offset_makes_it_start_over(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(drop_after=300_000), Reply(range_shift=5))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    assert [(r.status, r.header("Range")) for r in server.requests] == [
        (200, None),
        (206, "bytes=300000-"),
        (200, None),
    ]


def test_a_partial_file_of_another_object_path_is_not_resumed(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(drop_after=300_000), Reply(status=403))
    downloader = make()
    start(downloader, server.url("/a.bin"))
    assert recorder.failed().failure is DownloadFailure.URL_EXPIRED

    start(downloader, server.url("/b.bin"), download_id=2, sha256=blob.sha256())

    assert recorder.completed(2).sha256 == blob.sha256()
    assert server.requests[-1].header("Range") is None


def test_a_complete_file_is_verified_again_without_downloading(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    downloader = make()
    start(downloader, server.url(), sha256=blob.sha256(), size=blob.size)
    recorder.completed()

    start(downloader, server.url(), download_id=2, sha256=blob.sha256(), size=blob.size)

    assert recorder.completed(2).sha256 == blob.sha256()
    last = server.requests[-1]
    assert (last.status, last.header("Range")) == (416, f"bytes={blob.size}-")
    assert server.bytes_served == blob.size


# --- verification -----------------------------------------------------------------------------


def test_sha256_mismatch_fails_and_removes_the_file(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    wrong = "0" * 64
    start(make(), server.url(), sha256=wrong, size=blob.size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.VERIFICATION_FAILED
    assert wrong in failed.message
    assert blob.sha256() in failed.message
    assert list(folder.iterdir()) == []


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return make_key(tmp_path / "keys", "release")


def signature_of(blob: Blob, key: SigningKey, tmp_path: Path) -> bytes:
    """What `openssl dgst -sha256 -sign` makes of the blob's bytes."""
    copy = tmp_path / "blob.bin"
    copy.write_bytes(blob.read())
    return key.sign(copy)


def test_a_signature_is_checked_on_the_digest_of_the_download(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    key: SigningKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = load_trusted_keys(key.public)

    start(make(trusted_keys=keys), server.url(), signature=signature_of(blob, key, tmp_path))

    assert recorder.completed().sha256 == blob.sha256()
    assert "signature verified with" in caplog.text
    assert server.bytes_served == blob.size


def test_a_signature_of_another_key_fails_and_removes_the_file(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    key: SigningKey,
    folder: Path,
    tmp_path: Path,
) -> None:
    other = make_key(tmp_path / "other", "other")
    keys = load_trusted_keys(key.public)

    start(make(trusted_keys=keys), server.url(), signature=signature_of(blob, other, tmp_path))

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.VERIFICATION_FAILED
    assert failed.message.startswith("signature: does not verify")
    assert "127.0.0.1" not in failed.message  # names the signature, never the URL
    assert list(folder.iterdir()) == []


def test_a_complete_file_found_again_is_checked_against_the_signature_too(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    key: SigningKey,
    folder: Path,
    tmp_path: Path,
) -> None:
    downloader = make(trusted_keys=load_trusted_keys(key.public))
    start(downloader, server.url(), sha256=blob.sha256(), size=blob.size)
    recorder.completed()

    garbage = b"\x30\x06\x02\x01\x01\x02\x01\x01"
    start(downloader, server.url(), download_id=2, sha256=blob.sha256(), signature=garbage)

    assert recorder.failed(2).message.startswith("signature: ")
    assert list(folder.iterdir()) == []


def test_without_trusted_keys_a_signature_is_passed_on_unchecked(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    start(make(), server.url(), signature=b"\x30\x06\x02\x01\x01\x02\x01\x01")

    assert recorder.completed().sha256 == blob.sha256()


def test_a_size_contradicting_content_length_fails_before_the_body(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    start(make(), server.url(), size=blob.size + 1)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.VERIFICATION_FAILED
    assert str(blob.size + 1) in failed.message
    assert str(blob.size) in failed.message
    assert list(folder.iterdir()) == []
    assert len(server.requests) == 1


def test_a_short_body_of_unknown_length_fails_verification(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(chunked=True)
    start(make(), server.url(), size=blob.size + 1)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.VERIFICATION_FAILED
    assert f"expected {blob.size + 1} bytes, got {blob.size}" in failed.message
    assert list(folder.iterdir()) == []


def test_a_long_body_of_unknown_length_is_cut_short(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(chunked=True)
    start(make(), server.url(), size=1000)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.VERIFICATION_FAILED
    assert "expected 1000 bytes, the server sent more" in failed.message
    assert list(folder.iterdir()) == []


# --- HTTP errors ------------------------------------------------------------------------------


def test_403_is_an_expired_url_and_keeps_the_partial_file_for_a_resume(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.plan(Reply(drop_after=400_000), Reply(status=403))
    downloader = make()
    start(downloader, server.url(), sha256=blob.sha256(), size=blob.size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.URL_EXPIRED
    assert "403" in failed.message
    assert (folder / JOB).stat().st_size == 400_000
    assert sidecar(folder).exists()

    start(downloader, server.url(), download_id=2, sha256=blob.sha256(), size=blob.size)

    assert recorder.completed(2).sha256 == blob.sha256()
    assert server.requests[-1].header("Range") == "bytes=400000-"
    assert blob.size <= server.bytes_served <= blob.size + CHUNK


def test_404_fails_at_once(make: Make, server: ScriptedServer, recorder: Recorder) -> None:
    server.default = Reply(status=404)
    start(make(), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.HTTP_ERROR
    assert "HTTP 404" in failed.message
    assert len(server.requests) == 1
    assert recorder.of(DownloadInterrupted) == []


def test_three_500s_then_success(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(status=500), Reply(status=500), Reply(status=500))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    retries = recorder.of(DownloadInterrupted)
    assert [r.reason for r in retries] == ["HTTP 500 Internal Server Error"] * 3
    assert all(r.retry_after is None for r in retries)
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param("1", (1.0, 1.0), id="seconds"),
        pytest.param("3600", (3600.0, 3600.0), id="seconds-long"),
        pytest.param("in 3600 s", (3590.0, 3600.0), id="http-date-long"),
        pytest.param("in 2 s", (0.5, 2.0), id="http-date"),
    ],
)
def test_429_reports_retry_after(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    retry_after: str,
    expected: tuple[float, float],
) -> None:
    # The driver passes the hint on; how long to wait (within the cap) is the core's.
    if retry_after.startswith("in "):  # an HTTP date, made now rather than at collection
        seconds = float(retry_after.split()[1])
        retry_after = email.utils.formatdate(time.time() + seconds, usegmt=True)
    server.plan(Reply(status=429, headers=(("Retry-After", retry_after),)))
    start(make(), server.url(), sha256=blob.sha256())

    recorder.completed()
    (retry,) = recorder.of(DownloadInterrupted)
    assert retry.reason == "HTTP 429 Too Many Requests"
    low, high = expected
    assert retry.retry_after is not None
    assert low <= retry.retry_after <= high


def test_connection_refused_is_retried_while_the_download_is_active(
    make: Make, recorder: Recorder, server: ScriptedServer
) -> None:
    port = server.port
    server.shutdown()
    server.server_close()
    downloader = make()
    start(downloader, f"http://127.0.0.1:{port}/firmware.bin?X-Amz-Signature={SECRET}")

    recorder.wait(lambda: len(recorder.of(DownloadInterrupted)) >= 5)
    downloader.execute(CancelDownload(download_id=DownloadId(1)))

    retries = recorder.of(DownloadInterrupted)
    assert all("ConnectionRefusedError" in r.reason for r in retries)
    assert all(r.bytes_done == 0 for r in retries)


def test_redirects_are_followed(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(
        Reply(status=307, headers=(("Location", "/elsewhere/firmware.bin?X-Amz-Signature=x"),))
    )
    start(make(), server.url(), sha256=blob.sha256())

    recorder.completed()
    assert [r.target for r in server.requests] == [
        f"/firmware.bin?X-Amz-Signature={SECRET}",
        "/elsewhere/firmware.bin?X-Amz-Signature=x",
    ]


def test_too_many_redirects_fail(make: Make, server: ScriptedServer, recorder: Recorder) -> None:
    server.default = Reply(status=302, headers=(("Location", "/again"),))
    start(make(), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.HTTP_ERROR
    assert "more than 5 redirects" in failed.message
    assert len(server.requests) == 6


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://h/"])
def test_a_redirect_to_another_scheme_is_refused(
    make: Make, server: ScriptedServer, recorder: Recorder, location: str
) -> None:
    server.plan(Reply(status=302, headers=(("Location", location),)))
    start(make(), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.BAD_URL
    assert "redirect" in failed.message
    assert len(server.requests) == 1


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/firmware.bin",
        "data:text/plain,firmware",
        "javascript:alert(1)",
        "https://user:password@127.0.0.1/firmware.bin",
        "https://user@127.0.0.1/firmware.bin",
        "https://[::1/firmware.bin",
        "https://127.0.0.1:99999/firmware.bin",
        "https:///firmware.bin",
        "https://127.0.0.1/firm ware.bin",
        "https://127.0.0.1/firmware.bin\r\nX-Injected: 1",
        "https://hôst.example/firmware.bin",
        "//127.0.0.1/firmware.bin",
        "",
    ],
)
def test_bad_urls_are_refused_before_any_io(
    make: Make, recorder: Recorder, folder: Path, url: str
) -> None:
    start(make(allow_http=False), url)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.BAD_URL
    assert not folder.exists()


def test_http_is_refused_unless_allowed(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    start(make(allow_http=False), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.BAD_URL
    assert "expected https:" in failed.message
    assert server.requests == []
    assert not folder.exists()


def test_a_job_id_unfit_for_a_file_name_is_refused(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    start(make(), server.url(), job_id="../escape")

    assert recorder.failed().failure is DownloadFailure.IO_ERROR
    assert server.requests == []
    assert not folder.exists()


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "https://bucket.s3.amazonaws.com/fw/v2.bin?X-Amz-Signature=abc&X-Amz-Credential=k",
            "https://bucket.s3.amazonaws.com/fw/v2.bin",
        ),
        ("https://user:pw@host:8443/a/b?q=1#frag", "https://host:8443/a/b"),
        ("http://[::1]:8080/x?y", "http://[::1]:8080/x"),
        ("HTTPS://Host/Path", "https://host/Path"),
        ("https://[::1/x?secret", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# --- speed, cancel, disk ----------------------------------------------------------------------


def test_a_slow_transfer_reconnects_and_resumes(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(rate=20_000))
    start(make(min_speed=100_000, min_speed_time=0.5), server.url(), sha256=blob.sha256())

    assert recorder.completed().sha256 == blob.sha256()
    (retry,) = recorder.of(DownloadInterrupted)
    assert "slower than 100000 B/s for 0.5 s" in retry.reason
    _, second = server.requests
    resumed_at = int((second.header("Range") or "bytes=0-")[len("bytes=") : -1])
    assert 0 < resumed_at < 100_000


def test_a_stalled_transfer_times_out_and_resumes(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    server.plan(Reply(stall_after=200_000))
    start(make(min_speed=0, read_timeout=0.3), server.url(), sha256=blob.sha256())

    assert recorder.completed().sha256 == blob.sha256()
    (retry,) = recorder.of(DownloadInterrupted)
    assert retry.reason.startswith("timed out")
    assert server.requests[1].header("Range") == "bytes=200000-"


def test_max_speed_caps_the_bandwidth(
    make: Make, server: ScriptedServer, recorder: Recorder
) -> None:
    server.blob = Blob(size=600_000)
    began = time.monotonic()
    start(make(max_speed=1_000_000, min_speed=0), server.url())

    recorder.completed()
    # A lower bound cannot flake: 600 kB at 1 MB/s cannot take less than ~0.6 s.
    assert time.monotonic() - began >= 0.5


@pytest.mark.parametrize("discard", [True, False])
def test_cancel_stops_a_blocked_transfer_at_once(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path, discard: bool
) -> None:
    # The server stalls: the driver sits in recv() with a 5 s timeout when the cancel comes.
    server.plan(Reply(stall_after=300_000))
    downloader = make(min_speed=0)
    start(downloader, server.url(), sha256=blob.sha256())
    deadline = time.monotonic() + 10
    while not (folder / JOB).exists() or (folder / JOB).stat().st_size < 300_000:
        assert time.monotonic() < deadline, "the first 300000 bytes never arrived"
        time.sleep(0.01)

    began = time.monotonic()
    downloader.execute(CancelDownload(download_id=DownloadId(1), discard=discard))
    assert time.monotonic() - began < 1.0

    seen = len(recorder.events)
    time.sleep(0.3)
    assert len(recorder.events) == seen
    assert not any(isinstance(e, DownloadCompleted | DownloadFailed) for e in recorder.events)
    if discard:
        assert list(folder.iterdir()) == []
    else:
        assert (folder / JOB).stat().st_size == 300_000
        start(downloader, server.url(), download_id=2, sha256=blob.sha256())
        assert recorder.completed(2).sha256 == blob.sha256()
        assert server.requests[-1].header("Range") == "bytes=300000-"


def test_the_download_threads_are_named_in_the_kernel(
    make: Make, server: ScriptedServer, blob: Blob, folder: Path
) -> None:
    # `top -H` shows which of them uses the CPU; the benchmark reads their time by name.
    server.plan(Reply(stall_after=300_000))
    downloader = make(min_speed=0)
    start(downloader, server.url(), download_id=7, sha256=blob.sha256())
    _eventually(
        lambda: (folder / JOB).exists() and (folder / JOB).stat().st_size >= 300_000,
        "the first 300000 bytes on disk",
    )
    names = {(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()}
    assert {"download-7", "download-hash", "download-write"} <= names
    downloader.execute(CancelDownload(download_id=DownloadId(7), discard=True))


def test_cancel_of_a_trickling_transfer(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(rate=400_000)
    downloader = make()
    start(downloader, server.url())
    recorder.wait(lambda: bool(recorder.of(DownloadProgressed)))

    began = time.monotonic()
    downloader.execute(CancelDownload(download_id=DownloadId(1)))
    assert time.monotonic() - began < 1.0
    assert list(folder.iterdir()) == []


def test_cancel_from_inside_on_event(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(rate=400_000)
    downloader = make()

    def cancel_on_progress(event: Event) -> None:
        if isinstance(event, DownloadProgressed):
            downloader.execute(CancelDownload(download_id=DownloadId(1)))

    recorder.hook = cancel_on_progress
    start(downloader, server.url())
    recorder.wait(lambda: bool(recorder.of(DownloadProgressed)))
    time.sleep(0.3)

    assert len(recorder.events) == 1
    assert list(folder.iterdir()) == []


def test_close_keeps_the_partial_file_and_refuses_new_work(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(rate=400_000)
    downloader = make()
    start(downloader, server.url())
    recorder.wait(lambda: bool(recorder.of(DownloadProgressed)))

    downloader.close()

    assert (folder / JOB).stat().st_size > 0
    assert sidecar(folder).exists()
    with pytest.raises(RuntimeError, match="after close"):
        start(downloader, server.url(), download_id=2)


class _Syncs:
    """Wraps os.fsync and os.fdatasync: each call as (name, inode, whether DownloadCompleted
    had been sent when it was made)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self._recorder = recorder
        monkeypatch.setattr(os, "fsync", self._wrap("fsync", os.fsync))
        monkeypatch.setattr(os, "fdatasync", self._wrap("fdatasync", os.fdatasync))

    def _wrap(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            done = any(isinstance(e, DownloadCompleted) for e in self._recorder.events)
            self.calls.append((name, os.fstat(fd).st_ino, done))
            real(fd)

        return sync

    def of(self, inode: int) -> list[tuple[str, bool]]:
        """The calls on one file, in order: (name, after DownloadCompleted)."""
        return [(name, done) for name, ino, done in self.calls if ino == inode]


def test_the_file_is_fsynced_every_few_mib_and_once_complete(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(download_module, "FSYNC_INTERVAL", 512 * 1024)
    monkeypatch.setattr(download_module, "SYNC_PERIOD", 0.0)
    syncs = _Syncs(monkeypatch, recorder)
    start(make(), server.url(), sha256=blob.sha256())
    recorder.completed()
    inode = (folder / JOB).stat().st_ino
    _eventually(lambda: ("fsync", inode, True) in syncs.calls, "the final fsync")

    ours = syncs.of(inode)
    # The last one after DownloadCompleted: Install does not wait for the disk, and the
    # sidecar says the whole file is durable only once it is (the test above).
    assert ours[-1] == ("fsync", True)
    assert ("fsync", False) not in ours
    # Synced in the background: an interval is skipped while the last sync still runs.
    assert 1 <= len([n for n, _ in ours if n == "fdatasync"]) <= blob.size // (512 * 1024)


def test_a_download_faster_than_the_sync_period_is_synced_once_at_the_end(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FSYNC_INTERVAL bytes alone start no fdatasync: SYNC_PERIOD must have passed too, so a
    # fast link is not slowed by a sync and a sidecar write every few MiB.
    monkeypatch.setattr(download_module, "FSYNC_INTERVAL", 64 * 1024)
    monkeypatch.setattr(download_module, "SYNC_PERIOD", 600.0)
    syncs = _Syncs(monkeypatch, recorder)
    start(make(), server.url(), sha256=blob.sha256())
    recorder.completed()
    inode = (folder / JOB).stat().st_ino
    _eventually(lambda: ("fsync", inode, True) in syncs.calls, "the final fsync")

    assert syncs.of(inode) == [("fsync", True)]  # the last sync of all, after DownloadCompleted


class _Writes:
    """Wraps the partial file's write(2): how many bytes went through O_DIRECT, and an
    optional refusal of the first direct write (EINVAL, as a file system may answer)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, refuse_direct: bool) -> None:
        self.direct = 0
        self.buffered = 0
        self.refused = 0
        self._refuse = refuse_direct
        real = download_module._write_some

        def write_some(fd: int, data: memoryview) -> int:
            direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
            if direct and self._refuse:
                self._refuse = False
                self.refused += 1
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            n = real(fd, data)
            if direct:
                self.direct += n
            else:
                self.buffered += n
            return n

        monkeypatch.setattr(download_module, "_write_some", write_some)


@pytest.mark.parametrize("chunk", [64 * 1024, 4096 * 3 + 1000])
@pytest.mark.parametrize("resumed_at", [None, 300_001])
def test_aligned_blocks_are_written_directly_and_the_file_holds_every_byte(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    resumed_at: int | None,
) -> None:
    # A resume at an odd offset, and buffers that are no multiple of a block: heads and
    # tails go through the page cache, the blocks between them directly, in order.
    writes = _Writes(monkeypatch, refuse_direct=False)
    if resumed_at is not None:
        server.plan(Reply(drop_after=resumed_at))
    start(make(chunk_size=chunk), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    assert (folder / JOB).read_bytes() == blob.read()
    assert writes.direct + writes.buffered == blob.size
    assert writes.direct >= blob.size // 2


def test_a_file_system_that_refuses_direct_writes_gets_them_through_the_page_cache(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writes = _Writes(monkeypatch, refuse_direct=True)
    with caplog.at_level(logging.INFO, logger="upparat.download"):
        start(make(), server.url(), sha256=blob.sha256(), size=blob.size)
        assert recorder.completed().sha256 == blob.sha256()

    assert (folder / JOB).read_bytes() == blob.read()
    assert writes.refused == 1
    assert (writes.direct, writes.buffered) == (0, blob.size)
    assert "direct writes refused" in caplog.text


def test_without_direct_io_at_all_the_download_is_the_same(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # UBIFS and JFFS2 refuse O_DIRECT at open.
    real_open = os.open

    def no_direct(path: str | Path, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    writes = _Writes(monkeypatch, refuse_direct=False)
    server.plan(Reply(drop_after=100_003))
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    assert recorder.completed().sha256 == blob.sha256()
    assert (folder / JOB).read_bytes() == blob.read()
    assert (writes.direct, writes.buffered) == (0, blob.size)


def test_bytes_received_before_a_stall_reach_the_file_while_it_lasts(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    # They wait in a buffer for more only while more keeps coming (HAND_ON_AFTER): a crash
    # during a long stall must not lose them.
    server.plan(Reply(stall_after=300_000))
    start(make(chunk_size=4 * 1024 * 1024, read_timeout=8.0), server.url(), size=blob.size)
    path = folder / JOB
    deadline = time.monotonic() + 4.0
    while not (path.exists() and path.stat().st_size == 300_000):
        assert time.monotonic() < deadline, "the bytes before the stall never reached the file"
        time.sleep(0.02)
    assert recorder.of(DownloadInterrupted) == []  # still stalled, not timed out


def test_a_disk_error_of_the_writer_ends_the_attempt_with_it(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writer is another thread: its error must still end this attempt, as an I/O
    # error of the disk (not of the network), and the transfer must not wait forever.
    real = download_module._write_some
    written = [0]

    def failing(fd: int, data: memoryview) -> int:
        if written[0] >= 500_000:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        n = real(fd, data)
        written[0] += n
        return n

    monkeypatch.setattr(download_module, "_write_some", failing)
    start(make(), server.url(), sha256=blob.sha256(), size=blob.size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.IO_ERROR
    assert f"cannot write {folder / JOB}" in failed.message
    assert recorder.of(DownloadInterrupted) == []


def test_an_interrupted_attempt_ends_and_nothing_retries_by_itself(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(drop_after=300_000)
    downloader = make(redial=None)  # no core: nobody starts the next attempt
    start(downloader, server.url(), sha256=blob.sha256(), size=blob.size)
    recorder.wait(lambda: bool(recorder.of(DownloadInterrupted)))
    time.sleep(0.5)

    assert len(server.requests) == 1
    assert [type(e) for e in recorder.events if not isinstance(e, DownloadProgressed)] == [
        DownloadInterrupted
    ]
    # The partial file and its sidecar stay for the next attempt.
    assert (folder / JOB).stat().st_size == 300_000
    assert sidecar(folder).exists()
    server.default = Reply()
    start(downloader, server.url(), download_id=2, sha256=blob.sha256(), size=blob.size)
    assert recorder.completed(2).sha256 == blob.sha256()
    assert server.requests[-1].header("Range") == "bytes=300000-"


def test_a_new_download_supersedes_the_running_one(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    server.plan(Reply(rate=200_000))
    downloader = make()
    start(downloader, server.url(), job_id="job-a")
    recorder.wait(lambda: bool(recorder.of(DownloadProgressed, 1)))

    start(downloader, server.url(), download_id=2, job_id="job-b", sha256=blob.sha256())

    assert recorder.completed(2).sha256 == blob.sha256()
    assert not any(
        isinstance(e, DownloadCompleted | DownloadFailed) and e.download_id == 1
        for e in recorder.events
    )
    settle(downloader)
    assert sorted(p.name for p in folder.iterdir()) == ["job-b", "job-b.meta.json"]


def _statvfs_with(free: int) -> Callable[[str], os.statvfs_result]:
    def statvfs(path: str) -> os.statvfs_result:
        real = os.statvfs(path)
        values = list(real)
        values[4] = free // real.f_frsize  # f_bavail
        return os.statvfs_result(values)

    return statvfs


def test_too_little_space_for_the_document_size_fails_before_the_request(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    start(make(statvfs=_statvfs_with(0)), server.url(), size=blob.size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert f"need {blob.size} more bytes" in failed.message
    assert "only 0 available" in failed.message
    assert server.requests == []


def test_too_little_space_for_the_content_length_fails_before_the_body(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    start(make(statvfs=_statvfs_with(0)), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert f"need {blob.size} more bytes" in failed.message
    assert len(server.requests) == 1


RESERVE = 1024 * 1024


def test_the_reserve_is_kept_free_when_the_size_is_known(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    # Room for the file, but not for the file and the reserve.
    roomy = _statvfs_with(blob.size + RESERVE // 2)
    start(make(statvfs=roomy, min_free_space=RESERVE), server.url(), size=blob.size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert f"min_free_space keeps {RESERVE} free" in failed.message
    assert server.requests == []


def test_a_chunked_download_without_a_size_stops_at_the_reserve(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, folder: Path
) -> None:
    """No size in the document, none from the server: the disk fills as the file grows."""
    server.default = Reply(chunked=True)
    free_at_start = RESERVE + SIZE // 2

    def shrinking(path: str) -> os.statvfs_result:
        part = folder / JOB
        written = part.stat().st_size if part.exists() else 0
        return _statvfs_with(max(0, free_at_start - written))(path)

    start(make(statvfs=shrinking, min_free_space=RESERVE), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert "of a file of unknown size" in failed.message
    assert f"min_free_space keeps {RESERVE} free" in failed.message
    assert list(folder.iterdir()) == []  # the partial file is gone
    stopped_after = int(failed.message.split("stopped after ")[1].split()[0])
    # It never ate into the reserve by more than the chunk in hand.
    assert stopped_after <= free_at_start - RESERVE + CHUNK


def test_a_chunked_download_stops_at_max_download_size(
    make: Make, server: ScriptedServer, recorder: Recorder, folder: Path
) -> None:
    server.default = Reply(chunked=True)
    start(make(max_download_size=SIZE // 3), server.url())

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert f"more than max_download_size ({SIZE // 3})" in failed.message
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("announced", ["document", "content-length"])
def test_a_file_announced_larger_than_max_download_size_is_not_fetched(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    folder: Path,
    announced: str,
) -> None:
    size = blob.size if announced == "document" else None
    start(make(max_download_size=blob.size - 1), server.url(), size=size)

    failed = recorder.failed()
    assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
    assert f"the file has {blob.size} bytes, more than max_download_size" in failed.message
    assert len(server.requests) == (0 if announced == "document" else 1)
    assert list(folder.iterdir()) == []  # not a byte of the body was written


@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: int) -> Iterator[bool]:
    """Mount a tmpfs of `size` bytes at `path`; yields False where mounting is not allowed."""
    path.mkdir()
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_full_disk_during_the_download_removes_the_partial_file(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _tiny_tmpfs(tmp_path / "tiny", 1024 * 1024) as mounted:
        location = tmp_path / "tiny" / "downloads"
        if not mounted:  # no CAP_SYS_ADMIN: a write that fails like a full disk does
            written = [0]
            real_write_some = download_module._write_some

            def write_some(fd: int, data: memoryview) -> int:
                if written[0] + len(data) > 1024 * 1024:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = real_write_some(fd, data)
                written[0] += n
                return n

            monkeypatch.setattr(download_module, "_write_some", write_some)
        # statvfs says there is room, so only the write itself can find the disk full.
        downloader = make(download_location=location, statvfs=_statvfs_with(10 * SIZE))
        start(downloader, server.url(), sha256=blob.sha256(), size=blob.size)

        failed = recorder.failed()
        downloader.close()  # its file is closed before the tmpfs is unmounted
        assert failed.failure is DownloadFailure.INSUFFICIENT_DISK_SPACE
        assert f"of {blob.size} bytes" in failed.message
        assert list(location.iterdir()) == []


# --- proxies ----------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    prx = ForwardProxy()
    with serving(prx):
        yield prx


def test_the_proxy_parameter_is_used_with_absolute_uris(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder, proxy: ForwardProxy
) -> None:
    start(make(proxy=proxy.url), server.url(), sha256=blob.sha256())

    recorder.completed()
    (seen,) = proxy.requests
    assert seen.target == server.url()
    assert [r.target for r in server.requests] == [f"/firmware.bin?X-Amz-Signature={SECRET}"]


def test_http_proxy_from_the_environment(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    start(make(), server.url(), sha256=blob.sha256())

    recorder.completed()
    assert [r.target for r in proxy.requests] == [server.url()]


def test_the_proxy_parameter_wins_over_the_environment(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    start(make(proxy=proxy.url), server.url(), sha256=blob.sha256())

    recorder.completed()
    assert len(proxy.requests) == 1
    assert recorder.of(DownloadInterrupted) == []


def test_no_proxy_bypasses_the_proxy(
    make: Make,
    server: ScriptedServer,
    blob: Blob,
    recorder: Recorder,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    start(make(), server.url(), sha256=blob.sha256())

    recorder.completed()
    assert proxy.requests == []
    assert len(server.requests) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` (its own CA)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("via_proxy", [False, True])
def test_https_directly_and_through_a_connect_tunnel(
    make: Make,
    blob: Blob,
    recorder: Recorder,
    proxy: ForwardProxy,
    certificate: tuple[Path, Path],
    via_proxy: bool,
) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    srv = ScriptedServer(blob, tls=server_tls)
    srv.plan(Reply(drop_after=300_000))
    with serving(srv):
        options: dict[str, Any] = {"allow_http": False, "ssl_context": client_tls}
        if via_proxy:
            options["proxy"] = proxy.url
        start(make(**options), srv.url(), sha256=blob.sha256(), size=blob.size)

        assert recorder.completed().sha256 == blob.sha256()
    assert srv.requests[-1].header("Range") == "bytes=300000-"
    if via_proxy:
        assert [(r.method, r.target) for r in proxy.requests] == [
            ("CONNECT", f"localhost:{srv.port}")
        ] * 2
    else:
        assert proxy.requests == []


def test_a_plain_http_download_never_waits_for_the_tls_context(
    make: Make, server: ScriptedServer, blob: Blob, recorder: Recorder
) -> None:
    asked = threading.Event()

    def still_loading() -> ssl.SSLContext:
        asked.set()
        threading.Event().wait(10)  # a CA store that never finishes loading
        raise AssertionError("unreachable")

    start(make(ssl_context=still_loading), server.url(), sha256=blob.sha256())
    assert recorder.completed().sha256 == blob.sha256()
    assert not asked.is_set()


def test_an_https_connection_asks_for_the_tls_context_once_tcp_stands() -> None:
    # The CA store may still be loading (TlsContext): it is waited for after the connect,
    # not before, and the certificate is checked for the origin, not the proxy.
    order: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def opener(
        address: tuple[str, int], timeout: float | None, source: tuple[str, int] | None
    ) -> socket.socket:
        order.append(f"tcp {address[0]}:{address[1]}")
        return socket.create_connection(listener.getsockname()[:2])

    class Stop(Exception):
        pass

    class Recording(ssl.SSLContext):
        def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
            order.append(f"tls for {kwargs['server_hostname']}")
            raise Stop

    def tls() -> ssl.SSLContext:
        order.append("context asked for")
        return Recording(ssl.PROTOCOL_TLS_CLIENT)

    conn = download_module._TLSConnection(
        "proxy.example", 3128, server_hostname="origin.example", tls=tls, opener=opener
    )
    try:
        with pytest.raises(Stop):
            conn.connect()
    finally:
        conn.close()
        listener.close()
    assert order == ["tcp proxy.example:3128", "context asked for", "tls for origin.example"]


def test_a_tls_context_that_failed_to_load_fails_each_handshake() -> None:
    def broken() -> ssl.SSLContext:
        raise ssl.SSLError("no CA store")

    context = download_module.TlsContext(broken)
    for _ in range(2):
        with pytest.raises(ssl.SSLError, match="no CA store"):
            context()


def test_an_untrusted_certificate_is_retried_not_accepted(
    make: Make, blob: Blob, recorder: Recorder, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    srv = ScriptedServer(blob, tls=server_tls)
    with serving(srv):
        downloader = make(allow_http=False)  # the system's CAs: ours is not among them
        start(downloader, srv.url())
        recorder.wait(lambda: bool(recorder.of(DownloadInterrupted)))
        downloader.execute(CancelDownload(download_id=DownloadId(1)))

    assert "CERTIFICATE_VERIFY_FAILED" in recorder.of(DownloadInterrupted)[0].reason
    assert srv.requests == []


# --- memory -----------------------------------------------------------------------------------


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


BIG = 1024 * 1024 * 1024


def test_memory_stays_flat_for_a_1_gib_download(
    make: Make, recorder: Recorder, folder: Path
) -> None:
    big = Blob(size=BIG)
    expected = big.sha256()
    srv = ScriptedServer(big)
    with serving(srv):
        downloader = make(chunk_size=1024 * 1024)
        before = _rss()
        peak = before
        start(downloader, srv.url(), sha256=expected, size=BIG)
        done: list[Event] = []

        def finished() -> bool:
            done[:] = [e for e in recorder.events if isinstance(e, DownloadCompleted)]
            return bool(done) or any(isinstance(e, DownloadFailed) for e in recorder.events)

        deadline = time.monotonic() + 60
        while not finished() and time.monotonic() < deadline:
            peak = max(peak, _rss())
            time.sleep(0.05)
        peak = max(peak, _rss())

    assert recorder.completed().sha256 == expected
    assert peak - before < 20 * 1024 * 1024, f"RSS grew by {(peak - before) >> 20} MiB"
    events = zip(recorder.events, recorder.times, strict=True)
    progress = [t for e, t in events if isinstance(e, DownloadProgressed)]
    # At most one every 0.5 s, plus the final one (slack for the thread handoff).
    gaps = [b - a for a, b in itertools.pairwise(progress[:-1])]
    assert all(gap > 0.4 for gap in gaps), gaps
    assert (folder / JOB).stat().st_size == BIG
    (folder / JOB).unlink()


def test_hash_helper_matches_hashlib() -> None:
    small = Blob(size=3 * 1024 * 1024 + 11)
    assert small.sha256() == hashlib.sha256(small.read()).hexdigest()
