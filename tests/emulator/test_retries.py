"""The emulator's job execution retries (AWS jobExecutionsRetryConfig)."""

from __future__ import annotations

import json

import pytest

from upparat.emulator.model import EmulatorError, JobsModel
from upparat.emulator.wire import ExecutionStatus, Ignored, JobId, ThingName, parse

NOW = 1_700_000_000.0
JOB, THING = JobId("fw"), ThingName("t1")


def sign(url: str, expires_in: int) -> str:
    return f"{url}?e={expires_in}"


def model(**retries: int) -> JobsModel:
    m = JobsModel(minute=60.0)
    m.create_job(JOB, {"file": "https://x/f", "version": "2"}, [THING], NOW, sign, retries=retries)
    return m


def report(m: JobsModel, status: str, now: float = NOW) -> list[str]:
    parsed = parse(
        f"$aws/things/{THING}/jobs/{JOB}/update",
        json.dumps({"status": status, "clientToken": "tok"}).encode(),
    )
    assert not isinstance(parsed, Ignored)
    return [p.topic for p in m.handle(parsed, now, sign).publishes]


def test_a_failed_execution_is_queued_again_with_the_next_number_until_retries_run_out() -> None:
    m = model(FAILED=1)
    report(m, "IN_PROGRESS")
    topics = report(m, "FAILED", NOW + 5)
    assert topics[0].endswith("/update/accepted")
    assert f"$aws/things/{THING}/jobs/notify" in topics
    retry = m.execution(JOB, THING)
    assert retry is not None
    assert (retry.status, retry.execution_number, retry.version_number) == (
        ExecutionStatus.QUEUED,
        2,
        1,
    )
    assert retry.status_details == ()
    assert retry.queued_at == int(NOW + 5)
    report(m, "IN_PROGRESS")
    report(m, "FAILED")
    last = m.execution(JOB, THING)
    assert last is not None
    assert (last.status, last.execution_number) == (ExecutionStatus.FAILED, 2)


def test_succeeded_and_rejected_are_never_retried() -> None:
    for status in ("SUCCEEDED", "REJECTED"):
        m = model(ALL=3)
        report(m, "IN_PROGRESS")
        report(m, status)
        found = m.execution(JOB, THING)
        assert found is not None
        assert (found.status.value, found.execution_number) == (status, 1)


def test_a_timed_out_execution_is_retried_when_the_job_allows_it() -> None:
    m = JobsModel(minute=60.0)
    m.create_job(
        JOB,
        {"file": "https://x/f", "version": "2"},
        [THING],
        NOW,
        sign,
        in_progress_timeout_minutes=1,
        retries={"TIMED_OUT": 1},
    )
    report(m, "IN_PROGRESS")
    m.expire(NOW + 61, sign)
    retry = m.execution(JOB, THING)
    assert retry is not None
    assert (retry.status, retry.execution_number) == (ExecutionStatus.QUEUED, 2)
    # FAILED has no retries of its own here.
    report(m, "IN_PROGRESS", NOW + 62)
    report(m, "FAILED", NOW + 63)
    found = m.execution(JOB, THING)
    assert found is not None
    assert found.status is ExecutionStatus.FAILED


def test_retries_survive_a_restart_of_the_emulator() -> None:
    m = model(FAILED=2)
    report(m, "IN_PROGRESS")
    report(m, "FAILED")
    again = JobsModel(minute=60.0)
    again.load_json(json.loads(json.dumps(m.to_json())))
    report(again, "IN_PROGRESS")
    report(again, "FAILED")
    found = again.execution(JOB, THING)
    assert found is not None
    assert (found.status, found.execution_number) == (ExecutionStatus.QUEUED, 3)
    report(again, "IN_PROGRESS")
    report(again, "FAILED")
    assert again.execution(JOB, THING).status is ExecutionStatus.FAILED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("retries", "message"),
    [({"SOMETIMES": 1}, "failure type"), ({"FAILED": 11}, "0-10"), ({"FAILED": -1}, "0-10")],
)
def test_a_bad_retry_config_is_refused(retries: dict[str, int], message: str) -> None:
    with pytest.raises(EmulatorError, match=message):
        JobsModel(minute=60.0).create_job(
            JOB, {"file": "f", "version": "2"}, [THING], NOW, sign, retries=retries
        )
