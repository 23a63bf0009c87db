"""The phases of one job: version check, download, install, restart, verification."""

from __future__ import annotations

import pytest

from tests.core.playbook import (
    DOC,
    JOB,
    OTHER,
    URL,
    Playbook,
    between,
    execution,
    failed,
    kinds,
    like,
    reported,
    succeeded,
    summary,
)
from upparat.core import machine
from upparat.core.commands import (
    CallHook,
    CancelDownload,
    Command,
    DescribeJob,
    DiscardDownload,
    Persist,
    RequestPendingJobs,
    SetTimer,
    StartDownload,
    UpdateJob,
)
from upparat.core.events import (
    DownloadCompleted,
    HookFailure,
    HookServerInfo,
    HookSuccess,
    HookUnavailable,
    HookUnimplemented,
    MqttConnected,
    MqttDisconnected,
    SubscriptionsAcked,
)
from upparat.core.model import (
    DownloadFailure,
    HookKind,
    InstallFile,
    InvalidJobDocument,
    JobDocument,
    JobStatus,
    JournalRecord,
    Phase,
    RejectCode,
    Settings,
    TimerKind,
)

IN_PROGRESS = JobStatus.IN_PROGRESS


def at_download(p: Playbook, document: JobDocument = DOC) -> None:
    """Take a queued job through the version and download hooks into the download."""
    p.take(execution(document=document))
    p.answer(HookSuccess(value="1.0"))
    p.answer(HookSuccess())
    p.accept()  # download_start
    assert isinstance(p.stage, machine.Downloading)


def at_install(p: Playbook) -> None:
    at_download(p)
    p.downloaded()
    p.accept()  # installation_start
    assert isinstance(p.stage, machine.Installing)


def at_restart(p: Playbook) -> None:
    at_install(p)
    p.answer(HookSuccess())
    p.accept()  # reboot_start
    assert isinstance(p.stage, machine.Restarting)


def after_boot(p: Playbook, journal: JournalRecord | None = None) -> list[Command]:
    p.boot(journal)
    p.list_jobs(in_progress=[summary()])
    return p.describe(execution(status=IN_PROGRESS, state="reboot_start"))


# --- version check -------------------------------------------------------------------


def test_same_version_already_installed_succeeds() -> None:
    p = Playbook()
    p.take()
    assert p.answer(HookSuccess(value="2.0")) == [
        DiscardDownload(job_id=JOB),
        succeeded("version_already_installed"),
        like(SetTimer, timer=TimerKind.UPDATE_RETRY),
        Persist(record=None),
    ]


def test_other_version_goes_on_with_the_download_hook() -> None:
    p = Playbook()
    p.take()
    assert p.answer(HookSuccess(value="1.0")) == [like(CallHook, hook=HookKind.DOWNLOAD)]


def test_force_skips_the_version_and_the_download_hook() -> None:
    p = Playbook()
    forced = JobDocument(file=URL, version="2.0", force=True)
    out = p.take(execution(document=forced))
    # The download starts before its journal write, which it overlaps.
    assert out == [
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.CHECKING_VERSION)),
        like(StartDownload, job_id=JOB, url=URL),
        reported("download_start"),
        like(SetTimer, timer=TimerKind.UPDATE_RETRY),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING)),
    ]


def test_a_hook_the_server_lacks_is_skipped() -> None:
    p = Playbook()
    p.boot()
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL})))
    p.list_jobs(queued=[summary()])
    assert kinds(p.describe()) == [Persist, StartDownload, UpdateJob, SetTimer, Persist]


def test_an_unimplemented_hook_is_treated_as_absent_and_remembered() -> None:
    p = Playbook(auto_accept=True)
    p.take()
    assert p.answer(HookUnimplemented()) == [like(CallHook, hook=HookKind.DOWNLOAD)]
    assert HookKind.VERSION in p.state.absent_hooks
    p.answer(HookSuccess(value="no"))  # the download hook
    p.download_failed(DownloadFailure.HTTP_ERROR)
    p.list_jobs(queued=[summary(OTHER)])
    # The next job does not ask the version hook again.
    assert p.describe(execution(OTHER)) == [
        Persist(record=JournalRecord(job_id=OTHER, phase=Phase.CHECKING_VERSION)),
        like(CallHook, hook=HookKind.DOWNLOAD),
    ]


