"""Interrupted downloads as the core drives them: one attempt per `StartDownload`, the
jittered backoff between attempts, the give-up rule (`download_retries` attempts in a row
without a new byte), resume across attempts. No real time."""

from __future__ import annotations

from tests.core.playbook import (
    JOB,
    OTHER,
    Playbook,
    between,
    failed,
    kinds,
    like,
    reported,
    summary,
)
from tests.core.test_job import at_download
from upparat.core import machine
from upparat.core.commands import (
    CancelDownload,
    DiscardDownload,
    Exit,
    Persist,
    SetTimer,
    StartDownload,
    UpdateJob,
)
from upparat.core.events import DownloadProgressed, ShutdownRequested, TimerFired
from upparat.core.model import JournalRecord, Phase, Settings, TimerKind


def retry_delay(p: Playbook) -> float:
    timer = p.last(SetTimer)
    assert timer.timer is TimerKind.DOWNLOAD_RETRY
    return timer.delay


def test_an_interrupted_attempt_is_resumed_after_a_jittered_backoff() -> None:
    p = Playbook(Settings(seed=11), auto_accept=True)
    at_download(p)
    first = p.last(StartDownload)
    p.tick(20)  # past the progress throttle
    out = p.download_interrupted(700_001, "connection closed after 700001 of 2500000 bytes")
    assert reported("download_retrying", bytes="700001") in out
    assert retry_delay(p) == between(0, 1)
    stage = p.stage
    assert isinstance(stage, machine.Downloading)
    assert stage.retry is not None
    # Nothing runs between attempts: late events of the ended attempt are ignored.
    assert p.feed(DownloadProgressed(download_id=first.download_id, bytes_done=9)) == []
    out = p.fire(TimerKind.DOWNLOAD_RETRY)
    # The same file again, under a new id; the driver resumes it from the partial file.
    assert out == [
        like(
            StartDownload,
            job_id=JOB,
            url=first.url,
            sha256=first.sha256,
            size=first.size,
            signature=first.signature,
        )
    ]
    assert p.last(StartDownload).download_id != first.download_id
    # No second download_start, no second Persist: the phase did not change.
    assert not any(isinstance(c, Persist | UpdateJob) for c in out)
    assert p.downloaded() != []
    assert isinstance(p.stage, machine.Installing)


def test_retries_back_off_and_give_up_after_download_retries_without_new_bytes() -> None:
    p = Playbook(Settings(seed=4, download_retries=5), auto_accept=True)
    at_download(p)
    delays = []
    for n in range(5):
        out = p.download_interrupted(100, f"HTTP 503 Service Unavailable ({n})")
        assert not any(isinstance(c, UpdateJob) and c.status.value == "FAILED" for c in out)
        delays.append(retry_delay(p))
        p.fire(TimerKind.DOWNLOAD_RETRY)
    # The first interruption followed bytes (100 > 0): count 1; then 2, 3, 4, 5.
    assert delays == [between(0, c) for c in (1, 2, 4, 8, 16)]
    # The sixth interruption in a row without a new byte: FAILED, with the last reason.
    out = p.download_interrupted(100, "HTTP 503 Service Unavailable (last)")
    assert failed("download_failed") in out
    message = dict(p.last(UpdateJob).status_details)["message"]
    assert "6 interrupted attempts in a row" in message
    assert "download_retries is 5" in message
    assert message.endswith("HTTP 503 Service Unavailable (last)")
    assert DiscardDownload(job_id=JOB) in out
    assert Persist(record=None) in out
    assert isinstance(p.stage, machine.FetchingJobs)
    assert not any(isinstance(c, SetTimer) and c.timer is TimerKind.DOWNLOAD_RETRY for c in out)


def test_an_attempt_that_got_new_bytes_starts_the_count_again() -> None:
    p = Playbook(Settings(download_retries=2), auto_accept=True)
    at_download(p)
    # Each attempt gets a little further: never given up, the delay stays at the first.
    for done in range(1000, 30_000, 1000):
        assert not any(
            isinstance(c, UpdateJob) and c.status.value == "FAILED"
            for c in p.download_interrupted(done, "too slow")
        )
        assert retry_delay(p) == between(0, 1)
        p.fire(TimerKind.DOWNLOAD_RETRY)
    stage = p.stage
    assert isinstance(stage, machine.Downloading)
    assert stage.interruptions == 1
    # Stuck now: the retry after the last interruption got nothing, nor the next one
    # (download_retries = 2 attempts without a new byte): the job fails.
    out = p.download_interrupted(29_000)
    assert not any(isinstance(c, UpdateJob) and c.status.value == "FAILED" for c in out)
    assert retry_delay(p) == between(0, 2)
    p.fire(TimerKind.DOWNLOAD_RETRY)
    assert failed("download_failed") in p.download_interrupted(29_000)


def test_download_retries_zero_fails_at_the_first_interruption() -> None:
    p = Playbook(Settings(download_retries=0), auto_accept=True)
    at_download(p)
    assert failed("download_failed") in p.download_interrupted(5, "reset")


def test_retry_after_is_honoured_within_the_cap() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    p.download_interrupted(0, "HTTP 429 Too Many Requests", retry_after=30)
    assert retry_delay(p) == 30
    p.fire(TimerKind.DOWNLOAD_RETRY)
    p.download_interrupted(0, "HTTP 429 Too Many Requests", retry_after=3600)
    assert retry_delay(p) == 64  # the policy's cap


def test_the_seed_decides_the_download_jitter() -> None:
    def delays(seed: int) -> list[float]:
        p = Playbook(Settings(seed=seed), auto_accept=True)
        at_download(p)
        out = []
        for _ in range(4):
            p.download_interrupted(0)
            out.append(retry_delay(p))
            p.fire(TimerKind.DOWNLOAD_RETRY)
        return out

    assert delays(8) == delays(8)
    assert delays(8) != delays(9)


def test_a_cancelled_job_between_attempts_removes_its_partial_file() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    p.download_interrupted(10)
    out = p.notify(queued=[summary(OTHER)])
    # No attempt runs, so nothing to cancel; the files go.
    assert not any(isinstance(c, CancelDownload) for c in out)
    assert DiscardDownload(job_id=JOB) in out
    retry = next(
        c for c in p.history if isinstance(c, SetTimer) and c.timer is TimerKind.DOWNLOAD_RETRY
    )
    late = p.feed(TimerFired(timer=TimerKind.DOWNLOAD_RETRY, token=retry.token))
    assert not any(isinstance(c, StartDownload) for c in late)


def test_shutdown_between_attempts_keeps_the_partial_file_for_the_next_start() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    p.download_interrupted(10)
    out = p.feed(ShutdownRequested())
    assert not any(isinstance(c, CancelDownload | DiscardDownload) for c in out)
    assert (
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING, previous_version="1.0"))
        in out
    )
    assert kinds(out)[-1] is Exit