def test_an_in_progress_job_is_redone_from_the_version_check_resuming_the_download() -> None:
    p = Playbook()
    p.boot()
    p.list_jobs(in_progress=[summary()])
    out = p.describe(execution(status=IN_PROGRESS, state="download_progress"))
    assert out == [
        like(CallHook, hook=HookKind.VERSION),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.CHECKING_VERSION)),
    ]
    p.answer(HookSuccess(value="1.0"))
    out = p.answer(HookSuccess())
    assert like(StartDownload, job_id=JOB) in out
    assert DiscardDownload(job_id=JOB) not in p.history


# --- job document ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (InvalidJobDocument(field="version", reason="is missing"), "version"),
        (InvalidJobDocument(field="force", reason="must be a boolean"), "force"),
        (JobDocument(file="ftp://h/f", version="1"), "file"),
        (JobDocument(file="http://h/f", version="1"), "file"),
        (JobDocument(file="https:///nohost", version="1"), "file"),
        (JobDocument(file="not a url", version="1"), "file"),
    ],
)
def test_an_invalid_job_document_is_rejected_naming_the_field(
    document: JobDocument | InvalidJobDocument, field: str
) -> None:
    p = Playbook()
    out = p.take(execution(document=document))
    update = p.last(UpdateJob)
    assert update.status is JobStatus.REJECTED
    details = dict(update.status_details)
    assert details["state"] == "invalid_job_document"
    assert f"field '{field}'" in details["message"]
    assert Persist(record=None) in out
    assert isinstance(p.stage, machine.FetchingJobs)


def test_http_is_allowed_when_the_settings_say_so() -> None:
    p = Playbook(Settings(allow_http=True))
    p.take(execution(document=JobDocument(file="http://h/f", version="1")))
    assert isinstance(p.stage, machine.CheckingVersion)


# --- download --------------------------------------------------------------------------


def test_the_download_hook_allows_the_download() -> None:
    p = Playbook()
    p.take(execution(document=JobDocument(file=URL, version="2", sha256="ab" * 32, size=10)))
    p.answer(HookSuccess(value="1"))
    assert p.answer(HookSuccess()) == [
        like(StartDownload, job_id=JOB, url=URL, sha256="ab" * 32, size=10),
        reported("download_start"),
        like(SetTimer, timer=TimerKind.UPDATE_RETRY),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.DOWNLOADING, previous_version="1")),
    ]


def test_download_progress_is_throttled() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    p.tick(10)
    assert p.download_progress(10, 1000) == [
        reported("download_progress", progress="1", bytes="10"),
        like(SetTimer),
    ]
    p.tick(1)
    # Within the interval: held back, one flush timer for the rest of the interval.
    assert p.download_progress(500, 1000) == [like(SetTimer, timer=TimerKind.PROGRESS_FLUSH)]
    assert p.last(SetTimer).delay == pytest.approx(9.0)
    assert p.download_progress(600, 1000) == []
    assert p.fire(TimerKind.PROGRESS_FLUSH) == [
        reported("download_progress", progress="60", bytes="600"),
        like(SetTimer),
    ]
    p.tick(30)
    # Less than 1 % more: nothing, however long ago the last report was.
    assert p.download_progress(605, 1000) == []
    assert p.download_progress(610, 1000) == [
        reported("download_progress", progress="61"),
        like(SetTimer),
    ]


def test_download_progress_without_a_total_uses_the_documents_size() -> None:
    p = Playbook(auto_accept=True)
    at_download(p, JobDocument(file=URL, version="2", size=200))
    p.tick(10)
    assert p.download_progress(50)[0] == reported("download_progress", progress="25", bytes="50")


def test_download_retrying_is_reported() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    p.tick(20)
    out = p.download_interrupted(40, "timeout")
    assert out[0] == reported("download_retrying", bytes="40")
    assert "timeout" in dict(p.last(UpdateJob).status_details)["message"]


def test_an_expired_url_is_refreshed_and_the_download_goes_on() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    out = p.download_failed(DownloadFailure.URL_EXPIRED)
    assert out[0] == reported("download_interrupt")
    assert like(DescribeJob, job_id=JOB) in out
    fresh = JobDocument(file="https://s3.example.com/fw?sig=new", version="2.0")
    out = p.describe(execution(status=IN_PROGRESS, state="download_interrupt", document=fresh))
    assert like(StartDownload, url="https://s3.example.com/fw?sig=new") in out
    assert isinstance(p.stage, machine.Downloading)


def test_a_url_refused_again_and_again_fails_the_download() -> None:
    p = Playbook(auto_accept=True)
    at_download(p)
    for _ in range(machine.MAX_URL_REFUSALS):
        p.download_failed(DownloadFailure.URL_EXPIRED)
        p.describe(execution(status=IN_PROGRESS, state="download_interrupt"))
    out = p.download_failed(DownloadFailure.URL_EXPIRED, "403 Forbidden")
    assert failed("download_failed") in out


def test_verification_failed_discards_the_file_and_fails() -> None:
    p = Playbook()
    at_download(p)
    out = p.download_failed(DownloadFailure.VERIFICATION_FAILED, "sha256 expected ab..., got cd...")
    assert out[:2] == [
        DiscardDownload(job_id=JOB),
        failed("download_verification_failed", message="sha256 expected ab..., got cd..."),
    ]


@pytest.mark.parametrize(
    ("failure", "state"),
    [
        (DownloadFailure.HTTP_ERROR, "download_failed"),
        (DownloadFailure.BAD_URL, "download_failed"),
        (DownloadFailure.IO_ERROR, "download_failed"),
        (DownloadFailure.INSUFFICIENT_DISK_SPACE, "insufficient_disk_space"),
    ],
)
def test_download_failures(failure: DownloadFailure, state: str) -> None:
    p = Playbook()
    at_download(p)
    assert failed(state, message="boom") in p.download_failed(failure)
    assert isinstance(p.stage, machine.FetchingJobs)


def test_the_download_keeps_running_while_the_broker_is_down() -> None:
    p = Playbook()
    at_download(p)
    assert p.feed(MqttDisconnected(reason="x")) == [like(SetTimer, timer=TimerKind.RECONNECT)]
    p.tick(20)
    assert p.download_progress(500, 1000) == []  # queued, not published
    out = p.downloaded()
    assert like(CallHook, hook=HookKind.INSTALL) in out
    assert not any(isinstance(c, UpdateJob | CancelDownload) for c in out)
    p.feed(MqttConnected())
    out = p.feed(SubscriptionsAcked())
    # Progress was superseded by the phase change before it could be sent.
    assert out[0] == reported("installation_start")
    assert like(RequestPendingJobs) in out  # and we check the job is still pending


# --- install ---------------------------------------------------------------------------


def test_install_reports_its_start_and_gets_the_file_path() -> None:
    p = Playbook(Settings(install_timeout=7200))
    at_download(p)
    assert p.downloaded("/data/upparat_1") == [
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.INSTALLING, previous_version="1.0")),
        reported("installation_start"),
        like(SetTimer),
        like(
            CallHook,
            hook=HookKind.INSTALL,
            file=InstallFile(path="/data/upparat_1", size=10, sha256="0"),
            timeout=7200,
        ),
    ]


# --- signed artifacts ------------------------------------------------------------------

SIGNATURE = b"0D\x02 " + b"\x01" * 32 + b"\x02 " + b"\x02" * 32


def test_require_signature_rejects_an_unsigned_job_before_any_hook_or_download() -> None:
    p = Playbook(Settings(require_signature=True))

    out = p.take(execution(document=DOC))

    update = p.last(UpdateJob)
    assert update.status is JobStatus.REJECTED
    details = dict(update.status_details)
    assert details["state"] == "invalid_job_document"
    assert "field 'signature'" in details["message"]
    assert "require_signature" in details["message"]
    assert not [c for c in p.history if isinstance(c, CallHook | StartDownload)]
    assert Persist(record=None) in out


def test_a_signed_job_is_downloaded_with_its_signature_and_installed_with_it() -> None:
    p = Playbook(Settings(require_signature=True))
    signed = JobDocument(file=URL, version="2", sha256="ab" * 32, size=10, signature=SIGNATURE)

    at_download(p, signed)

    assert p.last(StartDownload).signature == SIGNATURE
    p.feed(
        DownloadCompleted(
            download_id=p.last(StartDownload).download_id,
            path="/d/upparat_1",
            size=10,
            sha256="ab" * 32,
        )
    )
    p.accept()  # installation_start
    assert p.last(CallHook).file == InstallFile(
        path="/d/upparat_1", size=10, sha256="ab" * 32, signature=SIGNATURE
    )


def test_without_require_signature_an_unsigned_job_runs() -> None:
    p = Playbook(Settings(require_signature=False))
    at_download(p)
    assert p.last(StartDownload).signature is None


def test_a_signature_that_does_not_verify_fails_the_job_before_install() -> None:
    p = Playbook()
    at_download(p, JobDocument(file=URL, version="2", signature=SIGNATURE))
    message = "signature: does not verify the file's sha256 ab… with any of the 1 trusted key"

    out = p.download_failed(DownloadFailure.VERIFICATION_FAILED, message)

    assert out[:2] == [
        DiscardDownload(job_id=JOB),
        failed("download_verification_failed", message=message),
    ]
    assert not [c for c in p.history if isinstance(c, CallHook) and c.hook is HookKind.INSTALL]


def test_install_progress_is_reported_throttled() -> None:
    p = Playbook(auto_accept=True)
    at_install(p)
    p.tick(10)
    assert p.install_progress("writing slot b", 40)[0] == reported(
        "installation_progress", message="writing slot b", progress="40"
    )
    p.tick(1)
    assert p.install_progress("still writing") == [like(SetTimer, timer=TimerKind.PROGRESS_FLUSH)]


def test_install_failure_fails_the_job() -> None:
    p = Playbook()
    at_install(p)
    out = p.answer(HookFailure(reason="HOOK_EXIT_NONZERO", message="exit code 2"))
    assert (
        failed("installation_hook_failed", message="exit code 2", reason="HOOK_EXIT_NONZERO") in out
    )


def test_no_install_hook_succeeds_and_keeps_the_file() -> None:
    p = Playbook()
    at_install(p)
    out = p.answer(HookUnimplemented())
    assert succeeded("no_installation_hook_provided") in out
    assert DiscardDownload(job_id=JOB) not in out


# --- restart ---------------------------------------------------------------------------


def test_restart_waits_until_the_cloud_accepted_reboot_start() -> None:
    p = Playbook()
    at_install(p)
    assert p.answer(HookSuccess()) == [reported("reboot_start"), like(SetTimer)]
    assert isinstance(p.stage, machine.ReportingReboot)
    assert p.accept() == [
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.RESTARTING, previous_version="1.0")),
        like(CallHook, hook=HookKind.RESTART),
    ]


def test_reboot_start_rejected_with_throttling_is_sent_again_before_restarting() -> None:
    p = Playbook()
    at_install(p)
    p.answer(HookSuccess())
    assert p.reject(RejectCode.REQUEST_THROTTLED) == [like(SetTimer, delay=between(1.0, 2.0))]
    assert p.fire(TimerKind.UPDATE_RETRY) == [reported("reboot_start"), like(SetTimer)]
    assert kinds(p.accept()) == [Persist, CallHook]


def test_restart_failure_fails_the_job() -> None:
    p = Playbook()
    at_restart(p)
    assert failed("restart_hook_failed", message="no") in p.answer(
        HookFailure(reason="X", message="no")
    )


def test_the_hook_server_going_away_during_restart_is_not_a_failure() -> None:
    p = Playbook(Settings(restart_timeout=300))
    at_restart(p)
    out = p.answer(HookUnavailable(detail="socket closed"))
    assert out == [like(SetTimer, timer=TimerKind.HOOK_RETRY, delay=300)]
    assert isinstance(p.stage, machine.AwaitingReboot)
    # Not stopped after all (e.g. the hook server was the restarted service): verify.
    assert p.fire(TimerKind.HOOK_RETRY) == [
        like(CallHook, hook=HookKind.VERSION),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, previous_version="1.0")),
    ]


def test_a_soft_restart_is_verified_right_away() -> None:
    p = Playbook()
    at_restart(p)
    assert p.answer(HookSuccess()) == [
        like(CallHook, hook=HookKind.VERSION),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, previous_version="1.0")),
    ]
    assert p.answer(HookSuccess(value="2.0")) == [like(CallHook, hook=HookKind.READY)]
    assert succeeded("complete_ready") in p.answer(HookSuccess())


def test_a_soft_restart_into_the_previous_version_is_a_rollback() -> None:
    p = Playbook()
    at_restart(p)
    p.answer(HookSuccess())
    out = p.answer(HookSuccess(value="1.0"))
    # 1.0 ran before the update (the journal's previous_version): a rollback.
    assert (
        failed(
            "rolled_back",
            message="Rolled back: expected version '2.0', the previous version '1.0' runs",
        )
        in out
    )


def test_a_soft_restart_with_a_third_version_is_a_mismatch() -> None:
    p = Playbook()
    at_restart(p)
    p.answer(HookSuccess())
    out = p.answer(HookSuccess(value="1.5"))
    assert failed("version_mismatch", message="Expected version '2.0', got '1.5'") in out


def test_a_soft_restart_without_version_and_ready_hooks_is_complete_soft_restart() -> None:
    p = Playbook()
    at_restart(p)
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL, HookKind.RESTART})))
    assert succeeded("complete_soft_restart") in p.answer(HookSuccess())


def test_verify_soft_restart_off_restores_the_1_12_behaviour() -> None:
    p = Playbook(Settings(verify_soft_restart=False))
    at_restart(p)
    out = p.answer(HookSuccess())
    assert succeeded("complete_soft_restart") in out
    assert not any(isinstance(c, CallHook) for c in out)


def test_no_restart_hook_verifies_right_away() -> None:
    p = Playbook(auto_accept=True)
    at_install(p)
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL, HookKind.READY})))
    out = p.answer(HookSuccess())
    assert like(CallHook, hook=HookKind.READY) in out
    assert reported("reboot_start") not in out
    assert succeeded("complete_ready") in p.answer(HookSuccess())


def test_no_restart_hook_and_no_checks_is_no_restart_hook_provided() -> None:
    p = Playbook(auto_accept=True)
    at_install(p)
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL})))
    out = p.answer(HookSuccess())
    assert succeeded("no_restart_hook_provided") in out
    assert reported("reboot_start") not in out


def test_restart_unimplemented_verifies_like_no_restart_hook() -> None:
    p = Playbook(auto_accept=True)
    at_restart(p)
    assert p.answer(HookUnimplemented()) == [
        like(CallHook, hook=HookKind.VERSION),
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, previous_version="1.0")),
    ]
    assert p.answer(HookUnimplemented()) == [like(CallHook, hook=HookKind.READY)]
    assert succeeded("no_restart_hook_provided") in p.answer(HookUnimplemented())


def test_no_restart_hook_with_verify_soft_restart_off() -> None:
    p = Playbook(Settings(verify_soft_restart=False), auto_accept=True)
    at_install(p)
    p.feed(HookServerInfo(hooks=frozenset({HookKind.INSTALL, HookKind.VERSION, HookKind.READY})))
    out = p.answer(HookSuccess())
    assert succeeded("no_restart_hook_provided") in out
    assert not any(isinstance(c, CallHook) for c in out)


# --- after the boot --------------------------------------------------------------------


def test_after_boot_the_installation_is_verified() -> None:
    p = Playbook()
    out = after_boot(p, JournalRecord(job_id=JOB, phase=Phase.RESTARTING))
    assert out == [
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, restart_count=1)),
        like(CallHook, hook=HookKind.VERSION),
    ]
    assert p.answer(HookSuccess(value="2.0")) == [like(CallHook, hook=HookKind.READY)]
    out = p.answer(HookSuccess(message="all services up"))
    assert out == [
        DiscardDownload(job_id=JOB),
        succeeded("complete_ready", message="all services up"),
        like(SetTimer),
        Persist(record=None),
    ]


def test_after_boot_the_previous_version_is_a_rollback() -> None:
    p = Playbook()
    after_boot(p, JournalRecord(job_id=JOB, phase=Phase.RESTARTING, previous_version="1.0"))
    out = p.answer(HookSuccess(value="1.0"))
    assert (
        failed(
            "rolled_back",
            message="Rolled back: expected version '2.0', the previous version '1.0' runs",
        )
        in out
    )


def test_after_boot_a_third_version_is_a_mismatch() -> None:
    p = Playbook()
    after_boot(p, JournalRecord(job_id=JOB, phase=Phase.RESTARTING, previous_version="1.0"))
    out = p.answer(HookSuccess(value="0.9"))
    assert failed("version_mismatch", message="Expected version '2.0', got '0.9'") in out


def test_after_boot_without_a_journal_a_wrong_version_is_a_mismatch() -> None:
    # No record of what ran before (a 1.12 journal-less restart): never called a rollback.
    p = Playbook()
    after_boot(p)
    out = p.answer(HookSuccess(value="1.0"))
    assert failed("version_mismatch", message="Expected version '2.0', got '1.0'") in out


def test_after_boot_ready_failure_fails() -> None:
    p = Playbook()
    after_boot(p)
    p.answer(HookSuccess(value="2.0"))
    out = p.answer(HookFailure(reason="NOT_READY", message="app crashed"))
    assert failed("ready_hook_failed", message="app crashed") in out


def test_after_boot_without_a_ready_hook() -> None:
    p = Playbook()
    after_boot(p)
    p.answer(HookSuccess(value="2.0"))
    assert succeeded("complete_no_ready_check") in p.answer(HookUnimplemented())


def test_after_boot_without_a_version_hook_the_ready_hook_still_runs() -> None:
    p = Playbook()
    after_boot(p)
    assert p.answer(HookUnimplemented()) == [like(CallHook, hook=HookKind.READY)]
    assert succeeded("complete_ready") in p.answer(HookSuccess())


def test_after_boot_without_version_and_ready_hooks() -> None:
    p = Playbook()
    after_boot(p)
    p.answer(HookUnimplemented())
    assert succeeded("complete_no_version_check") in p.answer(HookUnimplemented())


def test_booting_back_again_and_again_is_a_reboot_loop() -> None:
    p = Playbook(Settings(max_restarts=3))
    out = after_boot(p, JournalRecord(job_id=JOB, phase=Phase.VERIFYING, restart_count=3))
    assert out[0] == Persist(
        record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, restart_count=4)
    )
    assert failed("reboot_loop") in out
    assert not any(isinstance(c, CallHook) for c in out)


def test_a_journal_of_another_job_does_not_count() -> None:
    p = Playbook(Settings(max_restarts=0))
    out = after_boot(p, JournalRecord(job_id=OTHER, phase=Phase.RESTARTING, restart_count=9))
    assert out[0] == Persist(
        record=JournalRecord(job_id=JOB, phase=Phase.VERIFYING, restart_count=1)
    )
    assert failed("reboot_loop") in out  # max_restarts=0: not even one boot is allowed


# --- reports ---------------------------------------------------------------------------


def test_in_progress_updates_carry_the_step_timeout() -> None:
    p = Playbook(Settings(step_timeout_minutes=30), auto_accept=True)
    at_download(p)
    assert p.last(UpdateJob).step_timeout_minutes == 30
    p.download_failed(DownloadFailure.HTTP_ERROR)
    final = p.last(UpdateJob)
    assert final.status is JobStatus.FAILED
    assert final.step_timeout_minutes is None


def test_status_details_values_are_at_most_1024_characters() -> None:
    p = Playbook()
    at_install(p)
    p.answer(HookFailure(reason="R" * 2000, message="é" * 5000))
    details = dict(p.last(UpdateJob).status_details)
    assert set(details) == {"state", "message", "reason"}
    assert all(1 <= len(v) <= 1024 for v in details.values())
    assert details["message"].endswith("…")


def test_a_job_end_fetches_again_and_waits_when_nothing_is_pending() -> None:
    p = Playbook()
    p.take()
    p.answer(HookSuccess(value="2.0"))
    assert p.accept() == [like(RequestPendingJobs), like(SetTimer)]
    p.list_jobs()
    assert isinstance(p.stage, machine.Idle)


@pytest.mark.parametrize(
    "url",
    [URL, "https://user:secret@s3.example.com/fw-2.0.bin?X-Amz-Signature=secret#frag"],
)
def test_credentials_in_urls_are_not_logged(url: str) -> None:
    p = Playbook(auto_accept=True)
    at_download(p, JobDocument(file=url, version="2.0"))
    logged = " ".join(log.message for log in p.logs)
    assert "https://s3.example.com/fw-2.0.bin" in logged
    assert "secret" not in logged
    assert "user" not in logged


# --- a power cut between the install and the accepted reboot_start ----------------------


def resumed_after_install(p: Playbook, journal: JournalRecord | None, state: str) -> list[Command]:
    p.boot(journal)
    p.list_jobs(in_progress=[summary()])
    return p.describe(execution(status=IN_PROGRESS, state=state))


INSTALLING_JOURNAL = JournalRecord(job_id=JOB, phase=Phase.INSTALLING, previous_version="1.0")


@pytest.mark.parametrize("journal", [INSTALLING_JOURNAL, None])
def test_the_new_version_after_an_interrupted_install_is_verified_not_already_installed(
    journal: JournalRecord | None,
) -> None:
    p = Playbook()
    out = resumed_after_install(p, journal, "installation_progress")
    # The journal keeps saying "installing" until the version hook has answered.
    assert not any(isinstance(c, Persist) for c in out)
    assert like(CallHook, hook=HookKind.VERSION) in out

    out = p.answer(HookSuccess(value="2.0"))

    assert like(CallHook, hook=HookKind.READY) in out
    assert not any(isinstance(c, UpdateJob) and c.status is JobStatus.SUCCEEDED for c in out)
    assert succeeded("complete_ready") in p.answer(HookSuccess())
    assert not any(r == succeeded("version_already_installed") for r in p.history)


def test_the_old_version_after_an_interrupted_install_installs_again() -> None:
    p = Playbook()
    resumed_after_install(p, INSTALLING_JOURNAL, "installation_start")

    out = p.answer(HookSuccess(value="1.0"))

    assert like(StartDownload, job_id=JOB, url=URL) in out  # re-verifies the file on disk
    p.downloaded()
    assert isinstance(p.stage, machine.Installing)


def test_a_third_version_after_an_interrupted_install_is_a_mismatch() -> None:
    p = Playbook()
    resumed_after_install(p, INSTALLING_JOURNAL, "installation_progress")

    out = p.answer(HookSuccess(value="0.9"))

    assert (
        failed(
            "version_mismatch",
            message="Expected version '2.0' (or the previous '1.0' after an interrupted install),"
            " got '0.9'",
        )
        in out
    )


def test_a_forced_job_whose_install_had_begun_still_asks_the_version_hook() -> None:
    p = Playbook()
    forced = JobDocument(file=URL, version="2.0", force=True)
    p.boot(INSTALLING_JOURNAL)
    p.list_jobs(in_progress=[summary()])
    out = p.describe(execution(status=IN_PROGRESS, state="installation_start", document=forced))

    assert like(CallHook, hook=HookKind.VERSION) in out
    assert like(CallHook, hook=HookKind.READY) in p.answer(HookSuccess(value="2.0"))


def test_the_previous_version_is_journaled_before_the_install() -> None:
    p = Playbook()
    at_download(p)
    out = p.downloaded()
    assert Persist(record=INSTALLING_JOURNAL) in out
